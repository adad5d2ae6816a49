//! The `git` primitive plugin: checks out one ref of a git repository into the op's output
//! directory, as BuildKit's git source does for `ADD https://host/repo.git#ref:subdir /dest`.
//!
//! Payload (the `Custom` op's JSON): `{"remote": "...", "ref": "..."?, "subdir": "..."?,
//! "keep_git_dir": bool?, "checksum": "<commit>"?, "submodules": false?, "mtime_commit": true?,
//! "fetch_by_commit": true?}` (the last three from BuildKit's query-string options). `remote` is what `git` accepts
//! (`https://`, `http://`, `git://`, `ssh://`, `git@host:path`, `file://`); `ref` a branch, a tag,
//! a full ref name or a commit id (default: the remote's HEAD); `subdir` selects a directory of
//! the tree whose contents become the output; `keep_git_dir` keeps `.git` (whole tree only);
//! `checksum` is a commit id (or prefix) the ref must resolve to, checked when the ref is
//! resolved for the cache key and again after the fetch; `fetch_by_commit` fetches that commit
//! without listing the remote; `mtime_commit` gives every file the commit's time.
//!
//! It runs the system `git` (Debian package `git`): `ls-remote` to resolve the ref (a missing
//! ref fails naming the remote), a shallow `fetch` of that ref into a private git directory,
//! `checkout` into the output (or a scratch tree when a subdir is selected), then submodules.
//! Nothing is written outside the output but the scratch directory, removed afterwards; a
//! subdir that climbs with `..` or passes through a symlink is refused.
//!
//! Cache semantics: a full commit id pins the content exactly; a branch or tag is resolved with
//! `ls-remote` on every build (`primitive.cache_key`) and the op is keyed on that commit, as
//! BuildKit does, so a moved ref is fetched again.
//! SSH remotes use the host user's ssh configuration and agent.
//!
//! Cancellation: each `git` runs in its own process group and is polled every 50 ms; when the
//! host says the build was cancelled (Ctrl-C, or another step failed) the whole group is killed
//! — git and the helpers it started (`git-remote-https`, `ssh`) — and the step fails at once.
//!
//! Architecture invariant: depends on `kiln-plugin-sdk` and third-party crates only; runs
//! `git` as a child process, no async runtime.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use kiln_plugin_sdk::graph::Op;
use kiln_plugin_sdk::proto::{ErrorKind, PluginError, PrimitiveRequest, PrimitiveResponse};
pub use kiln_plugin_sdk::Cancel;
use kiln_plugin_sdk::{Host, Primitive};
use serde::{Deserialize, Serialize};

/// The op payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The repository, as git takes it.
    pub remote: String,
    /// Branch, tag, full ref or commit; empty = the remote's HEAD.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A directory of the tree to output instead of the whole tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
    /// Keep the `.git` directory.
    #[serde(default)]
    pub keep_git_dir: bool,
    /// The commit id (or a prefix of it) the ref must resolve to; for an annotated tag, the
    /// tag object's id is accepted too, as BuildKit does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Check out submodules (`?submodules=false` says no).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub submodules: bool,
    /// Give every file the commit's time (`?mtime=commit`) instead of the checkout's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mtime_commit: bool,
    /// Fetch `checksum` (a full commit id) directly, without listing the remote's refs
    /// (`?fetch-by-commit`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fetch_by_commit: bool,
}

impl Default for Payload {
    fn default() -> Self {
        Payload {
            remote: String::new(),
            reference: None,
            subdir: None,
            keep_git_dir: false,
            checksum: None,
            submodules: true,
            mtime_commit: false,
            fetch_by_commit: false,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Why a checkout failed; every message names the remote (credentials hidden).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A payload this plugin cannot run.
    #[error("{0}")]
    InvalidInput(String),
    /// The ref or the subdir does not exist.
    #[error("{0}")]
    NotFound(String),
    /// `git` failed.
    #[error("git {step} of {remote} failed: {stderr}")]
    Git {
        /// What was being done.
        step: String,
        /// The remote.
        remote: String,
        /// git's own words.
        stderr: String,
    },
    /// A file operation failed.
    #[error("checking out {remote}: {what} {}: {source}", path.display())]
    Io {
        /// The remote.
        remote: String,
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The build was cancelled.
    #[error("the checkout of {0} was cancelled")]
    Cancelled(String),
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        };
        PluginError::new(kind, e.to_string())
    }
}

/// `remote` with any `user:password@` hidden, for messages (the SDK's
/// [`kiln_plugin_sdk::url::redact_credentials`]).
pub fn redact(remote: &str) -> String {
    kiln_plugin_sdk::url::redact_credentials(remote)
}

/// How often the build is checked for cancellation while `git` runs; its exit wakes the wait
/// at once (a pidfd), whatever this is.
const POLL: Duration = Duration::from_millis(50);

struct Git<'a> {
    remote: String,
    shown: String,
    git_dir: &'a Path,
    cancel: &'a dyn Cancel,
}

