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
use crate::transports::limits::{self, DEFAULT_HIGH_WATER, LOST_WRITES_BEFORE_WARNING};

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
    protocol_paused: bool,
    high_water: usize,
    low_water: usize,
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
/// protocol. (So stream.rs does not name the TLS layer: TLS depends on streams, not back.)
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
            take: |object, data| unsafe { object.cast_unchecked::<S>() }.get().take(object.py(), data),
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
        slf.get().io.again(EngineRef::new(slf.clone().unbind()), direction);
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
    fn up<'py>(
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
        Self::up(slf, intern!(py, "_fatal_error"), (err.into_value(py), message))
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

    fn on_readable(slf: &Bound<'_, Self>, edge: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, buffered, expect_large, sink) = {
            let inner = this.inner.lock();
            if inner.write_only {
                drop(inner);
                return Self::peer_closed(slf);
            }
            match inner.protocol.as_ref() {
                Some(protocol) if inner.reading && inner.conn_lost == 0 => (
                    protocol.clone_ref(py),
                    inner.buffered,
                    inner.last_read_large,
                    inner
                        .sink
                        .as_ref()
                        .filter(|sink| sink.object.is(protocol))
                        .map(|sink| sink.clone_ref(py)),
                ),
                _ => return Ok(()),
            }
        };
        if let Some(sink) = sink {
            return Self::read_into_sink(slf, &sink);
        }
        let protocol = protocol.into_bound(py);
        if buffered {
            // A selector calls get_buffer() only when data (or EOF) is there. An edge says
            // so; a read queued without one must look first.
            if !edge && !level_ready(this.fd, Direction::Read) {
                Self::drained(slf, Direction::Read);
                return Ok(());
            }
            return Self::read_into_protocol(slf, &protocol);
        }
        let received = match recv_bytes(py, this.kind, this.fd, READ_SIZE, 0, expect_large)? {
            Received::Data(data, n, filled) => {
                this.inner.lock().last_read_large = n >= LARGE_READ;
                Ok((filled, (n > 0).then_some(data)))
            }
            Received::Failed(errno) => Err(errno),
        };
        match received {
            Err(errno) => Self::read_failed(slf, errno),
            Ok((_, None)) => Self::up(slf, intern!(py, "_on_eof"), ()),
            Ok((filled, Some(data))) => {
                let data = data.into_bound(py);
                if !filled {
                    Self::drained(slf, Direction::Read);
                } else {
                    Self::requeue(slf, Direction::Read);
                }
                match call_method_one(&protocol, intern!(py, "data_received"), data.as_any()) {
                    Ok(()) => Ok(()),
                    Err(err) => Self::fatal(slf, err, "Fatal error: protocol.data_received() call failed."),
                }
            }
        }
    }

    /// A failed `recv`: drained (wait for the next edge), interrupted (retry) or fatal.
    fn read_failed(slf: &Bound<'_, Self>, errno: i32) -> PyResult<()> {
        if would_block(errno) {
            Self::drained(slf, Direction::Read);
            Ok(())
        } else if errno == libc::EINTR {
            Self::requeue(slf, Direction::Read);
            Ok(())
        } else {
            Self::fatal(slf, os_error(errno), slf.get().read_error_message())
        }
    }

    /// A read for a plugged-in receiver (the TLS layer): the bytes go from the receive buffer
    /// into it, then it runs (as asyncio's get_buffer/buffer_updated would).
    fn read_into_sink(slf: &Bound<'_, Self>, sink: &SinkRef) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let receiver = sink.object.bind(py);
        let failed = "Fatal error: protocol.buffer_updated() call failed.";
        match recv_with(this.kind, this.fd, READ_SIZE, |data| (sink.take)(receiver, data)) {
            Err(errno) => Self::read_failed(slf, errno),
            Ok((0, _)) => Self::up(slf, intern!(py, "_on_eof"), ()),
            Ok((_, Err(err))) => Self::fatal(slf, err, failed),
            Ok((n, Ok(()))) => {
                if n < READ_SIZE {
                    Self::drained(slf, Direction::Read);
                } else {
                    Self::requeue(slf, Direction::Read);
                }
                match (sink.arrived)(receiver) {
                    Ok(()) => Ok(()),
                    Err(err) => Self::fatal(slf, err, failed),
                }
            }
        }
    }

    fn read_into_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let view = protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|buffer| {
                let view = BufferView::get(&buffer, ffi::PyBUF_WRITABLE)?;
                if view.len() == 0 {
                    return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
                }
                Ok(view)
            });
        let view = match view {
            Ok(view) => view,
            Err(err) => return Self::fatal(slf, err, "Fatal error: protocol.get_buffer() call failed."),
        };
        // SAFETY: `view` is a writable, contiguous buffer of view.len() bytes, held until drop.
        let n = unsafe { this.kind.read(this.fd, view.as_ptr(), view.len(), 0) };
        let capacity = view.len();
        drop(view);
        if n < 0 {
            return Self::read_failed(slf, last_errno());
        }
        if n == 0 {
            return Self::up(slf, intern!(py, "_on_eof"), ());
        }
        if (n as usize) < capacity {
            Self::drained(slf, Direction::Read);
        } else {
            Self::requeue(slf, Direction::Read);
        }
        match protocol.call_method1(intern!(py, "buffer_updated"), (n as usize,)) {
            Ok(_) => Ok(()),
            Err(err) => Self::fatal(slf, err, "Fatal error: protocol.buffer_updated() call failed."),
        }
    }

    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut sent_objects = Vec::new();
        let (result, more_queued, queued) = {
            let mut inner = this.inner.lock();
            if inner.conn_lost > 0 {
                return Ok(());
            }
            if inner.queue.is_empty() {
                let watching_hangup = inner.write_only && this.kind == FdKind::Pipe;
                drop(inner);
                if !watching_hangup {
                    return Ok(());
                }
                if hung_up(this.fd) {
                    return Self::peer_closed(slf);
                }
                Self::drained(slf, Direction::Write);
                return Ok(());
            }
            let mut slices: Vec<libc::iovec> = Vec::with_capacity(inner.queue.len().min(MAX_SLICES));
            let mut offered = 0usize;
            for (index, chunk) in inner.queue.iter().take(MAX_SLICES).enumerate() {
                let skip = if index == 0 { inner.head } else { 0 };
                // SAFETY: `chunk` is a live bytes object kept in the queue for the whole call.
                let (base, len) = unsafe {
                    let object = chunk.as_ptr();
                    (
                        ffi::PyBytes_AsString(object).cast::<u8>(),
                        ffi::PyBytes_Size(object) as usize,
                    )
                };
                slices.push(libc::iovec {
                    // SAFETY: skip < len (fully sent chunks leave the queue).
                    iov_base: unsafe { base.add(skip) }.cast(),
                    iov_len: len - skip,
                });
                offered += len - skip;
            }
            // SAFETY: every iovec points into a bytes object the queue holds during the call.
            let n = unsafe { this.kind.write_vectored(this.fd, &mut slices) };
            if n < 0 {
                (Err(last_errno()), true, inner.queued)
            } else {
                let mut left = n as usize;
                inner.queued -= left;
                while left > 0 {
                    let Some(front) = inner.queue.front() else { break };
                    // SAFETY: a live bytes object owned by the queue.
                    let size = unsafe { ffi::PyBytes_Size(front.as_ptr()) } as usize - inner.head;
                    if left >= size {
                        left -= size;
                        inner.head = 0;
                        sent_objects.extend(inner.queue.pop_front());
                    } else {
                        inner.head += left;
                        left = 0;
                    }
                }
                (Ok(n as usize == offered), !inner.queue.is_empty(), inner.queued)
            }
        };
        drop(sent_objects);
        match result {
            Err(errno) if would_block(errno) => {
                Self::drained(slf, Direction::Write);
                return Ok(());
            }
            Err(libc::EINTR) => {
                Self::requeue(slf, Direction::Write);
                return Ok(());
            }
            Err(errno) => {
                let err = os_error(errno);
                return Self::up(slf, intern!(py, "_on_write_error"), (err.into_value(py),));
            }
            Ok(took_all_offered) if more_queued => {
                if took_all_offered {
                    Self::requeue(slf, Direction::Write);
                } else {
                    Self::drained(slf, Direction::Write);
                }
            }
            Ok(_) => {}
        }
        let resume = {
            let inner = this.inner.lock();
            inner.protocol_paused && queued <= inner.low_water
        };
        if resume {
            Self::up(slf, intern!(py, "_maybe_resume_protocol"), ())?;
        }
        let (empty, watching_hangup) = {
            let inner = this.inner.lock();
            (inner.queue.is_empty(), inner.write_only && this.kind == FdKind::Pipe)
        };
        if empty {
            if !watching_hangup {
                this.io.watch(py, this.fd, Direction::Write, false);
            }
            Self::up(slf, intern!(py, "_on_drained"), ())?;
        }
        Ok(())
    }

    /// A write pipe's reader has gone: the Python transport closes (asyncio's `_read_ready`).
    fn peer_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        Self::set_reading(slf, false);
        let this = slf.get();
        this.io.watch(py, this.fd, Direction::Write, false);
        Self::up(slf, intern!(py, "_on_peer_closed"), ())
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
                protocol_paused: false,
                high_water: DEFAULT_HIGH_WATER,
                low_water: limits::low_water_for(DEFAULT_HIGH_WATER),
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
        let py = slf.py();
        let this = slf.get();
        // SAFETY: a type check on a live object.
        let is_bytes = unsafe { ffi::PyBytes_Check(data.as_ptr()) } != 0;
        if !is_bytes && !limits::is_bytes_like(data) {
            if this.inner.lock().pipe_mode {
                // asyncio's pipe transports check the type with `assert`.
                return Err(PyAssertionError::new_err(data.repr()?.unbind()));
            }
            // The running version's wording: 3.14 names the three accepted types.
            let accepted = if py.version_info() >= (3, 14) {
                "a bytes, bytearray, or memoryview object"
            } else {
                "a bytes-like object"
            };
            return Err(PyTypeError::new_err(format!(
                "data argument must be {accepted}, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view = BufferView::get(data, ffi::PyBUF_SIMPLE)?;
        let len = view.len();
        let mut inner = this.inner.lock();
        let pipe_mode = inner.pipe_mode;
        if pipe_mode && len > 0 && (inner.closing || inner.conn_lost > 0) {
            let warn = inner.conn_lost >= LOST_WRITES_BEFORE_WARNING;
            inner.conn_lost += 1;
            drop(inner);
            if warn {
                let message = "pipe closed by peer or os.write(pipe, data) raised exception.";
                py.import("asyncio.log")?
                    .getattr(intern!(py, "logger"))?
                    .call_method1(intern!(py, "warning"), (message,))?;
            }
            return Ok(());
        }
        if inner.eof_requested {
            return Err(PyRuntimeError::new_err("Cannot call write() after write_eof()"));
        }
        if inner.sendfile_active {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if len == 0 {
            return Ok(());
        }
        if inner.conn_lost > 0 {
            let warn = inner.conn_lost >= LOST_WRITES_BEFORE_WARNING;
            inner.conn_lost += 1;
            drop(inner);
            if warn {
                py.import("asyncio.log")?
                    .getattr(intern!(py, "logger"))?
                    .call_method1(intern!(py, "warning"), ("socket.send() raised exception.",))?;
            }
            return Ok(());
        }
        let mut offset = 0;
        let start_writing = inner.queue.is_empty();
        if start_writing {
            // SAFETY: `view` covers `len` readable bytes for the duration of the call.
            let n = unsafe { this.kind.write(this.fd, view.as_ptr(), len) };
            if n < 0 {
                let errno = last_errno();
                if !would_block(errno) && errno != libc::EINTR {
                    if pipe_mode {
                        inner.conn_lost += 1;
                    }
                    drop(inner);
                    drop(view);
                    return Self::fatal(slf, os_error(errno), Self::write_error_message(pipe_mode));
                }
            } else if n as usize == len {
                return Ok(());
            } else {
                offset = n as usize;
            }
        }
        let chunk = if is_bytes {
            inner.head = if start_writing { offset } else { inner.head };
            data.cast::<PyBytes>()?.clone().unbind()
        } else {
            // SAFETY: offset <= len; the view is alive. The caller may reuse its buffer: copy.
            let rest = unsafe { std::slice::from_raw_parts(view.as_ptr().add(offset), len - offset) };
            if start_writing {
                inner.head = 0;
            }
            PyBytes::new(py, rest).unbind()
        };
        inner.queue.push_back(chunk);
        inner.queued += len - offset;
        let over_high_water = !inner.protocol_paused && inner.queued > inner.high_water;
        drop(inner);
        drop(view);
        if start_writing {
            this.io.watch(py, this.fd, Direction::Write, true);
            Self::drained(slf, Direction::Write);
        }
        if over_high_water {
            Self::up(slf, intern!(py, "_maybe_pause_protocol"), ())?;
        }
        Ok(())
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
        self.inner.lock().protocol_paused
    }

    /// True once, when the queue has grown above the high-water mark: the protocol is now
    /// marked paused and the caller tells it `pause_writing()`.
    fn _pause_protocol_if_over(&self) -> bool {
        let mut inner = self.inner.lock();
        let pause = !inner.protocol_paused && inner.queued > inner.high_water;
        inner.protocol_paused |= pause;
        pause
    }

    /// True once, when a paused protocol's queue has drained to the low-water mark: the
    /// protocol is now marked resumed and the caller tells it `resume_writing()`.
    fn _resume_protocol_if_under(&self) -> bool {
        let mut inner = self.inner.lock();
        let resume = inner.protocol_paused && inner.queued <= inner.low_water;
        inner.protocol_paused &= !resume;
        resume
    }

    /// New write limits, already checked by the Python side's water-mark rule.
    fn _set_write_limits(&self, high: usize, low: usize) {
        let mut inner = self.inner.lock();
        inner.high_water = high;
        inner.low_water = low;
    }

    fn _write_limits(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.low_water, inner.high_water)
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
