//! HTTP to Vault: pooled clients, one per TLS configuration (a bounded set, built on the
//! blocking pool), and retries with backoff for throttling, 5xx and connection failures,
//! bounded by the mount's deadline. Every answer's body counts against the mount's budget.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::config::{TlsConfig, TlsFile, TlsPolicy};
use crate::limits::{ByteBudget, MAX_CA_DIRECTORY_FILES, MAX_TLS_CLIENTS, MAX_TLS_FILE_BYTES};
use crate::provider::shared_cache::SharedCache;
use crate::provider::{Cause, cause};
use crate::redact::SecretString;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Time to open a TCP connection before counting Vault as unreachable for this attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call: backoff 0.1, 0.2, 0.4, 0.8 and 1.6 s between them, so an outage is
/// reported within about 3 s instead of holding the mount until kubelet's deadline.
const ATTEMPTS: u32 = 6;
/// How long a client is kept: certificate files that change are read again after this.
const CLIENT_TTL: Duration = Duration::from_secs(600);

/// One Vault API call.
#[derive(Debug)]
pub struct Call<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Vault base address.
    pub address: &'a str,
    /// `/v1/...?query`.
    pub path_and_query: &'a str,
    /// `X-Vault-Token`.
    pub token: Option<&'a SecretString>,
    /// `X-Vault-Namespace`.
    pub namespace: Option<&'a str>,
    /// JSON body; may hold a secret (a login JWT), so it is never logged.
    pub body: Option<&'a SecretString>,
}

/// An HTTP answer from Vault (any status).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Response body; may hold secrets.
    pub body: crate::redact::Secret<Bytes>,
}

impl Reply {
    /// Vault's `errors` list, which never holds secret values, cut to a length fit for an
    /// Event. Nothing else of the body is parsed.
    pub fn errors(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Errors {
            #[serde(default)]
            errors: Vec<String>,
        }
        let errors = serde_json::from_slice::<Errors>(self.body.expose())
            .map(|e| e.errors)
            .unwrap_or_default();
        if errors.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!(
                "HTTP {}: {}",
                self.status,
                super::read::bounded_join(&errors)
            )
        }
    }
}

/// Why no HTTP answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS settings could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// The request cannot be built from the class's settings (e.g. a namespace with
    /// characters not allowed in a header).
    #[error("{0}")]
    InvalidRequest(String),
    /// No connection could be made, even after retries.
    #[error("{0}")]
    Unreachable(Cause),
    /// The deadline passed.
    #[error("no answer before the mount deadline")]
    Timeout,
    /// Vault's answers for this volume were larger than its budget.
    #[error("the answers for this volume were larger than {limit} bytes")]
    TooLarge {
        /// The volume's budget.
        limit: usize,
    },
}

/// Pooled HTTP clients, one per TLS configuration, reused by every mount. At most
/// `MAX_TLS_CLIENTS` are kept; each is rebuilt after `CLIENT_TTL`.
pub struct Transport {
    clients: SharedCache<TlsConfig, HttpClient>,
    policy: Arc<TlsPolicy>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Self::new(TlsPolicy::default())
    }
}

impl Transport {
    /// A transport reading class TLS files only where `policy` allows.
    pub fn new(policy: TlsPolicy) -> Self {
        Self {
            clients: SharedCache::new(MAX_TLS_CLIENTS),
            policy: Arc::new(policy),
        }
    }

