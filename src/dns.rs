//! `getaddrinfo` and `getnameinfo` on tokio's blocking pool, without the GIL.
//!
//! The loop thread turns the Python arguments into C strings and hands the lookup to one of the
//! runtime's blocking threads, which calls libc `getaddrinfo` holding no Python object at all;
//! its answer (plain Rust data) goes into [`Completions`] and wakes the loop. The next turn
//! resolves the waiting `asyncio.Future` on the loop thread, building the Python tuples with
//! the `socket` module's own helpers so the result is exactly `socket.getaddrinfo`'s. For
//! `getnameinfo` the loop thread parses the address as CPython does (a numeric-only
//! getaddrinfo, no I/O) and only the reverse lookup goes to the pool. Only `event_loop`
//! calls in here.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Arc;

use crate::io::{Handoff, Wake};
use parking_lot::Mutex;
use pyo3::exceptions::PyOSError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use pyo3::{PyTraverseError, PyVisit};

/// One address as libc gave it: (family, type, proto, canonname, address bytes, port,
/// flowinfo, scope id). The address is the packed IP for AF_INET/AF_INET6.
type RawInfo = (i32, i32, i32, String, Vec<u8>, u16, u32, u32);

pub(crate) enum Outcome {
    Found(Vec<RawInfo>),
    /// An EAI_* code and libc's text for it (EAI_SYSTEM is reported as `Errno`).
    Gai(i32, String),
    Errno(i32),
    /// getnameinfo's (host, service).
    Name(String, String),
    /// The lookup panicked; the future gets a `PanicException` with this message instead of
    /// waiting forever (tokio would swallow the panic on its blocking thread).
    Panicked(String),
}

/// A socket address as getnameinfo(3) takes it.
pub struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

// SAFETY: plain bytes; moved to the blocking thread and read only there.
unsafe impl Send for RawSockAddr {}

/// Answers delivered by blocking threads, waiting for the loop's next turn (the protocol:
/// `io::Handoff`; its loom model is `loom_model` here).
pub type Completions = Handoff<(u64, Outcome)>;

/// The loop's side: futures waiting for an answer, by lookup id.
#[derive(Default)]
pub struct Lookups {
    waiting: Mutex<HashMap<u64, Py<PyAny>>>,
    next_id: Mutex<u64>,
    pub completions: Arc<Completions>,
}

impl Lookups {
    /// Lookups started and not yet completed (telemetry).
    pub fn in_flight(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Starts a lookup on the runtime's blocking pool; `future` gets the answer.
    pub fn start(
        &self,
        runtime: &tokio::runtime::Runtime,
        wake: Arc<Wake>,
        future: Py<PyAny>,
        host: Option<CString>,
        port: Option<CString>,
        hints: (i32, i32, i32, i32),
    ) {
        self.run(runtime, wake, future, move || {
            lookup(host.as_deref(), port.as_deref(), hints)
        });
    }

    /// Starts a reverse lookup of an address parsed by [`parse_nameinfo_address`].
    pub fn start_nameinfo(
        &self,
        runtime: &tokio::runtime::Runtime,
        wake: Arc<Wake>,
        future: Py<PyAny>,
        address: RawSockAddr,
        flags: i32,
    ) {
        self.run(runtime, wake, future, move || reverse_lookup(&address, flags));
    }

    fn run(
        &self,
        runtime: &tokio::runtime::Runtime,
        wake: Arc<Wake>,
        future: Py<PyAny>,
        work: impl FnOnce() -> Outcome + Send + 'static,
    ) {
        let id = {
            let mut next = self.next_id.lock();
            *next += 1;
            *next
        };
        self.waiting.lock().insert(id, future);
        let completions = self.completions.clone();
        runtime.spawn_blocking(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::fault_point!("dns_worker");
                work()
            }))
            .unwrap_or_else(|panic| Outcome::Panicked(crate::errors::panic_message(&*panic)));
            completions.publish((id, outcome), &wake);
        });
    }

    /// Resolves the futures whose answers arrived; call on the loop thread.
    pub fn complete(&self, py: Python<'_>) -> PyResult<()> {
        let Some(answers) = self.completions.take() else {
            return Ok(());
        };
        for (id, outcome) in answers {
            let Some(future) = self.waiting.lock().remove(&id) else {
                continue;
            };
            let future = future.bind(py);
            if future.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                continue;
            }
            match to_python(py, outcome) {
                Ok(infos) => future.call_method1(intern!(py, "set_result"), (infos,))?,
                Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
            };
        }
        Ok(())
    }

    /// Forgets every waiting future (loop close); their lookups finish unheard.
    pub fn clear(&self) -> Vec<Py<PyAny>> {
        self.waiting.lock().drain().map(|(_, f)| f).collect()
    }

    /// For the loop's GC traversal: the futures it keeps alive.
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(waiting) = self.waiting.try_lock() {
            for future in waiting.values() {
                visit.call(future)?;
            }
        }
        Ok(())
    }
}

