//! The daemon: one engine, one store, and a build session per `Build` stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_api::v1 as pb;
use kiln_api::v1::builder_server::{Builder, BuilderServer};
use kiln_engine::Engine;
use kiln_solver::{CancellationToken, Event, ProgressSink};
use kiln_types::{Digest, Platform};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::localcache::{self, ClientPaths};
use crate::view::{FailureView, OutcomeView};
use crate::wire::{self, Invalid, Placed};
use crate::{Address, Error};

/// Size of the pieces outputs are streamed in.
const CHUNK: usize = 1 << 20;

/// What `kiln serve` was told.
pub struct ServeConfig {
    /// Where to listen.
    pub addr: Address,
    /// The platforms to report (`--platform`); empty: the host's.
    pub platforms: Vec<Platform>,
    /// The store root (mirrors and session directories live under it).
    pub root: PathBuf,
    /// `--insecure`: plain tcp (loopback only).
    pub insecure: bool,
    /// `--tlscacert`, `--tlscert`, `--tlskey`: mutual TLS on tcp.
    pub tls: Option<ServerTls>,
}

/// The files of the daemon's mutual TLS: clients must show a certificate signed by `cacert`.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The CA of the clients' certificates.
    pub cacert: PathBuf,
    /// The daemon's certificate.
    pub cert: PathBuf,
    /// The daemon's key.
    pub key: PathBuf,
}

impl ServerTls {
    fn config(&self) -> Result<tonic::transport::ServerTlsConfig, Error> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("read", p, e));
        // A client CA root makes a client certificate required (client_auth_optional stays
        // false): mutual TLS, as buildkitd with --tlscacert.
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                read(&self.cert)?,
                read(&self.key)?,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(read(&self.cacert)?)))
    }
}

/// Counters the daemon reports through `Info` and its log.
#[derive(Default)]
struct Counters {
    builds: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    running: AtomicU32,
}

struct Daemon {
    engine: Arc<Engine>,
    root: PathBuf,
    platforms: Vec<Platform>,
    counters: Arc<Counters>,
    /// Cancelled at shutdown: every running build's token is a child of it.
    shutdown: CancellationToken,
    /// One lock per context mirror (see the session's sync).
    mirror_locks: MirrorLocks,
}

type MirrorLocks = Arc<std::sync::Mutex<BTreeMap<PathBuf, Arc<tokio::sync::RwLock<()>>>>>;