    /// TLS configurations with a client kept, for tests.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    async fn client(&self, tls: &TlsConfig) -> Result<HttpClient, TransportError> {
        self.clients.drop_expired();
        let (client, _) = self
            .clients
            .get_or_fetch(tls, |_| async {
                // Reading certificate files and the system store is blocking work.
                let (tls, policy) = (tls.clone(), self.policy.clone());
                let built = tokio::task::spawn_blocking(move || build_client(&tls, &policy))
                    .await
                    .map_err(|join| TransportError::Tls(format!("TLS setup failed: {join}")))?
                    .map_err(TransportError::Tls)?;
                Ok::<_, TransportError>((built, CLIENT_TTL))
            })
            .await?;
        Ok(client)
    }

    /// Sends `call`, retrying connection failures, 429 and 5xx with exponential backoff while
    /// the deadline allows; the last answer is returned whatever its status. Every body read
    /// is charged to `budget`.
    pub async fn send(
        &self,
        tls: &TlsConfig,
        call: &Call<'_>,
        deadline: Instant,
        budget: &ByteBudget,
    ) -> Result<Reply, TransportError> {
        let client = self.client(tls).await?;
        let uri = format!("{}{}", call.address, call.path_and_query);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let request = build_request(call, &uri)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome =
                tokio::time::timeout(remaining, send_once(&client, request, budget)).await;
            let retry_reason = match outcome {
                Err(_) => return Err(TransportError::Timeout),
                Ok(Err(Failed::TooLarge(limit))) => return Err(TransportError::TooLarge { limit }),
                Ok(Ok(reply)) if !retriable(reply.status) => return Ok(reply),
                Ok(Ok(reply)) => Attempt::Status(reply),
                Ok(Err(Failed::Transport(message))) => Attempt::Failed(message),
            };
            let next = Instant::now() + backoff;
            // Retry only if the wait and a fresh attempt still fit before the deadline.
            if attempt >= ATTEMPTS || next + Duration::from_millis(200) >= deadline {
                return match retry_reason {
                    Attempt::Status(reply) => Ok(reply),
                    Attempt::Failed(message) => Err(TransportError::Unreachable(message)),
                };
            }
            match &retry_reason {
                Attempt::Status(reply) => tracing::debug!(
                    status = reply.status,
                    path = call.path_and_query,
                    ?backoff,
                    "vault is throttling or failing, retrying"
                ),
                Attempt::Failed(message) => tracing::debug!(
                    error = %message,
                    path = call.path_and_query,
                    ?backoff,
                    "vault unreachable, retrying"
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

enum Attempt {
    Status(Reply),
    Failed(Cause),
}

/// Why one attempt produced no answer.
enum Failed {
    Transport(Cause),
    TooLarge(usize),
}

fn retriable(status: u16) -> bool {
    // 412 is Vault's "not yet replicated" answer for a performance standby.
    matches!(status, 412 | 429 | 500 | 502 | 503 | 504)
}

fn build_request(call: &Call<'_>, uri: &str) -> Result<http::Request<Full<Bytes>>, TransportError> {
    // Vault's LIST is a GET with `list=true`, as its own clients send it.
    let (method, uri) = if call.method == "LIST" {
        let sep = if uri.contains('?') { '&' } else { '?' };
        ("GET", format!("{uri}{sep}list=true"))
    } else {
        (call.method, uri.to_owned())
    };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(&uri)
        .header("X-Vault-Request", "true");
    if let Some(token) = call.token {
        builder = builder.header("X-Vault-Token", token.expose().as_str());
    }
    if let Some(namespace) = call.namespace {
        builder = builder.header("X-Vault-Namespace", namespace);
    }
    let body = match call.body {
        Some(body) => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(body.expose().clone()))
        }
        None => Full::new(Bytes::new()),
    };
    // Only a token or namespace with bytes not allowed in headers can fail here; do not echo it.
    builder.body(body).map_err(|_| {
        TransportError::InvalidRequest(format!(
            "cannot build a request for {}: the address, token or namespace has invalid characters",
            call.path_and_query
        ))
    })
}

/// One attempt: the body is read frame by frame and charged to `budget` as it arrives, so an
/// answer that does not fit is dropped without being held (a declared length that does not
/// fit fails before anything is read).
async fn send_once(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    budget: &ByteBudget,
) -> Result<Reply, Failed> {
    let response = client
        .request(request)
        .await
        .map_err(|err| Failed::Transport(Arc::new(err)))?;
    let status = response.status().as_u16();
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = |e: crate::limits::Exhausted| Failed::TooLarge(e.limit);
    let mut body = Vec::new();
    if let Some(length) = declared {
        budget.charge(length).map_err(too_large)?;
        body.reserve_exact(length);
    }
    let mut stream = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = stream.frame().await {
        let frame = frame
            .map_err(|err| Failed::Transport(cause(format!("reading the response: {err}"))))?;
        if let Some(data) = frame.data_ref() {
            received += data.len();
            match declared {
                Some(length) if received > length => {
                    return Err(Failed::Transport(cause(
                        "the response is longer than its Content-Length",
                    )));
                }
                Some(_) => {}
                None => budget.charge(data.len()).map_err(too_large)?,
            }
            body.extend_from_slice(data);
        }
    }
    Ok(Reply {
        status,
        body: crate::redact::Secret::new(Bytes::from(body)),
    })
}

/// Builds one client; reads files, so it runs on the blocking pool.
fn build_client(tls: &TlsConfig, policy: &TlsPolicy) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?;
    let builder = if tls.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots(tls, policy)?)
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "vaultTLSClientCertPath", policy)?;
            let pem = read_tls_file(key, "vaultTLSClientKeyPath", policy)?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
                format!(
                    "vaultTLSClientKeyPath {}: no PEM private key could be read",
                    key.path.display()
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|_| "the client certificate and key do not match".to_owned())?
        }
        _ => builder.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http();
    let connector = match &tls.server_name {
        Some(name) => {
            let name = ServerName::try_from(name.clone()).map_err(|_| {
                format!("vaultTLSServerName {name:?} is not a DNS name or IP address")
            })?;
            connector.with_server_name_resolver(FixedServerNameResolver::new(name))
        }
        None => connector,
    };
    let connector = connector.enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(32)
        .build(connector))
}