fn to_python(py: Python<'_>, outcome: Outcome) -> PyResult<Bound<'_, PyAny>> {
    match outcome {
        Outcome::Found(infos) => {
            let raw = PyList::empty(py);
            for (family, kind, proto, canon, address, port, flowinfo, scope) in infos {
                raw.append((
                    family,
                    kind,
                    proto,
                    canon,
                    PyBytes::new(py, &address),
                    port,
                    flowinfo,
                    scope,
                ))?;
            }
            py.import("tokioloop._dns")?
                .getattr(intern!(py, "infos_from_native"))?
                .call1((raw,))
        }
        Outcome::Gai(code, message) => {
            let gaierror = py.import("socket")?.getattr(intern!(py, "gaierror"))?;
            Err(PyErr::from_value(gaierror.call1((code, message))?))
        }
        Outcome::Errno(errno) => Err(crate::errors::os_error(errno)),
        Outcome::Name(host, service) => Ok((host, service).into_pyobject(py)?.into_any()),
        Outcome::Panicked(message) => Err(pyo3::panic::PanicException::new_err(message)),
    }
}

/// The blocking call itself: no Python here.
fn lookup(
    host: Option<&CStr>,
    port: Option<&CStr>,
    (family, kind, proto, flags): (i32, i32, i32, i32),
) -> Outcome {
    // SAFETY: `hints` is zeroed and then filled as getaddrinfo(3) documents; `list` is only
    // read when the call succeeded and is freed exactly once with freeaddrinfo.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = family;
        hints.ai_socktype = kind;
        hints.ai_protocol = proto;
        hints.ai_flags = flags;
        let mut list: *mut libc::addrinfo = std::ptr::null_mut();
        let code = libc::getaddrinfo(
            host.map_or(std::ptr::null(), CStr::as_ptr),
            port.map_or(std::ptr::null(), CStr::as_ptr),
            &hints,
            &mut list,
        );
        if code != 0 {
            return gai_error(code);
        }
        let mut infos = Vec::new();
        let mut entry = list;
        while !entry.is_null() {
            let info = &*entry;
            let canon = if info.ai_canonname.is_null() {
                String::new()
            } else {
                CStr::from_ptr(info.ai_canonname).to_string_lossy().into_owned()
            };
            if let Some((address, port, flowinfo, scope)) = read_sockaddr(info) {
                infos.push((
                    info.ai_family,
                    info.ai_socktype,
                    info.ai_protocol,
                    canon,
                    address,
                    port,
                    flowinfo,
                    scope,
                ));
            }
            entry = info.ai_next;
        }
        libc::freeaddrinfo(list);
        Outcome::Found(infos)
    }
}

/// (packed address, port, flowinfo, scope id) of an AF_INET/AF_INET6 entry.
///
/// # Safety
/// `info.ai_addr` must point to a sockaddr of `info.ai_addrlen` bytes, as getaddrinfo gives.
unsafe fn read_sockaddr(info: &libc::addrinfo) -> Option<(Vec<u8>, u16, u32, u32)> {
    if info.ai_addr.is_null() {
        return None;
    }
    match info.ai_family {
        libc::AF_INET if info.ai_addrlen as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length checked above.
            let sin = unsafe { &*(info.ai_addr as *const libc::sockaddr_in) };
            Some((
                sin.sin_addr.s_addr.to_ne_bytes().to_vec(),
                u16::from_be(sin.sin_port),
                0,
                0,
            ))
        }
        libc::AF_INET6 if info.ai_addrlen as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length checked above.
            let sin6 = unsafe { &*(info.ai_addr as *const libc::sockaddr_in6) };
            Some((
                sin6.sin6_addr.s6_addr.to_vec(),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            ))
        }
        _ => None,
    }
}