/// A mirror's lock as a session holds it.
enum MirrorHold {
    Shared(tokio::sync::OwnedRwLockReadGuard<()>),
    Exclusive(tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl MirrorHold {
    /// The lock held shared (a build reading the mirror), once the sync is done.
    fn shared(self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        match self {
            MirrorHold::Shared(g) => g,
            MirrorHold::Exclusive(g) => g.downgrade(),
        }
    }
}

/// Serves `engine` on `config.addr` until `shutdown` resolves; then stops accepting, cancels
/// the running builds, waits for their sessions to end and removes the socket.
pub async fn serve(
    engine: Engine,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    sweep_sessions(&config.root);
    collect_mirrors(config.root.clone()).await;
    let token = CancellationToken::new();
    let daemon = Daemon {
        engine: Arc::new(engine),
        root: config.root.clone(),
        platforms: if config.platforms.is_empty() {
            vec![Platform::host()]
        } else {
            config.platforms.clone()
        },
        counters: Arc::default(),
        shutdown: token.clone(),
        mirror_locks: MirrorLocks::default(),
    };
    let signal = {
        let token = token.clone();
        async move {
            shutdown.await;
            eprintln!("kiln serve: shutting down: cancelling running builds");
            token.cancel();
        }
    };
    let service = BuilderServer::new(daemon)
        .max_decoding_message_size(4 * CHUNK)
        .max_encoding_message_size(4 * CHUNK);
    let addr = config.addr.to_string();
    let serve_err = |e: tonic::transport::Error| Error::Serve {
        addr: addr.clone(),
        why: crate::view::error_chain(&e),
    };
    match &config.addr {
        Address::Unix(path) => {
            let listener = bind_unix(path, &addr)?;
            eprintln!("kiln serve: listening on {addr}");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let result = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(service, incoming, signal)
                .await
                .map_err(serve_err);
            // Only ours: a socket another daemon bound since is not removed (bind_unix refuses
            // a live one, so this path is still the one we made).
            let _ = std::fs::remove_file(path);
            result
        }
        Address::Tcp { host, port } => {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = &config.tls {
                builder = builder.tls_config(tls.config()?).map_err(serve_err)?;
            } else if !config.insecure {
                return Err(Error::Serve {
                    addr,
                    why: "tcp needs mutual TLS: give --tlscacert, --tlscert and --tlskey (or, on \
                          a loopback address only, --insecure for plain tcp)"
                        .to_owned(),
                });
            } else if !config.addr.is_loopback() {
                return Err(Error::Serve {
                    addr,
                    why: "--insecure is allowed on loopback addresses only (127.0.0.1, ::1, \
                          localhost): anyone who reaches the port could run builds as this \
                          daemon's user"
                        .to_owned(),
                });
            }
            let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
                .await
                .map_err(|e| Error::Serve {
                    addr: addr.clone(),
                    why: e.to_string(),
                })?;
            let local = listener.local_addr().map_err(|e| Error::Serve {
                addr: addr.clone(),
                why: e.to_string(),
            })?;
            eprintln!("kiln serve: listening on tcp://{local}");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            builder
                .serve_with_incoming_shutdown(service, incoming, signal)
                .await
                .map_err(serve_err)
        }
    }
}

/// Where sessions keep the Dockerfile and the outputs going back to the client, one directory
/// each (not the store's `sessions/`, which holds kiln-snapshot's process locks).
const SESSIONS: &str = "serve-sessions";

/// Removes what sessions of dead daemons left under [`SESSIONS`]: a directory whose lock file
/// nobody holds. Best effort: what cannot be removed waits for the next start.
fn sweep_sessions(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(SESSIONS)) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let held = std::fs::File::open(dir.join("lock"))
            .map(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
            .unwrap_or(false);
        if !held {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Where the mirrors of clients' contexts live (one directory each, see [`mirror_dir`]).
const CONTEXTS: &str = "contexts";

/// The context mirrors a daemon keeps in the store at `root` (`kiln du` lists them as
/// `source.local` records), least recently used first.
pub fn mirrors(root: &Path) -> Result<Vec<kiln_contextsync::MirrorUsage>, kiln_contextsync::Error> {
    kiln_contextsync::list_mirrors(&root.join(CONTEXTS))
}

/// Removes the mirror `dir` (one of [`mirrors`]) unless a build uses it; whether it was removed.
pub fn remove_mirror(dir: &Path) -> Result<bool, kiln_contextsync::Error> {
    kiln_contextsync::remove_unused(dir)
}

/// Removes the mirrors BuildKit's default policy removes of its `source.local` records: not
/// used for 48 h, least recently used first, once the mirrors take more than 512 MB; never a
/// mirror a session holds. Best effort: a failure is logged, the daemon goes on.
async fn collect_mirrors(root: PathBuf) {
    let contexts = root.join(CONTEXTS);
    let removed = tokio::task::spawn_blocking(move || {
        kiln_contextsync::collect(
            &contexts,
            kiln_contextsync::DEFAULT_UNUSED_FOR,
            kiln_contextsync::DEFAULT_MAX_BYTES,
        )
    })
    .await;
    match removed {
        Ok(Ok(removed)) if !removed.is_empty() => {
            let bytes: u64 = removed.iter().map(|m| m.size).sum();
            eprintln!(
                "kiln serve: removed {} unused context mirror(s), {bytes} bytes",
                removed.len()
            );
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("kiln serve: collecting context mirrors: {e}"),
        Err(e) => eprintln!("kiln serve: collecting context mirrors: {e}"),
    }
}

/// Binds the unix socket: a stale socket file (no daemon answers on it) is replaced, a socket
/// a live daemon holds is an error.
fn bind_unix(path: &Path, addr: &str) -> Result<tokio::net::UnixListener, Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Serve {
                addr: addr.to_owned(),
                why: "another daemon is listening on this socket".to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(|e| Error::io("remove stale socket", path, e))?;
    }
    tokio::net::UnixListener::bind(path).map_err(|e| Error::Serve {
        addr: addr.to_owned(),
        why: e.to_string(),
    })
}

type BuildStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Builder for Daemon {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let root = self.root.clone();
        // Reading usage takes the store's collection lock: not on a runtime thread.
        let store = tokio::task::spawn_blocking(move || {
            kiln_engine::gc::disk_usage(&root)
                .map(|u| pb::StoreUsage {
                    records: u.items.len() as u64,
                    bytes: u.items.iter().map(|i| i.size).sum(),
                })
                .map_err(|e| Status::internal(format!("reading the store: {e}")))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(pb::InfoResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            platforms: self.platforms.iter().map(ToString::to_string).collect(),
            store: Some(store),
            sync: Some(pb::SyncCounters {
                builds: self.counters.builds.load(Ordering::Relaxed),
                files_received: self.counters.files.load(Ordering::Relaxed),
                bytes_received: self.counters.bytes.load(Ordering::Relaxed),
            }),
            running_builds: self.counters.running.load(Ordering::Relaxed),
            features: wire::features(),
        }))
    }

    type BuildStream = BuildStream;

    async fn build(
        &self,
        request: Request<Streaming<pb::ClientMessage>>,
    ) -> Result<Response<Self::BuildStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::ServerMessage, Status>>(16);
        let session = Session {
            engine: self.engine.clone(),
            root: self.root.clone(),
            cancel: self.shutdown.child_token(),
            number: self.counters.builds.fetch_add(1, Ordering::Relaxed) + 1,
            counters: self.counters.clone(),
            mirror_locks: self.mirror_locks.clone(),
        };
        // The session feeds the response stream from its own task; a status it ends with is
        // the stream's last item.
        tokio::spawn(async move {
            let root = session.root.clone();
            {
                let _running = Running::enter(&session.counters);
                if let Err(status) = session.run(inbound, tx.clone()).await {
                    let _ = tx.send(Err(status)).await;
                }
            }
            // After each build, as BuildKit's GC runs after a solve; the session's own mirrors
            // are no longer held, mirrors of running builds are.
            collect_mirrors(root).await;
        });
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as BuildStream
        ))
    }
}

/// Counts a running build for as long as it lives.
struct Running(Arc<Counters>);

