//! The native bridge for Rust async extensions (issue 21): their futures are polled on the
//! loop's own thread, in the turn, with the GIL held, and complete an `asyncio.Future`
//! directly, so the awaiting Task resumes in the same turn's batch with no thread hop.
//!
//! The contract is the C ABI of `tokioloop-ffi` (only `PyObject*` and C types cross, so the
//! extension's pyo3 and tokio need not be ours). `tasks` keeps one loop's spawned tasks and
//! polls the woken ones; `waker` is the C waker any thread may call; `timer` puts an
//! extension's sleeps in the loop's own timer heap; `capi` is the exported table and its
//! capsule. Only `event_loop` (its `bridge_seam` and the turn) and `lib.rs` reach in here.

mod capi;
mod fd;
mod tasks;
mod timer;
mod waker;

pub use capi::install as install_capsule;
pub use tasks::BridgeTasks;
