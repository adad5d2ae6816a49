use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{BoxError, Event, ProgressSink};

/// What gives vertices their meaning; `kiln-engine` implements it for build-graph ops.
///
/// Every call runs in its own tokio task, so a panic becomes an [`Error::Vertex`](crate::Error)
/// for that vertex instead of tearing down the solve. The returned futures may borrow `self` and
/// the arguments.
pub trait Executor<K>: Send + Sync + 'static {
    /// A vertex's result, e.g. a snapshot handle; cloned for every dependent.
    type Output: Clone + Send + Sync + 'static;
    /// A cache key. Vertices with equal keys are treated as the same work.
    type Key: Clone + Eq + Hash + Send + Sync + 'static;

    /// Computes `v`'s cache key from its own definition and its inputs' keys (`input_keys[i]`
    /// belongs to `inputs[i]` of the vertex, repeats included). May do real work (hashing a local
    /// context), so it runs under the concurrency cap and should stop when `cancel` fires.
    ///
    /// The key must cover the input keys: a vertex whose key equals one of its inputs' keys is
    /// rejected with [`Error::KeyCycle`](crate::Error::KeyCycle).
    fn cache_key(
        &self,
        v: &K,
        input_keys: &[Self::Key],
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Key, BoxError>> + Send;

    /// Looks `key` up in the cache. Meant to be cheap: it is not counted against the cap.
    fn load(
        &self,
        v: &K,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Option<Self::Output>, BoxError>> + Send;

    /// Whether `key` has a result, without producing it. The solver asks this of the vertices
    /// below a cache hit, only to report them as cached: an executor whose `load` does real work
    /// (fetching layers of an imported cache) answers from its indexes instead, so that a step
    /// nothing needs costs nothing. By default, a [`load`](Self::load) whose result is dropped.
    fn has_cached(
        &self,
        v: &K,
        key: &Self::Key,
    ) -> impl Future<Output = Result<bool, BoxError>> + Send
    where
        K: Sync,
    {
        async move { Ok(self.load(v, key).await?.is_some()) }
    }

    /// Runs `v` on its inputs' outputs (`inputs[i]` belongs to `inputs[i]` of the vertex) and
    /// records the result in the cache under `key` itself. `cx` carries the cancellation token,
    /// which the executor must honour (the solve waits for every started call to return), and a
    /// way to emit log lines for the vertex.
    fn execute(
        &self,
        v: &K,
        key: &Self::Key,
        inputs: Vec<Self::Output>,
        cx: &ExecContext<K>,
    ) -> impl Future<Output = Result<Self::Output, BoxError>> + Send;
}

/// What an executing vertex gets from the solver besides its inputs.
#[derive(Clone)]
pub struct ExecContext<K> {
    pub(crate) id: K,
    pub(crate) name: Arc<str>,
    pub(crate) cancel: CancellationToken,
    pub(crate) progress: Arc<dyn ProgressSink<K>>,
}

impl<K: Clone + 'static> ExecContext<K> {
    /// Fires when the solve is cancelled (fail-fast elsewhere, or by the caller); the executor
    /// should stop and return an error soon after.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The executing vertex's id.
    pub fn id(&self) -> &K {
        &self.id
    }

    /// The executing vertex's display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a [`Event::Log`] line for this vertex to the progress sink.
    pub fn log(&self, line: impl Into<String>) {
        self.progress.send(Event::Log {
            id: self.id.clone(),
            name: self.name.to_string(),
            line: line.into(),
        });
    }
}

impl<K: std::fmt::Debug> std::fmt::Debug for ExecContext<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecContext")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}
