//! The park's deadline at the clock's own resolution: a timerfd on the loop's reactor, armed at
//! the earliest timer's absolute CLOCK_MONOTONIC time. tokio's timer (what the park used) rounds
//! every sleep up to its millisecond wheel: `asyncio.sleep(0.001)` took 2.15 ms (1.15 ms late,
//! where uvloop is 0.12 ms late and the stdlib 0.15). A timerfd wakes the reactor's epoll at the
//! nanosecond it was set for. Made with the loop (inside its runtime, whose reactor it registers
//! with), lent to the turn while it runs, and touched only there. Elsewhere than Linux (no
//! timerfd; macOS is only cross-checked) it is tokio's sleep, millisecond wheel and all.

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::task::{Context, Poll};

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub struct ParkTimer {
        fd: AsyncFd<OwnedFd>,
        /// The absolute time it is armed for (clock seconds), to skip re-arming for the same one.
        armed: Option<f64>,
    }

    impl ParkTimer {
        /// A disarmed timer; call inside the runtime's context.
        pub fn new() -> io::Result<ParkTimer> {
            // SAFETY: no pointers; the result is checked.
            let raw = unsafe {
                libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a descriptor we just made and own.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: the AsyncFd owns the descriptor, so it is deregistered before it is closed
            // (AsyncFd's drop deregisters, then drops the OwnedFd), the soundness condition of
            // `register_with_interest`.
            let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(ParkTimer { fd, armed: None })
        }

        /// Arms the timer for `at`, CLOCK_MONOTONIC seconds (the loop's clock), unless it already is.
        pub fn arm(&mut self, at: f64) -> io::Result<()> {
            if self.armed == Some(at) {
                return Ok(());
            }
            // At least 1 ns: an all-zero value would disarm it instead of firing at once.
            let at = at.max(1e-9);
            let seconds = at.floor();
            let value = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: seconds as libc::time_t,
                    // Rounded up, so the wake-up is never before `at`.
                    tv_nsec: (((at - seconds) * 1e9).ceil() as libc::c_long).clamp(0, 999_999_999),
                },
            };
            let fd = self.raw();
            // SAFETY: a valid descriptor and itimerspec; no old value asked for.
            let set = crate::io::retry_interrupted(|| unsafe {
                libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &value, std::ptr::null_mut()) as isize
            });
            if set < 0 {
                self.armed = None;
                return Err(io::Error::last_os_error());
            }
            self.armed = Some(at);
            Ok(())
        }

        /// Ready once the armed time has come (a fired timer is drained and counts as disarmed).
        pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            loop {
                let mut guard = match self.fd.poll_read_ready(cx) {
                    Poll::Ready(Ok(guard)) => guard,
                    // The reactor is gone (shutting down): nothing will fire; the park ends.
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                };
                let mut expirations = [0u8; 8];
                let fd = self.raw();
                // An EINTR must not pass for EAGAIN: clearing the readiness then would lose
                // the expiry and leave the loop parked past its timer.
                // SAFETY: reads 8 bytes into an 8-byte buffer from a valid descriptor.
                let read = crate::io::retry_interrupted(|| unsafe {
                    libc::read(fd, expirations.as_mut_ptr().cast(), expirations.len())
                });
                if read == 8 {
                    self.armed = None;
                    return Poll::Ready(());
                }
                // EAGAIN: stale readiness (re-arming reset the count): wait for the next expiry.
                guard.clear_ready();
            }
        }

        fn raw(&self) -> RawFd {
            self.fd.get_ref().as_raw_fd()
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use crate::clock;

    pub struct ParkTimer {
        sleep: Pin<Box<tokio::time::Sleep>>,
        armed: Option<f64>,
    }

    impl ParkTimer {
        /// Call inside the runtime's context (a tokio sleep needs its timer).
        pub fn new() -> io::Result<ParkTimer> {
            Ok(ParkTimer {
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(86_400))),
                armed: None,
            })
        }

        pub fn arm(&mut self, at: f64) -> io::Result<()> {
            if self.armed == Some(at) {
                return Ok(());
            }
            let wait = Duration::try_from_secs_f64((at - clock::now()).max(0.0))
                .unwrap_or(Duration::from_secs(86_400 * 365));
            self.sleep.as_mut().reset(tokio::time::Instant::now() + wait);
            self.armed = Some(at);
            Ok(())
        }

        pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            let fired = self.sleep.as_mut().poll(cx);
            if fired.is_ready() {
                self.armed = None;
            }
            fired
        }
    }
}

pub use imp::ParkTimer;
