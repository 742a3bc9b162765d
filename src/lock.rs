//! One way to take a std mutex. What the driver guards with one (caches, in-flight sets,
//! remembered volume state) stays consistent after a panic elsewhere, since every critical
//! section is a single map operation, so a poisoned lock is taken as it is rather than
//! spreading the panic to every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The guard, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
