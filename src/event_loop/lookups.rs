//! DNS entry points on `LoopCore`: `getaddrinfo`/`getnameinfo` start on the runtime's blocking
//! pool (`crate::dns`), and the turn resolves the futures of the finished ones.

use pyo3::prelude::*;

use super::{tasks, LoopCore};

impl LoopCore {
    /// Resolves the futures of finished getaddrinfo lookups.
    pub(super) fn complete_lookups(&self, py: Python<'_>) -> PyResult<()> {
        self.dns.complete(py)
    }

    /// `_getaddrinfo_native`: the lookup runs on the blocking pool; the future comes back.
    pub(super) fn start_getaddrinfo<'py>(
        slf: &Bound<'py, Self>,
        host: Option<Vec<u8>>,
        port: Option<Vec<u8>>,
        family: i32,
        r#type: i32,
        proto: i32,
        flags: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let host = crate::dns::c_string(host.as_deref())?;
        let port = crate::dns::c_string(port.as_deref())?;
        let future = tasks::new_future(slf.as_any())?;
        this.dns.start(
            &*this.runtime()?,
            this.wake.clone(),
            future.clone().unbind(),
            host,
            port,
            (family, r#type, proto, flags),
        );
        Ok(future)
    }

    /// `_getnameinfo_native`: the address is parsed here, the lookup runs on the pool.
    pub(super) fn start_getnameinfo<'py>(
        slf: &Bound<'py, Self>,
        host: Vec<u8>,
        port: u16,
        flowinfo: u32,
        scope_id: u32,
        tuple_len: usize,
        flags: i32,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_open()?;
        this.check_same_process()?;
        let host = crate::dns::c_string(Some(&host))?.unwrap_or_default();
        let address = crate::dns::parse_nameinfo_address(py, &host, port, flowinfo, scope_id, tuple_len)?;
        let future = tasks::new_future(slf.as_any())?;
        this.dns.start_nameinfo(
            &*this.runtime()?,
            this.wake.clone(),
            future.clone().unbind(),
            address,
            flags,
        );
        Ok(future)
    }
}
