use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::lock::lock;

/// Targets with a call in progress: a second concurrent call on one target is refused with
/// `ABORTED` (kubelet retries it), so two calls never mount or write the same target at once.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    targets: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Held while a call runs on a target; dropping it frees the target.
#[derive(Debug)]
pub struct InFlightGuard {
    targets: Arc<Mutex<HashSet<PathBuf>>>,
    target: PathBuf,
}

impl InFlight {
    /// Claims `target`, or `None` when another call holds it.
    pub fn try_acquire(&self, target: &Path) -> Option<InFlightGuard> {
        let mut targets = lock(&self.targets);
        targets.insert(target.to_owned()).then(|| InFlightGuard {
            targets: self.targets.clone(),
            target: target.to_owned(),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.targets).remove(&self.target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_per_target() {
        let in_flight = InFlight::default();
        let first = in_flight.try_acquire(Path::new("/a")).unwrap();
        assert!(in_flight.try_acquire(Path::new("/a")).is_none());
        assert!(in_flight.try_acquire(Path::new("/b")).is_some());
        drop(first);
        assert!(in_flight.try_acquire(Path::new("/a")).is_some());
    }
}
