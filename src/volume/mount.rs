//! The only place that makes mount system calls.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// How a volume's directory is backed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountMode {
    /// A tmpfs per volume: secrets never touch a disk. Needs `CAP_SYS_ADMIN`.
    Tmpfs(TmpfsOptions),
    /// A plain directory, for `mount` run without root.
    PlainDir,
}

/// Options of the per-volume tmpfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsOptions {
    /// Size limit in bytes; tmpfs only uses memory for what is written.
    pub size_bytes: u64,
}

/// A mount system call or the mount table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount(2)` failed.
    #[error("failed to mount tmpfs at {}: {source}", path.display())]
    Mount {
        /// The target.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `umount(2)` failed.
    #[error("failed to unmount {}: {source}", path.display())]
    Unmount {
        /// The target.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The mount table or the target could not be read.
    #[error("failed to inspect {}: {source}", path.display())]
    Inspect {
        /// What was read.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Mounts a `nodev,nosuid,noexec` tmpfs with a size limit and mode 0755 at `target`.
pub fn mount_tmpfs(target: &Path, options: &TmpfsOptions) -> Result<(), MountError> {
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let data = format!("size={},mode=0755", options.size_bytes);
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|source| MountError::Mount {
        path: target.to_owned(),
        source,
    })
}

/// Unmounts every mount stacked at `target` (a crashed retry, a manual mount), without
/// following a symlink at `target`; a target that is not mounted is fine. Fails, rather than
/// reporting success, if `target` is still a mount point afterwards.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    for _ in 0..8 {
        if !is_mount_point(target)? {
            return Ok(());
        }
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            Err(source) => {
                return Err(MountError::Unmount {
                    path: target.to_owned(),
                    source,
                });
            }
        }
    }
    if is_mount_point(target)? {
        return Err(MountError::Unmount {
            path: target.to_owned(),
            source: nix::Error::EBUSY,
        });
    }
    Ok(())
}

/// Whether `target` is a mount point, from `/proc/self/mountinfo` (exact, unlike comparing
/// device numbers, which misses bind mounts).
pub fn is_mount_point(target: &Path) -> Result<bool, MountError> {
    let canonical = match target.canonicalize() {
        Ok(path) => path,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(MountError::Inspect {
                path: target.to_owned(),
                source,
            });
        }
    };
    let table = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(table).map_err(|source| MountError::Inspect {
        path: table.to_owned(),
        source,
    })?;
    Ok(mount_points(&text).any(|point| Path::new(&point) == canonical))
}

/// The mount points listed in a mountinfo table, unescaped.
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
}

/// Undoes the kernel's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the process may mount (root with `CAP_SYS_ADMIN`, as the DaemonSet runs).
pub fn can_mount() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_with_escapes() {
        let table = "22 1 0:21 / /proc rw - proc proc rw\n\
                     99 22 0:50 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my\\040vol/mount rw - tmpfs tmpfs rw\n";
        let points: Vec<_> = mount_points(table).collect();
        assert_eq!(
            points,
            [
                "/proc",
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/my vol/mount"
            ]
        );
    }

    #[test]
    fn a_plain_directory_is_not_a_mount_point() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(dir.path()).unwrap());
        assert!(!is_mount_point(&dir.path().join("missing")).unwrap());
    }
}
