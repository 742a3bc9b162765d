//! Files derived from a volume's fetched objects: a `.pgpass`, a `config.json` or an `.env`
//! built from several secrets. A class declares them under one reserved parameter, which
//! upstream's CRD accepts as any other string; the driver renders them after the provider
//! answered and before the payload is validated, so rotation, sync and versions treat them as
//! any other file.
//!
//! A class is written by a namespace's tenants and rendered by a driver all tenants share, so
//! the language is Jinja restricted to what cannot outgrow its bounds: text, `{{ }}`, `if` and
//! `for`; a fixed set of filters of our own, each charged against one byte budget per render;
//! no operator that builds strings (`+`, `*`, `~`, `**`), no assignment, capture, macro, call
//! or include; a fuel limit on instructions. There is no loader, function or global: a
//! template sees the fetched files and nothing else (no file, environment or network).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use minijinja::machinery::{WhitespaceConfig, ast};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use serde::Deserialize;

use crate::limits;
use crate::provider::local::parse_mode;
use crate::provider::{ObjectVersion, ProviderFile, yaml};
use crate::redact::SecretBytes;

/// The `spec.parameters` key that declares templated files; never passed to a provider.
pub const PARAMETER: &str = "secrets-store.csi.k8s.io/templates";
/// Templated files one class may declare.
pub const MAX_TEMPLATES: usize = 32;
/// Bytes of one template's source.
pub const MAX_TEMPLATE_BYTES: usize = 16 << 10;
/// Instructions one template may execute: far beyond any config file, far below a stall.
const FUEL: u64 = 200_000;
/// The prefix of a templated file's id among the volume's object versions.
pub const VERSION_PREFIX: &str = "template:";

/// Why a class's templates cannot be used. Messages name the class, the file and the line,
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The declaration list is not usable.
    #[error(
        "invalid {PARAMETER} in SecretProviderClass {class}: {reason}; it is a YAML list of \
         {{fileName, template, filePermission}}"
    )]
    Declaration {
        /// `namespace/name`.
        class: String,
        /// What is wrong.
        reason: String,
    },
    /// A template does not parse or uses what the driver does not allow.
    #[error(
        "template for {file:?} in SecretProviderClass {class} is invalid at line {line}: {reason}"
    )]
    Syntax {
        /// `namespace/name`.
        class: String,
        /// The templated file.
        file: String,
        /// Line within the template, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Rendering failed on the fetched objects.
    #[error("template for {file:?} in SecretProviderClass {class} failed at line {line}: {reason}")]
    Render {
        /// `namespace/name`.
        class: String,
        /// The templated file.
        file: String,
        /// Line within the template, from 1.
        line: usize,
        /// What failed.
        reason: String,
    },
    /// A templated file has the name of a fetched object.
    #[error(
        "template for {file:?} in SecretProviderClass {class} has the path of an object the \
         provider returned; give the templated file another fileName"
    )]
    Conflict {
        /// `namespace/name`.
        class: String,
        /// The path both use.
        file: String,
    },
    /// The provider wrote its files itself (a legacy plugin), so there is nothing to render.
    #[error(
        "SecretProviderClass {class} declares templated files but its provider wrote its files \
         itself instead of returning them; templates need a provider that returns its files \
         (every built-in provider and current plugins do)"
    )]
    NoFiles {
        /// `namespace/name`.
        class: String,
    },
}

