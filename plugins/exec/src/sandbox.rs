//! The embedded sandbox: the default runtime, namespaces on the host kernel, no helper binary.
//!
//! # How the process is started, and why that is safe in kiln's multi-threaded process
//!
//! The plugin call runs on one of kiln's blocking threads while other threads hold locks (the
//! allocator's, stdio's, the runtime's). After `fork` only the calling thread exists in the
//! child, so any lock another thread held stays locked forever there: the child may only make
//! async-signal-safe calls until `execve`. This module therefore splits the work in two:
//!
//! 1. **In the parent** ([`Plan::new`]), everything that allocates or reads files: paths and
//!    argv/envp as C strings and pointer arrays, the executable candidates along `PATH`, the
//!    compiled seccomp program, capability masks, uid/gid/groups (from the rootfs's
//!    `/etc/passwd`), the pipes and `/dev/null`.
//! 2. **In the child** ([`child`]), raw system calls only, on that prepared data: no
//!    allocation, no locks, no formatting, no panics (paths that need a number are written into
//!    stack buffers).
//!
//! The child is created with the raw `clone` system call in fork mode (no new stack, no
//! `CLONE_VM`: a copy-on-write copy of the address space, like `fork`) with
//! `CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC` (and `CLONE_NEWNET` unless the
//! step uses the host network), so it is directly pid 1 of its pid namespace — one process, no
//! re-exec, no double fork. Raw `clone` skips glibc's `fork` bookkeeping (atfork handlers,
//! cached thread ids), which is fine because the child never returns to libc code that depends
//! on it; Rust's own `std::process` spawns with a raw `clone3` the same way. Around the
//! `clone` the parent thread blocks every signal, so that none of kiln's signal handlers can
//! run in the child; the child resets all dispositions to the default and unblocks them right
//! before `execve`.
//!
//! Setup failures in the child are written as three integers to a close-on-exec pipe: EOF
//! there means `execve` succeeded. Mount targets are resolved with `openat2(RESOLVE_IN_ROOT)`
//! relative to the rootfs, so that a symlink in the image (or in a cache mount) cannot send a
//! mount outside the container, and mounted through `/proc/self/fd/N`.
//!
//! # Lifetime
//!
//! Everything lives in namespaces owned by the child: when pid 1 exits the kernel kills the
//! rest of its pid namespace, and the mount namespace, with every mount made here, goes away
//! with its last process. Nothing is mounted in kiln's own namespace. `PR_SET_PDEATHSIG` kills
//! the sandbox if the calling thread dies; the call waits for the child, so it cannot return
//! before that.

use std::ffi::{c_char, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kiln_plugin_sdk::graph::{NetworkMode, SecurityMode};

use crate::output::{self, Process};
use crate::policy;
use crate::step::{MountSource, Step};
use crate::userns::{self, Hint};
use crate::{Error, Sink};

/// Runs `step` in the embedded sandbox; returns the process's exit code.
pub fn run(step: &Step, sink: &dyn Sink) -> Result<i32, Error> {
    let cgroup = crate::cgroup::StepCgroup::create(step.limits)?;
    let mut plan = Plan::new(step)?;
    if let Some(cg) = &cgroup {
        plan.cgroup_procs = cg.procs_files()?;
    }
    plan.cgroupfs = PlanCgroupFs::new(crate::cgroup::cgroupfs(cgroup.as_ref()), plan.rootless)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let null =
        std::fs::File::open("/dev/null").map_err(|e| Error::io("cannot open", "/dev/null", e))?;
    let fds = ChildFds {
        stdin: above_stdio(null.into())?,
        stdout: above_stdio(out_w)?,
        stderr: above_stdio(err_w)?,
        report: above_stdio(rep_w)?,
    };
    let pid = spawn(&plan, &fds)?;
    // The parent keeps only the read ends: EOF on them means the child side is done.
    drop(fds);
    let mut child = Child {
        pid,
        pidfd: output::pidfd_open(pid),
        reaped: false,
    };
    let ended = output::pump(&mut child, out_r, err_r, Some(rep_r), sink)
        .map_err(|e| Error::io("cannot read the output of", "the process", e));
    let ended = match ended {
        Ok(ended) => ended,
        Err(e) => {
            child.kill();
            child.wait();
            return Err(e);
        }
    };
    if ended.cancelled {
        return Err(Error::Cancelled);
    }
    if let Some(failure) = Failure::decode(&ended.report) {
        return Err(failure.into_error(&plan, step));
    }
    let code = output::exit_code(ended.status);
    if let Some(cg) = cgroup
        .as_ref()
        .filter(|cg| cg.oom_killed(code == 128 + libc::SIGKILL))
    {
        return Err(cg.oom_error());
    }
    Ok(code)
}

/// The descriptors the child turns into its stdio and report pipe; all above 2, close-on-exec.
struct ChildFds {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: OwnedFd,
}

struct Child {
    pid: libc::pid_t,
    /// Readable once it has exited: what the output pump waits on.
    pidfd: Option<OwnedFd>,
    reaped: bool,
}

impl Child {
    /// Blocks until the child is reaped (after a kill, for error paths).
    fn wait(&mut self) {
        while !self.reaped {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if r == self.pid || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                self.reaped = true;
            }
        }
    }
}

impl Process for Child {
    fn kill(&mut self) {
        if !self.reaped {
            // Killing pid 1 of the namespace takes every process in it down with it.
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<i32>> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        match r {
            0 => Ok(None),
            r if r == self.pid => {
                self.reaped = true;
                Ok(Some(status))
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(None)
                } else {
                    self.reaped = true;
                    Err(e)
                }
            }
        }
    }

