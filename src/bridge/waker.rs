//! The C waker tokioloop lends to an extension's poll: waking it queues the task's id for the
//! loop's next turn and wakes a parked loop. Any thread may call it, GIL or not; it touches no
//! Python object.
//!
//! The queue is an `io::Handoff` (its protocol is loom-checked). `queued` keeps a task in the
//! queue at most once between two polls, however often its leaves wake it. Only
//! `bridge::tasks` makes these.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokioloop_ffi as cabi;

use crate::io::{Handoff, Wake};

/// The ids of woken tasks, waiting for the loop's next turn.
pub struct WokenQueue {
    ids: Handoff<u64>,
    wake: Arc<Wake>,
}

impl WokenQueue {
    pub fn new(wake: Arc<Wake>) -> Self {
        WokenQueue {
            ids: Handoff::default(),
            wake,
        }
    }

    #[inline]
    pub fn is_pending(&self) -> bool {
        self.ids.is_pending()
    }

    /// Moves the queued ids into `into` (empty on entry).
    pub fn take(&self, into: &mut Vec<u64>) {
        self.ids.take_into(into);
    }

    fn push(&self, id: u64) {
        self.ids.publish(id, &self.wake);
    }
}

/// What a task's C waker points at: one per task, shared by every clone of its waker.
pub struct TaskWaker {
    queue: Arc<WokenQueue>,
    id: u64,
    /// Set when queued, cleared by the turn just before it polls the task.
    queued: AtomicBool,
}

impl TaskWaker {
    pub fn new(queue: Arc<WokenQueue>, id: u64) -> Arc<Self> {
        Arc::new(TaskWaker {
            queue,
            id,
            queued: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.id);
        }
    }

    /// The turn is about to poll: a wake from now on queues the task again.
    pub fn unqueue(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// The C waker to lend to one poll; `self` must outlive the poll (the task's slot holds it).
    pub fn lend(self: &Arc<Self>) -> cabi::Waker {
        cabi::Waker {
            data: Arc::as_ptr(self).cast(),
            vtable: &VTABLE,
        }
    }
}

static VTABLE: cabi::WakerVTable = cabi::WakerVTable {
    clone: clone_waker,
    wake: wake_waker,
    wake_by_ref: wake_waker_by_ref,
    drop: drop_waker,
};

// The vtable entries cannot unwind: `wake` only locks a mutex, pushes to a Vec and writes an
// eventfd; `Arc` counting aborts on overflow rather than panicking.

/// # Safety
/// `data` is a live `TaskWaker` reference (from `lend` or an earlier clone).
unsafe extern "C" fn clone_waker(data: *const c_void) -> cabi::Waker {
    // SAFETY: per the contract, `data` came from `Arc::as_ptr` of a live Arc.
    unsafe { Arc::increment_strong_count(data.cast::<TaskWaker>()) };
    cabi::Waker {
        data,
        vtable: &VTABLE,
    }
}

/// # Safety
/// `data` is an owned `TaskWaker` reference (a clone); consumed.
unsafe extern "C" fn wake_waker(data: *const c_void) {
    // SAFETY: per the contract, this owns one strong count.
    let waker = unsafe { Arc::from_raw(data.cast::<TaskWaker>()) };
    waker.wake();
}

/// # Safety
/// `data` is a live `TaskWaker` reference.
unsafe extern "C" fn wake_waker_by_ref(data: *const c_void) {
    // SAFETY: per the contract, alive for this call.
    unsafe { &*data.cast::<TaskWaker>() }.wake();
}

/// # Safety
/// `data` is an owned `TaskWaker` reference (a clone); consumed.
unsafe extern "C" fn drop_waker(data: *const c_void) {
    // SAFETY: per the contract, this owns one strong count.
    drop(unsafe { Arc::from_raw(data.cast::<TaskWaker>()) });
}

/// A C waker an extension lent, cloned and owned by tokioloop (a timer or a descriptor keeps
/// it until due): woken or dropped through its vtable.
pub struct OwnedWaker(cabi::Waker);

// SAFETY: the ABI lets any thread call or drop a waker.
unsafe impl Send for OwnedWaker {}

impl OwnedWaker {
    /// # Safety
    /// `waker` is a valid C waker lent for the current call.
    pub unsafe fn clone_from(waker: &cabi::Waker) -> Self {
        // SAFETY: per the contract.
        OwnedWaker(unsafe { ((*waker.vtable).clone)(waker.data) })
    }

    pub fn wake(self) {
        let waker = std::mem::ManuallyDrop::new(self);
        // SAFETY: `wake` consumes the reference this owns; `ManuallyDrop` skips our drop.
        unsafe { ((*waker.0.vtable).wake)(waker.0.data) }
    }
}

impl Drop for OwnedWaker {
    fn drop(&mut self) {
        // SAFETY: this owns one reference.
        unsafe { ((*self.0.vtable).drop)(self.0.data) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Arc<WokenQueue> {
        Arc::new(WokenQueue::new(Arc::new(Wake::default())))
    }

    fn taken(queue: &WokenQueue) -> Vec<u64> {
        let mut ids = Vec::new();
        queue.take(&mut ids);
        ids
    }

    #[test]
    fn a_task_is_queued_once_between_polls() {
        let queue = queue();
        let waker = TaskWaker::new(queue.clone(), 7);
        let lent = waker.lend();
        // SAFETY: `lent` points at `waker`, alive for the whole test.
        unsafe {
            ((*lent.vtable).wake_by_ref)(lent.data);
            ((*lent.vtable).wake_by_ref)(lent.data);
        }
        assert!(queue.is_pending());
        assert_eq!(taken(&queue), vec![7]);
        assert!(!queue.is_pending());
        // SAFETY: as above.
        unsafe { ((*lent.vtable).wake_by_ref)(lent.data) };
        assert_eq!(taken(&queue), Vec::<u64>::new(), "not polled since: still queued");
        waker.unqueue();
        // SAFETY: as above.
        unsafe { ((*lent.vtable).wake_by_ref)(lent.data) };
        assert_eq!(taken(&queue), vec![7]);
    }

    #[test]
    fn clones_count_references_and_wake_consumes_one() {
        let queue = queue();
        let waker = TaskWaker::new(queue.clone(), 1);
        let lent = waker.lend();
        // SAFETY: `lent` points at `waker`; each clone is consumed exactly once below.
        let (first, second) = unsafe {
            (
                ((*lent.vtable).clone)(lent.data),
                ((*lent.vtable).clone)(lent.data),
            )
        };
        assert_eq!(Arc::strong_count(&waker), 3);
        // SAFETY: as above.
        unsafe {
            ((*first.vtable).wake)(first.data);
            ((*second.vtable).drop)(second.data);
        }
        assert_eq!(Arc::strong_count(&waker), 1);
        assert_eq!(taken(&queue), vec![1]);
    }

    #[test]
    fn wakes_from_other_threads_all_arrive() {
        let queue = queue();
        let wakers: Vec<_> = (0..64).map(|id| TaskWaker::new(queue.clone(), id)).collect();
        std::thread::scope(|scope| {
            for chunk in wakers.chunks(16) {
                scope.spawn(move || chunk.iter().for_each(|w| w.wake()));
            }
        });
        let mut ids = taken(&queue);
        ids.sort_unstable();
        assert_eq!(ids, (0..64).collect::<Vec<_>>());
    }
}
