//! Binds each vertex to what runs it: core ops here, primitives through plugins.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use kiln_cache::{CacheIndex, CacheRecord};
use kiln_graph::{Definition, FileAction, LocalSource, Op, SourceOp, Vertex};
use kiln_plugin_host::{HostServices, PluginRegistry};
use kiln_plugin_sdk::proto::{LogLevel, PrimitiveRequest};
use kiln_snapshot::{ReadView, Snapshot, Store, WriteView};
use kiln_solver::{BoxError, CancellationToken, ExecContext, Executor};
use kiln_types::{Digest, Sha256Writer};

use crate::remote_cache::{Imported, Tracker};
use crate::run::{self, CacheMounts, ExecRuntime, RunOptions, SecretSource, SshSource};
use crate::{fileop, local, Error};

/// What the ops of one build run with.
pub(crate) struct BuildEnv {
    pub store: Store,
    pub index: Arc<CacheIndex>,
    pub plugins: Arc<PluginRegistry>,
    /// Local contexts by name (`context` is the main one).
    pub contexts: BTreeMap<String, PathBuf>,
    pub cache_mounts: Arc<CacheMounts>,
    pub secrets: BTreeMap<String, SecretSource>,
    pub ssh: BTreeMap<String, SshSource>,
    pub run_options: RunOptions,
    pub runtime: ExecRuntime,
    pub registry: kiln_registry::Registry,
    pub handle: tokio::runtime::Handle,
    /// Records of `--cache-from`, answering local misses.
    pub imported: Arc<Imported>,
    /// What each key was made of, for `--explain-cache`.
    pub explain: Arc<crate::explain::Recorder>,
}

pub(crate) struct OpExecutor {
    env: Arc<BuildEnv>,
    store: Store,
    index: Arc<CacheIndex>,
    vertices: HashMap<Digest, Vertex>,
    /// Keys and results, for `--cache-to`.
    tracker: Arc<Tracker>,
    /// The one walk of each local context this build makes (by name and ignore patterns),
    /// shared by its source key, every COPY selection key and its layer.
    scans: std::sync::Mutex<HashMap<String, ScanSlot>>,
}

/// A context's scan, made by the first step that needs it while the others wait.
type ScanSlot = Arc<std::sync::Mutex<Option<Arc<local::Scan>>>>;

impl OpExecutor {
    pub(crate) fn new(env: BuildEnv, def: &Definition) -> Self {
        OpExecutor {
            store: env.store.clone(),
            index: env.index.clone(),
            env: Arc::new(env),
            vertices: def.vertices.iter().map(|v| (v.digest, v.clone())).collect(),
            tracker: Arc::default(),
            scans: std::sync::Mutex::default(),
        }
    }

    /// The scan of local source `src` for this build, made on first use.
    async fn scan(&self, src: &LocalSource) -> Result<Arc<local::Scan>, BoxError> {
        let name = format!("{}\0{}", src.name, src.exclude_patterns.join("\0"));
        let slot = self
            .scans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name)
            .or_default()
            .clone();
        let root = context_dir(&self.env, &src.name)?;
        let (store, index, src) = (self.store.clone(), self.index.clone(), src.clone());
        blocking(move || {
            let mut made = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(scan) = &*made {
                return Ok(scan.clone());
            }
            let scan = Arc::new(local::scan(&root, &src, &store, &index)?);
            *made = Some(scan.clone());
            Ok(scan)
        })
        .await
    }

    /// What the solve records for `--cache-to`.
    pub(crate) fn tracker(&self) -> Arc<Tracker> {
        self.tracker.clone()
    }

    /// When input `i` of a file op is a local source used only by COPY actions, the source and
    /// the paths those copies select.
    fn copy_selection(&self, vertex: &Vertex, i: usize) -> Option<(LocalSource, Vec<String>)> {
        let Op::File(f) = &vertex.op else { return None };
        let input = self.vertices.get(&vertex.inputs.get(i)?.vertex)?;
        let Op::Source(SourceOp::Local(src)) = &input.op else {
            return None;
        };
        if f.base == Some(i as u32) {
            return None;
        }
        let selectors = f
            .actions
            .iter()
            .filter_map(|a| match a {
                FileAction::Copy(c) if c.source == Some(i as u32) => Some(c.src.clone()),
                _ => None,
            })
            .collect();
        Some((src.clone(), selectors))
    }

    fn vertex(&self, id: &Digest) -> Result<Vertex, BoxError> {
        self.vertices
            .get(id)
            .cloned()
            .ok_or_else(|| format!("vertex {id} is not in the graph").into())
    }
}

