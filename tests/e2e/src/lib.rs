//! Harness for kiln's end-to-end tests: builds the `kiln` binary and the plugins once, gives
//! each test its own store and plugin directory, and runs the real binary and real tools.
//!
//! Must not depend on any kiln crate: the tests see kiln only as a user does.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod dockerd;
pub mod registry;
pub mod serve;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The cargo target directory holding the debug artifacts.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("debug"),
        None => workspace().join("target/debug"),
    }
}

const PACKAGES: &[&str] = &[
    "kiln-cli",
    "kiln-frontend-dockerfile",
    "kiln-test-echo-frontend",
    "kiln-test-panic",
    "kiln-test-bad-abi",
    "kiln-test-not-plugin",
    "kiln-test-greet",
    "kiln-exec",
    "kiln-http",
    "kiln-git",
    "kiln-include",
    "kiln-packages",
    "kiln-frontend-spec",
];

/// The plugins shipped with kiln (under `plugins/` and `frontends/`).
const BUNDLED: &[&str] = &[
    "kiln-frontend-dockerfile",
    "kiln-exec",
    "kiln-http",
    "kiln-git",
    "kiln-include",
    "kiln-packages",
    "kiln-frontend-spec",
];

/// buildx's switch for its default attestations, which kiln honours (see [`Kiln::command`]).
pub const NO_DEFAULT_ATTESTATIONS: &str = "BUILDX_NO_DEFAULT_ATTESTATIONS";

/// Set by `cargo xtask test` once it has built the workspace and installed the bundled
/// plugins: each test process (nextest runs one per test) then skips its own `cargo build`,
/// which costs half a second and takes the target directory's lock even when nothing changed.
pub const PREBUILT_ENV: &str = "KILN_E2E_PREBUILT";

/// Builds the binary and plugins the tests use (skipped under `cargo xtask test`, which built
/// them: see [`PREBUILT_ENV`]).
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os(PREBUILT_ENV).is_some() {
            let kiln = target_dir().join("kiln");
            assert!(
                kiln.is_file(),
                "{PREBUILT_ENV} is set but {} does not exist: run `cargo xtask test`",
                kiln.display()
            );
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace()).arg("build").arg("--quiet");
        for p in PACKAGES {
            cmd.args(["-p", p]);
        }
        let out = cmd.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "building kiln and its plugins failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `kiln` searches `<its dir>/plugins` first: refresh the bundled plugins there, as
        // `cargo xtask test` does, so a stale copy never shadows what was just built.
        let bundled = target_dir().join("plugins");
        std::fs::create_dir_all(&bundled).unwrap();
        for p in BUNDLED {
            let lib = plugin_lib(p);
            let tmp = bundled.join(format!(".{}.{}.tmp", p, std::process::id()));
            std::fs::copy(&lib, &tmp).unwrap();
            std::fs::rename(&tmp, bundled.join(lib.file_name().unwrap())).unwrap();
        }
    });
}

/// The built shared library of package `name`.
pub fn plugin_lib(package: &str) -> PathBuf {
    target_dir().join(format!("lib{}.so", package.replace('-', "_")))
}

/// One test's sandbox: a store, a plugin dir with chosen plugins, scratch space.
pub struct Kiln {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
}

impl Kiln {
    /// A sandbox whose plugin directory holds `plugins` (package names).
    pub fn new(plugins: &[&str]) -> Self {
        ensure_built();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
        let k = Kiln { dir };
        for p in plugins {
            k.add_plugin(p);
        }
        k
    }

