//! A stand-in for tokioloop's side of the ABI, for this crate's unit tests (no Python): an `Api`
//! whose clock is a counter the test sets, whose timers and descriptors are slots that record
//! their waker (a descriptor's readiness is set by the test), and C wakers that count what is
//! done to them. Only the tests touch it.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokioloop_ffi as ffi;

pub(crate) static API: ffi::Api = ffi::Api {
    size: std::mem::size_of::<ffi::Api>(),
    minor: ffi::MINOR,
    loop_from_object,
    spawn,
    time,
    timer_new,
    timer_poll,
    timer_free,
    fd_new,
    fd_poll,
    fd_clear,
    fd_free,
};

unsafe extern "C" fn loop_from_object(_obj: *mut ffi::PyObject) -> *const ffi::Loop {
    std::ptr::null()
}

unsafe extern "C" fn spawn(_lp: *const ffi::Loop, _task: ffi::Task) -> *mut ffi::PyObject {
    unreachable!("the unit tests poll tasks themselves")
}

/// The fake loop's clock, in milliseconds (one clock for every fake loop).
pub(crate) static NOW_MS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn time(_lp: *const ffi::Loop) -> f64 {
    NOW_MS.load(Ordering::SeqCst) as f64 / 1000.0
}

/// A fake timer: when it is due and the waker its last pending poll kept.
pub(crate) struct FakeTimer {
    pub(crate) when: f64,
    pub(crate) waker: Mutex<Option<ffi::Waker>>,
}

pub(crate) static TIMERS_LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn timer_new(_lp: *const ffi::Loop, when: f64) -> *mut ffi::Timer {
    TIMERS_LIVE.fetch_add(1, Ordering::SeqCst);
    let timer = FakeTimer {
        when,
        waker: Mutex::new(None),
    };
    Box::into_raw(Box::new(timer)).cast()
}

unsafe extern "C" fn timer_poll(timer: *mut ffi::Timer, waker: *const ffi::Waker) -> u8 {
    let timer = &*timer.cast::<FakeTimer>();
    if time(std::ptr::null()) >= timer.when {
        return 1;
    }
    let kept = ((*(*waker).vtable).clone)((*waker).data);
    if let Some(old) = timer.waker.lock().unwrap().replace(kept) {
        ((*old.vtable).drop)(old.data);
    }
    0
}

unsafe extern "C" fn timer_free(timer: *mut ffi::Timer) {
    TIMERS_LIVE.fetch_sub(1, Ordering::SeqCst);
    let timer = Box::from_raw(timer.cast::<FakeTimer>());
    let kept = timer.waker.lock().unwrap().take();
    if let Some(old) = kept {
        ((*old.vtable).drop)(old.data);
    }
}

/// A fake registration: per direction, whether it is ready and the waker its last pending
/// poll kept. A test makes a direction ready with [`FakeFd::make_ready`].
#[derive(Default)]
pub(crate) struct FakeFd {
    ready: Mutex<[bool; 2]>,
    wakers: Mutex<[Option<ffi::Waker>; 2]>,
}

// The kept wakers are C wakers, which any thread may use.
unsafe impl Send for FakeFd {}
unsafe impl Sync for FakeFd {}

impl FakeFd {
    /// Marks `direction` ready and wakes the waker a pending poll left, as an edge would.
    pub(crate) fn make_ready(&self, direction: u8) {
        self.ready.lock().unwrap()[usize::from(direction)] = true;
        let kept = self.wakers.lock().unwrap()[usize::from(direction)].take();
        if let Some(waker) = kept {
            unsafe { ((*waker.vtable).wake)(waker.data) }
        }
    }
}

pub(crate) static FDS_LIVE: AtomicUsize = AtomicUsize::new(0);
/// The last registration `fd_new` made, for the test that made it.
pub(crate) static LAST_FD: Mutex<usize> = Mutex::new(0);

unsafe extern "C" fn fd_new(_lp: *const ffi::Loop, _fd: std::ffi::c_int) -> *mut ffi::Fd {
    FDS_LIVE.fetch_add(1, Ordering::SeqCst);
    let made = Box::into_raw(Box::<FakeFd>::default());
    *LAST_FD.lock().unwrap() = made as usize;
    made.cast()
}

unsafe extern "C" fn fd_poll(fd: *mut ffi::Fd, direction: u8, waker: *const ffi::Waker) -> u8 {
    let fd = &*fd.cast::<FakeFd>();
    if fd.ready.lock().unwrap()[usize::from(direction)] {
        return 1;
    }
    let kept = ((*(*waker).vtable).clone)((*waker).data);
    if let Some(old) = fd.wakers.lock().unwrap()[usize::from(direction)].replace(kept) {
        ((*old.vtable).drop)(old.data);
    }
    0
}

unsafe extern "C" fn fd_clear(fd: *mut ffi::Fd, direction: u8) -> u8 {
    let fd = &*fd.cast::<FakeFd>();
    fd.ready.lock().unwrap()[usize::from(direction)] = false;
    0
}

unsafe extern "C" fn fd_free(fd: *mut ffi::Fd) {
    FDS_LIVE.fetch_sub(1, Ordering::SeqCst);
    let fd = Box::from_raw(fd.cast::<FakeFd>());
    for waker in fd.wakers.lock().unwrap().iter_mut().filter_map(Option::take) {
        ((*waker.vtable).drop)(waker.data);
    }
}

/// Counts of what was done to the C wakers of one [`CountingWaker`].
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) clones: AtomicUsize,
    pub(crate) wakes: AtomicUsize,
    pub(crate) drops: AtomicUsize,
    /// `wake`s, which consume the reference like a `drop`.
    pub(crate) wakes_consumed: AtomicUsize,
}

/// A C waker whose data is a `Counts` (leaked, so clones can outlive the test's borrow).
pub(crate) struct CountingWaker {
    pub(crate) counts: &'static Counts,
}

impl CountingWaker {
    pub(crate) fn new() -> Self {
        CountingWaker {
            counts: Box::leak(Box::default()),
        }
    }

    /// The waker tokioloop would lend to a poll.
    pub(crate) fn lent(&self) -> ffi::Waker {
        ffi::Waker {
            data: (self.counts as *const Counts).cast(),
            vtable: &COUNTING_VTABLE,
        }
    }

    pub(crate) fn live_clones(&self) -> usize {
        let c = self.counts;
        c.clones.load(Ordering::SeqCst)
            - c.drops.load(Ordering::SeqCst)
            - c.wakes_consumed.load(Ordering::SeqCst)
    }
}

static COUNTING_VTABLE: ffi::WakerVTable = ffi::WakerVTable {
    clone: counting_clone,
    wake: counting_wake,
    wake_by_ref: counting_wake_by_ref,
    drop: counting_drop,
};

fn counts(data: *const c_void) -> &'static Counts {
    unsafe { &*data.cast::<Counts>() }
}

unsafe extern "C" fn counting_clone(data: *const c_void) -> ffi::Waker {
    counts(data).clones.fetch_add(1, Ordering::SeqCst);
    ffi::Waker {
        data,
        vtable: &COUNTING_VTABLE,
    }
}

unsafe extern "C" fn counting_wake(data: *const c_void) {
    counts(data).wakes.fetch_add(1, Ordering::SeqCst);
    counts(data).wakes_consumed.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn counting_wake_by_ref(data: *const c_void) {
    counts(data).wakes.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn counting_drop(data: *const c_void) {
    counts(data).drops.fetch_add(1, Ordering::SeqCst);
}
