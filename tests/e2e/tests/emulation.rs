//! `kiln setup emulation`: registering QEMU for arm64 with binfmt_misc, proved by running the
//! goarch fixture's arm64 program on this (non-arm64) host; and the error naming the package
//! when the emulator is missing.
//!
//! These tests change the kernel's binfmt_misc handlers, which every process of the machine
//! shares: `.config/nextest.toml` puts this binary in the `binfmt` test group (one test at a
//! time), and a test that runs programs of another architecture must join that group too. The
//! tests leave the arm64 handler registered, as they found it or better.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use kiln_e2e::{tool, workspace, Kiln};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// The ELF header bytes of an aarch64 executable as binfmt_misc lists them (`magic` line).
const AARCH64_MAGIC: &str = "magic 7f454c460201010000000000000000000200b700";

/// The goarch program built for `arch` by `cargo xtask fixtures` (or `cargo xtask test`).
fn goarch(arch: &str) -> PathBuf {
    let p = workspace().join(format!("target/kiln-test/fixtures/goarch/goarch-{arch}"));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask fixtures` (it cross-compiles the goarch program with Go \
         from PyPI)",
        p.display()
    );
    p
}

/// Serializes this file's tests under `cargo test` (threads of one process); nextest runs each
/// in its own process, kept apart by the `binfmt` test group.
fn binfmt_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_root_and_foreign_arm64() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        })
        .flatten()
        .unwrap();
    assert_eq!(
        uid, "0",
        "registering binfmt_misc handlers needs root: run the e2e tests as root"
    );
    assert_ne!(
        std::env::consts::ARCH,
        "aarch64",
        "this test proves emulation of arm64 and needs a host of another architecture"
    );
    assert!(
        Path::new("/usr/bin/qemu-aarch64-static").is_file(),
        "qemu-aarch64-static is missing: install the qemu-user-static package (cargo xtask test does)"
    );
}

/// Removes every enabled or disabled handler that takes aarch64 executables, whatever its name
/// (Debian's, tonistiigi/binfmt's, kiln's). Returns their names.
fn unregister_aarch64() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(BINFMT) else {
        return removed; // not mounted: nothing is registered
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.lines().any(|l| l == AARCH64_MAGIC) {
            std::fs::write(entry.path(), "-1").unwrap();
            removed.push(name);
        }
    }
    removed
}

/// Runs `program args` directly on the host; (exit code, stdout, stderr). A program the kernel
/// cannot execute (ENOEXEC, no handler) gives code -1 and the error as stderr.
fn exec(program: &Path, args: &[&str]) -> (i32, String, String) {
    let out = match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) => return (-1, String::new(), e.to_string()),
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn handler_text() -> String {
    std::fs::read_to_string(Path::new(BINFMT).join("qemu-aarch64")).unwrap_or_default()
}

/// One test, in sequence: without a handler the arm64 program cannot run; `kiln setup
/// emulation --platform linux/arm64` registers qemu-aarch64-static with the F flag and the
/// program then runs; a second setup finds it registered; with the emulator missing
/// (`KILN_QEMU_DIR` pointing at an empty directory) the error names the platform and the
/// package, and nothing is registered; a final setup restores the handler.
#[test]
fn setup_registers_arm64_and_names_the_package_when_qemu_is_missing() {
    let _lock = binfmt_lock();
    require_root_and_foreign_arm64();
    let program = goarch("arm64");
    let k = Kiln::new(&[]);

    unregister_aarch64();
    assert!(handler_text().is_empty());
    let (code, _, _) = exec(&program, &[]);
    assert_ne!(
        code, 0,
        "an arm64 program ran without a handler: the test cannot prove anything"
    );

    let r = k
        .run(&["setup", "emulation", "--platform", "linux/arm64"])
        .ok();
    assert!(
        r.stderr
            .contains("linux/arm64: registered qemu-aarch64 (/usr/bin/qemu-aarch64-static"),
        "{}",
        r.stderr
    );
    let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let supported: Vec<&str> = status["supported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(supported.contains(&"linux/arm64"), "{supported:?}");
    assert!(supported.contains(&"linux/amd64") || std::env::consts::ARCH != "x86_64");
    assert!(
        status["emulators"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "qemu-aarch64"),
        "{status}"
    );
    let text = handler_text();
    assert!(text.starts_with("enabled\n"), "{text}");
    assert!(
        text.contains("interpreter /usr/bin/qemu-aarch64-static\n"),
        "{text}"
    );
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap();
    assert!(flags.contains('F'), "registered without the F flag: {text}");

    // The proof: the arm64 program runs on this host and writes its architecture.
    let out = k.path("arch");
    let (code, stdout, stderr) = exec(&program, &[out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "arm64\n");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "arm64\n");

    // Idempotent: found, not registered again; other spellings of the platform are the same.
    let r = k
        .run(&["setup", "emulation", "--platform", "linux/aarch64/v8"])
        .ok();
    assert!(
        r.stderr
            .contains("linux/arm64: already registered: qemu-aarch64"),
        "{}",
        r.stderr
    );

    // The emulator missing: the error names the platform and the package; nothing registered.
    unregister_aarch64();
    let empty = k.path("no-qemu");
    std::fs::create_dir_all(&empty).unwrap();
    let r = k
        .run_env(
            &[("KILN_QEMU_DIR", empty.to_str().unwrap())],
            &["setup", "emulation", "--platform", "arm64"],
        )
        .fails();
    assert!(
        r.stderr.contains("cannot run linux/arm64 programs"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("qemu-aarch64-static"), "{}", r.stderr);
    assert!(
        r.stderr.contains("install the qemu-user-static package"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(empty.to_str().unwrap()), "{}", r.stderr);
    assert!(
        handler_text().is_empty(),
        "registered although the emulator was missing"
    );
    let (code, _, _) = exec(&program, &[]);
    assert_ne!(code, 0);

    // Leave the machine with arm64 emulation, for the tests that use it.
    k.run(&["setup", "emulation", "--platform", "linux/arm64"])
        .ok();
    let (code, stdout, _) = exec(&program, &[]);
    assert_eq!((code, stdout.as_str()), (0, "arm64\n"));
}

/// Without `--platform`, every installed emulator is registered (tonistiigi/binfmt's `--install
/// all`): s390x among them, proved by the s390x program; an unknown platform is an error that
/// names it, and the exit status says so.
#[test]
fn setup_without_platforms_registers_every_installed_emulator() {
    let _lock = binfmt_lock();
    require_root_and_foreign_arm64();
    let program = goarch("s390x");
    let k = Kiln::new(&[]);
    let r = k.run(&["setup", "emulation"]).ok();
    let status: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let supported = status["supported"].to_string();
    for p in [
        "linux/arm64",
        "linux/s390x",
        "linux/riscv64",
        "linux/ppc64le",
        "linux/arm/v7",
    ] {
        assert!(
            supported.contains(&format!("\"{p}\"")),
            "{p} missing: {supported}\n{}",
            r.stderr
        );
    }
    let (code, stdout, stderr) = exec(&program, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "s390x\n");

    let r = k
        .run(&[
            "setup",
            "emulation",
            "--platform",
            "linux/arm64,linux/sparc64",
        ])
        .fails();
    assert!(
        r.stderr.contains("linux/arm64: already registered"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "linux/sparc64: error: this linux/amd64 host cannot run linux/sparc64 programs"
        ) || std::env::consts::ARCH != "x86_64",
        "{}",
        r.stderr
    );
    let r = k
        .run(&["setup", "emulation", "--platform", "linux/arm/v7/x"])
        .fails();
    assert!(r.stderr.contains("too many components"), "{}", r.stderr);
}

/// An exec-form RUN of the arm64 program under `--platform linux/arm64` runs under QEMU in
/// both runtimes and writes `arm64` into the image, whose config says arm64. The handler is
/// registered first with `kiln setup emulation` so that this test is about the runtimes; a
/// build registers a missing handler itself too (`kiln_emulation::Emulation::ensure`, before
/// the build starts), which multiplatform.rs's emulated test proves from no handler at all.
#[test]
fn an_arm64_run_step_runs_under_emulation_in_both_runtimes() {
    let _lock = binfmt_lock();
    require_root_and_foreign_arm64();
    goarch("arm64");
    let layout = workspace().join("target/kiln-test/fixtures/goarch-oci");
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    k.run(&["setup", "emulation", "--platform", "linux/arm64"])
        .ok();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base\nRUN [\"/goarch\", \"/out/arch\"]\nFROM scratch\n\
             COPY --from=0 /out/arch /arch\n",
        )],
    );
    let base = format!("base=oci-layout://{}:arm64", layout.display());
    for executor in ["embedded", "runc"] {
        let tar = k.path(&format!("{executor}.tar"));
        let r = k
            .run_env(
                &[("KILN_EXECUTOR", executor)],
                &[
                    "build",
                    "--progress=plain",
                    // The runtime is not part of a step's cache key: run the step each time.
                    "--no-cache",
                    "--platform",
                    "linux/arm64",
                    "--build-context",
                    &base,
                    "-t",
                    "x:1",
                    "--output",
                    &format!("type=oci,dest={}", tar.display()),
                    ctx.to_str().unwrap(),
                ],
            )
            .ok();
        // The program's stdout, in the step's log.
        assert!(r.stderr.contains(" arm64\n"), "{executor}: {}", r.stderr);
        let rootfs = k.unpack(&tar, executor, "1").join("rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("arch")).unwrap(),
            "arm64\n",
            "{executor}"
        );
        let cfg: serde_json::Value = serde_json::from_str(&tool(
            "skopeo",
            &[
                "inspect",
                "--config",
                "--raw",
                &format!("oci-archive:{}", tar.display()),
            ],
        ))
        .unwrap();
        assert_eq!(cfg["architecture"], "arm64", "{executor}");
    }
}
