//! Resource limits of a RUN step (issue 13 item 3), with both runtimes: the step runs in a
//! cgroup of its own (`/kiln/<pid>-<n>` in the v1 memory, cpu and pids hierarchies), a step
//! allocating more than its memory limit fails with an error naming the limit, a pids limit
//! stops forks, and the cgroup is gone after the step. Needs cgroup v1 (this host's hybrid).
//! The `v2_*` cases drive the v2 code path on the hybrid host's controller-less cgroup2 mount.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::{exec_op, require_runc, sh, Recorder, Rootfs};
use kiln_exec::{execute, Error};
use kiln_plugin_sdk::proto::{Runtime, StepLimits};

/// One step at a time: the leftover check looks at every cgroup of this test process.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(script: &str, limits: StepLimits, runtime: Runtime) -> (Result<i32, Error>, Vec<String>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    run_locked(script, limits, runtime)
}

/// The cgroup2 mount of this v1-hybrid host, whose only controller is hugetlb.
const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// [`run`] with the plugin told to drive the cgroup2 mount at [`UNIFIED`] (`KILN_CGROUP2_ROOT`),
/// the v2 code path. The variable is set only while no other step of this binary runs.
fn run_v2(script: &str, limits: StepLimits) -> (Result<i32, Error>, Vec<String>) {
    run_v2_in(None, script, limits)
}

