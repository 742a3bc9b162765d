//! HTTP to Vault: one pooled client per TLS configuration, and retries with backoff for
//! throttling, 5xx and connection failures, bounded by the mount's deadline.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
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

use super::config::TlsConfig;
use crate::redact::SecretString;

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Largest Vault response read into memory.
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// Time to open a TCP connection before counting Vault as unreachable for this attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call: backoff 0.1, 0.2, 0.4, 0.8 and 1.6 s between them, so an outage is
/// reported within about 3 s instead of holding the mount until kubelet's deadline.
const ATTEMPTS: u32 = 6;

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
    /// Vault's `errors` list, which never holds secret values.
    pub fn errors(&self) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(self.body.expose()).ok();
        let errors: Vec<String> = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(|e| e.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if errors.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {}", self.status, errors.join("; "))
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
    Unreachable(String),
    /// The deadline passed.
    #[error("no answer before the mount deadline")]
    Timeout,
}

/// Pooled HTTP clients, one per TLS configuration, reused by every mount.
#[derive(Default)]
pub struct Transport {
    clients: Mutex<HashMap<TlsConfig, HttpClient>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    fn client(&self, tls: &TlsConfig) -> Result<HttpClient, TransportError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(tls) {
            return Ok(client.clone());
        }
        let client = build_client(tls).map_err(TransportError::Tls)?;
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }

    /// Sends `call`, retrying connection failures, 429 and 5xx with exponential backoff while
    /// the deadline allows; the last answer is returned whatever its status.
    pub async fn send(
        &self,
        tls: &TlsConfig,
        call: &Call<'_>,
        deadline: Instant,
    ) -> Result<Reply, TransportError> {
        let client = self.client(tls)?;
        let uri = format!("{}{}", call.address, call.path_and_query);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let request = build_request(call, &uri)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = tokio::time::timeout(remaining, send_once(&client, request)).await;
            let retry_reason = match outcome {
                Err(_) => return Err(TransportError::Timeout),
                Ok(Ok(reply)) if !retriable(reply.status) => return Ok(reply),
                Ok(Ok(reply)) => Attempt::Status(reply),
                Ok(Err(message)) => Attempt::Failed(message),
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
    Failed(String),
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

async fn send_once(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let response = client
        .request(request)
        .await
        .map_err(|err| crate::csi::full_message(&err))?;
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|err| format!("reading the response: {err}"))?
        .to_bytes();
    Ok(Reply {
        status,
        body: crate::redact::Secret::new(body),
    })
}

fn build_client(tls: &TlsConfig) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?;
    let builder = if tls.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        builder.with_root_certificates(roots(tls)?)
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, "vaultTLSClientCertPath")?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|err| {
                format!(
                    "vaultTLSClientKeyPath {}: no PEM private key could be read: {err}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|err| format!("client certificate and key do not match: {err}"))?
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

fn roots(tls: &TlsConfig) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut custom = false;
    if let Some(file) = &tls.ca_cert {
        for cert in read_certs(file, "vaultCACertPath")? {
            roots
                .add(cert)
                .map_err(|err| format!("vaultCACertPath {}: {err}", file.display()))?;
        }
        custom = true;
    }
    if let Some(dir) = &tls.ca_directory {
        let entries = std::fs::read_dir(dir)
            .map_err(|err| format!("vaultCADirectory {}: {err}", dir.display()))?;
        let mut added = 0;
        for entry in entries.flatten() {
            // A directory may hold keys and other files: use what parses as certificates.
            let certs = CertificateDer::pem_file_iter(entry.path())
                .into_iter()
                .flatten()
                .flatten();
            for cert in certs {
                added += usize::from(roots.add(cert).is_ok());
            }
        }
        if added == 0 {
            return Err(format!(
                "vaultCADirectory {}: no PEM CA certificate in the directory",
                dir.display()
            ));
        }
        custom = true;
    }
    if !custom {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                "no system CA certificates found; set vaultCACertPath to reach Vault over TLS"
            );
        }
    }
    Ok(roots)
}

fn read_certs(path: &Path, parameter: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("{parameter} {}: {err}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|err| {
            format!(
                "{parameter} {}: not a PEM certificate: {err}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{parameter} {}: no PEM certificate in the file",
            path.display()
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