impl Running {
    fn enter(counters: &Arc<Counters>) -> Running {
        counters.running.fetch_add(1, Ordering::Relaxed);
        Running(counters.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What goes to the client, in order: progress (from the engine's sink, which must not
/// block) and, once the queue is flushed, outputs and the result.
enum Outbound {
    Message(Box<pb::ServerMessage>),
    Flush(oneshot::Sender<()>),
}

/// The engine's progress sink of a session: events queue without blocking the solver. Step
/// names and errors show the client's paths.
struct WireProgress(mpsc::UnboundedSender<Outbound>, ClientPaths);

impl ProgressSink<Digest> for WireProgress {
    fn send(&self, event: Event<Digest>) {
        let mut event = wire::event_to_wire(event);
        self.1.fix(&mut event.name);
        if event.kind == pb::EventKind::Error as i32 {
            self.1.fix(&mut event.text);
        }
        let msg = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Progress(event)),
        };
        let _ = self.0.send(Outbound::Message(Box::new(msg)));
    }
}

struct Session {
    engine: Arc<Engine>,
    root: PathBuf,
    cancel: CancellationToken,
    number: u64,
    counters: Arc<Counters>,
    mirror_locks: MirrorLocks,
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Status {
        Status::invalid_argument(e.0)
    }
}

/// The next message of the client; its end before the session is over is an error.
async fn next(
    inbound: &mut Streaming<pb::ClientMessage>,
) -> Result<pb::client_message::Msg, Status> {
    match inbound.message().await? {
        Some(pb::ClientMessage { msg: Some(m) }) => Ok(m),
        Some(pb::ClientMessage { msg: None }) => Err(bad("empty client message")),
        None => Err(Status::cancelled("the client closed the session")),
    }
}

fn entry_from_wire(e: pb::Entry) -> kiln_contextsync::Entry {
    const NS: i64 = 1_000_000_000;
    kiln_contextsync::Entry {
        path: e.path,
        kind: match pb::EntryKind::try_from(e.kind) {
            Ok(pb::EntryKind::Dir) => kiln_contextsync::Kind::Dir,
            Ok(pb::EntryKind::Symlink) => kiln_contextsync::Kind::Symlink,
            _ => kiln_contextsync::Kind::File,
        },
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime_sec: e.mtime_ns.div_euclid(NS),
        mtime_nsec: u32::try_from(e.mtime_ns.rem_euclid(NS)).unwrap_or(0),
        target: (!e.link_target.is_empty()).then_some(e.link_target),
    }
}

/// `rel` inside the mirror `tree` when it is a regular file holding `content`, reached without
/// a symlink or `..` (the client made the tree: nothing in it is followed).
pub(crate) fn in_mirror(tree: &Path, rel: &str, content: &[u8]) -> Option<PathBuf> {
    use std::path::Component;
    let mut path = tree.to_owned();
    let parts: Vec<_> = Path::new(rel).components().collect();
    for (i, c) in parts.iter().enumerate() {
        let Component::Normal(name) = c else {
            return None;
        };
        path.push(name);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() || (last && !meta.is_file()) || (!last && !meta.is_dir()) {
            return None;
        }
    }
    (!parts.is_empty() && std::fs::read(&path).ok()? == content).then_some(path)
}

/// The key a mirror directory is named by: a hash, so that a client's key never becomes a path.
fn mirror_dir(root: &Path, key: &str) -> PathBuf {
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    root.join(CONTEXTS).join(hash)
}

impl Session {
    /// The lock of the mirror at `path` (made on first use; kept while the daemon runs, one
    /// small entry per directory a client ever synced).
    fn mirror_lock(&self, path: &Path) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self
            .mirror_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(path.to_owned()).or_default().clone()
    }

    async fn run(
        self,
        mut inbound: Streaming<pb::ClientMessage>,
        tx: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    ) -> Result<(), Status> {
        let send = |msg: pb::server_message::Msg| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(pb::ServerMessage { msg: Some(msg) }))
                    .await
                    .map_err(|_| Status::cancelled("the client went away"))
            }
        };
        let request = match next(&mut inbound).await? {
            pb::client_message::Msg::Request(r) => r,
            _ => return Err(bad("a session starts with a BuildRequest")),
        };
        let sessions = self.root.join(SESSIONS);
        std::fs::create_dir_all(&sessions).map_err(internal)?;
        let dir = tempfile::Builder::new()
            .prefix("session-")
            .tempdir_in(&sessions)
            .map_err(internal)?;
        // Held while the session lives: a daemon starting on this store removes the
        // directories of sessions whose lock nobody holds (a daemon killed mid-build).
        let lock = std::fs::File::create(dir.path().join("lock")).map_err(internal)?;
        lock.lock().map_err(internal)?;
        // The Dockerfile under its own name (messages and `<name>.dockerignore` use it), never
        // a path the client chose.
        let name = Path::new(&request.dockerfile_name)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .unwrap_or_else(|| "Dockerfile".to_owned());
        let dockerfile_dir = dir.path().join("dockerfile");
        std::fs::create_dir(&dockerfile_dir).map_err(internal)?;
        let dockerfile = dockerfile_dir.join(&name);
        std::fs::write(&dockerfile, &request.dockerfile).map_err(internal)?;
        // The Dockerfile's own ignore file, beside it as on the client: the frontend reads it
        // from there (`<name>` is the base name checked above, so this stays in the directory).
        if let Some(ignore) = &request.dockerfile_ignore {
            if ignore.len() as u64 > kiln_contextsync::MAX_IGNORE_FILE_BYTES {
                return Err(bad(format!(
                    "{name}.dockerignore: {} bytes, more than the {} an ignore file may have",
                    ignore.len(),
                    kiln_contextsync::MAX_IGNORE_FILE_BYTES
                )));
            }
            std::fs::write(dockerfile_dir.join(format!("{name}.dockerignore")), ignore)
                .map_err(internal)?;
        }

        // Context sync. A build reads its mirrors until it ends, holding each one's lock shared;
        // a sync that changes a mirror holds it exclusively, so it waits for the builds reading
        // it. A sync that changes nothing (the same directory built again, a shared base
        // layout) needs no more than a shared lock, so such builds run side by side.
        let mut mirrors = Vec::new();
        let mut holds = Vec::new();
        let mut contexts = BTreeMap::new();
        // The `type=local` cache directories: mirror directory, tree, and the index of the
        // lock held in `mirrors`, by context name.
        let mut caches: BTreeMap<String, (PathBuf, PathBuf, usize)> = BTreeMap::new();
        let mut shown = ClientPaths::default();
        let (mut files, mut bytes) = (0u64, 0u64);
        for lc in &request.local_contexts {
            let listing = match next(&mut inbound).await? {
                pb::client_message::Msg::Listing(l) if l.name == lc.name => l,
                _ => {
                    return Err(bad(format!(
                        "expected the listing of context {:?}",
                        lc.name
                    )))
                }
            };
            let path = mirror_dir(&self.root, &lc.key);
            let entries: Vec<_> = listing.entries.into_iter().map(entry_from_wire).collect();
            let lock = self.mirror_lock(&path);
            // Held until the build ends: a collector (this daemon's, `kiln prune`) never
            // removes the mirror meanwhile; it also stamps the mirror's last use.
            let source = if lc.name.is_empty() {
                "the main context".to_owned()
            } else {
                format!("build context {:?}", lc.name)
            };
            let hold_path = path.clone();
            let in_use = tokio::task::spawn_blocking(move || {
                kiln_contextsync::InUse::hold(&hold_path, &source)
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            holds.push(in_use);
            let plan_of = |entries: Vec<kiln_contextsync::Entry>| {
                let path = path.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let mirror = kiln_contextsync::Mirror::open(&path)?;
                        let plan = mirror.plan(entries)?;
                        Ok::<_, kiln_contextsync::Error>((mirror, plan))
                    })
                    .await
                    .map_err(internal)?
                    .map_err(bad)
                }
            };
            let shared = lock.clone().read_owned().await;
            let (mirror, plan) = plan_of(entries.clone()).await?;
            let (mirror, plan, held) = if plan.is_noop() {
                (mirror, plan, MirrorHold::Shared(shared))
            } else {
                // Planned again under the exclusive lock: another sync may have run between.
                drop((mirror, plan, shared));
                let exclusive = lock.write_owned().await;
                let (mirror, plan) = plan_of(entries).await?;
                (mirror, plan, MirrorHold::Exclusive(exclusive))
            };
            send(pb::server_message::Msg::Sync(pb::SyncRequest {
                name: lc.name.clone(),
                paths: plan.send().to_vec(),
            }))
            .await?;
            // Each file's bytes go into the mirror on a blocking thread as they arrive, so a
            // large file is never held whole in memory.
            let mut idle = Some((mirror, plan));
            let mut receiving: Option<Receiving> = None;
            loop {
                match next(&mut inbound).await? {
                    pb::client_message::Msg::File(f) if f.name == lc.name => {
                        if let Some(r) = &receiving {
                            if r.path != f.path {
                                return Err(bad(format!(
                                    "{:?} started before {:?} ended",
                                    f.path, r.path
                                )));
                            }
                        }
                        let r = match receiving.take() {
                            Some(r) => r,
                            None => {
                                let (mirror, plan) = idle.take().expect("not receiving a file");
                                if plan.entry(&f.path).is_none() {
                                    return Err(bad(format!("{:?} was not asked for", f.path)));
                                }
                                Receiving::start(mirror, plan, f.path.clone())
                            }
                        };
                        // A send fails only when the writer stopped reading (a file longer
                        // than listed): its error comes with the end of the file.
                        if !f.data.is_empty() {
                            let _ = r.chunks.send(f.data).await;
                        }
                        if f.eof {
                            let (mirror, plan, written) = r.finish().await?;
                            written.map_err(bad)?;
                            idle = Some((mirror, plan));
                        } else {
                            receiving = Some(r);
                        }
                    }
                    pb::client_message::Msg::Done(d)
                        if d.name == lc.name && receiving.is_none() =>
                    {
                        break
                    }
                    _ => return Err(bad(format!("unexpected message syncing {:?}", lc.name))),
                }
            }
            let (mut mirror, plan) = idle.take().expect("no file is being received");
            let stats = tokio::task::block_in_place(|| mirror.finish(plan)).map_err(bad)?;
            files += stats.files;
            bytes += stats.bytes;
            shown.add(mirror.tree(), &lc.client_path);
            if lc.cache {
                caches.insert(
                    lc.name.clone(),
                    (path.clone(), mirror.tree().to_owned(), mirrors.len()),
                );
            } else {
                contexts.insert(
                    lc.name.clone(),
                    (mirror.tree().to_owned(), lc.oci_layout.clone()),
                );
            }
            // The Mirror's own (cross-process) lock is released; the build holds ours, shared.
            drop(mirror);
            mirrors.push(Some(held.shared()));
        }
        self.counters.files.fetch_add(files, Ordering::Relaxed);
        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        eprintln!(
            "kiln serve: build {}: context synced: {files} files, {bytes} bytes received",
            self.number
        );

        // Outputs that go back to the client are made in the session directory.
        let outputs: Vec<Option<PathBuf>> = request
            .outputs
            .iter()
            .enumerate()
            .map(|(i, o)| match o.kind {
                Some(pb::output::Kind::Registry(_)) | None => None,
                Some(_) => Some(dir.path().join(format!("out-{i}"))),
            })
            .collect();
        // A URL context: fetched below, with the build file the client chose.
        let fetch = match &request.context_url {
            None => None,
            Some(url) => {
                let remote = kiln_engine::RemoteContext::from_url(url)
                    .ok_or_else(|| bad(format!("{url:?} is not a git or http(s) URL")))?;
                let file = match (&request.context_file, request.dockerfile.is_empty()) {
                    (Some(f), _) if Path::new(f).is_absolute() => {
                        return Err(bad("context_file must be relative to the fetched context"))
                    }
                    (Some(f), _) => Some(PathBuf::from(f)),
                    (None, false) => Some(dockerfile.clone()),
                    (None, true) => None,
                };
                Some((remote, file))
            }
        };
        // The build file as the mirror holds it, when the client says it lies in the main
        // context and it is the same file: a path that stays the same from build to build.
        // The frontend reads the Dockerfile's own ignore file beside it, so the mirror must
        // hold that file too, the same (its own patterns may have left it out of the sync).
        let dockerfile = request
            .context_dockerfile
            .as_deref()
            .and_then(|rel| contexts.get("").map(|(tree, _)| (tree, rel)))
            .filter(|(tree, rel)| match &request.dockerfile_ignore {
                None => true,
                Some(ignore) => {
                    let beside = Path::new(rel).file_name().map(|n| {
                        Path::new(rel)
                            .with_file_name(format!("{}.dockerignore", n.to_string_lossy()))
                    });
                    beside.is_some_and(|b| in_mirror(tree, &b.to_string_lossy(), ignore).is_some())
                }
            })
            .and_then(|(tree, rel)| in_mirror(tree, rel, &request.dockerfile))
            .unwrap_or(dockerfile);
        // `type=local` caches: read from their mirrors, written into session copies of them.
        let cache_mirror = |context: &str| -> Result<Option<(PathBuf, PathBuf, usize)>, Status> {
            match caches.get(context) {
                Some(c) => Ok(Some(c.clone())),
                None if context.is_empty() => Ok(None),
                None => Err(bad(format!("no cache directory was synced as {context:?}"))),
            }
        };
        let mut cache_to = Vec::new();
        let mut local_exports = Vec::new();
        for (i, c) in request.cache_to.iter().enumerate() {
            let Some(pb::cache_location::Kind::Local(local)) =
                c.location.as_ref().and_then(|l| l.kind.as_ref())
            else {
                cache_to.push(None);
                continue;
            };
            let mirror = cache_mirror(&local.context)?;
            let copy = dir.path().join(format!("cache-to-{i}.d"));
            let (from, to) = (mirror.as_ref().map(|m| m.1.clone()), copy.clone());
            tokio::task::spawn_blocking(move || localcache::copy_tree(from.as_deref(), &to))
                .await
                .map_err(internal)?
                .map_err(internal)?;
            shown.add(&copy, &local.client_path);
            cache_to.push(Some(copy.clone()));
            local_exports.push(LocalExport {
                index: i,
                name: local.context.clone(),
                copy,
                mirror,
            });
        }
        let mut cache_from = Vec::new();
        for (i, c) in request.cache_from.iter().enumerate() {
            let Some(pb::cache_location::Kind::Local(local)) =
                c.location.as_ref().and_then(|l| l.kind.as_ref())
            else {
                cache_from.push(None);
                continue;
            };
            // A directory the client does not have is a path that does not exist here
            // either: the engine warns about it as about a missing local directory.
            let place = match cache_mirror(&local.context)? {
                Some((_, tree, _)) => tree,
                None => dir.path().join(format!("cache-from-{i}.d")),
            };
            shown.add(&place, &local.client_path);
            cache_from.push(Some(place));
        }
        // The build file, when the daemon read it from a context it fetched: a failure shows
        // its lines on the client, which does not have it.
        let daemon_file = request.context_url.is_some()
            && (request.context_file.is_some() || request.dockerfile.is_empty());
        let placed = Placed {
            dockerfile,
            contexts,
            outputs: outputs.clone(),
            cache_to,
            cache_from,
        };
        let secrets = Arc::new(SessionSecrets {
            out: tx.clone(),
            waiting: std::sync::Mutex::new(Vec::new()),
        });
        let provided = kiln_engine::ProvidedSecret(secrets.clone());
        // Each `--ssh` agent of the client is a socket of the session here, whose connections
        // are relayed to the client's agent.
        let relay = Arc::new(SshRelay {
            out: tx.clone(),
            conns: std::sync::Mutex::new(std::collections::HashMap::new()),
            next: AtomicU32::new(0),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        let mut ssh_socks = BTreeMap::new();
        let mut relays = Vec::new();
        for (i, id) in request.ssh.iter().enumerate() {
            let sock = dir.path().join(format!("ssh-{i}.sock"));
            let listener = tokio::net::UnixListener::bind(&sock).map_err(internal)?;
            relays.push(tokio::spawn(relay.clone().accept(listener, id.clone())));
            ssh_socks.insert(id.clone(), sock);
        }
        // `--plugin` and `--allow-plugin` of this client: for this build only.
        let plugin_flags = (request.plugins.clone(), request.allow_plugins.clone());
        // The attestations, applied as a local build applies them.
        let attest = wire::attestations_from_wire(request.attestations.clone())?;
        let req = wire::request_from_wire(request, &placed, &provided, &ssh_socks)?;
        drop(provided);

        // From here the client only answers secret requests; its leaving (its side closed or
        // broken) cancels the build.
        let cancel = self.cancel.clone();
        let ssh = relay.clone();
        // The client's listings of its cache directories, once it applied an export (one per
        // export is asked for: more than the exports are dropped, never queued without end).
        let (listed, mut listings) =
            mpsc::channel::<pb::ContextListing>(local_exports.len().max(1));
        let watcher = tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match m.msg {
                    Some(pb::client_message::Msg::Listing(l)) => {
                        let _ = listed.try_send(l);
                    }
                    Some(pb::client_message::Msg::Secret(answer)) => secrets.answer(answer),
                    Some(pb::client_message::Msg::SshData(d)) => ssh.to_step(d.conn, d.data),
                    Some(pb::client_message::Msg::SshClose(c)) => ssh.close(c.conn),
                    _ => {}
                }
            }
            secrets.abandon();
            cancel.cancel();
        });

        let (queue, mut queued) = mpsc::unbounded_channel::<Outbound>();
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(item) = queued.recv().await {
                    match item {
                        Outbound::Message(m) => {
                            if tx.send(Ok(*m)).await.is_err() {
                                break;
                            }
                        }
                        Outbound::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
        };
        let progress: Arc<dyn ProgressSink<Digest>> =
            Arc::new(WireProgress(queue.clone(), shown.clone()));
        let mut req = req;
        let engine = match self
            .engine
            .for_build(&plugin_flags.0, &plugin_flags.1)
            .await
        {
            Ok((engine, lines)) => {
                for line in lines {
                    eprintln!("kiln serve: build {}: {line}", self.number);
                }
                Ok(engine)
            }
            Err(e) => Err(e),
        };
        let fetched = match (&engine, fetch) {
            (Err(_), _) => Ok(None),
            (Ok(_), None) => Ok(None),
            (Ok(engine), Some((remote, file))) => engine
                .prepare_context(
                    remote,
                    file.as_deref(),
                    &req.build_args,
                    progress.clone(),
                    self.cancel.clone(),
                )
                .await
                .map(Some),
        };
        // The fetched context lives until the build is over.
        let mut fetched_file = None;
        let result = match (engine, fetched) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(engine), Ok(prepared)) => {
                if let Some(p) = &prepared {
                    req.context = p.context().to_owned();
                    req.dockerfile = p.dockerfile().to_owned();
                }
                let result = engine
                    .build_attested(req, attest, progress, self.cancel.clone())
                    .await;
                // What the client shows lines of: a failure's, a `--check`'s.
                let lines_shown = match &result {
                    Err(_) => true,
                    Ok(outcome) => outcome.call_result.is_some(),
                };
                if let (true, Some(p), true) = (lines_shown, &prepared, daemon_file) {
                    // An error inside a fragment of the fetched context (`INCLUDE`): the
                    // client shows that fragment's lines, as a local build does.
                    let fragment = result
                        .as_ref()
                        .err()
                        .and_then(|e| fragment_of(e, p.dockerfile()));
                    fetched_file = match fragment {
                        Some(rel) => {
                            read_build_file(&p.context().join(&rel)).map(|(_, text)| (rel, text))
                        }
                        None => read_build_file(p.dockerfile()),
                    };
                }
                drop(prepared);
                result
            }
        };
        let (flushed, flush) = oneshot::channel();
        let _ = queue.send(Outbound::Flush(flushed));
        let _ = flush.await;
        drop(queue);

        let status = match result {
            Ok(outcome) => {
                for (i, out) in outputs.iter().enumerate() {
                    if let Some(path) = out {
                        stream_output(i, path, &tx).await?;
                    }
                }
                for export in &local_exports {
                    let listing = export.send_back(&tx, &mut listings).await?;
                    if let (Some(listing), Some((mirror_dir, _, held))) = (listing, &export.mirror)
                    {
                        // Our shared hold goes: the mirror is updated only if no other build
                        // reads it now (else the next sync sends the new files).
                        mirrors[*held] = None;
                        if let Ok(_exclusive) = self.mirror_lock(mirror_dir).try_write_owned() {
                            let (mirror_dir, copy) = (mirror_dir.clone(), export.copy.clone());
                            let entries =
                                listing.entries.into_iter().map(entry_from_wire).collect();
                            let updated = tokio::task::spawn_blocking(move || {
                                localcache::update_mirror(&mirror_dir, &copy, entries)
                            })
                            .await
                            .map_err(internal)?;
                            if let Err(e) = updated {
                                eprintln!(
                                    "kiln serve: build {}: keeping cache export {} in its mirror: {e}",
                                    self.number, export.index
                                );
                            }
                        }
                    }
                }
                let mut view = OutcomeView::from_engine(outcome);
                for (name, _) in &mut view.steps {
                    shown.fix(name);
                }
                for (message, _) in &mut view.warnings {
                    shown.fix(message);
                }
                for miss in &mut view.explain {
                    shown.fix(&mut miss.name);
                }
                if view.call_result.is_some() {
                    view.dockerfile = fetched_file;
                }
                send(pb::server_message::Msg::Result(wire::outcome_to_wire(
                    &view,
                )))
                .await?;
                "done"
            }
            Err(e) => {
                let mut view = FailureView::from_engine(&e);
                shown.fix(&mut view.message);
                if let Some((_, name)) = &mut view.step {
                    shown.fix(name);
                }
                view.dockerfile = fetched_file;
                send(pb::server_message::Msg::Failure(wire::failure_to_wire(
                    &view,
                )))
                .await?;
                "failed"
            }
        };
        eprintln!("kiln serve: build {}: {status}", self.number);
        watcher.abort();
        forward.abort();
        for r in relays {
            r.abort();
        }
        relay.abandon();
        drop(mirrors);
        drop(holds);
        drop(lock);
        Ok(())
    }
}