impl TemplateError {
    /// Whether the class itself is wrong (as opposed to the fetched objects not fitting it).
    pub fn is_declaration(&self) -> bool {
        !matches!(self, Self::Render { .. } | Self::NoFiles { .. })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Declaration {
    file_name: String,
    template: String,
    #[serde(default)]
    file_permission: Option<String>,
}

/// One checked template.
#[derive(Debug, Clone)]
struct Entry {
    file: String,
    mode: u32,
    source: String,
}

/// A class's templated files, checked when the class is read, before any fetch.
#[derive(Debug, Clone)]
pub struct Templates {
    class: String,
    entries: Vec<Entry>,
}

impl Templates {
    /// Takes the declarations out of `parameters` (a provider never sees them) and checks
    /// them; files without a `filePermission` get `default_mode`.
    pub fn take_from(
        class: &str,
        parameters: &mut BTreeMap<String, String>,
        default_mode: u32,
    ) -> Result<Option<Self>, TemplateError> {
        let Some(text) = parameters.remove(PARAMETER) else {
            return Ok(None);
        };
        let text = text.as_str();
        let declaration = |reason: String| TemplateError::Declaration {
            class: class.to_owned(),
            reason,
        };
        let list: Vec<Declaration> =
            yaml::from_str(text, true).map_err(|e| declaration(e.to_string()))?;
        if list.len() > MAX_TEMPLATES {
            return Err(declaration(format!(
                "{} templates; a class may declare at most {MAX_TEMPLATES}",
                list.len()
            )));
        }
        let mut seen = BTreeSet::new();
        let mut entries = Vec::with_capacity(list.len());
        for item in list {
            let file = item.file_name.trim().to_owned();
            limits::check_file_path(&file)
                .map_err(|reason| declaration(format!("fileName {file:?}: {reason}")))?;
            if !seen.insert(file.clone()) {
                return Err(declaration(format!("fileName {file:?} is declared twice")));
            }
            if item.template.len() > MAX_TEMPLATE_BYTES {
                return Err(declaration(format!(
                    "the template for {file:?} has {} bytes; at most {MAX_TEMPLATE_BYTES}",
                    item.template.len()
                )));
            }
            let mode = match &item.file_permission {
                Some(text) => parse_mode(text)
                    .map_err(|e| declaration(format!("filePermission of {file:?}: {e}")))?,
                None => default_mode,
            };
            check_source(&item.template).map_err(|(line, reason)| TemplateError::Syntax {
                class: class.to_owned(),
                file: file.clone(),
                line,
                reason,
            })?;
            entries.push(Entry {
                file,
                mode,
                source: item.template,
            });
        }
        Ok(Some(Self {
            class: class.to_owned(),
            entries,
        }))
    }

    /// Renders every template from the provider's `files`; together they may produce at most
    /// `budget` bytes (outputs and the filters' intermediate strings).
    pub fn render(
        &self,
        files: &[ProviderFile],
        budget: usize,
    ) -> Result<Vec<ProviderFile>, TemplateError> {
        if files.is_empty() {
            return Err(TemplateError::NoFiles {
                class: self.class.clone(),
            });
        }
        if let Some(entry) = self
            .entries
            .iter()
            .find(|e| files.iter().any(|f| f.path == e.file))
        {
            return Err(TemplateError::Conflict {
                class: self.class.clone(),
                file: entry.file.clone(),
            });
        }
        let inputs: BTreeMap<String, Value> = files
            .iter()
            .map(|f| (f.path.clone(), file_value(f.contents.expose())))
            .collect();
        let context = minijinja::context! { files => Value::from(inputs) };
        let spent = Arc::new(AtomicUsize::new(0));
        let env = environment(Budget {
            spent: spent.clone(),
            limit: budget,
        });
        let mut rendered = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let fail = |error: Error| TemplateError::Render {
                class: self.class.clone(),
                file: entry.file.clone(),
                line: error.line().unwrap_or(1),
                reason: describe(&error, files),
            };
            let template = env.template_from_str(&entry.source).map_err(fail)?;
            let mut out = Capped {
                bytes: Vec::new(),
                spent: &spent,
                limit: budget,
            };
            template
                .render_captured_to(&context, &mut out)
                .map_err(fail)?;
            rendered.push(ProviderFile {
                path: entry.file.clone(),
                mode: entry.mode,
                contents: SecretBytes::new(out.bytes),
            });
        }
        Ok(rendered)
    }

    /// One version per templated file, derived from its source and the versions of the
    /// objects it was rendered from: it changes when either does, and holds no value.
    pub fn versions(&self, inputs: &[ObjectVersion]) -> Vec<ObjectVersion> {
        self.entries
            .iter()
            .map(|entry| {
                let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
                digest.update(entry.source.as_bytes());
                digest.update(&entry.mode.to_le_bytes());
                for input in inputs {
                    for part in [&input.id, &input.version] {
                        digest.update(&(part.len() as u64).to_le_bytes());
                        digest.update(part.as_bytes());
                    }
                }
                let hex: String = digest.finish().as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                ObjectVersion {
                    id: format!("{VERSION_PREFIX}{}", entry.file),
                    version: hex,
                }
            })
            .collect()
    }

    /// The templated files' paths.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.file.as_str())
    }
}

