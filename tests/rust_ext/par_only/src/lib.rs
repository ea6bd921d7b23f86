//! `par_only`: a Python extension whose async functions are Rust futures handed to Python through
//! pyo3-async-runtimes' tokio bridge, written as an extension author writes them today, with no
//! knowledge of which asyncio loop awaits them. tests/test_rust_bridge_compat.py awaits them on
//! asyncio, uvloop and tokioloop and expects the same outcomes. Only that test touches this crate.
//!
//! Modules: `leaves` (futures that touch only Rust), `net` (a TCP round trip on the bridge's
//! runtime), `python_calls` (futures that call back into Python: `into_future`, the `run` entries),
//! `probes` (observers the tests use: a drop probe and a gate).

mod leaves;
mod net;
mod probes;
mod python_calls;

use std::time::Duration;

use pyo3::prelude::*;
use pyo3_async_runtimes::err::RustPanic;

/// pyo3-async-runtimes completes every future from a thread of the runtime's blocking pool, and
/// each of those threads only waits for the GIL to call `call_soon_threadsafe`. tokio's defaults
/// (up to 512 of them, idle ones kept 10 s) leave hundreds of threads behind a gather of 10k,
/// longer than the suite's per-test thread accounting (tests/_leaks.py) waits for threads to go
/// on a loaded machine. A few threads do the same work, one at a time as the GIL allows anyway.
const BLOCKING_THREADS: usize = 8;
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_millis(100);

/// Builds pyo3-async-runtimes' runtime now rather than on the first future, so that its worker
/// threads and driver descriptors predate every test instead of appearing inside one. Apart from
/// the blocking pool's size and keep-alive it is the crate's default: multi-thread, every driver.
fn start_bridge_runtime() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE);
    pyo3_async_runtimes::tokio::init(builder);
    pyo3_async_runtimes::tokio::get_runtime();
}

#[pymodule]
fn par_only(module: &Bound<'_, PyModule>) -> PyResult<()> {
    start_bridge_runtime();
    module.add_function(wrap_pyfunction!(leaves::ready, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::yield_once, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::sleep_ms, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::fail, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::panic, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::thread_id, module)?)?;
    module.add_function(wrap_pyfunction!(net::tcp_roundtrip, module)?)?;
    module.add_function(wrap_pyfunction!(python_calls::call_coro, module)?)?;
    module.add_function(wrap_pyfunction!(python_calls::call_sync, module)?)?;
    module.add_function(wrap_pyfunction!(python_calls::run, module)?)?;
    module.add_function(wrap_pyfunction!(python_calls::run_until_complete, module)?)?;
    module.add_function(wrap_pyfunction!(probes::cancel_probe, module)?)?;
    module.add_class::<probes::DropProbe>()?;
    module.add_class::<probes::Gate>()?;
    // The exception a panicking future raises; its class lives in pyo3-async-runtimes (module
    // name "pyo3_async_runtimes"), one copy per extension, so the tests need it from here.
    module.add("RustPanic", module.py().get_type::<RustPanic>())?;
    Ok(())
}
