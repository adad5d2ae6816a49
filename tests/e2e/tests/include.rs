//! The instruction plugins that answer with text to run in their place, through the real
//! binary: `INCLUDE <fragment>` (its RUN output and ENV in the image, its errors at its own file
//! and line, edits re-running what they change), the message without the plugin, and
//! `PACKAGES apt ...` expanding to a RUN whose cache mounts really persist between builds.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::*;

/// The plugin packages this file tests.
const OURS: [&str; 2] = ["kiln-include", "kiln-packages"];

/// A sandbox with the Dockerfile frontend, exec and our two plugins.
fn kiln() -> Kiln {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    for p in OURS {
        k.add_plugin(p);
    }
    k
}

fn config_of(tar: &Path) -> serde_json::Value {
    json(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel} in the image: {e}"))
}

const DOCKERFILE: &str = "FROM bb
ARG WHO=kiln PART=setup
INCLUDE frag/${PART}.df
RUN cat \"$GREETING_FILE\" > /copied && echo \"suffix=$SUFFIX\" > /suffix
";

const SETUP: &str = "# what our images share
ENV GREETING_FILE=/greeting
RUN echo \"hello $WHO\" > /greeting
ARG SUFFIX=from-the-fragment
INCLUDE ./frag/more.df
";

const MORE: &str = "RUN echo nested-1 > /nested\n";

#[test]
fn include_runs_the_fragment_in_the_including_stage() {
    let k = kiln();
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("frag/setup.df", SETUP),
            ("frag/more.df", MORE),
        ],
    );
    let tar = k.path("image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let first = build_bb(&k, &[], &ctx, &["-t", "inc:1", "--output", &dest]).ok();
    let rootfs = k.unpack(&tar, "first", "1").join("rootfs");
    // The fragment's RUN saw the including stage's ARG; the Dockerfile's RUN after the
    // INCLUDE saw the fragment's ENV, its ARG and its files.
    assert_eq!(read(&rootfs, "greeting"), "hello kiln\n");
    assert_eq!(read(&rootfs, "copied"), "hello kiln\n");
    assert_eq!(read(&rootfs, "suffix"), "suffix=from-the-fragment\n");
    assert_eq!(read(&rootfs, "nested"), "nested-1\n");
    let cfg = config_of(&tar);
    let env = cfg["config"]["Env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e == "GREETING_FILE=/greeting"),
        "{env:?}"
    );
    assert_eq!(
        first.step_state("echo nested-1"),
        "DONE",
        "{}",
        first.stderr
    );

    // Editing the nested fragment re-runs its step and what follows; the steps before it
    // stay cached.
    std::fs::write(ctx.join("frag/more.df"), "RUN echo nested-2 > /nested\n").unwrap();
    let out = k.path("second");
    let second = build_local_with(
        &k,
        &ctx,
        &out,
        &[
            "--build-context",
            &format!("bb=oci-layout://{}:latest", busybox_layout().display()),
        ],
    )
    .ok();
    assert_eq!(read(&out, "nested"), "nested-2\n");
    assert_eq!(
        second.step_state("echo nested-2"),
        "DONE",
        "{}",
        second.stderr
    );
    assert_eq!(
        second.step_state("hello kiln"),
        "CACHED",
        "{}",
        second.stderr
    );
}