/// Converts the optional host/port arguments, already bytes, into C strings.
pub fn c_string(value: Option<&[u8]>) -> PyResult<Option<CString>> {
    value
        .map(|bytes| CString::new(bytes).map_err(|_| PyOSError::new_err("embedded null character")))
        .transpose()
}

fn gai_error(code: i32) -> Outcome {
    if code == libc::EAI_SYSTEM {
        return Outcome::Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        );
    }
    // SAFETY: gai_strerror returns a static NUL-terminated string for any code.
    let message = unsafe { CStr::from_ptr(libc::gai_strerror(code)) }
        .to_string_lossy()
        .into_owned();
    Outcome::Gai(code, message)
}

fn outcome_error(py: Python<'_>, outcome: Outcome) -> PyErr {
    match to_python(py, outcome) {
        Err(err) => err,
        Ok(_) => pyo3::exceptions::PySystemError::new_err("lookup error expected"),
    }
}

/// CPython's socket.getnameinfo address step, on the loop thread: `host` must be numeric
/// (AI_NUMERICHOST: no I/O), exactly one address, IPv4 only as a 2-tuple. Errors are the
/// ones socket.getnameinfo raises.
pub fn parse_nameinfo_address(
    py: Python<'_>,
    host: &CStr,
    port: u16,
    flowinfo: u32,
    scope_id: u32,
    tuple_len: usize,
) -> PyResult<RawSockAddr> {
    let service = CString::new(port.to_string()).map_err(|_| PyOSError::new_err("bad port"))?;
    // SAFETY: as in `lookup`: zeroed hints, the list read only on success and freed once.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_UNSPEC;
        hints.ai_socktype = libc::SOCK_DGRAM;
        hints.ai_flags = libc::AI_NUMERICHOST;
        let mut list: *mut libc::addrinfo = std::ptr::null_mut();
        let code = libc::getaddrinfo(host.as_ptr(), service.as_ptr(), &hints, &mut list);
        if code != 0 {
            return Err(outcome_error(py, gai_error(code)));
        }
        let info = &*list;
        let result = if !info.ai_next.is_null() {
            Err(PyOSError::new_err("sockaddr resolved to multiple addresses"))
        } else if info.ai_family == libc::AF_INET && tuple_len != 2 {
            Err(PyOSError::new_err("IPv4 sockaddr must be 2 tuple"))
        } else {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let len = (info.ai_addrlen as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
            std::ptr::copy_nonoverlapping(
                info.ai_addr.cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            );
            if info.ai_family == libc::AF_INET6 {
                let sin6 = &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_flowinfo = flowinfo.to_be();
                sin6.sin6_scope_id = scope_id;
            }
            Ok(RawSockAddr {
                storage,
                len: len as libc::socklen_t,
            })
        };
        libc::freeaddrinfo(list);
        result
    }
}

/// The blocking reverse lookup: no Python here.
fn reverse_lookup(address: &RawSockAddr, flags: i32) -> Outcome {
    let mut host = [0 as libc::c_char; 1025];
    let mut service = [0 as libc::c_char; 32];
    // SAFETY: the address is a sockaddr of `len` bytes; the buffers' sizes are passed.
    let code = unsafe {
        libc::getnameinfo(
            (&address.storage as *const libc::sockaddr_storage).cast(),
            address.len,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            service.as_mut_ptr(),
            service.len() as libc::socklen_t,
            flags,
        )
    };
    if code != 0 {
        return gai_error(code);
    }
    // SAFETY: on success both buffers hold NUL-terminated strings.
    let text = |buffer: &[libc::c_char]| {
        unsafe { CStr::from_ptr(buffer.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Outcome::Name(text(&host), text(&service))
}

#[cfg(all(test, tokioloop_loom))]
mod loom_model;
