//! The HTTPS client of the built-in providers that speak JSON over HTTP (Google's token
//! endpoints, Microsoft Entra ID and Key Vault): rustls with the system's roots, bounded
//! answers, one connection pool per provider.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::redact::Secret;

/// A pooled HTTP/1.1 client for `https://` (and `http://` for emulators).
pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Time to open a connection before the attempt counts as failed (gRPC channels too).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why no answer could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No connection, or it broke (the text says how; it never holds a body).
    Unreachable(String),
    /// The answer is larger than the limit given.
    TooLarge(usize),
}

/// A client trusting the system's CA store.
pub fn client() -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(crate::provider::native_roots())
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Sends `request` and reads at most `limit` bytes of the answer, held as a secret: it may
/// carry a token or a secret value.
pub async fn send(
    client: &HttpsClient,
    request: http::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, Secret<Bytes>), SendError> {
    let response = client
        .request(request)
        .await
        .map_err(|err| SendError::Unreachable(crate::error::full_message(&err)))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                SendError::TooLarge(limit)
            } else {
                SendError::Unreachable(format!("reading the answer: {err}"))
            }
        })?
        .to_bytes();
    Ok((status, Secret::new(body)))
}

/// An `Authorization: Bearer` value, marked sensitive so no debug output shows it.
pub fn bearer(token: &str) -> Option<http::HeaderValue> {
    let mut value = http::HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}