/// What a custom primitive (http, git, third-party) may ask of the host during a call: whether
/// the solve was cancelled — Ctrl-C, or fail-fast after another step failed — so that a
/// download or a fetch stops instead of holding the build; and, while it executes, progress
/// lines under its step.
struct PrimitiveServices<'a> {
    cancel: &'a CancellationToken,
    log: Option<&'a ExecContext<Digest>>,
}

impl HostServices for PrimitiveServices<'_> {
    fn log(&self, level: LogLevel, message: &str) {
        let _ = level;
        if let Some(cx) = self.log {
            cx.log(message.to_owned());
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, BoxError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| Box::new(e) as BoxError),
        Err(e) => Err(format!("step task failed: {e}").into()),
    }
}

impl Executor<Digest> for OpExecutor {
    type Output = Snapshot;
    type Key = Digest;

    async fn cache_key(
        &self,
        v: &Digest,
        input_keys: &[Digest],
        cancel: &CancellationToken,
    ) -> Result<Digest, BoxError> {
        let vertex = self.vertex(v)?;
        let mut h = Sha256Writer::default();
        h.update(b"kiln.cachekey.v1\n");
        // The key covers the op but not its proxy variables (BuildKit does the same).
        let mut keyed = vertex.op.clone();
        if let Op::Exec(e) = &mut keyed {
            e.proxy_env.clear();
        }
        // An image pinned by digest is keyed on its content, not on the name it was reached
        // by (as BuildKit keys image sources by digest): the same image through a mirror or
        // another registry name is the same step, and an imported cache keeps hitting.
        if let Op::Source(SourceOp::Image(img)) = &mut keyed {
            if let Some(at) = img.reference.rfind("@sha256:") {
                img.reference = img.reference[at..].to_owned();
            }
        }
        h.update(&serde_json::to_vec(&keyed)?);
        let mut keyed_inputs = Vec::with_capacity(input_keys.len());
        for (i, k) in input_keys.iter().enumerate() {
            match self.copy_selection(&vertex, i) {
                // A context used only as a COPY source: key on the copied files' content.
                Some((src, selectors)) => {
                    let key = local::selection_key(&*self.scan(&src).await?, &src, &selectors);
                    h.update(key.as_bytes());
                    keyed_inputs.push(key);
                }
                None => {
                    h.update(k.as_bytes());
                    keyed_inputs.push(*k);
                }
            }
        }
        if let Op::Custom(c) = &vertex.op {
            // A primitive whose result depends on the outside world (a URL, a git branch) says
            // what it depends on now, so that a moved source is fetched again.
            // It may ask the network (HEAD, ls-remote): it gets the token, so Ctrl-C or another
            // step's failure stops it.
            let env = self.env.clone();
            let (primitive, op) = (c.primitive.clone(), vertex.op.clone());
            let cancel = cancel.clone();
            let extra = blocking(move || -> Result<Option<String>, Error> {
                let plugin = env.plugins.primitive(&primitive)?;
                let req = kiln_plugin_sdk::proto::CacheKeyRequest { op };
                let services = PrimitiveServices {
                    cancel: &cancel,
                    log: None,
                };
                Ok(plugin.primitive_cache_key(&req, &services)?)
            })
            .await?;
            if let Some(k) = extra {
                h.update(b"\nprimitive:");
                h.update(k.as_bytes());
            }
        }
        if let Op::Source(SourceOp::Local(src)) = &vertex.op {
            let (content, entries) = local::content_key_with_entries(&*self.scan(src).await?, src);
            h.update(content.as_bytes());
            self.env.explain.note_entries(*v, entries);
        }
        let key = h.finish();
        self.tracker.key(*v, key);
        self.env.explain.note_key(*v, key, keyed_inputs);
        Ok(key)
    }

    async fn load(&self, v: &Digest, key: &Digest) -> Result<Option<Snapshot>, BoxError> {
        if self.vertex(v)?.meta.ignore_cache {
            return Ok(None);
        }
        if let Some(rec) = self.index.get(&self.store, key)? {
            self.tracker.result(*key, &rec.snapshot);
            return Ok(Some(rec.snapshot));
        }
        if !self.env.imported.has(key) {
            return Ok(None);
        }
        // A record of an imported cache: its layers are fetched now, and only now.
        let (env, k) = (self.env.clone(), *key);
        let usage = crate::gc::record_use(&self.vertex(v)?);
        let found = tokio::task::spawn_blocking(move || {
            env.imported.materialize(&env.store, &env.index, &k, &usage)
        })
        .await
        .map_err(|e| format!("cache import task failed: {e}"))?;
        match found {
            Ok(snapshot) => {
                if let Some(s) = &snapshot {
                    self.tracker.result(*key, s);
                }
                Ok(snapshot)
            }
            // A layer that cannot be imported is a miss: the step runs.
            Err(why) => {
                let name = &self.vertex(v)?.meta.description;
                self.tracker
                    .warn(format!("cache import for {name:?} not used: {why}"));
                Ok(None)
            }
        }
    }

