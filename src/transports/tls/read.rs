//! The TLS layer's read side: ciphertext from the lower transport into the incoming BIO
//! (as its [`ReceiveSink`](crate::transports::stream::ReceiveSink), or through the
//! `BufferedProtocol` methods), the read loop of `SSLObject.read` into a per-thread buffer or
//! the application's own, and the read-side flow control (`_control_ssl_reading`).

use super::*;

/// asyncio's `SSLProtocol.max_size`: the most plaintext one `data_received` carries.
pub(super) const PLAINTEXT_BATCH: usize = 256 * 1024;

thread_local! {
    /// The plaintext read buffer, shared by every TLS connection of the thread. It is taken
    /// out while in use, so a read nested inside a callback simply makes its own.
    static PLAINTEXT: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

fn take_plaintext_buffer() -> Box<[u8]> {
    PLAINTEXT
        .with(|slot| slot.take())
        .unwrap_or_else(|| vec![0u8; PLAINTEXT_BATCH].into_boxed_slice())
}

fn return_plaintext_buffer(buffer: Box<[u8]>) {
    PLAINTEXT.with(|slot| slot.set(Some(buffer)));
}

impl TlsLayer {
    /// Ciphertext read from the socket goes into the incoming BIO (called by the socket
    /// transport while it holds its receive buffer; runs no Python code).
    pub(super) fn take_ciphertext(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let incoming = match self.inner.lock().incoming.as_ref() {
            Some(incoming) => incoming.clone_ref(py),
            None => return Ok(()),
        };
        let view = memory_view(py, data.as_ptr().cast_mut(), data.len(), false)?;
        call(incoming.bind(py), intern!(py, "write"), (view,))
    }

    /// After `take_ciphertext`: advance the state machine with what arrived.
    pub(super) fn ciphertext_arrived(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().state() {
            DO_HANDSHAKE => call(slf.as_any(), intern!(py, "_do_handshake"), ()),
            WRAPPED => Self::do_read(slf),
            FLUSHING => call(slf.as_any(), intern!(py, "_do_flush"), ()),
            SHUTDOWN => call(slf.as_any(), intern!(py, "_do_shutdown"), ()),
            _ => Ok(()),
        }
    }

    /// asyncio's `_do_read`: deliver what can be decrypted, then flush, then check the read
    /// limits. An `Exception` becomes a fatal error of the connection.
    pub(super) fn do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (state, paused, backlog) = {
            let inner = this.inner.lock();
            (inner.state, inner.app_reading_paused, !inner.backlog.is_empty())
        };
        if state != WRAPPED && state != FLUSHING {
            return Ok(());
        }
        let outcome = (|| {
            if !paused {
                if let Some(parts) = this.parts(py) {
                    if parts.buffered {
                        Self::read_buffered(slf, &parts)?;
                    } else {
                        Self::read_copied(slf, &parts)?;
                    }
                }
                if backlog || !this.inner.lock().backlog.is_empty() {
                    Self::do_write(slf)?;
                } else {
                    Self::process_outgoing(slf)?;
                }
            }
            Self::control_ssl_reading(slf)
        })();
        Self::fatal_unless_base(slf, outcome, "Fatal error on SSL protocol")
    }

    /// The peer's close_notify: asyncio's eof_received, then the shutdown.
    pub(super) fn close_notify(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        call(slf.as_any(), intern!(py, "_call_eof_received"), ())?;
        call(slf.as_any(), intern!(py, "_start_shutdown"), ())
    }

    pub(super) fn readable_again(&self) -> bool {
        let inner = self.inner.lock();
        (inner.state == WRAPPED || inner.state == FLUSHING) && !inner.app_reading_paused
    }

    /// Plaintext into the per-thread buffer, one `data_received` per full buffer or at the
    /// end; `read()` returning 0 is the peer's close_notify.
    pub(super) fn read_copied(slf: &Bound<'_, Self>, parts: &ReadPass) -> PyResult<()> {
        let py = slf.py();
        let sslobj = parts.sslobj.bind(py);
        let app = parts.app.bind(py);
        let read = intern!(py, "read");
        let mut buffer = take_plaintext_buffer();
        let mut filled = 0usize;
        loop {
            let room = buffer.len() - filled;
            // SAFETY: `filled < buffer.len()`; the buffer stays ours and unmoved for the call.
            let view = memory_view(py, unsafe { buffer.as_mut_ptr().add(filled) }, room, true)?;
            let got = match sslobj.call_method1(read, (room, view)) {
                Ok(count) => count.extract::<usize>()?,
                Err(err) if is_again(py, &err)? => break,
                Err(err) => {
                    return_plaintext_buffer(buffer);
                    return Err(err);
                }
            };
            if got == 0 {
                let data = (filled > 0).then(|| PyBytes::new(py, &buffer[..filled]));
                return_plaintext_buffer(buffer);
                if let Some(data) = data {
                    call(app, intern!(py, "data_received"), (data,))?;
                }
                return Self::close_notify(slf);
            }
            filled += got;
            if !more_to_read(sslobj, parts.incoming.bind(py))? {
                break;
            }
            if filled == buffer.len() {
                let data = PyBytes::new(py, &buffer[..filled]);
                return_plaintext_buffer(buffer);
                call(app, intern!(py, "data_received"), (data,))?;
                if !slf.get().readable_again() {
                    return Ok(());
                }
                buffer = take_plaintext_buffer();
                filled = 0;
            }
        }
        let data = (filled > 0).then(|| PyBytes::new(py, &buffer[..filled]));
        return_plaintext_buffer(buffer);
        match data {
            Some(data) => call(app, intern!(py, "data_received"), (data,)),
            None => Ok(()),
        }
    }

    /// Plaintext straight into the application's `get_buffer()`, then one `buffer_updated`.
    /// The reads go through a view of the buffer's memory, so a `bytearray` buffer is
    /// filled in place too. A filled buffer schedules another pass, as asyncio does.
    pub(super) fn read_buffered(slf: &Bound<'_, Self>, parts: &ReadPass) -> PyResult<()> {
        let py = slf.py();
        let sslobj = parts.sslobj.bind(py);
        let app = parts.app.bind(py);
        let hint = pending(parts.incoming.bind(py))?;
        let buffer = app.call_method1(intern!(py, "get_buffer"), (hint,))?;
        let target = BufferView::get(&buffer, ffi::PyBUF_WRITABLE)?;
        let wants = target.len();
        if wants == 0 {
            return Err(PyRuntimeError::new_err("get_buffer() returned an empty buffer"));
        }
        let mut offset = 0usize;
        let mut closed = false;
        while offset < wants {
            // SAFETY: offset < wants; `target` holds the buffer exported for the whole loop.
            let view = memory_view(py, unsafe { target.as_ptr().add(offset) }, wants - offset, true)?;
            match sslobj.call_method1(intern!(py, "read"), (wants - offset, view)) {
                Ok(count) => {
                    let got: usize = count.extract()?;
                    if got == 0 {
                        closed = true;
                        break;
                    }
                    offset += got;
                    if offset < wants && !more_to_read(sslobj, parts.incoming.bind(py))? {
                        break;
                    }
                }
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            }
        }
        drop(target);
        drop(buffer);
        if offset == wants {
            let event_loop = slf
                .get()
                .inner
                .lock()
                .event_loop
                .as_ref()
                .map(|l| l.clone_ref(py));
            if let Some(event_loop) = event_loop {
                let again = slf.getattr(intern!(py, "_do_read"))?;
                call(event_loop.bind(py), intern!(py, "call_soon"), (again,))?;
            }
        }
        if offset > 0 {
            call(app, intern!(py, "buffer_updated"), (offset,))?;
        }
        if closed {
            return Self::close_notify(slf);
        }
        Ok(())
    }

    /// asyncio's `_control_ssl_reading`: pause the lower transport while the incoming BIO
    /// holds more than the read high-water mark, resume it below the low one.
    pub(super) fn control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(incoming) = this.inner.lock().incoming.as_ref().map(|i| i.clone_ref(py)) else {
            return Ok(());
        };
        let size = pending(incoming.bind(py))?;
        let (action, transport) = {
            let mut inner = this.inner.lock();
            let action = if size >= inner.incoming_high && !inner.ssl_reading_paused {
                inner.ssl_reading_paused = true;
                Some(intern!(py, "pause_reading"))
            } else if size <= inner.incoming_low && inner.ssl_reading_paused {
                inner.ssl_reading_paused = false;
                Some(intern!(py, "resume_reading"))
            } else {
                None
            };
            (action, inner.transport.as_ref().map(|t| t.clone_ref(py)))
        };
        match (action, transport) {
            (Some(name), Some(transport)) => call(transport.bind(py), name, ()),
            _ => Ok(()),
        }
    }
}