/// A `type=local` `--cache-to` of a session: exported into `copy`, sent back afterwards.
struct LocalExport {
    /// Its index in the request's `cache_to`.
    index: usize,
    /// The local context of its directory ("" when the client has none).
    name: String,
    /// The session copy the engine exports into.
    copy: PathBuf,
    /// The directory's mirror: its directory, tree, and the session's hold of it in `mirrors`.
    mirror: Option<(PathBuf, PathBuf, usize)>,
}

impl LocalExport {
    /// Sends the client what the export changed, then waits for its listing of the directory
    /// (none when it has no context for it).
    async fn send_back(
        &self,
        tx: &mpsc::Sender<Result<pb::ServerMessage, Status>>,
        listings: &mut mpsc::Receiver<pb::ContextListing>,
    ) -> Result<Option<pb::ContextListing>, Status> {
        let (before, after) = (self.mirror.as_ref().map(|m| m.1.clone()), self.copy.clone());
        let delta =
            tokio::task::spawn_blocking(move || localcache::delta(before.as_deref(), &after))
                .await
                .map_err(internal)?
                .map_err(internal)?;
        let index = u32::try_from(self.index).map_err(internal)?;
        let out = |msg| async move {
            tx.send(Ok(pb::ServerMessage { msg: Some(msg) }))
                .await
                .map_err(|_| Status::cancelled("the client went away"))
        };
        for path in &delta.send {
            let mut f = tokio::fs::File::open(self.copy.join(path))
                .await
                .map_err(internal)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = f.read(&mut buf).await.map_err(internal)?;
                out(pb::server_message::Msg::CacheData(pb::CacheData {
                    index,
                    path: path.clone(),
                    data: buf[..n].to_vec(),
                    eof: n == 0,
                }))
                .await?;
                if n == 0 {
                    break;
                }
            }
        }
        out(pb::server_message::Msg::CacheDone(pb::CacheDone {
            index,
            remove: delta.remove,
        }))
        .await?;
        if self.name.is_empty() {
            return Ok(None);
        }
        match listings.recv().await {
            Some(l) if l.name == self.name => Ok(Some(l)),
            Some(l) => Err(bad(format!(
                "expected the listing of cache directory {:?}, got {:?}",
                self.name, l.name
            ))),
            None => Err(Status::cancelled("the client went away")),
        }
    }
}

