#!/usr/bin/env python3
"""Build and read OCI image tarballs without Docker, a registry or any dependency.

  oci-image.py build --rootfs DIR --name localhost/NAME:TAG --out FILE.tar
      [--user U:G] [--entrypoint JSON-ARRAY] [--cmd JSON-ARRAY] [--workdir P]
      [--env K=V]... [--label K=V]... [--expose PORT/tcp]...
      [--owners files|root] [--chown PATH=UID:GID]...
  oci-image.py inspect FILE.tar      JSON: name, config, files (digests verified first):
                                     {name, ref_name, architecture, os, manifest_digest,
                                      config: {User, Entrypoint, Cmd, ExposedPorts, Labels,
                                      Env, WorkingDir}, files: [{path, mode ("0755"), uid,
                                      gid, size, type (file|dir|symlink|hardlink|char|block|
                                      fifo), link?, sha256? (regular files)}]}
  oci-image.py verify FILE.tar       digests, sizes and diff_ids; prints a summary
  oci-image.py unpack FILE.tar DIR   the layers into DIR (owners kept when run as root;
                                     for images this tool built: links are not sanitised)

`build` writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) as one
uncompressed tar holding one gzip layer made from DIR, plus a Docker-style manifest.json
(ignored by containerd, which reads the OCI layout; it lets `docker load` and skopeo's
docker-archive transport read the same file). The index entry carries the annotations
io.containerd.image.name=localhost/NAME:TAG and org.opencontainers.image.ref.name=TAG, so
`ctr -n k8s.io images import FILE.tar` names the image localhost/NAME:TAG.

Reproducible: entries sorted by path, mtime 0, no user or group names, modes kept,
symlinks kept, hard links kept as tar hard links, gzip without name or time, JSON with
sorted keys. The same DIR (contents, modes, owners, links) gives a byte-identical tar.
Owners: `--owners files` (default) takes uid/gid from the files; `--owners root` makes
every entry 0:0 (so that a non-root builder can make a correct image); `--chown PATH=U:G`
sets one entry's owner (PATH relative to DIR, e.g. home/nonroot). Sockets are skipped.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile

EPOCH = "1970-01-01T00:00:00Z"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CHUNK = 1 << 20


def jbytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class HashWriter:
    """A file wrapper that hashes and counts what is written through it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self):
        return self.n

    def flush(self):
        self.f.flush()

    def digest(self):
        return "sha256:" + self.h.hexdigest()


