//! `bridge_demo`: a Python extension whose async functions are Rust futures handed to Python by
//! `tokioloop_rs::future_into_py`, native on tokioloop (polled on the loop's thread) and
//! pyo3-async-runtimes' elsewhere. tests/test_rust_bridge_native.py awaits them on asyncio,
//! uvloop and tokioloop; only that test touches this crate.
//!
//! Modules: `leaves` (futures that touch only Rust: ready, yield once, sleeps, errors, panics),
//! `observe` (where and how a future ran: thread, mode, contextvars, `into_future`), `probes` (a drop probe and
//! a gate the tests watch futures with), `net` (TCP, UDP and Unix clients and echo servers on
//! `tokioloop_rs::net`), `extras` (`current()`'s `LoopRef::spawn`, `task::spawn_blocking`,
//! `task::yield_now`).

mod extras;
mod leaves;
mod net;
mod observe;
mod probes;

use std::time::Duration;

use pyo3::prelude::*;

/// The fallback completes every future from a thread of the runtime's blocking pool; tokio's
/// defaults (up to 512, idle ones kept 10 s) leave hundreds behind a gather of 10k, longer than
/// the suite's per-test thread accounting (tests/_leaks.py) waits. A few do the same work.
const BLOCKING_THREADS: usize = 8;
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_millis(100);

/// Builds the extension's tokio runtime (pyo3-async-runtimes' one, which tokioloop_rs's native
/// polls enter too) now, so that its worker threads predate every test instead of appearing
/// inside one, in particular the test that counts threads around native awaits.
fn start_runtime() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE);
    pyo3_async_runtimes::tokio::init(builder);
    pyo3_async_runtimes::tokio::get_runtime();
}

#[pymodule]
fn bridge_demo(module: &Bound<'_, PyModule>) -> PyResult<()> {
    start_runtime();
    module.add_function(wrap_pyfunction!(leaves::ready, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::yield_once, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::sleep_ms, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::tokio_sleep_ms, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::timeout_ms, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::fail, module)?)?;
    module.add_function(wrap_pyfunction!(leaves::panic, module)?)?;
    module.add_function(wrap_pyfunction!(observe::thread_id, module)?)?;
    module.add_function(wrap_pyfunction!(observe::current_thread_id, module)?)?;
    module.add_function(wrap_pyfunction!(observe::mode, module)?)?;
    module.add_function(wrap_pyfunction!(observe::context_get, module)?)?;
    module.add_function(wrap_pyfunction!(observe::call_coro, module)?)?;
    module.add_function(wrap_pyfunction!(probes::cancel_probe, module)?)?;
    module.add_function(wrap_pyfunction!(net::tcp_roundtrip, module)?)?;
    module.add_function(wrap_pyfunction!(net::tcp_exchange, module)?)?;
    module.add_function(wrap_pyfunction!(net::tcp_echo_server, module)?)?;
    module.add_function(wrap_pyfunction!(net::udp_echo, module)?)?;
    module.add_function(wrap_pyfunction!(net::udp_echo_server, module)?)?;
    module.add_function(wrap_pyfunction!(net::unix_exchange, module)?)?;
    module.add_function(wrap_pyfunction!(net::unix_echo_server, module)?)?;
    module.add_function(wrap_pyfunction!(extras::spawned_on_loop, module)?)?;
    module.add_function(wrap_pyfunction!(extras::spawned_tokio_sleep_ms, module)?)?;
    module.add_function(wrap_pyfunction!(extras::spawned_blocking_sum, module)?)?;
    module.add_function(wrap_pyfunction!(extras::blocking_sum, module)?)?;
    module.add_function(wrap_pyfunction!(extras::blocking_panic, module)?)?;
    module.add_function(wrap_pyfunction!(extras::yield_now, module)?)?;
    module.add_class::<probes::DropProbe>()?;
    module.add_class::<probes::Gate>()?;
    // The exception a panicking future raises in both modes; its class lives in tokioloop_rs
    // (module name "tokioloop_rs"), one copy per extension, so the tests need it from here.
    module.add("RustPanic", module.py().get_type::<tokioloop_rs::RustPanic>())?;
    Ok(())
}