/// A file's contents as a template sees them: text when UTF-8, bytes otherwise.
fn file_value(contents: &[u8]) -> Value {
    match std::str::from_utf8(contents) {
        Ok(text) => Value::from(text),
        Err(_) => Value::from_bytes(contents.to_vec()),
    }
}

/// The error's kind and detail, with any input's contents cut out should a message ever
/// quote one.
fn describe(error: &Error, files: &[ProviderFile]) -> String {
    let mut reason = match (error.kind(), std::error::Error::source(error)) {
        // The capped writer's refusal is the useful part of a failed write.
        (ErrorKind::WriteFailure, Some(cause)) => cause.to_string(),
        _ => match error.detail() {
            Some(detail) => format!("{}: {detail}", error.kind()),
            None => error.kind().to_string(),
        },
    };
    if error.kind() == ErrorKind::UndefinedError {
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        reason.push_str(&format!(
            " (the fetched files are {names:?}; write files[\"name\"] for names with dots or \
             dashes)"
        ));
    } else if error.kind() == ErrorKind::OutOfFuel {
        reason.push_str(&format!(
            " (a template may run {FUEL} instructions; loop over less)"
        ));
    }
    for file in files {
        if let Ok(text) = std::str::from_utf8(file.contents.expose())
            && text.len() >= 3
            && reason.contains(text)
        {
            reason = reason.replace(text, "<redacted>");
        }
    }
    reason
}

/// Parses `source` and refuses what the driver does not allow, with the line it is on.
fn check_source(source: &str) -> Result<(), (usize, String)> {
    let parsed =
        minijinja::machinery::parse(source, "<template>", Default::default(), whitespace())
            .map_err(|e| (e.line().unwrap_or(1), describe(&e, &[])))?;
    check_stmt(&parsed)
}

fn refuse<T>(span: minijinja::machinery::Span, what: &str) -> Result<T, (usize, String)> {
    Err((
        usize::from(span.start_line),
        format!(
            "{what} is not allowed in driver templates: use text, {{{{ }}}}, if, for and the \
             documented filters"
        ),
    ))
}

fn check_stmt(stmt: &ast::Stmt<'_>) -> Result<(), (usize, String)> {
    match stmt {
        ast::Stmt::Template(t) => check_body(&t.children),
        ast::Stmt::EmitExpr(e) => check_expr(&e.expr),
        ast::Stmt::EmitRaw(_) => Ok(()),
        ast::Stmt::ForLoop(f) => {
            if f.recursive {
                return refuse(f.span(), "a recursive loop");
            }
            check_expr(&f.target)?;
            check_expr(&f.iter)?;
            if let Some(filter) = &f.filter_expr {
                check_expr(filter)?;
            }
            check_body(&f.body)?;
            check_body(&f.else_body)
        }
        ast::Stmt::IfCond(i) => {
            check_expr(&i.expr)?;
            check_body(&i.true_body)?;
            check_body(&i.false_body)
        }
        ast::Stmt::WithBlock(s) => refuse(s.span(), "a with block"),
        ast::Stmt::Set(s) => refuse(s.span(), "set"),
        ast::Stmt::SetBlock(s) => refuse(s.span(), "a set block"),
        ast::Stmt::AutoEscape(s) => refuse(s.span(), "autoescape"),
        ast::Stmt::FilterBlock(s) => refuse(s.span(), "a filter block"),
        ast::Stmt::Do(s) => refuse(s.span(), "do"),
    }
}

