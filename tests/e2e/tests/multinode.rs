//! Builds spread over the nodes of a builder (issue 11 item 4): two `kiln serve` daemons on
//! unix sockets, each with its own store, one declared `linux/amd64` and one `linux/arm64`,
//! made into one builder with `kiln builder create` and `--append`. A two-platform build goes
//! through it in one command: each node builds its platform (asserted from the daemons' stores
//! and logs), and the client writes one OCI index (tarball read by skopeo `--override-arch`
//! and umoci) or pushes one (the loopback registry: the nodes push by digest, the client the
//! index under the tag). A platform no node builds is refused naming the nodes; the first node
//! to fail cancels the others.
//!
//! The Dockerfile has no RUN step for the target (FROM scratch + COPY of `$TARGETARCH.txt`),
//! so no emulation is needed. Needs skopeo, umoci, tar and kill; the push test needs the
//! loopback registry (`cargo xtask test` starts it); the cancellation test the busybox fixture.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use kiln_e2e::serve::{builder_create, Daemon};
use kiln_e2e::{busybox_layout, json, platform_image, registry_json, tool, Kiln, Run};

const PLUGINS: &[&str] = &["kiln-frontend-dockerfile", "kiln-exec"];
const PLATFORMS: &str = "linux/amd64,linux/arm64";
const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// Each platform's image holds its own file and labels.
const DOCKERFILE: &str = "\
FROM scratch
ARG TARGETARCH TARGETPLATFORM
COPY $TARGETARCH.txt /arch.txt
LABEL arch=$TARGETARCH platform=$TARGETPLATFORM
";

/// A `kiln serve` of the test: `<test dir>/run/<name>.sock`, store `<test dir>/root-<name>`,
/// reporting `platform`.
fn node(k: &Kiln, name: &str, platform: &str) -> Daemon {
    Daemon::unix(
        k,
        &format!("run/{name}.sock"),
        &format!("root-{name}"),
        &["--platform", platform],
    )
}

/// Daemons `a` (linux/amd64) and `b` (linux/arm64) and the builder `two` of both, made as a
/// user makes it.
fn two_nodes(k: &Kiln) -> (Daemon, Daemon) {
    let a = node(k, "a", "linux/amd64");
    let b = node(k, "b", "linux/arm64");
    builder_create(
        k,
        "two",
        &["--node", "a", "--platform", "linux/amd64"],
        &a.addr,
    )
    .ok();
    builder_create(
        k,
        "two",
        &["--append", "--node", "b", "--platform", "linux/arm64"],
        &b.addr,
    )
    .ok();
    (a, b)
}

fn context(k: &Kiln) -> String {
    k.write(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("amd64.txt", "built for amd64\n"),
            ("arm64.txt", "built for arm64\n"),
        ],
    )
    .display()
    .to_string()
}

/// `kiln build --builder two --platform linux/amd64,linux/arm64 EXTRA CTX`.
fn build(k: &Kiln, extra: &[&str], ctx: &str) -> Run {
    build_for(k, PLATFORMS, extra, ctx)
}

/// `kiln build --builder two --platform PLATFORMS EXTRA CTX`.
fn build_for(k: &Kiln, platforms: &str, extra: &[&str], ctx: &str) -> Run {
    let mut args = vec![
        "build",
        "--builder",
        "two",
        "--progress=plain",
        "--platform",
        platforms,
    ];
    args.extend_from_slice(extra);
    args.push(ctx);
    k.run(&args)
}

/// The index's entries: (platform `os/arch`, manifest digest), in order.
fn entries(index: &serde_json::Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What skopeo and umoci read of `image` for each architecture: its config and its file.
fn assert_each_platform(k: &Kiln, image: &str, name: &str, extra: &[&str]) {
    for arch in ARCHES {
        let (cfg, bundle) = platform_image(k, image, name, arch, extra, &["--rootless"]);
        assert_eq!(cfg["architecture"], arch, "{cfg}");
        assert_eq!(cfg["config"]["Labels"]["arch"], arch, "{cfg}");
        assert_eq!(
            cfg["config"]["Labels"]["platform"],
            format!("linux/{arch}"),
            "{cfg}"
        );
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/arch.txt")).unwrap(),
            format!("built for {arch}\n")
        );
    }
}

/// Each node built its own platform: its store holds that platform's manifest and not the
/// other's, and its log shows one build, done.
fn assert_each_node_built_its_platform(a: &mut Daemon, b: &mut Daemon, index: &[(String, String)]) {
    let manifest = |platform: &str| {
        index
            .iter()
            .find(|(p, _)| p == platform)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no {platform} in {index:?}"))
    };
    let (amd64, arm64) = (manifest("linux/amd64"), manifest("linux/arm64"));
    assert!(a.has_blob(&amd64), "node a built linux/amd64 ({amd64})");
    assert!(!a.has_blob(&arm64), "node a did not build linux/arm64");
    assert!(b.has_blob(&arm64), "node b built linux/arm64 ({arm64})");
    assert!(!b.has_blob(&amd64), "node b did not build linux/amd64");
    for d in [a, b] {
        d.line_within("build 1: done", Duration::from_secs(10));
    }
}

