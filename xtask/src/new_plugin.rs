//! `cargo xtask new-plugin NAME --kind frontend|instruction|primitive [--dir DIR]`: writes a
//! plugin crate that builds against this checkout's `kiln-plugin-sdk`, outside the workspace.
//!
//! The crate has a Cargo.toml (cdylib + rlib, the SDK as a path dependency: the SDK is not
//! published, and a path needs no registry), `src/lib.rs` with a working minimal plugin of the
//! kind and its unit tests, a README with the build, install, use and test steps, and a copy of
//! the workspace's Cargo.lock (same dependency versions as kiln, offline builds work). The
//! templates are `new_plugin/*.in`; `tests/e2e/tests/sdk.rs` generates, builds and loads one of
//! each kind.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str =
    "usage: cargo xtask new-plugin NAME --kind frontend|instruction|primitive [--dir DIR]";

/// The kinds of plugins, as `--kind` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Frontend,
    Instruction,
    Primitive,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "frontend" => Kind::Frontend,
            "instruction" => Kind::Instruction,
            "primitive" => Kind::Primitive,
            other => bail!("unknown --kind {other:?}: expected frontend, instruction or primitive"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::Instruction => "instruction",
            Kind::Primitive => "primitive",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    pub name: String,
    pub kind: Kind,
    pub dir: Option<PathBuf>,
}

pub fn parse_args(args: &[String]) -> Result<Args> {
    let mut name = None;
    let mut kind = None;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--kind" => kind = Some(Kind::parse(&value("--kind")?)?),
            "--dir" => dir = Some(PathBuf::from(value("--dir")?)),
            s if s.starts_with("--kind=") => kind = Some(Kind::parse(&s["--kind=".len()..])?),
            s if s.starts_with("--dir=") => dir = Some(PathBuf::from(&s["--dir=".len()..])),
            s if s.starts_with('-') => bail!("unknown option {s:?}\n{USAGE}"),
            s if name.is_none() => name = Some(s.to_owned()),
            s => bail!("unexpected argument {s:?}: one NAME only\n{USAGE}"),
        }
    }
    let name = name.with_context(|| format!("missing NAME\n{USAGE}"))?;
    check_name(&name)?;
    let kind = kind.with_context(|| format!("missing --kind\n{USAGE}"))?;
    Ok(Args { name, kind, dir })
}

/// The name is the package name, the plugin name (in `# syntax=`, `--frontend` and the op
/// name) and, upper-cased, an instruction keyword: keep it to what all of them accept.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "invalid plugin name {name:?}: use lower-case letters, digits and `-`, starting with \
             a letter (it names the crate, the plugin and, for an instruction, its keyword)"
        );
    }
    Ok(())
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let args = parse_args(args)?;
    // The checkout this xtask was built from, not the current directory's workspace: run from
    // elsewhere (`cargo run --manifest-path <kiln>/xtask/Cargo.toml -- new-plugin NAME ...`),
    // the default `./NAME` is the author's own directory.
    let ws_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = std::fs::canonicalize(&ws_root)
        .with_context(|| format!("cannot resolve {}", ws_root.display()))?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let dir = normalize(
        &cwd.join(
            args.dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(&args.name)),
        ),
    );
    check_destination(&dir, &root)?;
    generate(&args, &dir, &root)?;
    println!(
        "created the {} plugin {} in {}\nnext: cd {} && cargo build && cargo test (README.md says how to install and use it)",
        args.kind.name(),
        args.name,
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `path` with `.` and `..` resolved lexically, and through the real directories of its
/// longest existing prefix (so a symlink into the workspace is seen for what it is).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    let mut existing = out.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return out,
        }
    }
    let mut real = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.iter().rev() {
        real.push(name);
    }
    real
}

/// Refuses a destination inside the workspace (cargo would take the crate for a member of
/// kiln's workspace, and the point is to build like a stranger does) or one that exists.
pub fn check_destination(dir: &Path, root: &Path) -> Result<()> {
    if dir.starts_with(root) {
        bail!(
            "{} is inside the kiln workspace ({}): a plugin crate is generated outside it, as a \
             plugin author's crate is; pass --dir with a path elsewhere",
            dir.display(),
            root.display()
        );
    }
    if dir.symlink_metadata().is_ok() {
        bail!(
            "{} already exists: new-plugin never writes over a file or directory; remove it or \
             choose another --dir",
            dir.display()
        );
    }
    Ok(())
}