    /// Copies the library of package `package` into the plugin directory.
    pub fn add_plugin(&self, package: &str) {
        let lib = plugin_lib(package);
        let dest = self.plugin_dir().join(lib.file_name().unwrap());
        std::fs::copy(&lib, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
    }

    /// Unpacks the OCI tarball `tar` (tag `tag`) with umoci into `<name>-bundle`, after
    /// extracting the layout into `<name>-layout`; returns the bundle directory.
    pub fn unpack(&self, tar: &Path, name: &str, tag: &str) -> PathBuf {
        let layout = self.path(&format!("{name}-layout"));
        std::fs::create_dir_all(&layout).unwrap();
        tool(
            "tar",
            &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
        );
        let bundle = self.path(&format!("{name}-bundle"));
        let image = format!("{}:{tag}", layout.display());
        tool(
            "umoci",
            &["unpack", "--image", &image, bundle.to_str().unwrap()],
        );
        bundle
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// A path inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes files (relative path, content) under `rel`, creating directories.
    pub fn write(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.path(rel);
        for (p, c) in files {
            let f = root.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// Runs `kiln ARGS` with this sandbox's store, and its plugin directory as
    /// `KILN_PLUGIN_PATH` (searched after the plugins next to the binary).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env(&[], args)
    }

    /// [`Kiln::run`] with `input` written to kiln's standard input (then closed).
    pub fn run_stdin(&self, input: &[u8], args: &[&str]) -> Run {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(target_dir().join("kiln"))
            .env("XDG_CONFIG_HOME", self.path("xdg-config"))
            .env("KILN_ROOT", self.path("store"))
            .env("KILN_PLUGIN_PATH", self.plugin_dir())
            .env(NO_DEFAULT_ATTESTATIONS, "1")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kiln");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // kiln may stop reading early (a refused input): a broken pipe is its answer, not ours.
        let _ = stdin.write_all(input);
        drop(stdin);
        Run::from(child.wait_with_output().expect("wait for kiln"))
    }

    /// [`Kiln::run`] with extra environment variables.
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        let out = self.command(env, args).output().expect("run kiln");
        Run::from(out)
    }

    /// The `kiln` command on this test's store and plugins.
    fn command(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = Command::new(target_dir().join("kiln"));
        // A developer's own ~/.config/kiln/kiln.toml must not steer the tests; a test may
        // still give its own.
        cmd.env("XDG_CONFIG_HOME", self.path("xdg-config"));
        // A push gets buildx's default provenance attestation (docs/attestations.md), which
        // changes the pushed digests tests compare; attest.rs tests the default by setting
        // this back.
        cmd.env(NO_DEFAULT_ATTESTATIONS, "1");
        cmd.envs(env.iter().copied());
        cmd.env("KILN_ROOT", self.path("store"))
            .env("KILN_PLUGIN_PATH", self.plugin_dir());
        cmd.args(args);
        cmd
    }

    /// Starts `kiln` in the background (stdin and stdout closed), its stderr (the progress)
    /// read line by line, for tests that act while a build runs.
    pub fn spawn(&self, env: &[(&str, &str)], args: &[&str]) -> Background {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = self
            .command(env, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }
}

/// A `kiln` started by [`Kiln::spawn`].
pub struct Background {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// The progress lines read so far.
    pub seen: Vec<String>,
}

impl Background {
    /// Its process id (to signal it).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// When kiln has ended already: its exit status and the progress it printed.
    pub fn ended(&mut self) -> Option<(std::process::ExitStatus, String)> {
        let status = self.child.try_wait().expect("poll kiln")?;
        self.seen.extend(self.lines.try_iter());
        Some((status, self.seen.join("\n")))
    }

    /// Reads progress until a line contains `needle` (true) or kiln ends first (false); kills
    /// it and panics when `bound` passes first (hanging is what such tests look for).
    pub fn wait_for_line(&mut self, needle: &str, bound: std::time::Duration) -> bool {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no {needle:?} from kiln within {bound:?}:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }

    /// Waits for kiln to end within `bound` (else kills it and panics): its exit code (-1 when
    /// a signal ended it) and its whole progress output.
    pub fn finish(mut self, bound: std::time::Duration) -> (i32, String) {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "kiln did not end within {bound:?}:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
        let status = self.child.wait().expect("wait for kiln");
        (status.code().unwrap_or(-1), self.seen.join("\n"))
    }
}

/// The result of one command.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error (progress goes here).
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts success, showing the output otherwise.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "kiln failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts failure, showing the output otherwise.
    pub fn fails(self) -> Self {
        assert_ne!(
            self.code, 0,
            "kiln unexpectedly succeeded:\n{}\n{}",
            self.stdout, self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "a panic reached the user:\n{}",
            self.stderr
        );
        self
    }

    /// The `#N <name>` steps and their final word (CACHED / DONE / ERROR), in order.
    pub fn steps(&self) -> Vec<(String, String)> {
        let mut names: Vec<(String, String)> = Vec::new();
        let mut numbers: Vec<String> = Vec::new();
        for line in self.stderr.lines() {
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            let Some((n, text)) = rest.split_once(' ') else {
                continue;
            };
            match numbers.iter().position(|x| x == n) {
                None => {
                    numbers.push(n.to_owned());
                    names.push((text.to_owned(), String::new()));
                }
                Some(i) => {
                    for word in ["CACHED", "DONE", "ERROR", "CANCELED"] {
                        if text.starts_with(word) {
                            names[i].1 = word.to_owned();
                        }
                    }
                }
            }
        }
        names
    }

    /// The final word (CACHED / DONE / ERROR / CANCELED) of the first step whose name contains
    /// `needle`; empty when no such step was shown.
    pub fn step_state(&self, needle: &str) -> String {
        self.steps()
            .into_iter()
            .find(|(n, _)| n.contains(needle))
            .map(|(_, s)| s)
            .unwrap_or_default()
    }

    /// The image digest from the `built sha256:...` summary line.
    pub fn digest(&self) -> String {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("built "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no digest in output:\n{}", self.stderr))
            .to_owned()
    }
}

/// Runs an external tool, failing the test with its output when it fails.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is required for this test (cargo xtask test installs it): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `127.0.0.1:<port>` of the loopback registry holding `busybox:latest`, started by
/// `cargo xtask test` (which also builds and pushes the fixture).
pub fn test_registry() -> String {
    std::env::var("KILN_TEST_REGISTRY").unwrap_or_else(|_| {
        panic!(
            "KILN_TEST_REGISTRY is not set: run the tests with `cargo xtask test`, which starts \
             the loopback registry and pushes the busybox fixture"
        )
    })
}

/// Mount points under `dir` that are still mounted (none may outlive a build).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// Every file under `dir` whose bytes contain `needle` (for "the secret is nowhere" checks).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(p);
                    }
                }
            }
        }
    }
    hits
}

