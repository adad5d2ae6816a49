//! The messages that cross the plugin boundary, in both directions, as JSON.
//!
//! Compatibility rules (they are what lets an old plugin keep working in a new kiln and the other
//! way round):
//! - a field added after the first release carries `#[serde(default)]`;
//! - unknown fields are ignored (no `deny_unknown_fields` anywhere);
//! - fields and methods are never removed or renamed;
//! - a method that the receiving side does not know is answered with an
//!   [`ErrorKind::Unsupported`] error, so callers can fall back.

use std::collections::BTreeMap;
use std::fmt;

use kiln_graph::{Definition, Op};
use kiln_types::image::ImageConfig;
use kiln_types::{Digest, Platform};
use serde::{Deserialize, Serialize};

/// The version of the message set described in this module. Bumped when messages gain
/// meaningful fields, so a host can tell what an older plugin understands.
///
/// - 1: the first release.
/// - 2: [`PrimitiveRequest`] gained `extra_hosts`, `shm_size` and `ulimits`; a host must not
///   send them to an older exec plugin, which would silently ignore them.
/// - 3: [`FrontendResponse`] gained `call_result` (the answer to a `--call` subrequest, which
///   version 2 frontends put in the image label `kiln.call.result`; a host still reads that
///   label from a frontend that leaves the field empty); [`Manifest`] gained `requires` (the
///   host capabilities a plugin needs, see [`HOST_CAPABILITIES`]); [`InstructionRequest`]
///   gained `accepts_expansion` and [`InstructionResponse`] `expansion` (build file text run in
///   place of the instruction, e.g. `INCLUDE`: an older frontend never sets the flag, so a
///   plugin that can only expand refuses instead of being ignored).
/// - 4: [`PrimitiveRequest`] gained `limits` (the step's cgroup limits); a host must not send
///   them to an older exec plugin, which would silently ignore them.
pub const PROTOCOL_VERSION: u32 = 4;

/// The capabilities this version of the SDK's host side offers, for [`Manifest::requires`]. A
/// host refuses, at load, a plugin that requires a capability missing from its own list, naming
/// it. Names are never reused; a capability is added here when kiln gains a feature a plugin
/// cannot detect otherwise.
pub const HOST_CAPABILITIES: &[&str] = &[
    // `frontend.build` may answer a `--call` in `FrontendResponse::call_result` (protocol 3).
    CAP_FRONTEND_CALL_RESULT,
];

/// Capability: the host reads [`FrontendResponse::call_result`].
pub const CAP_FRONTEND_CALL_RESULT: &str = "frontend.call_result";

// ---------------------------------------------------------------------------------------------
// Method names
// ---------------------------------------------------------------------------------------------

/// Plugin method: build file text → graph ([`FrontendRequest`] → [`FrontendResponse`]).
pub const METHOD_FRONTEND_BUILD: &str = "frontend.build";
/// Plugin method: one instruction → new stage state ([`InstructionRequest`] →
/// [`InstructionResponse`]). Also a host callback with the same request, answered with
/// `Option<InstructionResponse>` (`None`: no instruction plugin handles the keyword).
pub const METHOD_INSTRUCTION_LOWER: &str = "instruction.lower";
/// Plugin method: run one vertex ([`PrimitiveRequest`] → [`PrimitiveResponse`]).
pub const METHOD_PRIMITIVE_EXECUTE: &str = "primitive.execute";
/// Plugin method: what the result of a vertex currently depends on outside the graph
/// ([`CacheKeyRequest`] → [`CacheKeyResponse`]), e.g. a URL's ETag or the commit a git branch
/// points to, asked before every build so that a moved source is fetched again. Optional: a
/// plugin without it (an `Unsupported` answer) is keyed on its op alone.
pub const METHOD_PRIMITIVE_CACHE_KEY: &str = "primitive.cache_key";

/// Host callback: [`ReadFileRequest`] → the raw bytes of the file (not JSON).
pub const HOST_CONTEXT_READ_FILE: &str = "context.read_file";
/// Host callback: [`StatRequest`] → `Option<FileInfo>` (`None`: the path does not exist).
pub const HOST_CONTEXT_STAT: &str = "context.stat";
/// Host callback: [`ReadDirRequest`] → `Vec<FileInfo>`, sorted by name.
pub const HOST_CONTEXT_READ_DIR: &str = "context.read_dir";
/// Host callback: [`ResolveImageConfigRequest`] → [`ResolveImageConfigResponse`].
pub const HOST_IMAGE_RESOLVE_CONFIG: &str = "image.resolve_config";
/// Host callback: [`LogRequest`] → empty JSON object.
pub const HOST_PROGRESS_LOG: &str = "progress.log";
/// Host callback: empty JSON object → `bool`, whether the build was cancelled.
pub const HOST_BUILD_CANCELLED: &str = "build.cancelled";

