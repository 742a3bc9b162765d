//! JSON written the way vault-csi-provider writes it, so a file holding a whole answer or a
//! non-string value has the same bytes as under upstream: what Vault's Go client decoded (with
//! `UseNumber`, so numbers keep their text) re-encoded by Go's `encoding/json`, that is map
//! keys sorted, the last of duplicate keys kept, no whitespace, `<`, `>`, `&`, U+2028 and
//! U+2029 escaped, and every other string escaped as Go escapes it.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::limits::MAX_DOCUMENT_DEPTH;

/// Why a value could not be re-encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Unencodable {
    /// Not valid JSON (an answer that parsed never is).
    Invalid,
    /// Nested deeper than [`MAX_DOCUMENT_DEPTH`] levels.
    TooDeep,
}

impl From<serde_json::Error> for Unencodable {
    fn from(_: serde_json::Error) -> Self {
        Self::Invalid
    }
}

/// Appends `value` as Go re-encodes it. Each nesting level re-reads its own text, so the work
/// is bounded by the answer's size times [`MAX_DOCUMENT_DEPTH`], as is the stack.
pub fn encode(value: &RawValue, out: &mut Vec<u8>) -> Result<(), Unencodable> {
    encode_nested(value, out, 0)
}

fn encode_nested(value: &RawValue, out: &mut Vec<u8>, depth: usize) -> Result<(), Unencodable> {
    let text = value.get().trim_ascii();
    if depth >= MAX_DOCUMENT_DEPTH && matches!(text.as_bytes().first(), Some(b'{' | b'[')) {
        return Err(Unencodable::TooDeep);
    }
    match text.as_bytes().first() {
        Some(b'{') => {
            let entries: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(&key, out);
                out.push(b':');
                encode_nested(value, out, depth + 1)?;
            }
            out.push(b'}');
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            out.push(b'[');
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode_nested(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Some(b'"') => string(&serde_json::from_str::<String>(text)?, out),
        // Numbers as written (json.Number), true, false and null.
        _ => out.extend_from_slice(text.as_bytes()),
    }
    Ok(())
}

/// One field of a Go struct the client decodes an answer into.
#[derive(Clone, Copy)]
pub enum Field {
    /// A `string`: `""` when absent or null.
    Str(&'static str),
    /// An `int`: `0` when absent or null.
    Int(&'static str),
    /// A `bool`: `false` when absent or null.
    Bool(&'static str),
    /// A map, slice or pointer without `omitempty`: `null` when absent.
    Any(&'static str),
    /// A pointer with `omitempty`: left out when absent or null.
    OmitNull(&'static str),
    /// A `string` with `omitempty`: left out when absent, null or empty.
    OmitEmpty(&'static str),
}

/// The fields of `api.Secret` (hashicorp/vault/api v1.23) in declaration order.
pub const SECRET: &[Field] = &[
    Field::Str("request_id"),
    Field::Str("lease_id"),
    Field::Int("lease_duration"),
    Field::Bool("renewable"),
    Field::Any("data"),
    Field::Any("warnings"),
    Field::OmitNull("auth"),
    Field::OmitNull("wrap_info"),
    Field::OmitEmpty("mount_type"),
];

/// Whether every field of `fields` holds Go's zero value, as in an answer that is not an
/// envelope at all (the client then takes the whole answer as its data).
pub fn is_zero(fields: &[Field], values: &BTreeMap<String, &RawValue>) -> bool {
    fields.iter().all(|field| {
        let name = match *field {
            Field::Str(name)
            | Field::Int(name)
            | Field::Bool(name)
            | Field::Any(name)
            | Field::OmitNull(name)
            | Field::OmitEmpty(name) => name,
        };
        values
            .get(name)
            .is_none_or(|v| matches!(v.get().trim_ascii(), "null" | "\"\"" | "0" | "false"))
    })
}

/// Appends a struct of `fields` whose values are looked up in `values` (absent: Go's zero).
pub fn encode_struct(
    fields: &[Field],
    values: &BTreeMap<String, &RawValue>,
    out: &mut Vec<u8>,
) -> Result<(), Unencodable> {
    out.push(b'{');
    let mut first = true;
    for field in fields {
        let (name, zero, omit) = match *field {
            Field::Str(name) => (name, Some("\"\""), false),
            Field::Int(name) => (name, Some("0"), false),
            Field::Bool(name) => (name, Some("false"), false),
            Field::Any(name) => (name, None, false),
            Field::OmitNull(name) => (name, None, true),
            Field::OmitEmpty(name) => (name, Some("\"\""), true),
        };
        let value = values
            .get(name)
            .copied()
            .filter(|v| v.get().trim_ascii() != "null");
        if omit && value.is_none_or(|v| Some(v.get().trim_ascii()) == zero) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        string(name, out);
        out.push(b':');
        match (value, zero) {
            (Some(value), _) => encode_nested(value, out, 1)?,
            (None, Some(zero)) => out.extend_from_slice(zero.as_bytes()),
            (None, None) => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Ok(())
}

/// A string as Go's encoder escapes it with HTML escaping on (`json.Marshal`).
fn string(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in text.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                let code = u32::from(c);
                out.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((code >> shift) & 0xf) as usize]);
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(json: &str) -> String {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        encode(raw, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_as_gos_encoder_writes_them() {
        assert_eq!(
            go(r#" { "b": [1.50, -0, 1E5, true, null], "a": {"z": "x", "y": {}} , "b": 7 } "#),
            r#"{"a":{"y":{},"z":"x"},"b":7}"#
        );
        assert_eq!(
            go(r#""<a href=\"x\">&amp;</a>\u00e9\/\u2028\u0001\b\f\n\u007f""#),
            "\"\\u003ca href=\\\"x\\\"\\u003e\\u0026amp;\\u003c/a\\u003e\u{e9}/\\u2028\\u0001\\b\\f\\n\u{7f}\""
        );
        assert_eq!(go("[]"), "[]");
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(go(&nested(MAX_DOCUMENT_DEPTH)), nested(MAX_DOCUMENT_DEPTH));
        let deep_text = nested(100_000);
        let deep: &RawValue = serde_json::from_str(&deep_text).unwrap();
        assert_eq!(encode(deep, &mut Vec::new()), Err(Unencodable::TooDeep));
    }

    #[test]
    fn structs_follow_declaration_order_zero_values_and_omitempty() {
        let body = r#"{"mount_type": "kv", "data": {"k": 1}, "auth": null, "extra": 1,
                       "renewable": true, "wrap_info": {"token": "t"}}"#;
        let values: BTreeMap<String, &RawValue> = serde_json::from_str(body).unwrap();
        let mut out = Vec::new();
        encode_struct(SECRET, &values, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"request_id":"","lease_id":"","lease_duration":0,"renewable":true,"data":{"k":1},"warnings":null,"wrap_info":{"token":"t"},"mount_type":"kv"}"#
        );
    }
}
