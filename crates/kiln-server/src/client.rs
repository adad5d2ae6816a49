//! The client of a remote build: connect, sync the contexts, render progress, write outputs
//! where the client asked.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_api::v1 as pb;
use kiln_api::v1::builder_client::BuilderClient;
use kiln_engine::{BuildRequest, CacheLocation, Export, SecretSource, SshSource, TarDest};
use kiln_solver::{CancellationToken, ProgressSink};
use kiln_types::Digest;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::localcache::CacheSink;
use crate::view::{FailureView, OutcomeView};
use crate::{wire, Address, Error};

/// How long connecting may take before the daemon counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pieces of context files sent at once.
const CHUNK: usize = 1 << 20;

/// The files of a mutual-TLS connection to a tcp daemon (buildx's `cacert=`, `cert=`, `key=`,
/// `servername=` driver options).
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The CA the daemon's certificate must be signed by.
    pub cacert: PathBuf,
    /// The client's certificate and key, shown when the daemon asks for one.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry (default: the address's host).
    pub servername: Option<String>,
}

impl ClientTls {
    fn config(&self, host: &str) -> Result<tonic::transport::ClientTlsConfig, Error> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("read", p, e));
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(&self.cacert)?))
            .domain_name(self.servername.clone().unwrap_or_else(|| host.to_owned()));
        if let Some((cert, key)) = &self.cert {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        Ok(config)
    }
}

/// A connection to one daemon.
pub struct Client {
    inner: BuilderClient<Channel>,
    addr: Address,
    /// Sent with each build request.
    plugins: PluginFlags,
    /// The attestations of each build (`--provenance`, `--sbom`, `--attest` and buildx's
    /// default, decided by the client).
    attest: kiln_engine::Attestations,
}

/// A build's `--plugin` references and `--allow-plugin` patterns (with kiln.toml's
/// `[plugins]`), which a daemon applies to that build only.
#[derive(Clone, Debug, Default)]
pub struct PluginFlags {
    /// Instruction and primitive plugins the daemon pulls (`REF@sha256:…`).
    pub pull: Vec<String>,
    /// Globs of references the build may use without a digest.
    pub allow: Vec<String>,
}

/// How a remote build ended: the daemon's answer, or the transport's failure.
pub type RemoteResult = Result<Result<OutcomeView, FailureView>, Error>;

impl Client {
    /// Connects to the daemon at `addr` without TLS, failing within a few seconds when it does
    /// not answer.
    pub async fn connect(addr: &Address) -> Result<Client, Error> {
        Client::connect_with(addr, None).await
    }

