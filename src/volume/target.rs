//! Kubelet's target paths, `<kubelet root>/pods/<pod UID>/volumes/kubernetes.io~csi/<volume>/mount`.
//!
//! On a node the driver mounts, writes and removes only at paths of exactly this shape under
//! the kubelet root it was started with, through no symlink; the sync controller rebuilds a
//! pod's path from the pod instead of trusting the one recorded in a status object.

use std::io;
use std::path::{Component, Path, PathBuf};

/// The volume plugin directory kubelet gives CSI volumes.
const CSI_PLUGIN_DIR: &str = "kubernetes.io~csi";

/// A target path that is not one kubelet would give this driver.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not `<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    #[error(
        "target path {path:?} is not a CSI volume path of kubelet root {root}: expected \
         {root}/pods/<pod UID>/volumes/kubernetes.io~csi/<volume>/mount (set --kubelet-root-dir \
         to kubelet's --root-dir)"
    )]
    Shape {
        /// The path given.
        path: String,
        /// The kubelet root.
        root: String,
    },
    /// A component below the kubelet root is a symlink.
    #[error("target path {path:?} goes through a symlink at {link}; refusing to follow it")]
    Symlink {
        /// The path given.
        path: String,
        /// The component that is a link.
        link: String,
    },
    /// A component could not be inspected.
    #[error("failed to inspect target path {path:?}: {source}")]
    Inspect {
        /// The path given.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The pod and volume a target path belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOwner {
    /// The pod's UID.
    pub pod_uid: String,
    /// The volume's name in the pod spec.
    pub volume: String,
}

/// Kubelet's `--root-dir`, as configured and with symlinks resolved.
#[derive(Debug, Clone)]
pub struct KubeletRoot {
    configured: PathBuf,
    canonical: PathBuf,
}

impl KubeletRoot {
    /// The root at `path`, which must exist.
    pub fn new(path: &Path) -> io::Result<Self> {
        Ok(Self {
            configured: path.to_owned(),
            canonical: path.canonicalize()?,
        })
    }

    /// The root as configured.
    pub fn path(&self) -> &Path {
        &self.configured
    }

    /// The path kubelet gives `volume` of the pod `pod_uid`, in canonical form; `None` when
    /// either is not a single plain path element.
    pub fn volume_path(&self, pod_uid: &str, volume: &str) -> Option<PathBuf> {
        (is_element(pod_uid) && is_element(volume)).then(|| {
            self.canonical
                .join("pods")
                .join(pod_uid)
                .join("volumes")
                .join(CSI_PLUGIN_DIR)
                .join(volume)
                .join("mount")
        })
    }

    /// The pod and volume `target` belongs to, if it has exactly kubelet's shape under this
    /// root (as configured or canonical); nothing is read from the filesystem.
    pub fn owner(&self, target: &Path) -> Result<TargetOwner, TargetError> {
        let shape = || TargetError::Shape {
            path: target.display().to_string(),
            root: self.configured.display().to_string(),
        };
        let relative = target
            .strip_prefix(&self.configured)
            .or_else(|_| target.strip_prefix(&self.canonical))
            .map_err(|_| shape())?;
        let parts: Vec<&str> = relative
            .components()
            .map(|c| match c {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(shape)?;
        match parts.as_slice() {
            ["pods", uid, "volumes", CSI_PLUGIN_DIR, volume, "mount"]
                if is_element(uid) && is_element(volume) =>
            {
                Ok(TargetOwner {
                    pod_uid: (*uid).to_owned(),
                    volume: (*volume).to_owned(),
                })
            }
            _ => Err(shape()),
        }
    }

    /// Fails if any existing component of `target` below the root is a symlink, so nothing
    /// at `target` can lead outside the pod's volume directory. Reads the filesystem.
    pub fn check_no_links(&self, target: &Path) -> Result<(), TargetError> {
        let relative = target
            .strip_prefix(&self.configured)
            .or_else(|_| target.strip_prefix(&self.canonical))
            .map_err(|_| TargetError::Shape {
                path: target.display().to_string(),
                root: self.configured.display().to_string(),
            })?;
        let mut current = self.canonical.clone();
        for component in relative.components() {
            current.push(component);
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(TargetError::Symlink {
                        path: target.display().to_string(),
                        link: current.display().to_string(),
                    });
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(TargetError::Inspect {
                        path: target.display().to_string(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// One plain path element: not empty, no `/`, not `.` or `..`, no NUL.
fn is_element(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && !text.contains('/')
        && !text.contains('\0')
        && text.len() <= crate::limits::MAX_ELEMENT_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kubelets_shape_under_the_root_is_a_target() {
        let dir = tempfile::tempdir().unwrap();
        let root = KubeletRoot::new(dir.path()).unwrap();
        let good = dir
            .path()
            .join("pods/0d1e/volumes/kubernetes.io~csi/secrets/mount");
        assert_eq!(
            root.owner(&good).unwrap(),
            TargetOwner {
                pod_uid: "0d1e".to_owned(),
                volume: "secrets".to_owned()
            }
        );
        assert_eq!(root.volume_path("0d1e", "secrets").unwrap(), good);
        for bad in [
            "/etc",
            "pods/u/volumes/kubernetes.io~csi/v",
            "pods/u/volumes/kubernetes.io~csi/v/mount/deeper",
            "pods/u/volumes/kubernetes.io~secret/v/mount",
            "pods/../volumes/kubernetes.io~csi/v/mount",
            "elsewhere/pods/u/volumes/kubernetes.io~csi/v/mount",
        ] {
            let path = if bad.starts_with('/') {
                PathBuf::from(bad)
            } else {
                dir.path().join(bad)
            };
            assert!(root.owner(&path).is_err(), "{bad}");
        }
        assert!(root.volume_path("..", "v").is_none());
        assert!(root.volume_path("u", "a/b").is_none());
    }

    #[test]
    fn a_symlink_below_the_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let root = KubeletRoot::new(dir.path()).unwrap();
        let volumes = dir.path().join("pods/u/volumes/kubernetes.io~csi");
        std::fs::create_dir_all(&volumes).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), volumes.join("v")).unwrap();
        let target = volumes.join("v/mount");
        assert!(matches!(
            root.check_no_links(&target),
            Err(TargetError::Symlink { .. })
        ));
        let fine = volumes.join("w/mount");
        assert!(root.check_no_links(&fine).is_ok());
    }
}