/// [`run_v2`] with this test process moved into the cgroup `own` of the unified mount (made
/// for the run, the process moved back to the root and `own` removed after).
fn run_v2_in(
    own: Option<&str>,
    script: &str,
    limits: StepLimits,
) -> (Result<i32, Error>, Vec<String>) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    struct Moved(Option<std::path::PathBuf>);
    impl Drop for Moved {
        fn drop(&mut self) {
            if let Some(dir) = &self.0 {
                let root = std::path::Path::new(UNIFIED).join("cgroup.procs");
                let _ = std::fs::write(root, std::process::id().to_string());
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    let _moved = Moved(own.map(|own| {
        let dir = std::path::Path::new(UNIFIED).join(own.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        dir
    }));
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
    run_locked(script, limits, Runtime::Embedded)
}

fn run_locked(
    script: &str,
    limits: StepLimits,
    runtime: Runtime,
) -> (Result<i32, Error>, Vec<String>) {
    let root = Rootfs::busybox();
    let mut req = sh(&root, script);
    req.limits = limits;
    req.runtime = runtime;
    let _ = exec_op(&mut req);
    let rec = Recorder::new();
    let r = execute(req, &rec).map(|resp| resp.exit_code.unwrap());
    let mut lines = rec.stdout();
    lines.extend(rec.stderr());
    assert!(leftovers().is_empty(), "cgroups left: {:?}", leftovers());
    (r, lines)
}

/// This process's step cgroups still on the host.
fn leftovers() -> Vec<String> {
    let prefix = format!("{}-", std::process::id());
    let mut out = Vec::new();
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").unwrap();
    // v1 hierarchies (and a hybrid host's `unified`), or a v2 host's parent of the step cgroups.
    let mut parents: Vec<(String, std::path::PathBuf)> = hierarchies
        .flatten()
        .map(|h| (h.file_name().to_string_lossy().into_owned(), h.path()))
        .collect();
    if let Some(base) = v2_base() {
        parents.push((
            base.clone(),
            std::path::Path::new("/sys/fs/cgroup").join(base.trim_start_matches('/')),
        ));
    }
    for (c, h) in parents {
        if let Ok(dir) = std::fs::read_dir(h.join("kiln")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    out.push(format!("{c}/kiln/{name}"));
                }
            }
        }
    }
    out
}

fn limits(memory: Option<u64>, cpu_quota: Option<u64>, pids: Option<u64>) -> StepLimits {
    StepLimits {
        memory,
        cpu_quota,
        pids,
    }
}

// --- cases, each run with both runtimes --------------------------------------------------------

/// Embedded only: runc's step is in the nested `<step cgroup>/runc` (the OOM and pids cases show
/// that its limits hold). On v2 the step has a cgroup namespace rooted at its cgroup, where
/// the path reads `/` (`limits_are_in_the_cgroup_files_while_the_step_runs` finds it from
/// outside).
#[test]
fn the_step_runs_in_its_own_cgroup() {
    let runtime = Runtime::Embedded;
    let (r, out) = run(
        "cat /proc/self/cgroup",
        limits(Some(256 << 20), Some(50_000), Some(100)),
        runtime,
    );
    assert_eq!(r.unwrap(), 0, "{out:?}");
    if v2_base().is_some() {
        assert!(out.iter().any(|l| l == "0::/"), "{out:?}");
        return;
    }
    for c in ["memory", "cpu", "pids"] {
        let line = out
            .iter()
            .find(|l| {
                l.split(':')
                    .nth(1)
                    .is_some_and(|cs| cs.split(',').any(|x| x == c))
            })
            .unwrap_or_else(|| panic!("no {c} line in {out:?}"));
        assert!(
            line.contains(&format!(":/kiln/{}-", std::process::id())),
            "{c}: {line}"
        );
    }
}

/// On a cgroup v2 host, the cgroup below which kiln (this process) puts its steps: its own,
/// or the parent of the `init` leaf it moved itself to. `None` on v1.
fn v2_base() -> Option<String> {
    if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return None;
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    Some(match own.strip_suffix("/init") {
        Some("") => "/".to_owned(),
        Some(parent) => parent.to_owned(),
        None => own.to_owned(),
    })
}

fn memory_over_the_limit_is_an_oom_error_naming_it(runtime: Runtime) {
    // The shell keeps a 96 MiB string: more than the 32 MiB limit.
    let (r, out) = run(
        "x=$(head -c 100663296 /dev/zero | tr '\\0' a); echo survived ${#x}",
        limits(Some(32 << 20), None, None),
        runtime,
    );
    let err = r.expect_err(&format!("the step survived: {out:?}"));
    let text = err.to_string();
    assert!(
        matches!(err, Error::OutOfMemory { limit } if limit == 32 << 20),
        "{text}"
    );
    assert!(
        text.contains("OOM killer") && text.contains("32MiB"),
        "{text}"
    );
    assert!(!out.iter().any(|l| l.starts_with("survived")), "{out:?}");
}

fn pids_limit_stops_forks(runtime: Runtime) {
    let (r, out) = run(
        "i=0; while [ $i -lt 30 ]; do sleep 5 & i=$((i+1)); done; echo started",
        limits(None, None, Some(10)),
        runtime,
    );
    assert!(
        out.iter().any(|l| l.contains("can't fork")),
        "{r:?} {out:?}"
    );
}

/// Limits or not, a step runs in a cgroup of its own in every v1 hierarchy (as runc puts a
/// container), so that its `/sys/fs/cgroup` shows its own and not kiln's and the host's.
fn every_step_has_its_own_cgroup_in_every_hierarchy(runtime: Runtime) {
    let (r, out) = run("cat /proc/self/cgroup", StepLimits::default(), runtime);
    assert_eq!(r.unwrap(), 0);
    let prefix = format!(":/kiln/{}-", std::process::id());
    let v1: Vec<&String> = out.iter().filter(|l| !l.starts_with("0::")).collect();
    assert!(!v1.is_empty() || v2_base().is_some(), "{out:?}");
    for line in v1 {
        assert!(line.contains(&prefix), "{line} is not the step's: {out:?}");
    }
}

/// The step's cgroup files hold the limits while it runs: on v1 (this host) and on a v2 host
/// alike. The step blocks in `cat /gate` (a FIFO) until the test, whose open for writing
/// returns once the step has it open, has read them.
fn limits_are_in_the_cgroup_files_while_the_step_runs(runtime: Runtime) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = Rootfs::busybox();
    let gate = common::make_gate(&root);
    let mut req = sh(&root, "cat /gate && echo released");
    req.limits = limits(Some(64 << 20), Some(20_000), Some(50));
    req.runtime = runtime;
    let _ = exec_op(&mut req);
    let (r, out, files) = common::run_gated(&gate, req, limit_files);
    assert_eq!(r.unwrap(), 0, "{out:?}");
    assert!(out.iter().any(|l| l == "released"), "{out:?}");
    let expected: &[(&str, &str)] = if v2_base().is_some() {
        &[
            ("memory.max", "67108864"),
            ("cpu.max", "20000 100000"),
            ("pids.max", "50"),
        ]
    } else {
        &[
            ("memory.limit_in_bytes", "67108864"),
            ("cpu.cfs_quota_us", "20000"),
            ("cpu.cfs_period_us", "100000"),
            ("pids.max", "50"),
        ]
    };
    for (file, value) in expected {
        assert_eq!(
            files
                .iter()
                .find(|(f, _)| f == file)
                .map(|(_, v)| v.as_str()),
            Some(*value),
            "{file} in {files:?}"
        );
    }
    if let Some((_, swap)) = files.iter().find(|(f, _)| f == "memory.swap.max") {
        assert_eq!(
            swap, "67108864",
            "docker's --memory alone allows as much swap"
        );
    }
    assert!(leftovers().is_empty(), "cgroups left: {:?}", leftovers());
}

