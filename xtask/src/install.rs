//! `cargo xtask install` and `cargo xtask dist`: kiln with its bundled plugins laid out as the
//! binary looks for them — `PREFIX/bin/kiln` finds `PREFIX/lib/kiln/plugins/*.so` through its
//! `<dir of kiln>/../lib/kiln/plugins` search entry, so no environment variable is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::workspace::Workspace;

/// Where `install` puts kiln when no `--prefix` is given.
const DEFAULT_PREFIX: &str = "/usr/local";

/// The cargo profile to build and install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Release,
    /// For tests: the debug build is already there after `cargo build`, a release build takes
    /// minutes on a small machine.
    Debug,
}

impl Profile {
    /// The directory of its artifacts under the target directory.
    fn dir_name(self) -> &'static str {
        match self {
            Profile::Release => "release",
            Profile::Debug => "debug",
        }
    }
}

/// The arguments of `cargo xtask install`.
#[derive(Debug, PartialEq, Eq)]
pub struct InstallArgs {
    pub prefix: PathBuf,
    pub profile: Profile,
}

/// Parses `[--prefix DIR] [--debug | --profile release|debug]`.
pub fn parse_install_args(args: &[String]) -> Result<InstallArgs> {
    let mut prefix = None;
    let mut profile = Profile::Release;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| args.next().cloned()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => bail!("`cargo xtask install`: {name} needs a value"),
            }
        };
        match flag {
            "--prefix" => prefix = Some(PathBuf::from(value("--prefix")?)),
            "--debug" if inline.is_none() => profile = Profile::Debug,
            "--release" if inline.is_none() => profile = Profile::Release,
            "--profile" => {
                profile = match value("--profile")?.as_str() {
                    "release" => Profile::Release,
                    "debug" | "dev" => Profile::Debug,
                    other => {
                        bail!("`cargo xtask install`: unknown profile `{other}` (release or debug)")
                    }
                }
            }
            _ => bail!(
                "`cargo xtask install`: unknown argument `{arg}`; usage: cargo xtask install \
                 [--prefix DIR] [--debug]"
            ),
        }
    }
    Ok(InstallArgs {
        prefix: prefix.unwrap_or_else(|| PathBuf::from(DEFAULT_PREFIX)),
        profile,
    })
}

