//! Native transports. An engine owns the hot path of a connection (the read into a
//! per-thread buffer, the protocol call, the direct send and the queued `sendmsg`), while its
//! Python owner (`tokioloop._transport`, `_pipes`, `_datagram`, `_tls`) keeps what runs once
//! per connection: setup, close/abort, error reporting, extra info. The engines depend on `io`
//! only, never on the loop: the stream engine holds an `io::IoHandle` and implements
//! `io::Engine`, so the registry hands its readiness to the turn, which runs it without naming
//! it; the datagram engine is driven by ordinary fd callbacks and uses its handle only to
//! settle them; the TLS layer holds no handle: it rides on a stream engine (tls depends on
//! stream, not back). `limits` holds asyncio's constants that they share.

pub mod datagram;
mod limits;
pub mod stream;
pub mod tls;
