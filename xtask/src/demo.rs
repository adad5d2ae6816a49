//! `cargo xtask demo`: the README's first command. Builds kiln (debug profile: a release build takes
//! too long on a 2-core machine), makes the busybox base image without internet (an OCI layout
//! from Debian's busybox-static, installed when missing), then builds `examples/demo/` — a
//! multi-stage Dockerfile with RUN steps on that base — into an OCI archive.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::workspace::{self, Workspace};

pub fn run() -> Result<ExitCode> {
    crate::test::install_missing(&[("busybox", "busybox-static"), ("skopeo", "skopeo")])?;
    let ws = Workspace::load()?;
    workspace::build_with_plugins(&ws)?;
    crate::fixtures::build(&ws, None)?;
    let base = crate::fixtures::layout_dir(&ws);

    let kiln = ws.debug_dir().join("kiln");
    if !kiln.is_file() {
        bail!(
            "{} was not built: the workspace has no `kiln` binary yet (package kiln-cli)",
            kiln.display()
        );
    }
    let out_dir = ws.target_dir.join("demo");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let archive = out_dir.join("demo.tar");
    crate::remove_if_exists(&archive)?;

    let mut build = Command::new(&kiln);
    build
        .current_dir(&ws.root)
        .args([
            "build",
            "-f",
            "examples/demo/Dockerfile",
            "--progress=plain",
            "-t",
            "kiln-demo:latest",
            "--build-context",
        ])
        // `FROM busybox` in the demo resolves to the local base image, no registry needed.
        .arg(format!("busybox=oci-layout://{}:latest", base.display()))
        .arg("--output")
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg("examples/demo");
    println!("xtask: running {}", crate::show(&build));
    crate::run(&mut build).context("kiln could not build the demo")?;

    let size = archive
        .metadata()
        .with_context(|| format!("kiln succeeded but wrote no {}", archive.display()))?
        .len();
    println!(
        "\nThe demo image is {} ({size} bytes, an OCI archive).",
        archive.display()
    );
    if crate::find_on_path("skopeo").is_some() {
        let inspect = crate::output(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci-archive:{}", archive.display())),
        )
        .context("skopeo cannot read the demo image")?;
        println!(
            "skopeo inspect oci-archive:{}\n{}",
            archive.display(),
            inspect.trim_end()
        );
    } else {
        println!("(install skopeo to see its manifest and config: apt-get install skopeo)");
    }
    Ok(ExitCode::SUCCESS)
}