// ---------------------------------------------------------------------------------------------
// Manifest
// ---------------------------------------------------------------------------------------------

/// What a plugin is and offers; returned by the root module's `manifest` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Unique plugin name, e.g. `dockerfile`.
    pub name: String,
    /// The plugin's own version (free form, usually its crate version).
    pub version: String,
    /// The binary ABI version it was built for (`kiln_plugin_abi::ABI_VERSION`).
    pub abi_version: u32,
    /// The message protocol version it was built with ([`PROTOCOL_VERSION`]).
    #[serde(default)]
    pub protocol_version: u32,
    /// What it implements.
    pub kinds: Vec<Kind>,
    /// Frontend capabilities, present when `kinds` has [`Kind::Frontend`].
    #[serde(default)]
    pub frontend: Option<FrontendCaps>,
    /// Instruction capabilities, present when `kinds` has [`Kind::Instruction`].
    #[serde(default)]
    pub instruction: Option<InstructionCaps>,
    /// Primitive capabilities, present when `kinds` has [`Kind::Primitive`].
    #[serde(default)]
    pub primitive: Option<PrimitiveCaps>,
    /// (Protocol 3) Host capabilities the plugin cannot work without (names from
    /// [`HOST_CAPABILITIES`] of the kiln it targets); a host lacking one refuses the plugin at
    /// load, naming it, instead of failing in the middle of a build.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

/// The three kinds of plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Build file text → graph (`frontend.build`).
    Frontend,
    /// Executes one vertex on prepared inputs (`primitive.execute`).
    Primitive,
    /// One Dockerfile instruction → stage changes (`instruction.lower`).
    Instruction,
    /// A kind introduced by a later kiln; ignored by this one.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Frontend => "frontend",
            Kind::Primitive => "primitive",
            Kind::Instruction => "instruction",
            Kind::Unknown => "unknown",
        })
    }
}

/// What a frontend plugin answers to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendCaps {
    /// `# syntax=` values it handles besides its name, e.g. `docker/dockerfile` (a `:tag` or
    /// `@digest` suffix of the requested value is ignored when matching).
    #[serde(default)]
    pub syntaxes: Vec<String>,
}

/// What an instruction plugin answers to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionCaps {
    /// Instruction keywords it lowers, e.g. `INCLUDE` (matched case-insensitively).
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// What a primitive plugin answers to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimitiveCaps {
    /// Op names it executes: `exec` for [`Op::Exec`], or the `primitive` of an [`Op::Custom`].
    #[serde(default)]
    pub ops: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Plugin methods
// ---------------------------------------------------------------------------------------------

/// A position in a build file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The file name as the user gave it.
    pub file: String,
    /// 1-based line number.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Input of `frontend.build`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendRequest {
    /// The build file text.
    pub source: String,
    /// Its name, for messages (e.g. `Dockerfile`).
    pub filename: String,
    /// `--build-arg` values.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// `--target` stage.
    #[serde(default)]
    pub target: Option<String>,
    /// The target platform.
    pub platform: Platform,
    /// `--no-cache`.
    #[serde(default)]
    pub no_cache: bool,
    /// `--no-cache-filter` stages.
    #[serde(default)]
    pub no_cache_filter: Vec<String>,
    /// Names of the local contexts available (`context` is the main one; `--build-context`
    /// adds others). Read them with the `context.*` host callbacks.
    #[serde(default)]
    pub contexts: Vec<String>,
    /// Frontend options not covered above (`--opt key=value`), passed through untouched.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A non-fatal message for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// What is wrong.
    pub message: String,
    /// Where, when known.
    #[serde(default)]
    pub location: Option<Location>,
}

/// Output of `frontend.build`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendResponse {
    /// The graph; `outputs[0]` is the result filesystem.
    pub definition: Definition,
    /// The image config of the result.
    pub config: ImageConfig,
    /// Warnings to show.
    #[serde(default)]
    pub warnings: Vec<Diagnostic>,
    /// (Protocol 3) The answer to a `--call` subrequest (option `call`, e.g. `targets`), as
    /// JSON; `definition` is then an empty graph. Version 2 frontends put this JSON, as text, in
    /// the label `kiln.call.result` of `config` instead; hosts still read it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_result: Option<serde_json::Value>,
}

