//! Waking a parked loop from outside its turn: other threads, fd readiness, signals.
//!
//! The loop sets `idle` just before it parks and re-checks for work afterwards; a producer
//! publishes its work first and wakes the loop only if it is the one to clear `idle`. So a
//! busy loop costs its producers no syscall, and a parked one is woken once, however many
//! producers arrive while it retakes the GIL. The waker is tokio's `block_on` waker: plain
//! Rust, safe to call during a park and from any thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use parking_lot::Mutex;

#[derive(Default)]
pub struct Wake {
    idle: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Wake {
    pub fn set_waker(&self, waker: Option<Waker>) {
        *self.waker.lock() = waker;
    }

    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
    }

    /// Wakes the loop if it is parked or about to park; call after publishing the work.
    /// Only the first producer after a park pays for the wake-up (an eventfd write): the
    /// loop may take a while to get the GIL back, and producers keep coming meanwhile.
    pub fn notify(&self) {
        // A plain load first: a busy loop's producers then share the line read-only instead of
        // taking it exclusive with a locked swap on every call.
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            if let Some(waker) = self.waker.lock().as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}
