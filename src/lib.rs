//! The `tokioloop._tokioloop` extension module: registration of the native types only.
//!
//! The public API is the Python package `tokioloop`; this module is private to it.

mod bridge;
mod clock;
mod contexts;
mod dns;
mod errors;
mod event_loop;
mod fault;
mod fs;
mod handles;
mod io;
mod runtime;
mod sock;
mod telemetry;
mod transports;

use pyo3::prelude::*;

#[pymodule]
fn _tokioloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::LoopCore>()?;
    event_loop::install_fast_paths(&m.py().get_type::<event_loop::LoopCore>())?;
    bridge::install_capsule(m, &m.py().get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transports::stream::StreamEngine>()?;
    m.add_class::<transports::tls::TlsLayer>()?;
    m.add_class::<transports::datagram::DatagramEngine>()?;
    m.add_class::<sock::SockWait>()?;
    m.add_function(wrap_pyfunction!(sock::_sock_recv_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_send_now, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_recv_wait, m)?)?;
    m.add_function(wrap_pyfunction!(sock::_sock_sendall_wait, m)?)?;
    m.add_function(wrap_pyfunction!(fs::_sendfile, m)?)?;
    m.add_function(wrap_pyfunction!(fs::_path_stat, m)?)?;
    m.add_function(wrap_pyfunction!(fs::_path_unlink, m)?)?;
    m.add("_SENDFILE_AVAILABLE", fs::SENDFILE_AVAILABLE)?;
    #[cfg(feature = "fault-points")]
    m.add_function(wrap_pyfunction!(fault::_arm_fault_point, m)?)?;
    Ok(())
}
