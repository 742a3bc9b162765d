//! The one YAML (and JSON) reader for what classes and local sources hold, with the bounds of
//! [`crate::limits`]: nesting, node count, alias expansion and, for `objects` lists, entries.

use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{DeserializeOwned, Error as _, IgnoredAny, MapAccess, Visitor};

use crate::limits::{MAX_DOCUMENT_DEPTH, MAX_DOCUMENT_NODES, MAX_FILES};

/// Why a list of objects could not be read.
#[derive(Debug)]
pub enum ListError {
    /// Not YAML of the expected shape, or beyond the document bounds.
    Yaml(serde_saphyr::Error),
    /// More entries than a volume may have.
    TooMany(usize),
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Yaml(err) => err.fmt(f),
            Self::TooMany(count) => write!(
                f,
                "{count} entries; a volume may have at most {MAX_FILES} objects"
            ),
        }
    }
}

/// Parses `text`. `quote_input` lets error messages show the offending lines, which must be
/// off for documents holding secret values.
pub fn from_str<T: DeserializeOwned>(
    text: &str,
    quote_input: bool,
) -> Result<T, serde_saphyr::Error> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DOCUMENT_DEPTH;
    budget.max_nodes = MAX_DOCUMENT_NODES;
    budget.max_events = MAX_DOCUMENT_NODES.saturating_mul(4);
    budget.max_documents = 1;
    budget.max_aliases = 1024;
    budget.max_anchors = 1024;
    // Aliases may repeat text, but never to more than twice the document.
    budget.max_total_scalar_bytes = text.len().saturating_mul(2).max(4096);
    budget.max_recorded_anchor_bytes = text.len().max(4096);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = quote_input;
    serde_saphyr::from_str_with_options(text, options)
}

/// Parses a class's `objects` list, refusing more entries than a volume may have.
pub fn objects<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, ListError> {
    let list: Vec<T> = from_str(text, true).map_err(ListError::Yaml)?;
    if list.len() > MAX_FILES {
        return Err(ListError::TooMany(list.len()));
    }
    Ok(list)
}

/// A mapping read the way Go reads a struct, so classes written for a Go provider parse the
/// same: keys matching no field are skipped (both providers), and with `IGNORE_CASE` a key
/// matches a field exactly or, failing that, ignoring ASCII case, as `encoding/json` does
/// (ASCP's own tests write `objectname` and `jmespath`).
pub trait FoldedFields: Default {
    /// Field names as documented; at most 64.
    const FIELDS: &'static [&'static str];
    /// What the mapping is, for the type error.
    const EXPECTING: &'static str;
    /// Match keys ignoring ASCII case (`encoding/json`), not exactly (`yaml.v3`).
    const IGNORE_CASE: bool = true;
    /// Reads the value of `FIELDS[field]`.
    fn set<'de, A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error>;
    /// Sees a key that matched no field, whose value was skipped.
    fn unknown(&mut self, _key: String) {}
}

/// Deserializes a [`FoldedFields`] mapping; a field given twice (in any spelling) is refused,
/// since which one Go would take is not obvious from the class.
pub fn deserialize_folded<'de, T: FoldedFields, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    struct Fields<T>(PhantomData<T>);
    impl<'de, T: FoldedFields> Visitor<'de> for Fields<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut out = T::default();
            let mut seen = 0u64;
            while let Some(key) = map.next_key::<String>()? {
                let field = T::FIELDS.iter().position(|f| *f == key).or_else(|| {
                    T::FIELDS
                        .iter()
                        .position(|f| T::IGNORE_CASE && f.eq_ignore_ascii_case(&key))
                });
                let Some(field) = field else {
                    map.next_value::<IgnoredAny>()?;
                    out.unknown(key);
                    continue;
                };
                if seen & (1 << field) != 0 {
                    return Err(A::Error::custom(format!(
                        "{key:?}: {} is given twice (keys match ignoring case)",
                        T::FIELDS[field]
                    )));
                }
                seen |= 1 << field;
                out.set(field, &mut map)?;
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Fields(PhantomData))
}

/// Implements `Deserialize` for [`FoldedFields`] types through [`deserialize_folded`].
macro_rules! folded_deserialize {
    ($($ty:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::provider::yaml::deserialize_folded(deserializer)
            }
        }
    )*};
}
pub(crate) use folded_deserialize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_wide_and_expanding_documents_are_refused() {
        let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
        assert!(from_str::<serde_json::Value>(&deep, true).is_err());
        let block_deep: String = (0..200)
            .map(|i| format!("{}- \n", "  ".repeat(i)))
            .collect();
        assert!(from_str::<serde_json::Value>(&block_deep, true).is_err());
        let laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n\
                      c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n\
                      e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n";
        assert!(from_str::<serde_json::Value>(laughs, true).is_err());
        let many = "- x\n".repeat(MAX_FILES + 1);
        assert!(matches!(
            objects::<String>(&many),
            Err(ListError::TooMany(n)) if n == MAX_FILES + 1
        ));
        assert_eq!(objects::<String>("- a\n- b\n").unwrap(), ["a", "b"]);
    }

    #[test]
    fn secret_documents_are_not_quoted_in_errors() {
        let err = from_str::<std::collections::BTreeMap<String, String>>(
            "alpha: hunter2-value\n  bad: [indent",
            false,
        )
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2-value"), "{err}");
    }
}