#[test]
fn errors_in_a_fragment_name_its_file_and_line_and_show_its_lines() {
    let k = kiln();
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nRUN echo dockerfile-line-2\nINCLUDE frag/bad.df\n",
            ),
            ("frag/bad.df", "ENV A=1\nCOPY --bogus a /b\n"),
            (
                "frag/fails.df",
                "ENV A=1\n\nRUN echo failing-step && exit 3\n",
            ),
        ],
    );
    // An error the frontend finds: at the fragment's line, with the INCLUDE that led there.
    let r = build_bb(&k, &[], &ctx, &[]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("frag/bad.df:2"), "{}", r.stderr);
    assert!(
        r.stderr.contains("(from INCLUDE at Dockerfile:3)"),
        "{}",
        r.stderr
    );
    // The excerpt is the fragment's, not the Dockerfile's line 2.
    assert!(r.stderr.contains(">>> COPY --bogus a /b"), "{}", r.stderr);
    assert!(
        !r.stderr.contains(">>> RUN echo dockerfile-line-2"),
        "{}",
        r.stderr
    );

    // A step of the fragment that fails when it runs: shown at the fragment's line too.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bb\nRUN echo dockerfile-line-2\nINCLUDE frag/fails.df\n",
    )
    .unwrap();
    let r = build_bb(&k, &[], &ctx, &[]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(">>> RUN echo failing-step && exit 3"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("fails.df:3"), "{}", r.stderr);
    assert!(
        !r.stderr.contains(">>> INCLUDE frag/fails.df"),
        "{}",
        r.stderr
    );

    // A fragment that is not there: at the INCLUDE line, naming the path.
    std::fs::write(ctx.join("Dockerfile"), "FROM bb\n\nINCLUDE frag/none.df\n").unwrap();
    let r = build_bb(&k, &[], &ctx, &[]).fails();
    assert!(
        r.stderr
            .contains("INCLUDE frag/none.df: no such file in the build context"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Dockerfile:3"), "{}", r.stderr);
}

/// A directory holding a copy of `kiln` and, beside it, a `plugins/` directory with only the
/// Dockerfile frontend and exec: no INCLUDE plugin anywhere kiln looks.
fn kiln_without_include(k: &Kiln) -> PathBuf {
    let dir = k.path("bare");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(target_dir().join("kiln"), dir.join("kiln")).unwrap();
    for p in ["kiln-frontend-dockerfile", "kiln-exec"] {
        let lib = plugin_lib(p);
        std::fs::copy(&lib, dir.join("plugins").join(lib.file_name().unwrap())).unwrap();
    }
    dir.join("kiln")
}

#[test]
fn without_the_plugin_include_is_an_unknown_instruction() {
    let k = kiln();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nENV A=1\nINCLUDE frag/setup.df\n",
        )],
    );
    let empty = k.write("no-plugins", &[]);
    let out = Command::new(kiln_without_include(&k))
        .env("XDG_CONFIG_HOME", k.path("xdg-config"))
        .env("KILN_ROOT", k.path("store"))
        .env("KILN_PLUGIN_PATH", &empty)
        .args(["build", "--progress=plain", ctx.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown instruction INCLUDE (no plugin provides it)"),
        "{stderr}"
    );
    assert!(stderr.contains("Dockerfile:3"), "{stderr}");
    assert!(stderr.contains(">>> INCLUDE frag/setup.df"), "{stderr}");
    assert!(!stderr.contains("panicked at"), "{stderr}");

    // The same Dockerfile builds with the plugin installed.
    std::fs::write(ctx.join("frag.df"), "ENV B=2\n").unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nINCLUDE frag.df\n").unwrap();
    k.run(&["build", ctx.to_str().unwrap()]).ok();
}

/// A stand-in `apt-get` for the busybox base: records its arguments in the image, lists what
/// the cache directories held before it ran, then leaves something new in each of them.
const APT_GET: &str = r#"#!/bin/sh
echo "apt-get $*" >> /apt-calls
if [ "$1" = install ]; then
  ls /var/cache/apt /var/lib/apt > /cache-before
  echo "run $$" > "/var/cache/apt/archive-$$.deb"
  echo lists > /var/lib/apt/lists-marker
fi
"#;

fn packages_dockerfile(packages: &str) -> String {
    format!(
        "FROM bb\n\
         COPY --chmod=755 apt-get /usr/local/bin/apt-get\n\
         RUN mkdir -p /etc/apt/apt.conf.d && echo 'keep me out' > /etc/apt/apt.conf.d/docker-clean\n\
         PACKAGES apt {packages}\n"
    )
}

