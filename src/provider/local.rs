//! The built-in `local` provider: objects from a YAML/JSON file or a directory on this host.
//!
//! It exists for `mount`, demos and tests. On a node it is off unless the operator names a root
//! directory, and then it cannot read outside that root (a pod could otherwise read node files
//! as root).
//!
//! Parameters:
//! - `source`: a YAML/JSON file mapping object names to values, or a directory whose files are
//!   the objects (named by relative path).
//! - `objects` (optional): a YAML list of `{objectName, objectAlias, filePermission}` selecting
//!   objects; without it every object of the source is mounted.
//! - `filePermission` (optional): default octal mode, e.g. `"0640"`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;

use super::version_key::VersionKey;
use super::{
    MountRequest, MountResponse, ObjectVersion, Provider, ProviderError, ProviderFile, yaml,
};
use crate::limits::{self, MAX_FILES, MAX_PATH_DEPTH};
use crate::redact::{Secret, SecretBytes};

/// The provider name classes use.
pub const NAME: &str = "local";

/// The parameters this provider reads, which only the class may set.
pub const PARAMETERS: &[&str] = &["source", "objects", "filePermission"];

/// Reads objects from local files, optionally jailed to a root directory.
#[derive(Debug)]
pub struct LocalProvider {
    base: PathBuf,
    jail: bool,
    version_key: VersionKey,
}

impl LocalProvider {
    /// For nodes: `source` is resolved under `root` and may not leave it, symlinks included.
    pub fn jailed(root: PathBuf, version_key: VersionKey) -> Self {
        Self {
            base: root,
            jail: true,
            version_key,
        }
    }

    /// For the `mount` command: relative sources are resolved against `base`, nothing is jailed.
    pub fn unjailed(base: PathBuf, version_key: VersionKey) -> Self {
        Self {
            base,
            jail: false,
            version_key,
        }
    }

