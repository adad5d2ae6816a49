//! The workspace as `cargo metadata --no-deps` describes it, and the one "build it all and put the
//! plugins where `kiln` finds them" step that `test` and `demo` share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub struct Workspace {
    pub root: PathBuf,
    pub target_dir: PathBuf,
    pub packages: Vec<Package>,
}

pub struct Package {
    pub name: String,
    pub version: String,
    /// The directory of its `Cargo.toml`.
    pub dir: PathBuf,
    pub deps: Vec<Dep>,
    pub targets: Vec<Target>,
}

pub struct Dep {
    /// The package name (not the `package = ` rename).
    pub name: String,
    pub dev: bool,
}

pub struct Target {
    /// The crate name: `-` already replaced by `_`.
    pub name: String,
    pub kinds: Vec<String>,
    pub src_path: PathBuf,
}

impl Workspace {
    pub fn load() -> Result<Workspace> {
        let json =
            crate::output(crate::cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
                .context(
                    "cannot read the workspace; fix the manifest cargo complains about above",
                )?;
        let meta: Value =
            serde_json::from_str(&json).context("`cargo metadata` printed invalid JSON")?;
        parse(&meta)
    }

    /// The directory of the debug profile's artifacts.
    pub fn debug_dir(&self) -> PathBuf {
        self.target_dir.join("debug")
    }

    /// Scratch space of the test setup (registry storage, fixtures).
    pub fn test_dir(&self) -> PathBuf {
        self.target_dir.join("kiln-test")
    }

    /// `dir` relative to the workspace root, with `/` separators (for matching and messages).
    pub fn relative(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn parse(meta: &Value) -> Result<Workspace> {
    let root = path_field(meta, "workspace_root")?;
    let target_dir = path_field(meta, "target_directory")?;
    let mut packages = Vec::new();
    for p in array(meta, "packages")? {
        let name = str_field(p, "name")?.to_owned();
        let version = str_field(p, "version")?.to_owned();
        let manifest = path_field(p, "manifest_path")?;
        let dir = manifest
            .parent()
            .with_context(|| format!("manifest path of {name} has no parent"))?
            .to_path_buf();
        let mut deps = Vec::new();
        for d in array(p, "dependencies")? {
            deps.push(Dep {
                name: str_field(d, "name")?.to_owned(),
                dev: d.get("kind").and_then(Value::as_str) == Some("dev"),
            });
        }
        let mut targets = Vec::new();
        for t in array(p, "targets")? {
            targets.push(Target {
                name: str_field(t, "name")?.to_owned(),
                kinds: array(t, "kind")?
                    .iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect(),
                src_path: path_field(t, "src_path")?,
            });
        }
        packages.push(Package {
            name,
            version,
            dir,
            deps,
            targets,
        });
    }
    Ok(Workspace {
        root,
        target_dir,
        packages,
    })
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v.get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("`cargo metadata`: `{key}` is missing or not an array"))
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("`cargo metadata`: `{key}` is missing or not a string"))
}

fn path_field(v: &Value, key: &str) -> Result<PathBuf> {
    str_field(v, key).map(PathBuf::from)
}

/// `cargo build --workspace` (debug), then copies every plugin library of a package under
/// `plugins/` or `frontends/` into `target/debug/plugins/`, where `target/debug/kiln` finds them.
/// Test plugins (`tests/plugins/`) stay out: tests name them explicitly.
pub fn build_with_plugins(ws: &Workspace) -> Result<()> {
    crate::run(
        crate::cargo()
            .current_dir(&ws.root)
            .args(["build", "--workspace"]),
    )
    .context("the workspace does not build; fix the errors above")?;
    install_plugins(ws, &ws.debug_dir())
}

/// Copies the plugin libraries built in `profile_dir` (`target/debug` or `target/release`) into
/// its `plugins/` directory, where the `kiln` binary of that profile finds them.
pub fn install_plugins(ws: &Workspace, profile_dir: &Path) -> Result<()> {
    let dest = profile_dir.join("plugins");
    std::fs::create_dir_all(&dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let mut wanted = Vec::new();
    for (pkg, file) in bundled_plugins(ws) {
        let built = profile_dir.join(&file);
        if !built.is_file() {
            bail!(
                "{pkg} declares a cdylib but {} was not built; run `cargo build -p {pkg}` to see why",
                built.display(),
            );
        }
        // Copy beside, then rename: a `kiln` still running keeps its mapping of the old file.
        let tmp = dest.join(temp_name(&file));
        let copied = std::fs::copy(&built, &tmp)
            .with_context(|| format!("cannot copy {} to {}", built.display(), tmp.display()))
            .and_then(|_| {
                std::fs::rename(&tmp, dest.join(&file))
                    .with_context(|| format!("cannot move {} into place", tmp.display()))
            });
        if let Err(e) = copied {
            // Best effort: the error above is what matters.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        wanted.push(file);
    }
    // A plugin that was renamed or deleted must not linger and be loaded by the next run.
    for entry in
        std::fs::read_dir(&dest).with_context(|| format!("cannot list {}", dest.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list {}", dest.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".so") && !wanted.contains(&name) {
            crate::remove_if_exists(&entry.path())?;
        }
    }
    println!(
        "xtask: {} plugin(s) in {}: {}",
        wanted.len(),
        dest.display(),
        wanted.join(", ")
    );
    Ok(())
}

/// A temporary name for a copy of `file` in the plugin directory that no other install
/// uses: two xtask processes (or threads) installing at once must not write into one file
/// and rename it from under each other. Starts with a dot and does not end in `.so`, so that
/// no `kiln` loads it and the stale-plugin sweep leaves it alone.
fn temp_name(file: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{file}.{}.{n}.tmp", std::process::id())
}

/// The plugins shipped with kiln: (package, library file name) of every cdylib of a package
/// under `plugins/` or `frontends/`. Test plugins (`tests/plugins/`) are not shipped.
pub fn bundled_plugins(ws: &Workspace) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for pkg in &ws.packages {
        let rel = ws.relative(&pkg.dir);
        if !(rel.starts_with("plugins/") || rel.starts_with("frontends/")) {
            continue;
        }
        for t in pkg
            .targets
            .iter()
            .filter(|t| t.kinds.iter().any(|k| k == "cdylib"))
        {
            out.push((pkg.name.clone(), format!("lib{}.so", t.name)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_per_process_and_call() {
        let a = temp_name("libkiln_exec.so");
        let b = temp_name("libkiln_exec.so");
        assert_ne!(a, b);
        let pid = format!(".{}.", std::process::id());
        for n in [&a, &b] {
            assert!(
                n.starts_with(".libkiln_exec.so.") && n.contains(&pid),
                "{n}"
            );
            assert!(!n.ends_with(".so"), "{n} would be taken for a plugin");
        }
    }

    /// Installs at once into one plugin directory (as two `cargo xtask` runs do) all succeed
    /// and leave the whole library in place. With one temporary name per plugin, one install
    /// renamed the other's half-written copy, or found it gone (ENOENT).
    #[test]
    fn concurrent_installs_do_not_collide() {
        let root = std::env::temp_dir().join(format!("xtask-install-test-{}", std::process::id()));
        crate::remove_if_exists(&root).expect("no leftover");
        let profile = root.join("target/debug");
        std::fs::create_dir_all(&profile).expect("profile directory");
        // Large enough that copies overlap in time.
        let lib: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(profile.join("libkiln_exec.so"), &lib).expect("write the library");
        let ws = Workspace {
            root: root.clone(),
            target_dir: root.join("target"),
            packages: vec![Package {
                name: "kiln-exec".into(),
                version: "0.1.0".into(),
                dir: root.join("plugins/exec"),
                deps: Vec::new(),
                targets: vec![Target {
                    name: "kiln_exec".into(),
                    kinds: vec!["cdylib".into(), "rlib".into()],
                    src_path: root.join("plugins/exec/src/lib.rs"),
                }],
            }],
        };
        std::thread::scope(|s| {
            let installs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..10 {
                            install_plugins(&ws, &profile)?;
                        }
                        Ok::<(), anyhow::Error>(())
                    })
                })
                .collect();
            for i in installs {
                i.join().expect("no panic").expect("every install succeeds");
            }
        });
        let dest = profile.join("plugins");
        assert!(
            std::fs::read(dest.join("libkiln_exec.so")).expect("installed") == lib,
            "the installed library is the built one, whole"
        );
        let left: Vec<_> = std::fs::read_dir(&dest)
            .expect("list plugins")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["libkiln_exec.so"], "no temporary file is left");
        crate::remove_if_exists(&root).expect("cleanup");
    }

    #[test]
    fn parses_cargo_metadata() {
        let meta = serde_json::json!({
            "workspace_root": "/w",
            "target_directory": "/w/target",
            "packages": [{
                "name": "kiln-frontend-dockerfile",
                "version": "0.1.0",
                "manifest_path": "/w/frontends/dockerfile/Cargo.toml",
                "dependencies": [
                    {"name": "kiln-plugin-sdk", "kind": null},
                    {"name": "tempfile", "kind": "dev"}
                ],
                "targets": [{
                    "name": "kiln_frontend_dockerfile",
                    "kind": ["cdylib", "rlib"],
                    "src_path": "/w/frontends/dockerfile/src/lib.rs"
                }]
            }]
        });
        let ws = parse(&meta).expect("valid metadata");
        let p = &ws.packages[0];
        assert_eq!(ws.relative(&p.dir), "frontends/dockerfile");
        assert_eq!(p.deps.len(), 2);
        assert!(!p.deps[0].dev && p.deps[1].dev);
        assert_eq!(p.targets[0].kinds, ["cdylib", "rlib"]);
    }
}
