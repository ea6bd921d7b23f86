//! A non-blocking socket registered with a tokioloop loop's reactor through the ABI's `fd_*`
//! functions, and the one way native I/O is done on it: try the syscall, and on `WouldBlock`
//! clear the stale readiness and wait for the next edge (tokio `AsyncFd`'s protocol). Owns the
//! socket: deregisters it, then closes it. Only the `net` types use this module.
//!
//! The ABI may only be called on the loop's thread inside one of its tasks, so every entry
//! checks that first: I/O polled anywhere else fails with an error naming the type, and a drop
//! anywhere else leaks the registration (the socket is still closed). A leaked registration
//! keeps the descriptor's number in the loop's registry until the loop closes, so a later socket
//! that reuses the number cannot be watched by that loop: move native sockets out of their task
//! only to drop them back on it.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr;
use std::task::{Context, Poll};

use pyo3::{PyErr, Python};
use tokioloop_ffi as ffi;

use crate::bridge::NativeLoop;
use crate::polling::is_polling;
use crate::waker::lend_as_c;

/// A direction the reactor reports readiness for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    fn code(self) -> u8 {
        match self {
            Direction::Read => ffi::READ,
            Direction::Write => ffi::WRITE,
        }
    }
}

/// How many times one poll retries a syscall that says `WouldBlock` while the reactor insists
/// the direction is ready (tokio keeps closed and errored descriptors ready). Past it the task
/// is woken for the loop's next turn instead, so a disagreement cannot spin inside one turn.
const RETRIES_PER_POLL: usize = 4;

/// `socket`, registered with `native`'s reactor until dropped.
pub(crate) struct Registered<S: AsRawFd> {
    native: NativeLoop,
    /// NULL once freed (or when dropping it off the loop leaked it).
    fd: *mut ffi::Fd,
    socket: S,
}

// Moving it between threads is harmless; using it off its loop's tasks is refused at run time
// (`poll_io` returns an error, `drop` leaks the registration instead of freeing it).
unsafe impl<S: AsRawFd + Send> Send for Registered<S> {}
// Shared references only reach the socket's own `&self` syscalls and the checked ABI calls.
unsafe impl<S: AsRawFd + Sync> Sync for Registered<S> {}

impl<S: AsRawFd> Registered<S> {
    /// Registers `socket` (already non-blocking) with `native`, whose task is being polled here.
    /// On failure the socket is closed and the loop's refusal comes back as an `io::Error`.
    pub(crate) fn new(native: NativeLoop, socket: S, what: &str) -> io::Result<Self> {
        if !is_polling(native.lp) {
            return Err(off_loop_error(what));
        }
        // SAFETY: on the loop's thread inside one of its tasks (checked above), GIL held.
        let fd = unsafe { (native.api.fd_new)(native.lp, socket.as_raw_fd()) };
        if fd.is_null() {
            // SAFETY: as above: the GIL is held; `fd_new` set the exception it failed with.
            let refusal = PyErr::fetch(unsafe { Python::assume_attached() });
            return Err(io::Error::other(format!(
                "{what}: the tokioloop loop refused the socket: {refusal}"
            )));
        }
        Ok(Registered { native, fd, socket })
    }

    /// The loop the socket is registered with.
    pub(crate) fn native(&self) -> NativeLoop {
        self.native
    }

    pub(crate) fn socket(&self) -> &S {
        &self.socket
    }

