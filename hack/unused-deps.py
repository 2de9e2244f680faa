#!/usr/bin/env python3
"""Fails on a dependency that no source file of its package names (the way cargo-machete
checks): every crate in [dependencies] and [dev-dependencies] of each workspace package
must appear as `name::` or `use name` (dashes as underscores) in its src/, tests/ or
benches/. A crate that is needed only for its features is listed in IMPLIED."""
import pathlib, re, sys, tomllib

# Pulled in for a feature of another crate, never named in code.
IMPLIED: set[str] = set()

root = pathlib.Path(__file__).resolve().parent.parent
bad = []
for manifest in [root / "Cargo.toml", root / "sim" / "Cargo.toml"]:
    pkg = manifest.parent
    toml = tomllib.loads(manifest.read_text())
    deps = {**toml.get("dependencies", {}), **toml.get("dev-dependencies", {})}
    text = ""
    for d in ("src", "tests", "benches"):
        for f in (pkg / d).rglob("*.rs") if (pkg / d).exists() else []:
            if "target" not in f.parts:
                text += f.read_text()
    for name in deps:
        ident = name.replace("-", "_")
        if name in IMPLIED:
            continue
        if not re.search(rf"\b{ident}::|\buse {ident}\b|\bextern crate {ident}\b|#\[{ident}\b", text):
            bad.append(f"{manifest.relative_to(root)}: {name}")
if bad:
    print("dependencies no source file uses:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("every dependency is used")
