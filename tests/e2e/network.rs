//! A corporate network in miniature: bitbucket-sim behind TLS with a certificate of a CA
//! of its own (what a TLS-inspecting proxy presents), and an HTTP CONNECT proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// TLS in front of a plain-http backend: `url` is `https://localhost:PORT`, its certificate
/// signed by the CA in `ca` (PEM), made with the real `openssl`.
pub struct TlsFront {
    pub url: String,
    pub ca: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(dir: &Path, backend: &str) -> TlsFront {
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        openssl(
            &[&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Inspecting Proxy CA"]]
                .concat(),
        );
        openssl(&[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat());
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ]);
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backend = backend.trim_start_matches("http://").trim_end_matches('/').to_string();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    if let Ok(mut plain) = TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsFront { url: format!("https://localhost:{port}"), ca, task }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy that only tunnels (CONNECT), as corporate proxies for HTTPS do; `tunnels`
/// records every `host:port` asked for.
pub struct ConnectProxy {
    pub url: String,
    pub tunnels: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut client = BufReader::new(tcp);
                    let mut request = String::new();
                    let _ = client.read_line(&mut request).await;
                    let mut line = String::new();
                    while client.read_line(&mut line).await.is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let mut client = client.into_inner();
                    let target = match request.split_whitespace().collect::<Vec<_>>()[..] {
                        ["CONNECT", target, _] => target.to_string(),
                        _ => {
                            let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await;
                            return;
                        }
                    };
                    seen.lock().unwrap().push(target.clone());
                    // localhost may resolve to ::1 first; the backends listen on IPv4.
                    let addr = target.replace("localhost:", "127.0.0.1:");
                    match TcpStream::connect(&addr).await {
                        Ok(mut upstream) => {
                            let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                        Err(_) => {
                            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        }
                    }
                });
            }
        });
        ConnectProxy { url, tunnels, task }
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