    /// [`Client::connect`], over mutual TLS when `tls` is given (tcp only).
    pub async fn connect_with(addr: &Address, tls: Option<&ClientTls>) -> Result<Client, Error> {
        let unreachable = |why: String| Error::Unreachable {
            addr: addr.to_string(),
            why,
        };
        let channel = match addr {
            Address::Unix(path) => {
                let path = path.clone();
                // The URI is not used: the connector below dials the socket.
                let endpoint = Endpoint::from_static("http://kiln.sock")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(10));
                let connect = endpoint.connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }));
                tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| unreachable("timed out".to_owned()))?
                    .map_err(|e| unreachable(crate::view::error_chain(&e)))?
            }
            Address::Tcp { host, .. } => {
                let scheme = if tls.is_some() { "https://" } else { "http://" };
                let uri = addr.to_string().replacen("tcp://", scheme, 1);
                let mut endpoint = Endpoint::from_shared(uri)
                    .map_err(|e| unreachable(e.to_string()))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(10));
                if let Some(tls) = tls {
                    endpoint = endpoint
                        .tls_config(tls.config(host)?)
                        .map_err(|e| unreachable(crate::view::error_chain(&e)))?;
                }
                tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
                    .await
                    .map_err(|_| unreachable("timed out".to_owned()))?
                    .map_err(|e| unreachable(crate::view::error_chain(&e)))?
            }
        };
        Ok(Client {
            inner: BuilderClient::new(channel)
                .max_decoding_message_size(4 * CHUNK)
                .max_encoding_message_size(4 * CHUNK),
            addr: addr.clone(),
            plugins: Default::default(),
            attest: Default::default(),
        })
    }

    /// The instruction and primitive plugins (`--plugin REF`) the daemon pulls for each build
    /// of this client, and the patterns (`--allow-plugin`) of references those builds may use
    /// without a digest: the daemon applies them to these builds only.
    pub fn with_plugins(mut self, plugins: PluginFlags) -> Self {
        self.plugins = plugins;
        self
    }

    /// The attestations the daemon attaches to the images of each build of this client, as a
    /// local build attaches them (the client decided buildx's default provenance of a push).
    /// A daemon that does not make them is refused before the build.
    pub fn with_attestations(mut self, attest: kiln_engine::Attestations) -> Self {
        self.attest = attest;
        self
    }

    /// The daemon's version, platforms, store usage and counters.
    pub async fn info(&mut self) -> Result<pb::InfoResponse, Error> {
        self.inner
            .info(pb::InfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.status_error(&s))
    }

    fn lost(&self, why: impl Into<String>) -> Error {
        Error::ConnectionLost {
            addr: self.addr.to_string(),
            why: why.into(),
        }
    }

    fn status_error(&self, s: &tonic::Status) -> Error {
        match s.code() {
            tonic::Code::InvalidArgument | tonic::Code::Unimplemented => Error::Protocol {
                addr: self.addr.to_string(),
                why: s.message().to_owned(),
            },
            _ => {
                let why = if s.message().is_empty() {
                    s.code().to_string()
                } else {
                    s.message().to_owned()
                };
                self.lost(why)
            }
        }
    }

    /// Runs `req` on the daemon: its local contexts are synced, progress goes to `progress`,
    /// outputs are written where `req.exports` say. `cancel` (Ctrl-C) closes the client's side
    /// of the session, which cancels the build on the daemon; its failure is then returned as
    /// a local build's would be.
    pub async fn build(
        &mut self,
        req: &BuildRequest,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> RemoteResult {
        self.build_from(req, None, progress, cancel).await
    }

    /// [`Client::build`] whose main context is `url` (git or http(s)), fetched by the daemon;
    /// `file` is the `-f` given: relative, a file inside the fetched context; absolute, a file
    /// of this machine, sent.
    pub async fn build_url(
        &mut self,
        req: &BuildRequest,
        url: &str,
        file: Option<&Path>,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> RemoteResult {
        self.build_from(req, Some((url, file)), progress, cancel)
            .await
    }

    async fn build_from(
        &mut self,
        req: &BuildRequest,
        url: Option<(&str, Option<&Path>)>,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> RemoteResult {
        // The build file: sent as content, unless it is inside a context the daemon fetches.
        let (local_file, context_file) = match url {
            None => (Some(req.dockerfile.as_path()), None),
            Some((_, Some(f))) if f.is_absolute() => (Some(f), None),
            Some((_, Some(f))) => (None, Some(f.to_string_lossy().into_owned())),
            Some((_, None)) => (None, None),
        };
        let dockerfile = match local_file {
            Some(f) => std::fs::read(f).map_err(|e| Error::io("read Dockerfile", f, e))?,
            None => Vec::new(),
        };
        let dockerfile_name = local_file
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".to_owned());
        // The directories to sync: the main context, then every `--build-context` that is a
        // local directory; the others (URLs, images) the daemon resolves itself.
        let mut locals: Vec<(String, PathBuf, Option<pb::OciLayout>)> = match url {
            None => vec![(String::new(), req.context.clone(), None)],
            Some(_) => Vec::new(),
        };
        let mut remote_contexts = BTreeMap::new();
        for (name, value) in &req.build_contexts {
            // An OCI layout is a directory of the client too: synced like one, then used as a
            // layout on the daemon.
            if value.starts_with(kiln_types::reference::LAYOUT_SCHEME) {
                let layout: kiln_types::reference::LayoutRef = value
                    .parse()
                    .map_err(|e| Error::Unsupported(format!("--build-context {name}: {e}")))?;
                let oci = pb::OciLayout {
                    tag: layout.tag.clone(),
                    digest: layout.digest.map(|d| d.to_string()),
                };
                locals.push((name.clone(), layout.dir, Some(oci)));
                continue;
            }
            let path = Path::new(value);
            if !value.contains("://") && path.is_dir() {
                locals.push((name.clone(), path.to_owned(), None));
            } else {
                remote_contexts.insert(name.clone(), value.clone());
            }
        }
        // The Dockerfile's own ignore file, sent with it: the daemon writes it beside the
        // Dockerfile it writes, where the frontend reads it (the main context's scan reads it
        // below; a fetched URL context has none of the client's files to scan).
        let mut dockerfile_ignore = match (url, local_file) {
            (Some(_), Some(f)) => kiln_contextsync::read_beside_ignore(f)
                .map_err(|source| Error::Sync {
                    name: String::new(),
                    source,
                })?
                .map(|spec| spec.content),
            _ => None,
        };
        let machine = machine_id();
        let mut listings = Vec::new();
        let mut local_contexts = Vec::new();
        for (name, dir, oci_layout) in &locals {
            let abs = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
            local_contexts.push(pb::LocalContext {
                name: name.clone(),
                key: mirror_key(&machine, &abs, name),
                oci_layout: oci_layout.clone(),
                cache: false,
                client_path: dir.display().to_string(),
            });
            let (scan_name, dockerfile_path) = (name.clone(), req.dockerfile.clone());
            let main = name.is_empty();
            let (entries, ignore) = tokio::task::spawn_blocking(move || {
                // `.dockerignore` applies to the main context only, as in a local build.
                let ignore = if main {
                    kiln_contextsync::read_ignore(&abs, &dockerfile_path)?
                } else {
                    kiln_contextsync::IgnoreSpec::none()
                };
                kiln_contextsync::scan(&abs, &ignore).map(|entries| (entries, ignore))
            })
            .await
            .map_err(|e| Error::Unsupported(e.to_string()))?
            .map_err(|source| Error::Sync {
                name: scan_name,
                source,
            })?;
            if ignore.beside_dockerfile.is_some() {
                dockerfile_ignore = Some(ignore.content);
            }
            listings.push((name.clone(), dir.clone(), entries));
        }
        // `type=local` caches: each directory (once, whether read, written or both) is synced
        // as a context of its own; one to write that does not exist yet is synced empty, so
        // that the daemon's mirror of it follows what the export writes.
        let mut caches: BTreeMap<PathBuf, String> = BTreeMap::new();
        let mut cache_dirs: BTreeMap<PathBuf, String> = BTreeMap::new();
        let written = req.cache_to.iter().map(|c| (&c.location, true));
        let read = req.cache_from.iter().map(|c| (&c.location, false));
        for (location, write) in written.chain(read) {
            let CacheLocation::Local { dir, .. } = location else {
                continue;
            };
            if caches.contains_key(dir) {
                continue;
            }
            let abs = match std::fs::canonicalize(dir) {
                // Something else than a directory is not synced: reading it is the local
                // warning on the daemon, writing into it fails here (a warning with
                // ignore-error=true), as a local export into it fails.
                Ok(abs) if !abs.is_dir() => continue,
                Ok(abs) => abs,
                Err(_) if write => {
                    std::path::absolute(dir).map_err(|e| Error::io("resolve", dir, e))?
                }
                // A cache to read that is not there: the daemon warns, as a local build does.
                Err(_) => continue,
            };
            // Another spelling of a directory already synced.
            if let Some(name) = cache_dirs.get(&abs) {
                caches.insert(dir.clone(), name.clone());
                continue;
            }
            let name = format!("cache:{}", cache_dirs.len());
            cache_dirs.insert(abs.clone(), name.clone());
            caches.insert(dir.clone(), name.clone());
            local_contexts.push(pb::LocalContext {
                name: name.clone(),
                // One mirror per cache directory, whatever its role in a build: a name no
                // context has.
                key: mirror_key(&machine, &abs, "\0cache"),
                oci_layout: None,
                cache: true,
                client_path: dir.display().to_string(),
            });
            let entries = scan_cache_dir(&name, &abs).await?;
            listings.push((name, abs, entries));
        }
        // Where each `type=local` export's changes are written, and the directory's context.
        let mut cache_writers: Vec<Option<CacheSink>> = req
            .cache_to
            .iter()
            .map(|c| match &c.location {
                CacheLocation::Local { dir, .. } => {
                    let context = caches.get(dir).and_then(|name| {
                        cache_dirs
                            .iter()
                            .find(|(_, n)| *n == name)
                            .map(|(abs, n)| (n.clone(), abs.clone()))
                    });
                    Some(CacheSink::new(dir.clone(), context, c.ignore_error))
                }
                _ => None,
            })
            .collect();
        if wire::needs_features(req, &self.attest) {
            let features = self.info().await?.features;
            wire::check_features(req, &self.attest, &features, &self.addr.to_string())?;
        }
        let mut request = wire::request_to_wire(
            req,
            dockerfile,
            dockerfile_name,
            local_contexts,
            remote_contexts,
            &caches,
        )?;
        request.context_url = url.map(|(u, _)| u.to_owned());
        request.context_file = context_file;
        request.dockerfile_ignore = dockerfile_ignore;
        request.plugins = self.plugins.pull.clone();
        request.attestations = wire::attestations_to_wire(&self.attest);
        request.allow_plugins = self.plugins.allow.clone();
        // The build file's place in the main local context, if it lies there: the daemon
        // reads it from its mirror (a stable path: `--explain-cache` finds the last build).
        if url.is_none() {
            request.context_dockerfile = path_inside(&req.context, &req.dockerfile);
        }
        let mut outputs = req
            .exports
            .iter()
            .map(OutputSink::for_export)
            .collect::<Result<Vec<_>, Error>>()?;

        let (out_tx, out_rx) = mpsc::channel::<pb::ClientMessage>(8);
        let mut out_tx = Some(out_tx);
        let send = |tx: &Option<mpsc::Sender<pb::ClientMessage>>, msg: pb::client_message::Msg| {
            let tx = tx.clone();
            async move {
                match tx {
                    Some(tx) => tx
                        .send(pb::ClientMessage { msg: Some(msg) })
                        .await
                        .map_err(|_| ()),
                    None => Err(()),
                }
            }
        };
        let _ = send(&out_tx, pb::client_message::Msg::Request(request)).await;
        let mut inbound = self
            .inner
            .build(ReceiverStream::new(out_rx))
            .await
            .map_err(|s| self.status_error(&s))?
            .into_inner();

        // The open connections of steps to `--ssh` agents: what the daemon sends for each.
        let mut ssh_conns: std::collections::HashMap<u32, mpsc::UnboundedSender<Vec<u8>>> =
            std::collections::HashMap::new();
        let mut syncs = listings.into_iter();
        // The first listing goes right away; each next one after the previous context's files.
        let mut current = syncs.next();
        if let Some((name, _, entries)) = &current {
            let _ = send(&out_tx, listing(name, entries)).await;
        }
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                () = cancel.cancelled(), if out_tx.is_some() => {
                    // Closing our side is the daemon's cue to cancel the build; its answer
                    // (the cancelled build's failure) still comes.
                    out_tx = None;
                    continue;
                }
            };
            let msg = match msg {
                Ok(Some(pb::ServerMessage { msg: Some(m) })) => m,
                Ok(Some(pb::ServerMessage { msg: None })) => continue,
                Ok(None) => return Err(self.lost("the daemon closed the session without a result")),
                Err(s) => return Err(self.status_error(&s)),
            };
            match msg {
                pb::server_message::Msg::Sync(asked) => {
                    let Some((name, dir, _)) = current.take() else {
                        return Err(self.protocol("a sync request for no context"));
                    };
                    if asked.name != name {
                        return Err(self.protocol("a sync request for another context"));
                    }
                    for path in &asked.paths {
                        send_file(&out_tx, &name, &dir, path).await?;
                    }
                    let _ = send(
                        &out_tx,
                        pb::client_message::Msg::Done(pb::ContextDone { name: name.clone() }),
                    )
                    .await;
                    current = syncs.next();
                    if let Some((name, _, entries)) = &current {
                        let _ = send(&out_tx, listing(name, entries)).await;
                    }
                }
                pb::server_message::Msg::SshOpen(open) => {
                    let weak = out_tx.as_ref().map(mpsc::Sender::downgrade);
                    match (req.ssh.get(&open.id), weak) {
                        (Some(SshSource::Agent(sock)), Some(weak)) => {
                            ssh_conns.insert(open.conn, relay_to_agent(sock, open.conn, weak));
                        }
                        _ => {
                            let close = pb::SshClose { conn: open.conn };
                            let _ = send(&out_tx, pb::client_message::Msg::SshClose(close)).await;
                        }
                    }
                }
                pb::server_message::Msg::SshData(d) => {
                    if let Some(tx) = ssh_conns.get(&d.conn) {
                        let _ = tx.send(d.data);
                    }
                }
                pb::server_message::Msg::SshClose(c) => {
                    ssh_conns.remove(&c.conn);
                }
                pb::server_message::Msg::Secret(ask) => {
                    let answer = secret_answer(&req.secrets, ask.id);
                    let _ = send(&out_tx, pb::client_message::Msg::Secret(answer)).await;
                }
                pb::server_message::Msg::Progress(p) => {
                    if let Ok(event) = wire::event_from_wire(p) {
                        progress.send(event);
                    }
                }
                pb::server_message::Msg::Output(o) => {
                    let sink = usize::try_from(o.index)
                        .ok()
                        .and_then(|i| outputs.get_mut(i))
                        .ok_or_else(|| self.protocol("output data for no output"))?;
                    sink.write(&o.data, o.eof)?;
                }
                pb::server_message::Msg::CacheData(d) => {
                    let sink = usize::try_from(d.index)
                        .ok()
                        .and_then(|i| cache_writers.get_mut(i))
                        .and_then(Option::as_mut)
                        .ok_or_else(|| self.protocol("cache data for no type=local cache"))?;
                    sink.data(&d.path, &d.data, d.eof)
                        .map_err(|e| self.readdress(e))?;
                }
                pb::server_message::Msg::CacheDone(d) => {
                    let sink = usize::try_from(d.index)
                        .ok()
                        .and_then(|i| cache_writers.get_mut(i))
                        .and_then(Option::as_mut)
                        .ok_or_else(|| self.protocol("cache data for no type=local cache"))?;
                    sink.done(&d.remove).map_err(|e| self.readdress(e))?;
                    // The directory as it is now, so that the daemon's mirror follows it.
                    if let Some((name, abs)) = &sink.context {
                        let entries = scan_cache_dir(name, abs).await?;
                        let _ = send(&out_tx, listing(name, &entries)).await;
                    }
                }
                pb::server_message::Msg::Result(r) => {
                    let mut outcome =
                        wire::outcome_from_wire(r).map_err(|e| self.protocol(&e.0))?;
                    // Exports whose failure ignore-error=true turned into a warning here.
                    let ignored = cache_writers.iter_mut().flatten();
                    outcome
                        .warnings
                        .extend(ignored.filter_map(|s| s.warning.take()).map(|w| (w, None)));
                    return Ok(Ok(outcome));
                }
                pb::server_message::Msg::Failure(f) => {
                    return wire::failure_from_wire(f)
                        .map(Err)
                        .map_err(|e| self.protocol(&e.0));
                }
            }
        }
    }

    fn protocol(&self, why: &str) -> Error {
        Error::Protocol {
            addr: self.addr.to_string(),
            why: why.to_owned(),
        }
    }

    /// A protocol error found away from the connection, given its address.
    fn readdress(&self, e: Error) -> Error {
        match e {
            Error::Protocol { why, .. } => self.protocol(&why),
            other => other,
        }
    }
}

