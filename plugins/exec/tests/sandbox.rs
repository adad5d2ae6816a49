//! What a RUN step can and cannot do in the sandbox, with both runtimes: Docker's default
//! seccomp profile as an allow-list (a syscall outside it gets EPERM, `clone3` ENOSYS), mounts,
//! `unshare`, keyrings, raising a capability, ptrace of another user's process, masked and
//! read-only paths, no_new_privs as BuildKit leaves it; and `--security=insecure` lifting them.
//! Calls busybox has no applet for go through `tests/data/syscall.c`, built static with `cc`.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use common::{exec_op, require_runc, sh, Recorder, Rootfs};
use kiln_exec::execute;
use kiln_plugin_sdk::graph::SecurityMode;
use kiln_plugin_sdk::proto::{PrimitiveRequest, Runtime};

fn helper() -> &'static Path {
    common::syscall_helper()
}

/// A busybox rootfs with the helper at `/bin/syscall`.
fn rootfs() -> Rootfs {
    let root = Rootfs::busybox();
    std::fs::copy(helper(), root.merged.join("bin/syscall")).unwrap();
    std::fs::copy(common::i386_helper(), root.merged.join("bin/i386")).unwrap();
    root
}

/// Runs `script` with `sh -c` as `user` (root when empty); returns the exit code and the
/// output lines (stdout then stderr).
fn run(script: &str, user: &str, security: SecurityMode, runtime: Runtime) -> (i32, Vec<String>) {
    let root = rootfs();
    let mut req: PrimitiveRequest = sh(&root, script);
    exec_op(&mut req).user = user.into();
    exec_op(&mut req).security = security;
    req.runtime = runtime;
    let rec = Recorder::new();
    let code = execute(req, &rec).unwrap().exit_code.unwrap();
    let mut lines = rec.stdout();
    lines.extend(rec.stderr());
    (code, lines)
}

fn sandboxed(script: &str, runtime: Runtime) -> Vec<String> {
    run(script, "", SecurityMode::Sandbox, runtime).1
}

const EPERM: &str = "errno 1 Operation not permitted";

// --- cases, each run with both runtimes --------------------------------------------------------

/// get_mempolicy is outside the profile's unconditional list (it needs CAP_SYS_NICE, which a
/// step does not have) and needs no privilege from the kernel: only an allow-list refuses it.
fn syscall_outside_the_allow_list_is_eperm(runtime: Runtime) {
    let out = sandboxed(
        &format!("/bin/syscall {} 0 0 0 0 0", libc::SYS_get_mempolicy),
        runtime,
    );
    assert_eq!(out, vec![EPERM]);
    // An allowed call works.
    let out = sandboxed(&format!("/bin/syscall {}", libc::SYS_getppid), runtime);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].starts_with("ok "), "{out:?}");
}

/// clone3 gets ENOSYS, as in Docker, so that glibc falls back to clone (EPERM would fail every
/// pthread_create in a new glibc); clone without namespace flags works (the shell forks).
fn clone3_is_enosys(runtime: Runtime) {
    let out = sandboxed(
        &format!("/bin/syscall {} 0 0; echo forked", libc::SYS_clone3),
        runtime,
    );
    assert_eq!(out, vec!["errno 38 Function not implemented", "forked"]);
}

fn mount_unshare_and_keyrings_are_refused(runtime: Runtime) {
    let out = sandboxed(
        &format!(
            "mkdir /m; /bin/syscall {mount} s:t s:/m s:tmpfs 0 0; \
             /bin/syscall {unshare} 0x10000000; \
             /bin/syscall {unshare} 0x20000; \
             /bin/syscall {keyctl} 0 -3 0; \
             /bin/syscall {add_key} s:user s:kiln s:x 1 -3",
            mount = libc::SYS_mount,
            unshare = libc::SYS_unshare,
            keyctl = libc::SYS_keyctl,
            add_key = libc::SYS_add_key,
        ),
        runtime,
    );
    assert_eq!(
        out,
        vec![EPERM; 5],
        "mount, unshare -U, unshare -m, keyctl, add_key"
    );
}

/// The default capabilities, and none can be raised: an ambient raise of CAP_SYS_ADMIN and
/// sethostname (CAP_SYS_ADMIN) fail; chroot (CAP_SYS_CHROOT) and mknod (CAP_MKNOD) work.
fn capabilities_cannot_be_raised(runtime: Runtime) {
    let out = sandboxed(
        &format!(
            "/bin/syscall {prctl} {ambient} {raise} {sys_admin} 0 0; \
             /bin/syscall {sethostname} s:other 5; \
             /bin/syscall {chroot} s:/; \
             /bin/syscall {mknodat} -100 s:/null2 0x2180 0x103",
            prctl = libc::SYS_prctl,
            ambient = libc::PR_CAP_AMBIENT,
            raise = libc::PR_CAP_AMBIENT_RAISE,
            sys_admin = 21, // CAP_SYS_ADMIN
            sethostname = libc::SYS_sethostname,
            chroot = libc::SYS_chroot,
            mknodat = libc::SYS_mknodat,
        ),
        runtime,
    );
    assert_eq!(out, vec![EPERM, EPERM, "ok 0", "ok 0"]);
}

