//! `StreamEngine`: the native half of a stream transport: TCP or Unix sockets, and pipes.
//!
//! What runs per read or write lives here. A read edge from the io registry (or a read this
//! engine asked for again, `IoHandle::again`) makes the turn run it (`io::Engine`): one `recv` into
//! a per-thread 256 KiB buffer, an exact-size `bytes`, `protocol.data_received` — or, for a
//! `BufferedProtocol`, `recv` straight into `get_buffer()`. `write()` sends at once when
//! nothing is queued; what the kernel did not take is queued as references to `bytes`
//! objects (other buffers are copied, since the caller may reuse them) and flushed with one
//! `sendmsg` of up to 1024 slices when the socket turns writable.
//!
//! Readiness follows tokio's edge rules: after a short read, `EAGAIN` or a partial write the
//! socket is known drained and the direction is re-armed; after a full read or a complete
//! flush of a capped `sendmsg` the transport queues itself for the next turn instead, which is
//! what a level-triggered selector would do. Everything that happens once per connection —
//! close, abort, EOF, error reporting, flow-control calls into the protocol, extra info —
//! is the Python class `tokioloop._transport.SocketTransport` (an `asyncio.Transport`, whose
//! engine this is), which these methods call by name. The inner lock is never held while
//! Python code runs or a Python object is dropped. The engine holds an `io::IoHandle`, never
//! the loop; the TLS layer plugs into its receive path as a [`ReceiveSink`].
//!
//! Python owner (the methods called by name): `tokioloop._seam.StreamEngineOwner`, which
//! `SocketTransport` provides; a read pipe's owner provides its `StreamReadOwner` part, a write
//! pipe's `WritePipeOwner`. The read path is `read.rs`, the write path `write.rs`.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use parking_lot::Mutex;
use pyo3::exceptions::{PyAssertionError, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use pyo3::{ffi, intern, PyClass, PyTraverseError, PyVisit};

use crate::errors::{is_fatal, last_errno, os_error};
use crate::io::{
    hung_up, level_ready, recv_bytes, recv_with, would_block, BufferView, Direction, Engine, EngineRef,
    FdKind, IoHandle, Received, LARGE_READ,
};
use crate::transports::limits::{self, WriteFlow, DEFAULT_HIGH_WATER};

mod read;
mod write;

/// asyncio's `max_size` for one socket read.
const READ_SIZE: usize = crate::io::BUFFER_SIZE;
/// Linux's IOV_MAX: slices one `sendmsg` may take.
const MAX_SLICES: usize = 1024;

struct Inner {
    protocol: Option<Py<PyAny>>,
    /// A receiver plugged in by the layer above (TLS: its incoming BIO). Used while it is the
    /// protocol: reads then go straight into it.
    sink: Option<SinkRef>,
    /// The protocol is a `BufferedProtocol`: reads go into its `get_buffer()`.
    buffered: bool,
    /// `pause_reading()` is in effect.
    paused: bool,
    /// The last read was large: read straight into a full-size bytes (see `io::recv`).
    last_read_large: bool,
    /// Read interest is registered (not paused, not closing, started).
    reading: bool,
    closing: bool,
    conn_lost: u32,
    /// `write_eof()` was called: the write side shuts once the queue drains.
    eof_requested: bool,
    /// asyncio's pipe transport rules (`connect_read_pipe`/`connect_write_pipe`): their
    /// messages, `write()` refusing other types by `assert`, writes dropped once closing.
    pipe_mode: bool,
    /// A write pipe: readiness to read (or, on a pipe, a hang-up) means the reader has gone.
    write_only: bool,
    /// `pause_writing()` was called on the protocol and `resume_writing()` not yet.
    flow: WriteFlow,
    /// A sendfile owns the socket: write() is refused.
    sendfile_active: bool,
    queue: VecDeque<Py<PyBytes>>,
    /// Bytes of `queue[0]` already sent.
    head: usize,
    queued: usize,
}

#[pyclass(subclass, frozen, module = "tokioloop._tokioloop")]
pub struct StreamEngine {
    fd: RawFd,
    /// Socket (recv/send) or pipe (read/write): found once, at construction.
    kind: FdKind,
    /// The socket's registration with the loop (never the loop itself). Not traversed: the
    /// loop traverses the registry.
    io: IoHandle,
    /// The Python transport (`tokioloop._transport.SocketTransport`) this is the engine of:
    /// the object protocol callbacks and error reports see. Held while the socket is
    /// registered (as a selector's reader handle holds asyncio's), dropped at detach.
    owner: Mutex<Option<Py<PyAny>>>,
    /// The context protocol callbacks run in: a copy of the creator's, as asyncio's readers.
    context: Py<PyAny>,
    inner: Mutex<Inner>,
}

/// A protocol that takes its bytes straight from the engine's receive buffer, without a
/// `bytes` object or a `get_buffer()` call: the TLS layer, whose incoming BIO they go to.
/// It plugs itself in with [`StreamEngine::plug_sink`]; the engine uses it while it is the
/// protocol. (So the stream engine does not name the TLS layer: TLS depends on streams, not back.)
pub(crate) trait ReceiveSink: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    /// Takes what one read received. Runs no Python code while the buffer is borrowed
    /// beyond the call.
    fn take(&self, py: Python<'_>, data: &[u8]) -> PyResult<()>;
    /// After `take`: acts on what arrived.
    fn arrived(slf: &Bound<'_, Self>) -> PyResult<()>;
}

/// A plugged-in [`ReceiveSink`] with its type erased.
struct SinkRef {
    object: Py<PyAny>,
    take: fn(&Bound<'_, PyAny>, &[u8]) -> PyResult<()>,
    arrived: fn(&Bound<'_, PyAny>) -> PyResult<()>,
}

impl SinkRef {
    fn new<S: ReceiveSink>(sink: Py<S>) -> Self {
        // SAFETY (both casts): the functions are stored only next to an object of type `S`.
        SinkRef {
            object: sink.into_any(),
            take: |object, data| {
                unsafe { object.cast_unchecked::<S>() }
                    .get()
                    .take(object.py(), data)
            },
            arrived: |object| S::arrived(unsafe { object.cast_unchecked::<S>() }),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Self {
        SinkRef {
            object: self.object.clone_ref(py),
            take: self.take,
            arrived: self.arrived,
        }
    }
}

impl Engine for StreamEngine {
    fn run(slf: &Bound<'_, Self>, direction: Direction, edge: bool) -> PyResult<()> {
        Self::run_in_context(slf, direction, edge)
    }

    /// The Python transport, as users see it (None once detached).
    fn python_transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.owner.lock().as_ref().map(|o| o.clone_ref(py))
    }

    fn is_closing(&self) -> bool {
        self.inner.lock().closing
    }
}

impl StreamEngine {
    /// Plugs `sink` into the receive path (replacing any other), or with None unplugs
    /// `plugged` if it is the one plugged in.
    pub(crate) fn plug_sink<S: ReceiveSink>(&self, sink: Option<Py<S>>, plugged: &Bound<'_, PyAny>) {
        let old = {
            let mut inner = self.inner.lock();
            match sink {
                Some(sink) => inner.sink.replace(SinkRef::new(sink)),
                None if inner.sink.as_ref().is_some_and(|old| old.object.is(plugged)) => inner.sink.take(),
                None => None,
            }
        };
        // Dropped outside the lock: the last reference may run Python code.
        drop(old);
    }

    /// Looks again next turn, as a level-triggered selector would (see `IoHandle::again`).
    fn requeue(slf: &Bound<'_, Self>, direction: Direction) {
        slf.get()
            .io
            .again(EngineRef::new(slf.clone().unbind()), direction);
    }

    /// The last syscall showed `direction` drained: wait for the next edge (or retry at once
    /// if tokio still reports it ready, as after a hang-up).
    fn drained(slf: &Bound<'_, Self>, direction: Direction) {
        let this = slf.get();
        if this.io.rearm(this.fd, direction) {
            Self::requeue(slf, direction);
        }
    }

    /// The Python transport, for the rare paths implemented there; None once detached.
    fn owner<'py>(slf: &Bound<'py, Self>) -> Option<Bound<'py, PyAny>> {
        let owner = slf.get().owner.lock().as_ref().map(|o| o.clone_ref(slf.py()));
        owner.map(|o| o.into_bound(slf.py()))
    }

    /// Calls `owner.name(*args)`; nothing if the transport is already detached.
    fn call_owner<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        match Self::owner(slf) {
            Some(owner) => owner.call_method1(name, args).map(drop),
            None => Ok(()),
        }
    }

    fn read_error_message(&self) -> &'static str {
        if self.inner.lock().pipe_mode {
            "Fatal read error on pipe transport"
        } else {
            "Fatal read error on socket transport"
        }
    }

    fn write_error_message(pipe_mode: bool) -> &'static str {
        if pipe_mode {
            "Fatal write error on pipe transport"
        } else {
            "Fatal write error on socket transport"
        }
    }

    fn fatal(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if is_fatal(py, &err) {
            return Err(err);
        }
        Self::call_owner(slf, intern!(py, "_fatal_error"), (err.into_value(py), message))
    }

    /// The turn's entry: one read or one flush, inside the transport's context.
    fn run_in_context(slf: &Bound<'_, Self>, direction: Direction, edge: bool) -> PyResult<()> {
        let py = slf.py();
        let context = slf.get().context.as_ptr();
        // SAFETY: `context` is a live Context owned by the transport; enter and exit pair up
        // on every path, and the transport runs only from the turn, never nested in itself.
        if unsafe { ffi::PyContext_Enter(context) } < 0 {
            return Err(PyErr::fetch(py));
        }
        let outcome = match direction {
            Direction::Read => Self::on_readable(slf, edge),
            Direction::Write => Self::on_writable(slf),
        };
        // SAFETY: as above.
        if unsafe { ffi::PyContext_Exit(context) } < 0 {
            let exit_error = PyErr::fetch(py);
            return outcome.and(Err(exit_error));
        }
        outcome
    }

    /// A write pipe's reader has gone: the Python transport closes (asyncio's `_read_ready`).
    fn peer_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::set_reading(slf, false);
        let this = slf.get();
        this.io.watch(py, this.fd, Direction::Write, false);
        Self::call_owner(slf, intern!(py, "_on_peer_closed"), ())
    }

    fn set_reading(slf: &Bound<'_, Self>, on: bool) {
        let py = slf.py();
        let this = slf.get();
        {
            let mut inner = this.inner.lock();
            if inner.reading == on || (on && (inner.paused || inner.closing)) {
                return;
            }
            inner.reading = on;
        }
        let io = &this.io;
        io.watch(py, this.fd, Direction::Read, on);
        // An edge may have come while nobody listened (before the start, or while paused).
        if on && io.arm(this.fd, Direction::Read) {
            Self::requeue(slf, Direction::Read);
        }
    }
}