/// Reads all of `pipe` on a thread, so that a chatty child never blocks on a full pipe while
/// the caller polls it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut out);
        }
        out
    })
}

/// A pidfd of the child `pid`, readable once it has exited; `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until `fd` is readable or `timeout` has passed (a plain wait of `timeout` without
/// one). An interrupted wait returns early: the caller looks again.
fn wait_readable(fd: Option<&OwnedFd>, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.map_or(-1, AsRawFd::as_raw_fd),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd; a negative fd is ignored by poll(2).
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Kills `child`'s whole process group (git and its helpers). Called before `child` is reaped,
/// so its pid — the group id — cannot have been reused.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes no pointers; `-pid` names the group `spawn` created with
        // `process_group(0)`, whose leader is our unreaped child.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Git<'_> {
    /// Waits for `child`, killing its process group when the build is cancelled.
    fn wait(&self, child: &mut Child) -> Result<ExitStatus, Error> {
        self.wait_ticking(child, POLL)
    }

    /// [`Git::wait`], asking about cancellation every `tick`. The wait is a `poll(2)` on the
    /// child's pidfd, so that its exit ends it at once; only a kernel without pidfds (before
    /// 5.3) makes it look again each tick.
    fn wait_ticking(&self, child: &mut Child, tick: Duration) -> Result<ExitStatus, Error> {
        let pidfd = pidfd_open(child.id());
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => {
                    kill_group(child);
                    return Err(Error::Git {
                        step: "wait".into(),
                        remote: self.shown.clone(),
                        stderr: e.to_string(),
                    });
                }
            }
            if self.cancel.cancelled() {
                kill_group(child);
                return Err(Error::Cancelled(self.shown.clone()));
            }
            wait_readable(pidfd.as_ref(), tick);
        }
    }

    /// Runs `git --git-dir=<dir> args...` without prompts or the user's global hooks; returns
    /// stdout.
    fn run<I, S>(&self, step: &str, args: I, work_tree: Option<&Path>) -> Result<String, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir").arg(self.git_dir);
        if let Some(w) = work_tree {
            cmd.arg("--work-tree").arg(w).current_dir(w);
        }
        cmd.args([
            "-c",
            "advice.detachedHead=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that cancelling kills the helpers git starts along with it.
        .process_group(0);
        if self.cancel.cancelled() {
            return Err(Error::Cancelled(self.shown.clone()));
        }
        let mut child = cmd.spawn().map_err(|e| Error::Git {
            step: step.to_owned(),
            remote: self.shown.clone(),
            stderr: if e.kind() == io::ErrorKind::NotFound {
                "the git command is not installed (Debian package: git)".to_owned()
            } else {
                e.to_string()
            },
        })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        // On cancellation the readers are left to finish on their own: the group is dead, so
        // its pipes close.
        let status = self.wait(&mut child)?;
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Git {
                step: step.to_owned(),
                remote: self.shown.clone(),
                stderr: String::from_utf8_lossy(&stderr)
                    .trim()
                    .replace(&self.remote, &self.shown),
            });
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// A ref of `ls-remote` output.
#[derive(Debug, PartialEq, Eq)]
struct Listed {
    /// Its full name.
    name: String,
    /// The commit it points to (for an annotated tag, the tag's commit).
    commit: String,
    /// For an annotated tag, the tag object's id.
    tag_object: Option<String>,
}

impl Listed {
    /// Whether `sum` (a commit id prefix) names this ref: its commit or, as BuildKit accepts,
    /// its annotated tag object.
    fn matches(&self, sum: &str) -> bool {
        self.commit.starts_with(sum)
            || self
                .tag_object
                .as_deref()
                .is_some_and(|t| t.starts_with(sum))
    }
}

/// The ref of `ls-remote` output that `wanted` names, BuildKit's order: the exact ref, then
/// `refs/heads/<wanted>`, then `refs/tags/<wanted>` (git checkout prefers a branch when a tag
/// has the same name).
fn pick_ref(listing: &str, wanted: &str) -> Option<Listed> {
    let refs: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (name.trim(), sha.trim()))
        .collect();
    let candidates = [
        wanted.to_owned(),
        format!("refs/heads/{wanted}"),
        format!("refs/tags/{wanted}"),
    ];
    let find = |n: &str| {
        refs.iter()
            .find(|(name, _)| *name == n)
            .map(|(_, sha)| *sha)
    };
    candidates.iter().find_map(|c| {
        let direct = find(c)?;
        let peeled = find(&format!("{c}^{{}}"));
        Some(Listed {
            name: c.clone(),
            commit: peeled.unwrap_or(direct).to_owned(),
            tag_object: peeled.map(|_| direct.to_owned()),
        })
    })
}