/// `kiln build --progress=plain --output type=local,dest=OUT [EXTRA...] CTX`.
pub fn build_local(k: &Kiln, ctx: &Path, out: &Path) -> Run {
    build_local_with(k, ctx, out, &[])
}

/// [`build_local`] with extra flags before the context.
pub fn build_local_with(k: &Kiln, ctx: &Path, out: &Path, extra: &[&str]) -> Run {
    let dest = format!("type=local,dest={}", out.display());
    let mut args = vec!["build", "--progress=plain", "--output", &dest];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args)
}

/// Runs `script` with `sh -e` in `dir`, with a git identity set; fails the test when it fails.
/// Returns its standard output, trimmed.
pub fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `git daemon` serving `base` on 127.0.0.1; killed on drop.
pub struct GitDaemon {
    child: std::process::Child,
    /// `git://127.0.0.1:<port>`.
    pub url: String,
}

impl GitDaemon {
    /// Starts it and waits (bounded) until it listens.
    pub fn start(base: &Path) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::process::Stdio;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Run git-daemon itself, not `git daemon`: the `git` wrapper would fork it as a child
        // that outlives a kill of the wrapper.
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git (Debian package git) is required");
        let daemon =
            Path::new(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-daemon");
        let child = Command::new(daemon)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .args([
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .spawn()
            .expect("git daemon (Debian package git) is required");
        // Wait for the listening socket (bounded), not for a fixed time.
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        GitDaemon {
            child,
            url: format!("git://127.0.0.1:{port}"),
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving the files under `dir` by path (`GET /a/b` →
/// `dir/a/b`), 404 for anything else, `Connection: close`. It runs on a detached thread for the
/// rest of the test process. Returns `http://127.0.0.1:<port>`.
pub fn serve_files(dir: &Path) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let answer = |s: &mut std::net::TcpStream| -> std::io::Result<()> {
                let mut r = BufReader::new(s.try_clone()?);
                let mut line = String::new();
                r.read_line(&mut line)?;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h)? == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let file = dir.join(path.trim_start_matches('/'));
                let (status, body) = match (path.contains(".."), std::fs::read(&file)) {
                    (false, Ok(body)) => ("200 OK", body),
                    _ => ("404 Not Found", b"not found".to_vec()),
                };
                write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )?;
                s.write_all(&body)
            };
            let _ = answer(&mut s);
        }
    });
    format!("http://{addr}")
}

