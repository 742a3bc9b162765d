//! From a Vault response to file contents: `secretKey` (descending into KV v2's `data.data`),
//! raw strings versus JSON values, `encoding`, or the whole response envelope.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{Deserializer as _, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::client::Reply;
use super::config::{Encoding, ObjectConfig};
use super::{NAME, gojson};
use crate::provider::ProviderError;
use crate::redact::{Secret, SecretString};

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
                source: None,
            },
            Self::Malformed => ProviderError::Backend {
                provider,
                message: format!(
                    "couldn't read secret {name:?}: the answer for {path} is not Vault JSON; \
                     check that vaultAddress points at Vault"
                ),
                source: None,
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
        ProviderError::BackendUnavailable {
            message, source, ..
        } => ProviderError::BackendUnavailable {
            provider,
            message: named(message),
            source: source.clone(),
        },
        ProviderError::BackendTimeout {
            message, source, ..
        } => ProviderError::BackendTimeout {
            provider,
            message: named(message),
            source: source.clone(),
        },
        ProviderError::InvalidParameters { message, .. } => ProviderError::InvalidParameters {
            provider,
            message: named(message),
        },
        ProviderError::ResponseTooLarge { limit, message, .. } => ProviderError::ResponseTooLarge {
            provider,
            limit: *limit,
            message: named(message),
        },
        other => ProviderError::Backend {
            provider,
            message: named(&crate::error::full_message(other)),
            source: None,
        },
    }
}

/// A successful Vault answer as received. Only its bytes are kept, never a parsed tree (which
/// takes many times the size of the text), and they may hold secrets.
#[derive(Debug, Clone)]
pub struct Response {
    body: Secret<Bytes>,
    /// A dynamic secret's lease: such a secret is each pod's own, never shared, and kept
    /// by renewing the lease rather than reading again.
    pub lease: Option<Lease>,
}

/// The lease Vault gave a dynamic secret.
#[derive(Debug, Clone)]
pub struct Lease {
    /// `lease_id`; it can renew or revoke the credential, so it is kept redacted.
    pub id: SecretString,
    /// `lease_duration`.
    pub duration: Duration,
    /// `renewable`.
    pub renewable: bool,
}

impl Response {
    /// Whether Vault leased the secret (a database credential, not a KV read).
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// The answer's size in bytes.
    pub fn len(&self) -> usize {
        self.body.expose().len()
    }

    /// Whether the answer is empty (never, for a classified one).
    pub fn is_empty(&self) -> bool {
        self.body.expose().is_empty()
    }
}

/// The top level of a Vault answer, borrowing each field's JSON text.
type Top<'a> = BTreeMap<String, &'a RawValue>;

fn top(body: &[u8]) -> Result<Top<'_>, ReadFailure> {
    serde_json::from_slice(body).map_err(|_| ReadFailure::Malformed)
}

/// The secret's data as Vault's Go client finds it: the envelope's `data`, or, when the
/// answer is no envelope at all (every envelope field absent or zero), the whole answer.
fn data<'a>(top: &Top<'a>, body: &'a [u8]) -> Option<&'a RawValue> {
    if gojson::is_zero(gojson::SECRET, top) {
        let only_errors = top.keys().all(|k| k == "errors");
        return (!only_errors)
            .then(|| serde_json::from_slice(body).ok())
            .flatten();
    }
    top.get("data").copied().filter(|d| d.get() != "null")
}

/// Classifies an HTTP answer; `Ok` holds the answer. Vault's error list is only extracted
/// from failed answers.
pub fn classify(reply: Reply) -> Result<Response, ReadFailure> {
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
    let body = reply.body;
    if body.expose().is_empty() {
        return Err(ReadFailure::Empty(String::new()));
    }
    let parsed = top(body.expose())?;
    if data(&parsed, body.expose()).is_none() {
        let warnings: Vec<String> = parsed
            .get("warnings")
            .and_then(|w| serde_json::from_str(w.get()).ok())
            .unwrap_or_default();
        return Err(ReadFailure::Empty(bounded_join(&warnings)));
    }
    let field = |name: &str| parsed.get(name).map(|v| v.get());
    let lease = field("lease_id")
        .and_then(|id| serde_json::from_str::<Option<String>>(id).ok().flatten())
        .filter(|id| !id.is_empty())
        .map(|id| Lease {
            id: SecretString::new(id),
            duration: field("lease_duration")
                .and_then(|d| serde_json::from_str::<u64>(d).ok())
                .map_or(Duration::ZERO, Duration::from_secs),
            renewable: field("renewable").is_some_and(|r| r == "true"),
        });
    Ok(Response {
        body: Secret::new(body.into_inner()),
        lease,
    })
}