/// `checksum` trimmed and lowercased; an error unless it is hex of at least 7 digits.
fn checksum_of(p: &Payload, shown: &str) -> Result<Option<String>, Error> {
    let Some(sum) = p.checksum.as_deref() else {
        return Ok(None);
    };
    let sum = sum.trim().to_ascii_lowercase();
    if sum.len() < 7 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "invalid checksum {sum:?} for {shown}: expected a commit id"
        )));
    }
    Ok(Some(sum))
}

fn checksum_mismatch(shown: &str, wanted: &str, sum: &str, got: &str) -> Error {
    Error::InvalidInput(format!(
        "checksum mismatch for {shown}#{wanted}: expected commit {sum}, got {got}"
    ))
}

/// Sets the modification time of every file, link and directory under `root` to `secs`
/// (directories after their contents, so that setting a child's time leaves the parent's).
fn set_mtimes(root: &Path, secs: i64) -> io::Result<()> {
    for e in fs::read_dir(root)? {
        let path = e?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            set_mtimes(&path, secs)?;
        } else {
            set_mtime(&path, secs)?;
        }
    }
    set_mtime(root, secs)
}

fn set_mtime(path: &Path, secs: i64) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: `c` is a NUL-terminated path and `times` two valid timespecs, both alive for the
    // call; AT_SYMLINK_NOFOLLOW sets a link's own time, never its target's.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The checked-out tree's `subdir`, refusing `..` and symlinks on the way.
fn subdir_path(tree: &Path, subdir: &str, shown: &str) -> Result<PathBuf, Error> {
    let mut p = tree.to_path_buf();
    for c in Path::new(subdir).components() {
        match c {
            Component::Normal(n) => {
                p.push(n);
                match fs::symlink_metadata(&p) {
                    Ok(md) if md.file_type().is_symlink() => {
                        return Err(Error::InvalidInput(format!(
                            "subdirectory {subdir:?} of {shown} passes through a symlink"
                        )))
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return Err(Error::NotFound(format!(
                            "subdirectory {subdir:?} not found in {shown}"
                        )))
                    }
                }
            }
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::InvalidInput(format!(
                    "subdirectory {subdir:?} of {shown} must stay inside the repository"
                )))
            }
        }
    }
    if !p.is_dir() {
        return Err(Error::NotFound(format!(
            "subdirectory {subdir:?} of {shown} is not a directory"
        )));
    }
    Ok(p)
}

/// Copies the contents of `from` into `to` (files, directories, symlinks as links), keeping
/// modes; `.git` entries are skipped.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == ".git" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let md = fs::symlink_metadata(&src)?;
        if md.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if md.is_dir() {
            fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.permissions().mode()))?;
        } else if md.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Checks out `p` into `output` (an existing empty directory); returns the commit id.