/// The files of the new crate: (path relative to its directory, content).
pub fn files(args: &Args, root: &Path) -> Vec<(&'static str, String)> {
    let krate = args.name.replace('-', "_");
    let keyword = args.name.replace('-', "_").to_uppercase();
    let sdk = root.join("crates/kiln-plugin-sdk");
    let (lib, extra_deps, summary, usage) = match args.kind {
        Kind::Frontend => (
            include_str!("new_plugin/frontend.rs.in"),
            "",
            "It is a frontend for a tiny build syntax (`file PATH TEXT`, `env K=V`, `label K=V`, one per line) that builds an image from scratch.",
            "A build file whose first line names the frontend:\n\n```text\n# syntax=__NAME__\nfile /hello.txt hello from __NAME__\nlabel org.example.built-by=__NAME__\n```\n\n```sh\nkiln build --plugin-dir ~/.local/lib/kiln-plugins -f build.txt -t hello:1 .\n# or without the `# syntax=` line:\nkiln build --frontend __NAME__ --plugin-dir ~/.local/lib/kiln-plugins -f build.txt .\n# or straight from the library, without installing it:\nkiln build --frontend target/release/lib__CRATE__.so -f build.txt .\n```",
        ),
        Kind::Instruction => (
            include_str!("new_plugin/instruction.rs.in"),
            "",
            "It adds the Dockerfile instruction `__KEYWORD__ PATH TEXT`, which writes a file in the current stage.",
            "```dockerfile\nFROM busybox\n__KEYWORD__ /etc/motd built with kiln\n```\n\n```sh\nkiln build --plugin-dir ~/.local/lib/kiln-plugins -t motd:1 .\n```\n\nWithout the plugin installed, kiln stops at that line: no plugin provides `__KEYWORD__`.",
        ),
        Kind::Primitive => (
            include_str!("new_plugin/primitive.rs.in"),
            "serde = { version = \"1.0.220\", features = [\"derive\"] }\n",
            "It runs the custom op `__NAME__`, which writes one file (its JSON payload: `{\"path\": \"a.txt\", \"content\": \"...\"}`) into the step's output.",
            "A primitive runs ops that a frontend or an instruction plugin puts in the build graph: \
             `Op::Custom(CustomOp { primitive: \"__NAME__\", payload })`, built with \
             `kiln_plugin_sdk::graph::State::from_op`. Install it beside the plugin that emits \
             such ops; `kiln plugins ls` shows that kiln found it.",
        ),
    };
    let fill = |text: &str| {
        text.replace("__SUMMARY__", summary)
            .replace("__USE__", usage)
            .replace("__EXTRA_DEPS__", extra_deps)
            .replace("__SDK_PATH__", &sdk.display().to_string())
            .replace("__ROOT__", &root.display().to_string())
            .replace("__KIND__", args.kind.name())
            .replace("__KEYWORD__", &keyword)
            .replace("__CRATE__", &krate)
            .replace("__NAME__", &args.name)
    };
    vec![
        ("Cargo.toml", fill(include_str!("new_plugin/Cargo.toml.in"))),
        ("src/lib.rs", fill(lib)),
        ("README.md", fill(include_str!("new_plugin/README.md.in"))),
        (".gitignore", "/target\n".to_owned()),
    ]
}

fn generate(args: &Args, dir: &Path, root: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.join("src").display()))?;
    for (rel, content) in files(args, root) {
        let path = dir.join(rel);
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let lock = root.join("Cargo.lock");
    std::fs::copy(&lock, dir.join("Cargo.lock"))
        .with_context(|| format!("cannot copy {} into {}", lock.display(), dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Result<Args> {
        parse_args(&words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments() {
        assert_eq!(
            args(&["my-front", "--kind", "frontend"]).unwrap(),
            Args {
                name: "my-front".into(),
                kind: Kind::Frontend,
                dir: None
            }
        );
        assert_eq!(
            args(&["--kind=primitive", "p1", "--dir", "/tmp/x"]).unwrap(),
            Args {
                name: "p1".into(),
                kind: Kind::Primitive,
                dir: Some("/tmp/x".into())
            }
        );
        for (bad, why) in [
            (&["x"][..], "missing --kind"),
            (&["--kind", "frontend"][..], "missing NAME"),
            (&["x", "--kind", "exporter"][..], "unknown --kind"),
            (&["Big", "--kind", "frontend"][..], "invalid plugin name"),
            (&["a b", "--kind", "frontend"][..], "invalid plugin name"),
            (&["x", "y", "--kind", "frontend"][..], "one NAME only"),
            (&["x", "--kind"][..], "--kind needs a value"),
        ] {
            let err = args(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn destinations_inside_the_workspace_or_existing_are_refused() {
        let root = Path::new("/src/kiln");
        let err = check_destination(Path::new("/src/kiln/target/p"), root).unwrap_err();
        assert!(
            err.to_string().contains("inside the kiln workspace"),
            "{err}"
        );
        let existing = std::env::temp_dir();
        let err = check_destination(&existing, root).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(check_destination(Path::new("/nonexistent/kiln-np-test"), root).is_ok());
        // `..` cannot sneak back in.
        assert_eq!(
            normalize(Path::new("/nonexistent/a/../b/./c")),
            PathBuf::from("/nonexistent/b/c")
        );
    }

    #[test]
    fn every_placeholder_is_filled() {
        for kind in [Kind::Frontend, Kind::Instruction, Kind::Primitive] {
            let a = Args {
                name: "my-plugin".into(),
                kind,
                dir: None,
            };
            for (rel, text) in files(&a, Path::new("/src/kiln")) {
                assert!(!text.contains("__"), "{kind:?} {rel}: {text}");
                if rel == "Cargo.toml" {
                    assert!(
                        text.contains("path = \"/src/kiln/crates/kiln-plugin-sdk\""),
                        "{text}"
                    );
                }
            }
            let lib = &files(&a, Path::new("/src/kiln"))[1].1;
            assert!(lib.contains("name: \"my-plugin\""), "{lib}");
            if kind == Kind::Instruction {
                assert!(lib.contains("[\"MY_PLUGIN\"]"), "{lib}");
            }
        }
    }
}
