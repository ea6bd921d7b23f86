//! Reads, writes and shutdown of a native stream socket, shared by `TcpStream` and `UnixStream`
//! (the syscalls and the readiness protocol are the same for both). Only those two use it.

use std::io;
use std::net::Shutdown;
use std::task::{ready, Context, Poll};

use socket2::Socket;
use tokio::io::ReadBuf;

use super::registration::{Direction, Registered};

/// Flags for every native `send`: a write to a reset connection fails with EPIPE instead of
/// raising SIGPIPE, whatever the process's signal disposition is.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

pub(crate) fn poll_read(
    registered: &Registered<Socket>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    what: &str,
) -> Poll<io::Result<()>> {
    let received = ready!(registered.poll_io(cx, Direction::Read, what, |socket| {
        // SAFETY: recv only writes bytes into the slice, never de-initializes any.
        socket.recv(unsafe { buf.unfilled_mut() })
    }))?;
    // SAFETY: recv initialized the first `received` bytes of the unfilled part.
    unsafe { buf.assume_init(received) };
    buf.advance(received);
    Poll::Ready(Ok(()))
}

pub(crate) fn poll_write(
    registered: &Registered<Socket>,
    cx: &mut Context<'_>,
    data: &[u8],
    what: &str,
) -> Poll<io::Result<usize>> {
    registered.poll_io(cx, Direction::Write, what, |socket| {
        socket.send_with_flags(data, SEND_FLAGS)
    })
}

/// Shuts the write half down (the peer reads EOF), as tokio's streams do.
pub(crate) fn shutdown(registered: &Registered<Socket>) -> Poll<io::Result<()>> {
    Poll::Ready(registered.socket().shutdown(Shutdown::Write))
}

/// Finishes a non-blocking connect that `connect` started on `socket` (already non-blocking):
/// registers it, then, if the connection is still being made, waits until it is writable and
/// reports the connection's own error (`SO_ERROR`), as tokio's `connect`s do.
pub(crate) async fn finish_connect(
    native: crate::bridge::NativeLoop,
    socket: Socket,
    started: io::Result<()>,
    what: &str,
) -> io::Result<Registered<Socket>> {
    let in_progress = match started {
        Ok(()) => false,
        // After EINTR the connection goes on asynchronously (POSIX), exactly as after
        // EINPROGRESS; calling connect again would only answer EALREADY.
        Err(error) => match error.raw_os_error() {
            Some(libc::EINPROGRESS) | Some(libc::EINTR) => true,
            _ => return Err(error),
        },
    };
    // Registered only once the connect started: a fresh socket polls as writable (and hung up),
    // an edge that would end the wait below before the connection exists.
    let registered = Registered::new(native, socket, what)?;
    if in_progress {
        std::future::poll_fn(|cx| registered.poll_ready(cx, Direction::Write, what)).await?;
        if let Some(error) = registered.socket().take_error()? {
            return Err(error);
        }
    }
    Ok(registered)
}