/// ptrace is on the profile's list (kernel >= 4.8), but without CAP_SYS_PTRACE a process of
/// another user cannot be attached: here uid 1000 tries the step's root shell.
fn ptrace_of_another_users_process_is_refused(runtime: Runtime) {
    let out = sandboxed(
        &format!(
            "/bin/syscall -u 1000 {ptrace} {attach} $$",
            ptrace = libc::SYS_ptrace,
            attach = libc::PTRACE_ATTACH,
        ),
        runtime,
    );
    assert_eq!(out, vec![EPERM]);
}

/// runc's masked paths (BuildKit's list) read as empty, its read-only ones refuse writes.
/// (`/proc/kcore` and `/proc/sysrq-trigger` are absent on some kernels, a Firecracker VM's
/// among them: `/proc/timer_list` and `/proc/sys` are the ones that show the policy there.)
fn masked_and_readonly_paths(runtime: Runtime) {
    let host_timer_list = std::fs::read("/proc/timer_list").unwrap_or_default();
    assert!(
        !host_timer_list.is_empty(),
        "this host's /proc/timer_list is empty: the test cannot tell a mask from it"
    );
    let out = sandboxed(
        "cat /proc/kcore 2>/dev/null | wc -c; wc -c < /proc/timer_list; wc -c < /proc/keys; \
         ls /sys/firmware | wc -l; echo kiln > /proc/sys/kernel/hostname && echo wrote",
        runtime,
    );
    assert_eq!(
        out,
        vec![
            "0",
            "0",
            "0",
            "0",
            "/bin/sh: can't create /proc/sys/kernel/hostname: Read-only file system"
        ]
    );
}

/// As BuildKit (oci.WithNewPrivileges): no_new_privs is not set, seccomp is (mode 2).
fn no_new_privs_as_buildkit(runtime: Runtime) {
    for user in ["", "app"] {
        let (code, out) = run(
            "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
            user,
            SecurityMode::Sandbox,
            runtime,
        );
        assert_eq!(code, 0, "{out:?}");
        assert_eq!(out, vec!["NoNewPrivs:\t0", "Seccomp:\t2"], "user {user:?}");
    }
}

/// `--security=insecure` lifts the filter, the masks and the capability limit: the mount works.
fn insecure_allows_the_mount(runtime: Runtime) {
    let (code, out) = run(
        &format!(
            "mkdir /m && /bin/syscall {} s:t s:/m s:tmpfs 0 0 && /bin/syscall {} 0 0 0 0 0",
            libc::SYS_mount,
            libc::SYS_get_mempolicy
        ),
        "",
        SecurityMode::Insecure,
        runtime,
    );
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(out, vec!["ok 0", "ok 0"]);
}

/// An i386 process (a `linux/386` image's, run natively on x86_64) gets the same allow-list:
/// its calls are allowed or refused by their i386 numbers, not killed for their architecture.
#[cfg(target_arch = "x86_64")]
mod i386 {
    use super::*;

    fn i386_processes_get_the_same_allow_list(runtime: Runtime) {
        let (code, out) = run("/bin/i386", "", SecurityMode::Sandbox, runtime);
        assert_eq!(
            (code, out),
            (0, vec!["i386".to_owned(), "EPERM".to_owned()])
        );
        let (code, out) = run("/bin/i386", "", SecurityMode::Insecure, runtime);
        assert_eq!((code, out), (0, vec!["i386".to_owned(), "ok".to_owned()]));
    }

    both_runtimes!(i386_processes_get_the_same_allow_list);
}

both_runtimes!(
    syscall_outside_the_allow_list_is_eperm,
    clone3_is_enosys,
    mount_unshare_and_keyrings_are_refused,
    capabilities_cannot_be_raised,
    ptrace_of_another_users_process_is_refused,
    masked_and_readonly_paths,
    no_new_privs_as_buildkit,
    insecure_allows_the_mount,
);

#[test]
fn helper_reports_errno() {
    // The helper itself, outside any sandbox: a bad call reports its errno.
    let out = Command::new(helper())
        .args([libc::SYS_close.to_string(), "-1".into()])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "errno 9 Bad file descriptor\n"
    );
}
