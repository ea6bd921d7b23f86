//! `TlsLayer`: the per-record half of tokioloop's TLS protocol.
//!
//! A TLS connection is the native socket transport carrying ciphertext, with a TLS protocol
//! stacked on it that drives CPython's own `ssl.SSLObject` over two `ssl.MemoryBIO`s and
//! offers the application a transport of its own. The protocol is the Python class
//! `tokioloop._tls.SSLLayer`, a subclass of this one: it keeps everything that happens once
//! per connection (handshake, shutdown, timeouts, aborts, error reports, extra info), and
//! decides when to move the state machine (asyncio's `SSLProtocolState`), whose states and
//! allowed steps are [`TlsState`] (`state.rs`). What happens per record lives here:
//!
//! * ciphertext in: the TLS layer plugs itself into the stream engine (`transports::stream`) as
//!   its `ReceiveSink` when bound, and gets each read straight from the receive buffer
//!   ([`TlsLayer::take_ciphertext`]), with no `get_buffer`/`buffer_updated` round trip;
//!   other lower transports (TLS over TLS) use the `BufferedProtocol` methods;
//! * the read loop: `SSLObject.read` into a per-thread buffer (or into the application's
//!   own buffer for a `BufferedProtocol`), one `data_received` per batch;
//! * plaintext out: the application transport's `write` is [`TlsLayer::_app_write`],
//!   which encrypts at once when nothing is queued and hands the records to the socket
//!   transport's native `write`; a backlog holds what OpenSSL could not take yet;
//! * both flow-control layers' threshold checks (the Python class is called only when a
//!   threshold is crossed).
//!
//! The calls into OpenSSL go to the C object behind the `SSLObject` (its `_sslobj`), so no
//! Python frame runs between a socket read and `data_received`, or between `write()` and
//! the socket send. The lock is never held while Python code runs.
//!
//! Python owner: `tokioloop._seam.TlsLayerOwner`, the methods the subclass `SSLLayer` provides
//! and this layer calls on itself. The state machine is `state.rs`, the read side `read.rs`,
//! the write side `write.rs`.

use std::collections::VecDeque;

use parking_lot::Mutex;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString, PyTuple, PyType};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use crate::io::BufferView;
use crate::transports::stream::{ReceiveSink, StreamEngine};
mod read;
mod state;
mod write;

use crate::transports::limits::{self, TLS_INCOMING_HIGH_WATER, TLS_OUTGOING_HIGH_WATER};
use read::PLAINTEXT_BATCH;
use state::{TlsState, DO_HANDSHAKE, FLUSHING, SHUTDOWN, UNWRAPPED, WRAPPED};

/// `ssl.SSLWantReadError` and `ssl.SSLSyscallError`: asyncio's "needs more input" errors.
fn again_errors(py: Python<'_>) -> PyResult<&(Py<PyType>, Py<PyType>)> {
    static AGAIN: PyOnceLock<(Py<PyType>, Py<PyType>)> = PyOnceLock::new();
    AGAIN.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        Ok::<_, PyErr>((
            ssl.getattr("SSLWantReadError")?.cast_into::<PyType>()?.unbind(),
            ssl.getattr("SSLSyscallError")?.cast_into::<PyType>()?.unbind(),
        ))
    })
}

fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let (want_read, syscall) = again_errors(py)?;
    Ok(err.is_instance(py, want_read.bind(py)) || err.is_instance(py, syscall.bind(py)))
}

/// A memoryview over `len` bytes at `ptr`, writable or not; the caller keeps the memory
/// alive and unmoved for as long as the view is used (only for the duration of one call).
fn memory_view<'py>(
    py: Python<'py>,
    ptr: *mut u8,
    len: usize,
    writable: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let flags = if writable {
        ffi::PyBUF_WRITE
    } else {
        ffi::PyBUF_READ
    };
    // SAFETY: `ptr` points to `len` bytes the caller keeps valid; a NULL return has set an
    // exception.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyMemoryView_FromMemory(ptr.cast(), len as ffi::Py_ssize_t, flags),
        )
    }
}