fn check_body(body: &[ast::Stmt<'_>]) -> Result<(), (usize, String)> {
    body.iter().try_for_each(check_stmt)
}

fn check_args(args: &[ast::CallArg<'_>]) -> Result<(), (usize, String)> {
    args.iter().try_for_each(|arg| match arg {
        ast::CallArg::Pos(e) | ast::CallArg::Kwarg(_, e) => check_expr(e),
        ast::CallArg::PosSplat(e) | ast::CallArg::KwargSplat(e) => {
            refuse(e.span(), "argument unpacking")
        }
    })
}

/// Refuses a filter or test the driver does not define, listing those it does.
fn known(
    names: &[&str],
    name: &str,
    what: &str,
    span: minijinja::machinery::Span,
) -> Result<(), (usize, String)> {
    if names.contains(&name) {
        return Ok(());
    }
    Err((
        usize::from(span.start_line),
        format!(
            "unknown {what} {name:?}; the {what}s are {}",
            names.join(", ")
        ),
    ))
}

fn check_expr(expr: &ast::Expr<'_>) -> Result<(), (usize, String)> {
    match expr {
        ast::Expr::Var(_) | ast::Expr::Const(_) => Ok(()),
        ast::Expr::Slice(s) => {
            check_expr(&s.expr)?;
            for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                check_expr(part)?;
            }
            Ok(())
        }
        ast::Expr::UnaryOp(u) => check_expr(&u.expr),
        ast::Expr::BinOp(b) => {
            if let ast::BinOpKind::Add
            | ast::BinOpKind::Mul
            | ast::BinOpKind::Pow
            | ast::BinOpKind::Concat = b.op
            {
                return refuse(b.span(), "the operators +, *, ** and ~");
            }
            check_expr(&b.left)?;
            check_expr(&b.right)
        }
        ast::Expr::Compare(c) => {
            check_expr(&c.expr)?;
            c.ops.iter().try_for_each(|op| check_expr(&op.expr))
        }
        ast::Expr::IfExpr(i) => {
            check_expr(&i.test_expr)?;
            check_expr(&i.true_expr)?;
            i.false_expr.as_ref().map_or(Ok(()), check_expr)
        }
        ast::Expr::Filter(f) => {
            known(FILTERS, f.name, "filter", f.span())?;
            if let Some(e) = &f.expr {
                check_expr(e)?;
            }
            check_args(&f.args)
        }
        ast::Expr::Test(t) => {
            known(TESTS, t.name, "test", t.span())?;
            check_expr(&t.expr)?;
            check_args(&t.args)
        }
        ast::Expr::GetAttr(g) => check_expr(&g.expr),
        ast::Expr::GetItem(g) => {
            check_expr(&g.expr)?;
            check_expr(&g.subscript_expr)
        }
        ast::Expr::Call(c) => refuse(c.span(), "a function or method call"),
        ast::Expr::List(l) => l.items.iter().try_for_each(check_expr),
        ast::Expr::Map(m) => m
            .keys
            .iter()
            .chain(m.values.iter())
            .try_for_each(check_expr),
    }
}

fn whitespace() -> WhitespaceConfig {
    WhitespaceConfig {
        keep_trailing_newline: true,
        lstrip_blocks: true,
        trim_blocks: true,
    }
}

/// The filters a template may use, all defined here.
const FILTERS: &[&str] = &[
    "b64decode",
    "b64encode",
    "default",
    "fromjson",
    "items",
    "join",
    "length",
    "lower",
    "replace",
    "tojson",
    "trim",
    "upper",
    "urlencode",
];
const TESTS: &[&str] = &["defined", "undefined", "none", "string", "mapping"];

/// Bytes the filters of one render have produced, against the render's limit.
#[derive(Clone)]
struct Budget {
    spent: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    fn charge(&self, bytes: usize) -> Result<(), Error> {
        charge(&self.spent, self.limit, bytes)
            .map_err(|message| Error::new(ErrorKind::InvalidOperation, message))
    }

    fn text(&self, text: String) -> Result<Value, Error> {
        self.charge(text.len())?;
        Ok(Value::from(text))
    }
}

fn charge(spent: &AtomicUsize, limit: usize, bytes: usize) -> Result<(), String> {
    let before = spent.fetch_add(bytes, Ordering::Relaxed);
    if before.saturating_add(bytes) > limit {
        return Err(format!(
            "the templates of this volume produce more than its {limit} bytes \
             (--max-call-recv-msg-size)"
        ));
    }
    Ok(())
}

/// The output of one template, charged to the render's budget as it grows.
struct Capped<'a> {
    bytes: Vec<u8>,
    spent: &'a AtomicUsize,
    limit: usize,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        charge(self.spent, self.limit, buf.len()).map_err(std::io::Error::other)?;
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn bytes_of(value: &Value) -> Result<&[u8], Error> {
    value.as_bytes().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("expected text or bytes, got {}", value.kind()),
        )
    })
}

fn text_of(value: &Value) -> Result<&str, Error> {
    value.as_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("expected text, got {}", value.kind()),
        )
    })
}

