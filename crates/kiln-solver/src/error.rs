use std::fmt;

/// The error type executors return: anything `Send + Sync`, kept as the [`Error::Vertex`] source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which executor call failed for a vertex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// [`Executor::cache_key`](crate::Executor::cache_key).
    CacheKey,
    /// [`Executor::load`](crate::Executor::load).
    Load,
    /// [`Executor::execute`](crate::Executor::execute).
    Execute,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::CacheKey => "cache key computation",
            Phase::Load => "cache lookup",
            Phase::Execute => "execution",
        })
    }
}

/// Everything that can go wrong while validating a graph or solving it.
#[derive(Debug, thiserror::Error)]
pub enum Error<K> {
    /// Two vertices share one id.
    #[error("vertex {id:?} ({name}) is defined more than once")]
    DuplicateVertex {
        /// The repeated id.
        id: K,
        /// Display name of the second definition.
        name: String,
    },
    /// A vertex names an input that is not in the graph.
    #[error("vertex {id:?} ({name}) has input {input:?}, which is not in the graph")]
    UnknownInput {
        /// The vertex naming the input.
        id: K,
        /// Its display name.
        name: String,
        /// The missing input id.
        input: K,
    },
    /// A requested target is not in the graph.
    #[error("requested target {id:?} is not in the graph")]
    UnknownTarget {
        /// The missing id.
        id: K,
    },
    /// The graph has a cycle; `path` starts and ends with the same vertex.
    #[error("the build graph has a cycle: {}", render_path(path))]
    Cycle {
        /// The vertices of the cycle (id, display name), first repeated last.
        path: Vec<(K, String)>,
    },
    /// The executor gave equal cache keys to vertices that depend on each other, so a vertex
    /// would wait for itself. `path` lists vertices whose keys chain back to the first one.
    #[error(
        "cache keys collide along a dependency path: {}; an executor's cache key must cover \
         its inputs' keys",
        render_path(path)
    )]
    KeyCycle {
        /// The vertices (id, display name), each depending on one sharing the next one's key.
        path: Vec<(K, String)>,
    },
    /// An executor call failed (or panicked) for one vertex; `source` is the executor's error.
    #[error("{name} ({id:?}): {phase} failed")]
    Vertex {
        /// The failing vertex.
        id: K,
        /// Its display name.
        name: String,
        /// Which call failed.
        phase: Phase,
        /// The executor's error (or the panic message).
        #[source]
        source: BoxError,
    },
    /// `solve` was polled outside a tokio runtime, where it cannot spawn its tasks.
    #[error("the solver must run inside a tokio runtime")]
    NoRuntime,
    /// The caller's cancellation token was triggered.
    #[error("the build was cancelled")]
    Cancelled,
}

fn render_path<K: fmt::Debug>(path: &[(K, String)]) -> String {
    path.iter()
        .map(|(id, name)| format!("{name} ({id:?})"))
        .collect::<Vec<_>>()
        .join(" -> ")
}
