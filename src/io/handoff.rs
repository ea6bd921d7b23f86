//! A queue through which other threads hand work to the loop thread: DNS answers from the
//! blocking pool (`dns`), woken Rust tasks from any thread (`bridge`).
//!
//! The protocol, checked by the loom model in `dns::loom_model`: a producer pushes, then sets
//! `pending`, then wakes the loop if it is parked ([`Wake::notify_after_flag`]); the loop
//! clears `pending` before it takes the items, so an item pushed after the take leaves the flag
//! set. A parking loop sets `idle` and then reads `pending` (`LoopCore::has_work`): with the
//! producer's flag-then-`idle` order that is a Dekker handshake, and the SeqCst fences on both
//! sides make sure one of the two sees the other's store (no item waits for a wake-up that
//! never comes).

// Under `--cfg tokioloop_loom` the flag and the lock are loom's, so the model explores every
// interleaving of a producer's publish with the loop's park and take.
#[cfg(tokioloop_loom)]
use loom::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex as QueueLock,
};
#[cfg(not(tokioloop_loom))]
use parking_lot::Mutex as QueueLock;
#[cfg(not(tokioloop_loom))]
use std::sync::atomic::{AtomicBool, Ordering};

use super::Wake;

pub struct Handoff<T> {
    items: QueueLock<Vec<T>>,
    /// True while `items` may be non-empty: the turn checks it without locking.
    pending: AtomicBool,
}

impl<T> Default for Handoff<T> {
    fn default() -> Self {
        Handoff {
            items: QueueLock::new(Vec::new()),
            pending: AtomicBool::new(false),
        }
    }
}

#[cfg(not(tokioloop_loom))]
fn lock<T>(mutex: &QueueLock<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

#[cfg(tokioloop_loom)]
fn lock<T>(mutex: &QueueLock<T>) -> loom::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Handoff<T> {
    /// A producer's side, any thread: hands `item` to the loop and wakes it if it is parked.
    pub fn publish(&self, item: T, wake: &Wake) {
        lock(&self.items).push(item);
        self.pending.store(true, Ordering::SeqCst);
        wake.notify_after_flag();
    }

    /// True while items may be waiting; the parking loop reads it after going idle.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// The loop's side: the items handed over since the last take (usually none). Every turn
    /// calls it, so the common answer, none, is one inlined load.
    #[inline]
    pub fn take(&self) -> Option<Vec<T>> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        self.take_flagged()
    }

    #[inline(never)]
    fn take_flagged(&self) -> Option<Vec<T>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(std::mem::take(&mut *lock(&self.items)))
    }

    /// [`Handoff::take`] into `into` (empty on entry), which lends its capacity to the queue.
    pub fn take_into(&self, into: &mut Vec<T>) {
        if self.pending.load(Ordering::Acquire) && self.pending.swap(false, Ordering::AcqRel) {
            std::mem::swap(&mut *lock(&self.items), into);
        }
    }
}