fn pending(object: &Bound<'_, PyAny>) -> PyResult<usize> {
    object.getattr(intern!(object.py(), "pending"))?.extract()
}

/// Whether another `read` could return plaintext: ciphertext is waiting in the incoming BIO,
/// or OpenSSL holds decrypted bytes. Asking is far cheaper than a `read` that raises
/// `SSLWantReadError` (building that exception costs about as much as the read itself).
fn more_to_read(sslobj: &Bound<'_, PyAny>, incoming: &Bound<'_, PyAny>) -> PyResult<bool> {
    if pending(incoming)? > 0 {
        return Ok(true);
    }
    Ok(sslobj
        .call_method0(intern!(sslobj.py(), "pending"))?
        .extract::<usize>()?
        > 0)
}

/// `object.name(*args)`, its result dropped.
fn call<'py>(
    object: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<()> {
    object.call_method1(name, args).map(drop)
}

struct Inner {
    state: TlsState,
    event_loop: Option<Py<PyAny>>,
    /// The C object behind the `SSLObject` (`_ssl._SSLSocket`): read, write, pending.
    sslobj: Option<Py<PyAny>>,
    incoming: Option<Py<PyAny>>,
    outgoing: Option<Py<PyAny>>,
    app_protocol: Option<Py<PyAny>>,
    /// The application protocol is a `BufferedProtocol`: plaintext goes into its buffer.
    app_buffered: bool,
    /// The transport under this layer, and its native engine when it is a socket transport.
    transport: Option<Py<PyAny>>,
    lower: Option<Py<StreamEngine>>,
    /// Plaintext OpenSSL has not taken yet (bytes; bytes of the first already taken).
    backlog: VecDeque<Py<PyBytes>>,
    backlog_head: usize,
    backlog_size: usize,
    app_reading_paused: bool,
    app_writing_paused: bool,
    ssl_reading_paused: bool,
    ssl_writing_paused: bool,
    incoming_high: usize,
    incoming_low: usize,
    outgoing_high: usize,
    outgoing_low: usize,
    conn_lost: u32,
    /// `get_buffer()`'s buffer, for a lower transport that is not a native socket one.
    foreign_buffer: Option<Box<[u8]>>,
}

/// Base class of `tokioloop._tls.SSLLayer`; see the module documentation.
#[pyclass(subclass, frozen, module = "tokioloop._tokioloop")]
pub struct TlsLayer {
    inner: Mutex<Inner>,
}

/// What a read pass needs, cloned out of the lock.
struct ReadPass {
    sslobj: Py<PyAny>,
    incoming: Py<PyAny>,
    app: Py<PyAny>,
    buffered: bool,
}

impl TlsLayer {
    fn state(&self) -> TlsState {
        self.inner.lock().state
    }

    fn parts(&self, py: Python<'_>) -> Option<ReadPass> {
        let inner = self.inner.lock();
        Some(ReadPass {
            sslobj: inner.sslobj.as_ref()?.clone_ref(py),
            incoming: inner.incoming.as_ref()?.clone_ref(py),
            app: inner.app_protocol.as_ref()?.clone_ref(py),
            buffered: inner.app_buffered,
        })
    }

    /// Routes an `Exception` to the Python class's `_fatal_error`; other errors
    /// (`KeyboardInterrupt`, `SystemExit`, `CancelledError`) propagate, as in asyncio.
    fn fatal_unless_base(slf: &Bound<'_, Self>, outcome: PyResult<()>, message: &str) -> PyResult<()> {
        let py = slf.py();
        match outcome {
            Err(err) if err.is_instance_of::<PyException>(py) => call(
                slf.as_any(),
                intern!(py, "_fatal_error"),
                (err.into_value(py), message),
            ),
            other => other,
        }
    }
}

