//! The engine: the only crate that gives graph ops their meaning. It picks the frontend
//! (`# syntax=`), serves the plugins' host callbacks, binds each vertex to a core op (local
//! source, file, merge) or a primitive plugin, runs the graph on the solver with the cache, and
//! hands the result to the exporters.
//!
//! Architecture invariant: the engine never depends on a frontend or plugin crate; it reaches
//! them only through `kiln-plugin-host`. It does no rendering: progress leaves as events.

mod attest;
mod exec;
mod explain;
mod export;
mod fileop;
pub mod gc;
mod local;
mod phases;
mod platforms;
mod plugin_pull;
mod remote_cache;
mod remote_context;
mod rootpath;
mod run;
mod running;
mod services;
mod ssh_agent;
mod syntax;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_cache::CacheIndex;
use kiln_export::Image;
pub use kiln_export::{docker_daemon_answers, load_docker_tarball};
pub use kiln_export::{Annotation, AnnotationKind, CompressionKind, ImageFormat, TarDest};
use kiln_plugin_host::{PluginRegistry, SearchPath};
use kiln_plugin_sdk::proto::{Diagnostic, PluginError};
use kiln_snapshot::{Snapshot, Store};
use kiln_solver::{CancellationToken, Event, ProgressSink};
use kiln_types::{Digest, Platform};

pub use explain::{ArgState, Cause, FileChange, Miss};
pub use fileop::{extract_archive_bytes, FileOpError};
pub use kiln_attest::{Flags as AttestFlags, Request as Attestations};
pub use kiln_graph::NetworkMode;
pub use kiln_plugin_sdk::proto::{HostEntry, StepLimits, Ulimit, UlimitResource};
pub use kiln_registry::{is_loopback, HostOptions};
// Process setup for the CLI: a build's mounts in a namespace of its own, before any thread.
pub use kiln_snapshot::{isolate_mounts, Isolation};
pub use kiln_solver::Status;
pub use phases::{Planned, Solved};
pub use plugin_pull::{pulled_plugins, KeptPlugin, PulledSource, PULLED_DIR};
pub use remote_cache::{
    merge_registry_caches, CacheCompression, CacheExport, CacheImport, CacheLocation, CacheMode,
};
pub use remote_context::{PreparedContext, RemoteContext, MAX_STDIN_CONTEXT_BYTES};
pub use run::{ExecRuntime, ProvidedSecret, RunOptions, SecretProvider, SecretSource, SshSource};
pub use ssh_agent::{private_temp_dir, serve as serve_ssh_keys, BuildAgent};
pub use syntax::{find_syntax, SyntaxChoice};

