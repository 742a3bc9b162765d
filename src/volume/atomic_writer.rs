//! Writes a payload so that readers always see one complete version of it.
//!
//! Layout, as kubelet's and the upstream driver's atomic writer (so applications that watch
//! `..data` keep working):
//!
//! ```text
//! <target>/..2026_04_30_10_11_12.123456789/{foo,nested/bar}   the data of one version
//! <target>/..data   -> ..2026_04_30_10_11_12.123456789         swapped by one rename(2)
//! <target>/foo      -> ..data/foo                              user-visible names
//! <target>/nested   -> ..data/nested
//! ```
//!
//! A crash at any step leaves `..data` pointing at a complete version; the next write removes
//! what the crashed one left behind.
//!
//! With a group (the pod's `fsGroup`), every file and directory of a version is group-owned
//! by it and group-readable before `..data` points at it, as kubelet's own fsGroup handling
//! does for read-only volumes (files `| 0440`, directories `| 0550`): there is no moment when
//! a new file is readable by root only.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::payload::Payload;
use crate::limits::MAX_PATH_DEPTH;

const DATA_LINK: &str = "..data";
const DATA_TMP_LINK: &str = "..data_tmp";

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new version was swapped in.
    Changed,
    /// The payload equals what is mounted; nothing was touched.
    Unchanged,
}

/// A filesystem step of the writer failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {}: {source}", path.display())]
pub struct WriteError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl WriteError {
    /// The write of `target` stopped before it could report (its task panicked or was
    /// cancelled); whatever it left is removed by the next write.
    pub fn interrupted(target: &Path, why: String) -> Self {
        Self {
            op: "finish writing",
            path: target.to_owned(),
            source: io::Error::other(why),
        }
    }
}

/// The steps of a write, in order; tests stop after one of them to simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    DataDirWritten,
    VisibleLinksCreated,
    DataLinkSwapped,
    StaleLinksRemoved,
}

/// Bits a file gets for its group, as kubelet's read-only fsGroup mask.
const GROUP_FILE_BITS: u32 = 0o440;
/// Bits a directory gets for its group.
const GROUP_DIR_BITS: u32 = 0o550;

/// Writes payloads into one target directory.
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target: PathBuf,
    group: Option<u32>,
}

impl AtomicWriter {
    /// When the contents now visible at `target` were swapped in (the `..data` link's mtime);
    /// an error when `target` holds no written contents. Rotation and sync both rely on it.
    pub fn swapped_at(target: &Path) -> io::Result<SystemTime> {
        fs::symlink_metadata(target.join(DATA_LINK))?.modified()
    }