fn environment(budget: Budget) -> Environment<'static> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_keep_trailing_newline(true);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);

    let b = budget.clone();
    env.add_filter("b64encode", move |value: Value| {
        b.text(STANDARD.encode(bytes_of(&value)?))
    });
    let b = budget.clone();
    env.add_filter("b64decode", move |value: Value| {
        let decoded = STANDARD
            .decode(bytes_of(&value)?.trim_ascii())
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "the value is not base64"))?;
        b.charge(decoded.len())?;
        Ok(file_value(&decoded))
    });
    env.add_filter("default", |value: Value, fallback: Option<Value>| {
        if value.is_undefined() || value.is_none() {
            fallback.unwrap_or_else(|| Value::from(""))
        } else {
            value
        }
    });
    let b = budget.clone();
    env.add_filter("fromjson", move |value: Value| {
        let text = text_of(&value)?;
        b.charge(text.len())?;
        let parsed: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| Error::new(ErrorKind::InvalidOperation, "the value is not JSON"))?;
        Ok(Value::from_serialize(&parsed))
    });
    let b = budget.clone();
    env.add_filter("tojson", move |value: Value| {
        let text = serde_json::to_string(&value).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "the value cannot be written as JSON",
            )
        })?;
        b.text(text)
    });
    let b = budget.clone();
    env.add_filter("join", move |value: Value, separator: Option<String>| {
        let separator = separator.unwrap_or_default();
        let mut joined = String::new();
        for (i, item) in value.try_iter()?.enumerate() {
            let piece = item.to_string();
            b.charge(piece.len() + if i > 0 { separator.len() } else { 0 })?;
            if i > 0 {
                joined.push_str(&separator);
            }
            joined.push_str(&piece);
        }
        Ok(Value::from(joined))
    });
    let b = budget.clone();
    env.add_filter("items", move |value: Value| {
        if value.kind() != minijinja::value::ValueKind::Map {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("items needs a mapping, got {}", value.kind()),
            ));
        }
        let mut pairs = Vec::new();
        for key in value.try_iter()? {
            // The pairs share the map's values; each still costs its slot.
            b.charge(2 * std::mem::size_of::<Value>())?;
            let item = value.get_item(&key)?;
            pairs.push(Value::from(vec![key, item]));
        }
        Ok(Value::from(pairs))
    });
    env.add_filter("length", |value: Value| {
        value.len().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{} has no length", value.kind()),
            )
        })
    });
    let b = budget.clone();
    env.add_filter("lower", move |value: Value| {
        b.text(text_of(&value)?.to_lowercase())
    });
    let b = budget.clone();
    env.add_filter("upper", move |value: Value| {
        b.text(text_of(&value)?.to_uppercase())
    });
    let b = budget.clone();
    env.add_filter("trim", move |value: Value| {
        b.text(text_of(&value)?.trim().to_owned())
    });
    let b = budget.clone();
    env.add_filter("replace", move |value: Value, from: String, to: String| {
        let text = text_of(&value)?;
        if from.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "replace needs a non-empty text to replace",
            ));
        }
        let count = text.matches(from.as_str()).count();
        let size = text.len() - count * from.len() + count.saturating_mul(to.len());
        b.charge(size)?;
        Ok(Value::from(text.replace(from.as_str(), &to)))
    });
    let b = budget;
    env.add_filter("urlencode", move |value: Value| {
        let mut encoded = String::new();
        for byte in bytes_of(&value)? {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    encoded.push(char::from(*byte));
                }
                _ => encoded.push_str(&format!("%{byte:02X}")),
            }
        }
        b.text(encoded)
    });
    env.add_test("defined", |value: Value| !value.is_undefined());
    env.add_test("undefined", |value: Value| value.is_undefined());
    env.add_test("none", |value: Value| value.is_none());
    env.add_test("string", |value: Value| value.as_str().is_some());
    env.add_test("mapping", |value: Value| {
        value.kind() == minijinja::value::ValueKind::Map
    });
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(templates: &str) -> Result<Option<Templates>, TemplateError> {
        let mut parameters = BTreeMap::from([
            (PARAMETER.to_owned(), templates.to_owned()),
            ("objects".to_owned(), "kept".to_owned()),
        ]);
        let taken = Templates::take_from("ns/spc", &mut parameters, 0o644);
        assert_eq!(parameters.keys().collect::<Vec<_>>(), ["objects"]);
        taken
    }

    fn file(path: &str, contents: &str) -> ProviderFile {
        ProviderFile {
            path: path.to_owned(),
            mode: 0o644,
            contents: SecretBytes::new(contents.as_bytes().to_vec()),
        }
    }

    fn render(templates: &str, files: &[ProviderFile]) -> Result<Vec<String>, TemplateError> {
        let templates = class(templates)?.unwrap();
        Ok(templates
            .render(files, 1 << 20)?
            .into_iter()
            .map(|f| String::from_utf8(f.contents.expose().to_vec()).unwrap())
            .collect())
    }

    #[test]
    fn renders_files_from_several_objects_with_filters_and_modes() {
        let templates = r#"
- fileName: .pgpass
  filePermission: "0400"
  template: |
    {{ files.host }}:5432:*:{{ files["db-user"] }}:{{ files["db-pass"] }}
- fileName: conf/app.json
  template: '{{ {"user": files["db-user"], "token": files.json | fromjson | attr_free } }}'
"#;
        // An unknown filter is refused when the class is read.
        let err = class(templates).unwrap_err();
        assert!(
            matches!(&err, TemplateError::Syntax { file, line: 1, .. } if file == "conf/app.json"),
            "{err}"
        );
        assert!(
            err.to_string().contains("unknown filter \"attr_free\""),
            "{err}"
        );

        let templates = r#"
- fileName: .pgpass
  filePermission: "0400"
  template: |
    {{ files.host }}:5432:*:{{ files["db-user"] }}:{{ files["db-pass"] }}
- fileName: app.env
  template: |
    {% for name in files if name != "json" %}
    {{ name | upper | replace("-", "_") }}={{ files[name] | b64encode }}
    {% endfor %}
    TOKEN={{ (files.json | fromjson).token | urlencode }}
    MISSING={{ files.nothing | default("none") }}
"#;
        let files = [
            file("host", "db.internal"),
            file("db-user", "app"),
            file("db-pass", "p@ss:w0rd"),
            file("json", r#"{"token": "a b/c"}"#),
        ];
        let parsed = class(templates).unwrap().unwrap();
        let out = parsed.render(&files, 1 << 20).unwrap();
        assert_eq!(out[0].path, ".pgpass");
        assert_eq!(out[0].mode, 0o400);
        assert_eq!(
            out[0].contents.expose(),
            b"db.internal:5432:*:app:p@ss:w0rd\n"
        );
        assert_eq!(out[1].mode, 0o644);
        assert_eq!(
            std::str::from_utf8(out[1].contents.expose()).unwrap(),
            "DB_PASS=cEBzczp3MHJk\nDB_USER=YXBw\nHOST=ZGIuaW50ZXJuYWw=\nTOKEN=a%20b%2Fc\n\
             MISSING=none\n"
        );
    }

    #[test]
    fn refuses_what_could_outgrow_its_bounds_naming_the_line() {
        for (template, what) in [
            ("ok\n{{ files.a * 100000000 }}", "the operators"),
            ("ok\n{{ files.a ~ files.a }}", "the operators"),
            ("ok\n{{ files.a + files.a }}", "the operators"),
            ("ok\n{% set x = files.a %}", "set"),
            ("ok\n{% set x %}{{ files.a }}{% endset %}", "a set block"),
            ("ok\n{% filter upper %}x{% endfilter %}", "a filter block"),
            ("ok\n{{ range(10) }}", "a function or method call"),
            ("ok\n{{ files.a.upper() }}", "a function or method call"),
            (
                "ok\n{% for x in files recursive %}{% endfor %}",
                "a recursive loop",
            ),
            ("ok\n{% include 'x' %}", "unknown statement"),
            ("ok\n{{ files.a | indent(1000000000) }}", "unknown filter"),
        ] {
            let yaml = format!(
                "- fileName: f\n  template: {}",
                serde_json::to_string(template).unwrap()
            );
            let err = class(&yaml).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, TemplateError::Syntax { line: 2, .. }),
                "{template}: {message}"
            );
            assert!(message.contains(what), "{template}: {message}");
            assert!(
                message.contains("ns/spc") && message.contains("\"f\""),
                "{message}"
            );
        }
    }

    #[test]
    fn render_errors_name_the_line_and_never_a_value() {
        let files = [file("a", "s3cr3t-value"), file("b", "not json")];
        let err = render(
            "- fileName: f\n  template: \"x\\n\\n{{ files.missing }}\"",
            &files,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, TemplateError::Render { line: 3, .. }),
            "{message}"
        );
        assert!(
            message.contains("undefined") && message.contains(r#"["a", "b"]"#),
            "{message}"
        );

        for template in [
            "{{ files.b | fromjson }}",
            "{{ files.a | b64decode }}",
            "{{ files.a | length | upper }}",
        ] {
            let yaml = format!(
                "- fileName: f\n  template: {}",
                serde_json::to_string(template).unwrap()
            );
            let message = render(&yaml, &files).unwrap_err().to_string();
            assert!(
                !message.contains("s3cr3t") && !message.contains("not json"),
                "{message}"
            );
            assert!(message.contains("line 1"), "{message}");
        }
    }

    #[test]
    fn a_json_object_becomes_one_line_per_key() {
        let templates = r#"
- fileName: app.env
  template: |
    {% for key, value in files["db.json"] | fromjson | items %}{{ key | upper }}={{ value }}
    {% endfor %}
"#;
        let files = [file("db.json", r#"{"user": "app", "port": 5432}"#)];
        let out = class(templates)
            .unwrap()
            .unwrap()
            .render(&files, 1 << 20)
            .unwrap();
        assert_eq!(out[0].contents.expose(), b"PORT=5432\nUSER=app\n");
        let err = class("- fileName: f\n  template: \"{{ files.x | items }}\"")
            .unwrap()
            .unwrap()
            .render(&[file("x", "text")], 1 << 20)
            .unwrap_err();
        assert!(err.to_string().contains("items needs a mapping"), "{err}");
    }

    #[test]
    fn the_budget_bounds_loops_and_filters() {
        let big = "x".repeat(1000);
        let files = [file("a", &big)];
        let templates = class(
            "- fileName: f\n  template: \"{% for c in files.a %}{% for d in files.a %}{{ files.a }}{% endfor %}{% endfor %}\"",
        )
        .unwrap()
        .unwrap();
        let err = templates.render(&files, 1 << 20).unwrap_err().to_string();
        assert!(
            err.contains("more than its 1048576 bytes") || err.contains("fuel"),
            "{err}"
        );
        let nested = format!(
            "- fileName: f\n  template: \"{{{{ files.a{} }}}}\"",
            " | replace('x', 'xx')".repeat(30)
        );
        let err = class(&nested)
            .unwrap()
            .unwrap()
            .render(&files, 1 << 20)
            .unwrap_err();
        assert!(err.to_string().contains("more than its"), "{err}");
    }

    #[test]
    fn declarations_are_checked_before_any_fetch() {
        for (yaml, expected) in [
            ("- fileName: ../x\n  template: y", "fileName \"../x\""),
            (
                "- fileName: a\n  template: y\n- fileName: a\n  template: z",
                "declared twice",
            ),
            (
                "- fileName: a\n  template: y\n  filePermission: \"999\"",
                "filePermission",
            ),
            ("- fileName: a\n  tmpl: y", "unknown field"),
            ("not a list", "invalid"),
        ] {
            let message = class(yaml).unwrap_err().to_string();
            assert!(
                message.contains(expected) && message.contains("ns/spc"),
                "{message}"
            );
        }
        let many: String = (0..=MAX_TEMPLATES)
            .map(|i| format!("- fileName: f{i}\n  template: x\n"))
            .collect();
        assert!(class(&many).unwrap_err().to_string().contains("at most 32"));
        let long = format!(
            "- fileName: f\n  template: {}",
            "x".repeat(MAX_TEMPLATE_BYTES + 1)
        );
        assert!(
            class(&long)
                .unwrap_err()
                .to_string()
                .contains("bytes; at most")
        );
    }

    #[test]
    fn a_templated_file_may_not_shadow_an_object_and_versions_follow_inputs() {
        let templates = class("- fileName: a\n  template: x").unwrap().unwrap();
        let err = templates.render(&[file("a", "v")], 1024).unwrap_err();
        assert!(matches!(err, TemplateError::Conflict { .. }), "{err}");

        let templates = class("- fileName: t\n  template: x").unwrap().unwrap();
        let v1 = [ObjectVersion {
            id: "a".into(),
            version: "1".into(),
        }];
        let v2 = [ObjectVersion {
            id: "a".into(),
            version: "2".into(),
        }];
        let (first, again, second) = (
            templates.versions(&v1),
            templates.versions(&v1),
            templates.versions(&v2),
        );
        assert_eq!(first, again);
        assert_ne!(first, second);
        assert_eq!(first[0].id, "template:t");
    }
}
