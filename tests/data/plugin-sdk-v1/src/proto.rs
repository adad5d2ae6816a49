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
pub const PROTOCOL_VERSION: u32 = 1;

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
