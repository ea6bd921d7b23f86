//! The few file-system and sendfile syscalls the loop makes on its own thread.
//!
//! asyncio calls `os.sendfile` (loop.sendfile, sock_sendfile) and `os.stat`/`os.unlink`/
//! `os.remove` (Unix servers: the stale socket file before binding, the socket file after
//! closing) on the loop thread. Tools that flag blocking calls in async code (blockbuster)
//! patch those `os` functions and allow-list the stdlib's callers by name; uvloop makes the
//! calls in C. tokioloop's Python layer calls these functions instead, so no patched `os`
//! function is reached. Each raises what its `os` counterpart would: `OSError(errno,
//! strerror[, filename])`, narrowed by Python to the matching subclass.
//!
//! Called from `python/tokioloop/_sock.py` (sendfile steps) and `_net.py`/`_server.py` (Unix
//! socket files). Nothing here touches the loop's state.

use std::ffi::OsStr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

use crate::errors::{last_errno, os_error, strerror};

/// `OSError(errno, strerror, filename)`, as `os.stat` and `os.unlink` raise it.
fn path_error(error: &std::io::Error, filename: &Bound<'_, PyAny>) -> PyErr {
    let errno = error.raw_os_error().unwrap_or(libc::EIO);
    PyOSError::new_err((errno, strerror(errno), filename.clone().unbind()))
}

fn as_path(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path))
}

/// `os.stat(path)` reduced to what Unix servers need: `(st_dev, st_ino, is_socket)`.
/// `path` is `os.fsencode(filename)`; `filename` is what the caller gave (for the error).
#[pyfunction]
pub fn _path_stat(path: &[u8], filename: &Bound<'_, PyAny>) -> PyResult<(u64, u64, bool)> {
    match std::fs::metadata(as_path(path)) {
        Ok(meta) => Ok((meta.dev(), meta.ino(), meta.file_type().is_socket())),
        Err(error) => Err(path_error(&error, filename)),
    }
}

/// `os.unlink(path)`, with the same arguments as [`_path_stat`].
#[pyfunction]
pub fn _path_unlink(path: &[u8], filename: &Bound<'_, PyAny>) -> PyResult<()> {
    std::fs::remove_file(as_path(path)).map_err(|error| path_error(&error, filename))
}

/// True where [`_sendfile`] has a system call behind it.
pub const SENDFILE_AVAILABLE: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
));

/// `os.sendfile(out_fd, in_fd, offset, count)`: send up to `count` bytes of `in_fd` from
/// `offset` to the socket `out_fd`; the number sent (0 at end of file). The GIL is released
/// around the call, as `os.sendfile` does: reading the file may wait for the disk.
#[pyfunction]
pub fn _sendfile(py: Python<'_>, out_fd: RawFd, in_fd: RawFd, offset: i64, count: usize) -> PyResult<usize> {
    match py.detach(|| sendfile_once(out_fd, in_fd, offset, count)) {
        Ok(sent) => Ok(sent),
        Err(errno) => Err(os_error(errno)),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn sendfile_once(out_fd: RawFd, in_fd: RawFd, offset: i64, count: usize) -> Result<usize, i32> {
    let mut offset = libc::off_t::try_from(offset).map_err(|_| libc::EOVERFLOW)?;
    // SAFETY: plain descriptors (a bad one is EBADF) and a valid pointer to our local offset,
    // which the kernel updates instead of the file position. Retried on EINTR, as os.sendfile.
    let sent = crate::io::retry_interrupted(|| unsafe { libc::sendfile(out_fd, in_fd, &mut offset, count) });
    usize::try_from(sent).map_err(|_| last_errno())
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn sendfile_once(out_fd: RawFd, in_fd: RawFd, offset: i64, count: usize) -> Result<usize, i32> {
    let mut length = libc::off_t::try_from(count).map_err(|_| libc::EOVERFLOW)?;
    // SAFETY: plain descriptors (a bad one is EBADF), a valid pointer to our local length
    // (in: how much to send, 0 meaning all; out: how much was sent) and no header/trailer.
    let outcome = unsafe { libc::sendfile(in_fd, out_fd, offset, &mut length, std::ptr::null_mut(), 0) };
    if outcome == 0 {
        return usize::try_from(length).map_err(|_| libc::EIO);
    }
    let errno = last_errno();
    // A would-block or interrupted call may still have sent part: report it, as os.sendfile does.
    if length > 0 && (errno == libc::EAGAIN || errno == libc::EINTR || errno == libc::EBUSY) {
        return usize::try_from(length).map_err(|_| libc::EIO);
    }
    Err(errno)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios"
)))]
fn sendfile_once(_out_fd: RawFd, _in_fd: RawFd, _offset: i64, _count: usize) -> Result<usize, i32> {
    // The Python side checks SENDFILE_AVAILABLE first and falls back to read + send.
    Err(libc::ENOSYS)
}
