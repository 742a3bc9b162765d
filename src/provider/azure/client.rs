//! The wire to Azure: Entra ID's token endpoint (form POST) and Key Vault's REST API
//! (`GET {vault}/{secrets|keys|certificates}/{name}/{version}?api-version=7.4`), JSON over
//! HTTPS. Retries 429, 5xx and connection failures with backoff inside the mount's deadline,
//! as the Azure SDK's retry policy does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;

use super::config::{Cloud, ObjectRef};
use crate::provider::https::{self, HttpsClient, SendError};
use crate::redact::{Secret, SecretString};

/// The Key Vault data-plane version the plugin's SDK speaks.
pub const API_VERSION: &str = "7.4";
/// Attempts per call: backoff 0.1, 0.2, 0.4 and 0.8 s between them.
const ATTEMPTS: u32 = 5;
/// Largest token answer.
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// Key Vault's own limit on a secret is 25 KB; its JSON envelope (with a PKCS#12 certificate
/// chain in base64) stays well under this.
const MAX_VAULT_ANSWER: usize = 1 << 20;

/// Where Entra ID and the vaults are, for tests and private clouds.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// Entra ID's authority host, instead of the cloud's (`AZURE_AUTHORITY_HOST`).
    pub authority: Option<String>,
    /// The vault URL with `{vault}` for its name, instead of `https://{vault}.<suffix>`.
    pub vault: Option<String>,
}

impl Endpoints {
    /// The token endpoint of `tenant`.
    pub fn token_url(&self, cloud: Cloud, tenant: &str) -> String {
        let authority = self.authority.as_deref().unwrap_or(cloud.authority());
        format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        )
    }

    /// The base URL of vault `name` (already checked to be a host label).
    pub fn vault_url(&self, cloud: Cloud, name: &str) -> String {
        match &self.vault {
            Some(template) => template.replace("{vault}", name),
            None => format!("https://{name}.{}", cloud.vault_suffix()),
        }
    }

    /// The URL of one object.
    pub fn object_url(&self, cloud: Cloud, vault: &str, object: &ObjectRef) -> String {
        format!(
            "{}/{}/{}/{}?api-version={API_VERSION}",
            self.vault_url(cloud, vault).trim_end_matches('/'),
            object.kind.collection(),
            object.name,
            object.version
        )
    }
}