pub fn checkout(p: &Payload, output: &Path, cancel: &dyn Cancel) -> Result<String, Error> {
    let shown = redact(&p.remote);
    if p.remote.is_empty() || p.remote.starts_with('-') {
        return Err(Error::InvalidInput(format!("invalid git remote {shown:?}")));
    }
    let wanted = p.reference.as_deref().unwrap_or("").trim();
    if wanted.starts_with('-') {
        return Err(Error::InvalidInput(format!("invalid git ref {wanted:?}")));
    }
    let scratch = tempfile::Builder::new()
        .prefix("kiln-git-")
        .tempdir()
        .map_err(|e| Error::Io {
            remote: shown.clone(),
            what: "create scratch dir",
            path: std::env::temp_dir(),
            source: e,
        })?;
    let whole_tree = p.subdir.as_deref().is_none_or(|s| {
        Path::new(s)
            .components()
            .all(|c| matches!(c, Component::CurDir | Component::RootDir))
    });
    let git_dir = if p.keep_git_dir && whole_tree {
        output.join(".git")
    } else {
        scratch.path().join("git")
    };
    let work = if whole_tree {
        output.to_path_buf()
    } else {
        scratch.path().join("work")
    };
    let io_err = |what: &'static str, path: &Path| {
        let (remote, path) = (shown.clone(), path.to_path_buf());
        move |source| Error::Io {
            remote,
            what,
            path,
            source,
        }
    };
    fs::create_dir_all(&work).map_err(io_err("mkdir", &work))?;
    let git = Git {
        remote: p.remote.clone(),
        shown: shown.clone(),
        git_dir: &git_dir,
        cancel,
    };
    git.run("init", ["init", "-q", "--bare"], None)?;
    // A kept .git is a normal (non-bare) repository with the remote configured, as in a clone.
    if p.keep_git_dir && whole_tree {
        git.run("init", ["config", "core.bare", "false"], None)?;
    }
    git.run(
        "remote add",
        ["remote", "add", "origin", p.remote.as_str()],
        None,
    )?;

    let sum = checksum_of(p, &shown)?;
    let mut tag_object = None;
    // With fetch-by-commit the checksum is the commit: no listing of the remote's refs.
    let by_commit = if p.fetch_by_commit {
        match sum.as_deref().filter(|s| is_commit_id(s)) {
            Some(s) => Some(s.to_owned()),
            None => {
                return Err(Error::InvalidInput(format!(
                    "fetch-by-commit of {shown} requires a full commit id as checksum"
                )))
            }
        }
    } else if is_commit_id(wanted) {
        Some(wanted.to_owned())
    } else {
        None
    };
    let (fetch_ref, expected) = if let Some(c) = &by_commit {
        (c.clone(), Some(c.to_ascii_lowercase()))
    } else {
        let listing = git.run("ls-remote", ["ls-remote", "origin"], None)?;
        let listed = if wanted.is_empty() {
            pick_ref(&listing, "HEAD").ok_or_else(|| {
                Error::NotFound(format!("{shown} has no HEAD: name a ref with #<ref>"))
            })?
        } else {
            pick_ref(&listing, wanted).ok_or_else(|| {
                Error::NotFound(format!("git ref {wanted:?} not found in {shown}"))
            })?
        };
        if let Some(sum) = sum.as_deref().filter(|s| !listed.matches(s)) {
            return Err(checksum_mismatch(&shown, wanted, sum, &listed.commit));
        }
        tag_object = listed.tag_object.clone();
        (listed.name, Some(listed.commit))
    };
    let fetched = git.run(
        "fetch",
        [
            "fetch",
            "-q",
            "--depth=1",
            "--no-tags",
            "origin",
            fetch_ref.as_str(),
        ],
        None,
    );
    if matches!(fetched, Err(Error::Git { .. })) && by_commit.is_some() {
        // A server that does not serve commits by id: fetch everything, then pick the commit.
        git.run(
            "fetch",
            [
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            None,
        )?;
    } else {
        fetched?;
    }
    let target = if let Some(c) = &by_commit {
        c.clone()
    } else {
        "FETCH_HEAD".to_owned()
    };
    let commit = git
        .run(
            "rev-parse",
            ["rev-parse", "--verify", &format!("{target}^{{commit}}")],
            None,
        )
        .map_err(|_| Error::NotFound(format!("git ref {wanted:?} not found in {shown}")))?
        .trim()
        .to_owned();
    if let Some(e) = expected.filter(|e| !e.is_empty()) {
        if !commit.starts_with(&e) && by_commit.is_none() {
            // ls-remote and fetch disagree: the remote moved between the two calls.
            return Err(Error::Git {
                step: "fetch".into(),
                remote: shown.clone(),
                stderr: format!("{wanted} moved from {e} to {commit} while fetching; retry"),
            });
        }
    }
    if let Some(sum) = sum.as_deref() {
        let tag_ok = tag_object.as_deref().is_some_and(|t| t.starts_with(sum));
        if !commit.starts_with(sum) && !tag_ok {
            return Err(checksum_mismatch(&shown, wanted, sum, &commit));
        }
    }
    git.run(
        "checkout",
        ["checkout", "-q", "-f", "--detach", commit.as_str()],
        Some(&work),
    )?;
    if p.submodules && work.join(".gitmodules").is_file() {
        git.run(
            "submodule update",
            ["submodule", "update", "--init", "--recursive", "--depth=1"],
            Some(&work),
        )?;
    }
    if !whole_tree {
        let sub = p.subdir.as_deref().unwrap_or_default();
        let from = subdir_path(&work, sub, &shown)?;
        copy_tree(&from, output).map_err(io_err("copy", output))?;
    }
    if p.mtime_commit {
        let time = git.run("log", ["log", "-1", "--format=%ct", commit.as_str()], None)?;
        let secs: i64 = time.trim().parse().map_err(|_| Error::Git {
            step: "log".into(),
            remote: shown.clone(),
            stderr: format!("unexpected commit time {:?}", time.trim()),
        })?;
        set_mtimes(output, secs).map_err(io_err("set the modification times in", output))?;
    }
    Ok(commit)
}