/// `object.name(arg)` without a bound-method object.
fn call_method_one(
    object: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    arg: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let args = [object.as_ptr(), arg.as_ptr()];
    // SAFETY: `args` holds two borrowed live objects; the result is a new reference or NULL.
    unsafe {
        let result = ffi::PyObject_VectorcallMethod(
            name.as_ptr(),
            args.as_ptr(),
            2 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
            std::ptr::null_mut(),
        );
        if result.is_null() {
            Err(PyErr::fetch(object.py()))
        } else {
            ffi::Py_DECREF(result);
            Ok(())
        }
    }
}

#[pymethods]
impl StreamEngine {
    /// `StreamEngine(loop, sock, owner)`: the engine of the Python transport `owner`.
    #[new]
    fn new(r#loop: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, owner: Py<PyAny>) -> PyResult<Self> {
        let py = r#loop.py();
        let io = IoHandle::of(r#loop)?;
        let fd: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
        // SAFETY: copies the current context; a new reference or NULL with an exception set.
        let context = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? };
        Ok(StreamEngine {
            fd,
            kind: FdKind::of(fd),
            io,
            owner: Mutex::new(Some(owner)),
            context: context.unbind(),
            inner: Mutex::new(Inner {
                protocol: None,
                sink: None,
                buffered: false,
                paused: false,
                last_read_large: false,
                reading: false,
                closing: false,
                conn_lost: 0,
                eof_requested: false,
                pipe_mode: false,
                write_only: false,
                flow: WriteFlow::new(),
                sendfile_active: false,
                queue: VecDeque::new(),
                head: 0,
                queued: 0,
            }),
        })
    }

