//! The C ABI of tokioloop's native bridge: what a Rust extension and tokioloop exchange so
//! that the extension's futures are polled on the loop's own thread and complete an
//! `asyncio.Future` directly (no thread hop, no `call_soon_threadsafe`).
//!
//! Only `#[repr(C)]` data, `extern "C"` function pointers and `PyObject*` cross, so the two
//! sides may be built with different rustc, pyo3 and tokio versions. tokioloop exports one
//! [`Api`] table per major version in a PyCapsule named [`CAPSULE_NAME`], also reachable as the
//! class attribute [`TYPE_ATTRIBUTE`] of the running loop's type (an extension need not import
//! tokioloop). The table only grows by appending fields: a reader checks [`Api::size`] and
//! [`Api::minor`] before using a field added after minor 0, and treats any mismatch as "not
//! available" (it falls back to its own runtime), never as an error.
//!
//! Threads: every `Api` function and every [`TaskVTable`] entry is called on the loop's thread
//! with the GIL held, except the [`WakerVTable`] entries, which any thread may call, holding the
//! GIL or not (they only queue the task for the loop's next turn and wake the loop).
//! No function may unwind across the boundary: both sides catch panics.

#![no_std]

use core::ffi::c_void;

/// The major ABI version, part of the capsule's and the attribute's names.
pub const MAJOR: u32 = 1;
/// The newest minor version this crate describes; fields are only ever appended. Minor 0 is
/// still open (nothing is published): it is frozen at tokioloop's first release, and every
/// field appended after that bumps this.
pub const MINOR: u32 = 0;
/// `PyCapsule_GetPointer`'s name for the [`Api`] capsule.
pub const CAPSULE_NAME: &core::ffi::CStr = c"tokioloop._tokioloop._C_API_1";
/// The class attribute of tokioloop's loop type holding the same capsule.
pub const TYPE_ATTRIBUTE: &str = "_tokioloop_capi_1";

/// CPython's object, opaque: cast to and from your pyo3-ffi's `PyObject`.
#[repr(C)]
pub struct PyObject {
    _opaque: [u8; 0],
}

/// The loop a task runs on, opaque; borrowed from the loop object, valid while it lives.
#[repr(C)]
pub struct Loop {
    _opaque: [u8; 0],
}

/// A waker tokioloop lends to [`TaskVTable::poll`]: calling `wake` queues the task to be
/// polled again in the loop's next turn. Valid only during the poll; `clone` it to keep it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Waker {
    pub data: *const c_void,
    pub vtable: *const WakerVTable,
}

/// Any thread, GIL or not. `wake` and `drop` consume the reference `data` stands for;
/// `wake_by_ref` does not; `clone` returns a new one.
#[repr(C)]
pub struct WakerVTable {
    pub clone: unsafe extern "C" fn(data: *const c_void) -> Waker,
    pub wake: unsafe extern "C" fn(data: *const c_void),
    pub wake_by_ref: unsafe extern "C" fn(data: *const c_void),
    pub drop: unsafe extern "C" fn(data: *const c_void),
}

/// [`TaskVTable::poll`]'s answer.
pub const PENDING: u8 = 0;
/// [`TaskVTable::poll`]'s answer: call `complete` next.
pub const READY: u8 = 1;

/// A future the extension owns and tokioloop polls. tokioloop calls `poll` until it returns
/// [`READY`], then `complete` once, then `drop` once; or only `drop` (the asyncio future was
/// cancelled, the loop closed). All on the loop thread, GIL held, inside the caller's copied
/// context, never while tokioloop holds a lock.
#[repr(C)]
pub struct Task {
    pub data: *mut c_void,
    pub vtable: *const TaskVTable,
}

#[repr(C)]
pub struct TaskVTable {
    /// [`PENDING`] or [`READY`]; a panic inside counts as ready (`complete` then raises it).
    pub poll: unsafe extern "C" fn(data: *mut c_void, waker: *const Waker) -> u8,
    /// The outcome: a new reference to the result, or NULL with a Python exception set.
    pub complete: unsafe extern "C" fn(data: *mut c_void) -> *mut PyObject,
    pub drop: unsafe extern "C" fn(data: *mut c_void),
}

/// A timer in the loop's own timer heap, opaque.
#[repr(C)]
pub struct Timer {
    _opaque: [u8; 0],
}

/// A descriptor registered with the loop's reactor, opaque.
#[repr(C)]
pub struct Fd {
    _opaque: [u8; 0],
}

/// A direction of a descriptor, for the `fd_*` functions.
pub const READ: u8 = 0;
/// A direction of a descriptor, for the `fd_*` functions.
pub const WRITE: u8 = 1;

/// tokioloop's exported functions, minor 0. Loop thread, GIL held, unless said otherwise.
/// A function returning a pointer returns NULL with a Python exception set on failure.
#[repr(C)]
pub struct Api {
    /// `size_of::<Api>()` in the exporting build: fields past it do not exist there.
    pub size: usize,
    /// The exporting build's [`MINOR`].
    pub minor: u32,
    /// The loop behind `obj` if it is a tokioloop loop running on this thread, else NULL (no
    /// exception set).
    pub loop_from_object: unsafe extern "C" fn(obj: *mut PyObject) -> *const Loop,
    /// Starts `task` in a copy of the current context; returns a new reference to the
    /// `asyncio.Future` it completes. Takes ownership of `task` even on failure (it is dropped).
    pub spawn: unsafe extern "C" fn(lp: *const Loop, task: Task) -> *mut PyObject,
    /// The loop's clock (`loop.time()`), in seconds.
    pub time: unsafe extern "C" fn(lp: *const Loop) -> f64,
    /// A timer due at loop time `when`, in the loop's timer heap.
    pub timer_new: unsafe extern "C" fn(lp: *const Loop, when: f64) -> *mut Timer,
    /// 1 once the timer is due, else 0 and `waker` (cloned) is woken when it is.
    pub timer_poll: unsafe extern "C" fn(timer: *mut Timer, waker: *const Waker) -> u8,
    /// Cancels the timer if pending and frees it.
    pub timer_free: unsafe extern "C" fn(timer: *mut Timer),
    /// Registers `fd` (non-blocking, the extension's: it closes it after `fd_free`) with the
    /// loop's reactor; NULL with ValueError if the loop already watches it.
    pub fd_new: unsafe extern "C" fn(lp: *const Loop, fd: core::ffi::c_int) -> *mut Fd,
    /// 1 if `direction` ([`READ`] or [`WRITE`]) is ready, else 0 and `waker` (cloned) is
    /// woken when it is. Readiness stays until `fd_clear`, as tokio's `AsyncFd`'s does.
    pub fd_poll: unsafe extern "C" fn(fd: *mut Fd, direction: u8, waker: *const Waker) -> u8,
    /// A syscall in `direction` answered EAGAIN: forget the readiness. 0: poll again and wait;
    /// 1: the descriptor is still ready (closed or errored), try the syscall again.
    pub fd_clear: unsafe extern "C" fn(fd: *mut Fd, direction: u8) -> u8,
    /// Deregisters `fd` and frees the handle; call before closing the descriptor.
    pub fd_free: unsafe extern "C" fn(fd: *mut Fd),
}

// The Api table is immutable static data: shared between threads safely.
unsafe impl Sync for Api {}
unsafe impl Send for Waker {}
