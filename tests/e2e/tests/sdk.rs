//! The plugin SDK as a stranger uses it, and the plugin ABI's evolution, through the real
//! binary:
//! - `cargo xtask new-plugin` generates a crate of each kind outside the workspace; it builds
//!   and passes its own tests with plain `cargo`, `kiln plugins ls` lists it, and a real build
//!   runs the frontend (by `# syntax=`, by name and by path) and the instruction (from a
//!   Dockerfile);
//! - a plugin built on the frozen protocol-1 SDK (tests/data/plugin-sdk-v1) builds images, with
//!   its frontend and its instruction, and answers `--call` through the old label;
//! - a plugin requiring a host capability this kiln lacks is refused, naming it.
//!
//! The generated crates are built with `CARGO_TARGET_DIR=<target>/kiln-sdk-test`, a directory
//! of their own (so their builds never disturb the workspace's artifacts) kept between runs, so
//! their dependencies compile once; `--offline`, with the copy of kiln's Cargo.lock that
//! new-plugin writes, so no registry is asked.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kiln_e2e::*;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `cmd`, failing the test with its output when it fails; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The libraries of workspace test plugins, built once.
fn test_plugin(package: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        run_ok(cargo().current_dir(workspace()).args([
            "build",
            "--quiet",
            "-p",
            "kiln-test-v1-greet",
            "-p",
            "kiln-test-needs-capability",
        ]));
    });
    plugin_lib(package)
}

/// Generates plugin `name` of `kind` with `cargo xtask new-plugin` run from `parent` (as an
/// author outside the checkout runs it, through the xtask's manifest), into its default
/// directory `parent/name`; runs its tests and builds it; returns its library.
fn generate_and_build(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let dir = parent.join(name);
    let xtask = workspace().join("xtask/Cargo.toml");
    let said = run_ok(cargo().current_dir(parent).args([
        "run",
        "--quiet",
        "--manifest-path",
        xtask.to_str().unwrap(),
        "--",
        "new-plugin",
        name,
        "--kind",
        kind,
    ]));
    assert!(
        said.contains(&format!("created the {kind} plugin {name}")),
        "{said}"
    );
    for file in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "README.md"] {
        assert!(dir.join(file).is_file(), "new-plugin wrote no {file}");
    }
    let target = target_dir().parent().unwrap().join("kiln-sdk-test");
    for step in ["test", "build"] {
        run_ok(
            cargo()
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target)
                .args([step, "--offline", "--quiet"]),
        );
    }
    let lib = target.join(format!("debug/lib{}.so", name.replace('-', "_")));
    assert!(lib.is_file(), "cargo build made no {}", lib.display());
    lib
}

