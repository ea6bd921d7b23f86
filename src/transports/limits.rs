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

/// asyncio's rule for a write after the connection was lost: it is dropped and counted, and
/// from the `LOST_WRITES_BEFORE_WARNING`th on each one logs `message` (the transport kind's
/// own words) on asyncio's logger. Call with the engine's lock released: logging runs Python.
pub(crate) fn drop_lost_write(py: Python<'_>, conn_lost: u32, message: &str) -> PyResult<()> {
    if conn_lost >= LOST_WRITES_BEFORE_WARNING {
        py.import("asyncio.log")?
            .getattr(pyo3::intern!(py, "logger"))?
            .call_method1(pyo3::intern!(py, "warning"), (message,))?;
    }
    Ok(())
}

/// A transport's write flow control, as asyncio's `_FlowControlMixin` keeps it: the marks and
/// whether the protocol was told to pause. The engines keep one under their lock, beside the
/// byte count it is asked about; the water-mark rule itself (defaults, `high >= low >= 0`) is
/// checked on the Python side, which reports asyncio's exact ValueError.
pub(crate) struct WriteFlow {
    high: usize,
    low: usize,
    paused: bool,
}

impl WriteFlow {
    pub(crate) const fn new() -> Self {
        WriteFlow {
            high: DEFAULT_HIGH_WATER,
            low: low_water_for(DEFAULT_HIGH_WATER),
            paused: false,
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused
    }

    /// Above the high mark with the protocol not yet paused: the owner must be asked.
    pub(crate) fn crosses_high(&self, queued: usize) -> bool {
        !self.paused && queued > self.high
    }

    /// Paused and at or below the low mark: the owner must be asked to resume.
    pub(crate) fn crosses_low(&self, queued: usize) -> bool {
        self.paused && queued <= self.low
    }

    /// Marks the protocol paused if `queued` crossed the high mark; true when it did.
    pub(crate) fn pause_if_over(&mut self, queued: usize) -> bool {
        let pause = self.crosses_high(queued);
        self.paused |= pause;
        pause
    }

    /// Marks the protocol resumed if `queued` fell to the low mark; true when it did.
    pub(crate) fn resume_if_under(&mut self, queued: usize) -> bool {
        let resume = self.crosses_low(queued);
        self.paused &= !resume;
        resume
    }

    pub(crate) fn set_limits(&mut self, high: usize, low: usize) {
        self.high = high;
        self.low = low;
    }

    /// `(low, high)`, in asyncio's `get_write_buffer_limits()` order.
    pub(crate) fn limits(&self) -> (usize, usize) {
        (self.low, self.high)
    }
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