pub fn run_install(args: &[String]) -> Result<ExitCode> {
    let args = parse_install_args(args)?;
    let prefix = std::path::absolute(&args.prefix)
        .with_context(|| format!("cannot make {} absolute", args.prefix.display()))?;
    let ws = Workspace::load()?;
    let built = build(&ws, args.profile)?;
    install_into(&built, &prefix)?;
    // Completions and the man page where bash-completion, zsh, fish and man look, as a
    // distribution package would place them.
    generate_docs(&prefix)?;
    println!(
        "xtask: installed {} and {} plugin(s) into {}, completions and the man page under {}",
        prefix.join("bin/kiln").display(),
        built.plugins.len(),
        prefix.join("lib/kiln/plugins").display(),
        prefix.join("share").display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn run_dist(args: &[String]) -> Result<ExitCode> {
    crate::no_args("dist", args)?;
    let ws = Workspace::load()?;
    let version = ws
        .packages
        .iter()
        .find(|p| p.name == "kiln-cli")
        .map(|p| p.version.clone())
        .context("the workspace has no kiln-cli package")?;
    let target = host_target()?;
    let built = build(&ws, Profile::Release)?;

    let name = format!("kiln-{version}-{target}");
    let dist = ws.target_dir.join("dist");
    let stage = dist.join(&name);
    crate::remove_if_exists(&stage)?;
    install_into(&built, &stage)?;
    generate_docs(&stage)?;
    for doc in ["README.md", "LICENSE"] {
        let src = ws.root.join(doc);
        if src.is_file() {
            copy_atomic(&src, &stage.join(doc), 0o644)?;
        }
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    crate::remove_if_exists(&tarball)?;
    // Owner and times are normalized so the tarball does not carry the builder's user.
    crate::run(
        Command::new("tar")
            .arg("-C")
            .arg(&dist)
            .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
            .arg(&tarball)
            .arg(&name),
    )
    .context("could not pack the release tarball (needs GNU tar and gzip)")?;
    crate::remove_if_exists(&stage)?;
    println!(
        "xtask: {} (bin/kiln, lib/kiln/plugins/, share/: completions for bash, zsh and fish, \
         man page)",
        tarball.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where each generated file goes under the prefix (the paths bash-completion, zsh, fish and
/// man look in), and the `kiln generate` arguments that print it.
const GENERATED: &[(&str, &[&str])] = &[
    (
        "share/bash-completion/completions/kiln",
        &["completions", "bash"],
    ),
    ("share/zsh/site-functions/_kiln", &["completions", "zsh"]),
    (
        "share/fish/vendor_completions.d/kiln.fish",
        &["completions", "fish"],
    ),
    ("share/man/man1/kiln.1", &["man"]),
];

/// Asks the installed or staged `bin/kiln` for its completions and man page (xtask cannot link the CLI's clap
/// command: it must not depend on kiln crates).
fn generate_docs(stage: &Path) -> Result<()> {
    let kiln = stage.join("bin/kiln");
    for (rel, args) in GENERATED {
        let text = crate::output(Command::new(&kiln).arg("generate").args(*args))
            .context("the built kiln cannot generate its completions and man page")?;
        let dest = stage.join(rel);
        let dir = dest
            .parent()
            .with_context(|| format!("{} has no parent", dest.display()))?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&dest, text).with_context(|| format!("cannot write {}", dest.display()))?;
    }
    Ok(())
}

/// The Rust target triple of this machine (`rustc -vV`'s `host:` line).
fn host_target() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = crate::output(Command::new(rustc).arg("-vV"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .context("`rustc -vV` printed no `host:` line")
}

/// The built files to install.
pub struct Built {
    pub kiln: PathBuf,
    pub plugins: Vec<PathBuf>,
}

/// `cargo build` of kiln and the bundled plugins in `profile`; their artifact paths.
fn build(ws: &Workspace, profile: Profile) -> Result<Built> {
    let bundled = crate::workspace::bundled_plugins(ws);
    let mut cmd = crate::cargo();
    cmd.current_dir(&ws.root).args(["build", "-p", "kiln-cli"]);
    for (pkg, _) in &bundled {
        cmd.args(["-p", pkg]);
    }
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    println!("xtask: running {}", crate::show(&cmd));
    crate::run(&mut cmd)
        .context("kiln or a bundled plugin does not build; fix the errors above")?;

    let dir = ws.target_dir.join(profile.dir_name());
    let kiln = dir.join("kiln");
    if !kiln.is_file() {
        bail!("cargo succeeded but built no {}", kiln.display());
    }
    let mut plugins = Vec::new();
    for (pkg, file) in bundled {
        let lib = dir.join(&file);
        if !lib.is_file() {
            bail!(
                "{pkg} declares a cdylib but {} was not built; run `cargo build -p {pkg}` to see why",
                lib.display()
            );
        }
        plugins.push(lib);
    }
    Ok(Built { kiln, plugins })
}

/// Installs `built` as `prefix/bin/kiln` and `prefix/lib/kiln/plugins/*.so`. Other files in
/// those directories (plugins installed by hand) are left alone.
pub fn install_into(built: &Built, prefix: &Path) -> Result<()> {
    let bin = prefix.join("bin");
    let plugins = prefix.join("lib/kiln/plugins");
    for dir in [&bin, &plugins] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for lib in &built.plugins {
        let name = lib
            .file_name()
            .with_context(|| format!("{} has no file name", lib.display()))?;
        copy_atomic(lib, &plugins.join(name), 0o644)?;
    }
    // The binary last: a kiln that is in place already finds its plugins.
    copy_atomic(&built.kiln, &bin.join("kiln"), 0o755)
}

/// Copies `src` to a temporary name beside `dest`, then renames it over `dest`: a kiln running
/// from `dest` keeps its mapping of the old file, and nothing ever sees a half-written one.
fn copy_atomic(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?
        .to_string_lossy();
    let tmp = dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::copy(src, &tmp)
        .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, dest)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
        });
    if placed.is_err() {
        // Best effort: the error below is what matters to the user.
        let _ = std::fs::remove_file(&tmp);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn install_arguments() {
        let parsed = |list: &[&str]| parse_install_args(&args(list));
        assert_eq!(
            parsed(&[]).expect("no arguments"),
            InstallArgs {
                prefix: PathBuf::from("/usr/local"),
                profile: Profile::Release
            }
        );
        assert_eq!(
            parsed(&["--prefix", "/tmp/k", "--debug"]).expect("prefix and debug"),
            InstallArgs {
                prefix: PathBuf::from("/tmp/k"),
                profile: Profile::Debug
            }
        );
        assert_eq!(
            parsed(&[
                "--prefix=rel/dir",
                "--profile=debug",
                "--profile",
                "release"
            ])
            .expect("inline values, last profile wins"),
            InstallArgs {
                prefix: PathBuf::from("rel/dir"),
                profile: Profile::Release
            }
        );
        let err = |list: &[&str]| format!("{:#}", parsed(list).expect_err("invalid"));
        assert!(err(&["--prefix"]).contains("--prefix needs a value"));
        assert!(err(&["--prefix="]).contains("--prefix needs a value"));
        assert!(err(&["--profile", "fast"]).contains("unknown profile `fast`"));
        assert!(err(&["--debug=1"]).contains("unknown argument `--debug=1`"));
        assert!(err(&["/usr"]).contains("unknown argument `/usr`"));
    }

    #[test]
    fn installs_the_binary_and_plugins_in_the_prefix_layout() {
        let tmp = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        crate::remove_if_exists(&tmp).expect("clean");
        let built_dir = tmp.join("built");
        std::fs::create_dir_all(&built_dir).expect("mkdir");
        let kiln = built_dir.join("kiln");
        let lib = built_dir.join("libkiln_exec.so");
        std::fs::write(&kiln, "new kiln").expect("write kiln");
        std::fs::write(&lib, "new plugin").expect("write plugin");
        let prefix = tmp.join("prefix");
        let plugins = prefix.join("lib/kiln/plugins");
        std::fs::create_dir_all(&plugins).expect("mkdir");
        std::fs::write(plugins.join("libkiln_exec.so"), "old plugin").expect("write old");
        std::fs::write(plugins.join("libthird_party.so"), "theirs").expect("write theirs");

        let built = Built {
            kiln,
            plugins: vec![lib],
        };
        install_into(&built, &prefix).expect("install");

        use std::os::unix::fs::PermissionsExt;
        let read = |p: &str| std::fs::read_to_string(prefix.join(p)).expect("read installed");
        assert_eq!(read("bin/kiln"), "new kiln");
        let mode = std::fs::metadata(prefix.join("bin/kiln"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(read("lib/kiln/plugins/libkiln_exec.so"), "new plugin");
        assert_eq!(read("lib/kiln/plugins/libthird_party.so"), "theirs");
        let mut left: Vec<String> = std::fs::read_dir(&plugins)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["libkiln_exec.so", "libthird_party.so"],
            "no temp file left"
        );
        crate::remove_if_exists(&tmp).expect("clean");
    }
}