/// Messages quoted from Vault, joined and cut to a length fit for an Event.
pub fn bounded_join(parts: &[String]) -> String {
    let mut joined = parts.join("; ");
    if joined.len() > 512 {
        let mut end = 512;
        while !joined.is_char_boundary(end) {
            end -= 1;
        }
        joined.truncate(end);
        joined.push_str("...");
    }
    joined
}

/// The file contents of `object` from its answer.
pub fn contents(object: &ObjectConfig, response: &Response) -> Result<Vec<u8>, ProviderError> {
    let malformed = || ProviderError::Backend {
        provider: NAME.to_owned(),
        message: format!(
            "couldn't read secret {:?}: the answer for {} is not Vault JSON",
            object.name,
            object.request.path_and_query()
        ),
        source: None,
    };
    let too_deep = || ProviderError::Backend {
        provider: NAME.to_owned(),
        message: format!(
            "couldn't read secret {:?}: the answer for {} nests JSON more than {} levels deep",
            object.name,
            object.request.path_and_query(),
            crate::limits::MAX_DOCUMENT_DEPTH
        ),
        source: None,
    };
    let unencodable = |why| match why {
        gojson::Unencodable::TooDeep => too_deep(),
        gojson::Unencodable::Invalid => malformed(),
    };
    let body = response.body.expose();
    let parsed = top(body).map_err(|_| malformed())?;
    let data = data(&parsed, body).ok_or_else(malformed)?;
    let Some(key) = &object.secret_key else {
        // The envelope upstream writes when `secretKey` is empty: api.Secret re-encoded.
        let mut out = Vec::with_capacity(response.len());
        let envelope = if gojson::is_zero(gojson::SECRET, &parsed) {
            BTreeMap::from([("data".to_owned(), data)])
        } else {
            parsed
        };
        gojson::encode_struct(gojson::SECRET, &envelope, &mut out).map_err(unencodable)?;
        return Ok(out);
    };
    // KV v2 nests the secret under data.data.
    let data = match find(data, "data") {
        Some(Found {
            value: Some(inner), ..
        }) if inner.get().starts_with('{') => inner,
        _ => data,
    };
    let found = find(data, key).unwrap_or_default();
    let value = found.value.ok_or_else(|| ProviderError::ObjectNotFound {
        provider: NAME.to_owned(),
        message: format!(
            "couldn't read secret {:?}: key {key:?} does not exist at the secret path {} \
             (keys there: {}); check secretKey",
            object.name,
            object.request.path_and_query(),
            found.others.join(", ")
        ),
    })?;
    let raw = if value.get().starts_with('"') {
        serde_json::from_str::<String>(value.get())
            .map_err(|_| malformed())?
            .into_bytes()
    } else {
        let mut out = Vec::with_capacity(value.get().len());
        gojson::encode(value, &mut out).map_err(unencodable)?;
        out
    };
    decode(object, key, raw)
}

/// Keys listed when `secretKey` is not found, so the message stays short.
const LISTED_KEYS: usize = 32;

/// A key looked up in a JSON object, with some of the other keys.
#[derive(Default)]
struct Found<'a> {
    value: Option<&'a RawValue>,
    others: Vec<String>,
}

