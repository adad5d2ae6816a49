//! Shared fixtures: a busybox rootfs under an overlay mount (as the engine prepares it) and a
//! recording sink.

#![allow(clippy::unwrap_used, dead_code)] // test helpers

/// `both_runtimes!(case, ...)`: a `#[test]` per case and runtime, `embedded::case` and
/// `runc::case` (which needs runc installed), each calling `case(Runtime)` of the including file.
#[allow(unused_macros)] // cdylib.rs has no case for both runtimes
macro_rules! both_runtimes {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $case() { super::$case(super::Runtime::Embedded) })*
        }
        mod runc {
            $(#[test] fn $case() { super::require_runc(); super::$case(super::Runtime::Runc) })*
        }
    };
}

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_exec::Sink;
use kiln_plugin_sdk::graph::{ExecOp, NetworkMode, Op, SecurityMode};
use kiln_plugin_sdk::proto::{LogLevel, PreparedMount, PrimitiveRequest, Runtime};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "hostname", "ip", "sleep", "pwd", "grep", "kill", "touch",
    "mkdir", "stat", "wc",
];

/// A rootfs (lower), an empty upper dir and the overlay of both mounted at `merged`.
pub struct Rootfs {
    _dir: tempfile::TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub merged: PathBuf,
}

impl Rootfs {
    /// busybox, its applets, `/etc/passwd` and `/etc/group`.
    pub fn busybox() -> Rootfs {
        Rootfs::build(true)
    }

    /// Only `/bin`: no `/etc`, `/proc`, `/dev` or `/sys` (a scratch image with a shell).
    pub fn bare() -> Rootfs {
        Rootfs::build(false)
    }

    fn build(with_etc: bool) -> Rootfs {
        let dir = tempfile::tempdir().unwrap();
        let lower = dir.path().join("lower");
        let upper = dir.path().join("upper");
        let work = dir.path().join("work");
        let merged = dir.path().join("merged");
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).unwrap();
        }
        fs::create_dir_all(lower.join("bin")).unwrap();
        fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", lower.join("bin").join(applet)).unwrap();
        }
        if with_etc {
            fs::create_dir_all(lower.join("etc")).unwrap();
            fs::write(
                lower.join("etc/passwd"),
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
            )
            .unwrap();
            fs::write(
                lower.join("etc/group"),
                "root:x:0:\napp:x:1000:\nextra:x:2000:app\n",
            )
            .unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount("overlay", &merged, "overlay", &opts);
        Rootfs {
            _dir: dir,
            lower,
            upper,
            merged,
        }
    }

    /// The entries of the upper dir, recursively, relative and sorted (what the layer holds).
    pub fn upper_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.upper, &self.upper, &mut out);
        out.sort();
        out
    }

    /// Mounts below `merged` in this (the test's) mount namespace: there must be none.
    pub fn leaked_mounts(&self) -> Vec<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = format!("{}/", self.merged.display());
        info.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let c = CString::new(self.merged.as_os_str().as_bytes()).unwrap();
        // SAFETY: unmounting the test's own overlay.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(base).unwrap().display().to_string();
        out.push(rel);
        if e.file_type().unwrap().is_dir() {
            walk(base, &e.path(), out);
        }
    }
}

pub fn mount(source: &str, target: &Path, fstype: &str, data: &str) {
    let s = CString::new(source).unwrap();
    let t = CString::new(target.as_os_str().as_bytes()).unwrap();
    let f = CString::new(fstype).unwrap();
    let d = CString::new(data).unwrap();
    // SAFETY: NUL-terminated strings.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, d.as_ptr().cast()) };
    assert_eq!(
        r,
        0,
        "mount {fstype} on {}: {}",
        target.display(),
        std::io::Error::last_os_error()
    );
}

/// A request running `args` on `root` with the defaults of a Dockerfile RUN.
pub fn request(root: &Rootfs, args: &[&str]) -> PrimitiveRequest {
    PrimitiveRequest {
        op: Op::Exec(ExecOp {
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            mounts: Vec::new(),
            proxy_env: Vec::new(),
            devices: Vec::new(),
        }),
        inputs: Vec::new(),
        output: root.merged.display().to_string(),
        mounts: Vec::new(),
        runtime: Runtime::Embedded,
        hostname: None,
        etc_hosts: None,
        resolv_conf: None,
        extra_hosts: Vec::new(),
        shm_size: None,
        ulimits: Vec::new(),
        limits: Default::default(),
    }
}

/// `sh -c script`.
pub fn sh(root: &Rootfs, script: &str) -> PrimitiveRequest {
    request(root, &["/bin/sh", "-c", script])
}

pub fn exec_op(req: &mut PrimitiveRequest) -> &mut ExecOp {
    match &mut req.op {
        Op::Exec(op) => op,
        _ => unreachable!(),
    }
}

pub fn with_mounts(mut req: PrimitiveRequest, mounts: Vec<PreparedMount>) -> PrimitiveRequest {
    req.mounts = mounts;
    req
}