/// The payload of a `git` op.
fn payload(op: &Op) -> Result<Payload, Error> {
    kiln_plugin_sdk::payload::custom(op, "git").map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Runs one `git` op.
pub fn execute(req: &PrimitiveRequest, cancel: &dyn Cancel) -> Result<PrimitiveResponse, Error> {
    let p = payload(&req.op)?;
    checkout(&p, Path::new(&req.output), cancel)?;
    Ok(PrimitiveResponse { exit_code: None })
}

/// The plugin's primitive: `git` ops.
#[derive(Debug, Default)]
pub struct GitSource;

/// The commit the payload's ref points to now (`None` when the payload names a commit, which
/// the op itself pins): kiln keys the op on it, so a moved branch or tag is fetched again, as
/// BuildKit resolves git refs with `ls-remote` on every build.
pub fn current_commit(p: &Payload, cancel: &dyn Cancel) -> Result<Option<String>, Error> {
    let wanted = p.reference.as_deref().unwrap_or("").trim();
    if (is_commit_id(wanted) && wanted.len() == 40) || p.fetch_by_commit {
        return Ok(None);
    }
    let shown = redact(&p.remote);
    let sum = checksum_of(p, &shown)?;
    if p.remote.is_empty() || p.remote.starts_with('-') || wanted.starts_with('-') {
        return Err(Error::InvalidInput(format!(
            "invalid git remote or ref for {shown:?}"
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix("kiln-git-key-")
        .tempdir()
        .map_err(|e| Error::Io {
            remote: shown.clone(),
            what: "create scratch dir",
            path: std::env::temp_dir(),
            source: e,
        })?;
    let git_dir = scratch.path().join("git");
    let git = Git {
        remote: p.remote.clone(),
        shown: shown.clone(),
        git_dir: &git_dir,
        cancel,
    };
    let listing = git.run("ls-remote", ["ls-remote", p.remote.as_str()], None)?;
    let wanted = if wanted.is_empty() { "HEAD" } else { wanted };
    match pick_ref(&listing, wanted) {
        // BuildKit checks the checksum when it resolves the ref, before any cache lookup.
        Some(l) => match sum.filter(|s| !l.matches(s)) {
            Some(s) => Err(checksum_mismatch(&shown, wanted, &s, &l.commit)),
            None => Ok(Some(l.commit)),
        },
        // Short commit ids are not listed: the op's own text pins them.
        None if is_commit_id(wanted) => Ok(None),
        None => Err(Error::NotFound(format!(
            "git ref {wanted:?} not found in {shown}"
        ))),
    }
}

impl Primitive for GitSource {
    fn execute(
        &self,
        req: PrimitiveRequest,
        host: &Host<'_>,
    ) -> Result<PrimitiveResponse, PluginError> {
        execute(&req, host).map_err(PluginError::from)
    }

    fn cache_key(
        &self,
        req: kiln_plugin_sdk::proto::CacheKeyRequest,
        host: &Host<'_>,
    ) -> Result<kiln_plugin_sdk::proto::CacheKeyResponse, PluginError> {
        let p = payload(&req.op)?;
        let key = current_commit(&p, host)?;
        Ok(kiln_plugin_sdk::proto::CacheKeyResponse {
            key: key.map(|c| format!("commit:{c}")),
        })
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "git",
    version: env!("CARGO_PKG_VERSION"),
    primitive: GitSource => ["git"],
}

#[cfg(test)]
mod tests;