impl FrontendResponse {
    /// A response with `definition` and `config`, no warnings and no call result. Prefer it to
    /// a struct literal: a later protocol may add fields.
    pub fn new(definition: Definition, config: ImageConfig) -> Self {
        FrontendResponse {
            definition,
            config,
            warnings: Vec::new(),
            call_result: None,
        }
    }
}

/// Input of `instruction.lower`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionRequest {
    /// The instruction keyword as written (e.g. `INCLUDE`).
    pub keyword: String,
    /// The raw text after the keyword and its flags, continuation lines joined.
    pub args: String,
    /// The `--flag[=value]` words given before the arguments, as written.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Where the instruction is.
    pub location: Location,
    /// The stage so far; `outputs[0]` is its current filesystem.
    pub state: Definition,
    /// The stage's current image config.
    pub config: ImageConfig,
    /// Build args in scope.
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// (Protocol 3) The frontend runs an [`InstructionResponse::expansion`]. An older frontend
    /// leaves it `false` and would drop the expansion silently: a plugin that only answers with
    /// one (e.g. `INCLUDE`) refuses the instruction instead.
    #[serde(default)]
    pub accepts_expansion: bool,
}

/// Output of `instruction.lower`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionResponse {
    /// The new stage graph; `outputs[0]` is the new filesystem (usually built on the received
    /// one, see `Definition::state`).
    pub state: Definition,
    /// The stage's new image config.
    pub config: ImageConfig,
    /// `created_by` of the history entry; `None` lets the frontend write the instruction text.
    #[serde(default)]
    pub history: Option<String>,
    /// (Protocol 3) Build file text to run in place of the instruction, in the same stage, as
    /// if written there (only when the request's `accepts_expansion` is set). `state` and
    /// `config` are then the received ones, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expansion: Option<Expansion>,
}

impl InstructionResponse {
    /// The stage's new `state` and `config`, with the default history entry and no expansion.
    /// Prefer it to a struct literal: a later protocol may add fields.
    pub fn new(state: Definition, config: ImageConfig) -> Self {
        InstructionResponse {
            state,
            config,
            history: None,
            expansion: None,
        }
    }

    /// "Run `expansion` in place of the instruction": the request's stage, unchanged, with the
    /// text to run.
    pub fn expand(req: InstructionRequest, expansion: Expansion) -> Self {
        InstructionResponse {
            expansion: Some(expansion),
            ..InstructionResponse::new(req.state, req.config)
        }
    }
}

/// Build file text an instruction expands to (see [`InstructionResponse::expansion`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expansion {
    /// The name errors and failing steps in `source` are located in (e.g. the included path).
    pub file: String,
    /// The text, in the syntax of the build file the instruction is in.
    pub source: String,
    /// The line of `file` where `source` starts (1 for a whole file).
    #[serde(default = "first_line")]
    pub first_line: u32,
}

fn first_line() -> u32 {
    1
}

/// Input of `primitive.execute`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimitiveRequest {
    /// The vertex to execute.
    pub op: Op,
    /// Host paths of the prepared input filesystems, in the order of the vertex inputs.
    pub inputs: Vec<String>,
    /// Host path where the result filesystem is written (for exec: the prepared rootfs).
    pub output: String,
    /// For exec: every mount but the root, prepared by the host (cache directories, secret
    /// files, bind sources), in the order they are to be mounted.
    #[serde(default)]
    pub mounts: Vec<PreparedMount>,
    /// For exec: which runtime runs the process.
    #[serde(default)]
    pub runtime: Runtime,
    /// For exec: the container's hostname (default: a fixed name chosen by the primitive).
    #[serde(default)]
    pub hostname: Option<String>,
    /// For exec: the content of `/etc/hosts` to provide (the primitive's default when `None`).
    #[serde(default)]
    pub etc_hosts: Option<String>,
    /// For exec: the content of `/etc/resolv.conf` to provide (the host's when `None`).
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// For exec (protocol 2): entries appended to the default `/etc/hosts` (`--add-host`);
    /// ignored when `etc_hosts` replaces the whole file.
    #[serde(default)]
    pub extra_hosts: Vec<HostEntry>,
    /// For exec (protocol 2): the size of the `/dev/shm` tmpfs in bytes (`--shm-size`); the
    /// primitive's default (64 MiB, as Docker's) when `None`.
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// For exec (protocol 2): resource limits of the process (`--ulimit`), replacing the
    /// primitive's default for the same resource.
    #[serde(default)]
    pub ulimits: Vec<Ulimit>,
    /// For exec (protocol 4): the step's cgroup limits (memory, CPU, pids); none when all are
    /// `None`. A plugin of protocol 3 or older ignores them: a host must check the plugin's
    /// version before it sends any.
    #[serde(default)]
    pub limits: StepLimits,
}