/// Engine errors, each saying what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The build file is missing or unreadable.
    #[error("failed to read dockerfile: open {path}: {source}")]
    Dockerfile {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A remote build context (git, http, stdin) that could not be fetched or used.
    #[error("unable to prepare context {url}: {message}")]
    RemoteContext {
        /// The URL (or `stdin`).
        url: String,
        /// Why.
        message: String,
    },
    /// A local context problem.
    #[error("context {context:?}: {message}")]
    Context {
        /// Which context.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// Plugin loading or a plugin's failure.
    #[error(transparent)]
    Plugin(#[from] kiln_plugin_host::Error),
    /// The frontend rejected the build file.
    #[error("{0}")]
    Frontend(PluginError),
    /// A step failed.
    #[error(transparent)]
    Solve(#[from] kiln_solver::Error<Digest>),
    /// The store failed.
    #[error(transparent)]
    Snapshot(#[from] kiln_snapshot::Error),
    /// The cache index failed.
    #[error(transparent)]
    Cache(#[from] kiln_cache::Error),
    /// An exporter failed.
    #[error(transparent)]
    Export(#[from] kiln_export::Error),
    /// An attestation could not be made (the SBOM scan of the image's files).
    #[error(transparent)]
    Attest(#[from] kiln_attest::Error),
    /// Pulling an image failed.
    #[error(transparent)]
    Registry(#[from] kiln_registry::Error),
    /// A feature the graph uses that this kiln cannot run (yet).
    #[error("{0}")]
    Unsupported(String),
    /// A RUN step's process exited non-zero.
    #[error("process \"{command}\" did not complete successfully: exit code: {code}")]
    Process {
        /// The command as BuildKit shows it.
        command: String,
        /// Its exit code.
        code: i32,
    },
    /// An SSH agent that cannot be provided.
    #[error("ssh {id}: {message}")]
    Ssh {
        /// The `--ssh` id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// A step needs an entitlement the build was not granted (`--allow`).
    #[error(
        "{entitlement} is not allowed: {why} needs it; pass --allow {entitlement} to grant it"
    )]
    Entitlement {
        /// The missing entitlement.
        entitlement: Entitlement,
        /// What asked for it (`RUN --network=host`...).
        why: &'static str,
        /// The build-file line of the step.
        location: Option<kiln_graph::SourceLocation>,
    },
    /// `--call` could not be answered.
    #[error("{0}")]
    Call(String),
    /// A secret that cannot be provided.
    #[error("secret {id}: {message}")]
    Secret {
        /// The secret id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// A `# syntax=` directive (or `BUILDKIT_SYNTAX`) names a library by path: only the
    /// command line may choose native code to load.
    #[error(
        "{origin} {value:?} names a plugin library by path, which a build file may not do: \
         a library is native code that would run inside kiln. Name a frontend found in the \
         plugin directories (`kiln plugins ls`), or pass the library on the command line with \
         --frontend PATH or --plugin-dir DIR"
    )]
    SyntaxPath {
        /// Where the value came from (`# syntax=` or `BUILDKIT_SYNTAX`).
        origin: &'static str,
        /// The value as written.
        value: String,
    },
    /// A `# syntax=` directive (or `BUILDKIT_SYNTAX`) names a frontend no installed plugin
    /// answers to. kiln runs frontend plugins, never frontend images.
    #[error(
        "{origin} {value:?}: no installed frontend plugin answers to {name:?} ({}). \
         kiln runs frontend plugins, not frontend images: to build this file, choose a frontend \
         on the command line with --frontend NAME|PATH, name one published with `kiln plugins \
         push` by REF@sha256:DIGEST, or install a frontend plugin that declares the syntax \
         {name:?} into a plugin directory ({}; more with --plugin-dir DIR or ${})",
        installed(available),
        plugin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        kiln_plugin_host::PLUGIN_PATH_ENV
    )]
    UnknownSyntax {
        /// Where the value came from (`# syntax=` or `BUILDKIT_SYNTAX`).
        origin: &'static str,
        /// The value as written.
        value: String,
        /// The frontend name looked up (`example.com/other/frontend`).
        name: String,
        /// The installed frontends and their syntaxes.
        available: Vec<String>,
        /// The plugin directories searched, in order.
        plugin_dirs: Vec<PathBuf>,
    },
    /// A plugin from a registry that cannot be pulled, kept or loaded (plugin_pull.rs).
    #[error("plugin {reference}: {why}")]
    PluginPull {
        /// The reference as written.
        reference: String,
        /// What went wrong.
        why: String,
    },
    /// A plugin reference without a digest that no allowlist pattern admits.
    #[error(
        "{origin} {value:?} is a plugin reference without a digest, and no --allow-plugin \
         pattern or kiln.toml `[plugins] allow` entry admits it: a plugin is native code that \
         runs inside kiln, so one from a registry is used only pinned by digest. {hint}{}",
        unknown.as_ref().map(|u| format!(".\n{u}")).unwrap_or_default()
    )]
    UnpinnedPlugin {
        /// Who asked (`# syntax=`, `BUILDKIT_SYNTAX`, `--frontend`, `--plugin`).
        origin: &'static str,
        /// The value as written.
        value: String,
        /// How to pin it (the exact line, when the registry said what the tag names now).
        hint: String,
        /// For a syntax: that no installed frontend answers to it either.
        unknown: Option<Box<Error>>,
    },
    /// A `--cache-to` that could not be written (without `ignore-error=true`).
    #[error("exporting cache to {dest}: {message}")]
    CacheExport {
        /// The destination.
        dest: String,
        /// Why.
        message: String,
    },
    /// The build was cancelled (Ctrl-C, or another step failed) while this waited.
    #[error("the build was cancelled")]
    Cancelled,
    /// A platform whose RUN steps cannot run here (no emulator, or it cannot be registered).
    #[error(transparent)]
    Emulation(kiln_emulation::Error),
    /// A step failed; `location` is its build-file line when the frontend recorded it.
    #[error("{source}")]
    Step {
        /// Where the step comes from.
        location: Option<kiln_graph::SourceLocation>,
        /// The failure.
        source: kiln_solver::Error<Digest>,
    },
}

fn installed(available: &[String]) -> String {
    if available.is_empty() {
        "no frontend plugin is installed".to_owned()
    } else {
        format!("installed: {}", available.join("; "))
    }
}

/// Runs `fut` on `handle` from a blocking thread until it ends, or until `cancel` fires
/// (`None`): a registry that stalls must not keep Ctrl-C or fail-fast from stopping the build.
pub(crate) fn block_unless_cancelled<F: std::future::Future>(
    handle: &tokio::runtime::Handle,
    cancel: &CancellationToken,
    fut: F,
) -> Option<F::Output> {
    handle.block_on(async {
        tokio::select! {
            out = fut => Some(out),
            () = cancel.cancelled() => None,
        }
    })
}

/// A part for the name of a temporary file that no other one of this process has: the process
/// id (another process writing the same file) and a counter (one process — a daemon — runs
/// several builds at once, which may write the same file).
pub(crate) fn temp_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Largest build file kiln reads. Frontends have their own, smaller limits (the Dockerfile
/// parser's is 8 MiB); this one only keeps a hostile context from making kiln read without end.
pub const MAX_BUILD_FILE_BYTES: u64 = 16 << 20;

/// The `exporting to image` progress step of a build (one image or an index).
struct ExportStep {
    id: Digest,
    name: String,
    started: std::time::Instant,
}

impl ExportStep {
    fn begin(progress: &dyn ProgressSink<Digest>) -> ExportStep {
        let step = ExportStep {
            id: Digest::of(b"internal:export"),
            name: "exporting to image".to_owned(),
            started: std::time::Instant::now(),
        };
        progress.send(Event::Started {
            id: step.id,
            name: step.name.clone(),
        });
        step
    }

    /// Ends the step: a line saying what was written (when `written` names something), then
    /// done; or the error.
    fn end<T>(
        self,
        progress: &dyn ProgressSink<Digest>,
        result: &Result<T, Error>,
        written: impl FnOnce(&T) -> Option<String>,
    ) {
        let ExportStep { id, name, started } = self;
        match result {
            Ok(done) => {
                if let Some(line) = written(done) {
                    progress.send(Event::Log {
                        id,
                        name: name.clone(),
                        line,
                    });
                }
                progress.send(Event::Done {
                    id,
                    name,
                    duration: started.elapsed(),
                });
            }
            Err(e) => progress.send(Event::Error {
                id,
                name,
                message: e.to_string(),
            }),
        }
    }
}

/// Local context directories by name.
type Contexts = BTreeMap<String, PathBuf>;

/// The contexts the host serves to the frontend, by name, and the frontend's options, as
/// BuildKit passes them: `label:K` per `--label`, the `--call` subrequest, `--network` as
/// `force-network-mode`, and `--build-context` values as `context:NAME`.
fn frontend_options(req: &BuildRequest) -> Result<(Contexts, BTreeMap<String, String>), Error> {
    // Local directories are served by the host under their name.
    let mut contexts = BTreeMap::from([("context".to_owned(), req.context.clone())]);
    let mut options = BTreeMap::new();
    for (k, v) in &req.labels {
        options.insert(format!("label:{k}"), v.clone());
    }
    if let Some(call) = req.call {
        options.insert("call".to_owned(), call.name().to_owned());
    }
    // buildx's `--network`: a frontend option, so that the frontend makes it each RUN's
    // default (and a RUN's own `--network` wins), as BuildKit's Dockerfile frontend does.
    match req.network {
        NetworkMode::Default => {}
        NetworkMode::None => {
            options.insert("force-network-mode".to_owned(), "none".to_owned());
        }
        NetworkMode::Host => {
            if !req.allow.contains(&Entitlement::NetworkHost) {
                return Err(Error::Entitlement {
                    entitlement: Entitlement::NetworkHost,
                    why: "--network host",
                    location: None,
                });
            }
            options.insert("force-network-mode".to_owned(), "host".to_owned());
        }
    }
    for (name, value) in &req.build_contexts {
        // Images and remote URLs (git, http) go to the frontend as they are, as buildx
        // passes them to BuildKit; it makes the sources that fetch them.
        if value.starts_with("docker-image://")
            || value.starts_with("oci-layout://")
            || remote_context::is_remote_url(value)
        {
            options.insert(format!("context:{name}"), value.clone());
        } else if value.contains("://") {
            return Err(Error::Unsupported(format!(
                "--build-context {name}={value}: expected a directory, docker-image://, \
                 oci-layout://, a git URL or an http(s) URL"
            )));
        } else {
            let dir = std::fs::canonicalize(value).map_err(|e| Error::Context {
                context: name.clone(),
                message: format!("{value}: {e}"),
            })?;
            options.insert(format!("context:{name}"), format!("local:{name}"));
            contexts.insert(name.clone(), dir);
        }
    }
    Ok((contexts, options))
}

/// The build file's text: a regular file (a context's `Dockerfile` may be a symlink to
/// `/dev/zero` or a FIFO) of at most [`MAX_BUILD_FILE_BYTES`], in UTF-8.
fn read_build_file(path: &Path) -> std::io::Result<String> {
    let bytes = read_regular_file(path, MAX_BUILD_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The content of `path`, which must be a regular file of at most `limit` bytes: files of a
/// build context are other people's, and a FIFO would block kiln forever, a device or a huge
/// file exhaust it.
pub(crate) fn read_regular_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores the flag.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB, the most kiln reads", limit >> 20),
        ));
    }
    Ok(bytes)
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The failing step's vertex and name, when a step failed.
    pub fn step(&self) -> Option<(Digest, &str)> {
        match self {
            Error::Step {
                source: kiln_solver::Error::Vertex { id, name, .. },
                ..
            } => Some((*id, name.as_str())),
            _ => None,
        }
    }

    /// The build-file line of the failing step, when known.
    pub fn step_location(&self) -> Option<&kiln_graph::SourceLocation> {
        match self {
            Error::Step { location, .. } | Error::Entitlement { location, .. } => location.as_ref(),
            _ => None,
        }
    }

    /// The plugin-reported error with its location, when the failure came from a frontend.
    pub fn plugin_error(&self) -> Option<&PluginError> {
        match self {
            Error::Frontend(e) => Some(e),
            Error::Plugin(e) => e.plugin_error(),
            _ => None,
        }
    }
}

/// Where the engine keeps its state and finds plugins.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The store root (`$KILN_ROOT`).
    pub root: PathBuf,
    /// Extra plugin directories (`--plugin-dir`), searched after the standard ones.
    pub plugin_dirs: Vec<PathBuf>,
    /// Maximum parallel steps; `None` = four per core, at least 8.
    pub concurrency: Option<usize>,
    /// Registries reached over plain http (`--insecure-registry`); loopback always is.
    pub insecure_registries: Vec<String>,
    /// Per-host registry settings (mirrors, http, insecure), from kiln.toml's `[registry]`.
    pub registries: BTreeMap<String, HostOptions>,
    /// The collection after each build (kiln.toml `[worker] gc`, `gckeepstorage`).
    pub gc: gc::GcPolicy,
}