#[test]
fn plugins_generated_outside_the_workspace_build_test_load_and_run() {
    let k = Kiln::new(&[]);
    // Outside the workspace, as a plugin author's crate is.
    let away = tempfile::tempdir().unwrap();
    assert!(!away.path().starts_with(workspace()));
    // Installed where the user says, with --plugin-dir.
    let gen = k.path("generated");
    std::fs::create_dir_all(&gen).unwrap();
    let plugin_dir = gen.to_str().unwrap();
    let mut libs = Vec::new();
    for (name, kind) in [
        ("hello-files", "frontend"),
        ("stamp-file", "instruction"),
        ("write-op", "primitive"),
    ] {
        let lib = generate_and_build(away.path(), name, kind);
        std::fs::copy(&lib, gen.join(lib.file_name().unwrap())).unwrap();
        libs.push(lib);
    }

    // Refusals: inside the workspace, and over an existing directory.
    let inside = workspace().join("target").join("new-plugin-refused");
    let out = cargo()
        .current_dir(workspace())
        .args(["xtask", "new-plugin", "x", "--kind", "frontend", "--dir"])
        .arg(&inside)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("inside the kiln workspace"),
        "{err}"
    );
    assert!(!inside.exists());
    let out = cargo()
        .current_dir(workspace())
        .args([
            "xtask",
            "new-plugin",
            "hello-files",
            "--kind",
            "frontend",
            "--dir",
        ])
        .arg(away.path().join("hello-files"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already exists"),
        "{err}"
    );

    // Listed, each with its kind.
    let ls = k
        .run(&["plugins", "ls", "--plugin-dir", plugin_dir])
        .ok()
        .stdout;
    for (name, kind) in [
        ("hello-files", "frontend"),
        ("stamp-file", "instruction"),
        ("write-op", "primitive"),
    ] {
        assert!(
            ls.lines()
                .any(|l| l.starts_with(name) && l.contains(kind) && l.contains("installed")),
            "{name} ({kind}) is not listed:\n{ls}"
        );
    }
    assert!(!ls.contains("REFUSED"), "{ls}");

    // The frontend, chosen by the build file's `# syntax=` line.
    let ctx = k.write(
        "front",
        &[(
            "build.txt",
            "# syntax=hello-files\nfile /hello.txt hello from a generated frontend\n\
             label org.example.kind=frontend\n",
        )],
    );
    let file = ctx.join("build.txt");
    let out = k.path("front-out");
    let r = build_local_with(
        &k,
        &ctx,
        &out,
        &["--plugin-dir", plugin_dir, "-f", file.to_str().unwrap()],
    )
    .ok();
    assert!(
        r.stderr.contains("with frontend hello-files"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "hello from a generated frontend\n"
    );
    // By path, straight from the built library, with no `# syntax=` line.
    std::fs::write(&file, "file /by-path.txt chosen by path\n").unwrap();
    let out = k.path("front-path-out");
    build_local_with(
        &k,
        &ctx,
        &out,
        &[
            "-f",
            file.to_str().unwrap(),
            "--frontend",
            libs[0].to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("by-path.txt")).unwrap(),
        "chosen by path\n"
    );
    // Its errors point at the line.
    std::fs::write(&file, "file /a.txt a\nfrobnicate\n").unwrap();
    let r = k
        .run(&[
            "build",
            "--plugin-dir",
            plugin_dir,
            "-f",
            file.to_str().unwrap(),
            "--frontend",
            "hello-files",
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("build.txt:2") && r.stderr.contains("unknown instruction \"frobnicate\""),
        "{}",
        r.stderr
    );

    // The instruction, from a Dockerfile.
    let ctx = k.write(
        "instr",
        &[(
            "Dockerfile",
            "FROM scratch\nSTAMP_FILE /stamp.txt stamped by a generated plugin\n",
        )],
    );
    let out = k.path("instr-out");
    build_local_with(&k, &ctx, &out, &["--plugin-dir", plugin_dir]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("stamp.txt")).unwrap(),
        "stamped by a generated plugin\n"
    );
}

#[test]
fn a_protocol_1_plugin_builds_images_and_answers_calls() {
    let k = Kiln::new(&[]);
    let lib = test_plugin("kiln-test-v1-greet");
    std::fs::copy(&lib, k.plugin_dir().join(lib.file_name().unwrap())).unwrap();

    let ls = k.run(&["plugins", "ls"]).ok().stdout;
    assert!(
        ls.lines()
            .any(|l| l.starts_with("v1-greet") && l.contains("frontend,instruction")),
        "{ls}"
    );

    // Its frontend, chosen by `# syntax=`, with a context file read through a host callback.
    let ctx = k.write(
        "v1",
        &[
            (
                "Greetfile",
                "# syntax=v1-greet\ngreet world\ncopy note.txt\n",
            ),
            ("note.txt", "read by a protocol 1 plugin\n"),
        ],
    );
    let file = ctx.join("Greetfile");
    let out = k.path("v1-out");
    let r = build_local_with(&k, &ctx, &out, &["-f", file.to_str().unwrap()]).ok();
    assert!(r.stderr.contains("with frontend v1-greet"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("greeting.txt")).unwrap(),
        "hello world\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("copied.txt")).unwrap(),
        "read by a protocol 1 plugin\n"
    );

    // `--call`: a protocol 1 frontend answers in the kiln.call.result label, which kiln reads.
    let r = k
        .run(&[
            "build",
            "--call",
            "targets",
            "-f",
            file.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stdout.contains("greeting (default)") && r.stdout.contains("a protocol 1 hello"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );

    // Its instruction, handed over by today's Dockerfile frontend.
    let ctx = k.write(
        "v1-instr",
        &[("Dockerfile", "FROM scratch\nSALUTE world\n")],
    );
    let out = k.path("v1-instr-out");
    build_local(&k, &ctx, &out).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("salute.txt")).unwrap(),
        "salute world\n"
    );
}

#[test]
fn a_plugin_requiring_a_capability_kiln_lacks_is_refused_naming_it() {
    let k = Kiln::new(&[]);
    let lib = test_plugin("kiln-test-needs-capability");
    std::fs::copy(&lib, k.plugin_dir().join(lib.file_name().unwrap())).unwrap();
    let ls = k.run(&["plugins", "ls"]).ok().stdout;
    let refused = ls.split("\nREFUSED\n").nth(1).unwrap_or_default();
    assert!(
        refused.contains("libkiln_test_needs_capability.so")
            && refused.contains("requires host capability \"teleport.files\" that this kiln lacks"),
        "{ls}"
    );
    assert!(
        !ls.lines().any(|l| l.starts_with("needs-capability")),
        "{ls}"
    );

    // A build asking for it says why it is not there.
    let ctx = k.write(
        "cap",
        &[("Dockerfile", "# syntax=needs-capability\nanything\n")],
    );
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("\"teleport.files\""), "{}", r.stderr);
}