    fn exit_fd(&self) -> Option<RawFd> {
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Never leave a sandbox running or a zombie behind, whatever path got us here.
        self.kill();
        self.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The plan: everything the child needs, prepared in the parent
// ---------------------------------------------------------------------------------------------

/// One mount, ready for the child.
struct PlanMount {
    /// The destination relative to the rootfs, for `openat2(RESOLVE_IN_ROOT)`.
    rel: CString,
    /// For a destination that may not exist yet: the relative paths of its ancestors, then of
    /// itself, each with its last component (to create it in the previous one).
    walk: Vec<(CString, CString)>,
    leaf_dir: bool,
    what: PlanSource,
    readonly: bool,
}

enum PlanSource {
    Bind(CString),
    Tmpfs(CString),
}

/// The step's `/sys/fs/cgroup` (`cgroup::CgroupFs`), ready for the child.
enum PlanCgroupFs {
    None,
    /// A tmpfs with `(name, source)` bound in it, and `(target, link name)` symlinks.
    V1 {
        binds: Vec<(CString, CString)>,
        links: Vec<(CString, CString)>,
    },
    /// A cgroup namespace, with cgroup2 mounted, or (in a user namespace) this directory bound.
    V2 {
        bind: Option<CString>,
    },
}

impl PlanCgroupFs {
    fn new(fs: Option<crate::cgroup::CgroupFs>, rootless: bool) -> Result<PlanCgroupFs, Error> {
        use crate::cgroup::CgroupFs;
        Ok(match fs {
            None => PlanCgroupFs::None,
            Some(CgroupFs::V1 { hierarchies, links }) => PlanCgroupFs::V1 {
                binds: hierarchies
                    .iter()
                    .map(|h| Ok((cstring(&h.name)?, path_cstring(&h.source)?)))
                    .collect::<Result<_, Error>>()?,
                links: links
                    .iter()
                    .map(|(link, target)| Ok((cstring(target)?, cstring(link)?)))
                    .collect::<Result<_, Error>>()?,
            },
            // Rootless: bind mounts only, as with `/sys` (rootless BuildKit gets the same
            // from runc).
            Some(CgroupFs::V2 { dir }) => PlanCgroupFs::V2 {
                bind: rootless.then(|| path_cstring(&dir)).transpose()?,
            },
        })
    }
}

/// Everything the child does, with no allocation left to do.
struct Plan {
    rootfs: CString,
    mounts: Vec<PlanMount>,
    masked: Vec<CString>,
    readonly_paths: Vec<CString>,
    sys_readonly: bool,
    /// Rootless (kiln in a user namespace, `userns`): device nodes are bound from the host's
    /// `/dev`, as the kernel refuses mknod there.
    rootless: bool,
    /// Rootless with the host's network: `/sys` is the host's, bound recursively, because
    /// only the owner of the network namespace may mount sysfs.
    bind_sys: bool,
    hostname: CString,
    loopback: bool,
    clone_flags: libc::c_int,
    /// `setrlimit` calls, in order: the resource and its soft and hard limits.
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit64)>,
    /// The mount data of `/dev/shm` (its size).
    shm_data: CString,
    drop_bounding: Option<u64>,
    keep_caps: u64,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    cwd: CString,
    /// Installed in order (see `seccomp::Profile::programs`); empty: no seccomp.
    seccomp: Vec<seccompiler::BpfProgram>,
    /// The step cgroup's `cgroup.procs` files, which the child joins first (`cgroup.rs`).
    cgroup_procs: Vec<OwnedFd>,
    /// What is mounted at `/sys/fs/cgroup`, read-only as `/sys` (`sys_readonly`).
    cgroupfs: PlanCgroupFs,
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
}

impl Plan {
    fn new(step: &Step) -> Result<Plan, Error> {
        let argv = cstrings(&step.args)?;
        let envp = cstrings(&step.env)?;
        let keep: Vec<_> = policy::capabilities(step.security);
        let mut clone_flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        // Default is the host network, as BuildKit's default with its OCI worker (no CNI).
        if step.network == NetworkMode::None {
            clone_flags |= libc::CLONE_NEWNET;
        }
        let mut mounts = Vec::new();
        for m in &step.mounts {
            let rel = m.dest.trim_start_matches('/');
            let mut walk = Vec::new();
            let mut prefix = String::new();
            for part in rel.split('/').filter(|p| !p.is_empty()) {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                walk.push((cstring(&prefix)?, cstring(part)?));
            }
            let (what, leaf_dir) = match &m.kind {
                MountSource::Bind { source, dir } => {
                    (PlanSource::Bind(path_cstring(source)?), *dir)
                }
                MountSource::Tmpfs { size } => {
                    let data = match size {
                        Some(s) => format!("mode=1777,size={s}"),
                        None => "mode=1777".to_owned(),
                    };
                    (PlanSource::Tmpfs(cstring(&data)?), true)
                }
            };
            mounts.push(PlanMount {
                rel: cstring(rel)?,
                walk,
                leaf_dir,
                what,
                readonly: m.readonly,
            });
        }
        let rel_all = |paths: Vec<String>| -> Result<Vec<CString>, Error> {
            paths
                .iter()
                .map(|p| cstring(p.trim_start_matches('/')))
                .collect()
        };
        let mut plan = Plan {
            rootfs: path_cstring(&step.rootfs)?,
            mounts,
            masked: rel_all(policy::masked_paths(step.security))?,
            readonly_paths: rel_all(policy::readonly_paths(step.security))?,
            sys_readonly: step.security != SecurityMode::Insecure,
            rootless: userns::running_in_user_ns(),
            bind_sys: userns::running_in_user_ns() && step.network != NetworkMode::None,
            hostname: cstring(&step.hostname)?,
            loopback: step.network == NetworkMode::None,
            clone_flags,
            rlimits: step
                .rlimits
                .iter()
                .map(|u| {
                    let resource = policy::rlimit_resource(u.resource).ok_or_else(|| {
                        Error::Unsupported(format!(
                            "ulimit {} is unknown to this exec plugin",
                            u.resource.name()
                        ))
                    })?;
                    Ok((
                        resource,
                        libc::rlimit64 {
                            rlim_cur: u.soft,
                            rlim_max: u.hard,
                        },
                    ))
                })
                .collect::<Result<_, Error>>()?,
            shm_data: cstring(&format!("mode=1777,size={}", step.shm_size))?,
            drop_bounding: (step.security != SecurityMode::Insecure)
                .then(|| !policy::cap_mask(&keep)),
            keep_caps: if step.user.uid == 0 {
                policy::cap_mask(&keep)
            } else {
                0
            },
            uid: step.user.uid,
            gid: step.user.gid,
            groups: step.user.sgids.clone(),
            cwd: cstring(&step.cwd)?,
            seccomp: policy::seccomp_programs(step.security)?,
            cgroup_procs: Vec::new(),
            cgroupfs: PlanCgroupFs::None,
            candidates: candidates(&step.args[0], step.path_var())?,
            argv_ptrs: null_terminated(&argv),
            _argv: argv,
            envp_ptrs: null_terminated(&envp),
            _envp: envp,
        };
        // Insecure keeps every capability the host has; its mask is only used for uid 0.
        if step.security == SecurityMode::Insecure && step.user.uid == 0 {
            plan.keep_caps = u64::MAX;
        }
        Ok(plan)
    }
}

fn cstring(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::InvalidInput(format!("{s:?} contains a NUL byte")))
}