/// The entries of the cache directory `abs` (none when it does not exist yet): every file,
/// no ignore file applies.
async fn scan_cache_dir(name: &str, abs: &Path) -> Result<Vec<kiln_contextsync::Entry>, Error> {
    let dir = abs.to_owned();
    tokio::task::spawn_blocking(move || {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        kiln_contextsync::scan(&dir, &kiln_contextsync::IgnoreSpec::none())
    })
    .await
    .map_err(|e| Error::Unsupported(e.to_string()))?
    .map_err(|source| Error::Sync {
        name: name.to_owned(),
        source,
    })
}

/// Connects connection `conn` of a step on the daemon to the agent at `sock`: the agent's bytes
/// go to the daemon (through `out`, held weakly so that closing the session is not delayed by
/// a connection), and the returned sender takes the daemon's bytes to the agent. A failed
/// connect is a closed connection.
fn relay_to_agent(
    sock: &Path,
    conn: u32,
    out: mpsc::WeakSender<pb::ClientMessage>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (to_agent, mut to_agent_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let sock = sock.to_owned();
    tokio::spawn(async move {
        let send = |msg: pb::client_message::Msg| {
            let out = out.clone();
            async move {
                match out.upgrade() {
                    Some(tx) => tx.send(pb::ClientMessage { msg: Some(msg) }).await.is_ok(),
                    None => false,
                }
            }
        };
        let Ok(stream) = tokio::net::UnixStream::connect(&sock).await else {
            send(pb::client_message::Msg::SshClose(pb::SshClose { conn })).await;
            return;
        };
        let (mut from_agent, mut agent) = stream.into_split();
        tokio::spawn(async move {
            while let Some(bytes) = to_agent_rx.recv().await {
                if agent.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = agent.shutdown().await;
        });
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = from_agent.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                send(pb::client_message::Msg::SshClose(pb::SshClose { conn })).await;
                return;
            }
            let data = pb::SshData {
                conn,
                data: buf[..n].to_vec(),
            };
            if !send(pb::client_message::Msg::SshData(data)).await {
                return;
            }
        }
    });
    to_agent
}