    /// A writer for `target`, which must exist.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            group: None,
        }
    }

    /// Files and directories group-owned by `group` (the pod's fsGroup) and readable by it.
    #[must_use]
    pub fn with_group(mut self, group: Option<u32>) -> Self {
        self.group = group;
        self
    }

    /// The mode a file of `mode` is written with.
    fn file_mode(&self, mode: u32) -> u32 {
        if self.group.is_some() {
            mode | GROUP_FILE_BITS
        } else {
            mode
        }
    }

    /// Swaps `payload` in; a no-op when every file's bytes and mode are already as given.
    /// An empty payload (a legacy provider that wrote its own files) still swaps in an empty
    /// `..data`, which marks the volume as published.
    pub fn write(&self, payload: &Payload) -> Result<WriteOutcome, WriteError> {
        self.write_until(payload, None)
    }

    /// Removes what writes made (`..data`, the data dirs, the visible links into them) and
    /// nothing else, without following a link: what is left was put there by someone else.
    pub fn remove_written(&self) -> Result<(), WriteError> {
        for Entry {
            name,
            path,
            file_type,
        } in read_dir(&self.target)?
        {
            let ours = if name == DATA_LINK || name == DATA_TMP_LINK {
                file_type.is_symlink()
            } else if is_data_dir_name(&name) {
                file_type.is_dir()
            } else {
                file_type.is_symlink()
                    && fs::read_link(&path).is_ok_and(|dest| dest.starts_with(DATA_LINK))
            };
            match (ours, file_type.is_dir()) {
                (false, _) => {}
                // `remove_dir_all` does not follow the links inside.
                (true, true) => fs::remove_dir_all(&path).map_err(io_err("remove", &path))?,
                (true, false) => fs::remove_file(&path).map_err(io_err("remove", &path))?,
            }
        }
        Ok(())
    }

    fn write_until(
        &self,
        payload: &Payload,
        stop_after: Option<Step>,
    ) -> Result<WriteOutcome, WriteError> {
        let current = self.current_data_dir()?;
        self.remove_leftovers(current.as_deref())?;
        let names = payload.top_level_names();
        if let Some(current) = &current
            && self.matches(&self.target.join(current), payload)?
        {
            // A crash after the swap may have left links to removed objects.
            self.remove_stale_links(&names)?;
            return Ok(WriteOutcome::Unchanged);
        }
        self.remove_legacy_entries(&names)?;

        let new_dir = self.create_data_dir()?;
        let new_path = self.target.join(&new_dir);
        for (path, file) in payload.files() {
            let path = new_path.join(path);
            write_file(&path, self.file_mode(file.mode), file.contents.expose())?;
            if let Some(group) = self.group {
                own_up_to(&path, &new_path, group)?;
            }
        }
        if stop_after == Some(Step::DataDirWritten) {
            return Ok(WriteOutcome::Changed);
        }

        for name in &names {
            self.ensure_visible_link(name)?;
        }
        if stop_after == Some(Step::VisibleLinksCreated) {
            return Ok(WriteOutcome::Changed);
        }

        let tmp_link = self.target.join(DATA_TMP_LINK);
        std::os::unix::fs::symlink(&new_dir, &tmp_link)
            .map_err(io_err("create symlink", &tmp_link))?;
        let data_link = self.target.join(DATA_LINK);
        fs::rename(&tmp_link, &data_link).map_err(io_err("rename", &tmp_link))?;
        if stop_after == Some(Step::DataLinkSwapped) {
            return Ok(WriteOutcome::Changed);
        }

        self.remove_stale_links(&names)?;
        if stop_after == Some(Step::StaleLinksRemoved) {
            return Ok(WriteOutcome::Changed);
        }
        if let Some(old) = current {
            let old_path = self.target.join(old);
            fs::remove_dir_all(&old_path).map_err(io_err("remove", &old_path))?;
        }
        Ok(WriteOutcome::Changed)
    }

    /// The name of the data dir `..data` points at, if any.
    fn current_data_dir(&self) -> Result<Option<String>, WriteError> {
        let link = self.target.join(DATA_LINK);
        match fs::read_link(&link) {
            Ok(dir) => Ok(Some(dir.to_string_lossy().into_owned())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(WriteError {
                op: "read symlink",
                path: link,
                source: err,
            }),
        }
    }

    /// Removes a `..data_tmp` link and data dirs that `..data` does not point at: what a
    /// crashed write leaves.
    fn remove_leftovers(&self, current: Option<&str>) -> Result<(), WriteError> {
        for Entry { name, path, .. } in read_dir(&self.target)? {
            if name == DATA_TMP_LINK {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            } else if is_data_dir_name(&name) && Some(name.as_str()) != current {
                fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }

    /// Whether the data dir holds exactly the payload (same files, bytes and modes).
    fn matches(&self, dir: &Path, payload: &Payload) -> Result<bool, WriteError> {
        let existing = collect_files(dir)?;
        if existing.len() != payload.len() {
            return Ok(false);
        }
        for relative in existing {
            let Some(wanted) = payload.get(&relative) else {
                return Ok(false);
            };
            let path = dir.join(&relative);
            let meta = fs::metadata(&path).map_err(io_err("stat", &path))?;
            if meta.permissions().mode() & 0o777 != self.file_mode(wanted.mode)
                || self.group.is_some_and(|group| meta.gid() != group)
            {
                return Ok(false);
            }
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            if bytes != *wanted.contents.expose() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A top-level entry that is not a symlink was written by a legacy provider directly; it
    /// would shadow the link, so it goes.
    fn remove_legacy_entries(&self, names: &BTreeSet<String>) -> Result<(), WriteError> {
        for name in names {
            let path = self.target.join(name);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_dir() => {
                    fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                }
                Ok(meta) if !meta.file_type().is_symlink() => {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn create_data_dir(&self) -> Result<String, WriteError> {
        let now = jiff::Timestamp::now();
        let stamp = format!(
            "..{}.{:09}",
            now.strftime("%Y_%m_%d_%H_%M_%S"),
            now.subsec_nanosecond()
        );
        for attempt in 0u32.. {
            let name = if attempt == 0 {
                stamp.clone()
            } else {
                format!("{stamp}_{attempt}")
            };
            let path = self.target.join(&name);
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(io_err("chmod", &path))?;
                    if let Some(group) = self.group {
                        own(&path, group, 0o755)?;
                    }
                    return Ok(name);
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {}
                Err(err) => {
                    return Err(WriteError {
                        op: "create directory",
                        path,
                        source: err,
                    });
                }
            }
        }
        unreachable!("the loop returns within 100 attempts")
    }

    fn ensure_visible_link(&self, name: &str) -> Result<(), WriteError> {
        let link = self.target.join(name);
        let wanted = Path::new(DATA_LINK).join(name);
        match fs::read_link(&link) {
            Ok(existing) if existing == wanted => Ok(()),
            Ok(_) => {
                fs::remove_file(&link).map_err(io_err("remove", &link))?;
                std::os::unix::fs::symlink(&wanted, &link).map_err(io_err("create symlink", &link))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(&wanted, &link).map_err(io_err("create symlink", &link))
            }
            Err(err) => Err(WriteError {
                op: "read symlink",
                path: link,
                source: err,
            }),
        }
    }

    /// Removes visible links into `..data` whose names the new payload no longer has.
    fn remove_stale_links(&self, names: &BTreeSet<String>) -> Result<(), WriteError> {
        for Entry { name, path, .. } in read_dir(&self.target)? {
            if name.starts_with("..") || names.contains(&name) {
                continue;
            }
            if fs::read_link(&path).is_ok_and(|dest| dest.starts_with(DATA_LINK)) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }
}

fn is_data_dir_name(name: &str) -> bool {
    name.starts_with("..") && name.as_bytes().get(2).is_some_and(u8::is_ascii_digit)
}

/// Gives `path` and every directory between it and `root` (the data dir, already owned) to
/// `group`.
fn own_up_to(path: &Path, root: &Path, group: u32) -> Result<(), WriteError> {
    let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
    own(path, group, meta.permissions().mode() & 0o7777)?;
    let mut dir = path.parent();
    while let Some(current) = dir.filter(|d| *d != root && d.starts_with(root)) {
        own(current, group, 0o755)?;
        dir = current.parent();
    }
    Ok(())
}

/// Sets `path`'s group, and its group bits as kubelet's read-only fsGroup mask does.
fn own(path: &Path, group: u32, mode: u32) -> Result<(), WriteError> {
    std::os::unix::fs::lchown(path, None, Some(group)).map_err(io_err("chown", path))?;
    let is_dir = fs::symlink_metadata(path)
        .map_err(io_err("stat", path))?
        .is_dir();
    let bits = if is_dir {
        GROUP_DIR_BITS | 0o2000
    } else {
        GROUP_FILE_BITS
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode | bits))
        .map_err(io_err("chmod", path))
}

fn write_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), WriteError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    file.write_all(contents).map_err(io_err("write", path))?;
    // Exactly the provider's mode, whatever the umask, including 0.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// One directory entry, without the directory handle a `DirEntry` keeps open.
struct Entry {
    name: String,
    path: PathBuf,
    file_type: fs::FileType,
}

fn read_dir(dir: &Path) -> Result<Vec<Entry>, WriteError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("stat", &path))?;
        entries.push(Entry {
            name: entry.file_name().to_string_lossy().into_owned(),
            path,
            file_type,
        });
    }
    Ok(entries)
}

/// The files below `root`, relative to it. The walk holds no directory open while it
/// descends, and refuses a tree deeper than a payload may be (which the writer never makes).
fn collect_files(root: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut out = Vec::new();
    let mut pending = vec![(root.to_owned(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        if depth >= MAX_PATH_DEPTH {
            return Err(WriteError {
                op: "walk",
                path: dir,
                source: io::Error::other("the tree is deeper than a volume may be"),
            });
        }
        for entry in read_dir(&dir)? {
            if entry.file_type.is_dir() {
                pending.push((entry.path, depth + 1));
            } else if let Ok(relative) = entry.path.strip_prefix(root) {
                out.push(relative.to_owned());
            }
        }
    }
    Ok(out)
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_a_group_every_file_and_directory_is_its_and_group_readable() {
        let dir = tempfile::tempdir().unwrap();
        // A group this process may give files to without privileges: its own.
        let group = nix::unistd::getgid().as_raw();
        let writer = AtomicWriter::new(dir.path()).with_group(Some(group));
        writer
            .write(&payload(&[
                ("key", 0o400, "a"),
                ("nested/deep/file", 0o600, "b"),
            ]))
            .unwrap();
        for (path, mode) in [("key", 0o440), ("nested/deep/file", 0o640)] {
            let meta = fs::metadata(dir.path().join(path)).unwrap();
            assert_eq!(meta.gid(), group, "{path}");
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
        }
        let data = fs::canonicalize(dir.path().join("..data")).unwrap();
        for sub in ["", "nested", "nested/deep"] {
            let meta = fs::metadata(data.join(sub)).unwrap();
            assert_eq!(meta.gid(), group, "{sub}");
            assert_eq!(meta.permissions().mode() & 0o2750, 0o2750, "{sub}");
        }
        assert_eq!(
            writer
                .write(&payload(&[
                    ("key", 0o400, "a"),
                    ("nested/deep/file", 0o600, "b")
                ]))
                .unwrap(),
            WriteOutcome::Unchanged,
            "the group's modes count as the payload's"
        );
        // Without a group: exactly the provider's modes, as before.
        let plain = tempfile::tempdir().unwrap();
        AtomicWriter::new(plain.path())
            .write(&payload(&[("key", 0o400, "a")]))
            .unwrap();
        let meta = fs::metadata(plain.path().join("key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    }
    use crate::provider::ProviderFile;
    use crate::redact::Secret;

    fn payload(files: &[(&str, u32, &str)]) -> Payload {
        Payload::validate(
            files
                .iter()
                .map(|(path, mode, body)| ProviderFile {
                    path: (*path).to_owned(),
                    mode: *mode,
                    contents: Secret::new(body.as_bytes().to_vec()),
                })
                .collect(),
            crate::limits::DEFAULT_VOLUME_BYTES,
        )
        .unwrap()
    }

    fn visible(target: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut names: Vec<_> = fs::read_dir(target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        names.sort();
        for name in names {
            let path = target.join(&name);
            if path.is_dir() {
                let mut files = collect_files(&path).unwrap();
                files.sort();
                for f in files {
                    let body = fs::read_to_string(path.join(&f)).unwrap();
                    out.push((format!("{name}/{}", f.display()), body));
                }
            } else if let Ok(body) = fs::read_to_string(&path) {
                out.push((name, body));
            }
        }
        out
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn writes_the_upstream_layout_with_exact_modes() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        let outcome = writer
            .write(&payload(&[
                ("foo", 0o640, "secret"),
                ("nested/bar", 0, "deep"),
            ]))
            .unwrap();
        assert_eq!(outcome, WriteOutcome::Changed);
        assert_eq!(
            fs::read_link(dir.path().join("foo")).unwrap(),
            Path::new("..data/foo")
        );
        assert_eq!(
            fs::read_link(dir.path().join("nested")).unwrap(),
            Path::new("..data/nested")
        );
        let data = fs::read_link(dir.path().join("..data")).unwrap();
        assert!(is_data_dir_name(&data.to_string_lossy()), "{data:?}");
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("foo"), 0o640);
        assert_eq!(mode("nested/bar"), 0);
        assert_eq!(fs::read(dir.path().join("foo")).unwrap(), b"secret");
    }

    #[test]
    fn an_identical_payload_is_a_no_op_and_a_mode_change_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        writer.write(&payload(&[("a", 0o644, "1")])).unwrap();
        let before = fs::read_link(dir.path().join("..data")).unwrap();
        assert_eq!(
            writer.write(&payload(&[("a", 0o644, "1")])).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(fs::read_link(dir.path().join("..data")).unwrap(), before);
        assert_eq!(
            writer.write(&payload(&[("a", 0o600, "1")])).unwrap(),
            WriteOutcome::Changed
        );
        assert_ne!(fs::read_link(dir.path().join("..data")).unwrap(), before);
    }

    #[test]
    fn swaps_and_prunes_removed_objects() {
        let dir = tempfile::tempdir().unwrap();
        let writer = AtomicWriter::new(dir.path());
        writer
            .write(&payload(&[("a", 0o644, "1"), ("b/c", 0o644, "2")]))
            .unwrap();
        writer
            .write(&payload(&[("a", 0o644, "new"), ("d", 0o644, "3")]))
            .unwrap();
        assert_eq!(visible(dir.path()), pairs(&[("a", "new"), ("d", "3")]));
        let data_dirs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| is_data_dir_name(&e.as_ref().unwrap().file_name().to_string_lossy()))
            .count();
        assert_eq!(data_dirs, 1, "the old version is removed");
    }

    #[test]
    fn a_crash_at_any_step_leaves_one_complete_version_and_the_next_write_recovers() {
        let old = [("a", 0o644, "old-a"), ("b", 0o644, "old-b")];
        let new = [("a", 0o644, "new-a"), ("c", 0o644, "new-c")];
        for step in [
            Step::DataDirWritten,
            Step::VisibleLinksCreated,
            Step::DataLinkSwapped,
            Step::StaleLinksRemoved,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let writer = AtomicWriter::new(dir.path());
            writer.write(&payload(&old)).unwrap();
            writer.write_until(&payload(&new), Some(step)).unwrap();
            // Every name that resolves shows a file of one version only, never a mix.
            let seen = visible(dir.path());
            let all_old = seen.iter().all(|(_, body)| body.starts_with("old-"));
            let all_new = seen.iter().all(|(_, body)| body.starts_with("new-"));
            assert!(all_old || all_new, "{step:?}: mixed view {seen:?}");
            if step < Step::DataLinkSwapped {
                assert_eq!(seen, pairs(&[("a", "old-a"), ("b", "old-b")]), "{step:?}");
            }
            // The next write finishes the job and leaves no leftovers.
            writer.write(&payload(&new)).unwrap();
            assert_eq!(
                visible(dir.path()),
                pairs(&[("a", "new-a"), ("c", "new-c")]),
                "{step:?}"
            );
            let hidden: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".."))
                .collect();
            assert_eq!(
                hidden.len(),
                2,
                "{step:?}: only ..data and one data dir remain: {hidden:?}"
            );
            for entry in fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                assert!(path.exists(), "{step:?}: dangling {path:?}");
            }
        }
    }

    #[test]
    fn replaces_files_a_legacy_provider_wrote_directly() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "legacy").unwrap();
        fs::create_dir(dir.path().join("b")).unwrap();
        fs::write(dir.path().join("b/x"), "legacy").unwrap();
        AtomicWriter::new(dir.path())
            .write(&payload(&[("a", 0o644, "1"), ("b/y", 0o644, "2")]))
            .unwrap();
        assert_eq!(visible(dir.path()), pairs(&[("a", "1"), ("b/y", "2")]));
    }

    #[test]
    fn an_empty_payload_marks_the_volume_published_and_keeps_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("written-by-provider"), "legacy").unwrap();
        let writer = AtomicWriter::new(dir.path());
        assert_eq!(writer.write(&payload(&[])).unwrap(), WriteOutcome::Changed);
        assert!(AtomicWriter::swapped_at(dir.path()).is_ok());
        assert_eq!(
            writer.write(&payload(&[])).unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("written-by-provider")).unwrap(),
            "legacy"
        );
    }

    #[test]
    fn removing_takes_only_what_the_writer_made() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), "outside").unwrap();
        let writer = AtomicWriter::new(dir.path());
        writer
            .write(&payload(&[("a", 0o644, "1"), ("b/c", 0o644, "2")]))
            .unwrap();
        fs::write(dir.path().join("foreign"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link-out")).unwrap();
        writer.remove_written().unwrap();
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["foreign", "link-out"]);
        assert_eq!(
            fs::read_to_string(outside.path().join("keep")).unwrap(),
            "outside"
        );
    }

    #[test]
    fn comparing_a_deep_tree_holds_no_directory_open_per_level() {
        let dir = tempfile::tempdir().unwrap();
        let deep = vec!["d"; MAX_PATH_DEPTH].join("/");
        let writer = AtomicWriter::new(dir.path());
        writer.write(&payload(&[(&deep, 0o644, "x")])).unwrap();
        assert_eq!(
            writer.write(&payload(&[(&deep, 0o644, "x")])).unwrap(),
            WriteOutcome::Unchanged
        );
        // A tree deeper than a payload may be (not made by the writer) is refused, not walked.
        let data = fs::read_link(dir.path().join(DATA_LINK)).unwrap();
        let mut hostile = dir.path().join(data);
        for _ in 0..MAX_PATH_DEPTH + 4 {
            hostile.push("h");
        }
        fs::create_dir_all(&hostile).unwrap();
        assert!(writer.write(&payload(&[(&deep, 0o644, "x")])).is_err());
    }
}