#[pymethods]
impl TlsLayer {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        TlsLayer {
            inner: Mutex::new(Inner {
                state: UNWRAPPED,
                event_loop: None,
                sslobj: None,
                incoming: None,
                outgoing: None,
                app_protocol: None,
                app_buffered: false,
                transport: None,
                lower: None,
                backlog: VecDeque::new(),
                backlog_head: 0,
                backlog_size: 0,
                app_reading_paused: false,
                app_writing_paused: false,
                ssl_reading_paused: false,
                ssl_writing_paused: false,
                incoming_high: TLS_INCOMING_HIGH_WATER,
                incoming_low: limits::low_water_for(TLS_INCOMING_HIGH_WATER),
                outgoing_high: TLS_OUTGOING_HIGH_WATER,
                outgoing_low: limits::low_water_for(TLS_OUTGOING_HIGH_WATER),
                conn_lost: 0,
                foreign_buffer: None,
            }),
        }
    }

    /// Binds the engine: the loop, the C object behind the SSLObject and the two BIOs.
    fn _bind_engine(
        &self,
        event_loop: Py<PyAny>,
        sslobj: Py<PyAny>,
        incoming: Py<PyAny>,
        outgoing: Py<PyAny>,
    ) {
        let mut inner = self.inner.lock();
        inner.event_loop = Some(event_loop);
        inner.sslobj = Some(sslobj);
        inner.incoming = Some(incoming);
        inner.outgoing = Some(outgoing);
    }

    /// The lower transport (None once the connection is lost). A native socket transport's
    /// engine is kept too, so records go to its `write` without a method lookup, and this
    /// layer plugs into its receive path (see `stream::ReceiveSink`): ciphertext then goes
    /// from the socket straight into the incoming BIO.
    fn _bind_transport(slf: &Bound<'_, Self>, transport: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let lower = match &transport {
            Some(t) => match t.getattr_opt(intern!(t.py(), "_engine"))? {
                Some(core) => core.cast_into::<StreamEngine>().ok().map(Bound::unbind),
                None => None,
            },
            None => None,
        };
        let py = slf.py();
        let plugged = lower.as_ref().map(|lower| lower.clone_ref(py));
        let (old_transport, old_lower) = {
            let mut inner = slf.get().inner.lock();
            (
                std::mem::replace(&mut inner.transport, transport.map(Bound::unbind)),
                std::mem::replace(&mut inner.lower, lower),
            )
        };
        if let Some(old_lower) = old_lower.as_ref() {
            old_lower.get().plug_sink::<TlsLayer>(None, slf.as_any());
        }
        if let Some(lower) = plugged {
            lower.get().plug_sink(Some(slf.clone().unbind()), slf.as_any());
        }
        drop((old_transport, old_lower));
        Ok(())
    }

    fn _bind_app_protocol(&self, protocol: Option<Py<PyAny>>, buffered: bool) {
        let old = {
            let mut inner = self.inner.lock();
            inner.app_buffered = buffered;
            std::mem::replace(&mut inner.app_protocol, protocol)
        };
        drop(old);
    }

    #[getter]
    fn _app_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().app_protocol.as_ref().map(|p| p.clone_ref(py))
    }

    #[getter]
    fn _transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().transport.as_ref().map(|t| t.clone_ref(py))
    }

    /// The application transport's `write`: asyncio's type check and `_write_appdata`.
    fn _app_write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        crate::fault_point!("tls_app_write");
        if !limits::is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data: expecting a bytes-like instance, got {}",
                data.get_type().name()?
            )));
        }
        Self::write_appdata(slf, data)
    }

    /// One item of `writelines`: as `write`, without the type check (asyncio has none there).
    fn _app_write_unchecked(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        Self::write_appdata(slf, data)
    }

    /// Queues `data` without writing it (asyncio's test hook `_test__append_write_backlog`,
    /// which CPython's TLS tests use to fill the backlog).
    fn _append_backlog(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let view = BufferView::get(data, ffi::PyBUF_SIMPLE)?;
        self.queue(py, data, &view, 0)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_read(slf)
    }

    fn _do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::do_write(slf)
    }

    fn _process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::process_outgoing(slf)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::control_ssl_reading(slf)
    }

    /// Drops the plaintext backlog (the connection is gone).
    fn _clear_backlog(&self) {
        let backlog = {
            let mut inner = self.inner.lock();
            inner.backlog_size = 0;
            inner.backlog_head = 0;
            std::mem::take(&mut inner.backlog)
        };
        drop(backlog);
    }

    /// `BufferedProtocol.get_buffer` for a lower transport that is not a native socket one
    /// (TLS over TLS); allocated on first use.
    fn get_buffer<'py>(slf: &Bound<'py, Self>, sizehint: isize) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let want = if sizehint <= 0 || sizehint as usize > PLAINTEXT_BATCH {
            PLAINTEXT_BATCH
        } else {
            sizehint as usize
        };
        let mut inner = slf.get().inner.lock();
        // Allocated once at the largest size asked for, and never replaced or freed before
        // the layer: a view handed out earlier can never point at released memory.
        let buffer = inner
            .foreign_buffer
            .get_or_insert_with(|| vec![0u8; PLAINTEXT_BATCH].into_boxed_slice());
        memory_view(py, buffer.as_mut_ptr(), want, true)
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: usize) -> PyResult<()> {
        let py = slf.py();
        let (incoming, ptr, len) = {
            let mut inner = slf.get().inner.lock();
            let Some(incoming) = inner.incoming.as_ref().map(|i| i.clone_ref(py)) else {
                return Ok(());
            };
            let Some(buffer) = inner.foreign_buffer.as_mut() else {
                return Ok(());
            };
            (incoming, buffer.as_mut_ptr(), nbytes.min(buffer.len()))
        };
        let view = memory_view(py, ptr, len, false)?;
        call(incoming.bind(py), intern!(py, "write"), (view,))?;
        Self::ciphertext_arrived(slf)
    }

    // Python reads the flags below but changes them only through these verbs, so each rule
    // sits next to the flag it guards.
    #[classattr]
    const _UNWRAPPED: u8 = UNWRAPPED as u8;
    #[classattr]
    const _DO_HANDSHAKE: u8 = DO_HANDSHAKE as u8;
    #[classattr]
    const _WRAPPED: u8 = WRAPPED as u8;
    #[classattr]
    const _FLUSHING: u8 = FLUSHING as u8;
    #[classattr]
    const _SHUTDOWN: u8 = SHUTDOWN as u8;
    /// asyncio's default high-water marks: the incoming BIO's, the write buffer's.
    #[classattr]
    const _INCOMING_HIGH_WATER: usize = TLS_INCOMING_HIGH_WATER;
    #[classattr]
    const _OUTGOING_HIGH_WATER: usize = TLS_OUTGOING_HIGH_WATER;

    #[getter]
    fn _state_code(&self) -> u8 {
        self.state() as u8
    }

    /// Moves the state machine to `code`; asyncio's RuntimeError for a step it does not allow.
    fn _enter_state(&self, code: u8) -> PyResult<()> {
        let Some(next) = TlsState::from_code(code) else {
            return Err(PyValueError::new_err(format!("no TLS state has the code {code}")));
        };
        let mut inner = self.inner.lock();
        if !inner.state.may_enter(next) {
            let from = inner.state.asyncio_name();
            return Err(PyRuntimeError::new_err(format!(
                "cannot switch state from {from} to {}",
                next.asyncio_name()
            )));
        }
        inner.state = next;
        Ok(())
    }

    /// `ssl.SSLWantReadError` and `ssl.SSLSyscallError`, for the Python half's own calls.
    #[staticmethod]
    fn _again_errors(py: Python<'_>) -> PyResult<Bound<'_, PyTuple>> {
        let (want_read, syscall) = again_errors(py)?;
        PyTuple::new(py, [want_read.bind(py), syscall.bind(py)])
    }

    #[getter]
    fn _write_buffer_size(&self) -> usize {
        self.inner.lock().backlog_size
    }

    #[getter]
    fn _app_reading_paused(&self) -> bool {
        self.inner.lock().app_reading_paused
    }

    /// The application transport's `pause_reading()`.
    fn _pause_app_reading(&self) {
        self.inner.lock().app_reading_paused = true;
    }

    /// The application transport's `resume_reading()`: False if reading was not paused.
    fn _resume_app_reading(&self) -> bool {
        std::mem::replace(&mut self.inner.lock().app_reading_paused, false)
    }

    #[getter]
    fn _app_writing_paused(&self) -> bool {
        self.inner.lock().app_writing_paused
    }

    /// asyncio's `_control_app_writing` decision: "pause_writing" once the write buffer
    /// (backlog and outgoing BIO) reaches the high-water mark, "resume_writing" once a paused
    /// one is down to the low mark, else None; the flag is updated before the caller tells
    /// the application protocol.
    fn _app_writing_change(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        let outgoing = self.inner.lock().outgoing.as_ref().map(|o| o.clone_ref(py));
        let in_bio = match outgoing {
            Some(outgoing) => pending(outgoing.bind(py))?,
            None => 0,
        };
        let mut inner = self.inner.lock();
        let size = in_bio + inner.backlog_size;
        if size >= inner.outgoing_high && !inner.app_writing_paused {
            inner.app_writing_paused = true;
            Ok(Some("pause_writing"))
        } else if size <= inner.outgoing_low && inner.app_writing_paused {
            inner.app_writing_paused = false;
            Ok(Some("resume_writing"))
        } else {
            Ok(None)
        }
    }

    #[getter]
    fn _ssl_reading_paused(&self) -> bool {
        self.inner.lock().ssl_reading_paused
    }

    #[getter]
    fn _ssl_writing_paused(&self) -> bool {
        self.inner.lock().ssl_writing_paused
    }

    /// The lower transport paused (True) or resumed (False) us: records wait in the outgoing
    /// BIO meanwhile. Returns whether the flag changed (asyncio asserts it does).
    fn _set_ssl_writing_paused(&self, paused: bool) -> bool {
        std::mem::replace(&mut self.inner.lock().ssl_writing_paused, paused) != paused
    }

    #[getter]
    fn _conn_lost(&self) -> u32 {
        self.inner.lock().conn_lost
    }

    /// asyncio's `_conn_lost += 1`, in one step: returns the new count.
    fn _mark_lost(&self) -> u32 {
        let mut inner = self.inner.lock();
        inner.conn_lost += 1;
        inner.conn_lost
    }

    /// New limits for the incoming BIO, already checked by the Python side's water-mark rule.
    fn _set_read_limits(&self, high: usize, low: usize) {
        let mut inner = self.inner.lock();
        inner.incoming_high = high;
        inner.incoming_low = low;
    }

    fn _read_limits(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.incoming_low, inner.incoming_high)
    }

    /// New limits for the write buffer, already checked by the Python side's water-mark rule.
    fn _set_write_limits(&self, high: usize, low: usize) {
        let mut inner = self.inner.lock();
        inner.outgoing_high = high;
        inner.outgoing_low = low;
    }

    fn _write_limits(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.outgoing_low, inner.outgoing_high)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(inner) = self.inner.try_lock() {
            for object in [
                &inner.event_loop,
                &inner.sslobj,
                &inner.incoming,
                &inner.outgoing,
                &inner.app_protocol,
                &inner.transport,
            ]
            .into_iter()
            .flatten()
            {
                visit.call(object)?;
            }
            if let Some(lower) = inner.lower.as_ref() {
                visit.call(lower)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = {
            let mut inner = self.inner.lock();
            (
                inner.event_loop.take(),
                inner.sslobj.take(),
                inner.incoming.take(),
                inner.outgoing.take(),
                inner.app_protocol.take(),
                inner.transport.take(),
                inner.lower.take(),
                std::mem::take(&mut inner.backlog),
            )
        };
        drop(taken);
    }
}

/// Plugged into the lower stream engine while this layer is its protocol: ciphertext goes from
/// the engine's receive buffer straight into the incoming BIO.
impl ReceiveSink for TlsLayer {
    fn take(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        self.take_ciphertext(py, data)
    }

    fn arrived(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::ciphertext_arrived(slf)
    }
}