#[test]
fn packages_apt_runs_the_idiomatic_install_with_cache_mounts_that_persist() {
    let k = kiln();
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", &packages_dockerfile("curl ca-certificates")),
            ("apt-get", APT_GET),
        ],
    );
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    let out = k.path("first");
    build_local_with(&k, &ctx, &out, &["--build-context", &bb]).ok();
    assert_eq!(
        read(&out, "apt-calls"),
        "apt-get update\napt-get install -y --no-install-recommends curl ca-certificates\n"
    );
    // The cache mounts started empty, and what apt left there is not in the image.
    assert_eq!(
        read(&out, "cache-before").trim(),
        "/var/cache/apt:\n\n/var/lib/apt:"
    );
    assert!(!out.join("var/lib/apt/lists-marker").exists());
    assert!(std::fs::read_dir(out.join("var/cache/apt"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
    // docker-clean (which empties apt's cache after every install) is gone, keep-cache is set.
    assert!(!out.join("etc/apt/apt.conf.d/docker-clean").exists());
    assert!(read(&out, "etc/apt/apt.conf.d/keep-cache")
        .contains("Binary::apt::APT::Keep-Downloaded-Packages \"true\";"));

    // A longer package list re-runs the step; it finds the first run's downloads.
    std::fs::write(
        ctx.join("Dockerfile"),
        packages_dockerfile("curl ca-certificates jq"),
    )
    .unwrap();
    let out = k.path("second");
    let r = build_local_with(&k, &ctx, &out, &["--build-context", &bb]).ok();
    // The step shows the RUN it expanded to.
    assert_eq!(
        r.step_state("apt-get install -y --no-install-recommends curl ca-certificates jq"),
        "DONE",
        "{}",
        r.stderr
    );
    assert_eq!(
        read(&out, "apt-calls"),
        "apt-get update\napt-get install -y --no-install-recommends curl ca-certificates jq\n"
    );
    let before = read(&out, "cache-before");
    assert!(before.contains("archive-"), "{before}");
    assert!(before.contains("lists-marker"), "{before}");
}

#[test]
fn include_builds_on_a_remote_builder_from_the_synced_context() {
    use kiln_e2e::serve::Daemon;
    let k = kiln();
    // The daemon inherits the sandbox's plugin path: it has the INCLUDE plugin.
    let daemon = Daemon::unix(&k, "run/kiln.sock", "daemon-root", &[]);
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("frag/setup.df", SETUP),
            ("frag/more.df", MORE),
        ],
    );
    let out = k.path("out");
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    build_local_with(
        &k,
        &ctx,
        &out,
        &["--builder", &daemon.addr, "--build-context", &bb],
    )
    .ok();
    assert_eq!(read(&out, "copied"), "hello kiln\n");
    assert_eq!(read(&out, "nested"), "nested-1\n");

    // An error in a fragment names the fragment's file and line there too.
    std::fs::write(ctx.join("frag/more.df"), "COPY --bogus a /b\n").unwrap();
    let r = build_local_with(
        &k,
        &ctx,
        &out,
        &["--builder", &daemon.addr, "--build-context", &bb],
    )
    .fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("frag/more.df:1"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("(from INCLUDE at frag/setup.df:5, from INCLUDE at Dockerfile:3)"),
        "{}",
        r.stderr
    );
    // The excerpt is the fragment's, read from this machine's context as a local build
    // reads it, not the Dockerfile's line 1.
    assert!(r.stderr.contains(">>> COPY --bogus a /b"), "{}", r.stderr);
    assert!(!r.stderr.contains(">>> FROM bb"), "{}", r.stderr);

    // A step of a fragment that fails when it runs on the daemon: the fragment's lines too.
    std::fs::write(
        ctx.join("frag/more.df"),
        "ENV A=1\nRUN echo failing-step && exit 3\n",
    )
    .unwrap();
    let r = build_local_with(
        &k,
        &ctx,
        &out,
        &["--builder", &daemon.addr, "--build-context", &bb],
    )
    .fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(">>> RUN echo failing-step && exit 3"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("more.df:2"), "{}", r.stderr);
    assert!(
        !r.stderr.contains(">>> ARG WHO=kiln PART=setup"),
        "{}",
        r.stderr
    );
}
