//! A SIGKILLed `kiln build` leaves no process behind: not the ssh-agent it runs for `--ssh
//! ID=KEYFILE`, not a `runc` container (executor runc), not the RUN step's own processes. A
//! SIGKILL runs none of kiln's cleanup, so what must die with it has to be arranged before.
//!
//! The build's processes are found by markers, not by name (other tests run at the same time):
//! kiln runs with `TMPDIR` set to a directory of this test, which its helpers carry in their
//! environment or command line (agent socket, runc state and bundle), and the step's
//! processes carry an `ENV` of the Dockerfile.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_e2e::*;

/// Processes (other than this test) whose command line or environment contains `needle`:
/// `pid: command line`.
fn processes_marked(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        // A process may end while it is looked at: what cannot be read is not there.
        let read = |f: &str| std::fs::read(e.path().join(f)).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let environ = String::from_utf8_lossy(&read("environ")).into_owned();
        if cmdline.contains(needle) || environ.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Every process of the build: by the test's TMPDIR, or by the step's marker.
fn build_processes(tmp: &Path, mark: &str) -> Vec<String> {
    let mut all = processes_marked(&tmp.display().to_string());
    all.extend(processes_marked(mark));
    all.sort();
    all.dedup();
    all
}

/// Starts `kiln build ARGS` on a Dockerfile whose RUN prints a line and sleeps, waits for the
/// line, checks that the processes the test looks for are there, SIGKILLs kiln, and returns
/// what remains of the build `bound` later (or as soon as nothing does).
fn kill_during_run(
    k: &Kiln,
    name: &str,
    args: &[&str],
    ssh: bool,
    expect_running: &[&str],
) -> Vec<String> {
    let reg = test_registry();
    let tmp = k.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // Unique to this build, so that a concurrent test's processes never match.
    let mark = format!("kiln-orphan-{name}-{}", std::process::id());
    let mount = if ssh { "--mount=type=ssh " } else { "" };
    let ctx = k.write(
        name,
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 ENV ORPHAN_MARK={mark}\n\
                 RUN {mount}echo step-$((40+2))-started && sleep 3600\n"
            ),
        )],
    );
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let c = ctx.display().to_string();
    all.push(&c);
    let mut build = k.spawn(&[("TMPDIR", tmp.to_str().unwrap())], &all);
    assert!(
        // The arithmetic is done by the step's shell: the step's name in the progress does
        // not match.
        build.wait_for_line("step-42-started", Duration::from_secs(120)),
        "the step never started:\n{}",
        build.seen.join("\n")
    );
    // The markers find what they must: otherwise "nothing left" would prove nothing.
    let running = build_processes(&tmp, &mark);
    for want in expect_running {
        assert!(
            running.iter().any(|p| p.contains(want)),
            "no {want:?} among the build's processes while the step runs: {running:#?}"
        );
    }
    let st = std::process::Command::new("kill")
        .args(["-KILL", &build.id().to_string()])
        .status()
        .expect("kill (procps) is required for this test");
    assert!(st.success());
    let (code, _) = build.finish(Duration::from_secs(30));
    assert_eq!(code, -1, "kiln was ended by the signal");
    // Cleanup after kiln's death takes a moment (a runc container is deleted by runc); a
    // generous bound: without it they live as long as the step's `sleep 3600`.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = build_processes(&tmp, &mark);
        if left.is_empty() {
            // Their directories (the agent's, with its log; runc's state and bundle) go with
            // them. (A step's own ssh socket, which kiln serves itself, is a file a SIGKILL
            // does leave behind.)
            left.extend(
                std::fs::read_dir(&tmp)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| {
                        let n = p.file_name().unwrap().to_string_lossy();
                        n.starts_with("kiln-runc-")
                            || (n.starts_with("kiln-ssh-") && p.join("agent.log").exists())
                    })
                    .map(|p| format!("directory {}", p.display())),
            );
        }
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkilled_build_leaves_no_ssh_agent_and_no_step() {
    let k = Kiln::new(&[]);
    let key = k.path("id_ed25519");
    tool(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
    );
    let spec = format!("default={}", key.display());
    let left = kill_during_run(
        &k,
        "ssh",
        &["--ssh", &spec],
        true,
        &["ssh-agent", "sleep 3600"],
    );
    assert!(
        left.is_empty(),
        "processes or directories of the killed build remain: {left:#?}"
    );
}

#[test]
fn sigkilled_build_leaves_no_runc_container() {
    let k = Kiln::new(&[]);
    let left = kill_during_run(
        &k,
        "runc",
        &["--executor", "runc"],
        false,
        &["runc", "sleep 3600"],
    );
    assert!(
        left.is_empty(),
        "processes or directories of the killed build remain: {left:#?}"
    );
}
