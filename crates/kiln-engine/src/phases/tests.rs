//! The phases driven one by one, as a daemon's session drives them, with the real Dockerfile
//! frontend and `exec` plugin (built here with `cargo build`, as kiln-plugin-host's tests
//! build theirs), on a context whose `/bin/sh` is the host's static busybox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use kiln_solver::NoProgress;

use super::*;
use crate::{
    CacheImport, CacheLocation, EngineConfig, ExecRuntime, Export, ImageFormat, NetworkMode,
    RunOptions, SecretProvider, SecretSource,
};

const PLUGINS: [&str; 2] = ["kiln-frontend-dockerfile", "kiln-exec"];

/// A directory holding the frontend and exec plugins, built once for the test run.
fn plugin_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(&workspace).args(["build", "--quiet"]);
        for p in PLUGINS {
            cmd.args(["-p", p]);
        }
        let status = cmd.status().expect("run cargo build for the plugins");
        assert!(
            status.success(),
            "building the plugins failed; try `cargo build -p {}`",
            PLUGINS.join(" -p ")
        );
        let dir = tempfile::tempdir().unwrap();
        for p in PLUGINS {
            let lib = format!("lib{}.so", p.replace('-', "_"));
            std::fs::copy(target.join("debug").join(&lib), dir.path().join(&lib)).unwrap();
        }
        dir
    })
    .path()
}

/// A context whose `/bin/sh` is the host's static busybox, with `dockerfile`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("these tests need a static busybox (Debian: apt-get install busybox-static)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(busybox, dir.path().join("sh")).unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn engine(root: &Path) -> Engine {
    Engine::new(EngineConfig {
        root: root.to_owned(),
        plugin_dirs: vec![plugin_dir().to_owned()],
        concurrency: None,
        insecure_registries: Vec::new(),
        registries: BTreeMap::new(),
        gc: crate::gc::GcPolicy::default(),
    })
    .unwrap()
}

/// A request building `context` with nothing else set (also used by `attest`'s tests).
pub(crate) fn request(context: &Path) -> BuildRequest {
    BuildRequest {
        context: context.to_owned(),
        dockerfile: context.join("Dockerfile"),
        frontend: None,
        // A reproducible image, so that two builds of it have one digest.
        build_args: BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), "0".to_owned())]),
        target: None,
        no_cache: false,
        platform: Platform::host(),
        platforms: Vec::new(),
        exports: Vec::new(),
        tags: Vec::new(),
        secrets: BTreeMap::new(),
        runtime: ExecRuntime::Embedded,
        build_contexts: BTreeMap::new(),
        ssh: BTreeMap::new(),
        network: NetworkMode::Default,
        allow: BTreeSet::new(),
        run_options: RunOptions::default(),
        no_cache_filter: Vec::new(),
        labels: BTreeMap::new(),
        call: None,
        explain_cache: false,
        cache_to: Vec::new(),
        cache_from: Vec::new(),
    }
}

fn progress() -> Arc<dyn ProgressSink<Digest>> {
    Arc::new(NoProgress)
}

fn leases(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join("leases")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read leases: {e}"),
    }
}

const TWO_LINES: &str = "FROM scratch\nCOPY sh /bin/sh\nRUN echo one > /one\n";

