//! A target directory's life: whether it holds a published volume, preparing it (directory
//! and tmpfs), undoing exactly that after a failure, and removing it without deleting anything
//! the driver did not write.

use std::path::{Path, PathBuf};

use super::AtomicWriter;
use super::mount::{self, MountError, MountMode};
use super::target::{KubeletRoot, TargetError};

/// The target could not be checked or prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The target is not a path the driver may use.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The directory could not be created.
    #[error("failed to create target path {}: {source}", path.display())]
    Create {
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or inspecting the tmpfs failed.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// Whether the target holds a published volume: mounted (for tmpfs) and holding `..data`.
/// A tmpfs without `..data` is what a first mount that died midway leaves, and one that
/// cannot be listed is corrupt: either is unmounted and treated as absent.
pub fn is_published(
    mode: &MountMode,
    root: Option<&KubeletRoot>,
    target: &Path,
) -> Result<bool, PrepareError> {
    if let Some(root) = root {
        root.check_no_links(target)?;
    }
    let written = || AtomicWriter::swapped_at(target).is_ok();
    match mode {
        MountMode::Tmpfs(_) => {
            if !mount::is_mount_point(target)? {
                return Ok(false);
            }
            if std::fs::read_dir(target).is_ok() && written() {
                return Ok(true);
            }
            tracing::warn!(
                target = %target.display(),
                "mounted target holds no complete contents (an interrupted first mount), remounting"
            );
            mount::unmount(target)?;
            Ok(false)
        }
        MountMode::PlainDir => Ok(written()),
    }
}

/// What `prepare` did, so a failure can undo exactly that.
#[derive(Debug, Default)]
pub struct Prepared {
    /// The target directory did not exist before.
    pub created_dir: bool,
    /// A tmpfs was mounted there.
    pub mounted: bool,
}

/// Creates the target directory and mounts a tmpfs there (for tmpfs mode), undoing its own
/// work if mounting fails.
pub fn prepare(
    mode: &MountMode,
    root: Option<&KubeletRoot>,
    target: &Path,
) -> Result<Prepared, PrepareError> {
    let target_error = |source| PrepareError::Create {
        path: target.to_owned(),
        source,
    };
    let created_dir = std::fs::symlink_metadata(target).is_err();
    if created_dir {
        std::fs::create_dir_all(target).map_err(target_error)?;
    }
    if let Some(root) = root {
        // Nothing below the root may have become a link while the directory was created.
        root.check_no_links(target)?;
    }
    let mut prepared = Prepared {
        created_dir,
        mounted: false,
    };
    if let MountMode::Tmpfs(options) = mode {
        if let Err(err) = mount::mount_tmpfs(target, options) {
            prepared.undo(mode, target);
            return Err(err.into());
        }
        prepared.mounted = true;
    }
    Ok(prepared)
}

impl Prepared {
    /// Whether there is anything to undo.
    pub fn is_empty(&self) -> bool {
        !self.created_dir && !self.mounted
    }

    /// Leaves the target as it was found: no mount, no directory this call created.
    pub fn undo(&self, mode: &MountMode, target: &Path) {
        if self.mounted
            && let Err(err) = mount::unmount(target)
        {
            tracing::error!(error = %err, target = %target.display(), "failed to unmount after a failed publish");
            return;
        }
        if self.created_dir {
            let removed = match mode {
                MountMode::Tmpfs(_) => std::fs::remove_dir(target),
                // `mount` without root: what the writer made, then the directory.
                MountMode::PlainDir => AtomicWriter::new(target)
                    .remove_written()
                    .map_err(std::io::Error::other)
                    .and_then(|()| std::fs::remove_dir(target)),
            };
            if let Err(err) = removed {
                tracing::warn!(error = %err, target = %target.display(), "failed to remove target after a failed publish");
            }
        }
    }
}

/// Why a volume could not be removed.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishError {
    /// The target is not a path the driver may use.
    #[error("failed to clean and unmount target path: {0}")]
    Target(#[from] TargetError),
    /// Unmounting failed.
    #[error("failed to clean and unmount target path {}: {source}", path.display())]
    Unmount {
        /// The target.
        path: PathBuf,
        /// The mount error.
        #[source]
        source: MountError,
    },
    /// Something other than our tmpfs is mounted below the target; deleting would reach into it.
    #[error("failed to clean and unmount target path {}: {mount} is mounted inside it; unmount it first", path.display())]
    NestedMount {
        /// The target.
        path: PathBuf,
        /// The mount below it.
        mount: String,
    },
    /// Files the driver did not write are left in the target.
    #[error(
        "failed to clean and unmount target path {}: it still holds files the driver did not \
         write; they were left in place (remove them, or the directory, by hand)",
        path.display()
    )]
    NotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// Removing the directory failed.
    #[error("failed to clean and unmount target path {}: {source}", path.display())]
    Remove {
        /// The target.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Unmounts a target directory, removes what the atomic writer made and then the directory,
/// which must be empty by then: nothing else is ever deleted, no link is followed, and
/// nothing is deleted through another mount.
pub fn remove_volume(target: &Path) -> Result<(), UnpublishError> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(UnpublishError::Target(TargetError::Symlink {
            path: target.display().to_string(),
            link: target.display().to_string(),
        }));
    }
    let unmount_error = |source| UnpublishError::Unmount {
        path: target.to_owned(),
        source,
    };
    mount::unmount(target).map_err(unmount_error)?;
    let canonical = target
        .canonicalize()
        .map_err(|source| UnpublishError::Remove {
            path: target.to_owned(),
            source,
        })?;
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(mount) = mount::mount_points(&table).find(|p| Path::new(p).starts_with(&canonical))
    {
        return Err(UnpublishError::NestedMount {
            path: target.to_owned(),
            mount,
        });
    }
    AtomicWriter::new(target)
        .remove_written()
        .map_err(|err| UnpublishError::Remove {
            path: target.to_owned(),
            source: std::io::Error::other(err),
        })?;
    std::fs::remove_dir(target).map_err(|source| {
        if source.kind() == std::io::ErrorKind::DirectoryNotEmpty {
            UnpublishError::NotEmpty {
                path: target.to_owned(),
            }
        } else {
            UnpublishError::Remove {
                path: target.to_owned(),
                source,
            }
        }
    })
}
