//! Native transports. A transport owns the hot path of a connection — the read into a
//! per-thread buffer, the protocol call, the direct send and the queued `writev` — while its
//! Python subclass (`tokioloop._transport`) keeps what runs once per connection: setup,
//! close/abort, error reporting, extra info. `io::registry` dispatches readiness to
//! transports; the turn in `event_loop` runs them.

pub mod datagram;
mod limits;
pub mod stream;
pub mod tls;