/// The parallel steps allowed when [`EngineConfig::concurrency`] is `None`: four per core, at
/// least 8. Steps mostly wait (on processes, disks, registries), so more of them are in flight
/// than there are cores; BuildKit does not cap them at all by default.
pub fn default_concurrency() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).max(8)
}

/// An export destination, parsed from `--output` (and `--push`, `--load`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Export {
    /// `type=oci`: an OCI image layout, as a tarball (`tar=true`) or a directory.
    Oci {
        /// Destination path.
        dest: PathBuf,
        /// Write a tarball.
        tar: bool,
        /// Compression, media types, annotations, `rewrite-timestamp`.
        format: ImageFormat,
    },
    /// `type=local`: the result's files.
    Local {
        /// Destination directory.
        dest: PathBuf,
    },
    /// `type=tar`: the result's files as one tar.
    Tar {
        /// A file or standard output.
        dest: TarDest,
    },
    /// `type=docker`: a docker-archive tarball, as `docker load` reads it.
    Docker {
        /// Destination file.
        dest: PathBuf,
        /// Compression, media types, annotations, `rewrite-timestamp`.
        format: ImageFormat,
    },
    /// `--load` (`type=docker` without `dest`): the docker-archive streamed into `docker load`.
    Load {
        /// Compression, media types, annotations, `rewrite-timestamp`.
        format: ImageFormat,
    },
    /// `type=registry` (or `type=image,push=true`, `--push`): push the image to a registry
    /// under each name.
    Registry {
        /// Image names (`registry/repo:tag`).
        names: Vec<String>,
        /// Compression, media types, annotations, `rewrite-timestamp`.
        format: ImageFormat,
        /// `push-by-digest=true` (buildx's option): the image is pushed under its digest only,
        /// no tag (a multi-node build's client then pushes the index that lists it).
        push_by_digest: bool,
    },
}