/// The answer to the daemon's request for secret `id`: read now, from the `--secret` source,
/// and sent only to the session that asked.
fn secret_answer(secrets: &BTreeMap<String, SecretSource>, id: String) -> pb::SecretAnswer {
    let read = match secrets.get(&id) {
        Some(SecretSource::File(p)) => {
            std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))
        }
        Some(SecretSource::Env(var)) => std::env::var_os(var)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| format!("environment variable {var} is not set")),
        Some(SecretSource::Provider(p)) => p.0.secret(&id),
        None => Err(format!("no --secret with id {id:?} was given")),
    };
    match read {
        Ok(data) => pb::SecretAnswer {
            id,
            data,
            error: None,
        },
        Err(e) => pb::SecretAnswer {
            id,
            data: Vec::new(),
            error: Some(e),
        },
    }
}

fn listing(name: &str, entries: &[kiln_contextsync::Entry]) -> pb::client_message::Msg {
    pb::client_message::Msg::Listing(pb::ContextListing {
        name: name.to_owned(),
        entries: entries
            .iter()
            .map(|e| pb::Entry {
                path: e.path.clone(),
                kind: match e.kind {
                    kiln_contextsync::Kind::File => pb::EntryKind::File,
                    kiln_contextsync::Kind::Dir => pb::EntryKind::Dir,
                    kiln_contextsync::Kind::Symlink => pb::EntryKind::Symlink,
                } as i32,
                mode: e.mode,
                size: e.size,
                mtime_ns: e.mtime_sec * 1_000_000_000 + i64::from(e.mtime_nsec),
                link_target: e.target.clone().unwrap_or_default(),
                uid: e.uid,
                gid: e.gid,
            })
            .collect(),
    })
}