/// The cgroup limits of an exec step, as `docker run --memory --cpu-quota --pids-limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepLimits {
    /// Memory in bytes (`memory.limit_in_bytes` / `memory.max`).
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU time in microseconds per 100 ms period (`cpu.cfs_quota_us` / `cpu.max`).
    #[serde(default)]
    pub cpu_quota: Option<u64>,
    /// The number of processes and threads (`pids.max`).
    #[serde(default)]
    pub pids: Option<u64>,
}

impl StepLimits {
    /// Whether any limit is set (a step without any gets no cgroup of its own).
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.cpu_quota.is_some() || self.pids.is_some()
    }
}

impl PrimitiveRequest {
    /// A request for a primitive that is not exec: `op` on `inputs`, writing `output`; the
    /// exec-only fields at their defaults.
    pub fn new(op: Op, inputs: Vec<String>, output: String) -> Self {
        PrimitiveRequest {
            op,
            inputs,
            output,
            mounts: Vec::new(),
            runtime: Runtime::default(),
            hostname: None,
            etc_hosts: None,
            resolv_conf: None,
            extra_hosts: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
            limits: StepLimits::default(),
        }
    }
}

/// One `/etc/hosts` entry: `ip` then `host`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// The host name.
    pub host: String,
    /// Its address (IPv4 or IPv6, without brackets).
    pub ip: String,
}

/// One resource limit (`setrlimit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Which resource.
    pub resource: UlimitResource,
    /// Soft limit; [`Ulimit::UNLIMITED`] for none.
    pub soft: u64,
    /// Hard limit; [`Ulimit::UNLIMITED`] for none.
    pub hard: u64,
}

impl Ulimit {
    /// The value meaning "no limit" (`RLIM_INFINITY`; `-1` on Docker's command line).
    pub const UNLIMITED: u64 = u64::MAX;
}

/// The resources of [`Ulimit`], named as Docker's `--ulimit` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UlimitResource {
    /// `RLIMIT_CORE`.
    Core,
    /// `RLIMIT_CPU`.
    Cpu,
    /// `RLIMIT_DATA`.
    Data,
    /// `RLIMIT_FSIZE`.
    Fsize,
    /// `RLIMIT_LOCKS`.
    Locks,
    /// `RLIMIT_MEMLOCK`.
    Memlock,
    /// `RLIMIT_MSGQUEUE`.
    Msgqueue,
    /// `RLIMIT_NICE`.
    Nice,
    /// `RLIMIT_NOFILE`.
    Nofile,
    /// `RLIMIT_NPROC`.
    Nproc,
    /// `RLIMIT_RSS`.
    Rss,
    /// `RLIMIT_RTPRIO`.
    Rtprio,
    /// `RLIMIT_RTTIME`.
    Rttime,
    /// `RLIMIT_SIGPENDING`.
    Sigpending,
    /// `RLIMIT_STACK`.
    Stack,
    /// A resource introduced by a later kiln: the primitive refuses the step.
    #[serde(other)]
    Unknown,
}

impl UlimitResource {
    /// Every known resource, in name order.
    pub const ALL: [UlimitResource; 15] = [
        UlimitResource::Core,
        UlimitResource::Cpu,
        UlimitResource::Data,
        UlimitResource::Fsize,
        UlimitResource::Locks,
        UlimitResource::Memlock,
        UlimitResource::Msgqueue,
        UlimitResource::Nice,
        UlimitResource::Nofile,
        UlimitResource::Nproc,
        UlimitResource::Rss,
        UlimitResource::Rtprio,
        UlimitResource::Rttime,
        UlimitResource::Sigpending,
        UlimitResource::Stack,
    ];