/// Records what the plugin logs; reports cancellation once `cancel_after` has passed.
pub struct Recorder {
    lines: Mutex<Vec<(LogLevel, String)>>,
    cancel_at: Option<Instant>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            lines: Mutex::new(Vec::new()),
            cancel_at: None,
        }
    }

    pub fn cancelling_after(d: Duration) -> Recorder {
        Recorder {
            lines: Mutex::new(Vec::new()),
            cancel_at: Some(Instant::now() + d),
        }
    }

    /// Lines logged at `level`.
    pub fn lines(&self, level: LogLevel) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.lines(LogLevel::Info)
    }

    pub fn stderr(&self) -> Vec<String> {
        self.lines(LogLevel::Warn)
    }
}

impl Sink for Recorder {
    fn log(&self, level: LogLevel, line: &str) {
        self.lines.lock().unwrap().push((level, line.to_owned()));
    }

    fn cancelled(&self) -> bool {
        self.cancel_at.is_some_and(|t| Instant::now() >= t)
    }
}

/// Fails the test unless runc is installed: a runc case that cannot run must not pass.
pub fn require_runc() {
    match std::process::Command::new("runc").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "runc --version failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "runc not found on PATH ({e}): install it (apt-get install runc) — cargo xtask test \
             does"
        ),
    }
}

/// The `CapEff` line of a `/proc/self/status` dump, as a number.
pub fn cap_eff(status_lines: &[String]) -> u64 {
    let line = status_lines
        .iter()
        .find(|l| l.starts_with("CapEff:"))
        .expect("CapEff in /proc/self/status");
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).unwrap()
}

/// This process's bounding set (what `--security=insecure` gives uid 0).
pub fn own_cap_bnd() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
    u64::from_str_radix(line.trim_start_matches("CapBnd:").trim(), 16).unwrap()
}

/// The static syscall helper (`tests/data/syscall.c`), built once per test process (by the
/// sandbox and rootless tests, which run it inside steps).
pub fn syscall_helper() -> &'static Path {
    static HELPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELPER.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/syscall.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "kiln-exec-syscall-{}",
            std::process::id()
        ));
        let status = std::process::Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| {
                panic!("cc not found ({e}): the sandbox tests build a static helper with a C compiler and a static libc (apt-get install gcc libc6-dev)")
            });
        assert!(
            status.success(),
            "cc -static failed on {}: install a static libc (libc6-dev)",
            src.display()
        );
        out
    })
}

/// The i386 program (`tests/data/i386.S`), assembled once per test process with binutils
/// (`as --32`, `ld -m elf_i386`: no 32-bit libc needed).
pub fn i386_helper() -> &'static Path {
    static HELPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELPER.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/i386.S");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kiln-exec-i386-{}", std::process::id()));
        let obj = out.with_extension("o");
        for (tool, args) in [
            ("as", vec!["--32".into(), "-o".into(), obj.clone(), src.clone()]),
            (
                "ld",
                vec!["-m".into(), "elf_i386".into(), "-o".into(), out.clone(), obj.clone()],
            ),
        ] {
            let status = std::process::Command::new(tool)
                .args(&args)
                .status()
                .unwrap_or_else(|e| {
                    panic!("{tool} not found ({e}): the i386 sandbox test assembles its program with binutils (apt-get install binutils)")
                });
            assert!(status.success(), "{tool} failed on {}", src.display());
        }
        out
    })
}

/// The FIFO a gated step blocks on: its script reads `/gate` (`cat /gate`).
pub fn make_gate(root: &Rootfs) -> PathBuf {
    let gate = root.merged.join("gate");
    let c_gate = CString::new(gate.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_gate.as_ptr(), 0o600) }, 0);
    gate
}

/// Runs `req`, whose script blocks reading the FIFO `gate` ([`make_gate`]), and calls `during`
/// while the step runs (once it has the FIFO open), then releases it: the step's result and
/// output lines (stdout then stderr), and what `during` returned.
pub fn run_gated<T>(
    gate: &Path,
    req: PrimitiveRequest,
    during: impl FnOnce() -> T,
) -> (Result<i32, kiln_exec::Error>, Vec<String>, T) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let step_gate = gate.to_path_buf();
    let step = std::thread::spawn(move || {
        let rec = Recorder::new();
        let r = kiln_exec::execute(req, &rec).map(|resp| resp.exit_code.unwrap());
        // A step that failed before opening the gate must not leave the test blocked in its
        // open for writing: a reader of our own releases it.
        let _reader = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&step_gate);
        let mut lines = rec.stdout();
        lines.extend(rec.stderr());
        (r, lines)
    });
    // Returns once the step has the FIFO open: it runs.
    let mut writer = fs::OpenOptions::new().write(true).open(gate).unwrap();
    let seen = during();
    let _ = writer.write_all(b"go\n");
    drop(writer);
    let (r, out) = step.join().unwrap();
    (r, out, seen)
}