/// Largest build file sent back with a failure (as the engine reads a build file).
const MAX_BUILD_FILE: u64 = 16 << 20;

/// The name and content of the build file at `path`, when it is a regular file small enough.
/// The file, relative to the context, that error `e` is located in when that is not the build
/// file `dockerfile` (a fragment an instruction expanded); None for a path that is not plainly
/// inside the context.
fn fragment_of(e: &kiln_engine::Error, dockerfile: &Path) -> Option<String> {
    let file = crate::view::location_file(e)?;
    if dockerfile.file_name().is_some_and(|n| *n == *file) {
        return None;
    }
    Path::new(&file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then_some(file)
}

fn read_build_file(path: &Path) -> Option<(String, Vec<u8>)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > MAX_BUILD_FILE {
        return None;
    }
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some((name, std::fs::read(path).ok()?))
}

/// How long a step waits for the client's answer to a secret request.
const SECRET_TIMEOUT: Duration = Duration::from_secs(60);

type SecretWaiter = std::sync::mpsc::Sender<Result<Vec<u8>, String>>;

/// The session's `--secret`s: asked of the client when a step mounts one (the engine calls
/// from the step's blocking thread), handed to the step, never kept.
struct SessionSecrets {
    out: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    waiting: std::sync::Mutex<Vec<(String, SecretWaiter)>>,
}

