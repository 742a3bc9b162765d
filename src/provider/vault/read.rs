//! From a Vault response to file contents: `secretKey` (descending into KV v2's `data.data`),
//! raw strings versus JSON values, `encoding`, or the whole response envelope.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use super::NAME;
use super::client::Reply;
use super::config::{Encoding, ObjectConfig};
use crate::provider::ProviderError;

/// Why a read produced no usable response; turned into a `ProviderError` naming the first
/// object that needed it.
#[derive(Debug, Clone)]
pub enum ReadFailure {
    /// HTTP 403 with a token that was just obtained.
    Denied(String),
    /// HTTP 404.
    NotFound(String),
    /// 200 or 204 without data.
    Empty(String),
    /// Another 4xx: the request itself is wrong (e.g. PKI arguments).
    Rejected(String),
    /// 5xx or 429 after retries.
    Failing(String),
    /// Not JSON.
    Malformed,
    /// Login, transport or deadline failure, already explained.
    Other(std::sync::Arc<ProviderError>),
}

impl ReadFailure {
    /// The error for `object`, saying what to check.
    pub fn for_object(&self, object: &ObjectConfig, address: &str, role: &str) -> ProviderError {
        let path = object.request.path_and_query();
        let name = &object.name;
        let provider = NAME.to_owned();
        match self {
            Self::Denied(errors) => ProviderError::PermissionDenied {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: {} {path} was refused ({errors}); check that \
                     the policies of role {role:?} allow it",
                    object.request.method
                ),
            },
            Self::NotFound(errors) => ProviderError::ObjectNotFound {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: {path} does not exist ({errors}); check \
                     secretPath (KV v2 paths include data/, e.g. secret/data/app)"
                ),
            },
            Self::Empty(warnings) => ProviderError::ObjectNotFound {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: empty response from {path:?}, warnings: [{warnings}]"
                ),
            },
            Self::Rejected(errors) => ProviderError::InvalidParameters {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: Vault rejected {} {path}: {errors}; check \
                     method and secretArgs",
                    object.request.method
                ),
            },
            Self::Failing(errors) => ProviderError::BackendUnavailable {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: Vault at {address} kept failing for {path} \
                     ({errors}); it may be sealed, overloaded or down"
                ),
            },
            Self::Malformed => ProviderError::Backend {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: the answer for {path} is not Vault JSON; \
                     check that vaultAddress points at Vault"
                ),
            },
            Self::Other(err) => clone_error(err, name),
        }
    }
}

/// `err` (a login or transport failure met while reading) with the object's name in front.
fn clone_error(err: &ProviderError, object: &str) -> ProviderError {
    let provider = NAME.to_owned();
    let named = |message: &str| format!("couldn't read secret {object:?}: {message}");
    match err {
        ProviderError::Unauthenticated { message, .. } => ProviderError::Unauthenticated {
            provider,
            message: named(message),
        },
        ProviderError::BackendUnavailable { message, .. } => ProviderError::BackendUnavailable {
            provider,
            message: named(message),
        },
        ProviderError::BackendTimeout { message, .. } => ProviderError::BackendTimeout {
            provider,
            message: named(message),
        },
        ProviderError::InvalidParameters { message, .. } => ProviderError::InvalidParameters {
            provider,
            message: named(message),
        },
        other => ProviderError::Backend {
            provider,
            message: named(&other.to_string()),
        },
    }
}

