//! `jmesPath` entries: string fields of a JSON secret written as files of their own.
//!
//! Each failure names what the user got wrong (the expression, the field, or a secret that is
//! not JSON) instead of ASCP's "Failed to fetch secret from all regions" (aws#552). Messages
//! never quote the secret.

use super::config::JmesEntry;
use crate::limits::{MAX_JMES_GROWTH, MAX_JMES_LEN, MAX_JMES_OPERATORS, MAX_JMES_SECRET_BYTES};
use jmespath::ast::Ast;

/// Why a field could not be extracted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JmesError {
    /// The secret is not JSON (or not UTF-8).
    #[error(
        "Invalid JSON used with jmesPath in secret: {object}. The secret value must be a JSON \
         object to extract fields from it; remove jmesPath or store JSON"
    )]
    NotJson {
        /// The object's name.
        object: String,
    },
    /// The expression does not parse.
    #[error("Invalid JMES Path: {path}. {reason}")]
    BadPath {
        /// The expression.
        path: String,
        /// The parser's message (about the expression only).
        reason: String,
    },
    /// Nothing is at the path.
    #[error(
        "JMES Path - {path} for object alias - {alias} does not point to a valid object. \
         Check the field name in {object} (names with '-' need quotes: '\"my-key\"')"
    )]
    Missing {
        /// The expression.
        path: String,
        /// The file it was for.
        alias: String,
        /// The object's name.
        object: String,
    },
    /// The secret is larger than `jmesPath` runs on.
    #[error(
        "The secret {object} is {bytes} bytes; jmesPath extracts fields from secrets of at most \
         {MAX_JMES_SECRET_BYTES} bytes (the Secrets Manager limit). Remove jmesPath or store a \
         smaller JSON document"
    )]
    TooLarge {
        /// The object's name.
        object: String,
        /// Its size.
        bytes: usize,
    },
    /// The path selects a number, list or object.
    #[error("Invalid JMES search result type for path:{path}. Only string is allowed.")]
    NotString {
        /// The expression.
        path: String,
    },
}

/// Refuses an expression whose parse or evaluation could take more than a worker thread's
/// stack or build more than [`MAX_JMES_GROWTH`] times its secret: the parser and the
/// interpreter recurse once per operator or bracket, so those are counted (outside quoted names
/// and literals) before anything is compiled, and the compiled tree's growth is bounded before
/// it runs on anything.
pub fn check(path: &str) -> Result<(), String> {
    compile(path).map(drop)
}

/// The expression, compiled only within [`check`]'s bounds.
fn compile(path: &str) -> Result<jmespath::Expression<'static>, String> {
    check_shape(path)?;
    let expression = jmespath::compile(path).map_err(|err| err.reason.to_string())?;
    let growth = growth(expression.as_ast());
    if growth > MAX_JMES_GROWTH {
        return Err(format!(
            "the expression could build {growth} times the secret's size from it (multi-selects \
             under projections and flattens multiply); at most {MAX_JMES_GROWTH} is allowed. \
             Select the one field the file needs"
        ));
    }
    Ok(expression)
}

/// How many times its input an expression's result (or anything it builds on the way) can be,
/// counting shared values once per reference: selections keep the size, multi-selects add their
/// parts, and whatever runs once per element of another result multiplies. Saturates.
fn growth(ast: &Ast) -> u64 {
    match ast {
        Ast::Identity { .. }
        | Ast::Field { .. }
        | Ast::Index { .. }
        | Ast::Slice { .. }
        | Ast::Literal { .. }
        | Ast::Expref { .. } => 1,
        Ast::Flatten { node, .. } | Ast::Not { node, .. } | Ast::ObjectValues { node, .. } => {
            growth(node)
        }
        Ast::Subexpr { lhs, rhs, .. } | Ast::Projection { lhs, rhs, .. } => {
            growth(lhs).saturating_mul(growth(rhs))
        }
        Ast::Comparison { lhs, rhs, .. } | Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } => {
            growth(lhs).saturating_add(growth(rhs))
        }
        Ast::Condition {
            predicate, then, ..
        } => growth(predicate).saturating_add(growth(then)),
        Ast::MultiList { elements, .. } => elements
            .iter()
            .fold(1, |sum: u64, element| sum.saturating_add(growth(element))),
        Ast::MultiHash { elements, .. } => elements
            .iter()
            .fold(1, |sum: u64, pair| sum.saturating_add(growth(&pair.value))),
        // Arguments add up; an expression argument (`map`, `sort_by`) runs once per element.
        Ast::Function { args, .. } => {
            let (values, per_element) =
                args.iter()
                    .fold((0u64, 1u64), |(values, per_element), arg| match arg {
                        Ast::Expref { ast, .. } => {
                            (values, per_element.saturating_mul(growth(ast)))
                        }
                        other => (values.saturating_add(growth(other)), per_element),
                    });
            values.max(1).saturating_mul(per_element)
        }
    }
}

