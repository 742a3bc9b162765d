//! Bytes to files: validating a provider's payload, mounting tmpfs at the target and writing
//! the files atomically. The only module that touches the host filesystem on a pod's behalf.

pub mod atomic_writer;
pub mod lifecycle;
pub mod mount;
pub mod payload;
pub mod target;

pub use atomic_writer::{AtomicWriter, WriteError};
pub use lifecycle::{PrepareError, Prepared, UnpublishError};
pub use mount::{MountError, MountMode, TmpfsOptions};
pub use payload::{Payload, PayloadError};

use std::path::{Component, Path};

/// Why a file of a published volume was not read.
#[derive(Debug)]
pub enum ReadError {
    /// The name is empty, absolute or leaves the volume.
    BadName,
    /// No such file in the volume.
    Missing,
    /// The file exists but could not be read.
    Io(std::io::Error),
}

/// Reads `name` (nested paths allowed) from the published volume at `root`, which must be
/// canonical. Visible names are links into `..data`; a name or link leading anywhere else is
/// refused, so what a pod can write cannot point the driver at node files.
pub fn read_published(root: &Path, name: &str) -> Result<Vec<u8>, ReadError> {
    let relative = Path::new(name);
    let clean = !name.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !name.starts_with("..");
    if !clean {
        return Err(ReadError::BadName);
    }
    let path = root
        .join(relative)
        .canonicalize()
        .map_err(|_| ReadError::Missing)?;
    if !path.starts_with(root) || !path.is_file() {
        return Err(ReadError::Missing);
    }
    std::fs::read(&path).map_err(ReadError::Io)
}