    fn load(
        &self,
        parameters: &BTreeMap<String, String>,
        default_mode: u32,
        max_bytes: usize,
    ) -> Result<MountResponse, ProviderError> {
        let source = parameters.get("source").filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            invalid("parameter `source` is required: the path of a YAML/JSON file or a directory holding the objects")
        })?;
        let default_mode = match parameters.get("filePermission") {
            Some(mode) => {
                parse_mode(mode).map_err(|why| invalid(&format!("filePermission: {why}")))?
            }
            None => default_mode,
        };
        let selection = match parameters.get("objects") {
            Some(objects) if !objects.trim().is_empty() => Some(parse_objects(objects)?),
            _ => None,
        };
        let source_path = self.resolve(Path::new(source.trim()))?;
        let available = if source_path.is_dir() {
            self.read_dir(&source_path, max_bytes)?
        } else {
            parse_source(&read_bounded(&source_path, max_bytes)?, &source_path)?
        };

        let mut files = Vec::new();
        let mut versions = Vec::new();
        let mut seen = BTreeSet::new();
        let wanted: Vec<ObjectSpec> = match selection {
            Some(selection) => selection,
            None => available
                .keys()
                .map(|name| ObjectSpec::named(name))
                .collect(),
        };
        for (index, object) in wanted.iter().enumerate() {
            let contents = available.get(&object.object_name).ok_or_else(|| {
                ProviderError::ObjectNotFound {
                    provider: NAME.to_owned(),
                    message: format!(
                        "objects[{index}]: object {:?} is not in {}; check objectName",
                        object.object_name,
                        source_path.display()
                    ),
                }
            })?;
            let path = object
                .object_alias
                .clone()
                .unwrap_or_else(|| object.object_name.clone());
            limits::check_file_path(&path).map_err(|why| {
                invalid(&format!(
                    "objects[{index}] ({}): file {path:?}: {why}",
                    object.object_name
                ))
            })?;
            if !seen.insert(path.clone()) {
                return Err(invalid(&format!(
                    "objects[{index}] ({}): file {path:?} is produced twice; give one of them an objectAlias",
                    object.object_name
                )));
            }
            let mode = match &object.file_permission {
                Some(mode) => parse_mode(mode).map_err(|why| {
                    invalid(&format!(
                        "objects[{index}] ({}): filePermission: {why}",
                        object.object_name
                    ))
                })?,
                None => default_mode,
            };
            versions.push(ObjectVersion {
                id: path.clone(),
                version: self.version(contents.expose()),
            });
            files.push(ProviderFile {
                path,
                mode,
                contents: contents.clone(),
            });
        }
        Ok(MountResponse { versions, files })
    }

    /// A keyed hash: changes with the content, reveals nothing about it.
    fn version(&self, contents: &[u8]) -> String {
        self.version_key.version(NAME.as_bytes(), contents)
    }

    fn resolve(&self, source: &Path) -> Result<PathBuf, ProviderError> {
        if self.jail
            && source
                .components()
                .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(denied(&format!(
                "source {} may not contain '..'",
                source.display()
            )));
        }
        let relative = source.strip_prefix("/").unwrap_or(source);
        let joined = if self.jail || source.is_relative() {
            self.base.join(relative)
        } else {
            source.to_owned()
        };
        let resolved = joined
            .canonicalize()
            .map_err(|err| ProviderError::ObjectNotFound {
                provider: NAME.to_owned(),
                message: format!("source {} cannot be read: {err}", joined.display()),
            })?;
        self.check_inside(&resolved)?;
        Ok(resolved)
    }

    fn check_inside(&self, resolved: &Path) -> Result<(), ProviderError> {
        if !self.jail {
            return Ok(());
        }
        let root = self
            .base
            .canonicalize()
            .map_err(|err| ProviderError::Backend {
                provider: NAME.to_owned(),
                message: format!(
                    "--local-provider-root {} cannot be read",
                    self.base.display()
                ),
                source: Some(Arc::new(err)),
            })?;
        if resolved.starts_with(&root) {
            Ok(())
        } else {
            Err(denied(&format!(
                "{} is outside --local-provider-root {}",
                resolved.display(),
                root.display()
            )))
        }
    }

    /// The files below `dir` as objects named by relative path. Links are followed (the
    /// `..data` layouts of Kubernetes volumes are links) but no directory is entered twice,
    /// and the walk stops at the depth, count and size a volume may have.
    fn read_dir(
        &self,
        dir: &Path,
        max_bytes: usize,
    ) -> Result<BTreeMap<String, SecretBytes>, ProviderError> {
        let mut objects = BTreeMap::new();
        let mut visited = BTreeSet::from([dir.to_owned()]);
        let mut pending = vec![(dir.to_owned(), String::new(), 0usize)];
        let mut bytes = 0usize;
        while let Some((current, prefix, depth)) = pending.pop() {
            let entries = std::fs::read_dir(&current).map_err(|err| backend(&current, err))?;
            for entry in entries {
                let entry = entry.map_err(|err| backend(&current, err))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // Dot entries are hidden, as in Kubernetes' own `..data` layouts.
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let resolved = path.canonicalize().map_err(|err| backend(&path, err))?;
                self.check_inside(&resolved)?;
                let relative = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if resolved.is_dir() {
                    if depth + 1 >= MAX_PATH_DEPTH {
                        return Err(too_big(&format!(
                            "{} is more than {MAX_PATH_DEPTH} directories deep",
                            path.display()
                        )));
                    }
                    if !visited.insert(resolved.clone()) {
                        return Err(invalid(&format!(
                            "{} leads back to a directory already read (a symlink loop)",
                            path.display()
                        )));
                    }
                    pending.push((resolved, relative, depth + 1));
                } else {
                    if objects.len() >= MAX_FILES {
                        return Err(too_big(&format!(
                            "{} holds more than {MAX_FILES} files",
                            dir.display()
                        )));
                    }
                    let contents = read_bounded(&resolved, max_bytes.saturating_sub(bytes))?;
                    bytes += contents.len();
                    objects.insert(relative, Secret::new(contents));
                }
            }
        }
        Ok(objects)
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn class_parameters(&self) -> &'static [&'static str] {
        PARAMETERS
    }

    async fn mount(&self, request: MountRequest) -> Result<MountResponse, ProviderError> {
        let this = Self {
            base: self.base.clone(),
            jail: self.jail,
            version_key: self.version_key.clone(),
        };
        // Reading files is blocking work.
        tokio::task::spawn_blocking(move || {
            this.load(&request.parameters, request.default_mode, request.max_bytes)
        })
        .await
        .unwrap_or_else(|join| {
            Err(ProviderError::Backend {
                provider: NAME.to_owned(),
                message: "reading the source failed".to_owned(),
                source: Some(Arc::new(join)),
            })
        })
    }
}

/// One entry of the `objects` parameter.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ObjectSpec {
    #[serde(default)]
    object_name: String,
    #[serde(default)]
    object_alias: Option<String>,
    #[serde(default)]
    file_permission: Option<String>,
}

impl ObjectSpec {
    fn named(name: &str) -> Self {
        Self {
            object_name: name.to_owned(),
            object_alias: None,
            file_permission: None,
        }
    }
}

/// A value in a source file: a plain string, or `{value}` / `{valueBase64}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SourceValue {
    Plain(String),
    Detailed {
        #[serde(default)]
        value: Option<String>,
        #[serde(default, rename = "valueBase64")]
        value_base64: Option<String>,
    },
}

