//! The TLS layer's write side: the application's `write` encrypted at once when nothing is
//! queued, the backlog for what OpenSSL cannot take yet, and the records handed to the lower
//! stream engine's native `write` (`process_outgoing`).

use super::*;

impl TlsLayer {
    /// asyncio's `_do_write`: the backlog into OpenSSL until it is empty or OpenSSL needs
    /// input first, then the records out.
    pub(super) fn do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let (sslobj, front, head) = {
                let inner = this.inner.lock();
                match (inner.sslobj.as_ref(), inner.backlog.front()) {
                    (Some(sslobj), Some(front)) => {
                        (sslobj.clone_ref(py), front.clone_ref(py), inner.backlog_head)
                    }
                    _ => break,
                }
            };
            let bytes = front.bind(py);
            let len = bytes.as_bytes().len();
            let view = memory_view(
                py,
                bytes.as_bytes()[head..].as_ptr().cast_mut(),
                len - head,
                false,
            )?;
            let taken = match sslobj.bind(py).call_method1(intern!(py, "write"), (view,)) {
                Ok(count) => count.extract::<usize>()?,
                Err(err) if is_again(py, &err)? => break,
                Err(err) => return Err(err),
            };
            let mut inner = this.inner.lock();
            inner.backlog_size -= taken.min(inner.backlog_size);
            if head + taken >= len {
                let done = inner.backlog.pop_front();
                inner.backlog_head = 0;
                drop(inner);
                drop(done);
            } else {
                inner.backlog_head = head + taken;
            }
        }
        Self::process_outgoing(slf)
    }

    /// asyncio's `_process_outgoing`: the records OpenSSL made go to the lower transport
    /// (unless it asked us to pause), then the application's write limits are checked.
    pub(super) fn process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (outgoing, paused, transport, lower) = {
            let inner = this.inner.lock();
            let Some(outgoing) = inner.outgoing.as_ref() else {
                return Ok(());
            };
            (
                outgoing.clone_ref(py),
                inner.ssl_writing_paused,
                inner.transport.as_ref().map(|t| t.clone_ref(py)),
                inner.lower.as_ref().map(|l| l.clone_ref(py)),
            )
        };
        let outgoing = outgoing.bind(py);
        let mut left_in_bio = 0;
        if !paused {
            let records = outgoing.call_method0(intern!(py, "read"))?;
            if !records.cast::<PyBytes>()?.as_bytes().is_empty() {
                match (lower, transport) {
                    (Some(lower), _) => StreamEngine::write(lower.bind(py), &records)?,
                    (None, Some(transport)) => call(transport.bind(py), intern!(py, "write"), (records,))?,
                    (None, None) => {}
                }
            }
        } else {
            left_in_bio = pending(outgoing)?;
        }
        let crossed = {
            let inner = this.inner.lock();
            let size = left_in_bio + inner.backlog_size;
            (size >= inner.outgoing_high && !inner.app_writing_paused)
                || (size <= inner.outgoing_low && inner.app_writing_paused)
        };
        if crossed {
            call(slf.as_any(), intern!(py, "_control_app_writing"), ())?;
        }
        Ok(())
    }

    /// Queues `data` (bytes are kept, other buffers copied: the caller may reuse them).
    pub(super) fn queue(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        view: &BufferView,
        from: usize,
    ) -> PyResult<()> {
        let chunk = match data.cast::<PyBytes>() {
            Ok(bytes) if from == 0 => bytes.clone().unbind(),
            _ => {
                // SAFETY: from <= len; the view is alive.
                let rest = unsafe { std::slice::from_raw_parts(view.as_ptr().add(from), view.len() - from) };
                PyBytes::new(py, rest).unbind()
            }
        };
        let mut inner = self.inner.lock();
        if inner.backlog.is_empty() {
            inner.backlog_head = 0;
        }
        inner.backlog_size += view.len() - from;
        inner.backlog.push_back(chunk);
        Ok(())
    }

    /// The application's write, minus the type check: asyncio's `_write_appdata` for one
    /// buffer, with a direct path when nothing is queued.
    pub(super) fn write_appdata(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let view = BufferView::get(data, ffi::PyBUF_SIMPLE)?;
        if view.len() == 0 {
            return Ok(());
        }
        let (state, direct) = {
            let mut inner = this.inner.lock();
            if inner.state == FLUSHING || inner.state == SHUTDOWN || inner.state == UNWRAPPED {
                let lost = inner.conn_lost;
                inner.conn_lost += 1;
                drop(inner);
                return limits::drop_lost_write(py, lost, "SSL connection is closed");
            }
            let direct = if inner.state == WRAPPED && inner.backlog.is_empty() {
                inner.sslobj.as_ref().map(|s| s.clone_ref(py))
            } else {
                None
            };
            (inner.state, direct)
        };
        let outcome = (|| {
            if let Some(sslobj) = direct {
                match sslobj.bind(py).call_method1(intern!(py, "write"), (data,)) {
                    Ok(count) => {
                        let taken: usize = count.extract()?;
                        if taken < view.len() {
                            this.queue(py, data, &view, taken)?;
                        }
                        Self::process_outgoing(slf)
                    }
                    Err(err) if is_again(py, &err)? => {
                        this.queue(py, data, &view, 0)?;
                        Self::process_outgoing(slf)
                    }
                    Err(err) => Err(err),
                }
            } else {
                this.queue(py, data, &view, 0)?;
                if state == WRAPPED {
                    Self::do_write(slf)
                } else {
                    Ok(())
                }
            }
        })();
        drop(view);
        Self::fatal_unless_base(slf, outcome, "Fatal error on SSL protocol")
    }
}
