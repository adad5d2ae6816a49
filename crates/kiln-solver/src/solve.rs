use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::graph::find_cycle;
use crate::{
    BoxError, Error, Event, ExecContext, Executor, Graph, NoProgress, Phase, ProgressSink,
};

/// How a needed vertex got its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Loaded from the cache, or shared with another vertex that had the same cache key.
    Cached,
    /// Executed in this solve.
    Executed {
        /// Time spent in `execute`.
        duration: Duration,
    },
}

/// The result of a successful solve.
#[derive(Debug, Clone)]
pub struct Solution<K, O> {
    /// Outputs of the requested targets, in the order they were requested.
    pub outputs: Vec<O>,
    /// Every vertex the solve needed, in graph order, with how its output was obtained. Vertices
    /// below a cache hit were not needed and are absent.
    pub vertices: Vec<(K, Status)>,
}

impl<K: PartialEq, O> Solution<K, O> {
    /// How `id` was obtained, or `None` if the solve did not need it.
    pub fn status(&self, id: &K) -> Option<Status> {
        self.vertices
            .iter()
            .find(|(k, _)| k == id)
            .map(|&(_, status)| status)
    }
}

/// Solves graphs with one [`Executor`]; see the crate docs for the semantics.
pub struct Solver<K, E> {
    executor: Arc<E>,
    concurrency: usize,
    progress: Arc<dyn ProgressSink<K>>,
}

impl<K, E> Solver<K, E>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    E: Executor<K>,
{
    /// A solver running at most `available_parallelism()` `cache_key`/`execute` calls at once
    /// and discarding progress events.
    pub fn new(executor: Arc<E>) -> Self {
        Self {
            executor,
            concurrency: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            progress: Arc::new(NoProgress),
        }
    }

    /// Caps the number of `cache_key` and `execute` calls in flight (at least 1). The cap is per
    /// solve: a sub-solve started from inside `execute` has its own, so it cannot deadlock
    /// waiting for the slot its caller holds.
    pub fn with_concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Sends progress events to `sink`.
    pub fn with_progress(mut self, sink: impl ProgressSink<K>) -> Self {
        self.progress = Arc::new(sink);
        self
    }