/// Sends one asked file in pieces; the last piece has `eof`.
async fn send_file(
    tx: &Option<mpsc::Sender<pb::ClientMessage>>,
    name: &str,
    dir: &Path,
    path: &str,
) -> Result<(), Error> {
    let Some(tx) = tx else { return Ok(()) };
    let full = dir.join(path);
    let mut f = std::fs::File::open(&full).map_err(|e| Error::io("read", &full, e))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", &full, e))?;
        let msg = pb::FileData {
            name: name.to_owned(),
            path: path.to_owned(),
            data: buf[..n].to_vec(),
            eof: n == 0,
        };
        if tx
            .send(pb::ClientMessage {
                msg: Some(pb::client_message::Msg::File(msg)),
            })
            .await
            .is_err()
        {
            // The stream is gone: the next read of the daemon's side says why.
            return Ok(());
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// `file`'s path relative to the directory `context`, when it lies inside it (both resolved).
fn path_inside(context: &Path, file: &Path) -> Option<String> {
    let ctx = std::fs::canonicalize(context).ok()?;
    let file = std::fs::canonicalize(file).ok()?;
    let rel = file.strip_prefix(&ctx).ok()?;
    rel.to_str().map(str::to_owned)
}

/// The key the daemon keeps its mirror of directory `abs` of this machine under, for the
/// context `name`.
fn mirror_key(machine: &str, abs: &Path, name: &str) -> String {
    let key = format!("{machine}\0{}\0{name}", abs.display());
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This machine's id (systemd's machine-id, else the host name): part of a mirror's key, so
/// two machines with the same path do not share a mirror.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Where one output's bytes go on the client.
enum OutputSink {
    /// A file, written beside `dest` then renamed into place when complete.
    File {
        dest: PathBuf,
        tmp: Option<tempfile::NamedTempFile>,
    },
    /// A tar unpacked into a directory once complete.
    Dir {
        dest: PathBuf,
        tmp: Option<tempfile::NamedTempFile>,
    },
    /// Standard output (`dest=-`).
    Stdout,
    /// Nothing comes back (a push from the daemon).
    None,
}

impl OutputSink {
    fn for_export(e: &Export) -> Result<OutputSink, Error> {
        let temp_beside = |dest: &Path| {
            let dir = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            // 0666 less the umask, as a file a local build writes (tempfile's default is 0600).
            tempfile::Builder::new()
                .prefix(".kiln-output-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .tempfile_in(&dir)
                .map_err(|e| Error::io("create a file in", &dir, e))
        };
        Ok(match e {
            Export::Oci {
                dest, tar: true, ..
            }
            | Export::Docker { dest, .. }
            | Export::Tar {
                dest: TarDest::File(dest),
            } => OutputSink::File {
                dest: dest.clone(),
                tmp: Some(temp_beside(dest)?),
            },
            Export::Tar {
                dest: TarDest::Stdout,
            } => OutputSink::Stdout,
            Export::Oci {
                dest, tar: false, ..
            }
            | Export::Local { dest } => {
                std::fs::create_dir_all(dest).map_err(|e| Error::io("create", dest, e))?;
                OutputSink::Dir {
                    dest: dest.clone(),
                    tmp: Some(temp_beside(&dest.join("x"))?),
                }
            }
            Export::Registry { .. } | Export::Load { .. } => OutputSink::None,
        })
    }

    fn write(&mut self, data: &[u8], eof: bool) -> Result<(), Error> {
        let is_dir = matches!(self, OutputSink::Dir { .. });
        match self {
            OutputSink::File { dest, tmp } | OutputSink::Dir { dest, tmp } => {
                let Some(file) = tmp.as_mut() else {
                    return Ok(());
                };
                file.write_all(data)
                    .map_err(|e| Error::io("write", file.path(), e))?;
                if !eof {
                    return Ok(());
                }
                let file = tmp.take().expect("checked above");
                if is_dir {
                    unpack(file, dest)?;
                } else {
                    file.persist(&*dest)
                        .map_err(|e| Error::io("write", dest, e.error))?;
                }
                Ok(())
            }
            OutputSink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(data)
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::io("write", Path::new("-"), e))
            }
            OutputSink::None => Ok(()),
        }
    }
}

/// Unpacks the daemon's tar of a directory output into `dest`: entries are unpacked with
/// `unpack_in`, which refuses paths that leave `dest` (`..`, absolute, through a symlink).
fn unpack(file: tempfile::NamedTempFile, dest: &Path) -> Result<(), Error> {
    let path = file.path().to_owned();
    let f = file.reopen().map_err(|e| Error::io("read", &path, e))?;
    let mut archive = tar::Archive::new(f);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    for entry in archive.entries().map_err(|e| Error::io("read", &path, e))? {
        let mut entry = entry.map_err(|e| Error::io("read", &path, e))?;
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| Error::io("unpack into", dest, e))?;
        if !ok {
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::Protocol {
                addr: String::new(),
                why: format!(
                    "the output tar holds {name:?}, which leaves {}",
                    dest.display()
                ),
            });
        }
    }
    Ok(())
}
