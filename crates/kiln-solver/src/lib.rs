//! kiln's generic DAG scheduler.
//!
//! A build is a DAG of [`Vertex`]es identified by an opaque id `K`, validated into a [`Graph`]
//! (unique ids, known inputs, no cycle) before anything runs. [`Solver::solve`] then:
//!
//! 1. computes the cache key of every vertex the targets need, in DAG order, independent ones in
//!    parallel ([`Executor::cache_key`] gets the inputs' keys, not their outputs);
//! 2. resolves the targets top-down: [`Executor::load`] first; a hit is reported
//!    [`Event::Cached`] and its inputs are left alone (only [`Executor::has_cached`] is asked,
//!    to report them as cached); a miss resolves the inputs in parallel and
//!    then calls [`Executor::execute`];
//! 3. resolves each cache key once: a vertex needed by several dependents, or two vertices with
//!    equal keys, share one load/execution (the others are reported cached);
//! 4. runs at most [`Solver::with_concurrency`] `cache_key`/`execute` calls at once;
//! 5. fails fast: the first error triggers the [`CancellationToken`] every call received, starts
//!    nothing new, waits for started calls to return, and returns [`Error::Vertex`] naming the
//!    vertex with the executor's error as `source()`. A panicking call is such an error;
//! 6. reports [`Event`]s to a [`ProgressSink`]; an executor logs through its [`ExecContext`].
//!
//! **Architecture invariant: the solver knows no op meanings.** What a vertex *is* (a source, an
//! exec, a file op) lives behind the [`Executor`] trait, which `kiln-engine` implements. This
//! crate must not depend on any other kiln crate, nor on anything that knows about images,
//! snapshots, plugins or the build graph encoding: tokio, tokio-util and thiserror only.

mod error;
mod executor;
mod graph;
mod progress;
mod solve;

pub use error::{BoxError, Error, Phase};
pub use executor::{ExecContext, Executor};
pub use graph::{Graph, Vertex};
pub use progress::{Event, NoProgress, ProgressSink};
pub use solve::{Solution, Solver, Status};
pub use tokio_util::sync::CancellationToken;
