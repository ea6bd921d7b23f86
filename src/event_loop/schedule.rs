//! Scheduling on `LoopCore`: `call_soon` (with `fastcall`'s entry), `call_soon_threadsafe`,
//! `call_later`/`call_at`, tasks and their factory, debug mode's checks at scheduling, and the
//! clock a patched `loop.time` replaces. Everything here only queues: the turn runs.

use std::sync::atomic::Ordering;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyString, PyTuple};
use pyo3::{ffi, intern};

use crate::clock;
use crate::handles::{new_untracked, Args, Callback, Handle, TimerHandle};

use super::lifecycle::current_thread_ident;
use super::ready::Ready;
use super::{tasks, threadsafe_handle_class, LoopCore};

impl LoopCore {
    /// asyncio's debug-mode guard against calling non-threadsafe methods from another thread.
    pub(super) fn check_thread(&self) -> PyResult<()> {
        let owner = self.thread_ident.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_ident() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    /// Debug-mode checks and the creation stack, as asyncio records them.
    #[inline(always)]
    pub(super) fn debug_prologue(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        if !slf.get().debug() {
            return Ok(None);
        }
        Self::debug_checks(slf, callback, method, check_thread)
    }

    #[cold]
    pub(super) fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        let this = slf.get();
        if check_thread {
            this.check_thread()?;
        }
        slf.call_method1(intern!(slf.py(), "_check_callback"), (callback, method))?;
        Ok(Some(
            slf.call_method0(intern!(slf.py(), "_extract_stack"))?.unbind(),
        ))
    }

    /// The loop's clock: `clock::now()`, or the `time` patched on the instance.
    #[inline]
    pub(super) fn now(&self, py: Python<'_>) -> PyResult<f64> {
        if !self.time_overridden.load(Ordering::Relaxed) {
            return Ok(clock::now());
        }
        self.patched_now(py)
    }

    #[cold]
    pub(super) fn patched_now(&self, py: Python<'_>) -> PyResult<f64> {
        let patched = self.time_override.lock().as_ref().map(|f| f.clone_ref(py));
        match patched {
            Some(time) => time.bind(py).call0()?.extract(),
            None => Ok(clock::now()),
        }
    }

    pub(super) fn set_time_override(&self, time: Option<Py<PyAny>>) {
        self.time_overridden.store(time.is_some(), Ordering::Relaxed);
        let previous = std::mem::replace(&mut *self.time_override.lock(), time);
        drop(previous);
    }

    /// The turn's reading of the clock when `time` is patched (None: the native clock).
    pub(super) fn patched_reading(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        if !self.time_overridden.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.patched_now(py).map(Some)
    }

    pub(super) fn push_ready(&self, item: Ready) {
        self.state.lock().ready.push_back(item);
    }

