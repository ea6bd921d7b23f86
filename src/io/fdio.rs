//! The read and write syscalls of a stream descriptor, by kind.
//!
//! Sockets move bytes with `recv`/`send`/`sendmsg` (sends with `MSG_NOSIGNAL`, so a peer that
//! has gone away is an `EPIPE`, never a signal); pipes, FIFOs, ptys and character devices
//! with `read`/`write`/`writev` (Python ignores SIGPIPE, so a broken pipe is `EPIPE` there
//! too). The stream transport and the shared receive path (`io::recv`) pick the calls by the
//! kind found once, when the descriptor is taken over.
//!
//! Every call here, and every other non-blocking read or write the loop makes, goes through
//! [`retry_interrupted`]: an `EINTR` is retried at once, as CPython's socket and os calls do
//! (PEP 475), never taken for "not ready" (the reactor is edge-driven: a descriptor that is
//! already ready sends no new edge, so waiting for one would hang).

use std::os::fd::RawFd;

/// Runs `call` (a syscall returning -1 and setting errno on failure) again for as long as it
/// fails with `EINTR`.
#[inline]
pub fn retry_interrupted(mut call: impl FnMut() -> isize) -> isize {
    loop {
        let outcome = call();
        if outcome >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return outcome;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FdKind {
    Socket,
    /// Anything else a stream can run over: pipe, FIFO, pty, character device.
    Pipe,
}

impl FdKind {
    /// The kind of `fd`, by `fstat`; a descriptor `fstat` cannot look at counts as a pipe
    /// (its first read or write then reports the error).
    pub fn of(fd: RawFd) -> FdKind {
        let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `stat` on success; it is read only then.
        let is_socket = unsafe {
            libc::fstat(fd, stat.as_mut_ptr()) == 0
                && (stat.assume_init().st_mode & libc::S_IFMT) == libc::S_IFSOCK
        };
        if is_socket {
            FdKind::Socket
        } else {
            FdKind::Pipe
        }
    }

    /// One read of up to `n` bytes into `buffer` (`flags` apply to sockets only).
    ///
    /// # Safety
    /// `buffer` must be valid for `n` writable bytes.
    pub unsafe fn read(self, fd: RawFd, buffer: *mut u8, n: usize, flags: i32) -> isize {
        retry_interrupted(|| match self {
            FdKind::Socket => unsafe { libc::recv(fd, buffer.cast(), n, flags) },
            FdKind::Pipe => unsafe { libc::read(fd, buffer.cast(), n) },
        })
    }

    /// One write of up to `n` bytes from `data`.
    ///
    /// # Safety
    /// `data` must be valid for `n` readable bytes.
    pub unsafe fn write(self, fd: RawFd, data: *const u8, n: usize) -> isize {
        retry_interrupted(|| match self {
            FdKind::Socket => unsafe { libc::send(fd, data.cast(), n, libc::MSG_NOSIGNAL) },
            FdKind::Pipe => unsafe { libc::write(fd, data.cast(), n) },
        })
    }

    /// One gathered write of the slices in `slices`.
    ///
    /// # Safety
    /// Every slice must point to readable memory of its length for the duration of the call.
    pub unsafe fn write_vectored(self, fd: RawFd, slices: &mut [libc::iovec]) -> isize {
        match self {
            FdKind::Socket => {
                // SAFETY: a zeroed msghdr with only the iovec array set is a plain stream send.
                let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
                message.msg_iov = slices.as_mut_ptr();
                message.msg_iovlen = slices.len() as _;
                retry_interrupted(|| unsafe { libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL) })
            }
            FdKind::Pipe => retry_interrupted(|| unsafe {
                libc::writev(fd, slices.as_ptr(), slices.len() as libc::c_int)
            }),
        }
    }
}
