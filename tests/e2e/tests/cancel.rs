//! Stopping a build that waits on the network: Ctrl-C (SIGINT to the `kiln` process) and
//! fail-fast (another step failed) end `ADD <url>` and `ADD <git url>` steps, and the
//! resolution of a base image, whose server accepted the connection and then went silent, and such a server makes `ADD <url>` fail after
//! its timeout (`KILN_HTTP_TIMEOUT`) even when nobody presses Ctrl-C. The servers run in the
//! test on 127.0.0.1. Needs Debian's `git` and a `kill` command (procps).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use kiln_e2e::*;

/// A digest nothing has, so that a step is pinned (no revalidation before it runs).
fn zero_sum() -> String {
    format!("sha256:{}", "0".repeat(64))
}

/// A server on 127.0.0.1 that reads nothing, writes `answer` (nothing when empty) on each
/// connection and then holds it open without another byte. Every accepted connection is
/// announced on the returned channel. Returns `127.0.0.1:<port>`.
fn stalling(answer: &'static [u8]) -> (String, Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(answer);
            held.push(s);
            let _ = tx.send(());
        }
    });
    (addr, rx)
}

/// An HTTP server on 127.0.0.1 that answers its first request with 404, but only once every
/// `gate` has announced a connection (or after a minute): so its step fails while the others are
/// in flight. Returns `127.0.0.1:<port>`.
fn failing_after(gate: Vec<Receiver<()>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        for g in gate {
            let _ = g.recv_timeout(Duration::from_secs(60));
        }
        let mut r = BufReader::new(s.try_clone().unwrap());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope");
    });
    addr
}

/// A `kiln build --progress=plain` running in the background, its progress read line by line.
struct Build {
    pid: u32,
    lines: Receiver<String>,
    seen: Vec<String>,
    exited: Receiver<i32>,
    stdout: Receiver<String>,
}

