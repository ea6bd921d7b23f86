//! The hot half of `loop.sock_recv` and `loop.sock_sendall`.
//!
//! asyncio tries the syscall first and, if the socket would block, watches the descriptor
//! and retries from a reader or writer callback until the syscall succeeds or fails. In
//! Python that costs an exception per would-block, a closure per wait and a done-callback
//! per completion. Here the tries return `None` instead of raising, and a wait is one
//! [`SockWait`] registered as the fd callback: it retries natively, resolves the future and
//! removes its own watch. Cancellation is the caller's: `python/tokioloop/_sock.py` removes
//! the watch (by handle, so only if still ours) when the awaiting coroutine leaves early.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use pyo3::{intern, PyTraverseError, PyVisit};

use crate::errors::{last_errno, os_error};
use crate::event_loop::LoopCore;
use crate::handles::Handle;
use crate::io::{
    recv_bytes, retry_interrupted, would_block, BufferView, Direction, FdKind, Received, LARGE_READ,
};

/// The context a wait's retries run in. They run no user code (resolving the future
/// schedules its callbacks in their own contexts), so one empty Context serves every wait
/// instead of a copy of the caller's per wait. Handles never nest, so it is never entered twice.
fn neutral_context(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static NEUTRAL: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    NEUTRAL
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("contextvars")?.getattr("Context")?.call0()?.unbind())
        })
        .map(|context| context.bind(py))
}

thread_local! {
    /// Whether this thread's last sock_recv was large: the hint for `recv_bytes`.
    static LAST_READ_LARGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One non-blocking `recv(fd, n)`: the bytes, `None` if it would block, or the OSError.
fn recv_once(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyBytes>>> {
    let expect_large = LAST_READ_LARGE.with(|last| last.get());
    match recv_bytes(py, FdKind::Socket, fd, n, libc::MSG_DONTWAIT, expect_large)? {
        Received::Data(data, got, _) => {
            LAST_READ_LARGE.with(|last| last.set(got >= LARGE_READ));
            Ok(Some(data))
        }
        Received::Failed(errno) if would_block(errno) => Ok(None),
        Received::Failed(errno) => Err(os_error(errno)),
    }
}

/// One non-blocking `send` of `data[start..]`: bytes sent (0 if it would block), or the OSError.
fn send_once(fd: RawFd, data: &Bound<'_, PyAny>, start: usize) -> PyResult<(usize, usize)> {
    let view = BufferView::get(data, pyo3::ffi::PyBUF_SIMPLE)?;
    let len = view.len();
    if start >= len {
        return Ok((0, len));
    }
    // SAFETY: `view` covers len readable bytes; start < len.
    let sent = retry_interrupted(|| unsafe {
        libc::send(
            fd,
            view.as_ptr().add(start).cast(),
            len - start,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    });
    if sent >= 0 {
        return Ok((sent as usize, len));
    }
    let errno = last_errno();
    if would_block(errno) {
        Ok((0, len))
    } else {
        Err(os_error(errno))
    }
}

/// `recv(fd, n)` now: the bytes (b'' at end of stream), or None if the socket would block.
#[pyfunction]
pub fn _sock_recv_now(py: Python<'_>, fd: RawFd, n: isize) -> PyResult<Option<Py<PyBytes>>> {
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    recv_once(py, fd, n as usize)
}

/// `send(fd, data)` now: None if all of it went, else how many bytes did (0: would block).
#[pyfunction]
pub fn _sock_send_now(fd: RawFd, data: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    let (sent, len) = send_once(fd, data, 0)?;
    Ok((sent < len).then_some(sent))
}

enum Operation {
    Recv(usize),
    SendAll { data: Py<PyAny>, position: AtomicUsize },
}

/// A pending sock_recv or sock_sendall: the fd callback that finishes it.
#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct SockWait {
    core: Py<LoopCore>,
    fd: RawFd,
    future: Py<PyAny>,
    operation: Operation,
    /// Our registration, taken when we finish: removal is by identity, so a later watch on
    /// the same fd (asyncio lets one replace another) is left alone.
    handle: Mutex<Option<Py<Handle>>>,
}

impl SockWait {
    fn direction(&self) -> Direction {
        match self.operation {
            Operation::Recv(_) => Direction::Read,
            Operation::SendAll { .. } => Direction::Write,
        }
    }

    fn stop(&self, py: Python<'_>) {
        let handle = self.handle.lock().take();
        if let Some(handle) = handle {
            self.core
                .get()
                .remove_fd_callback(py, self.fd, self.direction(), Some(&handle));
        }
    }

    fn finish(&self, py: Python<'_>, outcome: PyResult<Py<PyAny>>) -> PyResult<()> {
        self.stop(py);
        let future = self.future.bind(py);
        match outcome {
            Ok(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
            Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
        };
        Ok(())
    }

    /// Creates the future, registers the wait and returns (future, handle).
    fn start<'py>(
        slf: &Bound<'py, LoopCore>,
        fd: RawFd,
        operation: Operation,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        slf.get().check_open()?;
        if let Some(transport) = slf.get().fd_transport(py, fd) {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "File descriptor {fd} is used by transport {}",
                transport.bind(py).repr()?
            )));
        }
        let future = slf.call_method0(intern!(py, "create_future"))?;
        let wait = Bound::new(
            py,
            SockWait {
                core: slf.clone().unbind(),
                fd,
                future: future.clone().unbind(),
                operation,
                handle: Mutex::new(None),
            },
        )?;
        let direction = wait.get().direction();
        let callback = wait.clone().into_any();
        let context = neutral_context(py)?.clone();
        let handle = LoopCore::set_fd_callback(
            slf,
            fd,
            direction,
            callback,
            crate::handles::Args::None,
            None,
            Some(context),
        )?;
        *wait.get().handle.lock() = Some(handle.clone_ref(py));
        PyTuple::new(py, [future.into_any(), handle.into_bound(py).into_any()])
    }
}