    /// Write `data` (bytes, bytearray or memoryview): sent now if the kernel takes it,
    /// otherwise queued and flushed when the socket is writable. (Also the TLS layer's way
    /// to send its records, called directly.)
    pub(crate) fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        crate::fault_point!("stream_write");
        Self::send_or_queue(slf, data)
    }

    /// Bytes queued and not yet taken by the kernel.
    fn get_write_buffer_size(&self) -> usize {
        self.inner.lock().queued
    }

    fn is_closing(&self) -> bool {
        self.inner.lock().closing
    }

    fn is_reading(&self) -> bool {
        let inner = self.inner.lock();
        !inner.paused && !inner.closing
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    /// Registers the socket with the loop's reactor; False if something already watches it.
    fn _attach_io(slf: &Bound<'_, Self>) -> PyResult<bool> {
        let this = slf.get();
        this.io.attach(this.fd, EngineRef::new(slf.clone().unbind()))
    }

    /// Deregisters the socket (before it is closed) and drops anything still queued.
    fn _detach_io(slf: &Bound<'_, Self>) {
        let this = slf.get();
        let queue = {
            let mut inner = this.inner.lock();
            inner.reading = false;
            inner.queued = 0;
            inner.head = 0;
            std::mem::take(&mut inner.queue)
        };
        drop(queue);
        this.io.release(this.fd);
        let owner = this.owner.lock().take();
        drop(owner);
    }

    fn _set_protocol(&self, protocol: Bound<'_, PyAny>, buffered: bool) -> Option<Py<PyAny>> {
        let mut inner = self.inner.lock();
        inner.buffered = buffered;
        let old = inner.protocol.replace(protocol.unbind());
        drop(inner);
        old
    }

    fn _take_protocol(&self) -> Option<Py<PyAny>> {
        let mut inner = self.inner.lock();
        let sink = inner.sink.take();
        let protocol = inner.protocol.take();
        drop(inner);
        drop(sink);
        protocol
    }

    /// Follow asyncio's pipe transport rules; `write_only` for a write pipe (whose read
    /// readiness, or hang-up, means the reader has gone).
    fn _set_pipe_mode(&self, write_only: bool) {
        let mut inner = self.inner.lock();
        inner.pipe_mode = true;
        inner.write_only = write_only;
    }

    /// A write pipe starts watching for its reader to go: a hang-up on a pipe or FIFO, read
    /// readiness on a socket (asyncio's rule: either means the peer closed).
    fn _watch_hangup(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        if this.kind == FdKind::Socket {
            Self::set_reading(slf, true);
            return;
        }
        let io = &this.io;
        io.watch(py, this.fd, Direction::Write, true);
        if io.arm(this.fd, Direction::Write) {
            Self::requeue(slf, Direction::Write);
        }
    }

    /// The context the protocol's callbacks run in; from 3.15 `connection_made` runs in it
    /// too (see `_compat.CONNECTION_CONTEXT`).
    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.context.clone_ref(py)
    }

    fn _start_reading(slf: &Bound<'_, Self>) {
        Self::set_reading(slf, true);
    }

    fn _stop_reading(slf: &Bound<'_, Self>) {
        Self::set_reading(slf, false);
    }

    /// Drops the write queue and stops watching for writability (abort, fatal errors).
    fn _clear_write_buffer(slf: &Bound<'_, Self>) -> bool {
        let py = slf.py();
        let this = slf.get();
        let queue = {
            let mut inner = this.inner.lock();
            inner.queued = 0;
            inner.head = 0;
            std::mem::take(&mut inner.queue)
        };
        let had_data = !queue.is_empty();
        drop(queue);
        this.io.watch(py, this.fd, Direction::Write, false);
        had_data
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    // Python reads the flags below but changes them only through these verbs, so each rule
    // sits next to the flag it guards.
    /// asyncio's default high-water mark, for `set_write_buffer_limits()` in Python.
    #[classattr]
    const _DEFAULT_HIGH_WATER: usize = DEFAULT_HIGH_WATER;

    #[getter]
    fn _closing(&self) -> bool {
        self.inner.lock().closing
    }

    /// Marks the transport closing; False if it already was (the caller then does nothing).
    fn _begin_close(&self) -> bool {
        !std::mem::replace(&mut self.inner.lock().closing, true)
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

    /// `pause_reading()`: False if already paused or closing (nothing changed).
    fn _pause_reading(slf: &Bound<'_, Self>) -> bool {
        {
            let mut inner = slf.get().inner.lock();
            if inner.closing || inner.paused {
                return false;
            }
            inner.paused = true;
        }
        Self::set_reading(slf, false);
        true
    }

    /// `resume_reading()`: False if not paused or closing (nothing changed).
    fn _resume_reading(slf: &Bound<'_, Self>) -> bool {
        {
            let mut inner = slf.get().inner.lock();
            if inner.closing || !inner.paused {
                return false;
            }
            inner.paused = false;
        }
        Self::set_reading(slf, true);
        true
    }

    /// Reading paused by the protocol (`pause_reading()`): 3.10's stdlib TLS layer reads it on
    /// its transport.
    #[getter]
    fn _paused(&self) -> bool {
        self.inner.lock().paused
    }

    #[getter]
    fn _eof(&self) -> bool {
        self.inner.lock().eof_requested
    }

    /// `write_eof()`: False if already asked for or closing; otherwise the write side shuts
    /// once the queue drains.
    fn _request_eof(&self) -> bool {
        let mut inner = self.inner.lock();
        if inner.closing || inner.eof_requested {
            return false;
        }
        inner.eof_requested = true;
        true
    }

    #[getter]
    fn _protocol_paused(&self) -> bool {
        self.inner.lock().flow.is_paused()
    }

    /// True once, when the queue has grown above the high-water mark: the protocol is now
    /// marked paused and the caller tells it `pause_writing()`.
    fn _pause_protocol_if_over(&self) -> bool {
        let inner = &mut *self.inner.lock();
        inner.flow.pause_if_over(inner.queued)
    }

    /// True once, when a paused protocol's queue has drained to the low-water mark: the
    /// protocol is now marked resumed and the caller tells it `resume_writing()`.
    fn _resume_protocol_if_under(&self) -> bool {
        let inner = &mut *self.inner.lock();
        inner.flow.resume_if_under(inner.queued)
    }

    /// New write limits, already checked by the Python side's water-mark rule.
    fn _set_write_limits(&self, high: usize, low: usize) {
        self.inner.lock().flow.set_limits(high, low);
    }

    /// `(low, high)`.
    fn _write_limits(&self) -> (usize, usize) {
        self.inner.lock().flow.limits()
    }

    /// A sendfile takes the socket over (`write()` is refused) or hands it back.
    fn _set_sendfile(&self, active: bool) {
        self.inner.lock().sendfile_active = active;
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.context)?;
        if let Some(owner) = self.owner.try_lock() {
            if let Some(owner) = owner.as_ref() {
                visit.call(owner)?;
            }
        }
        if let Some(inner) = self.inner.try_lock() {
            if let Some(protocol) = inner.protocol.as_ref() {
                visit.call(protocol)?;
            }
            if let Some(sink) = inner.sink.as_ref() {
                visit.call(&sink.object)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let (protocol, sink) = {
            let mut inner = self.inner.lock();
            (inner.protocol.take(), inner.sink.take())
        };
        drop((protocol, sink));
        let owner = self.owner.lock().take();
        drop(owner);
    }
}
