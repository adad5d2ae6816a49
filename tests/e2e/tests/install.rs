//! `cargo xtask install`: an installed kiln finds its bundled plugins through
//! `<prefix>/lib/kiln/plugins` from any working directory, and a kiln without plugins says where
//! it looked and how to install them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::{target_dir, workspace, Kiln, Run};

/// A Dockerfile that needs the frontend plugin but no base image and no `RUN`.
const DOCKERFILE: &str = "FROM scratch\nCOPY hello.txt /greeting/hello.txt\n";

/// Runs the installed (or copied) `kiln` with only the plugins its own location gives it.
fn run_kiln(kiln: &Path, cwd: &Path, store: &Path, args: &[&str]) -> Run {
    let out = Command::new(kiln)
        .current_dir(cwd)
        .env("KILN_ROOT", store)
        .env_remove("KILN_PLUGIN_PATH")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", kiln.display()));
    Run::from(out)
}

/// The sandbox directory, canonical: kiln names its plugin directories from its own resolved
/// path (`/proc/self/exe`), so the test must compare against the same spelling.
fn sandbox_root(k: &Kiln) -> PathBuf {
    k.dir.path().canonicalize().unwrap()
}

#[test]
fn installed_debug_build_finds_its_plugins_from_another_directory() {
    let k = Kiln::new(&[]);
    let root = sandbox_root(&k);
    let prefix = root.join("prefix");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // `--debug` reuses what `ensure_built` just built: no release build inside the tests.
    let install = Command::new(cargo)
        .current_dir(workspace())
        .args(["xtask", "install", "--debug", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "cargo xtask install failed:\n{}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let kiln = prefix.join("bin/kiln");
    assert!(kiln.is_file(), "{} was not installed", kiln.display());
    let mut plugins: Vec<String> = std::fs::read_dir(prefix.join("lib/kiln/plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    plugins.sort();
    assert_eq!(
        plugins,
        [
            "libkiln_exec.so",
            "libkiln_frontend_dockerfile.so",
            "libkiln_frontend_spec.so",
            "libkiln_git.so",
            "libkiln_http.so",
            "libkiln_include.so",
            "libkiln_packages.so",
        ]
    );
    // Completions and the man page come with the install, not only with `cargo xtask dist`.
    let bash = std::fs::read_to_string(prefix.join("share/bash-completion/completions/kiln"))
        .expect("bash completion installed");
    assert!(bash.contains("--build-context"), "{bash}");
    let man = std::fs::read_to_string(prefix.join("share/man/man1/kiln.1")).expect("man page");
    assert!(man.starts_with(".ie") || man.contains(".TH kiln"), "{man}");
    for rel in [
        "share/zsh/site-functions/_kiln",
        "share/fish/vendor_completions.d/kiln.fish",
    ] {
        assert!(prefix.join(rel).is_file(), "{rel} not installed");
    }

    let work = k.write(
        "work",
        &[
            ("Dockerfile", DOCKERFILE),
            ("hello.txt", "hello from kiln\n"),
        ],
    );
    let out = root.join("out");
    let dest = format!("type=local,dest={}", out.display());
    run_kiln(
        &kiln,
        &work,
        &root.join("store"),
        &["build", "--progress=plain", "--output", &dest, "."],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("greeting/hello.txt")).unwrap(),
        "hello from kiln\n"
    );
}

#[test]
fn kiln_without_plugins_names_the_directories_it_searched_and_the_install_command() {
    let k = Kiln::new(&[]);
    let root = sandbox_root(&k);
    let bare = root.join("bare/bin");
    std::fs::create_dir_all(&bare).unwrap();
    let kiln = bare.join("kiln");
    std::fs::copy(target_dir().join("kiln"), &kiln).unwrap();
    let work = k.write(
        "work",
        &[("Dockerfile", DOCKERFILE), ("hello.txt", "hello\n")],
    );
    let run = run_kiln(&kiln, &work, &root.join("store"), &["build", "."]).fails();
    let searched = format!(
        "none is installed in {}, {} (",
        bare.join("plugins").display(),
        root.join("bare/lib/kiln/plugins").display()
    );
    assert!(run.stderr.contains(&searched), "{}", run.stderr);
    assert!(
        run.stderr.contains("`cargo xtask install`"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked at"), "{}", run.stderr);
}