/// `(file, contents)` of the limit files of this process's step cgroup (one step at a time):
/// v1's memory, cpu and pids hierarchies, or v2's `<base>/kiln/<pid>-<n>`.
fn limit_files() -> Vec<(String, String)> {
    let cgroup = std::path::Path::new("/sys/fs/cgroup");
    let dirs: Vec<std::path::PathBuf> = if let Some(base) = v2_base() {
        vec![cgroup.join(base.trim_start_matches('/')).join("kiln")]
    } else {
        ["memory", "cpu", "pids"]
            .iter()
            .map(|h| cgroup.join(h).join("kiln"))
            .collect()
    };
    let prefix = format!("{}-", std::process::id());
    let mut out = Vec::new();
    for parent in dirs {
        for step in std::fs::read_dir(&parent).unwrap().flatten() {
            if !step.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for file in [
                "memory.max",
                "memory.swap.max",
                "cpu.max",
                "pids.max",
                "memory.limit_in_bytes",
                "cpu.cfs_quota_us",
                "cpu.cfs_period_us",
            ] {
                if let Ok(v) = std::fs::read_to_string(step.path().join(file)) {
                    out.push((file.to_owned(), v.trim().to_owned()));
                }
            }
        }
    }
    out
}

both_runtimes!(
    memory_over_the_limit_is_an_oom_error_naming_it,
    pids_limit_stops_forks,
    every_step_has_its_own_cgroup_in_every_hierarchy,
    limits_are_in_the_cgroup_files_while_the_step_runs,
);

// --- the cgroup v2 path, on this host's controller-less cgroup2 mount --------------------------
// Embedded only: runc picks its own cgroup driver from /sys/fs/cgroup (v1 here), so it cannot
// be pointed at the unified mount.

/// What a v2 step says of its cgroup: it is the root of its cgroup namespace (so its path is
/// hidden from it), a cgroup below the hierarchy's root (which has no `cgroup.freeze`).
const STEP_CGROUP: &str =
    "grep '^0::' /proc/self/cgroup; test -f /sys/fs/cgroup/cgroup.freeze && echo below the root";

/// On v2 every step gets a cgroup of its own, limits or not (as BuildKit's steps).
#[test]
fn v2_a_step_without_limits_runs_in_its_own_cgroup_which_is_removed() {
    let (r, out) = run_v2(STEP_CGROUP, StepLimits::default());
    assert_eq!(r.unwrap(), 0, "{out:?}");
    // This test process lives in the mount's root: the step's cgroup namespace (rooted at its
    // cgroup, `/kiln/<pid>-<n>` from outside: `cgroupfs.rs`) is not that root.
    assert_eq!(out, ["0::/", "below the root"]);
    // `run` checked that nothing is left under {UNIFIED}/kiln.
}

/// As root, step cgroups go below the root of the hierarchy (BuildKit's `/buildkit`, v1's
/// `/kiln`), not into the cgroup kiln was started in (a login session, a service), which stays
/// as it was: no `kiln` or `init` child, kiln's process not moved.
#[test]
fn v2_as_root_steps_go_below_the_root_not_into_kilns_own_cgroup() {
    let own = format!("/kiln-test-own-{}", std::process::id());
    let dir = std::path::Path::new(UNIFIED).join(own.trim_start_matches('/'));
    let (r, out) = run_v2_in(Some(&own), STEP_CGROUP, StepLimits::default());
    assert_eq!(r.unwrap(), 0, "{out:?}");
    assert_eq!(out, ["0::/", "below the root"]);
    assert!(!dir.exists(), "{} is left", dir.display());
}

#[test]
fn v2_a_limit_whose_controller_is_not_delegated_is_refused_naming_it() {
    let (r, out) = run_v2("echo ran", limits(Some(32 << 20), None, Some(10)));
    let err = r.expect_err(&format!("the step ran: {out:?}"));
    let text = err.to_string();
    assert!(matches!(err, Error::Unsupported(_)), "{text}");
    assert!(
        text.contains("memory limit (--memory)")
            && text.contains("memory cgroup controller is not available")
            && text.contains(UNIFIED),
        "{text}"
    );
    assert!(!out.iter().any(|l| l == "ran"), "{out:?}");
}
