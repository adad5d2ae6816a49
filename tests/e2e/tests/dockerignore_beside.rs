//! The Dockerfile-specific ignore file (`<name>.dockerignore`) is read beside the Dockerfile,
//! as BuildKit reads it from its `dockerfile` local, falling back to the context's
//! `.dockerignore`; a file of that name at the context root is an ordinary file.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;

const DOCKERFILE: &str = "FROM scratch\nCOPY . /ctx/\n";

/// Builds `dockerfile` on `ctx` into an OCI tarball and returns the unpacked rootfs's `/ctx`.
fn build(k: &Kiln, name: &str, dockerfile: &Path, ctx: &Path) -> PathBuf {
    let tar = k.path(&format!("{name}.tar"));
    let dest = format!("type=oci,dest={}", tar.display());
    k.run(&[
        "build",
        "--progress=plain",
        "-t",
        &format!("{name}:1"),
        "--output",
        &dest,
        "-f",
        dockerfile.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    k.unpack(&tar, name, "1").join("rootfs/ctx")
}

/// The files of `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_dockerfile_specific_ignore_file_is_read_beside_the_dockerfile() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            ("docker/app.Dockerfile", DOCKERFILE),
            ("docker/app.Dockerfile.dockerignore", "secret.txt\ndocker\n"),
            // Stray: not beside the Dockerfile, so not its ignore file (kiln used it).
            ("app.Dockerfile.dockerignore", "keep.txt\n"),
            (".dockerignore", "root-ignored.txt\ndocker\n"),
            ("secret.txt", "secret\n"),
            ("keep.txt", "keep\n"),
            ("root-ignored.txt", "root\n"),
        ],
    );
    let dockerfile = ctx.join("docker/app.Dockerfile");

    // The file beside the Dockerfile wins over the context's .dockerignore.
    let out = build(&k, "beside", &dockerfile, &ctx);
    assert_eq!(
        files(&out),
        [
            ".dockerignore",
            "app.Dockerfile.dockerignore",
            "keep.txt",
            "root-ignored.txt"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "keep\n"
    );

    // None beside: the context's .dockerignore, never `<ctx>/app.Dockerfile.dockerignore`.
    std::fs::remove_file(ctx.join("docker/app.Dockerfile.dockerignore")).unwrap();
    let out = build(&k, "fallback", &dockerfile, &ctx);
    assert_eq!(
        files(&out),
        [
            ".dockerignore",
            "app.Dockerfile.dockerignore",
            "keep.txt",
            "secret.txt"
        ]
    );

    // A Dockerfile outside the context has its ignore file beside it too.
    let outside = k.write(
        "elsewhere",
        &[
            ("app.Dockerfile", DOCKERFILE),
            (
                "app.Dockerfile.dockerignore",
                "keep.txt\ndocker\n*.dockerignore\n",
            ),
        ],
    );
    let out = build(&k, "outside", &outside.join("app.Dockerfile"), &ctx);
    assert_eq!(files(&out), ["root-ignored.txt", "secret.txt"]);
}
