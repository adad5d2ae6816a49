//! The typed build graph, BuildKit's LLB in spirit: ops with typed fields ([`Op`]), a [`State`]
//! builder that frontends and instruction plugins use, and a [`Definition`] — the graph in a
//! canonical, deterministic encoding in which every vertex has a content digest.
//!
//! Architecture invariant: pure data and pure functions. No I/O, no async, and no dependency on
//! any kiln crate but `kiln-types`: plugins compile this crate, so it must stay small.
//! The digest of a vertex covers its op and its inputs' digests, never display metadata, so the
//! same graph has the same digests on every run and machine.

mod definition;
mod op;
mod state;

pub use definition::{Definition, Edge, GraphError, SourceLocation, Vertex, VertexMeta};
pub use op::*;
pub use state::{ExecBuilder, FileBuilder, State};