    async fn has_cached(&self, v: &Digest, key: &Digest) -> Result<bool, BoxError> {
        if self.vertex(v)?.meta.ignore_cache {
            return Ok(false);
        }
        Ok(self.index.get(&self.store, key)?.is_some() || self.env.imported.has(key))
    }

    async fn execute(
        &self,
        v: &Digest,
        key: &Digest,
        inputs: Vec<Snapshot>,
        cx: &ExecContext<Digest>,
    ) -> Result<Snapshot, BoxError> {
        let vertex = self.vertex(v)?;
        let used = crate::gc::record_use(&vertex);
        // Held until the record is written: another kiln process that needs this key waits,
        // then takes the record below instead of running the step too.
        let _running = if vertex.meta.ignore_cache {
            None
        } else {
            let (root, k, c) = (self.store.root().to_owned(), *key, cx.clone());
            let held = blocking(move || {
                crate::running::hold(&root, &k, c.cancel(), &|line: String| c.log(line))
            })
            .await?;
            if let Some(rec) = self.index.get(&self.store, key)? {
                self.tracker.result(*key, &rec.snapshot);
                return Ok(rec.snapshot);
            }
            Some(held)
        };
        let scan = match &vertex.op {
            Op::Source(SourceOp::Local(src)) => Some(self.scan(src).await?),
            _ => None,
        };
        // Steps whose last layer is one they just made.
        let makes_layer = matches!(
            vertex.op,
            Op::Source(SourceOp::Local(_)) | Op::File(_) | Op::Exec(_)
        );
        let env = self.env.clone();
        let cx = cx.clone();
        let snapshot = blocking(move || run(&env, &cx, &vertex.op, inputs, scan)).await?;
        if let (true, Some(layer)) = (makes_layer, snapshot.layers.last()) {
            // Its size, measured beside the next steps, is cached for the collection after the
            // build (which walked each new layer of 20,000 files after an edit).
            self.store.measure_later(layer);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The layers are committed before the record that names them (crash safety).
        self.index.put_used(
            key,
            &CacheRecord {
                snapshot: snapshot.clone(),
                created_unix: now,
            },
            &used,
        )?;
        self.tracker.result(*key, &snapshot);
        Ok(snapshot)
    }
}

fn run(
    env: &BuildEnv,
    cx: &ExecContext<Digest>,
    op: &Op,
    inputs: Vec<Snapshot>,
    scan: Option<Arc<local::Scan>>,
) -> Result<Snapshot, Error> {
    let (store, plugins) = (&env.store, &*env.plugins);
    match op {
        Op::Source(SourceOp::Local(src)) => {
            let scan = scan.ok_or_else(|| Error::Context {
                context: src.name.clone(),
                message: "the context was not scanned before its step ran".into(),
            })?;
            let layer = local::materialize(&scan, store, &env.index)?;
            Ok(Snapshot {
                layers: vec![layer],
            })
        }
        Op::Source(SourceOp::Image(img)) => pull(env, cx, img),
        Op::File(f) => {
            let base = f
                .base
                .and_then(|i| inputs.get(i as usize).cloned())
                .unwrap_or_default();
            let views = inputs
                .iter()
                .map(|s| ReadView::new(store, s))
                .collect::<Result<Vec<_>, _>>()?;
            let paths: Vec<PathBuf> = views.iter().map(|v| v.path().to_owned()).collect();
            let layer = match direct(store, &base, &f.actions)? {
                Some(plan) => {
                    // A view of one layer is that layer's own directory, which never changes:
                    // its files can be shared with the new layer.
                    let linkable: Vec<bool> = inputs.iter().map(|s| s.layers.len() == 1).collect();
                    let layer = store.new_layer()?;
                    let done =
                        fileop::apply_direct(&layer.fs_dir(), &plan, &f.actions, &paths, &linkable)
                            .map_err(|e| Error::Unsupported(e.to_string()))?;
                    drop(views);
                    let id = layer.commit()?;
                    if let Some(n) = done.total {
                        // The collection after the build reads it instead of walking the
                        // layer (see `local::materialize`); best effort, as the walk is.
                        let _ = store.record_total(&id, n + n / 64 + 4096);
                    }
                    if done.linked {
                        // A source layer's cached size may count as its own what the new layer
                        // now shares.
                        for s in inputs.iter().filter(|s| s.layers.len() == 1) {
                            store.forget_size(&s.layers[0])?;
                        }
                    }
                    id
                }
                None => {
                    let view = WriteView::new(store, &base)?;
                    fileop::apply(view.path(), &f.actions, &paths)
                        .map_err(|e| Error::Unsupported(e.to_string()))?;
                    drop(views);
                    view.commit()?
                }
            };
            let mut layers = base.layers;
            layers.push(layer);
            Ok(Snapshot { layers })
        }
        Op::Merge => Ok(Snapshot {
            layers: inputs.into_iter().flat_map(|s| s.layers).collect(),
        }),
        Op::Diff => Err(Error::Unsupported("diff ops are not supported yet".into())),
        Op::Exec(e) => {
            let log_cx = cx.clone();
            let log = move |line: String| log_cx.log(line);
            run::run_exec(
                &run::ExecEnv {
                    store,
                    plugins,
                    cache_mounts: &env.cache_mounts,
                    secrets: &env.secrets,
                    ssh: &env.ssh,
                    options: &env.run_options,
                    runtime: env.runtime,
                    cancel: cx.cancel(),
                    log: &log,
                },
                e,
                &inputs,
            )
        }
        Op::Custom(c) => {
            let plugin = plugins.primitive(&c.primitive)?;
            let views = inputs
                .iter()
                .map(|s| ReadView::new(store, s))
                .collect::<Result<Vec<_>, _>>()?;
            let out = WriteView::new(store, &Snapshot::default())?;
            let req = PrimitiveRequest::new(
                op.clone(),
                views
                    .iter()
                    .map(|v| v.path().display().to_string())
                    .collect(),
                out.path().display().to_string(),
            );
            let services = PrimitiveServices {
                cancel: cx.cancel(),
                log: Some(cx),
            };
            plugin.primitive_execute(&req, &services)?;
            drop(views);
            Ok(Snapshot {
                layers: vec![out.commit()?],
            })
        }
    }
}

/// Whether a file op can write its layer directly (`fileop::direct`), judged on a view of its
/// base where that view costs nothing to make: an overlay mount, or a single layer's own
/// directory (the copy snapshotter would have to copy the base to show it).
fn direct(
    store: &Store,
    base: &Snapshot,
    actions: &[FileAction],
) -> Result<Option<fileop::Direct>, Error> {
    if base.layers.is_empty() {
        return Ok(fileop::direct_plan(None, actions));
    }
    if base.layers.len() > 1 && store.snapshotter() != kiln_snapshot::SnapshotterKind::Overlay {
        return Ok(None);
    }
    let view = ReadView::new(store, base)?;
    Ok(fileop::direct_plan(Some(view.path()), actions))
}

/// An image source: resolve (pinned by the frontend), fetch the missing layer blobs, and unpack
/// each layer once (layers are shared by diff id across images).
fn pull(
    env: &BuildEnv,
    cx: &ExecContext<Digest>,
    img: &kiln_graph::ImageSource,
) -> Result<Snapshot, Error> {
    let image: kiln_registry::ImageRef = img.reference.parse()?;
    let cancel = cx.cancel();
    let resolved = crate::block_unless_cancelled(
        &env.handle,
        cancel,
        env.registry.resolve(&image, &img.platform, &env.store),
    )
    .ok_or(Error::Cancelled)??;
    let missing = resolved
        .layers
        .iter()
        .filter(|l| !env.store.has_blob(&l.digest))
        .count();
    if missing > 0 {
        cx.log(format!(
            "pulling {missing} of {} layers of {image}",
            resolved.layers.len()
        ));
    }
    crate::block_unless_cancelled(
        &env.handle,
        cancel,
        env.registry.fetch_layers(&resolved, &env.store),
    )
    .ok_or(Error::Cancelled)??;
    // A layer already in the store (another image's) is taken as a cache hit is: touched under
    // the use lock, so that a collector spares it until its record exists (gc.rs).
    let _taking = env.store.use_lock()?;
    let layers = resolved
        .layers
        .iter()
        .map(|l| {
            let layer = env.store.import_layer(&l.digest, &l.media_type)?;
            let _ = env.store.touch_layer(&layer.id);
            Ok::<_, kiln_snapshot::Error>(layer.id)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot { layers })
}

/// The directory of local context `name`.
fn context_dir(env: &BuildEnv, name: &str) -> Result<PathBuf, Error> {
    env.contexts
        .get(name)
        .cloned()
        .ok_or_else(|| Error::Context {
            context: name.to_owned(),
            message: "no such build context: pass --build-context NAME=DIR".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primitives_see_the_solve_cancelled() {
        let token = CancellationToken::new();
        let solve = token.child_token();
        let services = PrimitiveServices {
            cancel: &solve,
            log: None,
        };
        assert!(!services.cancelled());
        // Ctrl-C cancels the caller's token; fail-fast cancels the solve's child token.
        token.cancel();
        assert!(services.cancelled());
        services.log(LogLevel::Info, "dropped without a step");
    }
}
