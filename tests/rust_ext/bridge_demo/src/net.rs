//! TCP, UDP and Unix stream sockets through `tokioloop_rs::net`: sockets on the loop's own
//! reactor natively, tokio's on the fallback. `tcp_roundtrip` mirrors par_only's
//! (tests/rust_ext/par_only/src/net.rs) so that benches/rust_bridge.py can compare the two; the
//! rest serve tests/test_rust_bridge_native.py. Registered by `lib.rs`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokioloop_rs::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use tokioloop_rs::{future_into_py, Mode};

use crate::observe::os_thread_id;

/// `(host, port)` as a socket address; `host` must be an IP literal (nothing here resolves).
fn socket_address(host: &str, port: u16) -> PyResult<SocketAddr> {
    let ip: IpAddr = host
        .parse()
        .map_err(|_| PyValueError::new_err(format!("host must be an IP address, not {host:?}")))?;
    Ok(SocketAddr::new(ip, port))
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Native => "native",
        Mode::Fallback => "fallback",
    }
}

/// `tcp_roundtrip(host, port, n, size)`: connects, then `n` times writes `size` bytes and reads
/// them back (the peer echoes), then closes; completes with the bytes read. An echo that differs
/// raises RuntimeError; an I/O failure the `OSError` subclass pyo3 maps it to
/// (`ConnectionRefusedError`, ...); an early EOF a plain `OSError`.
#[pyfunction]
pub fn tcp_roundtrip(
    py: Python<'_>,
    host: String,
    port: u16,
    n: usize,
    size: usize,
) -> PyResult<Bound<'_, PyAny>> {
    let address = socket_address(&host, port)?;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    future_into_py(py, async move {
        let mut stream = TcpStream::connect(address).await?;
        let mut echoed = vec![0; size];
        for _ in 0..n {
            stream.write_all(&payload).await?;
            stream.read_exact(&mut echoed).await?;
            if echoed != payload {
                return Err(PyRuntimeError::new_err(
                    "tcp_roundtrip: the echo differs from what was sent",
                ));
            }
        }
        Ok(n * size)
    })
}

/// `tcp_exchange(host, port, data)`: connects, writes `data`, shuts its write half down, reads
/// until the peer closes; completes with `(bytes read, the stream's mode, the OS thread id of
/// the thread that polled the future to completion)`.
#[pyfunction]
pub fn tcp_exchange<'py>(
    py: Python<'py>,
    host: String,
    port: u16,
    data: &[u8],
) -> PyResult<Bound<'py, PyAny>> {
    let address = socket_address(&host, port)?;
    let data = data.to_vec();
    future_into_py(py, async move {
        let mut stream = TcpStream::connect(address).await?;
        let mode = mode_name(stream.mode());
        if stream.peer_addr()? != address {
            return Err(PyRuntimeError::new_err(
                "tcp_exchange: peer_addr is not the address connected to",
            ));
        }
        stream.write_all(&data).await?;
        stream.shutdown().await?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await?;
        let received = Python::attach(|py| PyBytes::new(py, &received).unbind());
        Ok((received, mode, os_thread_id()))
    })
}

/// `tcp_echo_server()`: `(port, awaitable)`. A listener on 127.0.0.1 is bound now (so the port
/// is known before anything runs); the awaitable's future accepts one connection, echoes it
/// until EOF, shuts its write half down and completes with `(bytes echoed, the accepted stream's
/// mode)`.
#[pyfunction]
pub fn tcp_echo_server(py: Python<'_>) -> PyResult<(u16, Bound<'_, PyAny>)> {
    let bound = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let port = bound.local_addr()?.port();
    let serving = future_into_py(py, async move {
        let listener = TcpListener::from_std(bound)?;
        let (mut stream, _peer) = listener.accept().await?;
        drop(listener);
        stream.set_nodelay(true)?;
        let echoed = echo_until_eof(&mut stream).await?;
        Ok((echoed, mode_name(stream.mode())))
    })?;
    Ok((port, serving))
}

