//! The tokio runtime a native poll enters, so that tokio's own leaves (`tokio::time::sleep`,
//! `tokio::spawn`, tokio's net types) work inside futures that tokioloop polls: pyo3-async-
//! runtimes' runtime when that feature is on (one runtime per extension, as on the fallback),
//! else one this crate builds on first use. Only `native_task` enters
//! it, and only for `future_into_py`'s tasks; `task::spawn_blocking` uses its blocking pool.

use tokio::runtime::Runtime;

/// The extension's tokio runtime; built on first use.
#[cfg(feature = "pyo3-async-runtimes")]
pub(crate) fn runtime() -> &'static Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// The extension's tokio runtime; built on first use.
#[cfg(not(feature = "pyo3-async-runtimes"))]
pub(crate) fn runtime() -> &'static Runtime {
    static OWN: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokioloop_rs: could not build its tokio runtime")
    })
}
