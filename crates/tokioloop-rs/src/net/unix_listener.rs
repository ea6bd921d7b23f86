//! [`UnixListener`]: a listening Unix stream socket on the loop's own reactor inside a future
//! tokioloop polls, `tokio::net::UnixListener` elsewhere; what it accepts is a [`UnixStream`] of
//! the same mode. Public: extension authors use it.

use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::registration::{Direction, Registered};
use super::unix_stream::{pathname, UnixStream};
use crate::polling::polling_loop;
use crate::Mode;

const WHAT: &str = "tokioloop_rs::net::UnixListener";

/// The backlog `bind` listens with, tokio's.
const BACKLOG: libc::c_int = 1024;

/// A listening Unix stream socket. Its mode is fixed when it is made, as a `TcpListener`'s is.
pub struct UnixListener {
    inner: Listener,
}

enum Listener {
    Native(Registered<Socket>),
    Tokio(tokio::net::UnixListener),
}

impl UnixListener {
    /// Listens at `path` (which must not exist). Synchronous, as tokio's is: the mode is the one
    /// of where it is called, natively inside a future tokioloop polls.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let inner = match polling_loop() {
            Some(native) => {
                let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                socket.bind(&SockAddr::unix(path)?)?;
                socket.listen(BACKLOG)?;
                socket.set_nonblocking(true)?;
                Listener::Native(Registered::new(native, socket, WHAT)?)
            }
            None => Listener::Tokio(tokio::net::UnixListener::bind(path)?),
        };
        Ok(UnixListener { inner })
    }

    /// Takes over a listening std socket (made non-blocking here), e.g. one bound before the
    /// future started so that clients can connect at once: natively inside a future tokioloop
    /// polls, else `tokio::net::UnixListener::from_std` (which needs a tokio runtime's
    /// context, as on the fallback).
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        listener.set_nonblocking(true)?;
        let inner = match polling_loop() {
            Some(native) => Listener::Native(Registered::new(native, Socket::from(listener), WHAT)?),
            None => Listener::Tokio(tokio::net::UnixListener::from_std(listener)?),
        };
        Ok(UnixListener { inner })
    }

    /// The next connection and the path its peer is bound to (None when unnamed, as a client's
    /// usually is).
    pub async fn accept(&self) -> io::Result<(UnixStream, Option<PathBuf>)> {
        match &self.inner {
            Listener::Native(registered) => {
                let (socket, peer) =
                    poll_fn(|cx| registered.poll_io(cx, Direction::Read, WHAT, |socket| socket.accept()))
                        .await?;
                socket.set_nonblocking(true)?;
                Ok((
                    UnixStream::accepted(registered.native(), socket)?,
                    pathname(&peer),
                ))
            }
            Listener::Tokio(listener) => {
                let (stream, peer) = listener.accept().await?;
                let peer = peer.as_pathname().map(Path::to_owned);
                Ok((UnixStream::from_tokio(stream), peer))
            }
        }
    }

    /// Whether this listener is on the loop's reactor ([`Mode::Native`]) or tokio's.
    pub fn mode(&self) -> Mode {
        match self.inner {
            Listener::Native(_) => Mode::Native,
            Listener::Tokio(_) => Mode::Fallback,
        }
    }

    /// The path it listens at.
    pub fn local_path(&self) -> io::Result<Option<PathBuf>> {
        match &self.inner {
            Listener::Native(registered) => Ok(pathname(&registered.socket().local_addr()?)),
            Listener::Tokio(listener) => Ok(listener.local_addr()?.as_pathname().map(Path::to_owned)),
        }
    }
}
