//! Asks the kernel, without entering tokio, whether a loop's reactor has events waiting.
//!
//! asyncio looks at I/O on every iteration that has callbacks ready (a `select(0)`). Through
//! tokio that look is a zero-timeout park: entering the runtime, the time driver's wheel and
//! an `epoll_wait`, about 640 instructions a turn. An epoll instance is itself readable while
//! its ready list is not empty, so one `poll(2)` of tokio's epoll fd says whether that park
//! would find anything, without taking the events from tokio (its registrations are
//! edge-triggered: an event stays listed until tokio's own `epoll_wait` collects it).
//!
//! tokio does not expose the fd, so [`find_reactor_fd`] finds it once per loop: it registers a
//! probe eventfd with the runtime and looks for the epoll instance whose `/proc` fdinfo lists
//! that probe. Where that is not possible (not Linux, no `/proc`) it returns None and the turn
//! parks through tokio every time instead. Only `event_loop` uses this, from the loop thread.

use std::os::fd::RawFd;

use tokio::runtime::Runtime;

/// The epoll fd behind `runtime`'s I/O driver, valid for as long as the runtime lives.
#[cfg(target_os = "linux")]
pub fn find_reactor_fd(runtime: &Runtime) -> Option<RawFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // SAFETY: plain syscall; the result is checked and owned below.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let probe = unsafe { OwnedFd::from_raw_fd(raw) };
    let (number, inode) = (probe.as_raw_fd(), inode_of(probe.as_raw_fd())?);
    let _entered = runtime.enter();
    // SAFETY: the AsyncFd owns the probe: dropping it deregisters the probe, then closes it.
    let registration =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(probe, tokio::io::Interest::READABLE) }
            .ok()?;
    let found = epoll_listing(number, inode);
    drop(registration);
    found
}

#[cfg(not(target_os = "linux"))]
pub fn find_reactor_fd(_runtime: &Runtime) -> Option<RawFd> {
    None
}

/// True unless the kernel says the epoll instance `epoll_fd` has nothing ready (an error
/// answers true: the caller then asks tokio, which is always correct).
pub fn has_events(epoll_fd: RawFd) -> bool {
    let mut entry = libc::pollfd {
        fd: epoll_fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut entry, 1, 0) != 0 }
}

#[cfg(target_os = "linux")]
fn inode_of(fd: RawFd) -> Option<u64> {
    // SAFETY: `stat` is plain data, written by fstat on success.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `stat` is writable.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return None;
    }
    Some(stat.st_ino as u64)
}

/// The epoll fd of this process whose fdinfo lists `target` (by number and inode).
#[cfg(target_os = "linux")]
fn epoll_listing(target: RawFd, inode: u64) -> Option<RawFd> {
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        let is_epoll = std::fs::read_link(entry.path())
            .map(|link| link.as_os_str() == "anon_inode:[eventpoll]")
            .unwrap_or(false);
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        if info.lines().any(|line| lists(line, target, inode)) {
            return Some(fd);
        }
    }
    None
}

/// Whether one fdinfo line of an epoll instance ("tfd: N events: .. ino:HEX ..") is `target`.
#[cfg(target_os = "linux")]
fn lists(line: &str, target: RawFd, inode: u64) -> bool {
    let Some(rest) = line.strip_prefix("tfd:") else {
        return false;
    };
    let mut words = rest.split_whitespace();
    if words.next().and_then(|n| n.parse::<RawFd>().ok()) != Some(target) {
        return false;
    }
    words
        .find_map(|w| w.strip_prefix("ino:"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        == Some(inode)
}