impl Export {
    /// The image format of an image export; `None` for the filesystem exports.
    pub fn image_format(&self) -> Option<&ImageFormat> {
        match self {
            Export::Oci { format, .. }
            | Export::Docker { format, .. }
            | Export::Load { format }
            | Export::Registry { format, .. } => Some(format),
            Export::Local { .. } | Export::Tar { .. } => None,
        }
    }

    /// [`Export::image_format`], mutable (to add `--annotation`s to every image export).
    pub fn image_format_mut(&mut self) -> Option<&mut ImageFormat> {
        match self {
            Export::Oci { format, .. }
            | Export::Docker { format, .. }
            | Export::Load { format }
            | Export::Registry { format, .. } => Some(format),
            Export::Local { .. } | Export::Tar { .. } => None,
        }
    }
}

/// A privilege a build must be granted explicitly (`--allow`), as BuildKit's entitlements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `network.host`: `RUN --network=host`.
    NetworkHost,
    /// `security.insecure`: `RUN --security=insecure`.
    SecurityInsecure,
    /// `device`: `RUN --device` (CDI devices of the host).
    Device,
}

impl Entitlement {
    /// BuildKit's name (`network.host`, `security.insecure`).
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
            Entitlement::Device => "device",
        }
    }
}

impl std::fmt::Display for Entitlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Entitlement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "network.host" => Ok(Entitlement::NetworkHost),
            "security.insecure" => Ok(Entitlement::SecurityInsecure),
            "device" => Ok(Entitlement::Device),
            // BuildKit also grants single devices (`device=NAME[,alias=A]`); kiln grants
            // devices as a whole rather than read a grant wider than it means.
            other if other.starts_with("device=") => Err(format!(
                "--allow {other}: kiln grants host devices as a whole; pass --allow device"
            )),
            other => Err(format!(
                "unknown entitlement {other:?}: expected network.host, security.insecure or \
                 device"
            )),
        }
    }
}

