//! fd readiness on `LoopCore`: `add_reader`/`add_writer` and their removal with a selector's
//! semantics, the busy turn's look at I/O and the per-turn dispatch of the io registry into the
//! ready queue. The registry itself is `io`'s; nothing here names a transport.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::runtime::Runtime;

use crate::handles::{new_untracked, Args, Callback, Handle};
use crate::io::{Direction, Target};

use super::{LoopCore, DISPATCHED};

impl LoopCore {
    /// The open native transport using `fd`, as Python sees it (asyncio refuses add_reader and
    /// sock_* on such a descriptor).
    pub(crate) fn fd_transport(&self, py: Python<'_>, fd: RawFd) -> Option<Py<PyAny>> {
        let engine = self.io.registry().owner(py, fd)?;
        if engine.is_closing(py) {
            return None;
        }
        engine.python_transport(py)
    }

    /// True if a busy turn must look at I/O: an fd other than the self-pipe is watched, or a
    /// signal arrived since the last look.
    pub(super) fn io_to_look_at(&self) -> bool {
        self.signal_noted.swap(false, Ordering::Relaxed)
            || self
                .io
                .registry()
                .watches_other_than(self.self_pipe_fd.load(Ordering::Relaxed))
    }

    /// The busy turn's look at I/O: a zero-timeout park, skipped when the kernel says the
    /// reactor has nothing waiting.
    pub(super) fn look_at_io(&self, runtime: &Runtime) {
        if self.reactor_fd.is_none_or(crate::io::has_events) {
            runtime.block_on(tokio::task::yield_now());
        }
    }

    pub(super) fn dispatch_io(&self, py: Python<'_>) {
        if !self.io_pending.load(Ordering::Acquire) {
            return;
        }
        DISPATCHED.with(|cell| {
            let (fired, retries) = &mut *cell.borrow_mut();
            self.io.registry().dispatch(py, fired, retries);
            if !fired.is_empty() || !retries.is_empty() {
                let mut state = self.state.lock();
                state.ready.extend(fired.drain(..));
                if !retries.is_empty() {
                    state.io_retries.append(retries);
                }
            }
        });
    }

    pub(crate) fn set_fd_callback(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        direction: Direction,
        callback: Bound<'_, PyAny>,
        args: Args,
        fileobj: Option<&Bound<'_, PyAny>>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let handle = new_untracked(
            py,
            Handle::new_persistent(Callback::new(py, callback, args, context, None)?),
        )?;
        let runtime = this.runtime()?;
        let _context = runtime.enter();
        let outcome = this
            .io
            .registry()
            .set(py, fd, direction, handle.clone_ref(py), fileobj);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => {
                drop(handle.get().callback.release());
                if error.raw_os_error() == Some(libc::EBADF) {
                    // As a selector's failed modify does: the closed fd's registration goes.
                    this._forget_fd_callbacks(fd);
                }
                return Err(crate::errors::from_io(error));
            }
        };
        match outcome {
            Ok(Some(old)) => old.get().cancel_and_release(),
            Ok(None) => {}
            Err(engine) => {
                drop(handle.get().callback.release());
                let transport = engine
                    .python_transport(py)
                    .unwrap_or_else(|| engine.object().clone_ref(py));
                return Err(PyRuntimeError::new_err(format!(
                    "File descriptor {fd} is used by transport {}",
                    transport.bind(py).repr()?
                )));
            }
        }
        Ok(handle)
    }

    pub(crate) fn remove_fd_callback(
        &self,
        _py: Python<'_>,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
    ) -> bool {
        self.remove_fd_callback_as(fd, direction, expected, false)
            .unwrap_or(false)
    }

    /// `as_selector`: see `Registry::remove`; the error is the OSError a selector raises,
    /// and the registration is dropped as the selector drops it.
    pub(super) fn remove_fd_callback_as(
        &self,
        fd: RawFd,
        direction: Direction,
        expected: Option<&Py<Handle>>,
        as_selector: bool,
    ) -> PyResult<bool> {
        if self.closed.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let removed = self.io.registry().remove(fd, direction, expected, as_selector);
        let (old, fileobj) = match removed {
            Ok(removed) => removed,
            Err(error) => {
                self._forget_fd_callbacks(fd);
                return Err(crate::errors::from_io(error));
            }
        };
        drop(fileobj);
        match old {
            Some(handle) => {
                handle.get().cancel_and_release();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `_fileobj_registration`: how a socket object closed since it was registered is found.
    pub(super) fn fileobj_registration(&self, fileobj: &Bound<'_, PyAny>) -> Option<(RawFd, bool, bool)> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.io.registry().find_fileobj(fileobj)
    }

    /// Drops `fd`'s callbacks (cancelling them) and its registration, as a selector does.
    pub(super) fn forget_fd_callbacks(&self, fd: RawFd) {
        let targets = self.io.registry().forget_callbacks(fd);
        for target in targets {
            if let Target::Callback(handle) = &target {
                handle.get().cancel_and_release();
            }
            drop(target);
        }
    }

    /// The public remove_reader/remove_writer (see `_remove_watch_as_selector`).
    pub(super) fn remove_watch_as_selector(&self, fd: RawFd, reading: bool) -> PyResult<bool> {
        let direction = if reading {
            Direction::Read
        } else {
            Direction::Write
        };
        self.remove_fd_callback_as(fd, direction, None, true)
    }

    /// The telemetry counters (`telemetry::LoopStats`) with the queues' depths now.
    pub(super) fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let metrics = self.stats.snapshot(py)?;
        for (key, value) in self.native_counts(py)?.iter() {
            metrics.set_item(key, value)?;
        }
        metrics.set_item("dns_in_flight", self.dns.in_flight())?;
        Ok(metrics)
    }

    /// Pending work by kind, for leak checks.
    pub(super) fn native_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (ready, timers) = {
            let state = self.state.lock();
            (state.ready.len() + state.io_retries.len(), state.timers.live())
        };
        let (readers, writers) = self.io.registry().counts();
        let counts = PyDict::new(py);
        counts.set_item("ready", ready)?;
        counts.set_item("timers", timers)?;
        counts.set_item("readers", readers)?;
        counts.set_item("writers", writers)?;
        Ok(counts)
    }
}