impl SessionSecrets {
    /// Hands the client's answer to the step waiting for it.
    fn answer(&self, answer: pb::SecretAnswer) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        if let Some(i) = waiting.iter().position(|(id, _)| *id == answer.id) {
            let (_, waiter) = waiting.remove(i);
            let _ = waiter.send(match answer.error {
                Some(e) => Err(e),
                None => Ok(answer.data),
            });
        }
    }

    /// The client is gone: every waiting step gets an error now.
    fn abandon(&self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.clear();
        }
    }
}

impl kiln_engine::SecretProvider for SessionSecrets {
    fn secret(&self, id: &str) -> Result<Vec<u8>, String> {
        let (waiter, answer) = std::sync::mpsc::channel();
        self.waiting
            .lock()
            .map_err(|_| "the session's secret table is poisoned".to_owned())?
            .push((id.to_owned(), waiter));
        let ask = pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Secret(pb::SecretRequest {
                id: id.to_owned(),
            })),
        };
        self.out
            .blocking_send(Ok(ask))
            .map_err(|_| "the client went away".to_owned())?;
        match answer.recv_timeout(SECRET_TIMEOUT) {
            Ok(answer) => answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the client did not send it within {}s",
                SECRET_TIMEOUT.as_secs()
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err("the client went away".to_owned())
            }
        }
    }
}