/// A one-file tar archive whose entry is named `name` as given (e.g. climbing out with `..`),
/// written by hand: GNU tar refuses to create such entries.
pub fn tar_with_raw_name(name: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name);
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(b"00000000002\0");
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"x\n");
    bytes.resize(512 * 4, 0);
    bytes
}

/// The busybox OCI layout `cargo xtask test` makes (tag `latest`; amd64 only, as Debian's
/// busybox-static).
pub fn busybox_layout() -> PathBuf {
    let layout = workspace().join("target/kiln-test/fixtures/busybox-oci");
    assert!(
        layout.join("index.json").is_file(),
        "the busybox fixture is built by `cargo xtask test` (missing {})",
        layout.display()
    );
    layout
}

/// The host's `ssh-add` with its shared libraries and loader, in one flat directory
/// `<sandbox>/hostbin`: the busybox base has no ssh client, and this lets a RUN step speak the
/// agent protocol for real (bound in from a named context). Returns the directory and the
/// loader's file name (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`...).
pub fn host_ssh_add(k: &Kiln) -> (PathBuf, String) {
    let dir = k.path("hostbin");
    std::fs::create_dir_all(&dir).expect("create hostbin");
    let bin = tool("sh", &["-c", "command -v ssh-add"]);
    let bin = bin.trim();
    assert!(
        !bin.is_empty(),
        "ssh-add is required for this test (Debian package openssh-client)"
    );
    std::fs::copy(bin, dir.join("ssh-add")).expect("copy ssh-add");
    for line in tool("ldd", &[bin]).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let name = Path::new(p).file_name().expect("a library name");
            std::fs::copy(p, dir.join(name)).expect("copy a library of ssh-add");
        }
    }
    let loader = std::fs::read_dir(&dir)
        .expect("read hostbin")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("ld-linux"))
        .expect("the dynamic loader of ssh-add");
    (dir, loader)
}

/// The `--explain-cache` lines (`#N NAME: CAUSE`) a build printed; none when every step came
/// from the cache.
pub fn explained(run: &Run) -> Vec<String> {
    let mut lines = run.stderr.lines();
    let Some(header) = lines.find(|l| l.starts_with("--explain-cache:")) else {
        panic!("no --explain-cache output:\n{}", run.stderr);
    };
    if header.contains("every step came from the cache") {
        return Vec::new();
    }
    lines
        .take_while(|l| l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The progress number (`#N`) of the first step whose name contains `needle`.
pub fn step_number(run: &Run, needle: &str) -> String {
    run.stderr
        .lines()
        .find_map(|l| {
            let (n, name) = l.strip_prefix('#')?.split_once(' ')?;
            name.contains(needle).then(|| format!("#{n}"))
        })
        .unwrap_or_else(|| panic!("no step {needle:?} in:\n{}", run.stderr))
}

/// Parses `text` as JSON, failing the test with the text when it is not.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A fresh ed25519 key `<sandbox>/<name>` (`-N passphrase`) with `comment`; returns its path
/// and its SHA256 fingerprint as `ssh-add -l` prints it.
pub fn ssh_keygen(k: &Kiln, name: &str, passphrase: &str, comment: &str) -> (PathBuf, String) {
    let key = k.path(name);
    tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            passphrase,
            "-C",
            comment,
            "-f",
            key.to_str().unwrap(),
        ],
    );
    let line = tool("ssh-keygen", &["-l", "-f", key.to_str().unwrap()]);
    let fingerprint = line.split_whitespace().nth(1).unwrap().to_owned();
    assert!(fingerprint.starts_with("SHA256:"), "{line}");
    (key, fingerprint)
}