/// Why a call failed; the texts never hold a body, a token or a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// An HTTP error answer: the status, the service's error code and its message.
    Http {
        /// The status.
        status: u16,
        /// `error.code` (Key Vault) or `error` (Entra ID), with any inner code.
        code: String,
        /// The service's message, cut short.
        message: String,
    },
    /// No connection, or it broke.
    Unreachable(String),
    /// No answer before the mount's deadline.
    Timeout,
    /// The answer is larger than allowed.
    TooLarge(usize),
    /// A request could not be built, or an answer not read.
    Invalid(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::Timeout => f.write_str("no answer before the mount's deadline"),
            Self::TooLarge(limit) => write!(f, "the answer is larger than {limit} bytes"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

/// The provider's connection pool to Azure, shared by every mount.
#[derive(Debug)]
pub struct Client {
    endpoints: Endpoints,
    http: std::sync::OnceLock<HttpsClient>,
}

impl Client {
    /// A client for `endpoints`; connections are opened on first use.
    pub fn new(endpoints: Endpoints) -> Self {
        Self {
            endpoints,
            http: std::sync::OnceLock::new(),
        }
    }

    /// The endpoints in use.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// POSTs a url-encoded form (it holds a credential) and returns the JSON answer.
    pub async fn post_form(
        &self,
        url: &str,
        form: &SecretString,
        deadline: Instant,
    ) -> Result<Secret<Bytes>, CallError> {
        self.call(url, None, Some(form), MAX_TOKEN_ANSWER, deadline)
            .await
    }

    /// GETs a Key Vault object with `token`, reading at most `limit` bytes.
    pub async fn get(
        &self,
        url: &str,
        token: &SecretString,
        limit: usize,
        deadline: Instant,
    ) -> Result<Secret<Bytes>, CallError> {
        self.call(
            url,
            Some(token),
            None,
            limit.min(MAX_VAULT_ANSWER),
            deadline,
        )
        .await
    }

    async fn call(
        &self,
        url: &str,
        bearer: Option<&SecretString>,
        form: Option<&SecretString>,
        limit: usize,
        deadline: Instant,
    ) -> Result<Secret<Bytes>, CallError> {
        let client = self.http.get_or_init(https::client);
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let request = build(url, bearer, form)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let failure =
                match tokio::time::timeout(remaining, https::send(client, request, limit)).await {
                    Err(_) => CallError::Timeout,
                    Ok(Ok((status, body))) if (200..300).contains(&status) => return Ok(body),
                    Ok(Ok((status, body))) => error_answer(status, body.expose()),
                    Ok(Err(SendError::Unreachable(why))) => CallError::Unreachable(why),
                    Ok(Err(SendError::TooLarge(limit))) => CallError::TooLarge(limit),
                };
            let retryable = match &failure {
                CallError::Http { status, .. } => matches!(status, 408 | 429 | 500..=599),
                CallError::Unreachable(_) => true,
                _ => false,
            };
            let fits = attempt < ATTEMPTS
                && Instant::now() + backoff + Duration::from_millis(200) < deadline;
            if !retryable || !fits {
                return Err(failure);
            }
            tracing::debug!(url = %strip_query(url), error = %failure, ?backoff, "azure endpoint failing, retrying");
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }
}

fn build(
    url: &str,
    bearer: Option<&SecretString>,
    form: Option<&SecretString>,
) -> Result<http::Request<Full<Bytes>>, CallError> {
    let method = if form.is_some() { "POST" } else { "GET" };
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = bearer {
        let value = https::bearer(token.expose())
            .ok_or_else(|| CallError::Invalid("the token is not a header value".to_owned()))?;
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
            Full::new(Bytes::from(form.expose().clone()))
        }
        None => Full::new(Bytes::new()),
    };
    builder
        .body(body)
        .map_err(|_| CallError::Invalid(format!("cannot build a request for {url:?}")))
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// The error of an answer: Key Vault's `{"error":{"code","message","innererror"}}` or Entra
/// ID's `{"error","error_description"}`, cut to a length fit for an Event; never the body.
fn error_answer(status: u16, body: &[u8]) -> CallError {
    #[derive(Deserialize, Default)]
    struct Inner {
        #[serde(default)]
        code: String,
    }
    #[derive(Deserialize)]
    struct Nested {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        innererror: Option<Inner>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Code(String),
        Nested(Nested),
    }
    #[derive(Deserialize)]
    struct Body {
        error: Option<ErrorField>,
        #[serde(default)]
        error_description: String,
    }
    let (code, message) = match serde_json::from_slice::<Body>(body) {
        Ok(Body {
            error: Some(ErrorField::Nested(nested)),
            ..
        }) => {
            let code = match nested.innererror.unwrap_or_default().code {
                inner if inner.is_empty() => nested.code,
                inner => format!("{} ({inner})", nested.code),
            };
            (code, nested.message)
        }
        Ok(Body {
            error: Some(ErrorField::Code(code)),
            error_description,
        }) => (code, error_description),
        _ => (String::new(), "no error message".to_owned()),
    };
    let cut = |text: String| text.chars().take(512).collect::<String>();
    CallError::Http {
        status,
        code: cut(code),
        message: cut(message),
    }
}

/// A form body of `pairs`, url-encoded.
pub fn form(pairs: &[(&str, &str)]) -> SecretString {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        out.append_pair(name, value);
    }
    Secret::new(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::azure::config::ObjectType;

    #[test]
    fn urls_follow_the_cloud_and_the_overrides() {
        let object = ObjectRef {
            kind: ObjectType::Cert,
            name: "c1".to_owned(),
            version: String::new(),
        };
        let default = Endpoints::default();
        assert_eq!(
            default.object_url(Cloud::China, "kv", &object),
            "https://kv.vault.azure.cn/certificates/c1/?api-version=7.4"
        );
        assert_eq!(
            default.token_url(Cloud::Public, "tid"),
            "https://login.microsoftonline.com/tid/oauth2/v2.0/token"
        );
        let local = Endpoints {
            authority: Some("http://127.0.0.1:9/".to_owned()),
            vault: Some("http://127.0.0.1:8/{vault}".to_owned()),
        };
        assert_eq!(
            local.object_url(Cloud::Public, "kv", &object),
            "http://127.0.0.1:8/kv/certificates/c1/?api-version=7.4"
        );
        assert_eq!(
            local.token_url(Cloud::Public, "t"),
            "http://127.0.0.1:9/t/oauth2/v2.0/token"
        );
    }

    #[test]
    fn errors_carry_codes_never_bodies() {
        let vault = br#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#;
        assert_eq!(
            error_answer(403, vault),
            CallError::Http {
                status: 403,
                code: "Forbidden (SecretDisabled)".to_owned(),
                message: "Operation get is not allowed on a disabled secret.".to_owned()
            }
        );
        let entra = br#"{"error":"invalid_client","error_description":"AADSTS70021: No matching federated identity record found."}"#;
        assert!(
            matches!(error_answer(400, entra), CallError::Http { code, .. } if code == "invalid_client")
        );
        let CallError::Http { message, .. } = error_answer(500, b"hunter2 plain text") else {
            panic!()
        };
        assert!(!message.contains("hunter2"));
    }
}