/// The session's `--ssh` agents: each connection a step makes to a session socket becomes a
/// connection of the client to its agent, relayed over the session stream.
struct SshRelay {
    out: mpsc::Sender<Result<pb::ServerMessage, Status>>,
    /// What the client sends for each open connection goes to the step through these.
    conns: std::sync::Mutex<std::collections::HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
    next: AtomicU32,
    /// The connections' tasks, ended with the session (each holds the session's stream).
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl SshRelay {
    async fn send(&self, msg: pb::server_message::Msg) -> bool {
        self.out
            .send(Ok(pb::ServerMessage { msg: Some(msg) }))
            .await
            .is_ok()
    }

    /// Accepts the steps' connections to agent `id` until the session ends (the task is
    /// aborted then).
    async fn accept(self: Arc<Self>, listener: tokio::net::UnixListener, id: String) {
        use tokio::io::AsyncWriteExt;
        while let Ok((stream, _)) = listener.accept().await {
            let conn = self.next.fetch_add(1, Ordering::Relaxed);
            let (mut from_step, mut to_step) = stream.into_split();
            let (to_step_tx, mut to_step_rx) = mpsc::unbounded_channel::<Vec<u8>>();
            if let Ok(mut conns) = self.conns.lock() {
                conns.insert(conn, to_step_tx);
            }
            let open = pb::SshOpen {
                conn,
                id: id.clone(),
            };
            if !self.send(pb::server_message::Msg::SshOpen(open)).await {
                return;
            }
            let writer = tokio::spawn(async move {
                while let Some(bytes) = to_step_rx.recv().await {
                    if to_step.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                let _ = to_step.shutdown().await;
            });
            let relay = self.clone();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = from_step.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        relay
                            .send(pb::server_message::Msg::SshClose(pb::SshClose { conn }))
                            .await;
                        break;
                    }
                    let data = pb::SshData {
                        conn,
                        data: buf[..n].to_vec(),
                    };
                    if !relay.send(pb::server_message::Msg::SshData(data)).await {
                        break;
                    }
                }
            });
            if let Ok(mut tasks) = self.tasks.lock() {
                tasks.push(writer.abort_handle());
                tasks.push(reader.abort_handle());
            }
        }
    }

    /// Bytes from the client's agent for connection `conn`.
    fn to_step(&self, conn: u32, data: Vec<u8>) {
        if let Some(tx) = self.conns.lock().ok().and_then(|c| c.get(&conn).cloned()) {
            let _ = tx.send(data);
        }
    }

    /// The client's agent closed connection `conn`: the step's side sees the end.
    fn close(&self, conn: u32) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&conn);
        }
    }

    /// The session ended: every connection is closed.
    fn abandon(&self) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.clear();
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            for t in tasks.drain(..) {
                t.abort();
            }
        }
    }
}

