//! Certificates made by the system's `openssl` for the tests, and a TLS front that puts a test
//! server behind a cloud's real host names.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// A cloud's own host names in front of a test server, for a client that cannot be pointed
/// elsewhere (an upstream plugin): an HTTP CONNECT proxy that terminates TLS for any host with
/// a certificate for the names given (signed by the CA in `ca_file`) and passes the bytes on
/// to the test server, in HTTP/1.1 or, for gRPC, HTTP/2. Stops on drop.
pub struct Front {
    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub proxy: String,
    /// The CA to trust, for `SSL_CERT_FILE`.
    pub ca_file: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    /// Starts the front for `names`, passing connections to `upstream` (`host:port`); `h2`
    /// offers HTTP/2 by ALPN (gRPC clients require it), else HTTP/1.1 only.
    pub async fn start(names: &[&str], upstream: &str, h2: bool) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject as _;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca", names);
        issue(d, "server", "ca", "server");
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(d.join("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let mut config = config;
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    // The CONNECT request's head, then the tunnel.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if client.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    if !head.starts_with(b"CONNECT ") {
                        let _ = client
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    }
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                });
            }
        });
        Front {
            proxy,
            ca_file: d.join("ca.pem"),
            task,
            _dir: dir,
        }
    }
}

/// The `openssl` configuration of the certificates made here: CAs, leaves and TLS servers for
/// `names`, all with key identifiers (a chain's order depends on them).
fn config(names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    format!(
        "[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=unused\n\
         [ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n\
         [leaf]\nbasicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n\
         [server]\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
         subjectAltName={}\n",
        names.join(",")
    )
}

/// A self-signed CA `NAME.pem` with its key `NAME.key` in `dir`, whose `ext.cnf` serves
/// `names`.
pub fn ca(dir: &Path, name: &str, names: &[&str]) {
    std::fs::write(dir.join("ext.cnf"), config(names)).unwrap();
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN=test-{name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-config",
            "ext.cnf",
            "-extensions",
            "ca",
            "-subj",
            &subject,
        ],
    );
}

/// A certificate `NAME.pem` (key `NAME.key`) signed by `issuer`, with the config section
/// `extensions`.
pub fn issue(dir: &Path, name: &str, issuer: &str, extensions: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subject = format!("/CN=test-{name}");
    openssl(
        dir,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr,
            "-config", "ext.cnf", "-subj", &subject,
        ],
    );
    let (issuer_pem, issuer_key) = (format!("{issuer}.pem"), format!("{issuer}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &issuer_pem,
            "-CAkey",
            &issuer_key,
            "-set_serial",
            "7",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-extensions",
            extensions,
            "-out",
            &pem,
        ],
    );
}

pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the tests need the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