fn roots(tls: &TlsConfig, policy: &TlsPolicy) -> Result<Arc<rustls::RootCertStore>, String> {
    if tls.ca_cert.is_none() && tls.ca_directory.is_none() {
        return Ok(crate::provider::native_roots());
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(file) = &tls.ca_cert {
        for cert in read_certs(file, "vaultCACertPath", policy)? {
            roots.add(cert).map_err(|_| {
                format!(
                    "vaultCACertPath {}: a certificate is not a usable CA",
                    file.path.display()
                )
            })?;
        }
    }
    if let Some(dir) = &tls.ca_directory {
        let resolved = resolve(dir, "vaultCADirectory", policy)?;
        let entries = std::fs::read_dir(&resolved)
            .map_err(|err| format!("vaultCADirectory {}: {err}", dir.path.display()))?;
        let mut added = 0;
        for entry in entries.flatten().take(MAX_CA_DIRECTORY_FILES) {
            // A directory may hold keys and other files: use what parses as certificates, and
            // only files the policy allows (a link may point anywhere).
            let file = TlsFile {
                path: entry.path(),
                from_class: dir.from_class,
            };
            let Ok(pem) = read_tls_file(&file, "vaultCADirectory", policy) else {
                continue;
            };
            for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
                added += usize::from(roots.add(cert).is_ok());
            }
        }
        if added == 0 {
            return Err(format!(
                "vaultCADirectory {}: no PEM CA certificate in the directory",
                dir.path.display()
            ));
        }
    }
    Ok(Arc::new(roots))
}

/// `file` with symlinks resolved, checked against `policy` again when a class named it.
fn resolve(file: &TlsFile, parameter: &str, policy: &TlsPolicy) -> Result<PathBuf, String> {
    if file.from_class {
        // Refused without touching the filesystem: the message says nothing of what exists.
        policy.check_inside(parameter, &file.path)?;
    }
    let resolved = file
        .path
        .canonicalize()
        .map_err(|err| format!("{parameter} {}: {err}", file.path.display()))?;
    if file.from_class {
        policy.check_inside(parameter, &resolved)?;
    }
    Ok(resolved)
}

/// A TLS file's bytes, at most `MAX_TLS_FILE_BYTES`.
fn read_tls_file(file: &TlsFile, parameter: &str, policy: &TlsPolicy) -> Result<Vec<u8>, String> {
    let resolved = resolve(file, parameter, policy)?;
    let name = file.path.display();
    let opened =
        std::fs::File::open(&resolved).map_err(|err| format!("{parameter} {name}: {err}"))?;
    let meta = opened
        .metadata()
        .map_err(|err| format!("{parameter} {name}: {err}"))?;
    if !meta.is_file() || meta.len() > MAX_TLS_FILE_BYTES {
        return Err(format!(
            "{parameter} {name}: not a regular file of at most {MAX_TLS_FILE_BYTES} bytes"
        ));
    }
    let mut bytes = Vec::new();
    opened
        .take(MAX_TLS_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|err| format!("{parameter} {name}: {err}"))?;
    Ok(bytes)
}

/// The certificates of a PEM file. Parse errors are not quoted: they may echo the file.
fn read_certs(
    file: &TlsFile,
    parameter: &str,
    policy: &TlsPolicy,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_tls_file(file, parameter, policy)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!(
                "{parameter} {}: not a PEM certificate file",
                file.path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{parameter} {}: no PEM certificate in the file",
            file.path.display()
        ));
    }
    Ok(certs)
}

/// `vaultSkipTLSVerify: "true"`: any certificate is accepted, signatures are still checked.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_pool_stays_bounded_whatever_classes_ask_for() {
        let transport = Transport::default();
        for i in 0..200 {
            let tls = TlsConfig {
                server_name: Some(format!("vault-{i}.example.com")),
                ..TlsConfig::default()
            };
            transport.client(&tls).await.unwrap();
        }
        assert!(
            transport.clients() <= MAX_TLS_CLIENTS,
            "{} clients kept",
            transport.clients()
        );
    }

    #[tokio::test]
    async fn tls_files_are_bounded_and_their_contents_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let policy = TlsPolicy::default();
        let not_pem = dir.path().join("secret.txt");
        std::fs::write(
            &not_pem,
            "-----BEGIN hunter2 secret line\nnot base64 at all\n",
        )
        .unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; MAX_TLS_FILE_BYTES as usize + 1]).unwrap();
        for path in [not_pem, big] {
            let file = TlsFile {
                path,
                from_class: true,
            };
            let err = read_certs(&file, "vaultCACertPath", &policy).unwrap_err();
            assert!(!err.contains("hunter2") && !err.contains("BEGIN"), "{err}");
        }
    }
}