def walk(root):
    """Every path under root (relative, '/'-separated), sorted bytewise, root excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            out.append(name if rel == "." else rel + "/" + name)
    out.sort(key=lambda p: p.encode("utf-8", "surrogateescape"))
    return out


def parse_owner(s):
    u, _, g = s.partition(":")
    return int(u), int(g if g else u)


def write_layer(rootfs, f, owners, chown):
    """The layer tar of rootfs into f (a writable binary file)."""
    tf = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)
    seen = {}  # (dev, ino) -> first path, for hard links
    for rel in walk(rootfs):
        full = os.path.join(rootfs, rel)
        st = os.lstat(full)
        ti = tarfile.TarInfo(rel)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.mtime = 0
        ti.uname = ti.gname = ""
        if owners == "files":
            ti.uid, ti.gid = st.st_uid, st.st_gid
        else:
            ti.uid = ti.gid = 0
        if rel in chown:
            ti.uid, ti.gid = chown[rel]
        data = None
        if stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(full)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                ti.type = tarfile.LNKTYPE
                ti.linkname = seen[key]
            else:
                seen[key] = rel
                ti.type = tarfile.REGTYPE
                ti.size = st.st_size
                data = full
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            ti.type = tarfile.FIFOTYPE
        else:
            continue  # sockets
        if data is None:
            tf.addfile(ti)
        else:
            with open(data, "rb") as src:
                tf.addfile(ti, src)
    tf.close()


def add_bytes(tf, name, data, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = len(data), mode, 0, "", ""
    tf.addfile(ti, io.BytesIO(data))


def add_dir(tf, name):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uname, ti.gname = tarfile.DIRTYPE, 0o755, 0, "", ""
    tf.addfile(ti)


def kv_list(items, what):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            sys.exit(f"oci-image.py: {what} {item!r} is not K=V")
        out[k] = v
    return out


def json_array(s, what):
    if s is None:
        return None
    v = json.loads(s)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        sys.exit(f"oci-image.py: {what} must be a JSON array of strings, not {s!r}")
    return v


def cmd_build(a):
    name = a.name
    if ":" not in name.rsplit("/", 1)[-1]:
        sys.exit(f"oci-image.py: --name {name!r} lacks a :TAG")
    tag = name.rsplit(":", 1)[1]
    if not os.path.isdir(a.rootfs):
        sys.exit(f"oci-image.py: --rootfs {a.rootfs} is not a directory")
    chown = {}
    for c in a.chown or []:
        p, sep, o = c.partition("=")
        if not sep:
            sys.exit(f"oci-image.py: --chown {c!r} is not PATH=UID:GID")
        chown[p.strip("/")] = parse_owner(o)

    out_dir = os.path.dirname(os.path.abspath(a.out))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".oci-") as tmp:
        # Layer: tar (diff_id = its sha256) -> gzip (blob digest).
        raw_path, gz_path = os.path.join(tmp, "layer.tar"), os.path.join(tmp, "layer.tar.gz")
        with open(raw_path, "wb") as f:
            hw = HashWriter(f)
            write_layer(a.rootfs, hw, a.owners, chown)
            diff_id = hw.digest()
        with open(gz_path, "wb") as f:
            hw = HashWriter(f)
            with gzip.GzipFile(filename="", mode="wb", fileobj=hw, mtime=0, compresslevel=a.level) as gz, \
                    open(raw_path, "rb") as src:
                while True:
                    b = src.read(CHUNK)
                    if not b:
                        break
                    gz.write(b)
            layer_digest, layer_size = hw.digest(), hw.n
        os.unlink(raw_path)

        cfg = {}
        if a.user:
            cfg["User"] = a.user
        env = a.env or []
        kv_list(env, "--env")
        if env:
            cfg["Env"] = env
        ep = json_array(a.entrypoint, "--entrypoint")
        if ep is not None:
            cfg["Entrypoint"] = ep
        cmd = json_array(a.cmd, "--cmd")
        if cmd is not None:
            cfg["Cmd"] = cmd
        if a.workdir:
            cfg["WorkingDir"] = a.workdir
        labels = kv_list(a.label, "--label")
        if labels:
            cfg["Labels"] = labels
        if a.expose:
            ports = {}
            for p in a.expose:
                ports[p if "/" in p else p + "/tcp"] = {}
            cfg["ExposedPorts"] = ports
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": EPOCH,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": EPOCH, "created_by": "hack/oci-image.py build"}],
        }
        config_b = jbytes(config)
        config_digest = "sha256:" + hashlib.sha256(config_b).hexdigest()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_b)},
            "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size}],
        }
        manifest_b = jbytes(manifest)
        manifest_digest = "sha256:" + hashlib.sha256(manifest_b).hexdigest()
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_b),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        }
        blob = lambda d: "blobs/sha256/" + d.split(":", 1)[1]
        docker_manifest = [{"Config": blob(config_digest), "RepoTags": [name],
                            "Layers": [blob(layer_digest)]}]

        tmp_out = os.path.join(tmp, "image.tar")
        with open(tmp_out, "wb") as f:
            tf = tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT)
            add_bytes(tf, "oci-layout", jbytes({"imageLayoutVersion": "1.0.0"}))
            add_bytes(tf, "index.json", jbytes(index))
            add_bytes(tf, "manifest.json", jbytes(docker_manifest))
            add_dir(tf, "blobs")
            add_dir(tf, "blobs/sha256")
            blobs = {blob(config_digest): ("bytes", config_b),
                     blob(manifest_digest): ("bytes", manifest_b),
                     blob(layer_digest): ("file", gz_path)}
            for path in sorted(blobs):
                kind, v = blobs[path]
                if kind == "bytes":
                    add_bytes(tf, path, v)
                else:
                    ti = tarfile.TarInfo(path)
                    ti.size, ti.mode, ti.mtime, ti.uname, ti.gname = os.path.getsize(v), 0o644, 0, "", ""
                    with open(v, "rb") as src:
                        tf.addfile(ti, src)
            tf.close()
        os.replace(tmp_out, a.out)
    print(f"{a.out}: {name} manifest {manifest_digest} layer {layer_size} bytes", file=sys.stderr)


# --- reading ----------------------------------------------------------------------------

def open_image(path):
    """(tarfile, members by name, index, manifest, config, name); digests verified."""
    tf = tarfile.open(path, "r:")
    members = {m.name.rstrip("/"): m for m in tf.getmembers()}
    problems = []

    def read(name):
        m = members.get(name)
        if m is None:
            sys.exit(f"oci-image.py: {path} lacks {name}")
        return tf.extractfile(m).read()

    def blob(desc, what):
        d = desc["digest"]
        algo, _, hexd = d.partition(":")
        if algo != "sha256":
            sys.exit(f"oci-image.py: {what} digest {d} is not sha256")
        m = members.get("blobs/sha256/" + hexd)
        if m is None:
            sys.exit(f"oci-image.py: {path} lacks the {what} blob {d}")
        if m.size != desc["size"]:
            problems.append(f"{what} {d}: size {m.size} != descriptor size {desc['size']}")
        return m

    def blob_bytes(desc, what):
        data = tf.extractfile(blob(desc, what)).read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
            problems.append(f"{what} {desc['digest']}: content does not match its digest")
        return data

    layout = json.loads(read("oci-layout"))
    if layout.get("imageLayoutVersion") != "1.0.0":
        problems.append(f"oci-layout: imageLayoutVersion {layout.get('imageLayoutVersion')!r}")
    index = json.loads(read("index.json"))
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        problems.append("index.json: not schemaVersion 2 with one manifest")
    mdesc = index["manifests"][0]
    manifest = json.loads(blob_bytes(mdesc, "manifest"))
    if manifest.get("mediaType") != MT_MANIFEST or mdesc.get("mediaType") != MT_MANIFEST:
        problems.append("manifest: media type is not " + MT_MANIFEST)
    config = json.loads(blob_bytes(manifest["config"], "config"))
    layers = manifest.get("layers", [])
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(layers) != len(diff_ids):
        problems.append(f"{len(layers)} layers but {len(diff_ids)} diff_ids")
    for ldesc, diff_id in zip(layers, diff_ids):
        m = blob(ldesc, "layer")
        zh, rh = hashlib.sha256(), hashlib.sha256()
        with tf.extractfile(m) as f:
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                zh.update(b)
        with gzip.GzipFile(fileobj=tf.extractfile(m)) as g:
            while True:
                b = g.read(CHUNK)
                if not b:
                    break
                rh.update(b)
        if "sha256:" + zh.hexdigest() != ldesc["digest"]:
            problems.append(f"layer {ldesc['digest']}: content does not match its digest")
        if "sha256:" + rh.hexdigest() != diff_id:
            problems.append(f"layer {ldesc['digest']}: uncompressed sha256 does not match diff_id {diff_id}")
    if problems:
        for p in problems:
            print(f"oci-image.py: {path}: {p}", file=sys.stderr)
        sys.exit(1)
    name = mdesc.get("annotations", {}).get("io.containerd.image.name")
    return tf, members, index, manifest, config, name


TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
         tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char",
         tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}


def cmd_inspect(a):
    tf, members, index, manifest, config, name = open_image(a.file)
    files = []
    for ldesc in manifest["layers"]:
        m = members["blobs/sha256/" + ldesc["digest"].split(":", 1)[1]]
        with tarfile.open(fileobj=tf.extractfile(m), mode="r:gz") as lt:
            for e in lt:
                entry = {"path": "/" + e.name.strip("/").removeprefix("./"),
                         "mode": format(e.mode & 0o7777, "04o"), "uid": e.uid, "gid": e.gid,
                         "size": e.size, "type": TYPES.get(e.type, repr(e.type))}
                if e.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                    entry["link"] = e.linkname
                if e.isreg():
                    h = hashlib.sha256()
                    with lt.extractfile(e) as f:
                        for b in iter(lambda: f.read(CHUNK), b""):
                            h.update(b)
                    entry["sha256"] = h.hexdigest()
                files.append(entry)
    c = config.get("config", {})
    keys = ("User", "Entrypoint", "Cmd", "ExposedPorts", "Labels", "Env", "WorkingDir")
    out = {
        "name": name,
        "ref_name": index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name"),
        "architecture": config.get("architecture"),
        "os": config.get("os"),
        "manifest_digest": index["manifests"][0]["digest"],
        "config": {k: c.get(k) for k in keys},
        "files": files,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


def cmd_verify(a):
    tf, members, index, manifest, config, name = open_image(a.file)
    size = sum(l["size"] for l in manifest["layers"])
    print(f"{a.file}: valid OCI layout, {name}, {index['manifests'][0]['digest']}, "
          f"{len(manifest['layers'])} layer(s), {size} bytes compressed")


def cmd_unpack(a):
    tf, members, index, manifest, config, name = open_image(a.file)
    os.makedirs(a.dir, exist_ok=True)
    kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    for ldesc in manifest["layers"]:
        m = members["blobs/sha256/" + ldesc["digest"].split(":", 1)[1]]
        with tarfile.open(fileobj=tf.extractfile(m), mode="r:gz") as lt:
            lt.extractall(a.dir, numeric_owner=True, **kw)
    print(f"{a.file}: {name} unpacked into {a.dir}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="subcommand", required=True)
    b = sub.add_parser("build")
    b.add_argument("--rootfs", required=True)
    b.add_argument("--name", required=True, help="localhost/NAME:TAG")
    b.add_argument("--out", required=True)
    b.add_argument("--user")
    b.add_argument("--entrypoint", help="JSON array")
    b.add_argument("--cmd", help="JSON array")
    b.add_argument("--workdir")
    b.add_argument("--env", action="append", help="K=V (repeatable)")
    b.add_argument("--label", action="append", help="K=V (repeatable)")
    b.add_argument("--expose", action="append", help="PORT/tcp (repeatable)")
    b.add_argument("--owners", choices=("files", "root"), default="files")
    b.add_argument("--chown", action="append", help="PATH=UID:GID (repeatable)")
    b.add_argument("--level", type=int, default=6, help="gzip level (default 6)")
    i = sub.add_parser("inspect")
    i.add_argument("file")
    v = sub.add_parser("verify")
    v.add_argument("file")
    u = sub.add_parser("unpack")
    u.add_argument("file")
    u.add_argument("dir")
    a = p.parse_args()
    {"build": cmd_build, "inspect": cmd_inspect, "verify": cmd_verify, "unpack": cmd_unpack}[a.subcommand](a)


if __name__ == "__main__":
    main()