    pub(super) fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        when_object: Option<Py<PyAny>>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        let traceback = Self::debug_prologue(slf, &callback, "call_at", true)?;
        let counter = this.timer_cancel_counter.clone();
        let callback = Callback::new(py, callback, args, context, traceback)?;
        let handle = new_untracked(py, TimerHandle::new(callback, when, when_object, counter))?;
        this.state.lock().timers.push(when, handle.clone_ref(py));
        Ok(handle)
    }

    pub(super) fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        Self::schedule_ready(slf, callback, args, context, false)
    }

    /// `schedule_soon` for the fast entry, which returns any object.
    #[inline]
    pub(super) fn schedule_soon_any(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        crate::fault_point!("call_soon");
        Ok(Self::schedule_ready(slf, callback, args, context, false)?.into_any())
    }

    /// `call_soon_threadsafe`. Before 3.14 a native handle; from 3.14 asyncio's
    /// `events._ThreadSafeHandle` itself (gh-128340: its lock makes `cancel()` and
    /// `cancelled()` from another thread wait while the callback runs, and callers check
    /// `isinstance` against it).
    pub(super) fn schedule_threadsafe(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        crate::fault_point!("call_soon_threadsafe");
        let py = slf.py();
        let Some(class) = threadsafe_handle_class(py)? else {
            return Ok(Self::schedule_ready(slf, callback, args, context, true)?.into_any());
        };
        let this = slf.get();
        this.check_open()?;
        if this.debug() {
            Self::debug_checks(slf, &callback, "call_soon_threadsafe", false)?;
        }
        let handle = class.call1((callback, args.to_tuple(py)?, slf, context))?;
        // Handle.__init__ records the stack from its caller, `_ThreadSafeHandle.__init__`; no
        // frame of ours is on it, so that one is all to drop.
        tasks::drop_own_frame(&handle, this.debug())?;
        this.push_ready(Ready::Locked(handle.clone().unbind()));
        this.stats.threadsafe_call();
        this.wake.notify();
        Ok(handle.unbind())
    }

    /// Queues a new handle for the next turn; from another thread, also wakes a parked loop.
    #[inline]
    pub(super) fn schedule_ready(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Args,
        context: Option<Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        let method = if threadsafe {
            "call_soon_threadsafe"
        } else {
            "call_soon"
        };
        let traceback = Self::debug_prologue(slf, &callback, method, !threadsafe)?;
        let callback = Callback::new(py, callback, args, context, traceback)?;
        let handle = match this.pool.take(py) {
            Some(handle) => {
                handle.get().refill(callback);
                handle
            }
            None => new_untracked(py, Handle::new(callback))?,
        };
        // A pooled handle's old stamp must not survive: written either way.
        handle
            .get()
            .set_queued_at(if this.stats.timing() { clock::now() } else { 0.0 });
        this.push_ready(Ready::Soon(handle.clone_ref(py)));
        if threadsafe {
            this.stats.threadsafe_call();
            this.wake.notify();
        }
        Ok(handle)
    }

    /// `call_later`: a timer `delay` seconds from now on the loop's clock.
    #[inline]
    pub(super) fn schedule_later(
        slf: &Bound<'_, Self>,
        delay: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let now = slf.get().now(slf.py())?;
        let when = if delay.is_exact_instance_of::<PyFloat>() || delay.is_exact_instance_of::<PyInt>() {
            now + delay.extract::<f64>()?
        } else {
            // asyncio computes `self.time() + delay`: whatever that raises or gives, as there
            // (a str delay is "unsupported operand type(s) for +", a Decimal one too).
            PyFloat::new(slf.py(), now).add(&delay)?.extract::<f64>()?
        };
        Self::schedule_timer(slf, when, None, callback, Args::from_tuple(args), context)
    }

    /// `call_at`: a timer at `when` (kept as given, for the handle's `when()`).
    #[inline]
    pub(super) fn schedule_at(
        slf: &Bound<'_, Self>,
        when: Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when_value: f64 = when.extract()?;
        Self::schedule_timer(
            slf,
            when_value,
            Some(when.unbind()),
            callback,
            Args::from_tuple(args),
            context,
        )
    }

    /// `create_task`: through the task factory if one is set.
    pub(super) fn new_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        this.check_open()?;
        let factory = this
            .task_factory
            .lock()
            .as_ref()
            .map(|f| f.bind(slf.py()).clone());
        tasks::new_task(slf.as_any(), factory, coro, kwargs, this.debug())
    }

    /// `set_task_factory`: a callable or None.
    pub(super) fn replace_task_factory(&self, factory: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let factory = factory.filter(|f| !f.is_none());
        if let Some(f) = &factory {
            if !f.is_callable() {
                return Err(PyTypeError::new_err("task factory must be a callable or None"));
            }
        }
        let previous = std::mem::replace(&mut *self.task_factory.lock(), factory.map(Bound::unbind));
        drop(previous);
        Ok(())
    }

    /// `__setattr__`: a `time` set on the instance becomes the timers' clock too.
    pub(super) fn set_attribute(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyString>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        // SAFETY: live objects; the generic setter handles the subclass's instance dict.
        if unsafe { ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), value.as_ptr()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if name.to_str()? == "time" {
            slf.get().set_time_override(Some(value.clone().unbind()));
        }
        Ok(())
    }

    /// `__delattr__`: deleting `time` restores the native clock.
    pub(super) fn delete_attribute(slf: &Bound<'_, Self>, name: &Bound<'_, PyString>) -> PyResult<()> {
        // SAFETY: as above; a NULL value deletes.
        if unsafe { ffi::PyObject_GenericSetAttr(slf.as_ptr(), name.as_ptr(), std::ptr::null_mut()) } < 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        if name.to_str()? == "time" {
            slf.get().set_time_override(None);
        }
        Ok(())
    }
}