#[test]
fn two_nodes_build_one_oci_index_each_its_own_platform() {
    let k = Kiln::new(PLUGINS);
    let (mut a, mut b) = two_nodes(&k);
    let ctx = context(&k);
    let tar = k.path("out.tar");
    let run = build(
        &k,
        &[
            "-t",
            "example.test/multinode:1",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ],
        &ctx,
    )
    .ok();
    // Each node's steps, named with its platform as buildx names them.
    for arch in ARCHES {
        let copy = run
            .steps()
            .into_iter()
            .find(|(n, _)| n.starts_with(&format!("[linux/{arch} ")) && n.contains("COPY"))
            .unwrap_or_else(|| panic!("no COPY step of linux/{arch} in:\n{}", run.stderr));
        assert_eq!(copy.1, "DONE", "{}", run.stderr);
    }

    // The layout names one index (tagged as -t says), listing each platform in order.
    let t = tar.display().to_string();
    let top = json(&tool("tar", &["-xOf", &t, "index.json"]));
    let top = &top["manifests"].as_array().unwrap()[..];
    assert_eq!(top.len(), 1, "{top:?}");
    assert_eq!(
        top[0]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        top[0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    let index_digest = top[0]["digest"].as_str().unwrap();
    assert_eq!(run.digest(), index_digest, "the summary names the index");
    let blob = format!(
        "blobs/sha256/{}",
        index_digest.trim_start_matches("sha256:")
    );
    let index = json(&tool("tar", &["-xOf", &t, &blob]));
    let listed = entries(&index);
    let platforms: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // Every blob once.
    let names = tool("tar", &["-tf", &t]);
    let mut blobs: Vec<&str> = names
        .lines()
        .filter(|l| l.starts_with("blobs/sha256/"))
        .collect();
    let all = blobs.len();
    blobs.sort_unstable();
    blobs.dedup();
    assert_eq!(blobs.len(), all, "{names}");

    assert_each_platform(&k, &format!("oci-archive:{t}:1"), "tar", &[]);
    assert_each_node_built_its_platform(&mut a, &mut b, &listed);
}

#[test]
fn two_nodes_push_one_index_by_tag_and_their_images_by_digest() {
    let registry = kiln_e2e::test_registry();
    let k = Kiln::new(PLUGINS);
    let (mut a, mut b) = two_nodes(&k);
    let ctx = context(&k);
    // A repository of this test's own: its tag list is what this build pushed.
    let repo = unique_repo(&k, &registry, "multinode");
    let name = format!("{repo}:1");
    let meta = k.path("meta.json");
    build(
        &k,
        &[
            "-t",
            &name,
            "--push",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
        &ctx,
    )
    .ok();
    let image = format!("docker://{name}");
    let index = json(&tool(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &image],
    ));
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let listed = entries(&index);
    let platforms: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // The nodes pushed by digest: the only tag is the index's.
    let tags = registry_json(&["list-tags"], &repo);
    assert_eq!(tags["Tags"], serde_json::json!(["1"]), "{tags}");
    // The metadata names the index the tag names.
    let m = json(&std::fs::read_to_string(&meta).unwrap());
    let digest = m["containerimage.digest"].as_str().unwrap();
    let by_digest = registry_json(&["inspect", "--raw"], &format!("{repo}@{digest}"));
    assert_eq!(by_digest, index);

    assert_each_platform(&k, &image, "pushed", &["--tls-verify=false"]);
    assert_each_node_built_its_platform(&mut a, &mut b, &listed);

    // `push-by-digest=true` asked of the build: the index too goes under its digest only.
    let meta2 = k.path("meta2.json");
    let out = format!("type=registry,name={repo}:2,push-by-digest=true");
    build(
        &k,
        &["-o", &out, "--metadata-file", meta2.to_str().unwrap()],
        &ctx,
    )
    .ok();
    let m = json(&std::fs::read_to_string(&meta2).unwrap());
    let digest = m["containerimage.digest"].as_str().unwrap();
    let again = registry_json(&["inspect", "--raw"], &format!("{repo}@{digest}"));
    assert_eq!(entries(&again), listed);
    let tags = registry_json(&["list-tags"], &repo);
    assert_eq!(tags["Tags"], serde_json::json!(["1"]), "{tags}");
}

#[test]
fn a_platform_no_node_builds_is_refused_naming_the_nodes() {
    let k = Kiln::new(PLUGINS);
    let (_a, _b) = two_nodes(&k);
    let ctx = context(&k);
    let run = build_for(&k, "linux/amd64,linux/s390x", &[], &ctx).fails();
    assert!(
        run.stderr.contains(
            "no node of builder \"two\" builds linux/s390x: its nodes build a (linux/amd64); \
             b (linux/arm64)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn the_first_node_to_fail_cancels_the_others() {
    let layout = busybox_layout();
    let k = Kiln::new(PLUGINS);
    let (mut a, _b) = two_nodes(&k);
    // amd64 sleeps a minute; arm64 fails at once (exit 7).
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nARG TARGETARCH\nRUN if [ \"$TARGETARCH\" = amd64 ]; then echo amd64-sleeping \
             && sleep 60; else echo failing-on-$TARGETARCH && exit 7; fi\n",
        )],
    );
    let bb = format!("bb=oci-layout://{}:latest", layout.display());
    let started = Instant::now();
    let run = build(&k, &["--build-context", &bb], &ctx.display().to_string()).fails();
    // Without the cancellation the client would wait for amd64's minute.
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "took {:?}:\n{}",
        started.elapsed(),
        run.stderr
    );
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ERROR: failed to solve: "),
        "{}",
        run.stderr
    );
    // The failure is arm64's, its step named with its platform, as a local build of several
    // platforms shows it: the step's last lines, then the error.
    assert!(
        run.stderr.contains(" > [linux/arm64 1/1] RUN "),
        "{}",
        run.stderr
    );
    assert!(
        last.starts_with("ERROR: failed to solve: [linux/arm64 1/1] RUN ")
            && last.ends_with("exit code: 7"),
        "{last}"
    );
    // Node a's build ended, cancelled, not after its minute.
    a.line_within("build 1: failed", Duration::from_secs(20));
}

