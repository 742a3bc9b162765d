//! Bytes to files: validating a provider's payload, mounting tmpfs at the target and writing
//! the files atomically. The only module that touches the host filesystem on a pod's behalf.

pub mod atomic_writer;
pub mod mount;
pub mod payload;

pub use atomic_writer::{AtomicWriter, WriteError};
pub use mount::{MountError, MountMode, TmpfsOptions};
pub use payload::{Payload, PayloadError};
