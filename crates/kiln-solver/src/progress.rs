use std::time::Duration;

/// What happened to a vertex, for a progress display.
///
/// Per vertex, a solve sends either one `Cached`, or one `Started` followed by any number of
/// `Log`s and exactly one terminal event (`Done`, `Error` or `Cancelled`). A vertex that is never
/// needed (an input of a cache hit) or that fail-fast stopped before it started gets no event.
/// Failures of `cache_key` and `load` send no event: they are reported by the returned
/// [`Error`](crate::Error), which names the vertex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// The vertex started executing (it holds a concurrency slot).
    Started {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
    },
    /// The vertex's output came from the cache (or from another vertex with the same cache key).
    Cached {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
    },
    /// The vertex finished executing.
    Done {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
        /// Time spent in `execute`.
        duration: Duration,
    },
    /// The vertex's execution failed; this failure stops the solve.
    Error {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
        /// The error, rendered with its `source()` chain.
        message: String,
    },
    /// The vertex was executing when the solve was cancelled (fail-fast or by the caller), and
    /// its execution gave up.
    Cancelled {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
    },
    /// A line of output the executor emitted while executing the vertex
    /// (through [`ExecContext::log`](crate::ExecContext::log)).
    Log {
        /// The vertex id.
        id: K,
        /// Its display name.
        name: String,
        /// The line, without its trailing newline.
        line: String,
    },
}

/// Where progress events go. Sending must not block: the solver calls it from its scheduling
/// loop and from executor tasks.
pub trait ProgressSink<K>: Send + Sync + 'static {
    /// Delivers one event.
    fn send(&self, event: Event<K>);
}

/// Events are sent on the channel; a closed receiver drops them, since progress display is not
/// a reason to fail a build.
impl<K: Send + 'static> ProgressSink<K> for tokio::sync::mpsc::UnboundedSender<Event<K>> {
    fn send(&self, event: Event<K>) {
        let _ = tokio::sync::mpsc::UnboundedSender::send(self, event);
    }
}

/// A sink that discards every event (the solver's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl<K> ProgressSink<K> for NoProgress {
    fn send(&self, _event: Event<K>) {}
}

/// A shared sink, so one renderer can serve the solver and the steps around it.
impl<K, S: ProgressSink<K> + ?Sized> ProgressSink<K> for std::sync::Arc<S> {
    fn send(&self, event: Event<K>) {
        (**self).send(event)
    }
}