/// `kiln build --progress=plain --build-context bb=<the busybox layout>:latest EXTRA CTX` with
/// `env` besides the sandbox's.
pub fn build_bb(k: &Kiln, env: &[(&str, &str)], ctx: &Path, extra: &[&str]) -> Run {
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    let mut args = vec!["build", "--progress=plain", "--build-context", &bb];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run_env(env, &args)
}

/// A real `ssh-agent` on `<sandbox>/agent.sock` holding the given keys; killed when dropped.
pub struct SshAgent {
    /// Its socket (what `SSH_AUTH_SOCK` names).
    pub sock: PathBuf,
    pid: String,
}

impl SshAgent {
    /// Starts the agent and adds `keys` with `ssh-add`. `ssh-agent -s` binds its socket before
    /// it forks and prints its pid, so the socket is there when this returns.
    pub fn start(k: &Kiln, keys: &[&Path]) -> SshAgent {
        let sock = k.path("agent.sock");
        let started = tool("ssh-agent", &["-s", "-a", sock.to_str().unwrap()]);
        let pid = started
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .expect("ssh-agent prints its pid")
            .to_owned();
        let agent = SshAgent { sock, pid };
        for key in keys {
            let added = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.sock)
                .output()
                .expect("ssh-add is required for this test (Debian package openssh-client)");
            assert!(added.status.success(), "ssh-add: {added:?}");
        }
        agent
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        // Best effort: the agent may have ended already.
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

/// Platform `arch` of the multi-platform `image` (a skopeo image name) read as a user reads it:
/// its config from `skopeo --override-arch ARCH inspect --config`, and the image copied out
/// with skopeo into `<name>-<arch>-layout` and unpacked by `umoci unpack UMOCI_FLAGS` into
/// `<name>-<arch>-bundle`. `extra` are skopeo flags (`--tls-verify=false` for the loopback
/// registry). Returns the config and the bundle.
pub fn platform_image(
    k: &Kiln,
    image: &str,
    name: &str,
    arch: &str,
    extra: &[&str],
    umoci_flags: &[&str],
) -> (serde_json::Value, PathBuf) {
    let mut args = vec!["--override-arch", arch, "inspect", "--config", "--raw"];
    args.extend_from_slice(extra);
    args.push(image);
    let cfg = json(&tool("skopeo", &args));
    let layout = k.path(&format!("{name}-{arch}-layout"));
    let mut args = vec!["--override-arch", arch, "copy"];
    if extra.contains(&"--tls-verify=false") {
        args.push("--src-tls-verify=false");
    }
    args.push(image);
    let dest = format!("oci:{}:1", layout.display());
    args.push(&dest);
    tool("skopeo", &args);
    let bundle = k.path(&format!("{name}-{arch}-bundle"));
    let source = format!("{}:1", layout.display());
    let mut args = vec!["unpack"];
    args.extend_from_slice(umoci_flags);
    args.extend(["--image", &source, bundle.to_str().unwrap()]);
    tool("umoci", &args);
    (cfg, bundle)
}

/// `skopeo ARGS --tls-verify=false docker://REFERENCE` on the loopback registry, its output
/// parsed as JSON (`inspect --raw`, `inspect --config --raw`, `list-tags`).
pub fn registry_json(args: &[&str], reference: &str) -> serde_json::Value {
    let image = format!("docker://{reference}");
    let mut all = args.to_vec();
    all.extend(["--tls-verify=false", &image]);
    json(&tool("skopeo", &all))
}