#[pymethods]
impl SockWait {
    /// The readiness callback: one more try.
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        crate::fault_point!("sock_wait");
        if self
            .future
            .bind(py)
            .call_method0(intern!(py, "done"))?
            .is_truthy()?
        {
            self.stop(py);
            return Ok(());
        }
        match &self.operation {
            Operation::Recv(n) => match recv_once(py, self.fd, *n) {
                Ok(None) => Ok(()),
                Ok(Some(data)) => self.finish(py, Ok(data.into_any())),
                Err(err) => self.finish(py, Err(err)),
            },
            Operation::SendAll { data, position } => {
                let start = position.load(Ordering::Relaxed);
                match send_once(self.fd, data.bind(py), start) {
                    Ok((sent, len)) => {
                        position.store(start + sent, Ordering::Relaxed);
                        if start + sent >= len {
                            self.finish(py, Ok(py.None()))
                        } else {
                            Ok(())
                        }
                    }
                    Err(err) => self.finish(py, Err(err)),
                }
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.core)?;
        visit.call(&self.future)?;
        if let Operation::SendAll { data, .. } = &self.operation {
            visit.call(data)?;
        }
        if let Some(handle) = self.handle.try_lock() {
            if let Some(handle) = handle.as_ref() {
                visit.call(handle)?;
            }
        }
        Ok(())
    }
}

/// Waits for `fd` to be readable, then `recv(n)` into the returned future.
#[pyfunction]
pub fn _sock_recv_wait<'py>(
    r#loop: &Bound<'py, LoopCore>,
    fd: RawFd,
    n: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    SockWait::start(r#loop, fd, Operation::Recv(n))
}

/// Sends `data[start:]` as the socket drains; the returned future resolves with None.
#[pyfunction]
pub fn _sock_sendall_wait<'py>(
    r#loop: &Bound<'py, LoopCore>,
    fd: RawFd,
    data: Bound<'py, PyAny>,
    start: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    SockWait::start(
        r#loop,
        fd,
        Operation::SendAll {
            data: data.unbind(),
            position: AtomicUsize::new(start),
        },
    )
}