/// A frontend subrequest (`--call`): the frontend answers it instead of building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// List the build targets (stages).
    Targets,
    /// The build arguments, secrets and SSH mounts a target uses.
    Outline,
    /// Lint the build file.
    Check,
}

impl Call {
    /// The name given to `--call` and passed to the frontend as option `call`.
    pub fn name(self) -> &'static str {
        match self {
            Call::Targets => "targets",
            Call::Outline => "outline",
            Call::Check => "check",
        }
    }
}

/// The config label in which a protocol 2 frontend returned its answer to a `--call`, as JSON;
/// read only when the response's own `call_result` field (protocol 3) is empty.
pub const CALL_RESULT_LABEL: &str = "kiln.call.result";

/// One build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The main context directory.
    pub context: PathBuf,
    /// The build file (`-f`); default `<context>/Dockerfile`.
    pub dockerfile: PathBuf,
    /// `--frontend`: overrides `# syntax=`.
    pub frontend: Option<String>,
    /// `--build-arg`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// Target platform.
    pub platform: Platform,
    /// `--platform a,b,...`: every target platform, built in one solve (`platforms.rs`) into
    /// an image index; empty (or one) builds `platform` alone.
    pub platforms: Vec<Platform>,
    /// `--output` destinations.
    pub exports: Vec<Export>,
    /// `-t` names.
    pub tags: Vec<String>,
    /// `--secret` sources by id.
    pub secrets: BTreeMap<String, SecretSource>,
    /// `--executor`.
    pub runtime: ExecRuntime,
    /// `--build-context NAME=VALUE`: a directory, `docker-image://REF`, `oci-layout://DIR`,
    /// a git URL or an http(s) URL.
    pub build_contexts: BTreeMap<String, String>,
    /// `--ssh` agents by id.
    pub ssh: BTreeMap<String, SshSource>,
    /// `--network`: the network of every RUN step that does not choose its own.
    pub network: NetworkMode,
    /// `--allow`: the entitlements granted.
    pub allow: BTreeSet<Entitlement>,
    /// `--add-host`, `--shm-size`, `--ulimit`.
    pub run_options: RunOptions,
    /// `--no-cache-filter`: stages built without the cache.
    pub no_cache_filter: Vec<String>,
    /// `--label`: image labels.
    pub labels: BTreeMap<String, String>,
    /// `--call`: ask the frontend instead of building (`None`: build).
    pub call: Option<Call>,
    /// `--explain-cache`: say why each step that ran was not cached.
    pub explain_cache: bool,
    /// `--cache-to`: where to export the build's cache records.
    pub cache_to: Vec<CacheExport>,
    /// `--cache-from`: caches whose records may answer a local miss.
    pub cache_from: Vec<CacheImport>,
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildOutcome {
    /// The assembled image, when an image export (`type=oci`) was asked for.
    pub image: Option<Image>,
    /// A multi-platform build's image index (its descriptor), when an image export was
    /// asked for.
    pub index: Option<kiln_types::image::Descriptor>,
    /// Every vertex the solve needed and whether it ran or was cached, in graph order.
    pub steps: Vec<(String, Status)>,
    /// Frontend warnings.
    pub warnings: Vec<Diagnostic>,
    /// The frontend that built the graph.
    pub frontend: String,
    /// For a `--call`: the frontend's answer (JSON); nothing was solved or exported.
    pub call_result: Option<String>,
    /// With `--explain-cache`: each step that ran and why, in graph order.
    pub explain: Vec<Miss>,
}

