//! `DatagramEngine`: the per-datagram half of a datagram transport (UDP, Unix datagrams).
//!
//! The Python class `tokioloop._datagram.DatagramTransport` keeps what happens once per
//! endpoint (set-up, close and abort, flow-control calls into the protocol, extra info) and
//! registers this engine's bound methods as the socket's reader and writer, so each readiness
//! runs native code with no Python frame of ours: [`DatagramEngine::_read_ready`] receives
//! datagrams (one `recvfrom` each, into the per-thread buffer, then an exact-size `bytes` and
//! `datagram_received`); [`DatagramEngine::sendto`] is the transport's `sendto`, which sends at
//! once when nothing is queued and queues the rest for [`DatagramEngine::_write_ready`].
//! Errors a socket reports (an ICMP refusal on a connected socket among them) go to the
//! protocol's `error_received`, as asyncio's selector transport sends them.
//!
//! Addresses: a received address is made into the object Python's socket module would make
//! (same family rules), and kept with its raw form, so a reply to it (`sendto(data, addr)`
//! with that very object, the usual server pattern) is sent natively. Any other address goes
//! through the Python socket's own `sendto`, which parses it exactly as asyncio's does
//! (resolving a host name included). The lock is never held while Python code runs.
//!
//! Python owner (the methods called by name): `tokioloop._seam.DatagramEngineOwner`, which
//! `DatagramTransport` provides.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use pyo3::{ffi, intern, PyTraverseError, PyVisit};

use crate::errors::{last_errno, os_error};
use crate::io::{recvfrom_with, retry_interrupted, would_block, BufferView, Direction, IoHandle};
use crate::transports::limits::{self, WriteFlow};

/// asyncio's `max_size` for one datagram read.
const MAX_DATAGRAM: usize = 256 * 1024;
/// Datagrams received per readiness before other callbacks get a turn.
const READS_PER_TURN: usize = 32;
/// Senders whose address objects are kept for reuse.
const RECENT_ADDRESSES: usize = 16;

/// A raw socket address as the kernel gave it.
#[derive(Clone)]
struct RawAddress {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddress {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `storage` is plain data of at least `len` bytes.
        unsafe {
            std::slice::from_raw_parts(
                (&self.storage as *const libc::sockaddr_storage).cast::<u8>(),
                self.len as usize,
            )
        }
    }
}

