//! The wire to Google: Secret Manager's `AccessSecretVersion` over gRPC (as the plugin's Go
//! client calls it, one HTTP/2 channel per endpoint), and JSON over HTTPS for the token
//! exchange, service-account impersonation and the metadata server. Retries with backoff on
//! the codes Google's clients retry, bounded by the mount's deadline.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::config::Resource;
use crate::lock::lock;
use crate::provider::https::{self, HttpsClient, SendError};
use crate::redact::{Secret, SecretBytes, SecretString};

/// Attempts per call: backoff 0.1, 0.2, 0.4 and 0.8 s between them.
const ATTEMPTS: u32 = 5;
/// Largest JSON answer of the token endpoints and the metadata server.
const MAX_JSON_ANSWER: usize = 64 << 10;
/// Regional channels kept: a class names its location, so the set is bounded.
const MAX_CHANNELS: usize = 64;
/// The method the plugin calls for every secret.
const ACCESS_PATH: &str = "/google.cloud.secretmanager.v1.SecretManagerService/AccessSecretVersion";

/// Where the Google APIs are; each can be pointed at an emulator or a private endpoint.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Secret Manager for global secrets.
    pub secret_manager: String,
    /// Secret Manager for regional secrets; `{location}` is replaced by the secret's location.
    pub regional_secret_manager: String,
    /// The STS token exchange (the plugin's `GAIA_TOKEN_EXCHANGE_ENDPOINT`).
    pub token_exchange: String,
    /// IAM Credentials, for service-account impersonation.
    pub iam_credentials: String,
    /// The GCE metadata server, for the project and cluster when not configured.
    pub metadata: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            secret_manager: "https://secretmanager.googleapis.com".to_owned(),
            regional_secret_manager: "https://secretmanager.{location}.rep.googleapis.com"
                .to_owned(),
            token_exchange: "https://securetoken.googleapis.com/v1/identitybindingtoken".to_owned(),
            iam_credentials: "https://iamcredentials.googleapis.com".to_owned(),
            metadata: "http://metadata.google.internal".to_owned(),
        }
    }
}

/// A secret version as Secret Manager returned it.
pub struct Accessed {
    /// The version's full name, `latest` resolved to its number: the object version.
    pub name: String,
    /// The payload.
    pub data: SecretBytes,
}

impl std::fmt::Debug for Accessed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accessed")
            .field("name", &self.name)
            .field("bytes", &self.data.expose().len())
            .finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// Secret Manager answered with a gRPC status (after retries for retryable ones).
    Status {
        /// The code.
        code: tonic::Code,
        /// Google's message, which names the resource but never a value.
        message: String,
    },
    /// A JSON endpoint answered with an HTTP error.
    Http {
        /// The status.
        status: u16,
        /// Google's error text (`error_description` or `error.message`).
        message: String,
    },
    /// No answer: connection refused, TLS or transport failure.
    Unreachable(String),
    /// The deadline passed.
    Timeout,
    /// The answer did not fit in the volume's budget (or the JSON bound).
    TooLarge(usize),
    /// The endpoint or a header could not be built from the configuration.
    Invalid(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status { code, message } => write!(f, "{code:?}: {message}"),
            Self::Http { status, message } => write!(f, "HTTP {status}: {message}"),
            Self::Unreachable(message) => write!(f, "unreachable: {message}"),
            Self::Timeout => f.write_str("no answer before the mount's deadline"),
            Self::TooLarge(limit) => write!(f, "the answer is larger than {limit} bytes"),
            Self::Invalid(message) => f.write_str(message),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct AccessSecretVersionRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct AccessSecretVersionResponse {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    payload: Option<SecretPayload>,
}

#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
struct SecretPayload {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

impl std::fmt::Debug for AccessSecretVersionResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessSecretVersionResponse")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SecretPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPayload(redacted)")
    }
}

/// The provider's connections to Google, shared by every mount.
#[derive(Debug)]
pub struct Clients {
    endpoints: Endpoints,
    channels: Mutex<HashMap<String, Channel>>,
    http: std::sync::OnceLock<HttpsClient>,
}

