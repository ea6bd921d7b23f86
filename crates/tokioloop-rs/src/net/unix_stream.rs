//! [`UnixStream`]: a Unix stream connection that is a socket on the loop's own reactor inside a
//! future tokioloop polls, and `tokio::net::UnixStream` elsewhere; tokio's `AsyncRead`/
//! `AsyncWrite` in both modes. Public: extension authors use it; `unix_listener` makes accepted
//! ones.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::registration::Registered;
use super::stream_io;
use crate::bridge::NativeLoop;
use crate::polling::polling_loop;
use crate::Mode;

const WHAT: &str = "tokioloop_rs::net::UnixStream";

/// A Unix stream connection. Its mode is fixed when it is made, as a `TcpStream`'s is.
pub struct UnixStream {
    inner: Stream,
}

enum Stream {
    Native(Registered<Socket>),
    Tokio(tokio::net::UnixStream),
}

impl UnixStream {
    /// Connects to the socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        let inner = match polling_loop() {
            Some(native) => Stream::Native(connect_natively(native, path.as_ref()).await?),
            None => Stream::Tokio(tokio::net::UnixStream::connect(path).await?),
        };
        Ok(UnixStream { inner })
    }

    /// A connection `unix_listener` accepted natively: `socket` is already non-blocking.
    pub(crate) fn accepted(native: NativeLoop, socket: Socket) -> io::Result<UnixStream> {
        let inner = Stream::Native(Registered::new(native, socket, WHAT)?);
        Ok(UnixStream { inner })
    }

    pub(crate) fn from_tokio(stream: tokio::net::UnixStream) -> UnixStream {
        UnixStream {
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

    /// The path this end is bound to; None when unnamed (a client's usual case) or abstract.
    pub fn local_path(&self) -> io::Result<Option<PathBuf>> {
        match &self.inner {
            Stream::Native(registered) => Ok(pathname(&registered.socket().local_addr()?)),
            Stream::Tokio(stream) => Ok(stream.local_addr()?.as_pathname().map(Path::to_owned)),
        }
    }

    /// The path the peer is bound to; None when unnamed or abstract.
    pub fn peer_path(&self) -> io::Result<Option<PathBuf>> {
        match &self.inner {
            Stream::Native(registered) => Ok(pathname(&registered.socket().peer_addr()?)),
            Stream::Tokio(stream) => Ok(stream.peer_addr()?.as_pathname().map(Path::to_owned)),
        }
    }
}

async fn connect_natively(native: NativeLoop, path: &Path) -> io::Result<Registered<Socket>> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let started = socket.connect(&SockAddr::unix(path)?);
    stream_io::finish_connect(native, socket, started, WHAT).await
}

pub(crate) fn pathname(address: &SockAddr) -> Option<PathBuf> {
    address.as_pathname().map(Path::to_owned)
}

impl AsyncRead for UnixStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Native(registered) => stream_io::poll_read(registered, cx, buf, WHAT),
            Stream::Tokio(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UnixStream {
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
