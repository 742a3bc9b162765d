//! Reading a pod's mounted files for sync, only after proving the path is that pod's volume.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::redact::Secret;
use crate::volume::target::KubeletRoot;
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

/// A published volume, checked to belong to the pod.
#[derive(Debug)]
pub struct MountedVolume {
    root: PathBuf,
    /// When the contents were last swapped in: newer mounts win when pods disagree.
    pub content_time: SystemTime,
}

impl MountedVolume {
    /// Opens the volume of `pod_uid` that `recorded` (a status object's target path, which
    /// its namespace's admins may edit) names, if it is one of `volumes` and published. The
    /// path read is rebuilt from the kubelet root, the UID and the volume name, compared with
    /// the recorded one in canonical form, and may not pass through a symlink.
    pub fn open(
        recorded: &str,
        kubelet_root: &KubeletRoot,
        pod_uid: &str,
        volumes: &[String],
    ) -> Result<Self, FilesError> {
        let not_this_pod = || FilesError::NotThisPod {
            path: recorded.to_owned(),
            uid: pod_uid.to_owned(),
        };
        let recorded_path = Path::new(recorded.trim_end_matches('/'));
        let owner = kubelet_root
            .owner(recorded_path)
            .map_err(|_| not_this_pod())?;
        if owner.pod_uid != pod_uid || !volumes.contains(&owner.volume) {
            return Err(not_this_pod());
        }
        let root = kubelet_root
            .volume_path(pod_uid, &owner.volume)
            .ok_or_else(not_this_pod)?;
        kubelet_root
            .check_no_links(&root)
            .map_err(|_| not_this_pod())?;
        let not_mounted = || FilesError::NotMounted {
            path: recorded.to_owned(),
        };
        if root.canonicalize().map_err(|_| not_mounted())? != root {
            return Err(not_this_pod());
        }
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

    fn published(target: &Path) {
        let data = target.join("..2026_11_23");
        std::fs::create_dir_all(data.join("nested")).unwrap();
        std::fs::write(data.join("nested/bar"), b"bar").unwrap();
        std::os::unix::fs::symlink("..2026_11_23", target.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/nested", target.join("nested")).unwrap();
    }

    #[test]
    fn only_the_pods_own_volume_is_read_and_names_cannot_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = KubeletRoot::new(dir.path()).unwrap();
        let target = dir
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~csi/vol/mount");
        published(&target);
        std::fs::write(dir.path().join("outside"), b"outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), target.join("escape")).unwrap();
        let path = target.to_str().unwrap();
        let vol = ["vol".to_owned()];

        let volume = MountedVolume::open(path, &root, "uid-1", &vol).unwrap();
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
        assert!(MountedVolume::open(&format!("{path}/"), &root, "uid-1", &vol).is_ok());

        assert!(matches!(
            MountedVolume::open(path, &root, "uid-2", &vol),
            Err(FilesError::NotThisPod { .. })
        ));
        assert!(matches!(
            MountedVolume::open(path, &root, "uid-1", &["other".to_owned()]),
            Err(FilesError::NotThisPod { .. })
        ));
        std::fs::remove_file(target.join("..data")).unwrap();
        assert!(matches!(
            MountedVolume::open(path, &root, "uid-1", &vol),
            Err(FilesError::NotMounted { .. })
        ));
    }

    #[test]
    fn a_look_alike_path_or_a_symlink_never_reaches_another_volume() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kubelet")).unwrap();
        let root = KubeletRoot::new(&dir.path().join("kubelet")).unwrap();
        // Another namespace's pod, published.
        let victim = dir
            .path()
            .join("kubelet/pods/victim/volumes/kubernetes.io~csi/vol/mount");
        published(&victim);
        // The same last components under another root, linked to the victim's volume.
        let look_alike = dir
            .path()
            .join("evil/pods/uid-1/volumes/kubernetes.io~csi/vol");
        std::fs::create_dir_all(&look_alike).unwrap();
        std::os::unix::fs::symlink(&victim, look_alike.join("mount")).unwrap();
        let vol = ["vol".to_owned()];
        let recorded = look_alike.join("mount");
        assert!(matches!(
            MountedVolume::open(recorded.to_str().unwrap(), &root, "uid-1", &vol),
            Err(FilesError::NotThisPod { .. })
        ));
        // The attacker's own volume directory replaced by a link to the victim's.
        let own = dir
            .path()
            .join("kubelet/pods/uid-1/volumes/kubernetes.io~csi/vol");
        std::fs::create_dir_all(&own).unwrap();
        std::os::unix::fs::symlink(&victim, own.join("mount")).unwrap();
        let recorded = own.join("mount");
        assert!(matches!(
            MountedVolume::open(recorded.to_str().unwrap(), &root, "uid-1", &vol),
            Err(FilesError::NotThisPod { .. })
        ));
        // `..` in the recorded path is not a way around the shape either.
        let dotted = format!(
            "{}/kubelet/pods/uid-1/volumes/kubernetes.io~csi/vol/../../../../victim/volumes/kubernetes.io~csi/vol/mount",
            dir.path().display()
        );
        assert!(MountedVolume::open(&dotted, &root, "uid-1", &vol).is_err());
    }
}