impl Clients {
    /// Clients for `endpoints`; connections are opened on first use.
    pub fn new(endpoints: Endpoints) -> Self {
        Self {
            endpoints,
            channels: Mutex::new(HashMap::new()),
            http: std::sync::OnceLock::new(),
        }
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Where `resource` is served.
    pub fn secret_manager_url(&self, resource: &Resource) -> String {
        match &resource.location {
            Some(location) => self
                .endpoints
                .regional_secret_manager
                .replace("{location}", location),
            None => self.endpoints.secret_manager.clone(),
        }
    }

    fn channel(&self, url: &str) -> Result<Channel, CallError> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(url) {
            return Ok(channel.clone());
        }
        let invalid = |err: tonic::transport::Error| {
            CallError::Invalid(format!("Secret Manager endpoint {url:?}: {err}"))
        };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(invalid)?
            .connect_timeout(https::CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false)
            .user_agent(concat!(
                "secrets-store-csi-driver-rs/",
                env!("CARGO_PKG_VERSION")
            ))
            .map_err(invalid)?;
        if url.starts_with("https://") {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(invalid)?;
        }
        let channel = endpoint.connect_lazy();
        if channels.len() >= MAX_CHANNELS {
            channels.clear();
        }
        channels.insert(url.to_owned(), channel.clone());
        Ok(channel)
    }