fn parse_objects(text: &str) -> Result<Vec<ObjectSpec>, ProviderError> {
    let objects: Vec<ObjectSpec> = yaml::objects(text).map_err(|err| {
        invalid(&format!(
            "parameter `objects` is not a YAML list of {{objectName, objectAlias, filePermission}}: {err}"
        ))
    })?;
    for (index, object) in objects.iter().enumerate() {
        if object.object_name.trim().is_empty() {
            return Err(invalid(&format!(
                "objects[{index}]: objectName is required"
            )));
        }
    }
    Ok(objects)
}

/// A file's bytes, refusing one larger than `max_bytes` before reading it.
fn read_bounded(path: &Path, max_bytes: usize) -> Result<Vec<u8>, ProviderError> {
    let file = std::fs::File::open(path).map_err(|err| backend(path, err))?;
    let len = file.metadata().map_err(|err| backend(path, err))?.len();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
    if len > limit {
        return Err(too_big(&format!(
            "{} is {len} bytes; the volume may hold at most {max_bytes} more",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|err| backend(path, err))?;
    if bytes.len() > max_bytes {
        return Err(too_big(&format!(
            "{} grew while it was read",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The objects of a YAML/JSON source document (`path` names it in errors).
pub fn parse_source(
    bytes: &[u8],
    path: &Path,
) -> Result<BTreeMap<String, SecretBytes>, ProviderError> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        invalid(&format!(
            "source {} is not UTF-8 text; use valueBase64 for binary values",
            path.display()
        ))
    })?;
    // YAML is a superset of JSON, so one parser reads both; the document holds secrets, so
    // errors never quote it.
    let values: BTreeMap<String, SourceValue> = yaml::from_str(text, false).map_err(|err| {
        invalid(&format!(
            "source {} is not a YAML/JSON map of object name to value: {}",
            path.display(),
            // Only the first line, without a quoted fragment.
            err.to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .split(':')
                .next()
                .unwrap_or_default()
        ))
    })?;
    let mut objects = BTreeMap::new();
    for (name, value) in values {
        let bytes = match value {
            SourceValue::Plain(text)
            | SourceValue::Detailed {
                value: Some(text),
                value_base64: None,
            } => text.into_bytes(),
            SourceValue::Detailed {
                value: None,
                value_base64: Some(encoded),
            } => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| {
                    invalid(&format!(
                        "object {name:?} in {}: valueBase64 is not valid base64",
                        path.display()
                    ))
                })?,
            SourceValue::Detailed { .. } => {
                return Err(invalid(&format!(
                    "object {name:?} in {}: give exactly one of value or valueBase64",
                    path.display()
                )));
            }
        };
        objects.insert(name, Secret::new(bytes));
    }
    Ok(objects)
}

/// Parses an octal permission such as `"0640"` or `"640"`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix("0o").unwrap_or(trimmed);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "{trimmed:?} is not an octal mode between 0000 and 0777"
        )),
    }
}

fn invalid(message: &str) -> ProviderError {
    ProviderError::InvalidParameters {
        provider: NAME.to_owned(),
        message: message.to_owned(),
    }
}

fn too_big(message: &str) -> ProviderError {
    ProviderError::Exhausted {
        provider: NAME.to_owned(),
        message: format!(
            "{message}; a volume holds at most {MAX_FILES} files, {MAX_PATH_DEPTH} directories \
             deep, within --max-call-recv-msg-size bytes"
        ),
    }
}

fn denied(message: &str) -> ProviderError {
    ProviderError::PermissionDenied {
        provider: NAME.to_owned(),
        message: message.to_owned(),
    }
}