/// The textual bounds, checked before the parser sees the expression.
fn check_shape(path: &str) -> Result<(), String> {
    if path.len() > MAX_JMES_LEN {
        return Err(format!(
            "the expression is {} bytes long; at most {MAX_JMES_LEN} are allowed",
            path.len()
        ));
    }
    let mut operators = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in path.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None if c.is_alphanumeric() || c == '_' || c.is_whitespace() => {}
            None => operators += 1,
        }
    }
    if operators > MAX_JMES_OPERATORS {
        return Err(format!(
            "the expression has {operators} operators and brackets; at most \
             {MAX_JMES_OPERATORS} are allowed"
        ));
    }
    Ok(())
}

/// The value of each entry, in order.
pub fn extract(
    object: &str,
    secret: &[u8],
    entries: &[JmesEntry],
) -> Result<Vec<Vec<u8>>, JmesError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let not_json = || JmesError::NotJson {
        object: object.to_owned(),
    };
    if secret.len() > MAX_JMES_SECRET_BYTES {
        return Err(JmesError::TooLarge {
            object: object.to_owned(),
            bytes: secret.len(),
        });
    }
    let text = std::str::from_utf8(secret).map_err(|_| not_json())?;
    let data = jmespath::Variable::from_json(text).map_err(|_| not_json())?;
    let data = std::rc::Rc::new(data);
    entries
        .iter()
        .map(|entry| {
            let expression = compile(&entry.path).map_err(|reason| JmesError::BadPath {
                path: entry.path.clone(),
                reason,
            })?;
            let found = expression
                .search(data.clone())
                .map_err(|err| JmesError::BadPath {
                    path: entry.path.clone(),
                    reason: err.reason.to_string(),
                })?;
            if found.is_null() {
                return Err(JmesError::Missing {
                    path: entry.path.clone(),
                    alias: entry.alias.clone(),
                    object: object.to_owned(),
                });
            }
            found
                .as_string()
                .map(|s| s.clone().into_bytes())
                .ok_or_else(|| JmesError::NotString {
                    path: entry.path.clone(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> JmesEntry {
        JmesEntry {
            path: path.to_owned(),
            alias: "out".to_owned(),
            mode: None,
        }
    }

    #[test]
    fn string_fields_are_extracted_including_quoted_names() {
        let secret = br#"{"username":"app","db-host":"h","nested":{"port":"5432"}}"#;
        let values = extract(
            "db",
            secret,
            &[
                entry("username"),
                entry("\"db-host\""),
                entry("nested.port"),
            ],
        )
        .unwrap();
        assert_eq!(
            values,
            vec![b"app".to_vec(), b"h".to_vec(), b"5432".to_vec()]
        );
    }

    #[test]
    fn each_failure_says_what_is_wrong_without_the_value() {
        let secret = br#"{"password":"hunter2","port":5432,"nested":{"a":"b"}}"#;
        let err = |path: &str| extract("db", secret, &[entry(path)]).unwrap_err();
        assert!(matches!(err("missing"), JmesError::Missing { .. }));
        assert!(matches!(err("port"), JmesError::NotString { .. }));
        assert!(matches!(err("nested"), JmesError::NotString { .. }));
        assert!(matches!(err("a.["), JmesError::BadPath { .. }));
        assert_eq!(
            extract("db", b"hunter2 is not json", &[entry("x")]).unwrap_err(),
            JmesError::NotJson {
                object: "db".to_owned()
            }
        );
        for path in ["missing", "port", "a.["] {
            assert!(!err(path).to_string().contains("hunter2"));
        }
    }

    #[test]
    fn deep_expressions_are_refused_before_they_are_compiled() {
        for hostile in [
            format!("{}a{}", "(".repeat(5000), ")".repeat(5000)),
            "!".repeat(3000) + "a",
            vec!["a"; 3000].join("."),
            format!("a{}", "[0]".repeat(3000)),
            "a.".repeat(70) + "b",
        ] {
            assert!(check(&hostile).is_err(), "{}", &hostile[..20]);
            let err = extract("db", br#"{"a":"b"}"#, &[entry(&hostile)]).unwrap_err();
            assert!(matches!(err, JmesError::BadPath { .. }), "{err}");
        }
        // Quoted names and literals are not operators; ordinary paths pass.
        for fine in [
            "username",
            "\"db-host\"",
            "credentials[0].password",
            "`\"x.y.z\"`",
            "a.b.c.d.e.f",
        ] {
            assert!(check(fine).is_ok(), "{fine}");
        }
        // A deep JSON literal inside the bounds is refused by the JSON parser's own limit.
        let literal = format!("`{}1{}`", "[".repeat(200), "]".repeat(200));
        assert!(extract("db", br#"{"a":"b"}"#, &[entry(&literal)]).is_err());
    }

    #[test]
    fn expressions_that_multiply_their_secret_are_refused_before_they_run() {
        // Found by fuzzing: five flattened multi-selects of 30 literals each, on the secret `2`,
        // built 24 million values and took the driver past 2.5 GB.
        let stage = format!("][][&b{}", "''".repeat(15));
        let hostile = format!("[n!=[[]]&b{}{}]", "''".repeat(20), stage.repeat(4));
        let err = extract("db", b"2", &[entry(&hostile)]).unwrap_err();
        assert!(
            matches!(&err, JmesError::BadPath { reason, .. } if reason.contains("times the secret")),
            "{err}"
        );
        for hostile in [
            "[*].[@,@,@,@,@,@][].[@,@,@,@,@,@]",
            "map(&[@,@,@,@,@,@], [@,@,@,@,@,@])",
            "[@,@,@,@,@,@,@,@,@,@,@,@,@,@,@,@]",
        ] {
            assert!(check(hostile).is_err(), "{hostile}");
        }
        // What classes use stays well inside.
        for fine in [
            "items[?name=='db'].password | [0]",
            "join(',', [a, b, c])",
            "{a: a, b: b, c: c, d: d, e: e, f: f, g: g, h: h, i: i, j: j} | to_string(@)",
            "join(',', [a, b, c, d, e, f, g, h, i, j, k, l, m, n])",
            "sort_by(users, &name)[0].password",
            "values(@)[0]",
        ] {
            assert!(check(fine).is_ok(), "{fine}");
        }
        // The most an allowed expression builds, on the largest secret allowed, finishes.
        let secret = format!("[{}0]", "0,".repeat(MAX_JMES_SECRET_BYTES / 2 - 2));
        assert!(secret.len() <= MAX_JMES_SECRET_BYTES);
        let widest = "[*].[@,@,@][].[@,@,@] | to_string(@)";
        assert!(check(widest).is_ok());
        let built = extract("db", secret.as_bytes(), &[entry(widest)]).unwrap();
        assert!(built[0].len() > secret.len() * 8);
    }

    #[test]
    fn secrets_larger_than_secrets_manager_allows_are_refused_by_size() {
        let secret = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_JMES_SECRET_BYTES));
        let err = extract("db", secret.as_bytes(), &[entry("a")]).unwrap_err();
        assert_eq!(
            err,
            JmesError::TooLarge {
                object: "db".to_owned(),
                bytes: secret.len()
            }
        );
        assert!(!err.to_string().contains("xxxx"));
    }
}