    /// Runs `syscall` until it answers something other than `WouldBlock` (retrying `EINTR`),
    /// or arranges for `cx`'s waker to be woken when `direction` becomes ready again.
    pub(crate) fn poll_io<R>(
        &self,
        cx: &mut Context<'_>,
        direction: Direction,
        what: &str,
        mut syscall: impl FnMut(&S) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        if !is_polling(self.native.lp) {
            return Poll::Ready(Err(off_loop_error(what)));
        }
        for _ in 0..RETRIES_PER_POLL {
            match retry_interrupted(|| syscall(&self.socket)) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            if !self.clear_then_poll(cx, direction) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Waits until `direction` is ready, with no syscall (a non-blocking connect's end).
    pub(crate) fn poll_ready(
        &self,
        cx: &mut Context<'_>,
        direction: Direction,
        what: &str,
    ) -> Poll<io::Result<()>> {
        if !is_polling(self.native.lp) {
            return Poll::Ready(Err(off_loop_error(what)));
        }
        if self.poll_readiness(cx, direction) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// After a `WouldBlock`: true if the descriptor is still (or again) ready and the syscall
    /// should be tried again; false once the waker is left for the next edge.
    fn clear_then_poll(&self, cx: &mut Context<'_>, direction: Direction) -> bool {
        // SAFETY: a live registration, on its loop's thread inside one of its tasks (checked
        // by the callers).
        let still_ready = unsafe { (self.native.api.fd_clear)(self.fd, direction.code()) };
        still_ready == 1 || self.poll_readiness(cx, direction)
    }

    fn poll_readiness(&self, cx: &mut Context<'_>, direction: Direction) -> bool {
        let (api, fd) = (self.native.api, self.fd);
        // SAFETY: as in `clear_then_poll`; the lent waker is valid during the call.
        let ready = lend_as_c(cx.waker(), |waker| unsafe {
            (api.fd_poll)(fd, direction.code(), waker)
        });
        ready == 1
    }
}

impl<S: AsRawFd> Drop for Registered<S> {
    fn drop(&mut self) {
        let fd = std::mem::replace(&mut self.fd, ptr::null_mut());
        // Off its loop's tasks tokioloop may not be touched: the registration is leaked (see
        // the module's doc). The socket closes when `socket` drops, after this.
        if !fd.is_null() && is_polling(self.native.lp) {
            // SAFETY: ours, freed once, on its loop's thread inside one of its tasks.
            unsafe { (self.native.api.fd_free)(fd) }
        }
    }
}

/// `syscall`'s answer, asked again while a signal interrupts it.
pub(crate) fn retry_interrupted<R>(mut syscall: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        match syscall() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            done => return done,
        }
    }
}

fn off_loop_error(what: &str) -> io::Error {
    io::Error::other(format!(
        "{what}: a native socket was used outside the tokioloop tasks of the loop it was made \
         on (moved to another executor or thread?)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::tests::fake_loop;
    use crate::fake::{CountingWaker, FakeFd, FDS_LIVE, LAST_FD};
    use crate::polling::PollingScope;
    use crate::waker::WakerCache;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    // The tests below count the fake registrations and read the last one made: one at a time.
    static FAKE_FDS: Mutex<()> = Mutex::new(());

    fn nonblocking_pair() -> (UnixStream, UnixStream) {
        let (near, far) = UnixStream::pair().unwrap();
        near.set_nonblocking(true).unwrap();
        (near, far)
    }

    #[test]
    fn a_read_that_would_block_waits_for_the_next_edge_then_reads() {
        let _fds = FAKE_FDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let native = fake_loop(3);
        let (near, mut far) = nonblocking_pair();
        let live = FDS_LIVE.load(Ordering::SeqCst);
        let _polling = PollingScope::enter(native);
        let registered = Registered::new(native, near, "test").unwrap();
        // SAFETY: the registration just made, alive until `registered` drops.
        let fake = unsafe { &*(*LAST_FD.lock().unwrap() as *const FakeFd) };
        let c_waker = CountingWaker::new();
        let mut wakers = WakerCache::default();
        let waker = unsafe { wakers.waker_for(&c_waker.lent()) }.clone();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 8];
        let mut read = |cx: &mut Context<'_>| {
            registered.poll_io(cx, Direction::Read, "test", |mut socket: &UnixStream| {
                socket.read(&mut buf)
            })
        };
        assert!(read(&mut cx).is_pending());
        far.write_all(b"hi").unwrap();
        fake.make_ready(ffi::READ);
        assert_eq!(
            c_waker.counts.wakes.load(Ordering::SeqCst),
            1,
            "the edge woke the task"
        );
        assert!(matches!(read(&mut cx), Poll::Ready(Ok(2))));
        drop(registered);
        assert_eq!(FDS_LIVE.load(Ordering::SeqCst), live, "freed on its loop");
        drop((waker, wakers));
        assert_eq!(c_waker.live_clones(), 0);
    }

    #[test]
    fn off_its_loop_io_fails_and_a_drop_closes_the_socket_but_leaks_the_registration() {
        let _fds = FAKE_FDS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let native = fake_loop(4);
        let (near, mut far) = nonblocking_pair();
        let live = FDS_LIVE.load(Ordering::SeqCst);
        let registered = {
            let _polling = PollingScope::enter(native);
            Registered::new(native, near, "test").unwrap()
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let polled = registered.poll_io(&mut cx, Direction::Write, "test", |_| Ok(()));
        let Poll::Ready(Err(error)) = polled else {
            panic!("I/O off the loop was not refused");
        };
        assert!(error
            .to_string()
            .starts_with("test: a native socket was used outside"));
        drop(registered);
        assert_eq!(
            FDS_LIVE.load(Ordering::SeqCst),
            live + 1,
            "the ABI was not called"
        );
        let mut rest = Vec::new();
        assert_eq!(far.read_to_end(&mut rest).unwrap(), 0, "the socket was closed");
    }

    #[test]
    fn a_registration_outside_a_native_task_is_refused() {
        let (near, _far) = nonblocking_pair();
        let refused = Registered::new(fake_loop(5), near, "test");
        assert!(refused.is_err_and(|error| error.to_string().contains("outside the tokioloop")));
    }
}