fn path_cstring(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("{} contains a NUL byte", p.display())))
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, Error> {
    items.iter().map(|s| cstring(s)).collect()
}

fn null_terminated(items: &[CString]) -> Vec<*const c_char> {
    items
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Where `execve` looks for `name`: the name itself when it has a `/`, else each `PATH`
/// directory, in order (as `exec.LookPath` in runc, after the chroot).
fn candidates(name: &str, path: &str) -> Result<Vec<CString>, Error> {
    if name.contains('/') {
        return Ok(vec![cstring(name)?]);
    }
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| cstring(&format!("{}/{name}", dir.trim_end_matches('/'))))
        .collect()
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let (r, w) = std::io::pipe().map_err(|e| Error::io("cannot create", "a pipe", e))?;
    Ok((r.into(), w.into()))
}

/// `fd`, moved to a number above 2 if it is a standard stream's (when kiln runs with stdio
/// closed), so that the child's `dup2` onto 0, 1 and 2 cannot clobber a descriptor it still
/// needs.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, Error> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own returns a new one that we then own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(Error::io(
            "cannot duplicate",
            "a pipe",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Clones the child with every signal blocked in this thread, and restores the mask.
fn spawn(plan: &Plan, fds: &ChildFds) -> Result<libc::pid_t, Error> {
    // SAFETY: sigset operations on a local, zero-initialised set; pthread_sigmask only changes
    // this thread's mask, restored below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = libc::c_long::from(plan.clone_flags | libc::SIGCHLD);
    // SAFETY: clone in fork mode (no stack, no CLONE_VM): the child gets a private copy of the
    // address space and, in `child`, only makes async-signal-safe system calls on data that
    // was fully prepared before this point, then execs or exits; it never returns here.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; see above.
        unsafe { child(plan, fds) }
    }
    let err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(Error::Sandbox {
            step: "clone the sandbox process".into(),
            source: err,
        });
    }
    libc::pid_t::try_from(pid).map_err(|_| Error::Sandbox {
        step: "clone the sandbox process".into(),
        source: io::Error::other("pid out of range"),
    })
}

// ---------------------------------------------------------------------------------------------
// Setup failures, reported by the child over the close-on-exec pipe
// ---------------------------------------------------------------------------------------------

/// Steps of the child's setup, reported with the errno that stopped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Stage {
    Stdio = 1,
    MakePrivate,
    BindRoot,
    OpenRoot,
    Proc,
    Dev,
    DevNode,
    Sys,
    MountTarget,
    Mount,
    Remount,
    Mask,
    Hostname,
    Loopback,
    PivotRoot,
    Rlimit,
    Bounding,
    Groups,
    Gid,
    Uid,
    Capset,
    Seccomp,
    Cwd,
    Cgroup,
    Cgroupfs,
    Exec,
}

const STAGES: [Stage; 26] = [
    Stage::Stdio,
    Stage::MakePrivate,
    Stage::BindRoot,
    Stage::OpenRoot,
    Stage::Proc,
    Stage::Dev,
    Stage::DevNode,
    Stage::Sys,
    Stage::MountTarget,
    Stage::Mount,
    Stage::Remount,
    Stage::Mask,
    Stage::Hostname,
    Stage::Loopback,
    Stage::PivotRoot,
    Stage::Rlimit,
    Stage::Bounding,
    Stage::Groups,
    Stage::Gid,
    Stage::Uid,
    Stage::Capset,
    Stage::Seccomp,
    Stage::Cwd,
    Stage::Cgroup,
    Stage::Cgroupfs,
    Stage::Exec,
];

struct Failure {
    stage: Stage,
    index: usize,
    errno: i32,
}

impl Failure {
    fn decode(bytes: &[u8]) -> Option<Failure> {
        let word = |i: usize| -> Option<u32> {
            let b: [u8; 4] = bytes.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(u32::from_ne_bytes(b))
        };
        let stage = word(0)?;
        Some(Failure {
            stage: STAGES.iter().copied().find(|s| *s as u32 == stage)?,
            index: usize::try_from(word(1)?).ok()?,
            errno: i32::from_ne_bytes(word(2)?.to_ne_bytes()),
        })
    }

