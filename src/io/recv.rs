//! One `recv` into an exact-size `bytes`: the read shared by transports and sock_recv.
//!
//! Small reads go into a reused per-thread buffer and are copied out: one allocation of
//! the right size, no waste. A large read would pay a copy as big as the data, so when the
//! caller expects one (the previous read was large) it goes straight into a fresh `bytes`
//! of the full size, which is then shrunk in place — glibc's realloc trims the block
//! without copying. The hint is only a guess; both paths give the same bytes.

use std::cell::RefCell;
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::fdio::FdKind;
use crate::errors::last_errno;

/// The per-thread buffer's size: asyncio's `max_size` for one socket read.
pub const BUFFER_SIZE: usize = 256 * 1024;
/// A read at least this big suggests the next one will be too (see the module doc).
pub const LARGE_READ: usize = 16 * 1024;
/// The direct path's allocation cap: under glibc's initial mmap threshold (128 KiB), so the
/// block comes from the heap and shrinks in place. A bigger one would be mmap'd, and
/// shrinking it copies and unmaps — paying page faults on every read.
const DIRECT_MAX: usize = 112 * 1024;

unsafe extern "C" {
    /// CPython's in-place resize of a fresh bytes object (not in pyo3-ffi; exported by every
    /// non-limited-API CPython, which this module requires anyway).
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, size: ffi::Py_ssize_t) -> std::os::raw::c_int;
}

thread_local! {
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BUFFER_SIZE].into_boxed_slice());
}

pub enum Received {
    /// The bytes read (empty at end of stream), their count, and whether the read filled
    /// the space it was given (then more may be waiting: the socket is not known drained).
    Data(Py<PyBytes>, usize, bool),
    /// recv failed with this errno (EAGAIN included).
    Failed(i32),
}

/// `recv(fd, n)` into the per-thread buffer, then `consume` the bytes read (empty at end of
/// stream) while the buffer is borrowed: `consume` must not run Python code that could
/// read from a socket (it may copy the bytes into another object). Returns the count and
/// what `consume` returned, or the errno.
pub fn recv_with<R>(
    kind: FdKind,
    fd: RawFd,
    n: usize,
    consume: impl FnOnce(&[u8]) -> R,
) -> Result<(usize, R), i32> {
    BUFFER.with(|cell| {
        let mut buffer = cell.borrow_mut();
        let n = n.min(BUFFER_SIZE);
        // SAFETY: the buffer has BUFFER_SIZE >= n writable bytes.
        let got = unsafe { kind.read(fd, buffer.as_mut_ptr(), n, 0) };
        if got < 0 {
            return Err(last_errno());
        }
        let got = got as usize;
        Ok((got, consume(&buffer[..got])))
    })
}

/// `recvfrom(fd, n)` into the per-thread buffer, then `consume` the datagram and its sender's
/// address (zeroed storage and its length, as the kernel set it) while the buffer is borrowed:
/// `consume` must not run Python code that could read from a socket. Returns what `consume`
/// returned, or the errno.
pub fn recvfrom_with<R>(
    fd: RawFd,
    n: usize,
    consume: impl FnOnce(&[u8], &libc::sockaddr_storage, libc::socklen_t) -> R,
) -> Result<R, i32> {
    BUFFER.with(|cell| {
        let mut buffer = cell.borrow_mut();
        let n = n.min(BUFFER_SIZE);
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: the buffer has BUFFER_SIZE >= n writable bytes; storage and len are valid.
        let got = super::retry_interrupted(|| unsafe {
            libc::recvfrom(
                fd,
                buffer.as_mut_ptr().cast(),
                n,
                0,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        });
        if got < 0 {
            return Err(last_errno());
        }
        Ok(consume(&buffer[..got as usize], &storage, len))
    })
}

/// One read of up to `n` bytes (`recv(fd, n, flags)` on a socket) into a new exact-size
/// bytes object.
pub fn recv_bytes(
    py: Python<'_>,
    kind: FdKind,
    fd: RawFd,
    n: usize,
    flags: i32,
    expect_large: bool,
) -> PyResult<Received> {
    if n <= BUFFER_SIZE && (!expect_large || n <= LARGE_READ) {
        return Ok(BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            // SAFETY: the buffer has BUFFER_SIZE >= n writable bytes.
            let got = unsafe { kind.read(fd, buffer.as_mut_ptr(), n, flags) };
            if got < 0 {
                Received::Failed(last_errno())
            } else {
                let got = got as usize;
                Received::Data(PyBytes::new(py, &buffer[..got]).unbind(), got, got == n)
            }
        }));
    }
    // SAFETY: a new, uninitialised bytes object of n bytes that only we reference; recv
    // fills a prefix, and _PyBytes_Resize (allowed on a refcount-1 bytes) cuts it to that.
    // On failure the object is released (Resize does so itself and sets an exception).
    let n = n.min(DIRECT_MAX);
    unsafe {
        let mut object = ffi::PyBytes_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t);
        if object.is_null() {
            return Err(PyErr::fetch(py));
        }
        let got = kind.read(fd, ffi::PyBytes_AsString(object).cast(), n, flags);
        if got < 0 {
            let errno = last_errno();
            ffi::Py_DECREF(object);
            return Ok(Received::Failed(errno));
        }
        let got = got as usize;
        if got < n && _PyBytes_Resize(&mut object, got as ffi::Py_ssize_t) < 0 {
            return Err(PyErr::fetch(py));
        }
        let bytes = Bound::from_owned_ptr(py, object).cast_into_unchecked::<PyBytes>();
        Ok(Received::Data(bytes.unbind(), got, got == n))
    }
}