/// `unix_exchange(path, data)`: `tcp_exchange` over a Unix stream socket; completes with
/// `(bytes read, the stream's mode)`.
#[pyfunction]
pub fn unix_exchange<'py>(py: Python<'py>, path: PathBuf, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let data = data.to_vec();
    future_into_py(py, async move {
        let mut stream = UnixStream::connect(&path).await?;
        if stream.peer_path()?.as_deref() != Some(path.as_path()) {
            return Err(PyRuntimeError::new_err(
                "unix_exchange: peer_path is not the path connected to",
            ));
        }
        stream.write_all(&data).await?;
        stream.shutdown().await?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await?;
        let received = Python::attach(|py| PyBytes::new(py, &received).unbind());
        Ok((received, mode_name(stream.mode())))
    })
}

/// `unix_echo_server(path)`: `tcp_echo_server` listening at `path` (bound now); the awaitable
/// completes with `(bytes echoed, the accepted stream's mode)`.
#[pyfunction]
pub fn unix_echo_server(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let bound = std::os::unix::net::UnixListener::bind(&path)?;
    future_into_py(py, async move {
        let listener = UnixListener::from_std(bound)?;
        let (mut stream, _peer) = listener.accept().await?;
        drop(listener);
        let echoed = echo_until_eof(&mut stream).await?;
        Ok((echoed, mode_name(stream.mode())))
    })
}

/// Writes back what `stream` reads until EOF, then shuts its write half down; the bytes echoed.
async fn echo_until_eof<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> std::io::Result<usize> {
    let mut buffer = vec![0; 64 * 1024];
    let mut echoed = 0;
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            break;
        }
        stream.write_all(&buffer[..read]).await?;
        echoed += read;
    }
    stream.shutdown().await?;
    Ok(echoed)
}

/// `udp_echo(host, port, datagrams)`: a UDP socket connected to `(host, port)` sends each
/// datagram and receives its echo before the next; completes with `(the echoes, the socket's
/// mode)`. A refused peer (ICMP port unreachable) raises ConnectionRefusedError.
#[pyfunction]
pub fn udp_echo(
    py: Python<'_>,
    host: String,
    port: u16,
    datagrams: Vec<Vec<u8>>,
) -> PyResult<Bound<'_, PyAny>> {
    let peer = socket_address(&host, port)?;
    future_into_py(py, async move {
        let unspecified = SocketAddr::new(
            if peer.is_ipv4() {
                [0, 0, 0, 0].into()
            } else {
                [0u16; 8].into()
            },
            0,
        );
        let socket = UdpSocket::bind(unspecified).await?;
        socket.connect(peer).await?;
        let mut buffer = vec![0; 65536];
        let mut echoes = Vec::with_capacity(datagrams.len());
        for datagram in &datagrams {
            socket.send(datagram).await?;
            let length = socket.recv(&mut buffer).await?;
            echoes.push(buffer[..length].to_vec());
        }
        let echoes = Python::attach(|py| {
            echoes
                .iter()
                .map(|echo| PyBytes::new(py, echo).unbind())
                .collect::<Vec<_>>()
        });
        Ok((echoes, mode_name(socket.mode())))
    })
}

/// `udp_echo_server(count)`: `(port, awaitable)`. A UDP socket on 127.0.0.1 is bound now; the
/// awaitable's future sends `count` datagrams back to their senders and completes with
/// `(bytes echoed, the socket's mode)`.
#[pyfunction]
pub fn udp_echo_server(py: Python<'_>, count: usize) -> PyResult<(u16, Bound<'_, PyAny>)> {
    let bound = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
    let port = bound.local_addr()?.port();
    let serving = future_into_py(py, async move {
        let socket = UdpSocket::from_std(bound)?;
        let mut buffer = vec![0; 65536];
        let mut echoed = 0;
        for _ in 0..count {
            let (length, sender) = socket.recv_from(&mut buffer).await?;
            echoed += socket.send_to(&buffer[..length], sender).await?;
        }
        Ok((echoed, mode_name(socket.mode())))
    })?;
    Ok((port, serving))
}
