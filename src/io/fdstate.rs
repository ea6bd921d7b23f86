//! What a descriptor's state says without moving bytes: whether an errno means "try after the
//! next edge", and a zero-timeout `poll(2)` for the few questions tokio's readiness cannot
//! answer (still ready now? an error or hang-up pending?). The one place these fd rules live;
//! the registry, the transports and the `sock_*` helpers all ask here.

use std::os::fd::RawFd;

use super::Direction;

/// The call found nothing to do and the descriptor will say when it has (`EAGAIN`).
#[inline]
pub fn would_block(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EWOULDBLOCK
}

/// Zero-timeout `poll(2)` for `events`; the events reported, 0 if none or on failure.
fn poll_now(fd: RawFd, events: libc::c_short) -> libc::c_short {
    let mut entry = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; poll only reads the descriptor number.
    let n = unsafe { libc::poll(&mut entry, 1, 0) };
    if n > 0 {
        entry.revents
    } else {
        0
    }
}

/// Is the descriptor ready in `direction` right now (an error or hang-up counts, as a
/// level-triggered selector reports them)?
pub fn level_ready(fd: RawFd, direction: Direction) -> bool {
    let events = match direction {
        Direction::Read => libc::POLLIN,
        Direction::Write => libc::POLLOUT,
    };
    poll_now(fd, events) & (events | libc::POLLERR | libc::POLLHUP) != 0
}

/// Does the descriptor report an error (POLLERR), such as an ICMP refusal on a datagram socket?
pub fn error_pending(fd: RawFd) -> bool {
    poll_now(fd, 0) & libc::POLLERR != 0
}

/// Does the descriptor report a hang-up or an error (a pipe whose reader has closed)?
pub fn hung_up(fd: RawFd) -> bool {
    poll_now(fd, 0) & (libc::POLLERR | libc::POLLHUP) != 0
}
