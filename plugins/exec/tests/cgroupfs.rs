//! `/sys/fs/cgroup` in a RUN step, as BuildKit mounts it (`withCGroup`: a cgroup filesystem,
//! read-only but with `--security=insecure`), with both runtimes: on this v1-hybrid host a
//! tmpfs with one bind per hierarchy, of the step's own cgroup (so a `--memory` limit reads back
//! as the step's), and the v2 path (`KILN_CGROUP2_ROOT` on the hybrid `unified` mount, embedded
//! only): a cgroup namespace rooted at the step's cgroup, with cgroup2 mounted there.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::{exec_op, require_runc, sh, Recorder, Rootfs};
use kiln_exec::execute;
use kiln_plugin_sdk::graph::SecurityMode;
use kiln_plugin_sdk::proto::{Runtime, StepLimits};

/// One step at a time: the v2 case sets `KILN_CGROUP2_ROOT` for this whole process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The cgroup2 mount of this v1-hybrid host.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Runs `script`; fails unless it exits 0. Its stdout then stderr lines.
fn run(script: &str, memory: Option<u64>, security: SecurityMode, runtime: Runtime) -> Vec<String> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run_locked(script, memory, security, runtime)
}

fn run_locked(
    script: &str,
    memory: Option<u64>,
    security: SecurityMode,
    runtime: Runtime,
) -> Vec<String> {
    let root = Rootfs::busybox();
    for applet in ["tr", "head", "rmdir"] {
        std::os::unix::fs::symlink("busybox", root.merged.join("bin").join(applet)).unwrap();
    }
    let mut req = sh(&root, script);
    req.limits = StepLimits {
        memory,
        ..StepLimits::default()
    };
    req.runtime = runtime;
    exec_op(&mut req).security = security;
    let rec = Recorder::new();
    let code = match execute(req, &rec) {
        Ok(r) => r.exit_code.unwrap(),
        Err(e) => panic!("the step did not run: {e}\nstderr: {:?}", rec.stderr()),
    };
    let mut lines = rec.stdout();
    lines.extend(rec.stderr());
    assert_eq!(code, 0, "{script}: {lines:?}");
    lines
}

/// The v1 hierarchies of this host, as mounted under /sys/fs/cgroup (the test needs them).
fn host_hierarchies() -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut names: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(1)?.strip_prefix("/sys/fs/cgroup/")?;
            (f.get(2) == Some(&"cgroup")).then(|| name.to_owned())
        })
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "memory"),
        "these tests need a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory (a v1 or hybrid \
         host); found {names:?}"
    );
    names
}

// --- cases, each run with both runtimes --------------------------------------------------------

/// `--memory 32m`: the step reads its limit where the JVM and others look for it.
fn memory_limit_reads_back_at_sys_fs_cgroup(runtime: Runtime) {
    host_hierarchies();
    let out = run(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        Some(32 << 20),
        SecurityMode::Sandbox,
        runtime,
    );
    assert_eq!(out, ["33554432"]);
}

/// Without limits: the host's hierarchies by their names (on a tmpfs), each the cgroup the
/// step runs in, and nothing under /sys/fs/cgroup writable.
fn hierarchies_are_there_and_read_only(runtime: Runtime) {
    let hosts = host_hierarchies();
    let out = run(
        "stat -f -c %T /sys/fs/cgroup; ls /sys/fs/cgroup | tr '\\n' ' '; echo; \
         test -f /sys/fs/cgroup/memory/memory.limit_in_bytes && echo limit-file; \
         touch /sys/fs/cgroup/x 2>&1; mkdir /sys/fs/cgroup/memory/x 2>&1; \
         echo 1 > /sys/fs/cgroup/pids/cgroup.procs 2>&1; \
         echo nested=$(find /sys/fs/cgroup/ -mindepth 2 -type d | grep -v '/runc$' | wc -l)",
        None,
        SecurityMode::Sandbox,
        runtime,
    );
    assert_eq!(out[0], "tmpfs", "{out:?}");
    let mut seen: Vec<&str> = out[1].split_whitespace().collect();
    seen.sort();
    for h in &hosts {
        assert!(seen.contains(&h.as_str()), "{h} missing: {out:?}");
    }
    // v1 only: the host's cgroup2 mount (`unified`) is not a v1 hierarchy (runc leaves it out).
    assert!(!seen.contains(&"unified"), "{out:?}");
    assert_eq!(out[2], "limit-file", "{out:?}");
    let refused = out
        .iter()
        .filter(|l| l.ends_with("Read-only file system"))
        .count();
    assert_eq!(refused, 3, "{out:?}");
    // Each hierarchy is the step's own cgroup, without limits too: no other cgroup below it
    // (runc's nested `runc` aside), never kiln's or the host's tree.
    assert!(out.iter().any(|l| l == "nested=0"), "{out:?}");
}

