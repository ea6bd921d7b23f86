//! Waking a parked loop from outside its turn: other threads, fd readiness, signals.
//!
//! The loop sets `idle` just before it parks and re-checks for work afterwards; a producer
//! publishes its work first and wakes the loop only if it is the one to clear `idle`. So a
//! busy loop costs its producers no syscall, and a parked one is woken once, however many
//! producers arrive while it retakes the GIL. The waker is tokio's `block_on` waker: plain
//! Rust, safe to call during a park and from any thread.

use std::task::Waker;

// Under `--cfg tokioloop_loom` (tests/README: the loom models) the atomics and the lock are
// loom's, so its model checker explores every interleaving of the protocol below.
#[cfg(tokioloop_loom)]
use loom::sync::{
    atomic::{fence, AtomicBool, Ordering},
    Mutex,
};
#[cfg(not(tokioloop_loom))]
use parking_lot::Mutex;
#[cfg(not(tokioloop_loom))]
use std::sync::atomic::{fence, AtomicBool, Ordering};

pub struct Wake {
    idle: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            idle: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }
}

#[cfg(not(tokioloop_loom))]
fn lock<T>(mutex: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    mutex.lock()
}

#[cfg(tokioloop_loom)]
fn lock<T>(mutex: &Mutex<T>) -> loom::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Wake {
    pub fn set_waker(&self, waker: Option<Waker>) {
        *lock(&self.waker) = waker;
    }

    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::SeqCst);
        if idle {
            // Pairs with `notify_after_flag`'s fence: the loop's re-check of the flags that
            // follows cannot miss a flag whose producer then saw `idle` still false. One
            // fence per park, next to a syscall.
            fence(Ordering::SeqCst);
        }
    }

    /// `notify` for producers that publish through a flag of their own rather than under the
    /// loop's lock (DNS answers, `dns::Completions`): call after setting the flag. The SeqCst
    /// fences here and in `set_idle(true)` order each side's store before its load, which is
    /// what the store-then-load handshake needs; they are also what loom can check, as it
    /// models SeqCst loads and stores as acquire/release only.
    pub fn notify_after_flag(&self) {
        fence(Ordering::SeqCst);
        self.notify();
    }

    /// Wakes the loop if it is parked or about to park; call after publishing the work.
    /// Only the first producer after a park pays for the wake-up (an eventfd write): the
    /// loop may take a while to get the GIL back, and producers keep coming meanwhile.
    pub fn notify(&self) {
        // A plain load first: a busy loop's producers then share the line read-only instead of
        // taking it exclusive with a locked swap on every call.
        if self.idle.load(Ordering::SeqCst) && self.idle.swap(false, Ordering::SeqCst) {
            if let Some(waker) = lock(&self.waker).as_ref() {
                waker.wake_by_ref();
            }
        }
    }
}

/// The loom model of the protocol above (`RUSTFLAGS="--cfg tokioloop_loom" cargo test --lib
/// loom`): a producer publishes work in the loop's queue (under its lock, as `call_soon` &
/// co. do) and notifies, while the loop goes idle, re-checks the queue and parks. In every
/// interleaving the loop sees the work on its re-check or is woken, and is woken at most once.
///
/// DNS answers publish through a flag instead of the lock: a Dekker handshake between that flag
/// and `idle`, made checkable by the SeqCst fences of `set_idle(true)` and `notify_after_flag`
/// (loom models SeqCst loads and stores as acquire/release, but SeqCst fences exactly); its
/// model is `dns::loom_model`. fd edges also set a flag, but their wakers run on the loop's own
/// thread, inside its reactor turn (a current-thread runtime), so program order suffices there.
#[cfg(all(test, tokioloop_loom))]
mod loom_model {
    use super::Wake;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::{Arc, Mutex};
    use std::task::{Wake as TaskWake, Waker};

    struct CountingWaker(AtomicUsize);

    impl TaskWake for CountingWaker {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let wake = Arc::new(Wake::default());
            let queue = Arc::new(Mutex::new(0usize));
            let woken = std::sync::Arc::new(CountingWaker(AtomicUsize::new(0)));
            wake.set_waker(Some(Waker::from(woken.clone())));

            let producer = {
                let (wake, queue) = (wake.clone(), queue.clone());
                loom::thread::spawn(move || {
                    *queue.lock().unwrap() += 1;
                    wake.notify();
                })
            };
            // The loop's park, as event_loop/turn.rs does it.
            wake.set_idle(true);
            let saw_work = *queue.lock().unwrap() > 0;
            if saw_work {
                wake.set_idle(false);
            }
            producer.join().unwrap();
            let wakeups = woken.0.load(Ordering::SeqCst);
            assert!(saw_work || wakeups == 1, "a wake-up was lost");
            assert!(wakeups <= 1, "woken more than once");
        });
    }
}
