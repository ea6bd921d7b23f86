//! [`TcpStream`]: a TCP connection that is a socket on the loop's own reactor inside a future
//! tokioloop polls, and `tokio::net::TcpStream` elsewhere; tokio's `AsyncRead`/`AsyncWrite` in
//! both modes. Public: extension authors use it; `tcp_listener` makes accepted ones.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::registration::Registered;
use super::stream_io;
use crate::bridge::NativeLoop;
use crate::polling::polling_loop;
use crate::Mode;

const WHAT: &str = "tokioloop_rs::net::TcpStream";

/// A TCP connection. Its mode is fixed when it is made: native inside a future tokioloop polls
/// (it must then stay in that loop's tasks, see the crate's `net` docs), tokio's elsewhere.
pub struct TcpStream {
    inner: Stream,
}

enum Stream {
    Native(Registered<Socket>),
    Tokio(tokio::net::TcpStream),
}

impl TcpStream {
    /// Connects to `address` (no name resolution: resolve first, off the loop if it blocks).
    pub async fn connect(address: SocketAddr) -> io::Result<TcpStream> {
        let inner = match polling_loop() {
            Some(native) => Stream::Native(connect_natively(native, address).await?),
            None => Stream::Tokio(tokio::net::TcpStream::connect(address).await?),
        };
        Ok(TcpStream { inner })
    }

    /// Takes over a connected std stream (made non-blocking here): natively inside a future
    /// tokioloop polls, else `tokio::net::TcpStream::from_std` (which needs a tokio runtime's
    /// context, as on the fallback).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        stream.set_nonblocking(true)?;
        let inner = match polling_loop() {
            Some(native) => Stream::Native(Registered::new(native, Socket::from(stream), WHAT)?),
            None => Stream::Tokio(tokio::net::TcpStream::from_std(stream)?),
        };
        Ok(TcpStream { inner })
    }

    /// A connection `tcp_listener` accepted natively: `socket` is already non-blocking.
    pub(crate) fn accepted(native: NativeLoop, socket: Socket) -> io::Result<TcpStream> {
        let inner = Stream::Native(Registered::new(native, socket, WHAT)?);
        Ok(TcpStream { inner })
    }

    pub(crate) fn from_tokio(stream: tokio::net::TcpStream) -> TcpStream {
        TcpStream {
            inner: Stream::Tokio(stream),
        }
    }

    /// Whether this stream is on the loop's reactor ([`Mode::Native`]) or tokio's.
    pub fn mode(&self) -> Mode {
        match self.inner {
            Stream::Native(_) => Mode::Native,
            Stream::Tokio(_) => Mode::Fallback,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Stream::Native(registered) => ip_address(registered.socket().peer_addr()?),
            Stream::Tokio(stream) => stream.peer_addr(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Stream::Native(registered) => ip_address(registered.socket().local_addr()?),
            Stream::Tokio(stream) => stream.local_addr(),
        }
    }

    /// Turns Nagle's algorithm off (`true`) or on.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match &self.inner {
            Stream::Native(registered) => registered.socket().set_tcp_nodelay(nodelay),
            Stream::Tokio(stream) => stream.set_nodelay(nodelay),
        }
    }

    pub fn nodelay(&self) -> io::Result<bool> {
        match &self.inner {
            Stream::Native(registered) => registered.socket().tcp_nodelay(),
            Stream::Tokio(stream) => stream.nodelay(),
        }
    }
}

async fn connect_natively(native: NativeLoop, address: SocketAddr) -> io::Result<Registered<Socket>> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    let started = socket.connect(&SockAddr::from(address));
    stream_io::finish_connect(native, socket, started, WHAT).await
}

pub(crate) fn ip_address(address: SockAddr) -> io::Result<SocketAddr> {
    address
        .as_socket()
        .ok_or_else(|| io::Error::other(format!("{WHAT}: the socket's address is not an IP address")))
}

impl AsyncRead for TcpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Native(registered) => stream_io::poll_read(registered, cx, buf, WHAT),
            Stream::Tokio(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Stream::Native(registered) => stream_io::poll_write(registered, cx, data, WHAT),
            Stream::Tokio(stream) => Pin::new(stream).poll_write(cx, data),
        }
    }

    /// Nothing to flush natively: every write goes straight to the kernel.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Native(_) => Poll::Ready(Ok(())),
            Stream::Tokio(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    /// Shuts the write half down (the peer reads EOF), as tokio's does.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Native(registered) => stream_io::shutdown(registered),
            Stream::Tokio(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