/// What the nodes' results are assembled into is what one machine writes for the same build:
/// the OCI tarball byte for byte (the same index, blobs and entry order), and `type=local` one
/// directory per platform.
#[test]
fn the_assembled_outputs_are_those_of_a_build_on_one_machine() {
    let k = Kiln::new(PLUGINS);
    let (_a, _b) = two_nodes(&k);
    let ctx = context(&k);
    let epoch = [("SOURCE_DATE_EPOCH", "0")];
    let (spread, local) = (k.path("spread.tar"), k.path("local.tar"));
    let files = k.path("files");
    let mut args = vec![
        "build",
        "--progress=plain",
        "--platform",
        PLATFORMS,
        "-t",
        "example.test/app:1",
    ];
    let oci = |t: &std::path::Path| format!("type=oci,dest={}", t.display());
    let (o_spread, o_local) = (oci(&spread), oci(&local));
    let o_files = format!("type=local,dest={}", files.display());
    let mut remote = args.clone();
    remote.extend(["--builder", "two", "-o", &o_spread, "-o", &o_files, &ctx]);
    k.run_env(&epoch, &remote).ok();
    // The client's own store: the builder `default`.
    args.extend(["--builder", "default", "-o", &o_local, &ctx]);
    k.run_env(&epoch, &args).ok();
    assert_eq!(
        std::fs::read(&spread).unwrap(),
        std::fs::read(&local).unwrap(),
        "the two-node tarball differs from the one-machine tarball:\n{}\n{}",
        tool("tar", &["-tvf", spread.to_str().unwrap()]),
        tool("tar", &["-tvf", local.to_str().unwrap()])
    );
    for arch in ARCHES {
        assert_eq!(
            std::fs::read_to_string(files.join(format!("linux_{arch}/arch.txt"))).unwrap(),
            format!("built for {arch}\n")
        );
    }
    let mut dirs: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["linux_amd64", "linux_arm64"]);
}

/// As buildx boots only the nodes a build uses: a node no platform goes to (here one that is
/// down) is never dialled, and one a platform needs that is down fails the build naming it.
#[test]
fn only_the_nodes_a_build_uses_are_dialled() {
    let k = Kiln::new(PLUGINS);
    let (_a, _b) = two_nodes(&k);
    let down = format!("unix://{}", k.path("run/down.sock").display());
    builder_create(
        &k,
        "two",
        &["--append", "--node", "c", "--platform", "linux/s390x"],
        &down,
    )
    .ok();
    let ctx = context(&k);
    let tar = k.path("out.tar");
    build(
        &k,
        &["-o", &format!("type=oci,dest={}", tar.display())],
        &ctx,
    )
    .ok();
    assert!(tar.is_file());
    let run = build_for(&k, "linux/amd64,linux/s390x", &[], &ctx).fails();
    assert!(
        run.stderr
            .contains(&format!("ERROR: cannot reach builder at {down}: ")),
        "{}",
        run.stderr
    );
}