/// Looks `key` up in the JSON object `object` without building the object: each entry is
/// skipped over, so the cost is one pass and no memory the size of the object. `None` when
/// `object` is not an object.
fn find<'a>(object: &'a RawValue, key: &str) -> Option<Found<'a>> {
    struct Lookup<'k>(&'k str);
    impl<'de> Visitor<'de> for Lookup<'_> {
        type Value = Found<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = Found::default();
            while let Some(name) = map.next_key::<String>()? {
                let value: &'de RawValue = map.next_value()?;
                if name == self.0 {
                    found.value = Some(value);
                } else if found.others.len() < LISTED_KEYS {
                    found.others.push(name);
                }
            }
            Ok(found)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(object.get());
    deserializer.deserialize_map(Lookup(key)).ok()
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

    fn reply(status: u16, body: &[u8]) -> Reply {
        Reply {
            status,
            body: Secret::new(Bytes::copy_from_slice(body)),
        }
    }

    fn response(body: &str) -> Response {
        classify(reply(200, body.as_bytes())).unwrap()
    }

    fn text(object: &ObjectConfig, response: &Response) -> String {
        String::from_utf8(contents(object, response).unwrap()).unwrap()
    }

    #[test]
    fn keys_come_from_kv2_data_data_and_non_strings_are_vaults_json() {
        let kv2 = response(
            r#"{"data": {"data": {"s": "plain", "n": 10, "o": {"a": [6, "x", true], "b": "h\u003cp"}}, "metadata": {"version": 3}}}"#,
        );
        assert_eq!(text(&object(Some("s"), Encoding::Utf8), &kv2), "plain");
        assert_eq!(text(&object(Some("n"), Encoding::Utf8), &kv2), "10");
        assert_eq!(
            text(&object(Some("o"), Encoding::Utf8), &kv2),
            r#"{"a":[6,"x",true],"b":"h\u003cp"}"#
        );
        let kv1 = response(r#"{"data": {"s": "v1"}}"#);
        assert_eq!(text(&object(Some("s"), Encoding::Utf8), &kv1), "v1");
        let err = contents(&object(Some("missing"), Encoding::Utf8), &kv2).unwrap_err();
        assert_eq!(err.grpc_code(), tonic::Code::NotFound);
        let message = err.to_string();
        assert!(
            message.contains("key \"missing\" does not exist"),
            "{message}"
        );
        assert!(message.contains("keys there: s, n, o"), "{message}");
        assert!(!message.contains("plain"), "{message}");
    }

    #[test]
    fn encodings_decode_and_bad_values_are_not_echoed() {
        let response =
            response(r#"{"data": {"b": "aGVsbG8=", "h": "68656C6c6f", "bad": "%%secret%%"}}"#);
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
        let envelope = response(
            r#"{"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
                "data": {"k": "v w", "n": 1.50}, "warnings": null, "auth": null, "mount_type": "kv"}"#,
        );
        assert_eq!(
            text(&object(None, Encoding::Base64), &envelope),
            r#"{"request_id":"r","lease_id":"","lease_duration":0,"renewable":false,"data":{"k":"v w","n":1.50},"warnings":null,"mount_type":"kv"}"#
        );
        // An answer that is no envelope is the data itself, as Vault's client takes it.
        let raw = response(r#"{"initialized": true, "sealed": false}"#);
        assert_eq!(text(&object(Some("sealed"), Encoding::Utf8), &raw), "false");
        assert_eq!(
            text(&object(None, Encoding::Utf8), &raw),
            r#"{"request_id":"","lease_id":"","lease_duration":0,"renewable":false,"data":{"initialized":true,"sealed":false},"warnings":null}"#
        );
        assert!(matches!(
            classify(reply(200, br#"{"errors": []}"#)),
            Err(ReadFailure::Empty(_))
        ));
    }

    #[test]
    fn answers_are_classified() {
        assert!(matches!(
            classify(reply(403, b"")),
            Err(ReadFailure::Denied(_))
        ));
        assert!(matches!(
            classify(reply(404, b"")),
            Err(ReadFailure::NotFound(_))
        ));
        assert!(matches!(
            classify(reply(400, b"")),
            Err(ReadFailure::Rejected(_))
        ));
        assert!(matches!(
            classify(reply(503, b"")),
            Err(ReadFailure::Failing(_))
        ));
        assert!(matches!(
            classify(reply(200, b"<html>")),
            Err(ReadFailure::Malformed)
        ));
        assert!(matches!(
            classify(reply(200, br#"{"data":null,"warnings":["w1"]}"#)),
            Err(ReadFailure::Empty(w)) if w == "w1"
        ));
        let leased = response(
            r#"{"lease_id":"database/creds/x/1","lease_duration":3600,"renewable":true,"data":{}}"#,
        );
        let lease = leased.lease.unwrap();
        assert_eq!(lease.id.expose(), "database/creds/x/1");
        assert_eq!(lease.duration, Duration::from_secs(3600));
        assert!(lease.renewable);
        let fixed = response(r#"{"lease_id":"aws/creds/x/1","lease_duration":900,"data":{}}"#);
        assert!(!fixed.lease.unwrap().renewable);
        assert!(!response(r#"{"lease_id": "", "data": {}}"#).is_leased());
    }

    #[test]
    fn deep_or_huge_answers_build_nothing_their_size() {
        // Nesting costs no stack: values are skipped over as text, and re-encoding them as
        // Go does stops at the document depth bound.
        let nested = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = format!(r#"{{"data": {{"k": {nested}, "s": "v"}}}}"#);
        let deep = response(&deep);
        assert_eq!(text(&object(Some("s"), Encoding::Utf8), &deep), "v");
        for key in [Some("k"), None] {
            let err = contents(&object(key, Encoding::Utf8), &deep).unwrap_err();
            assert!(err.to_string().contains("levels deep"), "{err}");
        }
        // A wide object is looked through, not collected: only the key asked for is kept.
        let wide: String = (0..100_000).map(|i| format!(r#""k{i}":{i},"#)).collect();
        let body = format!(r#"{{"data": {{{wide}"want": "v"}}}}"#);
        let found = response(&body);
        assert_eq!(text(&object(Some("want"), Encoding::Utf8), &found), "v");
        let err = contents(&object(Some("nope"), Encoding::Utf8), &found).unwrap_err();
        assert!(err.to_string().len() < 2048, "{err}");
        let errors = format!(r#"{{"errors": ["{}"]}}"#, "e".repeat(100_000));
        let Err(ReadFailure::Failing(message)) = classify(reply(500, errors.as_bytes())) else {
            panic!("not failing")
        };
        assert!(message.len() < 1024, "{}", message.len());
    }
}
