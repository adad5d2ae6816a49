//! The operations a vertex can perform. Every field is typed; no option maps.

use kiln_types::Platform;
use serde::{Deserialize, Serialize};

/// What a vertex does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Produce a filesystem from outside the graph.
    Source(SourceOp),
    /// Run a process on a root filesystem (RUN).
    Exec(ExecOp),
    /// File actions on a filesystem (COPY, WORKDIR's mkdir, ...).
    File(FileOp),
    /// Layer several filesystems on top of each other (COPY --link).
    Merge,
    /// The changes that turn input 0 into input 1.
    Diff,
    /// Handled by a primitive plugin.
    Custom(CustomOp),
}

impl Op {
    /// A short kind name for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Source(_) => "source",
            Op::Exec(_) => "exec",
            Op::File(_) => "file",
            Op::Merge => "merge",
            Op::Diff => "diff",
            Op::Custom(_) => "custom",
        }
    }
}

/// Sources of filesystems.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOp {
    /// A local directory given to the build (the context, or a named context).
    Local(LocalSource),
    /// A container image, by reference.
    Image(ImageSource),
}

/// A local directory source. Its cache key is the content of the selected files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSource {
    /// Which local directory: `context` for the main build context.
    pub name: String,
    /// Only these paths (patterns) are transferred, when non-empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    /// `.dockerignore`-style exclusions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_patterns: Vec<String>,
}

/// A container image source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// A normalized reference (`registry/repo:tag`, `@sha256:` or `oci-layout://`).
    pub reference: String,
    /// The platform to select from an index.
    pub platform: Platform,
}

/// Run a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv.
    pub args: Vec<String>,
    /// `K=V` entries.
    pub env: Vec<String>,
    /// Working directory (created when missing).
    pub cwd: String,
    /// `user[:group]`, names or ids.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Security mode.
    #[serde(default)]
    pub security: SecurityMode,
    /// Mounts; the one with `dest == "/"` is the root filesystem and the op's output.
    pub mounts: Vec<Mount>,
    /// Proxy variables (`HTTP_PROXY=...`) added to `env` when the process runs. Kept apart
    /// because they are not part of the cache key, as in BuildKit: a different proxy gives
    /// the same result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
    /// CDI devices the process gets (`RUN --device`). Written only when set, so that the
    /// digests of steps without devices stay what they were.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
}

/// A CDI device asked for by a RUN step: `vendor.com/class=name`, `vendor.com/class` (the
/// first device of the class) or `vendor.com/class=*` (every device of the class).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The qualified CDI name.
    pub name: String,
    /// Fail the step when no such device is registered; otherwise it runs without it.
    #[serde(default)]
    pub required: bool,
}

/// Network of a RUN step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The builder's default (the host network, as BuildKit's default).
    #[default]
    Default,
    /// The host network namespace.
    Host,
    /// A fresh namespace with loopback only.
    None,
}

/// Privileges of a RUN step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Docker's default capabilities and seccomp profile.
    #[default]
    Sandbox,
    /// All capabilities, no seccomp (`--security=insecure`).
    Insecure,
}

/// One mount of an exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Index into the vertex inputs, or none for an empty filesystem.
    pub input: Option<u32>,
    /// Path inside the input to mount.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Where it appears.
    pub dest: String,
    /// Mounted read-only.
    #[serde(default)]
    pub readonly: bool,
    /// What kind of mount.
    pub kind: MountKind,
}

/// Mount kinds of `RUN --mount`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A filesystem from the graph.
    Bind,
    /// A persistent cache directory.
    Cache {
        /// Cache id.
        id: String,
        /// Concurrent access rule.
        sharing: CacheSharing,
        /// Mode of the directory when created.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
    },
    /// A tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A secret file (and/or environment variable); never part of a layer or a cache key.
    /// A secret mount with an empty `dest` is exposed through `env` only.
    Secret {
        /// Secret id.
        id: String,
        /// Fail when the secret is missing.
        required: bool,
        /// File mode.
        mode: u32,
        /// Owner uid.
        uid: u32,
        /// Owner gid.
        gid: u32,
        /// Also (or, when the mount has no destination, only) expose the secret as this
        /// environment variable of the process (`env=`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
    },
    /// An SSH agent socket.
    Ssh {
        /// Socket id.
        id: String,
        /// Fail when the agent is missing.
        required: bool,
        /// Mode of the socket in the step (BuildKit's default 0600). The three fields are
        /// written only when they differ from the defaults, so that the digests of steps that
        /// do not set them stay what they were.
        #[serde(
            default = "ssh_default_mode",
            skip_serializing_if = "is_ssh_default_mode"
        )]
        mode: u32,
        /// Owner uid of the socket.
        #[serde(default, skip_serializing_if = "is_zero")]
        uid: u32,
        /// Owner gid of the socket.
        #[serde(default, skip_serializing_if = "is_zero")]
        gid: u32,
    },
}

/// The mode of an SSH socket mount without `mode=`, as in BuildKit.
pub const SSH_DEFAULT_MODE: u32 = 0o600;

fn ssh_default_mode() -> u32 {
    SSH_DEFAULT_MODE
}