fn oci(dest: &Path) -> Export {
    Export::Oci {
        dest: dest.to_owned(),
        tar: true,
        format: ImageFormat::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_phases_one_by_one_give_what_build_gives() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(TWO_LINES);
    let engine = engine(store.path());
    let mut req = request(ctx.path());
    req.exports = vec![oci(&store.path().join("phased.tar"))];

    let planned = engine
        .frontend(req.clone(), progress(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(planned.call_result(), None);
    assert_eq!(planned.platforms(), [Platform::host()]);
    assert_eq!(planned.frontend(), "dockerfile");
    // The build holds its lease from the frontend to the end of the export.
    assert_eq!(leases(store.path()).len(), 1);
    let solved = engine.solve(planned).await.unwrap();
    let ran: Vec<&str> = solved
        .steps()
        .iter()
        .filter(|(_, st)| matches!(st, Status::Executed { .. }))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(
        ran.iter().any(|n| n.contains("RUN echo one > /one")),
        "{:?}",
        solved.steps()
    );
    assert_eq!(leases(store.path()).len(), 1);
    let phased = engine.export(solved).await.unwrap();
    assert!(
        leases(store.path()).is_empty(),
        "{:?}",
        leases(store.path())
    );
    let phased = phased.image.expect("an image export").manifest.digest;

    // `build` is the same three phases: the same image, from the cache now. Two at once on
    // one engine, as a daemon runs its clients' builds.
    let mut again = req.clone();
    again.exports = vec![oci(&store.path().join("built.tar"))];
    let mut other = req.clone();
    other.exports = vec![oci(&store.path().join("other.tar"))];
    let (a, b) = tokio::join!(
        engine.build(again, progress(), CancellationToken::new()),
        engine.build(other, progress(), CancellationToken::new()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.image.unwrap().manifest.digest, phased);
    assert_eq!(b.image.unwrap().manifest.digest, phased);
    assert!(
        a.steps.iter().all(|(_, st)| *st == Status::Cached),
        "{:?}",
        a.steps
    );
    assert!(leases(store.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_build_dropped_ends_cleanly() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(TWO_LINES);
    let engine = engine(store.path());
    // A registry that accepts the cache import's connection and never answers: the import
    // stays in flight until the build stops it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut req = request(ctx.path());
    req.cache_from = vec![CacheImport {
        location: CacheLocation::Registry {
            reference: format!("{addr}/cache:latest").parse().unwrap(),
        },
    }];
    let planned = engine
        .frontend(req, progress(), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(leases(store.path()).len(), 1);
    let conn = tokio::task::spawn_blocking(move || listener.accept().unwrap().0)
        .await
        .unwrap();
    drop(planned);
    assert!(
        leases(store.path()).is_empty(),
        "{:?}",
        leases(store.path())
    );
    // The import's connection is closed: it was stopped, not left waiting on the registry.
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut conn = conn;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        closed.is_ok(),
        "the cache import still waits on the registry 10 s after the build was dropped: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_ends_after_the_frontend() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context("FROM scratch AS base\nCOPY sh /bin/sh\nFROM base AS app\n");
    let engine = engine(store.path());
    let mut req = request(ctx.path());
    req.call = Some(crate::Call::Targets);
    let planned = engine
        .frontend(req, progress(), CancellationToken::new())
        .await
        .unwrap();
    let answer = planned.call_result().expect("an answer").to_owned();
    assert!(answer.contains("\"app\""), "{answer}");
    let err = engine.solve(planned).await.err().expect("nothing to solve");
    assert!(err.to_string().contains("nothing to solve"), "{err}");
    assert!(leases(store.path()).is_empty());
}

/// A client's secrets, counting what is asked of it.
struct Client {
    asked: AtomicUsize,
    answer: Result<&'static str, &'static str>,
}

impl SecretProvider for Client {
    fn secret(&self, id: &str) -> Result<Vec<u8>, String> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        assert_eq!(id, "tok");
        self.answer
            .map(|s| s.as_bytes().to_vec())
            .map_err(str::to_owned)
    }
}

const SECRET_STAGES: &str = "FROM scratch AS base\nCOPY sh /bin/sh\n\
     FROM base AS plain\nRUN echo plain > /plain\n\
     FROM base AS uses\n\
     RUN --mount=type=secret,id=tok,required=true read -r t < /run/secrets/tok; echo \"got $t\" > /got\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_provided_secret_is_asked_for_when_a_step_mounts_it_and_only_then() {
    let store = tempfile::tempdir().unwrap();
    let ctx = context(SECRET_STAGES);
    let engine = engine(store.path());
    let client = Arc::new(Client {
        asked: AtomicUsize::new(0),
        answer: Ok("s3cret"),
    });
    let build = |target: &str, out: &str| {
        let mut req = request(ctx.path());
        req.target = Some(target.to_owned());
        req.secrets = BTreeMap::from([("tok".to_owned(), SecretSource::provider(client.clone()))]);
        req.exports = vec![Export::Local {
            dest: store.path().join(out),
        }];
        engine.build(req, progress(), CancellationToken::new())
    };
    // A stage that mounts no secret does not ask for it.
    build("plain", "plain").await.unwrap();
    assert_eq!(client.asked.load(Ordering::SeqCst), 0);
    build("uses", "uses").await.unwrap();
    assert_eq!(client.asked.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read_to_string(store.path().join("uses/got")).unwrap(),
        "got s3cret\n"
    );
    // A cached step runs nothing, and asks nothing.
    build("uses", "again").await.unwrap();
    assert_eq!(client.asked.load(Ordering::SeqCst), 1);

    // A provider that fails fails the step, naming the secret.
    let gone = Arc::new(Client {
        asked: AtomicUsize::new(0),
        answer: Err("the client went away"),
    });
    let mut req = request(ctx.path());
    req.target = Some("uses".to_owned());
    req.no_cache = true;
    req.secrets = BTreeMap::from([("tok".to_owned(), SecretSource::provider(gone.clone()))]);
    let err = engine
        .build(req, progress(), CancellationToken::new())
        .await
        .expect_err("the secret cannot be had");
    // The whole chain, as the CLI prints it.
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        message.contains("secret tok: the client went away"),
        "{message}"
    );
    assert_eq!(gone.asked.load(Ordering::SeqCst), 1);
}

/// One engine serves several builds at once (a daemon's clients): it is shared between
/// tasks, and every phase's future may move between the runtime's threads.
#[test]
fn an_engine_and_its_phases_are_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    fn sent<F: std::future::Future + Send>(_: F) {}
    shared::<Engine>();
    shared::<Planned>();
    shared::<Solved>();
    #[allow(dead_code)]
    fn futures(engine: &Engine, req: BuildRequest, planned: Planned, solved: Solved) {
        sent(engine.build(req.clone(), progress(), CancellationToken::new()));
        sent(engine.frontend(req, progress(), CancellationToken::new()));
        sent(engine.solve(planned));
        sent(engine.export(solved));
    }
}

#[test]
fn a_call_answer_is_read_from_its_field_or_from_an_older_frontends_label() {
    use kiln_types::image::ImageConfig;
    let platform: kiln_types::Platform = "linux/amd64".parse().unwrap();
    let mut old = ImageConfig::scratch(&platform);
    old.config.labels = Some(BTreeMap::from([(
        CALL_RESULT_LABEL.to_owned(),
        r#"{"targets":[]}"#.to_owned(),
    )]));
    // A protocol 2 frontend: the label.
    assert_eq!(
        call_answer(None, &old).as_deref(),
        Some(r#"{"targets":[]}"#)
    );
    // A protocol 3 frontend: the field, which wins.
    let v = serde_json::json!({"targets": [{"name": "app"}]});
    assert_eq!(
        call_answer(Some(&v), &old).as_deref(),
        Some(r#"{"targets":[{"name":"app"}]}"#)
    );
    // Neither: no answer.
    assert_eq!(call_answer(None, &ImageConfig::scratch(&platform)), None);
}
