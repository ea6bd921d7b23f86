//! A TCP round trip made by a Rust future with tokio's own `TcpStream`, so the socket lives on the
//! bridge's runtime (its epoll, its threads), not on the Python loop that awaits the result.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::tokio::future_into_py;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `tcp_roundtrip((host, port), payload)`: connects, sends `payload`, reads back as many bytes
/// (the peer is an echo server), closes, and completes with the bytes read. An I/O failure
/// raises the `OSError` subclass pyo3 maps it to (`ConnectionRefusedError`, ...).
#[pyfunction]
pub fn tcp_roundtrip<'py>(
    py: Python<'py>,
    address: (String, u16),
    payload: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let payload = payload.to_vec();
    future_into_py(py, async move {
        let mut stream = TcpStream::connect((address.0.as_str(), address.1)).await?;
        stream.write_all(&payload).await?;
        let mut echoed = vec![0; payload.len()];
        stream.read_exact(&mut echoed).await?;
        drop(stream);
        Ok(Python::attach(|py| PyBytes::new(py, &echoed).unbind()))
    })
}
