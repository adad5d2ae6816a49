//! Per-step cgroup limits end to end (issue 13 item 3): `kiln build --memory / --pids-limit`
//! and `[build]` in kiln.toml reach the exec plugin, a step over its memory limit fails the
//! build naming the limit and the step, and no step cgroup is left behind. Needs cgroup v1
//! hierarchies (memory, pids) as the exec plugin's limits do (docs/sandbox.md). A `kiln serve`
//! daemon applies the limits a client sends.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use kiln_e2e::serve::Daemon;
use kiln_e2e::*;

/// The shell keeps a 96 MiB string: more than a 32 MiB limit (busybox `head | tr` in a
/// command substitution really allocates, unlike a pipe to /dev/null).
const ALLOCATE: &str = "RUN x=$(head -c 100663296 /dev/zero | tr '\\0' a); echo survived ${#x}\n";

/// Step cgroups `<hierarchy>/kiln/<pid>-<n>` on the host now.
fn step_cgroups() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").expect("/sys/fs/cgroup (cgroup v1)");
    for h in hierarchies.flatten() {
        if let Ok(dir) = std::fs::read_dir(h.path().join("kiln")) {
            for e in dir.flatten() {
                if e.path().is_dir() {
                    out.insert(format!(
                        "{}/kiln/{}",
                        h.file_name().to_string_lossy(),
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    out
}

/// Cgroups that appeared since `before` and whose process is gone: left by the finished kiln
/// (a concurrent test's live process may still hold its own).
fn left_since(before: &BTreeSet<String>) -> Vec<String> {
    step_cgroups()
        .difference(before)
        .filter(|c| {
            let pid = c.rsplit('/').next().unwrap().split('-').next().unwrap();
            !Path::new("/proc").join(pid).exists()
        })
        .cloned()
        .collect()
}

fn require_cgroup_v1() {
    for c in ["memory", "pids"] {
        assert!(
            Path::new("/sys/fs/cgroup").join(c).join("tasks").exists(),
            "these tests need the cgroup v1 {c} hierarchy at /sys/fs/cgroup/{c}"
        );
    }
}

fn assert_oom(run: &Run) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked at"), "{}", run.stderr);
    assert!(
        run.stderr.contains("32MiB"),
        "no limit named:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("head -c 100663296"),
        "no step named:\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("survived 100663296"), "{}", run.stderr);
}

#[test]
fn a_step_over_its_memory_flag_fails_naming_the_limit_and_the_step() {
    require_cgroup_v1();
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", &format!("FROM bb\n{ALLOCATE}"))]);
    let before = step_cgroups();
    let run = build_bb(&k, &[], &ctx, &["--memory", "32m"]);
    assert_oom(&run);
    assert_eq!(left_since(&before), Vec::<String>::new());
    // Without the limit the same step runs to the end: the failure was the limit's.
    build_bb(&k, &[], &ctx, &[]).ok();
}

#[test]
fn the_memory_limit_comes_from_kiln_toml_and_the_flag_overrides_it() {
    require_cgroup_v1();
    let k = Kiln::new(&[]);
    k.write(
        "xdg-config/kiln",
        &[("kiln.toml", "[build]\nmemory = \"32MiB\"\n")],
    );
    let shown = k.run(&["config", "show"]).ok();
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.starts_with("build.memory = 33554432") && l.contains("kiln.toml")),
        "{}",
        shown.stdout
    );
    let ctx = k.write("ctx", &[("Dockerfile", &format!("FROM bb\n{ALLOCATE}"))]);
    let before = step_cgroups();
    assert_oom(&build_bb(&k, &[], &ctx, &[]));
    assert_eq!(left_since(&before), Vec::<String>::new());
    build_bb(&k, &[], &ctx, &["--memory", "512m"]).ok();
}

#[test]
fn a_pids_limit_stops_forks() {
    require_cgroup_v1();
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nRUN i=0; while [ $i -lt 30 ]; do sleep 5 & i=$((i+1)); done; wait; echo all-started\n",
        )],
    );
    let before = step_cgroups();
    let run = build_bb(&k, &[], &ctx, &["--pids-limit", "10", "--no-cache"]);
    assert!(
        run.stderr.contains("can't fork"),
        "code {}:\n{}",
        run.code,
        run.stderr
    );
    assert_eq!(left_since(&before), Vec::<String>::new());
}

#[test]
fn bad_limit_flags_are_refused_before_the_build() {
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\nRUN true\n")]);
    let run = build_bb(&k, &[], &ctx, &["--memory", "12x"]).fails();
    assert!(
        run.stderr.contains("invalid --memory \"12x\""),
        "{}",
        run.stderr
    );
    // `-m`, docker build's short form, is the same flag.
    let run = build_bb(&k, &[], &ctx, &["-m", "12x"]).fails();
    assert!(
        run.stderr.contains("invalid --memory \"12x\""),
        "{}",
        run.stderr
    );
    let run = build_bb(&k, &[], &ctx, &["--cpu-quota", "10"]).fails();
    assert!(run.stderr.contains("at least 1000"), "{}", run.stderr);
}

#[test]
fn a_daemon_applies_the_limits_its_client_sends() {
    require_cgroup_v1();
    let k = Kiln::new(&[]);
    let daemon = Daemon::unix(&k, "run/kiln.sock", "daemon-root", &[]);
    let ctx = k.write("ctx", &[("Dockerfile", &format!("FROM bb\n{ALLOCATE}"))]);
    let run = build_bb(
        &k,
        &[],
        &ctx,
        &["--builder", &daemon.addr, "--memory", "32m"],
    );
    assert_oom(&run);
    // The daemon lives on: none of its step cgroups may be left.
    let prefix = format!("/kiln/{}-", daemon.pid());
    let left: Vec<String> = step_cgroups()
        .into_iter()
        .filter(|c| c.contains(&prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    build_bb(&k, &[], &ctx, &["--builder", &daemon.addr]).ok();
}
