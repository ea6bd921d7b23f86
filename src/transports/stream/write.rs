//! The stream engine's write path: `write()` sends at once when nothing is queued and queues
//! what the kernel did not take; a write edge flushes the queue with one `sendmsg` of up to
//! `MAX_SLICES` slices, then tells the Python owner about water marks and a drained buffer.
//! Only `stream/mod.rs` calls in here: `write()` (the pymethod, also the TLS layer's way down)
//! and the turn's `Engine::run`.

use super::*;

impl StreamEngine {
    /// `write()`'s body: see the pymethod in `mod.rs`.
    pub(super) fn send_or_queue(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
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
            let lost = inner.conn_lost;
            inner.conn_lost += 1;
            drop(inner);
            let message = "pipe closed by peer or os.write(pipe, data) raised exception.";
            return limits::drop_lost_write(py, lost, message);
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
            let lost = inner.conn_lost;
            inner.conn_lost += 1;
            drop(inner);
            return limits::drop_lost_write(py, lost, "socket.send() raised exception.");
        }
        let mut offset = 0;
        let start_writing = inner.queue.is_empty();
        if start_writing {
            // SAFETY: `view` covers `len` readable bytes for the duration of the call.
            let n = unsafe { this.kind.write(this.fd, view.as_ptr(), len) };
            if n < 0 {
                let errno = last_errno();
                if !would_block(errno) {
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
        let over_high_water = inner.flow.crosses_high(inner.queued);
        drop(inner);
        drop(view);
        if start_writing {
            this.io.watch(py, this.fd, Direction::Write, true);
            Self::drained(slf, Direction::Write);
        }
        if over_high_water {
            Self::call_owner(slf, intern!(py, "_maybe_pause_protocol"), ())?;
        }
        Ok(())
    }

    pub(super) fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
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
            Err(errno) => {
                let err = os_error(errno);
                return Self::call_owner(slf, intern!(py, "_on_write_error"), (err.into_value(py),));
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
            inner.flow.crosses_low(queued)
        };
        if resume {
            Self::call_owner(slf, intern!(py, "_maybe_resume_protocol"), ())?;
        }
        let (empty, watching_hangup) = {
            let inner = this.inner.lock();
            (
                inner.queue.is_empty(),
                inner.write_only && this.kind == FdKind::Pipe,
            )
        };
        if empty {
            if !watching_hangup {
                this.io.watch(py, this.fd, Direction::Write, false);
            }
            Self::call_owner(slf, intern!(py, "_on_drained"), ())?;
        }
        Ok(())
    }
}
