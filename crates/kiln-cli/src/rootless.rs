//! Rootless kiln: an ordinary user's `kiln build` runs in a user namespace of its own, where
//! the user is uid 0 and the user's subordinate ids (/etc/subuid, /etc/subgid) are uids 1 and
//! up, as rootless BuildKit (rootlesskit), `buildah unshare` and Podman do. There kiln can
//! mount overlays, own files as any uid an image names and give RUN steps namespaces.
//!
//! The namespace must be entered before any thread starts (a tokio runtime, a plugin), and
//! its id maps can only be written by a process outside it with the setuid `newuidmap` and
//! `newgidmap` (Debian's `uidmap`). So kiln re-executes itself: the parent spawns
//! `/proc/self/exe` with the same arguments; the child, first thing in its `main`,
//! `unshare(CLONE_NEWUSER)`s and says so over a pipe; the parent writes the maps and answers
//! over a second pipe; the child goes on as uid 0 in the namespace. The parent forwards
//! SIGTERM, SIGINT and SIGHUP sent to it and exits as the child did.
//!
//! `KILN_ROOTLESS=0` (docs/rootless.md) keeps kiln in the host's namespaces as before
//! (copies instead of overlays, no RUN).

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{anyhow, bail, Context, Result};

/// Set by the parent in the child's environment: `READ_FD,WRITE_FD` of the two sync pipes.
/// Removed by the child as soon as it has read it, so that nothing it starts inherits it.
const SYNC_ENV: &str = "_KILN_ROOTLESS_SYNC";
/// Set by the parent for the child and everything it starts: `1` means "uid 0 here is an
/// ordinary user on the host" (the store is the user's: config.rs), `0` (set by a user)
/// keeps kiln out of a user namespace.
pub const ROOTLESS_ENV: &str = "KILN_ROOTLESS";
/// The ranges rootless BuildKit and Podman ask for: every id an image may name.
const FULL_RANGE: u64 = 65536;

/// Whether this process is the namespaced child of a rootless kiln (its uid 0 is a user).
pub fn is_rootless_child(env: &dyn Fn(&str) -> Option<OsString>) -> bool {
    env(ROOTLESS_ENV).is_some_and(|v| v == "1")
}

/// What [`enter`] decided.
pub enum Entered {
    /// Go on in this process: root already, the namespaced child, or rootless turned off.
    Continue,
    /// This was the parent: the child ran the command and exited with this.
    Exited(ExitCode),
}

/// Enters a user namespace when kiln runs as an ordinary user (see the module's doc). Must
/// run before any thread starts. `needed` says false for commands that touch no store; it is
/// asked only of an ordinary user (it may read the builders file).
pub fn enter(needed: impl FnOnce() -> bool) -> Result<Entered> {
    if let Some(sync) = std::env::var_os(SYNC_ENV) {
        std::env::remove_var(SYNC_ENV);
        child(&sync)?;
        return Ok(Entered::Continue);
    }
    // SAFETY: geteuid takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let off = std::env::var_os(ROOTLESS_ENV).is_some_and(|v| v == "0");
    if euid == 0 || off || !needed() {
        return Ok(Entered::Continue);
    }
    parent().map(Entered::Exited)
}

/// One line of /etc/subuid or /etc/subgid that applies: `START` and `COUNT`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Range {
    start: u64,
    count: u64,
}

/// The ranges of `user` (or of its numeric id) in a subordinate id file, in file order.
fn ranges(text: &str, user: &str, id: u32) -> Vec<Range> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if who != user && who != id {
                return None;
            }
            let r = Range {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            };
            (r.count > 0).then_some(r)
        })
        .collect()
}

/// The arguments of newuidmap/newgidmap after the pid: the user's own id as 0, then each
/// subordinate range from 1 up (`0 UID 1 1 START COUNT ...`).
fn map_args(own: u32, ranges: &[Range]) -> Vec<String> {
    let mut args = vec!["0".to_owned(), own.to_string(), "1".to_owned()];
    let mut inner = 1u64;
    for r in ranges {
        args.extend([inner.to_string(), r.start.to_string(), r.count.to_string()]);
        inner += r.count;
    }
    args
}

