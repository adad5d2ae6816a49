use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Barrier, Notify};

use super::*;
use crate::Vertex;

type Id = &'static str;

/// What the test executor does when asked to execute a vertex, besides producing its output.
enum Act {
    /// Wait at the barrier: finishes only if every party runs at the same time.
    Rendezvous(Arc<Barrier>),
    /// Wait for `gate`, then fail.
    FailAfter(Arc<Notify>),
    Panic,
    /// Signal `started`, then wait for cancellation and record that it came.
    AwaitCancel {
        started: Arc<Notify>,
        cancelled: Arc<AtomicBool>,
    },
    Log(&'static str),
    /// Yield a few times so that overlapping executions would be seen.
    Busy,
}

/// A scriptable executor. Keys are `base(input keys)`; outputs are `id[input outputs]`.
#[derive(Default)]
struct Script {
    acts: HashMap<Id, Act>,
    /// Key base per id when it is not the id itself (to make two vertices' keys equal).
    base: HashMap<Id, &'static str>,
    /// A key that ignores the inputs (to build key collisions).
    fixed_key: HashMap<Id, &'static str>,
    key_fails: Vec<Id>,
    cache: Mutex<HashMap<String, String>>,
    loads: Mutex<Vec<Id>>,
    probes: Mutex<Vec<Id>>,
    executes: Mutex<Vec<Id>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Script {
    fn act(mut self, id: Id, act: Act) -> Self {
        self.acts.insert(id, act);
        self
    }

    fn cached(self, key: &str, output: &str) -> Self {
        self.cache
            .lock()
            .unwrap()
            .insert(key.to_owned(), output.to_owned());
        self
    }

    fn executes(&self) -> Vec<Id> {
        let mut e = self.executes.lock().unwrap().clone();
        e.sort_unstable();
        e
    }

    fn loads(&self) -> Vec<Id> {
        let mut l = self.loads.lock().unwrap().clone();
        l.sort_unstable();
        l
    }
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

impl Executor<Id> for Script {
    type Output = String;
    type Key = String;

    async fn cache_key(
        &self,
        v: &Id,
        input_keys: &[String],
        _cancel: &CancellationToken,
    ) -> Result<String, BoxError> {
        if self.key_fails.contains(v) {
            return Err(Boom.into());
        }
        if let Some(key) = self.fixed_key.get(v) {
            return Ok((*key).to_owned());
        }
        let base = self.base.get(v).unwrap_or(v);
        Ok(format!("{base}({})", input_keys.join(",")))
    }

    async fn load(&self, v: &Id, key: &String) -> Result<Option<String>, BoxError> {
        self.loads.lock().unwrap().push(v);
        Ok(self.cache.lock().unwrap().get(key).cloned())
    }

    async fn has_cached(&self, v: &Id, key: &String) -> Result<bool, BoxError> {
        self.probes.lock().unwrap().push(v);
        Ok(self.cache.lock().unwrap().contains_key(key))
    }

    async fn execute(
        &self,
        v: &Id,
        key: &String,
        inputs: Vec<String>,
        cx: &ExecContext<Id>,
    ) -> Result<String, BoxError> {
        self.executes.lock().unwrap().push(v);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result: Result<(), BoxError> = match self.acts.get(v) {
            None => Ok(()),
            Some(Act::Rendezvous(barrier)) => {
                barrier.wait().await;
                Ok(())
            }
            Some(Act::FailAfter(gate)) => {
                gate.notified().await;
                Err(Boom.into())
            }
            Some(Act::Panic) => panic!("kaboom in {v}"),
            Some(Act::AwaitCancel { started, cancelled }) => {
                started.notify_one();
                cx.cancel().cancelled().await;
                cancelled.store(true, Ordering::SeqCst);
                Err("interrupted".into())
            }
            Some(Act::Log(line)) => {
                cx.log(*line);
                Ok(())
            }
            Some(Act::Busy) => {
                for _ in 0..20 {
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result?;
        let out = format!("{v}[{}]", inputs.join(","));
        self.cache.lock().unwrap().insert(key.clone(), out.clone());
        Ok(out)
    }
}

fn v(id: Id, inputs: &[Id]) -> Vertex<Id> {
    Vertex::new(id, format!("step {id}"), inputs.iter().copied())
}

fn diamond() -> Graph<Id> {
    Graph::new([
        v("a", &[]),
        v("b", &["a"]),
        v("c", &["a"]),
        v("d", &["b", "c"]),
    ])
    .unwrap()
}

struct Outcome {
    result: Result<Solution<Id, String>, Error<Id>>,
    events: Vec<Event<Id>>,
}

/// The events of one vertex, in order, with durations zeroed so they can be compared.
fn events_of(events: &[Event<Id>], id: Id) -> Vec<Event<Id>> {
    events
        .iter()
        .filter(|e| match e {
            Event::Started { id: i, .. }
            | Event::Cached { id: i, .. }
            | Event::Done { id: i, .. }
            | Event::Error { id: i, .. }
            | Event::Cancelled { id: i, .. }
            | Event::Log { id: i, .. } => *i == id,
        })
        .map(|e| match e {
            Event::Done { id, name, .. } => Event::Done {
                id: *id,
                name: name.clone(),
                duration: Duration::ZERO,
            },
            other => other.clone(),
        })
        .collect()
}

async fn solve_with(
    script: &Arc<Script>,
    graph: &Graph<Id>,
    targets: &[Id],
    concurrency: usize,
    cancel: &CancellationToken,
) -> Outcome {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let solver = Solver::new(Arc::clone(script))
        .with_concurrency(concurrency)
        .with_progress(tx);
    // A generous guard: a scheduling bug must fail the test, not hang it.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        solver.solve(graph, targets, cancel),
    )
    .await
    .expect("solve did not finish: vertices that must overlap did not run concurrently");
    drop(solver);
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Outcome { result, events }
}

async fn solve(script: &Arc<Script>, graph: &Graph<Id>, targets: &[Id]) -> Outcome {
    solve_with(script, graph, targets, 4, &CancellationToken::new()).await
}

fn started(id: Id) -> Event<Id> {
    Event::Started {
        id,
        name: format!("step {id}"),
    }
}

fn done(id: Id) -> Event<Id> {
    Event::Done {
        id,
        name: format!("step {id}"),
        duration: Duration::ZERO,
    }
}

fn cached(id: Id) -> Event<Id> {
    Event::Cached {
        id,
        name: format!("step {id}"),
    }
}

fn cancelled(id: Id) -> Event<Id> {
    Event::Cancelled {
        id,
        name: format!("step {id}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_executes_the_shared_vertex_once() {
    let script = Arc::new(Script::default());
    let out = solve(&script, &diamond(), &["d"]).await;
    let solution = out.result.unwrap();
    assert_eq!(solution.outputs, ["d[b[a[]],c[a[]]]"]);
    assert_eq!(script.executes(), ["a", "b", "c", "d"]);
    assert_eq!(script.loads(), ["a", "b", "c", "d"]);
    for id in ["a", "b", "c", "d"] {
        assert!(matches!(
            solution.status(&id),
            Some(Status::Executed { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_targets_come_back_in_request_order() {
    let script = Arc::new(Script::default());
    let out = solve(&script, &diamond(), &["c", "a", "b", "c"]).await;
    assert_eq!(
        out.result.unwrap().outputs,
        ["c[a[]]", "a[]", "b[a[]]", "c[a[]]"]
    );
    assert_eq!(script.executes(), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_inputs_are_passed_once_per_occurrence() {
    let script = Arc::new(Script::default());
    let graph = Graph::new([v("a", &[]), v("b", &["a", "a"])]).unwrap();
    let out = solve(&script, &graph, &["b"]).await;
    assert_eq!(out.result.unwrap().outputs, ["b[a[],a[]]"]);
    assert_eq!(script.executes(), ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_vertices_run_concurrently() {
    // Each waits at a two-party barrier: the solve can only finish if both run at once.
    let barrier = Arc::new(Barrier::new(2));
    let script = Arc::new(
        Script::default()
            .act("a", Act::Rendezvous(Arc::clone(&barrier)))
            .act("b", Act::Rendezvous(barrier)),
    );
    let graph = Graph::new([v("a", &[]), v("b", &[]), v("t", &["a", "b"])]).unwrap();
    let out = solve(&script, &graph, &["t"]).await;
    assert_eq!(out.result.unwrap().outputs, ["t[a[],b[]]"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_one_never_has_two_executes_in_flight() {
    let mut script = Script::default();
    let leaves = ["l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7"];
    for l in leaves {
        script = script.act(l, Act::Busy);
    }
    let script = Arc::new(script);
    let mut vertices: Vec<_> = leaves.iter().map(|l| v(l, &[])).collect();
    vertices.push(v("t", &leaves));
    let graph = Graph::new(vertices).unwrap();
    let out = solve_with(&script, &graph, &["t"], 1, &CancellationToken::new()).await;
    out.result.unwrap();
    assert_eq!(script.executes().len(), 9);
    assert_eq!(script.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_on_the_target_touches_no_input() {
    let script = Arc::new(Script::default().cached("d(b(a()),c(a()))", "from cache"));
    let out = solve(&script, &diamond(), &["d"]).await;
    let solution = out.result.unwrap();
    assert_eq!(solution.outputs, ["from cache"]);
    assert!(script.executes().is_empty());
    // The inputs are only probed afterwards (never loaded: a load may fetch layers), to
    // report those that are cached; none is here.
    assert_eq!(script.loads(), ["d"]);
    let mut probes = script.probes.lock().unwrap().clone();
    probes.sort_unstable();
    assert_eq!(probes, ["a", "b", "c"]);
    assert_eq!(solution.vertices, [("d", Status::Cached)]);
    assert_eq!(out.events, [cached("d")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_the_target_with_a_hit_on_its_input_executes_only_the_target() {
    let script = Arc::new(Script::default().cached("b(a())", "b-cached"));
    let graph = Graph::new([v("a", &[]), v("b", &["a"]), v("t", &["b"])]).unwrap();
    let out = solve(&script, &graph, &["t"]).await;
    let solution = out.result.unwrap();
    assert_eq!(solution.outputs, ["t[b-cached]"]);
    assert_eq!(script.executes(), ["t"]);
    assert_eq!(script.loads(), ["b", "t"]);
    assert_eq!(*script.probes.lock().unwrap(), ["a"]);
    assert_eq!(solution.status(&"b"), Some(Status::Cached));
    assert_eq!(solution.status(&"a"), None);
    assert_eq!(events_of(&out.events, "b"), [cached("b")]);
    assert_eq!(events_of(&out.events, "t"), [started("t"), done("t")]);
    assert!(events_of(&out.events, "a").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_solve_is_all_cached() {
    let script = Arc::new(Script::default());
    solve(&script, &diamond(), &["d"]).await.result.unwrap();
    let again = solve(&script, &diamond(), &["d"]).await;
    assert_eq!(again.result.unwrap().outputs, ["d[b[a[]],c[a[]]]"]);
    assert_eq!(
        script.executes().len(),
        4,
        "nothing executed the second time"
    );
    // Every step is reported, like BuildKit's no-op rebuild: the hit first, then the steps
    // below it in graph order.
    assert_eq!(
        again.events,
        [cached("d"), cached("a"), cached("b"), cached("c")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_names_the_vertex_and_cancels_the_sibling() {
    let gate = Arc::new(Notify::new());
    let sibling_cancelled = Arc::new(AtomicBool::new(false));
    let script = Arc::new(
        Script::default()
            .act("bad", Act::FailAfter(Arc::clone(&gate)))
            .act(
                "slow",
                Act::AwaitCancel {
                    started: gate,
                    cancelled: Arc::clone(&sibling_cancelled),
                },
            ),
    );
    let graph = Graph::new([
        v("bad", &[]),
        v("slow", &[]),
        v("t", &["bad", "slow"]),
        v("after", &["t"]),
    ])
    .unwrap();
    let out = solve(&script, &graph, &["after"]).await;
    let err = out.result.unwrap_err();
    let Error::Vertex {
        id, name, phase, ..
    } = &err
    else {
        panic!("expected a vertex error, got {err:?}");
    };
    assert_eq!(
        (*id, name.as_str(), *phase),
        ("bad", "step bad", Phase::Execute)
    );
    assert_eq!(err.to_string(), "step bad (\"bad\"): execution failed");
    let source = std::error::Error::source(&err).expect("the executor's error is the source");
    assert_eq!(source.to_string(), "boom");
    assert!(source.downcast_ref::<Boom>().is_some());

    assert!(sibling_cancelled.load(Ordering::SeqCst));
    assert_eq!(script.executes(), ["bad", "slow"], "dependents never start");
    assert_eq!(
        events_of(&out.events, "bad"),
        [
            started("bad"),
            Event::Error {
                id: "bad",
                name: "step bad".into(),
                message: "boom".into()
            }
        ]
    );
    assert_eq!(
        events_of(&out.events, "slow"),
        [started("slow"), cancelled("slow")]
    );
    assert!(events_of(&out.events, "t").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_executor_is_an_error_for_its_vertex() {
    let script = Arc::new(Script::default().act("a", Act::Panic));
    let out = solve(&script, &diamond(), &["d"]).await;
    let err = out.result.unwrap_err();
    assert!(matches!(
        err,
        Error::Vertex {
            id: "a",
            phase: Phase::Execute,
            ..
        }
    ));
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(source, "the executor panicked: kaboom in a");
    assert_eq!(
        events_of(&out.events, "a"),
        [
            started("a"),
            Event::Error {
                id: "a",
                name: "step a".into(),
                message: source
            }
        ]
    );
    assert_eq!(script.executes(), ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_key_failure_stops_before_any_execution() {
    let mut script = Script::default();
    script.key_fails.push("b");
    let script = Arc::new(script);
    let out = solve(&script, &diamond(), &["d"]).await;
    let err = out.result.unwrap_err();
    assert!(matches!(
        err,
        Error::Vertex {
            id: "b",
            phase: Phase::CacheKey,
            ..
        }
    ));
    assert!(script.executes().is_empty());
    assert!(script.loads().is_empty());
    assert!(out.events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertices_with_equal_keys_execute_once() {
    let mut script = Script::default();
    script.base.insert("x", "same");
    script.base.insert("y", "same");
    let script = Arc::new(script);
    let graph = Graph::new([v("x", &[]), v("y", &[]), v("t", &["x", "y"])]).unwrap();
    let out = solve(&script, &graph, &["t"]).await;
    let solution = out.result.unwrap();

    let executed = script.executes();
    assert_eq!(executed.len(), 2, "one of x/y, and t: {executed:?}");
    let winner = if executed.contains(&"x") { "x" } else { "y" };
    let loser = if winner == "x" { "y" } else { "x" };
    assert_eq!(solution.outputs, [format!("t[{winner}[],{winner}[]]")]);
    assert!(matches!(
        solution.status(&winner),
        Some(Status::Executed { .. })
    ));
    assert_eq!(solution.status(&loser), Some(Status::Cached));
    assert_eq!(
        events_of(&out.events, winner),
        [started(winner), done(winner)]
    );
    assert_eq!(events_of(&out.events, loser), [cached(loser)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_events_per_vertex() {
    let script = Arc::new(Script::default().act("a", Act::Log("hello from a")));
    let out = solve(&script, &diamond(), &["d"]).await;
    out.result.unwrap();
    assert_eq!(
        events_of(&out.events, "a"),
        [
            started("a"),
            Event::Log {
                id: "a",
                name: "step a".into(),
                line: "hello from a".into()
            },
            done("a")
        ]
    );
    for id in ["b", "c", "d"] {
        assert_eq!(events_of(&out.events, id), [started(id), done(id)]);
    }
    // DAG order: a vertex starts only after its inputs are done.
    let pos = |e: &Event<Id>| out.events.iter().position(|x| x == e).unwrap();
    assert!(
        pos(&started("b"))
            > out
                .events
                .iter()
                .position(|e| matches!(e, Event::Done { id: "a", .. }))
                .unwrap()
    );
    assert!(pos(&started("d")) > pos(&started("b")));
    assert!(pos(&started("d")) > pos(&started("c")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_token_cancels_the_solve() {
    let started_gate = Arc::new(Notify::new());
    let was_cancelled = Arc::new(AtomicBool::new(false));
    let script = Arc::new(Script::default().act(
        "slow",
        Act::AwaitCancel {
            started: Arc::clone(&started_gate),
            cancelled: Arc::clone(&was_cancelled),
        },
    ));
    let graph = Graph::new([v("slow", &[]), v("t", &["slow"])]).unwrap();
    let cancel = CancellationToken::new();
    let trigger = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            started_gate.notified().await;
            cancel.cancel();
        })
    };
    let out = solve_with(&script, &graph, &["t"], 2, &cancel).await;
    trigger.await.unwrap();
    assert!(matches!(out.result, Err(Error::Cancelled)));
    assert!(was_cancelled.load(Ordering::SeqCst));
    assert_eq!(
        events_of(&out.events, "slow"),
        [started("slow"), cancelled("slow")]
    );
    assert_eq!(script.executes(), ["slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_cancelled_token_runs_nothing() {
    let script = Arc::new(Script::default());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let out = solve_with(&script, &diamond(), &["d"], 2, &cancel).await;
    assert!(matches!(out.result, Err(Error::Cancelled)));
    assert!(script.executes().is_empty());
    assert!(out.events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_keys_along_a_path_are_rejected_before_running() {
    let mut script = Script::default();
    script.fixed_key.insert("a", "k");
    script.fixed_key.insert("b", "k");
    let script = Arc::new(script);
    let graph = Graph::new([v("a", &[]), v("b", &["a"]), v("t", &["b"])]).unwrap();
    let out = solve(&script, &graph, &["t"]).await;
    let err = out.result.unwrap_err();
    let Error::KeyCycle { path } = &err else {
        panic!("expected a key cycle, got {err:?}");
    };
    let ids: Vec<_> = path.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, ["b", "a"]);
    assert!(script.executes().is_empty());
    assert!(script.loads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_target_is_rejected() {
    let script = Arc::new(Script::default());
    let out = solve(&script, &diamond(), &["nope"]).await;
    assert!(matches!(
        out.result,
        Err(Error::UnknownTarget { id: "nope" })
    ));
}

#[test]
fn solve_is_send_and_works_on_a_current_thread_runtime() {
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let script = Arc::new(Script::default());
    let graph = diamond();
    let solver = Solver::new(script);
    let cancel = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let solution = rt
        .block_on(assert_send(solver.solve(&graph, &["d"], &cancel)))
        .unwrap();
    assert_eq!(solution.outputs, ["d[b[a[]],c[a[]]]"]);
}

#[test]
fn polling_outside_a_runtime_is_an_error_not_a_panic() {
    let solver = Solver::new(Arc::new(Script::default()));
    let graph = diamond();
    let cancel = CancellationToken::new();
    let fut = solver.solve(&graph, &["d"], &cancel);
    // A minimal executor that is not tokio: the solve must refuse rather than panic on spawn.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(result) => assert!(matches!(result, Err(Error::NoRuntime))),
        std::task::Poll::Pending => panic!("expected an immediate NoRuntime error"),
    }
}