    fn into_error(self, plan: &Plan, step: &Step) -> Error {
        let source = io::Error::from_raw_os_error(self.errno);
        let dest = |i: usize| {
            step.mounts
                .get(i)
                .map_or_else(|| "?".to_owned(), |m| m.dest.clone())
        };
        let rel = |v: &[CString], i: usize| {
            v.get(i)
                .map_or_else(|| "?".to_owned(), |c| format!("/{}", c.to_string_lossy()))
        };
        let step_text = match self.stage {
            Stage::Exec => {
                let name = step.args.first().map_or("", String::as_str);
                return if matches!(self.errno, libc::ENOENT | libc::ENOTDIR) {
                    Error::NotFound(format!(
                        "unable to start container process: exec: {name:?}: executable file \
                         not found in $PATH"
                    ))
                } else {
                    Error::Sandbox {
                        step: format!("unable to start container process: exec {name:?}"),
                        source,
                    }
                };
            }
            Stage::Cgroup => "join the step's cgroup".to_owned(),
            Stage::Cgroupfs => "mount /sys/fs/cgroup".to_owned(),
            Stage::Stdio => "set up stdin, stdout and stderr".to_owned(),
            Stage::MakePrivate => "make the mounts private".to_owned(),
            Stage::BindRoot => "bind the root filesystem onto itself".to_owned(),
            Stage::OpenRoot => "open the root filesystem".to_owned(),
            Stage::Proc => "mount /proc".to_owned(),
            Stage::Dev => "mount /dev".to_owned(),
            Stage::DevNode => "populate /dev".to_owned(),
            Stage::Sys => "mount /sys".to_owned(),
            Stage::MountTarget => format!("create the mountpoint {}", dest(self.index)),
            Stage::Mount => format!("mount {}", dest(self.index)),
            Stage::Remount => format!("make {} read-only", dest(self.index)),
            Stage::Mask => {
                let all: Vec<CString> = plan
                    .masked
                    .iter()
                    .chain(&plan.readonly_paths)
                    .cloned()
                    .collect();
                format!("mask {}", rel(&all, self.index))
            }
            Stage::Hostname => format!("set the hostname {:?}", step.hostname),
            Stage::Loopback => "bring the loopback interface up".to_owned(),
            Stage::PivotRoot => "pivot_root into the root filesystem".to_owned(),
            Stage::Rlimit => format!(
                "set the {} limit",
                step.rlimits
                    .get(self.index)
                    .map_or("?", |u| u.resource.name())
            ),
            Stage::Bounding => "drop capabilities from the bounding set".to_owned(),
            Stage::Groups => format!("set the supplementary groups {:?}", step.user.sgids),
            Stage::Gid => format!("set gid {}", step.user.gid),
            Stage::Uid => format!("set uid {}", step.user.uid),
            Stage::Capset => "set the capabilities".to_owned(),
            Stage::Cwd => format!("change to the working directory {}", step.cwd),
            Stage::Seccomp => "install the seccomp filter".to_owned(),
        };
        // In a user namespace some of these fail for that reason alone: say so.
        let hint = match self.stage {
            Stage::Proc => userns::hint(self.errno, Hint::Proc),
            Stage::Sys => userns::hint(self.errno, Hint::Sys),
            Stage::Rlimit => userns::hint(self.errno, Hint::Rlimit),
            _ => None,
        };
        if let Some(hint) = hint {
            return Error::Unsupported(format!(
                "cannot set up the sandbox: {step_text}: {source}; {hint}"
            ));
        }
        Error::Sandbox {
            step: step_text,
            source,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The child: async-signal-safe system calls only
// ---------------------------------------------------------------------------------------------

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A NUL-terminated path built on the stack: `/proc/self/fd/<fd>[/<name>]`.
struct FdPath {
    buf: [u8; 96],
}

impl FdPath {
    fn new(fd: RawFd, name: &[u8]) -> FdPath {
        let mut p = FdPath { buf: [0; 96] };
        let mut len = 0;
        let mut put = |bytes: &[u8]| {
            for b in bytes {
                // Leave room for the NUL; the inputs here are short constants and an fd number.
                if let Some(slot) = p.buf.get_mut(len).filter(|_| len < 95) {
                    *slot = *b;
                    len += 1;
                }
            }
        };
        put(b"/proc/self/fd/");
        let mut digits = [0u8; 12];
        let mut n = fd.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            if let Some(d) = digits.get_mut(i) {
                *d = b'0' + (n % 10) as u8;
            }
            n /= 10;
            if n == 0 || i == 0 {
                break;
            }
        }
        put(digits.get(i..).unwrap_or_default());
        if !name.is_empty() {
            put(b"/");
            put(name);
        }
        p
    }

    fn as_ptr(&self) -> *const c_char {
        self.buf.as_ptr().cast()
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Reports `stage` to the parent and exits. Never returns.
unsafe fn fail(report: RawFd, stage: Stage, index: usize, err: i32) -> ! {
    let mut msg = [0u8; 12];
    let words = [
        stage as u32,
        u32::try_from(index).unwrap_or(u32::MAX),
        err as u32,
    ];
    for (chunk, w) in msg.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    // SAFETY: writes a stack buffer; _exit skips atexit handlers, which belong to the parent.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// `check!(call, stage[, index])`: fails the child with `stage` when `call` returns -1.
macro_rules! check {
    ($report:expr, $call:expr, $stage:expr) => {
        check!($report, $call, $stage, 0)
    };
    ($report:expr, $call:expr, $stage:expr, $index:expr) => {{
        let r = $call;
        if r == -1 {
            fail($report, $stage, $index, errno());
        }
        r
    }};
}

/// `struct open_how` of openat2(2) (libc's is non-exhaustive, so it cannot be built here).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `rel` under the rootfs `root` as an `O_PATH` descriptor, resolving symlinks as if
/// `root` were `/`.
unsafe fn open_in_root(root: RawFd, rel: &CStr) -> RawFd {
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `rel` is NUL-terminated and `how` is a valid open_how of the size passed.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        ) as RawFd
    }
}

/// Opens the mountpoint of `m`, creating it (and its parents) inside earlier mounts when it
/// does not exist yet. Returns -1 with errno set on failure.
unsafe fn mountpoint(root: RawFd, m: &PlanMount) -> RawFd {
    // SAFETY (whole function): NUL-terminated strings from the plan and descriptors we own.
    unsafe {
        let fd = open_in_root(root, &m.rel);
        if fd >= 0 || errno() != libc::ENOENT {
            return fd;
        }
        let mut parent = libc::dup(root);
        let count = m.walk.len();
        for (i, (prefix, name)) in m.walk.iter().enumerate() {
            let mut fd = open_in_root(root, prefix);
            if fd < 0 && errno() == libc::ENOENT {
                let made = if i + 1 == count && !m.leaf_dir {
                    let f = libc::openat(
                        parent,
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o644,
                    );
                    if f >= 0 {
                        libc::close(f);
                    }
                    f
                } else {
                    libc::mkdirat(parent, name.as_ptr(), 0o755)
                };
                if made < 0 && errno() != libc::EEXIST {
                    libc::close(parent);
                    return -1;
                }
                fd = open_in_root(root, prefix);
            }
            libc::close(parent);
            if fd < 0 {
                return -1;
            }
            parent = fd;
        }
        parent
    }
}

/// Mounts `fstype` at `rel` (an existing directory of the rootfs); -1 on failure.
unsafe fn mount_fs_at(
    root: RawFd,
    rel: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_int {
    // SAFETY: NUL-terminated strings; the descriptor is ours.
    unsafe {
        let fd = open_in_root(root, rel);
        if fd < 0 {
            return -1;
        }
        let target = FdPath::new(fd, b"");
        let r = libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        );
        libc::close(fd);
        r
    }
}

/// Binds `rel` onto itself and remounts it read-only; -1 on failure, 0 when it does not exist.
unsafe fn remount_readonly(root: RawFd, rel: &CStr, bind_first: bool) -> libc::c_int {
    // SAFETY: NUL-terminated strings; descriptors are ours.
    unsafe {
        if bind_first {
            let fd = open_in_root(root, rel);
            if fd < 0 {
                return if errno() == libc::ENOENT { 0 } else { -1 };
            }
            let p = FdPath::new(fd, b"");
            let r = libc::mount(
                p.as_ptr(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            );
            libc::close(fd);
            if r < 0 {
                return -1;
            }
        }
        // Re-resolved: the path now leads to the root of the new mount.
        let fd = open_in_root(root, rel);
        if fd < 0 {
            return -1;
        }
        let p = FdPath::new(fd, b"");
        let remount = |extra: libc::c_ulong| {
            libc::mount(
                std::ptr::null(),
                p.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | extra,
                std::ptr::null(),
            )
        };
        let mut r = remount(0);
        if r < 0 && errno() == libc::EPERM {
            // A bind remount sets every per-mount flag anew, and in a user namespace the
            // kernel locks those of a mount that came from the host (nosuid, nodev, noexec,
            // the atime mode): a remount that would clear one gets EPERM. Again with the
            // mount's own flags, as runc does. (glibc's fstatvfs is fstatfs and a copy: it
            // reads /proc/mounts only on kernels before 2.6.36, which lack f_flags.)
            let mut fs: libc::statvfs = std::mem::zeroed();
            r = libc::fstatvfs(fd, &mut fs);
            if r == 0 {
                r = remount(locked_flags(fs.f_flag));
            }
        }
        libc::close(fd);
        r
    }
}

/// The `MS_*` mount flags matching the `ST_*` flags of `statfs().f_flags` that a bind
/// remount must repeat (the values are the same bits).
fn locked_flags(st: u64) -> libc::c_ulong {
    const KEPT: [(u64, libc::c_ulong); 6] = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    KEPT.iter()
        .filter(|(st_flag, _)| st & st_flag != 0)
        .fold(0, |acc, (_, ms)| acc | ms)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Rootless `/sys`: the host's, bound recursively at `sys` (whose mounts below, such as the
/// cgroup hierarchies, come along), then made read-only with all those mounts when
/// `readonly`; -1 on failure.
unsafe fn bind_host_sys(root: RawFd, readonly: bool) -> libc::c_int {
    // SAFETY: NUL-terminated constants; descriptors are ours; `attr` is a valid mount_attr of
    // the size passed.
    unsafe {
        let fd = open_in_root(root, c"sys");
        if fd < 0 {
            return -1;
        }
        let at = FdPath::new(fd, b"");
        let r = libc::mount(
            c"/sys".as_ptr(),
            at.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        );
        libc::close(fd);
        if r < 0 || !readonly {
            return r;
        }
        let fd = open_in_root(root, c"sys");
        if fd < 0 {
            return -1;
        }
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let r = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) as libc::c_int;
        libc::close(fd);
        if r < 0 && errno() == libc::ENOSYS {
            // Before Linux 5.12: only the top mount becomes read-only, as runc leaves it.
            return remount_readonly(root, c"sys", false);
        }
        r
    }
}

/// Mounts the step's `/sys/fs/cgroup` (on the `/sys` just mounted), read-only unless
/// `insecure` (BuildKit's `oci.WithWriteableCgroupfs`); fails the child on error.
unsafe fn mount_cgroupfs(root: RawFd, fs: &PlanCgroupFs, readonly: bool, report: RawFd) {
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: NUL-terminated strings of the plan and constants; descriptors are ours.
    unsafe {
        match fs {
            PlanCgroupFs::None => {}
            PlanCgroupFs::V2 { bind } => {
                // The child joined its step cgroup first thing: a new cgroup namespace makes
                // that its root, in `/proc/self/cgroup` and in the cgroup2 mount.
                check!(
                    report,
                    libc::unshare(libc::CLONE_NEWCGROUP),
                    Stage::Cgroupfs
                );
                let fd = check!(
                    report,
                    open_in_root(root, c"sys/fs/cgroup"),
                    Stage::Cgroupfs
                );
                let at = FdPath::new(fd, b"");
                match bind {
                    None => {
                        let ro = if readonly { libc::MS_RDONLY } else { 0 };
                        check!(
                            report,
                            libc::mount(
                                c"cgroup2".as_ptr(),
                                at.as_ptr(),
                                c"cgroup2".as_ptr(),
                                hardened | ro,
                                std::ptr::null()
                            ),
                            Stage::Cgroupfs
                        );
                    }
                    Some(source) => {
                        check!(
                            report,
                            libc::mount(
                                source.as_ptr(),
                                at.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND,
                                std::ptr::null()
                            ),
                            Stage::Cgroupfs
                        );
                        // Opened anew: the path now leads to the root of the bind.
                        let bound = check!(
                            report,
                            open_in_root(root, c"sys/fs/cgroup"),
                            Stage::Cgroupfs
                        );
                        check!(report, remount_bind(bound, readonly), Stage::Cgroupfs);
                        libc::close(bound);
                    }
                }
                libc::close(fd);
            }
            PlanCgroupFs::V1 { binds, links } => {
                check!(
                    report,
                    mount_fs_at(
                        root,
                        c"sys/fs/cgroup",
                        c"tmpfs",
                        hardened,
                        Some(c"mode=755")
                    ),
                    Stage::Cgroupfs
                );
                let dir = check!(
                    report,
                    open_in_root(root, c"sys/fs/cgroup"),
                    Stage::Cgroupfs
                );
                for (i, (name, source)) in binds.iter().enumerate() {
                    check!(
                        report,
                        libc::mkdirat(dir, name.as_ptr(), 0o755),
                        Stage::Cgroupfs,
                        i
                    );
                    let at = FdPath::new(dir, name.to_bytes());
                    check!(
                        report,
                        libc::mount(
                            source.as_ptr(),
                            at.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null()
                        ),
                        Stage::Cgroupfs,
                        i
                    );
                    // Opened anew: the name now leads to the root of the bind.
                    let fd = check!(
                        report,
                        libc::openat(
                            dir,
                            name.as_ptr(),
                            libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW
                        ),
                        Stage::Cgroupfs,
                        i
                    );
                    check!(report, remount_bind(fd, readonly), Stage::Cgroupfs, i);
                    libc::close(fd);
                }
                for (target, name) in links {
                    check!(
                        report,
                        libc::symlinkat(target.as_ptr(), dir, name.as_ptr()),
                        Stage::Cgroupfs
                    );
                }
                if readonly {
                    check!(report, remount_bind(dir, true), Stage::Cgroupfs);
                }
                libc::close(dir);
            }
        }
    }
}

/// Remounts the mount whose root `fd` is with nosuid, nodev, noexec, and read-only when
/// `readonly`; in a user namespace again with the flags the kernel locks on a mount from the
/// host (see [`remount_readonly`]). -1 on failure.
unsafe fn remount_bind(fd: RawFd, readonly: bool) -> libc::c_int {
    let p = FdPath::new(fd, b"");
    let flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | if readonly { libc::MS_RDONLY } else { 0 };
    // SAFETY: a NUL-terminated path on the stack; `fs` is written by fstatvfs.
    unsafe {
        let remount = |extra: libc::c_ulong| {
            libc::mount(
                std::ptr::null(),
                p.as_ptr(),
                std::ptr::null(),
                flags | extra,
                std::ptr::null(),
            )
        };
        let mut r = remount(0);
        if r < 0 && errno() == libc::EPERM {
            let mut fs: libc::statvfs = std::mem::zeroed();
            r = libc::fstatvfs(fd, &mut fs);
            if r == 0 {
                r = remount(locked_flags(fs.f_flag));
            }
        }
        r
    }
}

/// The device nodes of `/dev`: name, major, minor, and the host's node that is bound there
/// in rootless mode.
const DEVICES: [(&CStr, u32, u32, &CStr); 6] = [
    (c"null", 1, 3, c"/dev/null"),
    (c"zero", 1, 5, c"/dev/zero"),
    (c"full", 1, 7, c"/dev/full"),
    (c"random", 1, 8, c"/dev/random"),
    (c"urandom", 1, 9, c"/dev/urandom"),
    (c"tty", 5, 0, c"/dev/tty"),
];

const DEV_LINKS: [(&CStr, &CStr); 6] = [
    (c"/proc/self/fd", c"fd"),
    (c"/proc/self/fd/0", c"stdin"),
    (c"/proc/self/fd/1", c"stdout"),
    (c"/proc/self/fd/2", c"stderr"),
    (c"/proc/kcore", c"core"),
    (c"pts/ptmx", c"ptmx"),
];

/// Populates the fresh `/dev` tmpfs (`dev` is a descriptor of its root).
unsafe fn populate_dev(dev: RawFd, shm_data: &CStr, rootless: bool, report: RawFd) {
    // SAFETY: NUL-terminated constants; `dev` is ours; paths lie in a tmpfs we just mounted.
    unsafe {
        for (name, major, minor, host) in DEVICES {
            if rootless {
                // A user namespace may not mknod a device: an empty file, and the host's node
                // bound on it (as runc does rootless).
                let f = check!(
                    report,
                    libc::openat(
                        dev,
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o666
                    ),
                    Stage::DevNode
                );
                libc::close(f);
                let at = FdPath::new(dev, name.to_bytes());
                check!(
                    report,
                    libc::mount(
                        host.as_ptr(),
                        at.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null()
                    ),
                    Stage::DevNode
                );
                continue;
            }
            check!(
                report,
                libc::mknodat(
                    dev,
                    name.as_ptr(),
                    libc::S_IFCHR | 0o666,
                    libc::makedev(major, minor)
                ),
                Stage::DevNode
            );
        }
        for (target, name) in DEV_LINKS {
            check!(
                report,
                libc::symlinkat(target.as_ptr(), dev, name.as_ptr()),
                Stage::DevNode
            );
        }
        for dir in [c"pts", c"shm", c"mqueue"] {
            check!(
                report,
                libc::mkdirat(dev, dir.as_ptr(), 0o755),
                Stage::DevNode
            );
        }
        let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC;
        let pts = FdPath::new(dev, b"pts");
        check!(
            report,
            libc::mount(
                c"devpts".as_ptr(),
                pts.as_ptr(),
                c"devpts".as_ptr(),
                nosuid_noexec,
                c"newinstance,ptmxmode=0666,mode=0620,gid=5".as_ptr().cast(),
            ),
            Stage::Dev
        );
        let shm = FdPath::new(dev, b"shm");
        check!(
            report,
            libc::mount(
                c"shm".as_ptr(),
                shm.as_ptr(),
                c"tmpfs".as_ptr(),
                nosuid_noexec | libc::MS_NODEV,
                shm_data.as_ptr().cast(),
            ),
            Stage::Dev
        );
        let mq = FdPath::new(dev, b"mqueue");
        check!(
            report,
            libc::mount(
                c"mqueue".as_ptr(),
                mq.as_ptr(),
                c"mqueue".as_ptr(),
                nosuid_noexec | libc::MS_NODEV,
                std::ptr::null(),
            ),
            Stage::Dev
        );
    }
}

/// Sets `IFF_UP` on `lo` in the (new) network namespace.
unsafe fn loopback_up(report: RawFd) {
    // SAFETY: an ifreq on the stack, ioctls on a socket we own.
    unsafe {
        let sock = check!(
            report,
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0),
            Stage::Loopback
        );
        let mut req: libc::ifreq = std::mem::zeroed();
        for (slot, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *b as c_char;
        }
        check!(
            report,
            libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req),
            Stage::Loopback
        );
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check!(
            report,
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req),
            Stage::Loopback
        );
        libc::close(sock);
    }
}

/// The child after `clone`: sets up the sandbox and execs the step's process. Never returns.
///
/// # Safety
///
/// Must only run in the freshly cloned child. Makes async-signal-safe system calls only.
unsafe fn child(plan: &Plan, fds: &ChildFds) -> ! {
    let report = fds.report.as_raw_fd();
    // SAFETY (whole function): system calls on NUL-terminated strings and pointer arrays that
    // the plan owns, on stack buffers, and on descriptors of this process.
    unsafe {
        // Default dispositions (an ignored SIGPIPE would survive execve), then the mask is
        // emptied at the very end, right before execve.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // Device nodes and mountpoints get exactly the modes asked for.
        libc::umask(0);

        // Into the step's cgroup before anything else, so that all it does is counted.
        for fd in &plan.cgroup_procs {
            check!(
                report,
                libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) as libc::c_int,
                Stage::Cgroup
            );
        }

        // stdio, then nothing else but the report pipe (which closes on exec).
        check!(report, libc::dup2(fds.stdin.as_raw_fd(), 0), Stage::Stdio);
        check!(report, libc::dup2(fds.stdout.as_raw_fd(), 1), Stage::Stdio);
        check!(report, libc::dup2(fds.stderr.as_raw_fd(), 2), Stage::Stdio);
        close_all_but(report);

        // Nothing mounted here may propagate back to kiln's namespace.
        check!(
            report,
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            Stage::MakePrivate
        );
        // pivot_root needs the new root to be a mount point.
        check!(
            report,
            libc::mount(
                plan.rootfs.as_ptr(),
                plan.rootfs.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null()
            ),
            Stage::BindRoot
        );
        let root = check!(
            report,
            libc::open(
                plan.rootfs.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC
            ),
            Stage::OpenRoot
        );

        let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check!(
            report,
            mount_fs_at(root, c"proc", c"proc", hardened, None),
            Stage::Proc
        );
        check!(
            report,
            mount_fs_at(
                root,
                c"dev",
                c"tmpfs",
                libc::MS_NOSUID | libc::MS_STRICTATIME,
                Some(c"mode=755,size=65536k")
            ),
            Stage::Dev
        );
        let dev = check!(report, open_in_root(root, c"dev"), Stage::Dev);
        populate_dev(dev, &plan.shm_data, plan.rootless, report);
        libc::close(dev);
        let sys_flags = if plan.sys_readonly {
            hardened | libc::MS_RDONLY
        } else {
            hardened
        };
        if plan.bind_sys {
            check!(report, bind_host_sys(root, plan.sys_readonly), Stage::Sys);
        } else {
            check!(
                report,
                mount_fs_at(root, c"sys", c"sysfs", sys_flags, None),
                Stage::Sys
            );
        }
        mount_cgroupfs(root, &plan.cgroupfs, plan.sys_readonly, report);

        for (i, m) in plan.mounts.iter().enumerate() {
            let target = check!(report, mountpoint(root, m), Stage::MountTarget, i);
            let at = FdPath::new(target, b"");
            let r = match &m.what {
                PlanSource::Bind(source) => libc::mount(
                    source.as_ptr(),
                    at.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                PlanSource::Tmpfs(data) => libc::mount(
                    c"tmpfs".as_ptr(),
                    at.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
                    data.as_ptr().cast(),
                ),
            };
            check!(report, r, Stage::Mount, i);
            libc::close(target);
            if m.readonly {
                check!(
                    report,
                    remount_readonly(root, &m.rel, false),
                    Stage::Remount,
                    i
                );
            }
        }

        for (i, rel) in plan.masked.iter().enumerate() {
            let fd = open_in_root(root, rel);
            if fd < 0 {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(report, Stage::Mask, i, errno());
            }
            let mut st: libc::stat = std::mem::zeroed();
            check!(report, libc::fstat(fd, &mut st), Stage::Mask, i);
            let at = FdPath::new(fd, b"");
            let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    at.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    at.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            check!(report, r, Stage::Mask, i);
            libc::close(fd);
        }
        for (i, rel) in plan.readonly_paths.iter().enumerate() {
            check!(
                report,
                remount_readonly(root, rel, true),
                Stage::Mask,
                plan.masked.len() + i
            );
        }

        check!(
            report,
            libc::sethostname(plan.hostname.as_ptr(), plan.hostname.as_bytes().len()),
            Stage::Hostname
        );
        if plan.loopback {
            loopback_up(report);
        }

        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves the
        // rootfs alone, with no path back to the host's filesystem.
        check!(report, libc::fchdir(root), Stage::PivotRoot);
        check!(
            report,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            Stage::PivotRoot
        );
        check!(
            report,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            Stage::PivotRoot
        );
        check!(report, libc::chdir(c"/".as_ptr()), Stage::PivotRoot);
        libc::close(root);

        // Raised while still privileged: a higher hard limit needs CAP_SYS_RESOURCE.
        for (i, (resource, limit)) in plan.rlimits.iter().enumerate() {
            check!(
                report,
                libc::setrlimit64(*resource, limit),
                Stage::Rlimit,
                i
            );
        }

        if let Some(drop) = plan.drop_bounding {
            for cap in 0..64u32 {
                if drop & (1u64 << cap) != 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) < 0
                    && errno() != libc::EINVAL
                {
                    fail(report, Stage::Bounding, cap as usize, errno());
                }
            }
        }

        // No no_new_privs, as BuildKit (setuid programs such as `su` work in RUN steps), so
        // the filters go in while CAP_SYS_ADMIN is still held; every call from here to execve
        // (setgroups, setres[ug]id, capset, prctl, chdir, umask, rt_sigprocmask, execve, and
        // write/exit_group to report a failure) is on the allow-list.
        for program in &plan.seccomp {
            let prog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            check!(
                report,
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog),
                Stage::Seccomp
            );
        }

