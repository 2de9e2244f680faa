//! Locks that outlive a panic: the data behind the operator's mutexes (credential caches,
//! rate limiters, counters) stays valid if a holder panicked, so a poisoned lock is taken
//! as it is instead of spreading the panic to every later caller.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(crate) trait Locked<T> {
    /// The guard, whether or not an earlier holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
