//! [`TcpListener`]: a listening TCP socket on the loop's own reactor inside a future tokioloop
//! polls, `tokio::net::TcpListener` elsewhere; what it accepts is a [`TcpStream`] of the same
//! mode. Public: extension authors use it.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::registration::{Direction, Registered};
use super::tcp_stream::{ip_address, TcpStream};
use crate::polling::polling_loop;
use crate::Mode;

const WHAT: &str = "tokioloop_rs::net::TcpListener";

/// The backlog `bind` listens with, tokio's.
const BACKLOG: libc::c_int = 1024;

/// A listening TCP socket. Its mode is fixed when it is made, as a [`TcpStream`]'s is.
pub struct TcpListener {
    inner: Listener,
}

enum Listener {
    Native(Registered<Socket>),
    Tokio(tokio::net::TcpListener),
}

impl TcpListener {
    /// Listens on `address` (port 0: one the system picks; see [`TcpListener::local_addr`]),
    /// with `SO_REUSEADDR` as tokio and asyncio set it.
    pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
        let inner = match polling_loop() {
            Some(native) => {
                let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&SockAddr::from(address))?;
                socket.listen(BACKLOG)?;
                socket.set_nonblocking(true)?;
                Listener::Native(Registered::new(native, socket, WHAT)?)
            }
            None => Listener::Tokio(tokio::net::TcpListener::bind(address).await?),
        };
        Ok(TcpListener { inner })
    }

    /// Takes over a listening std socket (made non-blocking here), e.g. one bound before the
    /// future started so that its port is known to the caller: natively inside a future
    /// tokioloop polls, else `tokio::net::TcpListener::from_std` (which needs a tokio
    /// runtime's context, as on the fallback).
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        let inner = match polling_loop() {
            Some(native) => Listener::Native(Registered::new(native, Socket::from(listener), WHAT)?),
            None => Listener::Tokio(tokio::net::TcpListener::from_std(listener)?),
        };
        Ok(TcpListener { inner })
    }

    /// The next connection and its peer's address.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.inner {
            Listener::Native(registered) => {
                let (socket, peer) =
                    poll_fn(|cx| registered.poll_io(cx, Direction::Read, WHAT, |socket| socket.accept()))
                        .await?;
                socket.set_nonblocking(true)?;
                Ok((
                    TcpStream::accepted(registered.native(), socket)?,
                    ip_address(peer)?,
                ))
            }
            Listener::Tokio(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((TcpStream::from_tokio(stream), peer))
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

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Listener::Native(registered) => ip_address(registered.socket().local_addr()?),
            Listener::Tokio(listener) => listener.local_addr(),
        }
    }
}