/// Classifies an HTTP answer; `Ok` holds the parsed response. Vault's error list is only
/// extracted from failed answers.
pub fn classify(reply: &Reply) -> Result<Value, ReadFailure> {
    match reply.status {
        200 | 204 => {}
        403 => return Err(ReadFailure::Denied(reply.errors())),
        404 => {
            // KV v2 answers 404 with metadata for a deleted or destroyed version.
            return Err(ReadFailure::NotFound(reply.errors()));
        }
        400..=499 => return Err(ReadFailure::Rejected(reply.errors())),
        _ => return Err(ReadFailure::Failing(reply.errors())),
    }
    let body = reply.body.expose();
    if body.is_empty() {
        return Err(ReadFailure::Empty(String::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| ReadFailure::Malformed)?;
    if value.get("data").is_none_or(Value::is_null) {
        let warnings = value
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| {
                w.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        return Err(ReadFailure::Empty(warnings));
    }
    Ok(value)
}

/// Whether a response may be shared with other pods of the same identity: a dynamic secret
/// (with a lease) is each pod's own.
pub fn shareable(response: &Value) -> bool {
    response
        .get("lease_id")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
}

/// The envelope upstream writes when `secretKey` is empty, in its field order.
#[derive(Serialize)]
struct Envelope<'a> {
    request_id: &'a Value,
    lease_id: &'a Value,
    lease_duration: &'a Value,
    renewable: &'a Value,
    data: &'a Value,
    warnings: &'a Value,
}

/// The file contents of `object` from its response.
pub fn contents(object: &ObjectConfig, response: &Value) -> Result<Vec<u8>, ProviderError> {
    let Some(key) = &object.secret_key else {
        let field = |name: &str| response.get(name).unwrap_or(&Value::Null);
        let envelope = Envelope {
            request_id: field("request_id"),
            lease_id: field("lease_id"),
            lease_duration: field("lease_duration"),
            renewable: field("renewable"),
            data: field("data"),
            warnings: field("warnings"),
        };
        // Serializing JSON values cannot fail.
        return Ok(serde_json::to_vec(&envelope).unwrap_or_default());
    };
    let data = &response["data"];
    // KV v2 nests the secret under data.data.
    let data = match data.get("data") {
        Some(inner) if inner.is_object() => inner,
        _ => data,
    };
    let value = data.get(key).ok_or_else(|| {
        let available = data
            .as_object()
            .map(|map| map.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        ProviderError::ObjectNotFound {
            provider: NAME.to_owned(),
            message: format!(
                "couldn't read secret {:?}: key {key:?} does not exist at the secret path {} \
                 (keys there: {available}); check secretKey",
                object.name,
                object.request.path_and_query()
            ),
        }
    })?;
    let raw = match value {
        Value::String(text) => text.clone().into_bytes(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    decode(object, key, raw)
}

fn decode(object: &ObjectConfig, key: &str, raw: Vec<u8>) -> Result<Vec<u8>, ProviderError> {
    let bad = |encoding: &str| ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message: format!(
            "object {:?}: the value of key {key:?} at {} is not valid {encoding}; check the \
             object's encoding field (utf-8, base64 or hex)",
            object.name,
            object.request.path_and_query()
        ),
    };
    match object.encoding {
        Encoding::Utf8 => Ok(raw),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(raw.trim_ascii())
            .map_err(|_| bad("base64")),
        Encoding::Hex => hex_decode(raw.trim_ascii()).ok_or_else(|| bad("hex")),
    }
}

fn hex_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16);
    text.chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::provider::vault::config::ReadRequest;

    fn object(key: Option<&str>, encoding: Encoding) -> ObjectConfig {
        ObjectConfig {
            name: "obj".to_owned(),
            request: ReadRequest {
                method: "GET".to_owned(),
                path: "/v1/secret/data/app".to_owned(),
                query: None,
                body: None,
            },
            secret_key: key.map(str::to_owned),
            encoding,
            mode: None,
        }
    }

    fn reply(status: u16, body: &'static [u8]) -> Reply {
        Reply {
            status,
            body: crate::redact::Secret::new(bytes::Bytes::from_static(body)),
        }
    }

    fn text(object: &ObjectConfig, response: &Value) -> String {
        String::from_utf8(contents(object, response).unwrap()).unwrap()
    }

    #[test]
    fn keys_come_from_kv2_data_data_and_non_strings_are_json() {
        let kv2 = json!({"data": {"data": {"s": "plain", "n": 10, "o": {"b": "hop", "a": [6, "x", true]}}, "metadata": {"version": 3}}});
        assert_eq!(text(&object(Some("s"), Encoding::Utf8), &kv2), "plain");
        assert_eq!(text(&object(Some("n"), Encoding::Utf8), &kv2), "10");
        assert_eq!(
            text(&object(Some("o"), Encoding::Utf8), &kv2),
            r#"{"a":[6,"x",true],"b":"hop"}"#
        );
        let kv1 = json!({"data": {"s": "v1"}});
        assert_eq!(text(&object(Some("s"), Encoding::Utf8), &kv1), "v1");
        let err = contents(&object(Some("missing"), Encoding::Utf8), &kv2).unwrap_err();
        assert_eq!(err.grpc_code(), tonic::Code::NotFound);
        let message = err.to_string();
        assert!(
            message.contains("key \"missing\" does not exist"),
            "{message}"
        );
        assert!(message.contains("keys there: n, o, s"), "{message}");
        assert!(!message.contains("plain"), "{message}");
    }

    #[test]
    fn encodings_decode_and_bad_values_are_not_echoed() {
        let response = json!({"data": {"b": "aGVsbG8=", "h": "68656C6c6f", "bad": "%%secret%%"}});
        assert_eq!(
            text(&object(Some("b"), Encoding::Base64), &response),
            "hello"
        );
        assert_eq!(text(&object(Some("h"), Encoding::Hex), &response), "hello");
        for encoding in [Encoding::Base64, Encoding::Hex] {
            let err = contents(&object(Some("bad"), encoding), &response).unwrap_err();
            assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument);
            assert!(!err.to_string().contains("secret%%"), "{err}");
        }
    }

    #[test]
    fn without_a_key_the_whole_envelope_is_written_in_upstream_order() {
        let response = json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false, "data": {"k": "v"}, "warnings": null, "auth": null, "mount_type": "kv"});
        assert_eq!(
            text(&object(None, Encoding::Base64), &response),
            r#"{"request_id":"r","lease_id":"","lease_duration":0,"renewable":false,"data":{"k":"v"},"warnings":null}"#
        );
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            classify(&reply(403, b"")),
            Err(ReadFailure::Denied(_))
        ));
        assert!(matches!(
            classify(&reply(404, b"")),
            Err(ReadFailure::NotFound(_))
        ));
        assert!(matches!(
            classify(&reply(400, b"")),
            Err(ReadFailure::Rejected(_))
        ));
        assert!(matches!(
            classify(&reply(503, b"")),
            Err(ReadFailure::Failing(_))
        ));
        assert!(matches!(
            classify(&reply(200, b"<html>")),
            Err(ReadFailure::Malformed)
        ));
        assert!(matches!(
            classify(&reply(200, br#"{"data":null,"warnings":["w1"]}"#)),
            Err(ReadFailure::Empty(w)) if w == "w1"
        ));
        let ok = classify(&reply(
            200,
            br#"{"lease_id":"database/creds/x/1","data":{}}"#,
        ))
        .unwrap();
        assert!(!shareable(&ok));
        assert!(shareable(&json!({"lease_id": "", "data": {}})));
    }
}
