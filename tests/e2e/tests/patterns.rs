//! Patterns of public projects' Dockerfiles that kiln refused (issue 8): a `RUN --mount` without a
//! target (buildx, docker/cli, compose, moby, BuildKit), and COPY of several sources into `.`,
//! `..` or an existing directory without a trailing `/` (most Go projects). Images are built on
//! the busybox fixture of the loopback test registry and exported with `type=local`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_e2e::*;

fn read(root: &Path, p: &str) -> String {
    std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn mount_without_target_is_the_workdir() {
    ensure_built();
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let dockerfile = format!(
        "FROM scratch AS binaries\n\
         COPY tool-a tool-b /\n\
         FROM {registry}/busybox:latest\n\
         WORKDIR /work\n\
         RUN --mount=from=binaries mkdir -p /out && cp tool-* /out/ && pwd > /out/pwd\n\
         RUN --mount=type=bind,source=sub cp note /out/note && ls -A /work > /out/seen\n\
         RUN --mount=type=cache echo cached > /work/kept && mkdir -p /out && ls -A . > /out/cache\n"
    );
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", &dockerfile),
            ("tool-a", "tool one\n"),
            ("tool-b", "tool two\n"),
            ("sub/note", "from the context\n"),
        ],
    );
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();
    // The stage was mounted at the working directory: `cp tool-*` found its files there.
    assert_eq!(read(&out, "out/tool-a"), "tool one\n");
    assert_eq!(read(&out, "out/tool-b"), "tool two\n");
    assert_eq!(read(&out, "out/pwd"), "/work\n");
    // A context sub-directory, mounted there too.
    assert_eq!(read(&out, "out/note"), "from the context\n");
    assert_eq!(read(&out, "out/seen"), "note\n");
    // The cache mount covered the working directory: what was written there stays in the cache.
    assert_eq!(read(&out, "out/cache"), "kept\n");
    // Mounts leave nothing in the image's working directory.
    let left: Vec<_> = std::fs::read_dir(out.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn several_sources_into_dot_dotdot_and_existing_directories() {
    ensure_built();
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let dockerfile = format!(
        "FROM {registry}/busybox:latest\n\
         WORKDIR /src\n\
         COPY go.mod go.sum .\n\
         COPY go.* ./globbed/\n\
         WORKDIR /src/app\n\
         COPY main.go util.go ..\n\
         RUN mkdir /existing\n\
         COPY a.txt b.txt /existing\n\
         COPY conf /existing\n\
         COPY <<ONE <<TWO /existing\n\
         first\n\
         ONE\n\
         second\n\
         TWO\n"
    );
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", &dockerfile),
            ("go.mod", "module example.com/x\n"),
            ("go.sum", "sums\n"),
            ("main.go", "package main\n"),
            ("util.go", "package util\n"),
            ("a.txt", "a\n"),
            ("b.txt", "b\n"),
            ("conf/app.toml", "x = 1\n"),
        ],
    );
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();
    assert_eq!(read(&out, "src/go.mod"), "module example.com/x\n");
    assert_eq!(read(&out, "src/go.sum"), "sums\n");
    assert_eq!(read(&out, "src/globbed/go.sum"), "sums\n");
    assert_eq!(read(&out, "src/main.go"), "package main\n");
    assert_eq!(read(&out, "src/util.go"), "package util\n");
    assert!(out.join("src/app").is_dir());
    // A destination without `/` that exists as a directory receives the sources by name.
    assert_eq!(read(&out, "existing/a.txt"), "a\n");
    assert_eq!(read(&out, "existing/b.txt"), "b\n");
    assert_eq!(read(&out, "existing/app.toml"), "x = 1\n");
    assert_eq!(read(&out, "existing/ONE"), "first\n");
    assert_eq!(read(&out, "existing/TWO"), "second\n");
}