    /// Docker's name of the resource (`nofile`...).
    pub fn name(self) -> &'static str {
        match self {
            UlimitResource::Core => "core",
            UlimitResource::Cpu => "cpu",
            UlimitResource::Data => "data",
            UlimitResource::Fsize => "fsize",
            UlimitResource::Locks => "locks",
            UlimitResource::Memlock => "memlock",
            UlimitResource::Msgqueue => "msgqueue",
            UlimitResource::Nice => "nice",
            UlimitResource::Nofile => "nofile",
            UlimitResource::Nproc => "nproc",
            UlimitResource::Rss => "rss",
            UlimitResource::Rtprio => "rtprio",
            UlimitResource::Rttime => "rttime",
            UlimitResource::Sigpending => "sigpending",
            UlimitResource::Stack => "stack",
            UlimitResource::Unknown => "unknown",
        }
    }

    /// The resource Docker calls `name`.
    pub fn from_name(name: &str) -> Option<UlimitResource> {
        UlimitResource::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// A mount of an exec step, resolved to host paths by the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedMount {
    /// Absolute path inside the container.
    pub dest: String,
    /// What to mount there.
    pub kind: PreparedMountKind,
    /// Mount it read-only.
    #[serde(default)]
    pub readonly: bool,
}

/// Kinds of [`PreparedMount`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreparedMountKind {
    /// Bind-mount a host file or directory (bind, cache and secret mounts end up as this).
    Bind {
        /// The host path.
        source: String,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        #[serde(default)]
        size: Option<u64>,
    },
    /// A kind this plugin does not know (sent by a newer host): refuse the step.
    #[serde(other)]
    Unknown,
}

/// The runtime of an exec step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// The plugin's own sandbox (namespaces on the host kernel).
    #[default]
    Embedded,
    /// An OCI bundle run by `runc`.
    Runc,
    /// A runtime this plugin does not know.
    #[serde(other)]
    Unknown,
}

/// Input of `primitive.cache_key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKeyRequest {
    /// The vertex whose key is computed.
    pub op: Op,
}

/// Output of `primitive.cache_key`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKeyResponse {
    /// Extra key material (an ETag, a commit id...); `None`: the op alone decides.
    #[serde(default)]
    pub key: Option<String>,
}

/// Output of `primitive.execute`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimitiveResponse {
    /// The process exit status, for primitives that run one.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error crossing the boundary in either direction: a plugin's failure, or a host callback's.
/// Its JSON is the `Err` payload of both generic entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginError {
    /// What failed and why, for the user.
    pub message: String,
    /// Where in the build file, when it is about a line.
    #[serde(default)]
    pub location: Option<Location>,
    /// The class of error.
    #[serde(default)]
    pub kind: ErrorKind,
}

/// Classes of [`PluginError`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is wrong (a syntax error in the build file, a bad flag).
    InvalidInput,
    /// The method, feature or option is not supported by the receiver.
    Unsupported,
    /// A file, image or name does not exist.
    NotFound,
    /// Access was refused: a registry answered 401/403, or credentials are missing or wrong.
    /// (A plugin built before this kind existed reads it as [`ErrorKind::Other`].)
    Unauthorized,
    /// A service the call needs cannot be reached (network, DNS, TLS, a registry's 5xx).
    /// (A plugin built before this kind existed reads it as [`ErrorKind::Other`].)
    Unavailable,
    /// The build was cancelled.
    Cancelled,
    /// The plugin panicked.
    Panic,
    /// A bug or an environment failure.
    #[default]
    Internal,
    /// A kind introduced by a later kiln.
    #[serde(other)]
    Other,
}

impl PluginError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
            location: None,
            kind,
        }
    }

    /// [`ErrorKind::InvalidInput`] at `location`: what a frontend returns for a bad line.
    pub fn invalid_input(message: impl Into<String>, location: Location) -> Self {
        PluginError {
            location: Some(location),
            ..PluginError::new(ErrorKind::InvalidInput, message)
        }
    }

    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::Unsupported, message)
    }

    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::NotFound, message)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        PluginError::new(ErrorKind::Internal, message)
    }

    /// The same error, located at `location`.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// The JSON sent across the boundary.
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
    }

    /// Decodes the error JSON received from the other side; text that is not such JSON (a peer
    /// that does not follow the protocol) becomes an [`ErrorKind::Internal`] error carrying it.
    pub fn from_json(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| PluginError::internal(text))
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for PluginError {}

// ---------------------------------------------------------------------------------------------
// Host callbacks
// ---------------------------------------------------------------------------------------------