/// The address object Python's socket module makes for a received `sockaddr`.
fn address_object(py: Python<'_>, raw: &RawAddress) -> PyResult<Py<PyAny>> {
    if raw.len == 0 {
        return Ok(py.None());
    }
    let family = raw.storage.ss_family as i32;
    match family {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET address.
            let sin =
                unsafe { &*(&raw.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let host = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string();
            Ok((host, u16::from_be(sin.sin_port))
                .into_pyobject(py)?
                .into_any()
                .unbind())
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 address.
            let sin6 =
                unsafe { &*(&raw.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let mut host = Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_string();
            if sin6.sin6_scope_id != 0 {
                host = numeric_host(raw).unwrap_or(host);
            }
            let port = u16::from_be(sin6.sin6_port);
            let flowinfo = u32::from_be(sin6.sin6_flowinfo);
            Ok((host, port, flowinfo, sin6.sin6_scope_id)
                .into_pyobject(py)?
                .into_any()
                .unbind())
        }
        libc::AF_UNIX => {
            // SAFETY: the kernel wrote a sockaddr_un for an AF_UNIX address.
            let sun =
                unsafe { &*(&raw.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
            let offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            let path_len = (raw.len as usize).saturating_sub(offset).min(sun.sun_path.len());
            // SAFETY: sun_path is an array of c_char; reinterpreting it as bytes is sound.
            let path = unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr().cast::<u8>(), path_len) };
            if path_len > 0 && path[0] == 0 {
                return Ok(PyBytes::new(py, path).into_any().unbind()); // Linux's abstract names
            }
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            // SAFETY: a valid buffer and length; a NULL result has set an exception.
            unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyUnicode_DecodeFSDefaultAndSize(path.as_ptr().cast(), end as ffi::Py_ssize_t),
                )
                .map(Bound::unbind)
            }
        }
        _ => {
            // Another family: let the socket module describe it (rare; not on the hot path).
            Err(PyValueError::new_err(format!(
                "unsupported address family {family}"
            )))
        }
    }
}

/// `getnameinfo(NI_NUMERICHOST)`, as CPython formats an IPv6 host with a scope (`fe80::1%lo`).
fn numeric_host(raw: &RawAddress) -> Option<String> {
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: a valid sockaddr of `len` bytes and a buffer of the given size.
    let rc = unsafe {
        libc::getnameinfo(
            (&raw.storage as *const libc::sockaddr_storage).cast(),
            raw.len,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NUMERICHOST,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string.
    Some(
        unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The outcome of a send made by the Python socket: Ok(None) if sent, Ok(Some(errno)) for an
/// OSError (which the transport reports like its own), any other error as is.
fn os_errno(py: Python<'_>, outcome: PyResult<Bound<'_, PyAny>>) -> PyResult<Option<i32>> {
    match outcome {
        Ok(_) => Ok(None),
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
            match err
                .value(py)
                .getattr(intern!(py, "errno"))
                .ok()
                .and_then(|e| e.extract::<i32>().ok())
            {
                Some(errno) => Ok(Some(errno)),
                None => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

struct Inner {
    protocol: Option<Py<PyAny>>,
    /// asyncio's `_address`: the remote given at creation; `sendto` accepts only it or None.
    address: Option<Py<PyAny>>,
    /// The socket has a peer (`peername` is set): datagrams go out with `send`.
    peer_connected: bool,
    conn_lost: u32,
    closing: bool,
    /// Reading is paused (or not started): a readiness callback still queued does nothing.
    reading: bool,
    queue: VecDeque<(Py<PyBytes>, Option<Py<PyAny>>)>,
    /// Bytes queued, plus `header` per datagram (3.13 counts 8 per datagram).
    queued: usize,
    header: usize,
    /// Empty datagrams are sent (3.13) rather than dropped (3.11/3.12).
    send_empty: bool,
    flow: WriteFlow,
    /// The latest senders' addresses handed to `datagram_received`, with their raw forms
    /// (most recent last): a server answering a few clients in turn makes each only once.
    recent_addresses: Vec<(RawAddress, Py<PyAny>)>,
}

#[pyclass(frozen, module = "tokioloop._tokioloop")]
pub struct DatagramEngine {
    fd: RawFd,
    /// The loop's fd registrations: told when a read found the socket drained (no poll(2)
    /// next turn). Not traversed: the loop traverses the registry.
    io: IoHandle,
    /// The Python socket: its `sendto` parses addresses this engine does not know.
    sock: Py<PyAny>,
    /// The Python transport, for the rare paths it implements; dropped at `_detach`.
    owner: Mutex<Option<Py<PyAny>>>,
    inner: Mutex<Inner>,
}

impl DatagramEngine {
    fn owner<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.owner.lock().as_ref().map(|o| o.clone_ref(py).into_bound(py))
    }

    fn call_owner<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> PyResult<()> {
        match self.owner(py) {
            Some(owner) => owner.call_method1(name, args).map(drop),
            None => Ok(()),
        }
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.inner
            .lock()
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py).into_bound(py))
    }

    /// An OSError the socket reported goes to `protocol.error_received`.
    fn error_received(&self, py: Python<'_>, errno: i32) -> PyResult<()> {
        match self.protocol(py) {
            Some(protocol) => protocol
                .call_method1(intern!(py, "error_received"), (os_error(errno).into_value(py),))
                .map(drop),
            None => Ok(()),
        }
    }

    /// The address object for `raw`, reusing a recent sender's.
    fn address_for(&self, py: Python<'_>, raw: RawAddress) -> PyResult<Py<PyAny>> {
        if let Some((_, object)) = self
            .inner
            .lock()
            .recent_addresses
            .iter()
            .rev()
            .find(|(known, _)| known.bytes() == raw.bytes())
        {
            return Ok(object.clone_ref(py));
        }
        let object = address_object(py, &raw)?;
        let evicted = {
            let mut inner = self.inner.lock();
            let evicted =
                (inner.recent_addresses.len() >= RECENT_ADDRESSES).then(|| inner.recent_addresses.remove(0));
            inner.recent_addresses.push((raw, object.clone_ref(py)));
            evicted
        };
        drop(evicted);
        Ok(object)
    }

    /// One send of `data` to `addr` (None: the connected peer). Ok(None) if it went out,
    /// Ok(Some(errno)) if the kernel refused it with an OS error.
    fn send_one(
        &self,
        py: Python<'_>,
        data: &[u8],
        data_object: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
        peer_connected: bool,
    ) -> PyResult<Option<i32>> {
        let known = match addr {
            Some(addr) if !peer_connected => {
                let inner = self.inner.lock();
                inner
                    .recent_addresses
                    .iter()
                    .rev()
                    .find(|(_, object)| object.as_ptr() == addr.as_ptr())
                    .map(|(raw, _)| raw.clone())
            }
            _ => None,
        };
        let n = match (addr, known) {
            (None, _) | (Some(_), _) if peer_connected => {
                // SAFETY: `data` is a live buffer of its length for the call.
                retry_interrupted(|| unsafe {
                    libc::send(self.fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL)
                })
            }
            (Some(_), Some(raw)) => {
                // SAFETY: as above; `raw` is a sockaddr the kernel gave us.
                retry_interrupted(|| unsafe {
                    libc::sendto(
                        self.fd,
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_NOSIGNAL,
                        (&raw.storage as *const libc::sockaddr_storage).cast(),
                        raw.len,
                    )
                })
            }
            (Some(addr), None) => {
                // An address we did not make: the socket module parses it, as in asyncio.
                return os_errno(
                    py,
                    self.sock
                        .bind(py)
                        .call_method1(intern!(py, "sendto"), (data_object, addr)),
                );
            }
            (None, _) => {
                // Unconnected and no address: the socket module answers as asyncio's would.
                return os_errno(
                    py,
                    self.sock
                        .bind(py)
                        .call_method1(intern!(py, "send"), (data_object,)),
                );
            }
        };
        if n < 0 {
            Ok(Some(last_errno()))
        } else {
            Ok(None)
        }
    }
}

#[pymethods]
impl DatagramEngine {
    /// `DatagramEngine(loop, sock, owner, header, send_empty)`: the engine of the transport
    /// `owner`.
    #[new]
    fn new(
        r#loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        owner: Py<PyAny>,
        header: usize,
        send_empty: bool,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
        Ok(DatagramEngine {
            fd,
            io: IoHandle::of(r#loop)?,
            sock: sock.clone().unbind(),
            owner: Mutex::new(Some(owner)),
            inner: Mutex::new(Inner {
                protocol: None,
                address: None,
                peer_connected: false,
                conn_lost: 0,
                closing: false,
                reading: false,
                queue: VecDeque::new(),
                queued: 0,
                header,
                send_empty,
                flow: WriteFlow::new(),
                recent_addresses: Vec::new(),
            }),
        })
    }

    fn _set_protocol(&self, protocol: Py<PyAny>) -> Option<Py<PyAny>> {
        self.inner.lock().protocol.replace(protocol)
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner.lock().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn _set_address(&self, address: Option<Py<PyAny>>, peer_connected: bool) {
        let mut inner = self.inner.lock();
        inner.address = address;
        inner.peer_connected = peer_connected;
    }

    /// The reader callback: receive what is waiting (up to a batch) and deliver it.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        for _ in 0..READS_PER_TURN {
            let protocol = {
                let inner = this.inner.lock();
                if inner.conn_lost > 0 || !inner.reading {
                    return Ok(());
                }
                match inner.protocol.as_ref() {
                    Some(p) => p.clone_ref(py),
                    None => return Ok(()),
                }
            };
            let received = recvfrom_with(this.fd, MAX_DATAGRAM, |data, storage, len| {
                (
                    PyBytes::new(py, data).unbind(),
                    RawAddress {
                        storage: *storage,
                        len,
                    },
                )
            });
            match received {
                Err(errno) if would_block(errno) => {
                    this.io.settle(this.fd, Direction::Read);
                    return Ok(());
                }
                Err(errno) => return this.error_received(py, errno),
                Ok((data, raw)) => {
                    let address = match this.address_for(py, raw) {
                        Ok(address) => address,
                        Err(err) => {
                            return this.call_owner(
                                py,
                                intern!(py, "_fatal_error"),
                                (err.into_value(py), "Fatal read error on datagram transport"),
                            );
                        }
                    };
                    protocol
                        .bind(py)
                        .call_method1(intern!(py, "datagram_received"), (data, address))?;
                }
            }
        }
        Ok(())
    }

    /// The transport's `sendto(data, addr=None)`, with asyncio's checks and order.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        crate::fault_point!("datagram_sendto");
        let py = slf.py();
        let this = slf.get();
        if !limits::is_bytes_like(data) {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        }
        let view = BufferView::get(data, ffi::PyBUF_SIMPLE)?;
        let (address, peer_connected, send_empty) = {
            let inner = this.inner.lock();
            (
                inner.address.as_ref().map(|a| a.clone_ref(py)),
                inner.peer_connected,
                inner.send_empty,
            )
        };
        if view.len() == 0 && !send_empty {
            return Ok(());
        }
        let mut addr = addr.filter(|a| !a.is_none());
        if let Some(address) = address.as_ref() {
            if let Some(given) = addr.as_ref() {
                if !given.is(address) && !given.eq(address)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        address.bind(py).str()?
                    )));
                }
            }
            addr = Some(address.bind(py).clone());
        }
        {
            let mut inner = this.inner.lock();
            if inner.conn_lost > 0 && inner.address.is_some() {
                let lost = inner.conn_lost;
                inner.conn_lost += 1;
                drop(inner);
                return limits::drop_lost_write(py, lost, "socket.send() raised exception.");
            }
        }
        // SAFETY: the view covers `len` readable bytes while it lives.
        let bytes = unsafe { std::slice::from_raw_parts(view.as_ptr(), view.len()) };
        let queue_empty = this.inner.lock().queue.is_empty();
        if queue_empty {
            match this.send_one(py, bytes, data, addr.as_ref(), peer_connected) {
                Ok(None) => return Ok(()),
                Ok(Some(errno)) if would_block(errno) => {
                    this.call_owner(py, intern!(py, "_start_writing"), ())?;
                }
                Ok(Some(errno)) => return this.error_received(py, errno),
                Err(err) if crate::errors::is_fatal(py, &err) => return Err(err),
                Err(err) => {
                    return this.call_owner(
                        py,
                        intern!(py, "_fatal_error"),
                        (err.into_value(py), "Fatal write error on datagram transport"),
                    );
                }
            }
        }
        // What is queued is immutable: a copy unless it already is bytes.
        let chunk = match data.cast::<PyBytes>() {
            Ok(b) => b.clone().unbind(),
            Err(_) => PyBytes::new(py, bytes).unbind(),
        };
        let over = {
            let mut inner = this.inner.lock();
            inner.queued += bytes.len() + inner.header;
            inner.queue.push_back((chunk, addr.map(Bound::unbind)));
            inner.flow.crosses_high(inner.queued)
        };
        if over {
            this.call_owner(py, intern!(py, "_maybe_pause_protocol"), ())?;
        }
        Ok(())
    }

    /// The writer callback: send what is queued, in order, until the kernel pushes back.
    fn _write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let (front, peer_connected) = {
                let mut inner = this.inner.lock();
                let Some(front) = inner.queue.pop_front() else {
                    break;
                };
                let size = front.0.bind(py).as_bytes().len() + inner.header;
                inner.queued -= size.min(inner.queued);
                (front, inner.peer_connected)
            };
            let (data, addr) = front;
            let bound = data.bind(py);
            let outcome = this.send_one(
                py,
                bound.as_bytes(),
                bound.as_any(),
                addr.as_ref().map(|a| a.bind(py)),
                peer_connected,
            );
            match outcome {
                Ok(None) => {}
                Ok(Some(errno)) if would_block(errno) => {
                    let mut inner = this.inner.lock();
                    inner.queued += bound.as_bytes().len() + inner.header;
                    inner.queue.push_front((data, addr));
                    break;
                }
                Ok(Some(errno)) => return this.error_received(py, errno),
                Err(err) if crate::errors::is_fatal(py, &err) => return Err(err),
                Err(err) => {
                    return this.call_owner(
                        py,
                        intern!(py, "_fatal_error"),
                        (err.into_value(py), "Fatal write error on datagram transport"),
                    );
                }
            }
        }
        this.call_owner(py, intern!(py, "_maybe_resume_protocol"), ())?;
        let empty = this.inner.lock().queue.is_empty();
        if empty {
            this.call_owner(py, intern!(py, "_on_drained"), ())?;
        }
        Ok(())
    }

    fn get_write_buffer_size(&self) -> usize {
        self.inner.lock().queued
    }

    fn _clear_queue(&self) {
        let queue = {
            let mut inner = self.inner.lock();
            inner.queued = 0;
            std::mem::take(&mut inner.queue)
        };
        drop(queue);
    }

    /// Lets go of the transport, the protocol and the last sender's address (after
    /// connection_lost). The remote address stays: writes after the loss are still checked
    /// against it and dropped, as asyncio's are.
    fn _detach(&self) {
        let (owner, protocol, last) = {
            let mut inner = self.inner.lock();
            (
                self.owner.lock().take(),
                inner.protocol.take(),
                std::mem::take(&mut inner.recent_addresses),
            )
        };
        drop((owner, protocol, last));
        self._clear_queue();
    }

    // Python reads the flags below but changes them only through these verbs, so each rule
    // sits next to the flag it guards.
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

    #[getter]
    fn _closing(&self) -> bool {
        self.inner.lock().closing
    }

    /// Marks the transport closing; False if it already was (the caller then does nothing).
    fn _begin_close(&self) -> bool {
        !std::mem::replace(&mut self.inner.lock().closing, true)
    }

    /// The transport registered (True) or removed (False) this engine's reader: a readiness
    /// callback still queued after the removal then does nothing.
    fn _set_reading(&self, on: bool) {
        self.inner.lock().reading = on;
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

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.sock)?;
        if let Some(owner) = self.owner.try_lock() {
            if let Some(owner) = owner.as_ref() {
                visit.call(owner)?;
            }
        }
        if let Some(inner) = self.inner.try_lock() {
            for object in [&inner.protocol, &inner.address].into_iter().flatten() {
                visit.call(object)?;
            }
            for (_, address) in inner.recent_addresses.iter() {
                visit.call(address)?;
            }
            for (_, addr) in inner.queue.iter() {
                if let Some(addr) = addr {
                    visit.call(addr)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self._detach();
        let address = self.inner.lock().address.take();
        drop(address);
    }
}