fn backend(path: &Path, err: std::io::Error) -> ProviderError {
    ProviderError::Backend {
        provider: NAME.to_owned(),
        message: format!("cannot read {}", path.display()),
        source: Some(Arc::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::DEFAULT_VOLUME_BYTES;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_a_yaml_file_with_selection_aliases_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.yaml"),
            "a: alpha\nb:\n  valueBase64: aGVsbG8=\nc: gamma\n",
        )
        .unwrap();
        let provider = LocalProvider::unjailed(dir.path().to_owned(), VersionKey::ephemeral());
        let objects = "- objectName: a\n- objectName: b\n  objectAlias: nested/b\n  filePermission: \"0600\"\n";
        let response = provider
            .load(
                &params(&[("source", "s.yaml"), ("objects", objects)]),
                0o644,
                DEFAULT_VOLUME_BYTES,
            )
            .unwrap();
        let files: Vec<_> = response
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.mode, f.contents.expose().clone()))
            .collect();
        assert_eq!(
            files,
            vec![
                ("a", 0o644, b"alpha".to_vec()),
                ("nested/b", 0o600, b"hello".to_vec())
            ]
        );
        assert_eq!(response.versions.len(), 2);
        assert!(!response.versions[0].version.contains("alpha"));
    }

    #[test]
    fn versions_change_with_content_only() {
        let provider = LocalProvider::unjailed(PathBuf::from("/"), VersionKey::ephemeral());
        assert_eq!(provider.version(b"x"), provider.version(b"x"));
        assert_ne!(provider.version(b"x"), provider.version(b"y"));
    }

    #[test]
    fn a_jailed_provider_cannot_leave_its_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("s.yaml"), "a: alpha\n").unwrap();
        std::os::unix::fs::symlink(outside.path().join("s.yaml"), root.path().join("link.yaml"))
            .unwrap();
        let provider = LocalProvider::jailed(root.path().to_owned(), VersionKey::ephemeral());
        for source in ["../s.yaml", "link.yaml"] {
            let err = provider
                .load(&params(&[("source", source)]), 0o644, DEFAULT_VOLUME_BYTES)
                .unwrap_err();
            assert!(
                matches!(err, ProviderError::PermissionDenied { .. }),
                "{source}: {err}"
            );
        }
        let absolute = outside.path().join("s.yaml");
        let err = provider
            .load(
                &params(&[("source", absolute.to_str().unwrap())]),
                0o644,
                DEFAULT_VOLUME_BYTES,
            )
            .unwrap_err();
        assert!(matches!(err, ProviderError::ObjectNotFound { .. }), "{err}");
    }

    #[test]
    fn bad_parameters_name_the_object_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.yaml"), "a: alpha\n").unwrap();
        let provider = LocalProvider::unjailed(dir.path().to_owned(), VersionKey::ephemeral());
        let cases = [
            (
                "- objectName: a\n  filePermission: \"999\"\n",
                "objects[0] (a): filePermission",
            ),
            (
                "- objectName: missing\n",
                "objects[0]: object \"missing\" is not in",
            ),
            ("- objectAlias: x\n", "objects[0]: objectName is required"),
            (
                "- objectName: a\n- objectName: a\n",
                "objects[1] (a): file \"a\" is produced twice",
            ),
        ];
        for (objects, expected) in cases {
            let err = provider
                .load(
                    &params(&[("source", "s.yaml"), ("objects", objects)]),
                    0o644,
                    DEFAULT_VOLUME_BYTES,
                )
                .unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = provider
            .load(&params(&[]), 0o644, DEFAULT_VOLUME_BYTES)
            .unwrap_err();
        assert!(err.to_string().contains("`source` is required"), "{err}");
    }

    #[test]
    fn a_directory_walk_ends_at_a_symlink_loop_and_at_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src");
        std::fs::create_dir_all(source.join("a")).unwrap();
        std::fs::write(source.join("a/secret"), "v").unwrap();
        std::os::unix::fs::symlink(&source, source.join("a/loop")).unwrap();
        let provider = LocalProvider::jailed(dir.path().to_owned(), VersionKey::ephemeral());
        let err = provider
            .load(&params(&[("source", "src")]), 0o644, DEFAULT_VOLUME_BYTES)
            .unwrap_err();
        assert!(err.to_string().contains("symlink loop"), "{err}");

        std::fs::remove_file(source.join("a/loop")).unwrap();
        std::fs::write(source.join("big"), vec![b'x'; 100]).unwrap();
        let err = provider
            .load(&params(&[("source", "src")]), 0o644, 50)
            .unwrap_err();
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted, "{err}");

        let mut deep = source.clone();
        for _ in 0..MAX_PATH_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let err = provider
            .load(&params(&[("source", "src")]), 0o644, DEFAULT_VOLUME_BYTES)
            .unwrap_err();
        assert!(err.to_string().contains("directories deep"), "{err}");
    }

    #[test]
    fn an_oversized_or_deep_source_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let provider = LocalProvider::unjailed(dir.path().to_owned(), VersionKey::ephemeral());
        std::fs::write(
            dir.path().join("big.yaml"),
            format!("a: {}\n", "x".repeat(100)),
        )
        .unwrap();
        let err = provider
            .load(&params(&[("source", "big.yaml")]), 0o644, 50)
            .unwrap_err();
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted, "{err}");
        let nested = format!("a: {}hunter2{}\n", "[".repeat(5000), "]".repeat(5000));
        std::fs::write(dir.path().join("deep.yaml"), nested).unwrap();
        let err = provider
            .load(
                &params(&[("source", "deep.yaml")]),
                0o644,
                DEFAULT_VOLUME_BYTES,
            )
            .unwrap_err();
        assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument, "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