/// Request of [`HOST_CONTEXT_READ_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileRequest {
    /// Which local context (`context` for the main one).
    pub context: String,
    /// Path relative to the context root.
    pub path: String,
}

/// Request of [`HOST_CONTEXT_STAT`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRequest {
    /// Which local context.
    pub context: String,
    /// Path relative to the context root; symlinks are not followed.
    pub path: String,
}

/// Request of [`HOST_CONTEXT_READ_DIR`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDirRequest {
    /// Which local context.
    pub context: String,
    /// Directory path relative to the context root (`""` or `.` for the root).
    pub path: String,
}

/// What [`HOST_CONTEXT_STAT`] and [`HOST_CONTEXT_READ_DIR`] report about a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// The last path component.
    pub name: String,
    /// File type.
    pub kind: FileKind,
    /// Size in bytes (of the link itself for symlinks).
    pub size: u64,
    /// Permission bits (`0o755`...).
    pub mode: u32,
    /// Target of a symlink.
    #[serde(default)]
    pub link_target: Option<String>,
}

/// File types of [`FileInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, socket, fifo).
    #[serde(other)]
    Other,
}

/// Request of [`HOST_IMAGE_RESOLVE_CONFIG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveImageConfigRequest {
    /// Image reference as written in the build file.
    pub reference: String,
    /// Platform to select from an index.
    pub platform: Platform,
}

/// Response of [`HOST_IMAGE_RESOLVE_CONFIG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveImageConfigResponse {
    /// The digest of the resolved manifest, to pin the image source.
    pub digest: Digest,
    /// The image config.
    pub config: ImageConfig,
}

/// Severity of a [`LogRequest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Details.
    Debug,
    /// Progress information.
    #[default]
    Info,
    /// A warning for the user.
    Warn,
    /// A level introduced by a later kiln.
    #[serde(other)]
    Other,
}

/// Request of [`HOST_PROGRESS_LOG`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// The message.
    pub message: String,
    /// Its severity.
    #[serde(default)]
    pub level: LogLevel,
}

/// An empty message, for callbacks without a request or a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_variants_are_tolerated() {
        let m: Manifest = serde_json::from_str(
            r#"{"name":"x","version":"1","abi_version":1,"kinds":["frontend","exporter"],
                "frontend":{"syntaxes":["x"],"future":1},"future_field":true}"#,
        )
        .unwrap();
        assert_eq!(m.kinds, vec![Kind::Frontend, Kind::Unknown]);
        assert_eq!(m.protocol_version, 0);
        let e = PluginError::from_json(r#"{"message":"m","kind":"brand_new"}"#);
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(PluginError::from_json("garbage").message, "garbage");
    }

    #[test]
    fn instruction_messages_without_expansions_still_decode() {
        // What a protocol-2 plugin answers and a protocol-2 frontend asks: no expansion fields.
        let def = serde_json::to_value(kiln_graph::State::definition(&[])).unwrap();
        let config = serde_json::to_value(ImageConfig::default()).unwrap();
        let resp: InstructionResponse =
            serde_json::from_value(serde_json::json!({"state": def, "config": config})).unwrap();
        assert_eq!(resp.expansion, None);
        let e: Expansion = serde_json::from_str(r#"{"file":"f","source":"RUN x"}"#).unwrap();
        assert_eq!(e.first_line, 1);
    }

    #[test]
    fn old_primitive_requests_still_decode() {
        // What a protocol-1 host sends: no extra_hosts, shm_size or ulimits.
        let old = serde_json::json!({"op": Op::Merge, "inputs": [], "output": "/x"});
        let req: PrimitiveRequest = serde_json::from_value(old).unwrap();
        assert!(req.extra_hosts.is_empty() && req.ulimits.is_empty());
        assert_eq!(req.shm_size, None);
        let u: Ulimit =
            serde_json::from_str(r#"{"resource":"brand_new","soft":1,"hard":2}"#).unwrap();
        assert_eq!(u.resource, UlimitResource::Unknown);
        for r in UlimitResource::ALL {
            assert_eq!(UlimitResource::from_name(r.name()), Some(r));
        }
    }

    #[test]
    fn error_displays_location() {
        let e = PluginError::invalid_input(
            "unknown flag",
            Location {
                file: "Dockerfile".into(),
                line: 3,
            },
        );
        assert_eq!(e.to_string(), "Dockerfile:3: unknown flag");
        assert_eq!(PluginError::from_json(&e.to_json()), e);
    }
}