/// The build engine: a store, a cache index and the discovered plugins.
pub struct Engine {
    store: Store,
    index: Arc<CacheIndex>,
    plugins: Arc<PluginRegistry>,
    /// The directories the plugins were looked for in (named by errors about missing ones).
    plugin_dirs: Vec<PathBuf>,
    concurrency: Option<usize>,
    cache_mounts: Arc<run::CacheMounts>,
    registry: kiln_registry::Registry,
    gc: gc::GcPolicy,
    /// Globs of plugin references usable without a digest (plugin_pull.rs).
    plugin_allow: Vec<String>,
}

/// Progress events of a build; the id is the vertex digest (or a synthetic one for internal
/// steps such as loading the build definition).
pub type BuildEvent = Event<Digest>;

impl Engine {
    /// Opens the store and discovers plugins.
    pub fn new(config: EngineConfig) -> Result<Self, Error> {
        let store = Store::open(&config.root)?;
        // What builds killed while running a step left (the store's tmp/ is swept by open).
        running::sweep(&config.root);
        let index = CacheIndex::open(&config.root.join("cache.redb"))?;
        let search = SearchPath::standard(&config.plugin_dirs);
        let plugins = PluginRegistry::discover(&search);
        Ok(Engine {
            store,
            index: Arc::new(index),
            plugins: Arc::new(plugins),
            plugin_dirs: search.dirs().to_vec(),
            concurrency: config.concurrency,
            cache_mounts: Arc::new(run::CacheMounts::new(config.root.join("cache-mounts"))),
            registry: kiln_registry::Registry::new(kiln_registry::RegistryOptions {
                insecure: config.insecure_registries.clone(),
                docker_config: None,
                hosts: config.registries.clone(),
            })?,
            gc: config.gc,
            plugin_allow: Vec::new(),
        })
    }

    /// The discovered plugins (for `kiln plugins ls`).
    pub fn plugins(&self) -> &PluginRegistry {
        &self.plugins
    }

