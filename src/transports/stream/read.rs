//! The stream engine's read path: a read edge (or a read asked for again) becomes one
//! `recv` and one protocol call: `data_received` with an exact-size `bytes`, `recv` straight
//! into a `BufferedProtocol`'s buffer, or the bytes handed to a plugged [`super::ReceiveSink`]
//! (the TLS layer). Only `stream/mod.rs` calls in here, from the turn's `Engine::run`.

use super::*;

impl StreamEngine {
    pub(super) fn on_readable(slf: &Bound<'_, Self>, edge: bool) -> PyResult<()> {
        crate::fault_point!("stream_read");
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
            Ok((_, None)) => Self::call_owner(slf, intern!(py, "_on_eof"), ()),
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
            Ok((0, _)) => Self::call_owner(slf, intern!(py, "_on_eof"), ()),
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
            return Self::call_owner(slf, intern!(py, "_on_eof"), ());
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
}
