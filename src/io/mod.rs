//! File-descriptor readiness for the loop: `add_reader`/`add_writer` registrations.
//!
//! Native transports (TCP, Unix, pipes) will register here too; the turn in `event_loop`
//! calls [`registry::Registry::dispatch`] once per turn to queue the callbacks of ready fds.

pub mod registry;
