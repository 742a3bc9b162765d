//! Reading a pod's mounted files for sync, only after proving the path is that pod's volume.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::redact::Secret;
use crate::volume::{self, AtomicWriter, ReadError};

/// Why a mounted volume cannot be read for sync.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The recorded target path is not kubelet's path for this pod and volume.
    #[error(
        "target path {path:?} does not belong to pod UID {uid} and a volume of this class; \
         the SecretProviderClassPodStatus is stale or was edited"
    )]
    NotThisPod {
        /// The recorded path.
        path: String,
        /// The pod's UID.
        uid: String,
    },
    /// The volume is not (or no longer) published.
    #[error("failed to get mounted files: {path:?} holds no published volume")]
    NotMounted {
        /// The target.
        path: String,
    },
    /// `objectName` is empty, absolute or leaves the volume.
    #[error("objectName {0:?} is not a relative path inside the volume (no leading '/', no '..')")]
    BadObjectName(String),
    /// No mounted file for `objectName`.
    #[error("file matching objectName {0} not found in the pod")]
    Missing(String),
    /// The file exists but could not be read.
    #[error("failed to read file matching objectName {name}: {source}")]
    Read {
        /// `objectName`.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Pod UID and volume name from kubelet's `/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
pub fn owner_of_target(path: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        [
            ..,
            "pods",
            uid,
            "volumes",
            "kubernetes.io~csi",
            volume,
            "mount",
        ] => Some((uid, volume)),
        _ => None,
    }
}

/// A published volume, checked to belong to the pod.
#[derive(Debug)]
pub struct MountedVolume {
    root: PathBuf,
    /// When the contents were last swapped in: newer mounts win when pods disagree.
    pub content_time: SystemTime,
}

impl MountedVolume {
    /// Opens `target_path` if it is `pod_uid`'s volume named one of `volumes` and holds a
    /// published volume.
    pub fn open(target_path: &str, pod_uid: &str, volumes: &[String]) -> Result<Self, FilesError> {
        let belongs = owner_of_target(target_path)
            .is_some_and(|(uid, volume)| uid == pod_uid && volumes.iter().any(|v| v == volume));
        if !belongs {
            return Err(FilesError::NotThisPod {
                path: target_path.to_owned(),
                uid: pod_uid.to_owned(),
            });
        }
        let not_mounted = || FilesError::NotMounted {
            path: target_path.to_owned(),
        };
        let root = Path::new(target_path)
            .canonicalize()
            .map_err(|_| not_mounted())?;
        let content_time = AtomicWriter::swapped_at(&root).map_err(|_| not_mounted())?;
        Ok(Self { root, content_time })
    }

    /// The contents of the file mounted as `object_name` (nested paths allowed).
    pub fn read(&self, object_name: &str) -> Result<Secret<Vec<u8>>, FilesError> {
        volume::read_published(&self.root, object_name)
            .map(Secret::new)
            .map_err(|err| match err {
                ReadError::BadName => FilesError::BadObjectName(object_name.to_owned()),
                ReadError::Missing => FilesError::Missing(object_name.to_owned()),
                ReadError::Io(source) => FilesError::Read {
                    name: object_name.to_owned(),
                    source,
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_path_names_its_pod_and_volume() {
        assert_eq!(
            owner_of_target("/var/lib/kubelet/pods/0d1e/volumes/kubernetes.io~csi/secrets/mount"),
            Some(("0d1e", "secrets"))
        );
        assert_eq!(owner_of_target("/var/lib/kubelet/pods/0d1e/volumes"), None);
        assert_eq!(owner_of_target("/tmp/elsewhere/mount"), None);
    }

    #[test]
    fn only_the_pods_own_volume_is_read_and_names_cannot_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~csi/vol/mount");
        let data = target.join("..2026_11_23");
        std::fs::create_dir_all(data.join("nested")).unwrap();
        std::fs::write(data.join("nested/bar"), b"bar").unwrap();
        std::fs::write(dir.path().join("outside"), b"outside").unwrap();
        std::os::unix::fs::symlink("..2026_11_23", target.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/nested", target.join("nested")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), target.join("escape")).unwrap();
        let path = target.to_str().unwrap();

        let volume = MountedVolume::open(path, "uid-1", &["vol".to_owned()]).unwrap();
        assert_eq!(volume.read("nested/bar").unwrap().expose(), b"bar");
        for bad in [
            "",
            "/etc/passwd",
            "../outside",
            "nested/../../x",
            "..data/nested/bar",
        ] {
            assert!(
                matches!(volume.read(bad), Err(FilesError::BadObjectName(_))),
                "{bad}"
            );
        }
        assert!(matches!(volume.read("escape"), Err(FilesError::Missing(_))));
        assert!(matches!(volume.read("nested"), Err(FilesError::Missing(_))));
        assert!(matches!(volume.read("absent"), Err(FilesError::Missing(_))));

        assert!(matches!(
            MountedVolume::open(path, "uid-2", &["vol".to_owned()]),
            Err(FilesError::NotThisPod { .. })
        ));
        assert!(matches!(
            MountedVolume::open(path, "uid-1", &["other".to_owned()]),
            Err(FilesError::NotThisPod { .. })
        ));
        std::fs::remove_file(target.join("..data")).unwrap();
        assert!(matches!(
            MountedVolume::open(path, "uid-1", &["vol".to_owned()]),
            Err(FilesError::NotMounted { .. })
        ));
    }
}