/// The user's ranges in `file`, or the error that says which line to add.
fn subordinate(file: &Path, kind: &str, user: &str, id: u32) -> Result<Vec<Range>> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(anyhow!("rootless: read {}: {e}", file.display())),
    };
    let found = ranges(&text, user, id);
    if found.is_empty() {
        bail!(
            "rootless: no subordinate {kind}s for user {user} (uid {id}) in {}; add a line \
             such as \"{user}:100000:65536\" to /etc/subuid and /etc/subgid (as root: usermod \
             --add-subuids 100000-165535 --add-subgids 100000-165535 {user}), or run kiln as \
             root",
            file.display()
        );
    }
    let total: u64 = found.iter().map(|r| r.count).sum();
    if total < FULL_RANGE - 1 {
        eprintln!(
            "WARNING: rootless: user {user} has {total} subordinate {kind}s in {} (fewer than \
             65536): images with files owned by ids above {total} will fail to unpack",
            file.display()
        );
    }
    Ok(found)
}

/// The user's name, from the password database (NSS), else `$USER`, else the number.
fn user_name(uid: u32) -> String {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: passwd is plain data; getpwuid_r writes into it and buf (of the length given)
    // and sets result to &pwd or null; pw_name points into buf, read before buf is dropped.
    let name = unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
            Some(
                std::ffi::CStr::from_ptr(pwd.pw_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        } else {
            None
        }
    };
    name.or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| uid.to_string())
}

/// The pid of the child, for the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Forwards a signal sent to the parent by a process (`kill`, a service manager) to the
/// child. A terminal's Ctrl-C (sent by the kernel, `SI_KERNEL`) already reached the child
/// too, as it is in the same process group: forwarding it would count as a second press.
extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; kill is
    // async-signal-safe.
    unsafe {
        if !info.is_null() && (*info).si_code == libc::SI_KERNEL {
            return;
        }
        let pid = CHILD.load(Ordering::SeqCst);
        if pid > 0 {
            libc::kill(pid, sig);
        }
    }
}