    /// The store keeps itself: this build's cache uses are recorded, then, its lease ended,
    /// the store is collected down to its limit. A failure there fails no build: it is a
    /// warning.
    async fn collect_after_build(
        &self,
        lease: kiln_snapshot::gc::Lease,
        warnings: &mut Vec<Diagnostic>,
    ) {
        drop(lease);
        let (store, index, policy) = (self.store.clone(), self.index.clone(), self.gc);
        let collected =
            tokio::task::spawn_blocking(move || gc::after_build(&store, &index, &policy)).await;
        let failed = match collected {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            warnings.push(Diagnostic {
                message: format!("garbage collection of the store failed: {why}"),
                location: None,
            });
        }
    }

    async fn export_image(
        &self,
        req: &BuildRequest,
        snapshot: Snapshot,
        config: kiln_types::image::ImageConfig,
        inline_cache: Option<String>,
        attester: Option<Arc<attest::Attester>>,
        progress: Arc<dyn ProgressSink<Digest>>,
    ) -> Result<export::Exported, Error> {
        let store = self.store.clone();
        let exports = req.exports.clone();
        let epoch = source_date_epoch(&req.build_args)?;
        let tags = req.tags.clone();
        let registry = self.registry.clone();
        let handle = tokio::runtime::Handle::current();
        let push_progress = progress.clone();
        let step = ExportStep::begin(progress.as_ref());
        let image = tokio::task::spawn_blocking(move || -> Result<export::Exported, Error> {
            let cx = export::ExportContext {
                store: &store,
                registry: &registry,
                handle: &handle,
                tags: &tags,
                epoch,
                progress: push_progress.as_ref(),
                inline_cache: inline_cache.as_deref(),
                attester: attester.as_deref(),
            };
            export::run(&cx, &exports, &snapshot, &config)
        })
        .await
        .map_err(|e| Error::Unsupported(format!("export task failed: {e}")))?;
        step.end(progress.as_ref(), &image, |(img, index)| match index {
            Some(d) => Some(format!("writing image index {}", d.digest)),
            None => img
                .as_ref()
                .map(|img| format!("writing image {}", img.manifest.digest)),
        });
        image
    }
}

