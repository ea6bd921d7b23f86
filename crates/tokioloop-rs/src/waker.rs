//! Wakers across the ABI, both ways. tokioloop lends a C waker to each poll; the user's future
//! needs a `std::task::Waker` ([`WakerCache`] makes one per task, cloning the C waker once and
//! reusing it while tokioloop lends the same one). A native leaf hands the waker of its context
//! back to tokioloop as a C waker ([`lend_as_c`]): the task's own C waker when the context still
//! holds ours, otherwise a C waker over whatever std waker a combinator put there. Only `task`
//! and the leaves use this module.

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;
use std::task::{RawWaker, RawWakerVTable, Waker};

use tokioloop_ffi as ffi;

/// A reference to a C waker that this crate owns (a clone of a lent one); dropping it gives the
/// reference back. The ABI lets any thread wake or drop a C waker, with or without the GIL.
struct OwnedCWaker(ffi::Waker);

unsafe impl Send for OwnedCWaker {}
unsafe impl Sync for OwnedCWaker {}

impl Drop for OwnedCWaker {
    fn drop(&mut self) {
        // SAFETY: we own this reference; `drop` consumes it.
        unsafe { ((*self.0.vtable).drop)(self.0.data) }
    }
}

/// A std waker over an `Arc<OwnedCWaker>`: std clones share the one C reference (an atomic
/// increment, no call across the ABI, no allocation), and the last std reference gives it back.
static STD_OVER_C: RawWakerVTable = RawWakerVTable::new(std_clone, std_wake, std_wake_by_ref, std_drop);

unsafe fn std_clone(data: *const ()) -> RawWaker {
    Arc::increment_strong_count(data.cast::<OwnedCWaker>());
    RawWaker::new(data, &STD_OVER_C)
}

unsafe fn std_wake(data: *const ()) {
    match Arc::try_unwrap(Arc::from_raw(data.cast::<OwnedCWaker>())) {
        // The last std reference: C `wake` consumes the C reference, so it must not be dropped.
        Ok(sole) => {
            let sole = ManuallyDrop::new(sole);
            ((*sole.0.vtable).wake)(sole.0.data);
        }
        Err(shared) => ((*shared.0.vtable).wake_by_ref)(shared.0.data),
    }
}

unsafe fn std_wake_by_ref(data: *const ()) {
    let owned = &*data.cast::<OwnedCWaker>();
    ((*owned.0.vtable).wake_by_ref)(owned.0.data);
}

unsafe fn std_drop(data: *const ()) {
    drop(Arc::from_raw(data.cast::<OwnedCWaker>()));
}

/// A task's std waker, made from the first C waker tokioloop lends it and kept while later polls
/// lend the same one, so that a poll allocates nothing after the first.
#[derive(Default)]
pub(crate) struct WakerCache {
    current: Option<(*const c_void, Waker)>,
}

impl WakerCache {
    /// The std waker for `lent`; replaced only when tokioloop lends a waker with another data
    /// pointer.
    ///
    /// # Safety
    /// `lent` is a valid C waker for the duration of this call.
    pub(crate) unsafe fn waker_for(&mut self, lent: &ffi::Waker) -> &Waker {
        let reusable = matches!(&self.current, Some((data, _)) if *data == lent.data);
        if !reusable {
            let owned = Arc::new(OwnedCWaker(((*lent.vtable).clone)(lent.data)));
            let raw = RawWaker::new(Arc::into_raw(owned).cast(), &STD_OVER_C);
            self.current = Some((lent.data, Waker::from_raw(raw)));
        }
        &self.current.as_ref().expect("just filled").1
    }
}

/// Calls `with` with a C waker that wakes `waker`, valid during the call (tokioloop clones it
/// to keep it, as the ABI says).
pub(crate) fn lend_as_c<R>(waker: &Waker, with: impl FnOnce(&ffi::Waker) -> R) -> R {
    if ptr::eq(waker.vtable(), &STD_OVER_C) {
        // SAFETY: our vtable, so the data is an `Arc<OwnedCWaker>` that `waker` keeps alive.
        let owned = unsafe { &*waker.data().cast::<OwnedCWaker>() };
        return with(&owned.0);
    }
    let lent = ffi::Waker {
        data: ptr::from_ref(waker).cast(),
        vtable: &C_OVER_STD,
    };
    with(&lent)
}

/// A C waker over a std one: a lent one's data is a `&Waker` (never woken or dropped through
/// the ABI, only cloned), a cloned one's data a `Box<Waker>`. No entry may unwind into C.
static C_OVER_STD: ffi::WakerVTable = ffi::WakerVTable {
    clone: c_clone,
    wake: c_wake,
    wake_by_ref: c_wake_by_ref,
    drop: c_drop,
};

