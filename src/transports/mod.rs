//! Native transports. A transport owns the hot path of a connection — the read into a
//! per-thread buffer, the protocol call, the direct send and the queued `writev` — while its
//! Python subclass (`tokioloop._transport`) keeps what runs once per connection: setup,
//! close/abort, error reporting, extra info. The engines depend on `io` only: each holds an
//! `io::IoHandle` and implements `io::Engine`; the io registry hands their readiness to the
//! turn in `event_loop`, which runs them without naming them. tls depends on stream, not back.

pub mod datagram;
mod limits;
pub mod stream;
pub mod tls;