const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("rootless: create a pipe");
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs a map tool, with the error that says what to install or fix.
fn write_map(tool: &str, pid: i32, args: &[String]) -> Result<()> {
    let out = Command::new(tool)
        .arg(pid.to_string())
        .args(args)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow!(
                    "rootless: {tool} not found: install Debian's uidmap package (apt-get \
                     install uidmap; Fedora: shadow-utils), or run kiln as root"
                )
            } else {
                anyhow!("rootless: run {tool}: {e}")
            }
        })?;
    if !out.status.success() {
        bail!(
            "rootless: {tool} {pid} {} failed ({}): {} (is {tool} setuid root, and do the \
             ranges in /etc/subuid and /etc/subgid belong to this user?)",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The parent: checks the ids, starts the child, maps it, forwards signals, waits.
fn parent() -> Result<ExitCode> {
    // SAFETY: getuid/getgid take nothing and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let user = user_name(uid);
    // Checked before anything starts, so that a missing line is the only thing said.
    let uids = subordinate(Path::new("/etc/subuid"), "uid", &user, uid)?;
    let gids = subordinate(Path::new("/etc/subgid"), "gid", &user, uid)?;
    // Parent → child ("mapped") and child → parent ("unshared").
    let (to_child_r, to_child_w) = pipe()?;
    let (from_child_r, from_child_w) = pipe()?;
    let (cr, cw) = (to_child_r.as_raw_fd(), from_child_w.as_raw_fd());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(std::env::args_os().skip(1))
        .env(SYNC_ENV, format!("{cr},{cw}"))
        .env(ROOTLESS_ENV, "1");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    let parent_pid = std::process::id();
    // SAFETY: the closure only calls fcntl, prctl and getppid, which are async-signal-safe,
    // on fds that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in [cr, cw] {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // A parent killed with SIGKILL cannot forward it: the child dies with it, as
            // rootlesskit's does (its mount namespace, and the views in it, go too). The
            // parent is one thread, so its death is the process's. Checked after: a parent
            // that died before the prctl would never send it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(parent_pid) {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // Installed before the child exists: a signal in between is forwarded once it does.
    for sig in FORWARDED {
        // SAFETY: `forward` is an async-signal-safe SA_SIGINFO handler; the sigaction struct
        // is fully initialized.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut child = cmd
        .spawn()
        .context("rootless: start kiln in a user namespace (/proc/self/exe)")?;
    let pid = i32::try_from(child.id()).context("rootless: the child's pid")?;
    CHILD.store(pid, Ordering::SeqCst);
    drop(to_child_r);
    drop(from_child_w);
    let mut from_child = fs::File::from(from_child_r);
    let mut to_child = fs::File::from(to_child_w);
    let mut byte = [0u8; 1];
    // EOF: the child could not unshare and said why itself; its status is ours.
    let unshared = matches!(from_child.read(&mut byte), Ok(1));
    if unshared {
        let mapped = write_map("newuidmap", pid, &map_args(uid, &uids))
            .and_then(|()| write_map("newgidmap", pid, &map_args(gid, &gids)));
        if let Err(e) = mapped {
            // The child waits for the answer: without one it exits quietly.
            drop(to_child);
            let _ = child.wait();
            return Err(e);
        }
        to_child
            .write_all(b"1")
            .context("rootless: tell the child its ids are mapped")?;
    }
    drop(to_child);
    let status = child.wait().context("rootless: wait for the child")?;
    CHILD.store(0, Ordering::SeqCst);
    if let Some(code) = status.code() {
        return Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)));
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // Die of the same signal, as a shell expects; 128+N if it does not kill.
    // SAFETY: resetting a handler to the default and raising a signal touch no memory.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    Ok(ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)))
}

/// The child: unshares the user namespace, waits for its maps, then is uid 0 in it.
fn child(sync: &OsString) -> Result<()> {
    let sync = sync.to_string_lossy();
    let (r, w) = sync
        .split_once(',')
        .and_then(|(r, w)| Some((r.parse::<RawFd>().ok()?, w.parse::<RawFd>().ok()?)))
        .ok_or_else(|| anyhow!("rootless: {SYNC_ENV}={sync:?} is not READ_FD,WRITE_FD"))?;
    // SAFETY: the parent passed these two fds to this process for it alone.
    let (mut from_parent, mut to_parent) =
        unsafe { (fs::File::from_raw_fd(r), fs::File::from_raw_fd(w)) };
    for fd in [r, w] {
        // SAFETY: sets close-on-exec on fds this process owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        let err = std::io::Error::last_os_error();
        let max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned());
        let why = match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EPERM) | Some(libc::EUSERS) => format!(
                ": user namespaces are disabled or exhausted here (sysctl user.max_user_namespaces \
                 = {max}; as root: sysctl -w user.max_user_namespaces=15000; on Debian/Ubuntu \
                 also check kernel.unprivileged_userns_clone and \
                 kernel.apparmor_restrict_unprivileged_userns; in a container, the seccomp \
                 profile must allow unshare)"
            ),
            _ => String::new(),
        };
        bail!("rootless: unshare(CLONE_NEWUSER): {err}{why}");
    }
    to_parent
        .write_all(b"1")
        .context("rootless: tell the parent the user namespace exists")?;
    drop(to_parent);
    let mut byte = [0u8; 1];
    if !matches!(from_parent.read(&mut byte), Ok(1)) {
        // The parent could not map the ids and reports why; say nothing more.
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_the_name_or_the_uid_and_keep_several_lines() {
        let text = "other:1:5\nkilnu:100000:65536\n1001:200000:10\n# junk\nkilnu:x:1\n";
        assert_eq!(
            ranges(text, "kilnu", 1001),
            vec![
                Range {
                    start: 100000,
                    count: 65536
                },
                Range {
                    start: 200000,
                    count: 10
                }
            ]
        );
        assert!(ranges(text, "nobody", 7).is_empty());
    }

    #[test]
    fn the_maps_put_the_user_at_0_and_the_ranges_from_1() {
        let r = [
            Range {
                start: 100000,
                count: 65536,
            },
            Range {
                start: 300000,
                count: 10,
            },
        ];
        assert_eq!(
            map_args(1001, &r).join(" "),
            "0 1001 1 1 100000 65536 65537 300000 10"
        );
    }

    #[test]
    fn a_user_without_subordinate_ids_is_told_which_line_to_add() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subuid");
        fs::write(&f, "other:100000:65536\n").unwrap();
        let e = subordinate(&f, "uid", "kilnu", 1001)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no subordinate uids for user kilnu (uid 1001)"),
            "{e}"
        );
        assert!(e.contains("\"kilnu:100000:65536\" to /etc/subuid"), "{e}");
        assert!(e.contains("usermod --add-subuids 100000-165535"), "{e}");
        // A missing file reads as no lines.
        let e = subordinate(&dir.path().join("none"), "gid", "kilnu", 1001)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no subordinate gids"), "{e}");
    }

    #[test]
    fn only_the_value_1_marks_the_rootless_child() {
        assert!(is_rootless_child(&|_| Some("1".into())));
        assert!(!is_rootless_child(&|_| Some("0".into())));
        assert!(!is_rootless_child(&|_| None));
    }
}