    /// Resolves `targets` in `graph` and returns their outputs in order.
    ///
    /// The first failure cancels the rest: pending work is not started, running calls see their
    /// token fire, and `solve` returns once every started call has returned. Triggering
    /// `cancel` does the same and returns [`Error::Cancelled`]. Must run inside a tokio runtime.
    pub async fn solve(
        &self,
        graph: &Graph<K>,
        targets: &[K],
        cancel: &CancellationToken,
    ) -> Result<Solution<K, E::Output>, Error<K>> {
        let targets = targets
            .iter()
            .map(|t| {
                graph
                    .index_of(t)
                    .ok_or_else(|| Error::UnknownTarget { id: t.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::NoRuntime);
        }
        let mut run = Run {
            graph,
            executor: Arc::clone(&self.executor),
            progress: Arc::clone(&self.progress),
            slots: Arc::new(Semaphore::new(self.concurrency)),
            cancel: cancel.child_token(),
            names: graph
                .vertices
                .iter()
                .map(|v| v.name.as_str().into())
                .collect(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            failure: None,
        };
        run.solve(&targets).await
    }
}

impl<K, E> Debug for Solver<K, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solver")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What a finished task produced.
enum Outcome<Key, O> {
    /// The solve was cancelled before the task got to call the executor.
    NotStarted,
    Key(Key),
    Loaded(Option<O>),
    /// Answer of [`Executor::has_cached`] for a vertex below a hit.
    Probed(bool),
    Executed(O, Duration),
}

type TaskResult<Key, O> = Result<Outcome<Key, O>, BoxError>;

/// One finished task, tied back to its vertex.
struct Completion<Key, O> {
    vertex: usize,
    phase: Phase,
    result: TaskResult<Key, O>,
}

enum NodeState<O> {
    Idle,
    Loading,
    /// Cache miss; `pending` inputs are still being resolved.
    Waiting {
        pending: usize,
    },
    Executing,
    Done(O),
}

/// The unit of resolution: all needed vertices with one cache key, resolved once.
struct Node<O> {
    state: NodeState<O>,
    /// The vertex whose definition and inputs are used: the first one requested.
    rep: usize,
    /// Vertices requested so far that have this key.
    members: Vec<usize>,
    /// Nodes in `Waiting` that count this one among their pending inputs (once per input).
    waiters: Vec<usize>,
}

/// State of one solve. All scheduling happens on the task polling `solve`; executor calls run in
/// spawned tasks so that panics are contained and work overlaps.
struct Run<'g, K, E: Executor<K>> {
    graph: &'g Graph<K>,
    executor: Arc<E>,
    progress: Arc<dyn ProgressSink<K>>,
    slots: Arc<Semaphore>,
    /// Child of the caller's token, so fail-fast never cancels the caller's other work.
    cancel: CancellationToken,
    names: Vec<Arc<str>>,
    tasks: JoinSet<TaskResult<E::Key, E::Output>>,
    running: HashMap<tokio::task::Id, (usize, Phase)>,
    /// The error the solve will return; once set, nothing new is started.
    failure: Option<Error<K>>,
}

impl<K, E> Run<'_, K, E>
where
    K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
    E: Executor<K>,
{
    async fn solve(&mut self, targets: &[usize]) -> Result<Solution<K, E::Output>, Error<K>> {
        let needed = self.needed(targets);
        let keys = self.compute_keys(&needed).await?;

        // Vertices with equal keys share one node: that is the dedup of equal work.
        let mut node_of = vec![usize::MAX; needed.len()];
        let mut node_by_key: HashMap<&E::Key, usize> = HashMap::new();
        for (v, key) in keys.iter().enumerate() {
            if let Some(key) = key {
                let next = node_by_key.len();
                node_of[v] = *node_by_key.entry(key).or_insert(next);
            }
        }
        let node_count = node_by_key.len();
        self.check_key_cycles(&needed, &node_of, node_count)?;

        let mut resolve = Resolve {
            nodes: (0..node_count)
                .map(|_| Node {
                    state: NodeState::Idle,
                    rep: usize::MAX,
                    members: Vec::new(),
                    waiters: Vec::new(),
                })
                .collect(),
            node_of,
            keys,
            requested: vec![false; needed.len()],
            status: vec![None; needed.len()],
        };
        for &t in targets {
            self.request(&mut resolve, t, None);
        }
        while let Some(done) = self.next().await {
            self.on_resolve_step(&mut resolve, done);
        }
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        self.report_cached_below_hits(&needed, &mut resolve).await;

        let outputs = targets
            .iter()
            .map(|&t| match &resolve.nodes[resolve.node_of[t]].state {
                NodeState::Done(out) => out.clone(),
                _ => unreachable!("every target is resolved once no work is left and none failed"),
            })
            .collect();
        let vertices = resolve
            .status
            .iter()
            .enumerate()
            .filter_map(|(v, s)| Some((self.graph.vertices[v].id.clone(), (*s)?)))
            .collect();
        Ok(Solution { outputs, vertices })
    }

    /// Vertices the solve never had to look at (everything below a cache hit) are still part
    /// of the build: like BuildKit, report those that have a cached result as CACHED, in graph
    /// order, so a no-op rebuild lists every step. A failed lookup here only means no report.
    async fn report_cached_below_hits(
        &mut self,
        needed: &[bool],
        r: &mut Resolve<E::Key, E::Output>,
    ) {
        let skipped: Vec<usize> = (0..needed.len())
            .filter(|&v| needed[v] && !r.requested[v])
            .collect();
        for &v in &skipped {
            if let Some(key) = r.keys[v].clone() {
                self.spawn_load(v, key, true);
            }
        }
        let mut hits = vec![false; needed.len()];
        while let Some(done) = self.next().await {
            if let Ok(Outcome::Probed(true)) = done.result {
                hits[done.vertex] = true;
            }
        }
        for v in skipped.into_iter().filter(|&v| hits[v]) {
            r.status[v] = Some(Status::Cached);
            self.emit_cached(v);
        }
    }

    /// Marks the vertices reachable from the targets; only those get cache keys.
    fn needed(&self, targets: &[usize]) -> Vec<bool> {
        let mut needed = vec![false; self.graph.vertices.len()];
        let mut stack = targets.to_vec();
        while let Some(v) = stack.pop() {
            if !std::mem::replace(&mut needed[v], true) {
                stack.extend(&self.graph.inputs[v]);
            }
        }
        needed
    }

    /// Computes the key of every needed vertex in DAG order, independent ones in parallel.
    async fn compute_keys(&mut self, needed: &[bool]) -> Result<Vec<Option<E::Key>>, Error<K>> {
        let graph = self.graph;
        let mut keys: Vec<Option<E::Key>> = vec![None; needed.len()];
        let mut pending: Vec<usize> = graph.inputs.iter().map(Vec::len).collect();
        // One entry per input occurrence, matching `pending`.
        let mut dependents = vec![Vec::new(); needed.len()];
        for v in (0..needed.len()).filter(|&v| needed[v]) {
            for &u in &graph.inputs[v] {
                dependents[u].push(v);
            }
        }
        for v in (0..needed.len()).filter(|&v| needed[v] && pending[v] == 0) {
            self.spawn_key(v, Vec::new());
        }
        while let Some(Completion {
            vertex,
            phase,
            result,
        }) = self.next().await
        {
            match result {
                Err(source) => self.fail(vertex, phase, source),
                Ok(Outcome::Key(key)) => {
                    keys[vertex] = Some(key);
                    for &d in &dependents[vertex] {
                        pending[d] -= 1;
                        if pending[d] == 0 && self.failure.is_none() {
                            let input_keys = graph.inputs[d]
                                .iter()
                                .map(|&u| {
                                    keys[u].clone().expect("inputs are keyed before dependents")
                                })
                                .collect();
                            self.spawn_key(d, input_keys);
                        }
                    }
                }
                Ok(_) => {}
            }
        }
        match self.failure.take() {
            Some(failure) => Err(failure),
            None => Ok(keys),
        }
    }

    /// Rejects keys that would make a vertex wait for itself: two vertices with one key, one
    /// depending (transitively) on the other. The graph is acyclic, so a cycle among nodes can
    /// only come from such a collision.
    fn check_key_cycles(
        &self,
        needed: &[bool],
        node_of: &[usize],
        node_count: usize,
    ) -> Result<(), Error<K>> {
        let graph = self.graph;
        let mut edges = vec![Vec::new(); node_count];
        for v in (0..needed.len()).filter(|&v| needed[v]) {
            for &u in &graph.inputs[v] {
                edges[node_of[v]].push(node_of[u]);
            }
        }
        let Some(cycle) = find_cycle(&edges) else {
            return Ok(());
        };
        let vertex = |v: usize| {
            let v = &graph.vertices[v];
            (v.id.clone(), v.name.clone())
        };
        let mut path = Vec::new();
        let mut last_input = None;
        for pair in cycle.windows(2) {
            let edge = (0..needed.len())
                .filter(|&v| needed[v] && node_of[v] == pair[0])
                .find_map(|v| {
                    graph.inputs[v]
                        .iter()
                        .find(|&&u| node_of[u] == pair[1])
                        .map(|&u| (v, u))
                });
            if let Some((v, u)) = edge {
                path.push(vertex(v));
                last_input = Some(u);
            }
        }
        path.extend(last_input.map(vertex));
        Err(Error::KeyCycle { path })
    }

    /// Asks for vertex `v`'s output on behalf of `parent` (a waiting node) or of the caller.
    /// Returns whether the output is already there; if not, `parent` is woken when it is.
    fn request(
        &mut self,
        r: &mut Resolve<E::Key, E::Output>,
        v: usize,
        parent: Option<usize>,
    ) -> bool {
        let n = r.node_of[v];
        if !std::mem::replace(&mut r.requested[v], true) {
            r.nodes[n].members.push(v);
            if let NodeState::Done(_) = r.nodes[n].state {
                // Another vertex with this key already resolved it.
                r.status[v] = Some(Status::Cached);
                self.emit_cached(v);
            }
        }
        match r.nodes[n].state {
            NodeState::Done(_) => return true,
            NodeState::Idle => {
                r.nodes[n].rep = v;
                r.nodes[n].state = NodeState::Loading;
                let key = r.keys[v].clone().expect("needed vertices are keyed");
                self.spawn_load(v, key, false);
            }
            _ => {}
        }
        if let Some(p) = parent {
            r.nodes[n].waiters.push(p);
        }
        false
    }

    fn on_resolve_step(
        &mut self,
        r: &mut Resolve<E::Key, E::Output>,
        done: Completion<E::Key, E::Output>,
    ) {
        let Completion {
            vertex,
            phase,
            result,
        } = done;
        let n = r.node_of[vertex];
        match result {
            Err(source) => self.fail(vertex, phase, source),
            Ok(Outcome::Executed(out, duration)) => {
                self.progress.send(Event::Done {
                    id: self.id(vertex),
                    name: self.name(vertex),
                    duration,
                });
                r.status[vertex] = Some(Status::Executed { duration });
                self.finish(r, n, out);
            }
            Ok(Outcome::Loaded(Some(out))) => {
                r.status[vertex] = Some(Status::Cached);
                self.emit_cached(vertex);
                self.finish(r, n, out);
            }
            Ok(Outcome::Loaded(None)) => {
                if self.failure.is_some() {
                    return;
                }
                r.nodes[n].state = NodeState::Waiting { pending: 0 };
                let graph = self.graph;
                let mut pending = 0;
                for &u in &graph.inputs[vertex] {
                    if !self.request(r, u, Some(n)) {
                        pending += 1;
                    }
                }
                r.nodes[n].state = NodeState::Waiting { pending };
                if pending == 0 {
                    self.start_execute(r, n);
                }
            }
            Ok(Outcome::Key(_) | Outcome::NotStarted | Outcome::Probed(_)) => {}
        }
    }

    /// Records node `n`'s output and starts the nodes that were waiting only for it.
    fn finish(&mut self, r: &mut Resolve<E::Key, E::Output>, n: usize, out: E::Output) {
        let rep = r.nodes[n].rep;
        for m in r.nodes[n].members.clone() {
            if m != rep {
                r.status[m] = Some(Status::Cached);
                self.emit_cached(m);
            }
        }
        r.nodes[n].state = NodeState::Done(out);
        for w in std::mem::take(&mut r.nodes[n].waiters) {
            if let NodeState::Waiting { pending } = &mut r.nodes[w].state {
                *pending -= 1;
                if *pending == 0 && self.failure.is_none() {
                    self.start_execute(r, w);
                }
            }
        }
    }

    fn start_execute(&mut self, r: &mut Resolve<E::Key, E::Output>, n: usize) {
        let rep = r.nodes[n].rep;
        let inputs = self.graph.inputs[rep]
            .iter()
            .map(|&u| match &r.nodes[r.node_of[u]].state {
                NodeState::Done(out) => out.clone(),
                _ => unreachable!("a node executes only once all its inputs are done"),
            })
            .collect();
        r.nodes[n].state = NodeState::Executing;
        let key = r.keys[rep].clone().expect("needed vertices are keyed");
        self.spawn_execute(rep, key, inputs);
    }

    fn spawn_key(&mut self, v: usize, input_keys: Vec<E::Key>) {
        let executor = Arc::clone(&self.executor);
        let slots = Arc::clone(&self.slots);
        let cancel = self.cancel.clone();
        let id = self.id(v);
        self.spawn(v, Phase::CacheKey, async move {
            let Some(_slot) = acquire(&slots, &cancel).await else {
                return Ok(Outcome::NotStarted);
            };
            let key = executor.cache_key(&id, &input_keys, &cancel).await?;
            Ok(Outcome::Key(key))
        });
    }

    /// Looks `key` up for vertex `v`: its output ([`Executor::load`]), or with `probe` only
    /// whether it has one ([`Executor::has_cached`]), for a vertex below a hit.
    fn spawn_load(&mut self, v: usize, key: E::Key, probe: bool) {
        let executor = Arc::clone(&self.executor);
        let cancel = self.cancel.clone();
        let id = self.id(v);
        self.spawn(v, Phase::Load, async move {
            if cancel.is_cancelled() {
                return Ok(Outcome::NotStarted);
            }
            Ok(if probe {
                Outcome::Probed(executor.has_cached(&id, &key).await?)
            } else {
                Outcome::Loaded(executor.load(&id, &key).await?)
            })
        });
    }

    fn spawn_execute(&mut self, v: usize, key: E::Key, inputs: Vec<E::Output>) {
        let executor = Arc::clone(&self.executor);
        let slots = Arc::clone(&self.slots);
        let cx = ExecContext {
            id: self.id(v),
            name: Arc::clone(&self.names[v]),
            cancel: self.cancel.clone(),
            progress: Arc::clone(&self.progress),
        };
        self.spawn(v, Phase::Execute, async move {
            let Some(_slot) = acquire(&slots, &cx.cancel).await else {
                return Ok(Outcome::NotStarted);
            };
            // Sent from the task, once the slot is held, so `Started` means really running.
            cx.progress.send(Event::Started {
                id: cx.id.clone(),
                name: cx.name.to_string(),
            });
            let start = Instant::now();
            let out = executor.execute(&cx.id, &key, inputs, &cx).await?;
            Ok(Outcome::Executed(out, start.elapsed()))
        });
    }

    fn spawn(
        &mut self,
        v: usize,
        phase: Phase,
        task: impl Future<Output = TaskResult<E::Key, E::Output>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.running.insert(handle.id(), (v, phase));
    }

    /// Waits for the next task to finish; `None` once no task is left.
    async fn next(&mut self) -> Option<Completion<E::Key, E::Output>> {
        loop {
            self.note_outside_cancel();
            if self.tasks.is_empty() {
                return None;
            }
            let joined = {
                let (cancel, tasks) = (&self.cancel, &mut self.tasks);
                tokio::select! {
                    _ = cancel.cancelled(), if self.failure.is_none() => None,
                    joined = tasks.join_next_with_id() => joined,
                }
            };
            let (task, result) = match joined {
                None => continue,
                Some(Ok((task, result))) => (task, result),
                Some(Err(err)) => (err.id(), Err(join_error(err))),
            };
            if let Some((vertex, phase)) = self.running.remove(&task) {
                return Some(Completion {
                    vertex,
                    phase,
                    result,
                });
            }
        }
    }

    /// Our token fired without a recorded failure: the caller cancelled.
    fn note_outside_cancel(&mut self) {
        if self.failure.is_none() && self.cancel.is_cancelled() {
            self.failure = Some(Error::Cancelled);
        }
    }

    /// Handles an executor failure: the first one becomes the solve's error and cancels the rest;
    /// later ones are consequences of that cancellation.
    fn fail(&mut self, v: usize, phase: Phase, source: BoxError) {
        self.note_outside_cancel();
        let first = self.failure.is_none();
        if phase == Phase::Execute {
            // Execute only fails after `Started` was sent, so this closes that vertex.
            let (id, name) = (self.id(v), self.name(v));
            self.progress.send(if first {
                Event::Error {
                    id,
                    name,
                    message: render_chain(&*source),
                }
            } else {
                Event::Cancelled { id, name }
            });
        }
        if first {
            self.failure = Some(Error::Vertex {
                id: self.id(v),
                name: self.name(v),
                phase,
                source,
            });
            self.cancel.cancel();
        }
    }

    fn emit_cached(&self, v: usize) {
        self.progress.send(Event::Cached {
            id: self.id(v),
            name: self.name(v),
        });
    }

    fn id(&self, v: usize) -> K {
        self.graph.vertices[v].id.clone()
    }

    fn name(&self, v: usize) -> String {
        self.graph.vertices[v].name.clone()
    }
}

/// Resolution state, per node and per vertex (indexed like the graph's vertices).
struct Resolve<Key, O> {
    nodes: Vec<Node<O>>,
    node_of: Vec<usize>,
    keys: Vec<Option<Key>>,
    requested: Vec<bool>,
    status: Vec<Option<Status>>,
}

/// Waits for a concurrency slot unless the solve is cancelled first.
async fn acquire<'a>(
    slots: &'a Semaphore,
    cancel: &CancellationToken,
) -> Option<SemaphorePermit<'a>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        slot = slots.acquire() => slot.ok(),
    }
}

/// Turns a panicked (or aborted) task into the error of its vertex.
fn join_error(err: JoinError) -> BoxError {
    match err.try_into_panic() {
        Ok(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            format!("the executor panicked: {message}").into()
        }
        Err(err) => format!("the executor task ended abnormally: {err}").into(),
    }
}

/// `error: cause: cause`, as a progress line.
fn render_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests;
