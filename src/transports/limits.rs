//! asyncio's numbers and small rules that every transport engine shares: the default write
//! limits, the TLS layer's flow-control defaults, how many writes after a lost connection
//! pass silently, and which objects `write()` accepts. Each is written here once; the engines
//! (`stream`, `datagram`, `tls`) use them and export the defaults to Python as class
//! attributes, so `tokioloop._transport` and `tokioloop._tls` never restate them. Owned by
//! the transports; change a value only to follow asyncio.

use pyo3::ffi;
use pyo3::prelude::*;

/// asyncio's default high-water mark for a transport's write buffer; the low one is a quarter.
pub(crate) const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`: writes after a lost connection that are
/// dropped silently before each further one logs a warning.
pub(crate) const LOST_WRITES_BEFORE_WARNING: u32 = 5;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_READ` (256 KiB): the TLS incoming BIO's high mark.
pub(crate) const TLS_INCOMING_HIGH_WATER: usize = 256 * 1024;
/// asyncio's `FLOW_CONTROL_HIGH_WATER_SSL_WRITE` (512 KiB): the TLS write buffer's high mark.
pub(crate) const TLS_OUTGOING_HIGH_WATER: usize = 512 * 1024;

/// asyncio's default low-water mark for a given high one.
pub(crate) const fn low_water_for(high: usize) -> usize {
    high / 4
}

/// Whether `data` is one of the three types asyncio's `write()` accepts (bytes, bytearray,
/// memoryview); each caller raises its own asyncio's error when it is not.
pub(crate) fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    let object = data.as_ptr();
    // SAFETY: type checks on a live object.
    unsafe {
        ffi::PyBytes_Check(object) != 0
            || ffi::PyByteArray_Check(object) != 0
            || ffi::PyMemoryView_Check(object) != 0
    }
}