/// With `--security=insecure` BuildKit's cgroup mount is writable (`WithWriteableCgroupfs`):
/// the step may make a cgroup below its own and set a limit there.
fn insecure_makes_it_writable(runtime: Runtime) {
    host_hierarchies();
    let out = run(
        "cd /sys/fs/cgroup/memory && mkdir sub && echo 16777216 > sub/memory.limit_in_bytes && \
         cat sub/memory.limit_in_bytes && rmdir sub && cat memory.limit_in_bytes",
        Some(32 << 20),
        SecurityMode::Insecure,
        runtime,
    );
    assert_eq!(out, ["16777216", "33554432"]);
}

both_runtimes!(
    memory_limit_reads_back_at_sys_fs_cgroup,
    hierarchies_are_there_and_read_only,
    insecure_makes_it_writable,
);

// --- v2 (embedded) -----------------------------------------------------------------------------

/// Runs `script` with the plugin driving the cgroup2 mount at [`UNIFIED`].
fn run_v2(script: &str, security: SecurityMode) -> Vec<String> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        std::path::Path::new(UNIFIED)
            .join("cgroup.controllers")
            .exists(),
        "the v2 tests need the cgroup2 mount of a hybrid host at {UNIFIED}"
    );
    struct Unset;
    impl Drop for Unset {
        fn drop(&mut self) {
            std::env::remove_var("KILN_CGROUP2_ROOT");
        }
    }
    std::env::set_var("KILN_CGROUP2_ROOT", UNIFIED);
    let _unset = Unset;
    run_locked(script, None, security, Runtime::Embedded)
}

/// The step's cgroup is `/` of its cgroup namespace, and /sys/fs/cgroup is that cgroup, as
/// cgroup2, read-only, holding the step's process (pid 1 of its namespace).
#[test]
fn v2_the_steps_cgroup_is_the_root_of_its_namespace() {
    let out = run_v2(
        "grep '^0::' /proc/self/cgroup; stat -f -c %t /sys/fs/cgroup; \
         cat /sys/fs/cgroup/cgroup.procs | head -n 1; mkdir /sys/fs/cgroup/x 2>&1; true",
        SecurityMode::Sandbox,
    );
    assert_eq!(out[0], "0::/", "{out:?}");
    // CGROUP2_SUPER_MAGIC (busybox's stat has no name for it).
    assert_eq!(out[1], "63677270", "{out:?}");
    assert_eq!(out[2], "1", "{out:?}");
    assert!(out[3].ends_with("Read-only file system"), "{out:?}");
}

/// Insecure: the cgroup2 mount is writable; a cgroup made below the step's goes with it.
#[test]
fn v2_insecure_makes_it_writable() {
    let out = run_v2(
        "mkdir /sys/fs/cgroup/sub && test -f /sys/fs/cgroup/sub/cgroup.procs && echo made && \
         rmdir /sys/fs/cgroup/sub",
        SecurityMode::Insecure,
    );
    assert_eq!(out, ["made"]);
}

/// From outside, the step that reads `0::/` is in `<mount>/kiln/<pid>-<n>` (kiln, this test,
/// lives in the mount's root): the namespace hides the path, not the cgroup. The step blocks on
/// a FIFO while the test looks.
#[test]
fn v2_from_outside_the_step_is_in_its_own_cgroup() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = Rootfs::busybox();
    let gate = common::make_gate(&root);
    let mut req = sh(&root, "grep '^0::' /proc/self/cgroup; cat /gate");
    req.runtime = Runtime::Embedded;
    struct Unset;
    impl Drop for Unset {
        fn drop(&mut self) {
            std::env::remove_var("KILN_CGROUP2_ROOT");
        }
    }
    std::env::set_var("KILN_CGROUP2_ROOT", UNIFIED);
    let _unset = Unset;
    // While the step runs, it is in its cgroup.
    let prefix = format!("{}-", std::process::id());
    let (r, out, populated) = common::run_gated(&gate, req, || {
        std::fs::read_dir(format!("{UNIFIED}/kiln"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| {
                let procs = std::fs::read_to_string(e.path().join("cgroup.procs")).unwrap();
                (e.file_name().to_string_lossy().into_owned(), procs)
            })
            .collect::<Vec<(String, String)>>()
    });
    assert_eq!(r.unwrap(), 0, "{out:?}");
    assert_eq!(out, ["0::/", "go"]);
    assert_eq!(populated.len(), 1, "{populated:?}");
    assert!(!populated[0].1.trim().is_empty(), "{populated:?}");
}