fn is_ssh_default_mode(mode: &u32) -> bool {
    *mode == SSH_DEFAULT_MODE
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Sharing modes of cache mounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Concurrent users share the directory.
    #[default]
    Shared,
    /// Concurrent users get their own directory.
    Private,
    /// Concurrent users wait for each other.
    Locked,
}

/// File actions applied in order to a base filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// Index of the base filesystem in the vertex inputs; none = scratch.
    pub base: Option<u32>,
    /// The actions.
    pub actions: Vec<FileAction>,
}

/// A user given by id or by name (resolved in the base's `/etc/passwd` and `/etc/group`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    /// Numeric id.
    Id(u32),
    /// A name to resolve.
    Name(String),
}

/// `--chown=user[:group]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chown {
    /// The user.
    pub user: UserRef,
    /// The group; none = the user's primary group (or the uid for numeric users).
    pub group: Option<UserRef>,
}

/// `--chmod=`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    /// Octal mode.
    Octal(u32),
    /// Symbolic form such as `u+x,go-w`.
    Symbolic(String),
}

/// One file action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    /// Copy from another input (COPY/ADD semantics).
    Copy(CopyAction),
    /// Create a directory.
    Mkdir {
        /// Absolute path.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Create missing parents.
        make_parents: bool,
        /// Owner.
        owner: Option<Chown>,
    },
    /// Create a file with content.
    Mkfile {
        /// Absolute path.
        path: String,
        /// Mode bits.
        mode: u32,
        /// Content.
        data: String,
        /// Owner.
        owner: Option<Chown>,
    },
    /// Remove a path.
    Rm {
        /// Absolute path.
        path: String,
        /// No error when it is missing.
        allow_not_found: bool,
        /// Treat `path` as a pattern.
        allow_wildcard: bool,
    },
    /// Create a symlink.
    Symlink {
        /// What the link points to.
        target: String,
        /// Absolute path of the link.
        link: String,
    },
}

/// Copy with BuildKit's COPY semantics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyAction {
    /// Index of the source filesystem in the vertex inputs; none = scratch.
    pub source: Option<u32>,
    /// Source path (may contain wildcards), relative to the source root.
    pub src: String,
    /// Destination path; a trailing `/` means "into this directory".
    pub dest: String,
    /// Owner of the copied files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Chown>,
    /// Mode of the copied files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Chmod>,
    /// Follow a symlink given as source.
    #[serde(default)]
    pub follow_symlinks: bool,
    /// Copy the contents of a source directory, not the directory itself.
    #[serde(default)]
    pub dir_contents_only: bool,
    /// Expand wildcards in `src`.
    #[serde(default)]
    pub allow_wildcard: bool,
    /// A wildcard that matches nothing is not an error.
    #[serde(default)]
    pub allow_empty_wildcard: bool,
    /// Create missing parents of `dest`.
    #[serde(default)]
    pub create_dest_path: bool,
    /// Only copy matching paths (`--parents` and include filters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_patterns: Vec<String>,
    /// Skip matching paths (`--exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_patterns: Vec<String>,
    /// Extract a source file that is a tar archive (plain, gzip, bzip2, xz or zstd, detected by
    /// content) into `dest` instead of copying it (ADD); other files are copied as they are.
    /// Skipped when false so that the digests of existing graphs do not change.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unpack: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl CopyAction {
    /// A copy with the flags a Dockerfile COPY uses.
    pub fn new(source: Option<u32>, src: &str, dest: &str) -> Self {
        CopyAction {
            source,
            src: src.to_owned(),
            dest: dest.to_owned(),
            owner: None,
            mode: None,
            follow_symlinks: true,
            dir_contents_only: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            create_dest_path: true,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            unpack: false,
        }
    }
}

/// A vertex run by a primitive plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomOp {
    /// The primitive that runs it (plugin-defined name such as `git`).
    pub primitive: String,
    /// The plugin's own request, as JSON text; part of the digest.
    pub payload: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_is_skipped_when_false() {
        let mut c = CopyAction::new(Some(0), "/a", "/b");
        let text = serde_json::to_string(&c).expect("serializes");
        assert!(!text.contains("unpack"), "{text}");
        c.unpack = true;
        let text = serde_json::to_string(&c).expect("serializes");
        assert!(text.contains("\"unpack\":true"), "{text}");
        let back: CopyAction = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, c);
    }

    /// Steps written before `mode`/`uid`/`gid` existed keep their encoding, hence their
    /// digests (the golden digests cover `ExecOp::devices` the same way).
    #[test]
    fn ssh_mount_defaults_are_not_written() {
        let ssh = |mode, uid, gid| MountKind::Ssh {
            id: "default".into(),
            required: false,
            mode,
            uid,
            gid,
        };
        let text = serde_json::to_string(&ssh(0o600, 0, 0)).expect("serializes");
        assert_eq!(text, r#"{"ssh":{"id":"default","required":false}}"#);
        let back: MountKind = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, ssh(0o600, 0, 0));
        let set = ssh(0o666, 1000, 1001);
        let text = serde_json::to_string(&set).expect("serializes");
        assert!(
            text.contains(r#""mode":438,"uid":1000,"gid":1001"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<MountKind>(&text).expect("parses"),
            set
        );
    }
}
