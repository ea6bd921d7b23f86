//! [`UdpSocket`]: a UDP socket on the loop's own reactor inside a future tokioloop polls,
//! `tokio::net::UdpSocket` elsewhere. Public: extension authors use it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::registration::{Direction, Registered};
use super::tcp_stream::ip_address;
use crate::polling::polling_loop;
use crate::Mode;

const WHAT: &str = "tokioloop_rs::net::UdpSocket";

/// A UDP socket. Its mode is fixed when it is made, as a `TcpStream`'s is.
pub struct UdpSocket {
    inner: Datagrams,
}

enum Datagrams {
    Native(Registered<Socket>),
    Tokio(tokio::net::UdpSocket),
}

impl UdpSocket {
    /// A socket bound to `address` (port 0: one the system picks; see
    /// [`UdpSocket::local_addr`]).
    pub async fn bind(address: SocketAddr) -> io::Result<UdpSocket> {
        let inner = match polling_loop() {
            Some(native) => {
                let socket = Socket::new(Domain::for_address(address), Type::DGRAM, Some(Protocol::UDP))?;
                socket.set_nonblocking(true)?;
                socket.bind(&SockAddr::from(address))?;
                Datagrams::Native(Registered::new(native, socket, WHAT)?)
            }
            None => Datagrams::Tokio(tokio::net::UdpSocket::bind(address).await?),
        };
        Ok(UdpSocket { inner })
    }

    /// Takes over a bound std socket (made non-blocking here), e.g. one bound before the future
    /// started so that its port is known to the caller: natively inside a future tokioloop
    /// polls, else `tokio::net::UdpSocket::from_std` (which needs a tokio runtime's context, as
    /// on the fallback).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        let inner = match polling_loop() {
            Some(native) => Datagrams::Native(Registered::new(native, Socket::from(socket), WHAT)?),
            None => Datagrams::Tokio(tokio::net::UdpSocket::from_std(socket)?),
        };
        Ok(UdpSocket { inner })
    }

    /// Sets the default peer of `send`/`recv` and the only one `recv` accepts datagrams from.
    pub async fn connect(&self, address: SocketAddr) -> io::Result<()> {
        match &self.inner {
            // A datagram connect only records the peer: it never blocks.
            Datagrams::Native(registered) => registered.socket().connect(&SockAddr::from(address)),
            Datagrams::Tokio(socket) => socket.connect(address).await,
        }
    }

    /// Whether this socket is on the loop's reactor ([`Mode::Native`]) or tokio's.
    pub fn mode(&self) -> Mode {
        match self.inner {
            Datagrams::Native(_) => Mode::Native,
            Datagrams::Tokio(_) => Mode::Fallback,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Datagrams::Native(registered) => ip_address(registered.socket().local_addr()?),
            Datagrams::Tokio(socket) => socket.local_addr(),
        }
    }

    /// The peer `connect` set.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Datagrams::Native(registered) => ip_address(registered.socket().peer_addr()?),
            Datagrams::Tokio(socket) => socket.peer_addr(),
        }
    }

    /// Sends `datagram` to the connected peer; the bytes sent.
    pub async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        match &self.inner {
            Datagrams::Native(registered) => {
                poll_fn(|cx| registered.poll_io(cx, Direction::Write, WHAT, |socket| socket.send(datagram)))
                    .await
            }
            Datagrams::Tokio(socket) => socket.send(datagram).await,
        }
    }

    /// Sends `datagram` to `target`; the bytes sent.
    pub async fn send_to(&self, datagram: &[u8], target: SocketAddr) -> io::Result<usize> {
        match &self.inner {
            Datagrams::Native(registered) => {
                let target = SockAddr::from(target);
                poll_fn(|cx| {
                    registered.poll_io(cx, Direction::Write, WHAT, |socket| {
                        socket.send_to(datagram, &target)
                    })
                })
                .await
            }
            Datagrams::Tokio(socket) => socket.send_to(datagram, target).await,
        }
    }

    /// Receives one datagram from the connected peer into `buffer` (the rest of a longer one is
    /// lost, as with any UDP receive); its length.
    pub async fn recv(&self, buffer: &mut [u8]) -> io::Result<usize> {
        match &self.inner {
            Datagrams::Native(registered) => {
                poll_fn(|cx| {
                    registered.poll_io(cx, Direction::Read, WHAT, |socket| socket.recv(as_uninit(buffer)))
                })
                .await
            }
            Datagrams::Tokio(socket) => socket.recv(buffer).await,
        }
    }

    /// Receives one datagram into `buffer`; its length and sender.
    pub async fn recv_from(&self, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match &self.inner {
            Datagrams::Native(registered) => {
                let (length, sender) = poll_fn(|cx| {
                    registered.poll_io(cx, Direction::Read, WHAT, |socket| {
                        socket.recv_from(as_uninit(buffer))
                    })
                })
                .await?;
                Ok((length, ip_address(sender)?))
            }
            Datagrams::Tokio(socket) => socket.recv_from(buffer).await,
        }
    }
}

/// `buffer` as the possibly uninitialized memory socket2's receives write into.
fn as_uninit(buffer: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: same layout; the receives only write initialized bytes, so the slice stays
    // initialized for the caller.
    unsafe { &mut *(std::ptr::from_mut(buffer) as *mut [MaybeUninit<u8>]) }
}
