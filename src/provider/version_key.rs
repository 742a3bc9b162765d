//! Object versions that change exactly when the content changes and reveal nothing about it.
//!
//! A version is a keyed hash (HMAC-SHA256) of the object's configuration and content. The key
//! lives in a node-local file, so versions survive driver restarts: a restarted driver does not
//! see every mounted object as "changed" and rewrite it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

const KEY_LEN: usize = 32;

/// The HMAC key behind every built-in provider's object versions.
#[derive(Clone)]
pub struct VersionKey {
    key: hmac::Key,
    origin: Option<PathBuf>,
}

impl std::fmt::Debug for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionKey")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl VersionKey {
    /// A key for this process only (the `mount` command compares versions within one run).
    pub fn ephemeral() -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &random_bytes()),
            origin: None,
        }
    }

    /// Reads the key from `path`, creating it (mode 0600, never overwriting a concurrent
    /// writer's key) when missing.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => create(path)?,
            Err(err) => return Err(err),
        };
        if bytes.len() < KEY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} holds {} bytes, expected {KEY_LEN}; delete it to have a new key generated",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes[..KEY_LEN]),
            origin: Some(path.to_owned()),
        })
    }

    /// The version of an object: `config` is the object's settings (so equal contents under
    /// different settings do not reveal their equality), `contents` its bytes.
    pub fn version(&self, config: &[u8], contents: &[u8]) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&(config.len() as u64).to_be_bytes());
        context.update(config);
        context.update(contents);
        let tag = context.sign();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..18])
    }
}

fn random_bytes() -> [u8; KEY_LEN] {
    let mut bytes = [0u8; KEY_LEN];
    // Only fails without an OS randomness source, where nothing else works either.
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS randomness source failed");
    bytes
}

fn create(path: &Path) -> io::Result<Vec<u8>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let bytes = random_bytes();
    let temp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    // A hard link never replaces an existing file: if another process won the race, its key
    // is the one everybody uses.
    let linked = fs::hard_link(&temp, path);
    fs::remove_file(&temp)?;
    match linked {
        Ok(()) => Ok(bytes.to_vec()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => fs::read(path),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_survives_restarts_and_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/version.key");
        let first = VersionKey::load_or_create(&path).unwrap();
        let second = VersionKey::load_or_create(&path).unwrap();
        assert_eq!(first.version(b"c", b"x"), second.version(b"c", b"x"));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn versions_follow_content_and_config_only() {
        let key = VersionKey::ephemeral();
        assert_eq!(key.version(b"a", b"x"), key.version(b"a", b"x"));
        assert_ne!(key.version(b"a", b"x"), key.version(b"a", b"y"));
        assert_ne!(key.version(b"a", b"x"), key.version(b"b", b"x"));
        // The length prefix keeps config and content apart.
        assert_ne!(key.version(b"ab", b"c"), key.version(b"a", b"bc"));
        assert_ne!(
            VersionKey::ephemeral().version(b"a", b"x"),
            key.version(b"a", b"x")
        );
    }

    #[test]
    fn a_truncated_key_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("version.key");
        fs::write(&path, b"short").unwrap();
        let err = VersionKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("delete it"), "{err}");
    }
}