impl Build {
    fn start(k: &Kiln, env: &[(&str, &str)], ctx: &Path) -> Build {
        let mut child = Command::new(target_dir().join("kiln"))
            .envs(env.iter().copied())
            .env("KILN_ROOT", k.path("store"))
            .env("KILN_PLUGIN_PATH", k.plugin_dir())
            .args(["build", "--progress=plain", ctx.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln");
        let (err, out) = (child.stderr.take().unwrap(), child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(out).read_to_string(&mut s);
            let _ = tx.send(s);
        });
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let code = child.wait().map_or(-1, |s| s.code().unwrap_or(-1));
            let _ = tx.send(code);
        });
        Build {
            pid,
            lines,
            seen: Vec::new(),
            exited,
            stdout,
        }
    }

    fn kill(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
    }

    /// Reads progress until a line satisfies `pred`; fails (and kills kiln) when none has after
    /// a minute or when kiln ends first.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(l) => {
                    let hit = pred(&l);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(e) => {
                    self.kill();
                    panic!(
                        "kiln never showed {what} ({e:?}):\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Waits until the step named `name` has started (its `#N <name>` progress line).
    fn wait_for_step(&mut self, name: &str) {
        self.wait_for(&format!("the step {name:?} start"), |l| {
            l.starts_with('#') && l.split_once(' ').is_some_and(|(_, rest)| rest == name)
        });
    }

    /// Ctrl-C, as a terminal sends it.
    fn interrupt(&self) {
        tool("kill", &["-INT", &self.pid.to_string()]);
    }

    /// Waits for kiln to exit, at most `secs` seconds (the bug is a hang: after that kiln is
    /// killed and the test fails). Returns its output and how long it took.
    fn finish_within(mut self, secs: u64) -> (Run, Duration) {
        let start = Instant::now();
        let code = match self.exited.recv_timeout(Duration::from_secs(secs)) {
            Ok(code) => code,
            Err(_) => {
                self.kill();
                self.seen.extend(self.lines.try_iter());
                panic!(
                    "kiln did not exit within {secs} s:\n{}",
                    self.seen.join("\n")
                );
            }
        };
        let took = start.elapsed();
        // kiln has exited: its pipes are closed, so the readers end.
        self.seen.extend(self.lines.iter());
        let stdout = self.stdout.recv().unwrap_or_default();
        let run = Run {
            code,
            stdout,
            stderr: self.seen.join("\n"),
        };
        (run, took)
    }
}

/// Asserts that `run` ended by cancellation: a failure that says so, no panic.
fn assert_cancelled(run: &Run, took: Duration) {
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("panicked at"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("ERROR: failed to solve: the build was cancelled"),
        "{}",
        run.stderr
    );
    eprintln!("kiln stopped {took:?} after SIGINT");
}

/// Long enough that a test ending quickly proves cancellation, not the timeout, stopped a step.
const NO_TIMEOUT: (&str, &str) = ("KILN_HTTP_TIMEOUT", "300s");

/// Builds `dockerfile` (in context directory `name`), waits until kiln waits on the stalled
/// server — the step `step` has started, when one is named (a wait while computing cache keys
/// shows no step), and the server has the connection — then presses Ctrl-C once and asserts
/// that kiln ends cancelled within 10 s, the step marked CANCELED.
fn interrupt_while_stalled(
    k: &Kiln,
    name: &str,
    dockerfile: &str,
    step: Option<&str>,
    accepted: &Receiver<()>,
) {
    let ctx = k.write(name, &[("Dockerfile", dockerfile)]);
    let mut b = Build::start(k, &[NO_TIMEOUT], &ctx);
    if let Some(step) = step {
        b.wait_for_step(step);
    }
    accepted
        .recv_timeout(Duration::from_secs(60))
        .expect("kiln connected to the server");
    b.interrupt();
    let (run, took) = b.finish_within(10);
    assert_cancelled(&run, took);
    if let Some(step) = step {
        assert_eq!(run.step_state(step), "CANCELED", "{}", run.stderr);
    }
}

#[test]
fn sigint_stops_stalled_downloads() {
    let k = Kiln::new(&[]);
    for (i, answer) in [
        // No answer at all.
        &b""[..],
        // Headers, then a body that stops arriving.
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nsome"[..],
    ]
    .into_iter()
    .enumerate()
    {
        let (addr, accepted) = stalling(answer);
        let url = format!("http://{addr}/big.iso");
        let dockerfile = format!("FROM scratch\nADD --checksum={} {url} /x\n", zero_sum());
        interrupt_while_stalled(&k, &format!("ctx{i}"), &dockerfile, Some(&url), &accepted);
    }
    // Without a checksum kiln first asks the server what the URL holds now (HEAD, while
    // computing cache keys).
    let (addr, accepted) = stalling(b"");
    let dockerfile = format!("FROM scratch\nADD http://{addr}/file /x\n");
    interrupt_while_stalled(&k, "ctx-head", &dockerfile, None, &accepted);
}

#[test]
fn sigint_stops_a_stalled_git_fetch() {
    let k = Kiln::new(&[]);
    // A git daemon that accepts and never answers: git waits for the ref advertisement forever.
    let (addr, accepted) = stalling(b"");
    let source = format!("git://{addr}/repo.git#{}", "a".repeat(40));
    let dockerfile = format!("FROM scratch\nADD {source} /src/\n");
    interrupt_while_stalled(&k, "ctx", &dockerfile, Some(&source), &accepted);
    // A branch is resolved with ls-remote while computing cache keys.
    let (addr, accepted) = stalling(b"");
    let dockerfile = format!("FROM scratch\nADD git://{addr}/repo.git#main /src/\n");
    interrupt_while_stalled(&k, "ctx-ls-remote", &dockerfile, None, &accepted);
}

#[test]
fn a_failed_step_stops_stalled_downloads_and_fetches() {
    let k = Kiln::new(&[]);
    let (http_addr, http_accepted) = stalling(b"");
    let (git_addr, git_accepted) = stalling(b"");
    let failing = failing_after(vec![http_accepted, git_accepted]);
    let (url, source, missing) = (
        format!("http://{http_addr}/slow"),
        format!("git://{git_addr}/repo.git#{}", "b".repeat(40)),
        format!("http://{failing}/missing"),
    );
    let sum = zero_sum();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM scratch\n\
                 ADD --checksum={sum} {url} /slow\n\
                 ADD {source} /src/\n\
                 ADD --checksum={sum} {missing} /missing\n"
            ),
        )],
    );
    let b = Build::start(&k, &[NO_TIMEOUT], &ctx);
    let (run, _) = b.finish_within(30);
    let run = run.fails();
    assert!(
        run.stderr.contains(&format!(
            "failed to download {missing}: server answered 404 Not Found"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.step_state(&missing), "ERROR", "{}", run.stderr);
    assert_eq!(run.step_state(&url), "CANCELED", "{}", run.stderr);
    assert_eq!(run.step_state(&source), "CANCELED", "{}", run.stderr);
}

#[test]
fn a_stalled_server_fails_add_after_its_timeout() {
    let k = Kiln::new(&[]);
    let timeout = ("KILN_HTTP_TIMEOUT", "2s");
    for (answer, waiting) in [
        (&b""[..], "waiting for the response headers"),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nsome"[..],
            "waiting for the next bytes of the body",
        ),
    ] {
        let (addr, _accepted) = stalling(answer);
        let url = format!("http://{addr}/file");
        let ctx = k.write(
            &format!("ctx-{}", answer.len()),
            &[(
                "Dockerfile",
                &format!("FROM scratch\nADD --checksum={} {url} /x\n", zero_sum()),
            )],
        );
        let (run, _) = Build::start(&k, &[timeout], &ctx).finish_within(60);
        let run = run.fails();
        assert!(
            run.stderr.contains(&format!(
                "failed to download {url}: timed out after 2s {waiting}"
            )),
            "{}",
            run.stderr
        );
        assert_eq!(run.step_state(&url), "ERROR", "{}", run.stderr);
    }
    // Revalidating an unpinned URL is bounded the same way.
    let (addr, _accepted) = stalling(b"");
    let url = format!("http://{addr}/file");
    let ctx = k.write(
        "ctx-head",
        &[("Dockerfile", &format!("FROM scratch\nADD {url} /x\n"))],
    );
    let (run, _) = Build::start(&k, &[timeout], &ctx).finish_within(60);
    let run = run.fails();
    assert!(
        run.stderr.contains(&format!(
            "failed to download {url}: timed out after 2s waiting for the response headers"
        )),
        "{}",
        run.stderr
    );

    // A bad value is refused, naming the variable.
    let ctx = k.write(
        "ctx-bad",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={} {url} /x\n", zero_sum()),
        )],
    );
    let (run, _) = Build::start(&k, &[("KILN_HTTP_TIMEOUT", "soon")], &ctx).finish_within(60);
    let run = run.fails();
    assert!(
        run.stderr.contains("invalid KILN_HTTP_TIMEOUT=\"soon\""),
        "{}",
        run.stderr
    );
}

#[test]
fn sigint_stops_a_stalled_registry() {
    // A registry that accepts and never answers, while the frontend resolves the base image.
    let k = Kiln::new(&[]);
    let (addr, accepted) = stalling(b"");
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", &format!("FROM {addr}/base:1\nCOPY . /\n"))],
    );
    let b = Build::start(&k, &[], &ctx);
    accepted
        .recv_timeout(Duration::from_secs(60))
        .expect("kiln connected to the registry");
    b.interrupt();
    let (run, took) = b.finish_within(10);
    assert_cancelled(&run, took);
}
