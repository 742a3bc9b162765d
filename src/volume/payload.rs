//! Provider output is untrusted: every path and mode is checked before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::limits::{self, MAX_FILES};
use crate::provider::ProviderFile;
use crate::redact::SecretBytes;

/// Validated files, keyed by their relative path.
#[derive(Debug, Default, Clone)]
pub struct Payload {
    files: BTreeMap<PathBuf, PayloadFile>,
}

/// One file to write, with its exact permission bits.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadFile {
    /// Permission bits, applied exactly (including 0).
    pub mode: u32,
    /// The bytes.
    pub contents: SecretBytes,
}

/// A provider file that cannot be written safely.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    /// The path breaks a rule; `reason` says which.
    #[error("provider returned an unsafe file path {path:?}: {reason}")]
    Path {
        /// The offending path.
        path: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// One path is both a file and a directory of another path.
    #[error("provider returned {file:?} as a file and as a directory of {other:?}")]
    Conflict {
        /// The file.
        file: String,
        /// The path below it.
        other: String,
    },
    /// More files than a volume may hold.
    #[error("provider returned {count} files; a volume holds at most {MAX_FILES}")]
    TooManyFiles {
        /// How many were returned.
        count: usize,
    },
    /// The contents are larger than the volume's budget.
    #[error(
        "provider returned more than {limit} bytes of file contents; raise \
         --max-call-recv-msg-size (and the driver's memory limit) to mount this volume"
    )]
    TooLarge {
        /// The budget in bytes.
        limit: usize,
    },
}

impl Payload {
    /// Checks every file, their number and their total size (at most `max_bytes`); on
    /// duplicate paths the last one wins, as upstream.
    pub fn validate(files: Vec<ProviderFile>, max_bytes: usize) -> Result<Self, PayloadError> {
        if files.len() > MAX_FILES {
            return Err(PayloadError::TooManyFiles { count: files.len() });
        }
        let total = files.iter().fold(0usize, |sum, f| {
            sum.saturating_add(f.contents.expose().len())
        });
        if total > max_bytes {
            return Err(PayloadError::TooLarge { limit: max_bytes });
        }
        let mut payload = BTreeMap::new();
        for file in files {
            limits::check_file_path(&file.path).map_err(|reason| PayloadError::Path {
                path: file.path.clone(),
                reason,
            })?;
            // Only permission bits are written, as upstream's writer does: setuid, setgid and
            // sticky bits (ASCP passes a `filePermission` of `1644` on) are dropped.
            let mode = file.mode & 0o777;
            if mode != file.mode {
                tracing::warn!(
                    file = %file.path,
                    mode = format_args!("{:#o}", file.mode),
                    written = format_args!("{mode:#o}"),
                    "provider returned a mode beyond permission bits; writing its permission bits"
                );
            }
            payload.insert(
                PathBuf::from(&file.path),
                PayloadFile {
                    mode,
                    contents: file.contents,
                },
            );
        }
        // A path that is a prefix of another would need to be both file and directory.
        let paths: Vec<&PathBuf> = payload.keys().collect();
        for pair in paths.windows(2) {
            let (file, next) = (pair[0], pair[1]);
            if next.starts_with(file) {
                return Err(PayloadError::Conflict {
                    file: file.display().to_string(),
                    other: next.display().to_string(),
                });
            }
        }
        Ok(Self { files: payload })
    }

    /// The files in path order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, &PayloadFile)> {
        self.files.iter().map(|(path, file)| (path.as_path(), file))
    }

    /// The file at `path`, if any.
    pub fn get(&self, path: &Path) -> Option<&PayloadFile> {
        self.files.get(path)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are no files (a legacy provider that wrote its own).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The distinct first path elements: the names visible at the volume root.
    pub fn top_level_names(&self) -> std::collections::BTreeSet<String> {
        self.files
            .keys()
            .filter_map(|path| path.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Secret;

    fn validate(files: Vec<ProviderFile>) -> Result<Payload, PayloadError> {
        Payload::validate(files, crate::limits::DEFAULT_VOLUME_BYTES)
    }

    fn file(path: &str, mode: u32) -> ProviderFile {
        ProviderFile {
            path: path.to_owned(),
            mode,
            contents: Secret::new(b"x".to_vec()),
        }
    }

    #[test]
    fn accepts_clean_relative_paths_and_permission_bits() {
        let payload = validate(vec![
            file("foo", 0),
            file("nested/bar", 0o777),
            file("a.b..c", 0o644),
        ])
        .unwrap();
        assert_eq!(payload.len(), 3);
        assert_eq!(
            payload.top_level_names().into_iter().collect::<Vec<_>>(),
            ["a.b..c", "foo", "nested"]
        );
    }

    #[test]
    fn rejects_every_unsafe_path() {
        let long_element = "x".repeat(256);
        let long_path = ["y"; 2049].join("/");
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../b",
            "a/..",
            "..data",
            "..2026_01_01",
            "a//b",
            "./a",
            "a/",
            "a/./b",
            ".",
            &long_element,
            &long_path,
            "a\0b",
        ] {
            assert!(
                matches!(
                    validate(vec![file(bad, 0o644)]),
                    Err(PayloadError::Path { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn modes_keep_only_permission_bits_as_upstream() {
        for (mode, written) in [(u32::MAX, 0o777), (0o1644, 0o644), (0o4755, 0o755)] {
            let payload = validate(vec![file("a", mode)]).unwrap();
            assert_eq!(
                payload.get(Path::new("a")).unwrap().mode,
                written,
                "{mode:o}"
            );
        }
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let err = validate(vec![file("a", 0o644), file("a/b", 0o644)]).unwrap_err();
        assert!(matches!(err, PayloadError::Conflict { .. }));
        // A sibling whose name merely starts with the file's name is fine.
        assert!(validate(vec![file("a", 0o644), file("ab/c", 0o644)]).is_ok());
    }

    #[test]
    fn duplicates_collapse_to_the_last() {
        let mut second = file("a", 0o600);
        second.contents = Secret::new(b"second".to_vec());
        let payload = validate(vec![file("a", 0o644), second]).unwrap();
        assert_eq!(payload.get(Path::new("a")).unwrap().mode, 0o600);
    }

    #[test]
    fn the_number_of_files_their_size_and_depth_are_bounded() {
        let many: Vec<_> = (0..=MAX_FILES)
            .map(|i| file(&format!("f{i}"), 0o644))
            .collect();
        assert_eq!(
            validate(many).unwrap_err(),
            PayloadError::TooManyFiles {
                count: MAX_FILES + 1
            }
        );
        let mut big = file("big", 0o644);
        big.contents = Secret::new(vec![0; 11]);
        assert_eq!(
            Payload::validate(vec![big, file("small", 0o644)], 11).unwrap_err(),
            PayloadError::TooLarge { limit: 11 }
        );
        let deep = vec!["d"; 2000].join("/");
        assert!(matches!(
            validate(vec![file(&deep, 0o644)]),
            Err(PayloadError::Path { .. })
        ));
    }
}