        // Raw system calls: glibc's wrappers would try to signal the parent's other threads
        // (setxid broadcast), which do not exist here.
        check!(
            report,
            libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr())
                as libc::c_int,
            Stage::Groups
        );
        check!(
            report,
            libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) as libc::c_int,
            Stage::Gid
        );
        check!(
            report,
            libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) as libc::c_int,
            Stage::Uid
        );

        // No inheritable or ambient capabilities (as Docker since CVE-2022-24769); execve then
        // gives uid 0 exactly the bounding set, and other users nothing.
        let header = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let low = plan.keep_caps as u32;
        let high = (plan.keep_caps >> 32) as u32;
        let data = [
            CapData {
                effective: low,
                permitted: low,
                inheritable: 0,
            },
            CapData {
                effective: high,
                permitted: high,
                inheritable: 0,
            },
        ];
        let mut current = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        if plan.uid == 0 {
            // Clamp to what this process has (the mask may name capabilities it lacks).
            check!(
                report,
                libc::syscall(libc::SYS_capget, &header, current.as_mut_ptr()) as libc::c_int,
                Stage::Capset
            );
        }
        let clamped = [
            CapData {
                effective: data[0].effective & current[0].permitted,
                permitted: data[0].permitted & current[0].permitted,
                inheritable: 0,
            },
            CapData {
                effective: data[1].effective & current[1].permitted,
                permitted: data[1].permitted & current[1].permitted,
                inheritable: 0,
            },
        ];
        check!(
            report,
            libc::syscall(libc::SYS_capset, &header, clamped.as_ptr()) as libc::c_int,
            Stage::Capset
        );
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );

        check!(report, libc::chdir(plan.cwd.as_ptr()), Stage::Cwd);

        libc::umask(0o022);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        let mut saved = libc::ENOENT;
        for path in &plan.candidates {
            libc::execve(
                path.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                // Like execvp: a match we may not run is reported if nothing else runs.
                libc::EACCES => saved = libc::EACCES,
                other => fail(report, Stage::Exec, 0, other),
            }
        }
        fail(report, Stage::Exec, 0, saved)
    }
}

/// Closes every descriptor above 2 except `keep`.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: closing descriptors of this (child) process only.
    unsafe {
        if keep > 3 {
            close_range(3, keep - 1);
        }
        close_range(keep + 1, libc::c_uint::MAX);
    }
}

unsafe fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: close_range only closes descriptors of this process.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r < 0 {
        // Kernels before 5.9: close them one by one, up to a sane bound.
        for fd in first..last.min(65_536) {
            // SAFETY: as above.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}