    /// `AccessSecretVersion` of `resource` with `token`, its answer at most `max_bytes`.
    pub async fn access(
        &self,
        resource: &Resource,
        token: &SecretString,
        deadline: Instant,
        max_bytes: usize,
    ) -> Result<Accessed, CallError> {
        let channel = self.channel(&self.secret_manager_url(resource))?;
        let bearer = format!("Bearer {}", token.expose());
        let mut authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = bearer
            .parse()
            .map_err(|_| CallError::Invalid("the access token is not a header value".to_owned()))?;
        authorization.set_sensitive(true);
        let routing: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("name={}", encode_param(&resource.name))
                .parse()
                .map_err(|_| {
                    CallError::Invalid("the resource name is not a header value".to_owned())
                })?;
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CallError::Timeout);
            }
            let mut request = tonic::Request::new(AccessSecretVersionRequest {
                name: resource.name.clone(),
            });
            request.set_timeout(remaining);
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            request
                .metadata_mut()
                .insert("x-goog-request-params", routing.clone());
            let mut grpc = tonic::client::Grpc::new(channel.clone())
                .max_decoding_message_size(max_bytes.saturating_add(1024));
            let call = async {
                grpc.ready()
                    .await
                    .map_err(|err| CallError::Unreachable(err.to_string()))?;
                let codec = tonic_prost::ProstCodec::<
                    AccessSecretVersionRequest,
                    AccessSecretVersionResponse,
                >::default();
                grpc.unary(
                    request,
                    http::uri::PathAndQuery::from_static(ACCESS_PATH),
                    codec,
                )
                .await
                .map_err(|status| status_error(&status, max_bytes))
            };
            let outcome = match tokio::time::timeout(remaining, call).await {
                Err(_) => Err(CallError::Timeout),
                Ok(outcome) => outcome,
            };
            let failure = match outcome {
                Ok(response) => {
                    let response = response.into_inner();
                    let data = response.payload.map(|p| p.data).unwrap_or_default();
                    if data.len() > max_bytes {
                        return Err(CallError::TooLarge(max_bytes));
                    }
                    let name = if response.name.is_empty() {
                        resource.name.clone()
                    } else {
                        response.name
                    };
                    return Ok(Accessed {
                        name,
                        data: Secret::new(data),
                    });
                }
                Err(failure) => failure,
            };
            if !retryable(&failure) || !retry_fits(attempt, backoff, deadline) {
                return Err(failure);
            }
            tracing::debug!(resource = %resource.name, error = %failure, ?backoff, "secret manager failing, retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    /// POSTs `body` as JSON to `url` (with `bearer` if given) and returns the JSON answer of
    /// a 2xx; retries 429, 5xx and connection failures.
    pub async fn post_json(
        &self,
        url: &str,
        bearer: Option<&SecretString>,
        body: &SecretString,
        deadline: Instant,
    ) -> Result<Secret<Bytes>, CallError> {
        self.http_call("POST", url, bearer, Some(body), &[], deadline)
            .await
    }

    /// GETs a metadata server value (plain text).
    pub async fn metadata(&self, path: &str, deadline: Instant) -> Result<String, CallError> {
        let url = format!("{}/computeMetadata/v1/{path}", self.endpoints.metadata);
        let answer = self
            .http_call(
                "GET",
                &url,
                None,
                None,
                &[("Metadata-Flavor", "Google")],
                deadline,
            )
            .await?;
        String::from_utf8(answer.expose().to_vec())
            .map(|text| text.trim().to_owned())
            .map_err(|_| CallError::Invalid(format!("{url}: the answer is not text")))
    }

    async fn http_call(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&SecretString>,
        body: Option<&SecretString>,
        headers: &[(&str, &str)],
        deadline: Instant,
    ) -> Result<Secret<Bytes>, CallError> {
        let client = self.http.get_or_init(https::client);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let mut builder = http::Request::builder().method(method).uri(url);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            if let Some(token) = bearer {
                let value = https::bearer(token.expose()).ok_or_else(|| {
                    CallError::Invalid("the token is not a header value".to_owned())
                })?;
                builder = builder.header(http::header::AUTHORIZATION, value);
            }
            let payload = match body {
                Some(body) => {
                    builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                    Full::new(Bytes::from(body.expose().clone()))
                }
                None => Full::new(Bytes::new()),
            };
            let request = builder
                .body(payload)
                .map_err(|_| CallError::Invalid(format!("cannot build a request for {url:?}")))?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let failure = match tokio::time::timeout(
                remaining,
                https::send(client, request, MAX_JSON_ANSWER),
            )
            .await
            {
                Err(_) => CallError::Timeout,
                Ok(Ok((status, body))) if (200..300).contains(&status) => return Ok(body),
                Ok(Ok((status, body))) => CallError::Http {
                    status,
                    message: google_error(body.expose()),
                },
                Ok(Err(SendError::Unreachable(why))) => CallError::Unreachable(why),
                Ok(Err(SendError::TooLarge(limit))) => CallError::TooLarge(limit),
            };
            if !retryable(&failure) || !retry_fits(attempt, backoff, deadline) {
                return Err(failure);
            }
            tracing::debug!(url, error = %failure, ?backoff, "google endpoint failing, retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

fn retry_fits(attempt: u32, backoff: Duration, deadline: Instant) -> bool {
    attempt < ATTEMPTS && Instant::now() + backoff + Duration::from_millis(200) < deadline
}

fn retryable(failure: &CallError) -> bool {
    match failure {
        CallError::Status { code, .. } => matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
        ),
        CallError::Http { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
        CallError::Unreachable(_) => true,
        CallError::Timeout | CallError::TooLarge(_) | CallError::Invalid(_) => false,
    }
}

fn status_error(status: &tonic::Status, max_bytes: usize) -> CallError {
    let message = status.message();
    if message.contains("message length too large") {
        return CallError::TooLarge(max_bytes);
    }
    if status.code() == tonic::Code::Unavailable && message.contains("error trying to connect") {
        return CallError::Unreachable(message.to_owned());
    }
    CallError::Status {
        code: status.code(),
        message: message.chars().take(512).collect(),
    }
}

/// Percent-encodes a routing header value as Google's clients do.
fn encode_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Google's error text from a JSON error body, cut to a length fit for an Event; never the
/// body itself.
fn google_error(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Nested {
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Code(String),
        Nested(Nested),
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Option<ErrorField>,
        #[serde(default)]
        error_description: String,
    }
    let text = match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            error_description, ..
        }) if !error_description.is_empty() => error_description,
        Ok(Body {
            error: Some(ErrorField::Nested(nested)),
            ..
        }) if !nested.message.is_empty() => nested.message,
        Ok(Body {
            error: Some(ErrorField::Code(code)),
            ..
        }) => code,
        _ => "no error message".to_owned(),
    };
    text.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_params_are_encoded_and_errors_never_quote_bodies() {
        assert_eq!(
            encode_param("projects/p/secrets/s/versions/1"),
            "projects%2Fp%2Fsecrets%2Fs%2Fversions%2F1"
        );
        assert_eq!(
            google_error(br#"{"error":"invalid_grant","error_description":"bad token"}"#),
            "bad token"
        );
        assert_eq!(
            google_error(br#"{"error":{"code":403,"message":"Permission denied"}}"#),
            "Permission denied"
        );
        assert_eq!(google_error(b"secret-looking body"), "no error message");
    }
}