/// Refuses a graph whose steps need an entitlement that was not granted, before anything
/// runs, as BuildKit validates entitlements when it loads the definition.
fn check_entitlements(
    def: &kiln_graph::Definition,
    allow: &BTreeSet<Entitlement>,
) -> Result<(), Error> {
    use kiln_graph::{Op, SecurityMode};
    for v in &def.vertices {
        let Op::Exec(e) = &v.op else { continue };
        let needed = [
            (
                e.network == NetworkMode::Host,
                Entitlement::NetworkHost,
                "RUN --network=host",
            ),
            (
                e.security == SecurityMode::Insecure,
                Entitlement::SecurityInsecure,
                "RUN --security=insecure",
            ),
            // BuildKit lets a device marked auto-allowed by its spec (or the daemon) through;
            // kiln reads no spec here, so every RUN --device needs the grant.
            (!e.devices.is_empty(), Entitlement::Device, "RUN --device"),
        ];
        for (used, entitlement, why) in needed {
            if used && !allow.contains(&entitlement) {
                return Err(Error::Entitlement {
                    entitlement,
                    why,
                    location: v.meta.source.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` from the build args (buildx passes the environment's as one).
fn source_date_epoch(build_args: &BTreeMap<String, String>) -> Result<Option<u64>, Error> {
    match build_args.get("SOURCE_DATE_EPOCH").map(|v| v.trim()) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Error::Unsupported(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970-01-01"
            ))
        }),
    }
}

/// Pushes `image` (all of its blobs in `store`) under each of `names`; under its digest only
/// (the names' repositories, no tag) when `by_digest`.
fn push(
    store: &Store,
    registry: &kiln_registry::Registry,
    handle: &tokio::runtime::Handle,
    image: &Image,
    names: &[String],
    by_digest: bool,
    progress: &dyn ProgressSink<Digest>,
) -> Result<(), Error> {
    let mut blobs: Vec<(Digest, u64)> = image.layers.iter().map(|l| (l.digest, l.size)).collect();
    blobs.push((
        image.manifest_doc.config.digest,
        image.manifest_doc.config.size,
    ));
    let manifest = store.read_blob(&image.manifest.digest)?;
    for name in names {
        let mut target = match name.parse::<kiln_registry::ImageRef>()? {
            kiln_registry::ImageRef::Registry(r) => r,
            kiln_registry::ImageRef::Layout(_) => {
                return Err(Error::Unsupported(format!(
                    "cannot push to {name}: use --output type=oci,dest=DIR,tar=false for a layout"
                )))
            }
        };
        if by_digest {
            target.tag = None;
            target.digest = Some(image.manifest.digest);
        }
        let digest = handle.block_on(registry.push(
            &target,
            &blobs,
            &manifest,
            &image.manifest.media_type,
            store,
        ))?;
        if by_digest {
            target.digest = None;
        }
        progress.send(Event::Log {
            id: Digest::of(b"internal:export"),
            name: "exporting to image".to_owned(),
            line: format!("pushed {target}@{digest}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::{ExecOp, NetworkMode, Op, SecurityMode};

    fn def_with(network: NetworkMode, security: SecurityMode) -> kiln_graph::Definition {
        let op = Op::Exec(ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network,
            security,
            mounts: vec![],
            proxy_env: vec![],
            devices: Vec::new(),
        });
        kiln_graph::State::definition(&[kiln_graph::State::from_op(op, vec![], "RUN true")])
    }

    #[test]
    fn entitlements_gate_host_network_and_insecure() {
        let none = BTreeSet::new();
        let host = def_with(NetworkMode::Host, SecurityMode::Sandbox);
        let e = check_entitlements(&host, &none).unwrap_err().to_string();
        assert!(e.starts_with("network.host is not allowed"), "{e}");
        assert!(e.contains("--allow network.host"), "{e}");
        let ok = BTreeSet::from([Entitlement::NetworkHost]);
        assert!(check_entitlements(&host, &ok).is_ok());
        let insecure = def_with(NetworkMode::Default, SecurityMode::Insecure);
        let e = check_entitlements(&insecure, &ok).unwrap_err().to_string();
        assert!(e.starts_with("security.insecure is not allowed"), "{e}");
        assert!(
            check_entitlements(&def_with(NetworkMode::None, SecurityMode::Sandbox), &none).is_ok()
        );
        assert_eq!("network.host".parse(), Ok(Entitlement::NetworkHost));
        assert_eq!("device".parse(), Ok(Entitlement::Device));
        assert!("device=nvidia.com/gpu"
            .parse::<Entitlement>()
            .unwrap_err()
            .contains("--allow device"));
        let Op::Exec(mut op) = def_with(NetworkMode::Default, SecurityMode::Sandbox)
            .vertices
            .remove(0)
            .op
        else {
            panic!("an exec")
        };
        op.devices.push(kiln_graph::Device {
            name: "nvidia.com/gpu=0".into(),
            required: false,
        });
        let with_device = kiln_graph::State::definition(&[kiln_graph::State::from_op(
            Op::Exec(op),
            vec![],
            "RUN",
        )]);
        let e = check_entitlements(&with_device, &none)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "device is not allowed: RUN --device needs it; pass --allow device to grant it"
        );
        let devices = BTreeSet::from([Entitlement::Device]);
        assert!(check_entitlements(&with_device, &devices).is_ok());
    }

    #[test]
    fn source_date_epoch_is_seconds() {
        let args = |v: &str| BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), v.to_owned())]);
        assert_eq!(
            source_date_epoch(&args("1700000000")).unwrap(),
            Some(1_700_000_000)
        );
        assert_eq!(source_date_epoch(&BTreeMap::new()).unwrap(), None);
        assert!(source_date_epoch(&args("yesterday")).is_err());
    }

    #[test]
    fn build_file_is_a_bounded_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = read_build_file(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read_build_file(&zero).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_BUILD_FILE_BYTES + 1).unwrap();
        let err = read_build_file(&big).unwrap_err();
        assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
        let ok = dir.path().join("Dockerfile");
        std::fs::write(&ok, "FROM scratch\n").unwrap();
        assert_eq!(read_build_file(&ok).unwrap(), "FROM scratch\n");
    }
}