unsafe extern "C" fn c_clone(data: *const c_void) -> ffi::Waker {
    let waker = &*data.cast::<Waker>();
    match catch_unwind(AssertUnwindSafe(|| Box::new(waker.clone()))) {
        Ok(boxed) => ffi::Waker {
            data: Box::into_raw(boxed).cast_const().cast(),
            vtable: &C_OVER_STD,
        },
        // A std waker whose clone panics can only be replaced by one that never wakes.
        Err(_) => ffi::Waker {
            data: ptr::null(),
            vtable: &C_NOOP,
        },
    }
}

unsafe extern "C" fn c_wake(data: *const c_void) {
    let boxed = Box::from_raw(data.cast_mut().cast::<Waker>());
    let _ = catch_unwind(AssertUnwindSafe(move || boxed.wake()));
}

unsafe extern "C" fn c_wake_by_ref(data: *const c_void) {
    let waker = &*data.cast::<Waker>();
    let _ = catch_unwind(AssertUnwindSafe(|| waker.wake_by_ref()));
}

unsafe extern "C" fn c_drop(data: *const c_void) {
    let boxed = Box::from_raw(data.cast_mut().cast::<Waker>());
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

static C_NOOP: ffi::WakerVTable = ffi::WakerVTable {
    clone: noop_clone,
    wake: noop,
    wake_by_ref: noop,
    drop: noop,
};

unsafe extern "C" fn noop_clone(_data: *const c_void) -> ffi::Waker {
    ffi::Waker {
        data: ptr::null(),
        vtable: &C_NOOP,
    }
}

unsafe extern "C" fn noop(_data: *const c_void) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::CountingWaker;
    use std::sync::atomic::Ordering;
    use std::task::Wake;

    #[test]
    fn one_c_clone_serves_every_poll_and_every_std_clone() {
        let c_waker = CountingWaker::new();
        let mut cache = WakerCache::default();
        let first = unsafe { cache.waker_for(&c_waker.lent()) }.clone();
        let again = unsafe { cache.waker_for(&c_waker.lent()) }.clone();
        assert!(first.will_wake(&again));
        assert_eq!(c_waker.counts.clones.load(Ordering::SeqCst), 1);
        again.wake_by_ref();
        again.wake();
        assert_eq!(c_waker.counts.wakes.load(Ordering::SeqCst), 2);
        assert_eq!(c_waker.live_clones(), 1, "the cache and `first` still hold it");
        drop(first);
        drop(cache);
        assert_eq!(c_waker.live_clones(), 0);
    }

    #[test]
    fn the_last_std_wake_consumes_the_c_reference() {
        let c_waker = CountingWaker::new();
        let mut cache = WakerCache::default();
        let waker = unsafe { cache.waker_for(&c_waker.lent()) }.clone();
        drop(cache);
        waker.wake();
        let counts = c_waker.counts;
        assert_eq!(counts.wakes_consumed.load(Ordering::SeqCst), 1);
        assert_eq!(counts.drops.load(Ordering::SeqCst), 0);
        assert_eq!(c_waker.live_clones(), 0);
    }

    #[test]
    fn another_lent_waker_replaces_the_cached_one() {
        let (one, other) = (CountingWaker::new(), CountingWaker::new());
        let mut cache = WakerCache::default();
        unsafe { cache.waker_for(&one.lent()) };
        unsafe { cache.waker_for(&other.lent()) }.wake_by_ref();
        assert_eq!(one.live_clones(), 0, "the old C waker was given back");
        assert_eq!(other.counts.wakes.load(Ordering::SeqCst), 1);
        assert_eq!(one.counts.wakes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn our_own_std_waker_is_lent_back_as_the_tasks_c_waker() {
        let c_waker = CountingWaker::new();
        let mut cache = WakerCache::default();
        let waker = unsafe { cache.waker_for(&c_waker.lent()) };
        let lent_data = lend_as_c(waker, |lent| lent.data);
        assert_eq!(lent_data, c_waker.lent().data);
    }

    struct Flag(std::sync::atomic::AtomicUsize);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_foreign_std_waker_is_lent_as_a_c_waker_that_wakes_it() {
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(Arc::clone(&flag));
        let kept = lend_as_c(&waker, |lent| unsafe { ((*lent.vtable).clone)(lent.data) });
        drop(waker);
        unsafe {
            ((*kept.vtable).wake_by_ref)(kept.data);
            ((*kept.vtable).wake)(kept.data);
        }
        assert_eq!(flag.0.load(Ordering::SeqCst), 2);
        assert_eq!(Arc::strong_count(&flag), 1, "the C clone was given back");
    }
}