/// Sends output `index` (a file, or a directory as a tar) to the client in pieces.
async fn stream_output(
    index: usize,
    path: &Path,
    tx: &mpsc::Sender<Result<pb::ServerMessage, Status>>,
) -> Result<(), Status> {
    let file = if path.is_dir() {
        let tar_path = path.with_extension("tar");
        let (dir, dest) = (path.to_owned(), tar_path.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut builder = tar::Builder::new(std::fs::File::create(&dest)?);
            builder.follow_symlinks(false);
            builder.append_dir_all(".", &dir)?;
            builder.into_inner()?.sync_all()
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        tar_path
    } else {
        path.to_owned()
    };
    let mut f = tokio::fs::File::open(&file).await.map_err(internal)?;
    let index = u32::try_from(index).map_err(internal)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).await.map_err(internal)?;
        let msg = pb::OutputData {
            index,
            data: buf[..n].to_vec(),
            eof: n == 0,
        };
        tx.send(Ok(pb::ServerMessage {
            msg: Some(pb::server_message::Msg::Output(msg)),
        }))
        .await
        .map_err(|_| Status::cancelled("the client went away"))?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// A context file being received: its pieces go through `chunks` to
/// [`kiln_contextsync::Mirror::write_file`] running on a blocking thread.
struct Receiving {
    path: String,
    chunks: mpsc::Sender<Vec<u8>>,
    writer: tokio::task::JoinHandle<Written>,
}

type Written = (
    kiln_contextsync::Mirror,
    kiln_contextsync::Plan,
    Result<u64, kiln_contextsync::Error>,
);

impl Receiving {
    fn start(
        mut mirror: kiln_contextsync::Mirror,
        mut plan: kiln_contextsync::Plan,
        path: String,
    ) -> Receiving {
        let (chunks, rx) = mpsc::channel(4);
        let name = path.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let mut reader = ChunkReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            };
            let written = mirror.write_file(&mut plan, &name, &mut reader);
            (mirror, plan, written)
        });
        Receiving {
            path,
            chunks,
            writer,
        }
    }

    /// Ends the file (no more pieces) and waits for the writer.
    async fn finish(self) -> Result<Written, Status> {
        drop(self.chunks);
        self.writer.await.map_err(internal)
    }
}

/// The pieces of one file as a `Read`, for the mirror's blocking writer.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                // The file ended.
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn a_file_arriving_in_pieces_reads_whole() {
        let (tx, rx) = mpsc::channel(4);
        for piece in [&b"ab"[..], b"", b"cde", b"f"] {
            tx.try_send(piece.to_vec()).unwrap();
        }
        drop(tx);
        let mut reader = ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        };
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcdef");
    }
}