/// Nodes declared without platforms build those their daemons report (`kiln serve
/// --platform`), asked of each daemon.
#[test]
fn undeclared_nodes_build_the_platforms_their_daemons_report() {
    let k = Kiln::new(PLUGINS);
    let mut a = node(&k, "a", "linux/amd64");
    let mut b = node(&k, "b", "linux/arm64");
    builder_create(&k, "rep", &["--node", "a"], &a.addr).ok();
    builder_create(&k, "rep", &["--append", "--node", "b"], &b.addr).ok();
    let ctx = context(&k);
    let tar = k.path("out.tar");
    let out = format!("type=oci,dest={}", tar.display());
    k.run(&[
        "build",
        "--builder",
        "rep",
        "--progress=plain",
        "--platform",
        "linux/arm64,linux/amd64",
        "-o",
        &out,
        &ctx,
    ])
    .ok();
    let t = tar.display().to_string();
    let top = json(&tool("tar", &["-xOf", &t, "index.json"]));
    let digest = top["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let listed = entries(&json(&tool("tar", &["-xOf", &t, &blob])));
    let platforms: Vec<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    // In the order of --platform.
    assert_eq!(platforms, ["linux/arm64", "linux/amd64"]);
    assert_each_node_built_its_platform(&mut a, &mut b, &listed);
}

/// A repository name of this test's own (lower-case letters and digits of its directory).
fn unique_repo(k: &Kiln, registry: &str, what: &str) -> String {
    let unique: String = k
        .dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    format!("{registry}/{what}-{}", unique.to_lowercase())
}

/// The states of the steps whose name holds `needle`.
fn states(run: &Run, needle: &str) -> Vec<(String, String)> {
    run.steps()
        .into_iter()
        .filter(|(name, _)| name.contains(needle))
        .collect()
}

#[test]
fn nodes_share_steps_through_a_registry_cache_and_a_spread_export_keeps_every_platform() {
    let registry = kiln_e2e::test_registry();
    let k = Kiln::new(PLUGINS);
    let (mut a, b) = two_nodes(&k);
    let ctx = context(&k);
    let cache = unique_repo(&k, &registry, "multinode-cache");
    let oci = |name: &str| format!("type=oci,dest={}", k.path(name).display());

    // Node a builds linux/amd64 and pushes its cache; node b, whose store never saw the
    // build, takes every step of the same platform from it.
    let first = build_for(
        &k,
        "linux/amd64",
        &[
            "--cache-to",
            &format!("type=registry,ref={cache}:amd64"),
            "-o",
            &oci("first.tar"),
        ],
        &ctx,
    )
    .ok();
    assert_eq!(first.step_state("COPY"), "DONE", "{}", first.stderr);
    // The node declared for the platform built it.
    a.line("build 1: done");
    let mut args = vec!["build", "--builder", &b.addr, "--progress=plain"];
    let from = format!("type=registry,ref={cache}:amd64");
    let out = oci("on-b.tar");
    args.extend([
        "--platform",
        "linux/amd64",
        "--cache-from",
        &from,
        "-o",
        &out,
        &ctx,
    ]);
    let on_b = k.run(&args).ok();
    assert_eq!(on_b.step_state("COPY"), "CACHED", "{}", on_b.stderr);
    assert_eq!(on_b.digest(), first.digest());

    // A spread build exports every platform's steps into the one cache (mode=max); fresh nodes
    // building both platforms from it run nothing.
    let spread = build(
        &k,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache}:all,mode=max"),
            "-o",
            &oci("spread.tar"),
        ],
        &ctx,
    )
    .ok();
    let copies = states(&spread, "COPY");
    assert_eq!(copies.len(), 2, "{}", spread.stderr);
    let c = node(&k, "c", "linux/amd64");
    let d = node(&k, "d", "linux/arm64");
    builder_create(
        &k,
        "fresh",
        &["--node", "c", "--platform", "linux/amd64"],
        &c.addr,
    )
    .ok();
    builder_create(
        &k,
        "fresh",
        &["--append", "--node", "d", "--platform", "linux/arm64"],
        &d.addr,
    )
    .ok();
    let from = format!("type=registry,ref={cache}:all");
    let out = oci("again.tar");
    let again = k
        .run(&[
            "build",
            "--builder",
            "fresh",
            "--progress=plain",
            "--platform",
            PLATFORMS,
            "--cache-from",
            &from,
            "-o",
            &out,
            &ctx,
        ])
        .ok();
    let copies = states(&again, "COPY");
    assert_eq!(copies.len(), 2, "{}", again.stderr);
    assert!(
        copies.iter().all(|(_, state)| state == "CACHED"),
        "{copies:?}\n{}",
        again.stderr
    );
    assert_eq!(again.digest(), spread.digest());
}
