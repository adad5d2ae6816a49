//! The first slice end to end: FROM scratch multi-stage builds with the Dockerfile frontend
//! plugin, OCI and local exports read back by skopeo and umoci, the cache, and `--target`.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

const DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE_DIR=/opt
FROM scratch AS assets
ARG BASE_DIR
WORKDIR ${BASE_DIR}/assets
COPY site/ ./
COPY notes.txt ./notes/

FROM scratch AS unused
COPY notes.txt /never

FROM scratch
ARG VERSION=1.0
ENV APP_HOME=/srv/app GREETING="hello world"
LABEL org.example.version=${VERSION} org.example.name="demo app"
WORKDIR $APP_HOME
COPY --from=assets /opt/assets/ ./
COPY --chmod=750 run.sh /usr/local/bin/run
COPY --chown=1000:1000 notes.txt ./owned.txt
USER 1000:1000
EXPOSE 8080/tcp 53/udp
VOLUME /data
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/run"]
CMD ["--port", "8080"]
"#;

fn context(k: &Kiln) -> std::path::PathBuf {
    k.write(
        "ctx",
        &[
            ("Dockerfile", DOCKERFILE),
            ("site/index.html", "<h1>hi</h1>\n"),
            ("site/css/style.css", "body{}\n"),
            ("site/secret.key", "do not ship\n"),
            ("notes.txt", "notes v1\n"),
            ("run.sh", "#!/bin/sh\necho run\n"),
            (".dockerignore", "**/*.key\n"),
        ],
    )
}

fn build(k: &Kiln, ctx: &std::path::Path, extra: &[&str]) -> Run {
    let tar = k.path("out/image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let mut args = vec![
        "build",
        "--progress=plain",
        "-t",
        "demo:1",
        "--output",
        &dest,
    ];
    args.extend_from_slice(extra);
    let ctx = ctx.display().to_string();
    args.push(&ctx);
    k.run(&args)
}

#[test]
fn multi_stage_scratch_image_is_read_by_skopeo_and_umoci() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = context(&k);
    let run = build(&k, &ctx, &["--build-arg", "VERSION=2.5"]).ok();
    let tar = k.path("out/image.tar");

    // Config, as skopeo reads it.
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap();
    let c = &inspect["config"];
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/usr/local/bin/run"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--port", "8080"]));
    assert_eq!(c["Labels"]["org.example.version"], "2.5");
    assert_eq!(c["Labels"]["org.example.name"], "demo app");
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert!(
        c["ExposedPorts"].get("8080/tcp").is_some() && c["ExposedPorts"].get("53/udp").is_some()
    );
    assert!(c["Volumes"].get("/data").is_some());
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"APP_HOME=/srv/app") && env.contains(&"GREETING=hello world"),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("VERSION=")),
        "ARG leaked into Env: {env:?}"
    );
    let diff_ids = inspect["rootfs"]["diff_ids"].as_array().unwrap().len();
    let non_empty = inspect["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h.get("empty_layer").is_none())
        .count();
    assert_eq!(diff_ids, non_empty, "history must explain every layer");
    assert!(inspect["history"].as_array().unwrap().len() >= 10);

    // The manifest digest skopeo computes is the one kiln printed.
    let raw = tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", tar.display())],
    );
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["Digest"].as_str().unwrap(), run.digest());

    // Files, as umoci unpacks them.
    let bundle = k.unpack(&tar, "image", "1");
    let rootfs = bundle.join("rootfs");
    let read =
        |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("srv/app/index.html"), "<h1>hi</h1>\n");
    assert_eq!(read("srv/app/css/style.css"), "body{}\n");
    assert_eq!(read("srv/app/notes/notes.txt"), "notes v1\n");
    assert_eq!(read("usr/local/bin/run"), "#!/bin/sh\necho run\n");
    assert!(
        !rootfs.join("srv/app/secret.key").exists(),
        ".dockerignore'd file in the image"
    );
    assert!(!rootfs.join("never").exists(), "unused stage leaked");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(rootfs.join("usr/local/bin/run")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o750);
    let md = std::fs::metadata(rootfs.join("srv/app/owned.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    // umoci's config.json carries the same process config.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["process"]["cwd"], "/srv/app");
}

#[test]
fn unchanged_rebuild_is_all_cached_and_identical_and_an_edit_reruns_only_its_dependents() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = context(&k);
    let first = build(&k, &ctx, &[]).ok();
    let second = build(&k, &ctx, &[]).ok();
    assert_eq!(first.digest(), second.digest());
    // Every step of the first build is listed again, as CACHED (as BuildKit's no-op rebuild).
    let is_step = |n: &str| n.starts_with('[') && !n.starts_with("[internal]");
    let first_steps: Vec<String> = first
        .steps()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| is_step(n))
        .collect();
    assert!(first_steps.len() >= 6, "{}", first.stderr);
    let second_steps = second.steps();
    for name in &first_steps {
        let state = second_steps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str());
        assert_eq!(
            state,
            Some("CACHED"),
            "step {name} on the no-op rebuild:\n{}",
            second.stderr
        );
    }

    // Editing run.sh re-runs the context load and the steps from its COPY on, nothing in the
    // assets stage.
    std::fs::write(ctx.join("run.sh"), "#!/bin/sh\necho run v2\n").unwrap();
    let third = build(&k, &ctx, &[]).ok();
    assert_ne!(third.digest(), first.digest());
    let state = |needle: &str| third.step_state(needle);
    // The assets stage is untouched: its COPY is a cache hit, so nothing below it is even
    // looked at (a step that is absent did not run either).
    assert_ne!(state("COPY site/ ./"), "DONE", "{}", third.stderr);
    assert_ne!(state("COPY notes.txt ./notes/"), "DONE", "{}", third.stderr);
    assert_eq!(state("COPY --from=assets"), "CACHED");
    assert_eq!(state("COPY --chmod=750 run.sh"), "DONE");
    assert_eq!(state("COPY --chown=1000:1000 notes.txt"), "DONE");

    // `touch` changes no content: fully cached again, same image.
    let fourth = build(&k, &ctx, &[]).ok();
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(ctx.join("notes.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let fifth = build(&k, &ctx, &[]).ok();
    assert_eq!(fourth.digest(), fifth.digest());

    // --no-cache re-runs everything and still gives the same files.
    let sixth = build(&k, &ctx, &["--no-cache"]).ok();
    assert!(
        sixth.steps().iter().all(|(_, s)| s != "CACHED"),
        "{}",
        sixth.stderr
    );
}

#[test]
fn target_builds_only_what_the_stage_needs_and_local_export_writes_files() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = context(&k);
    let out = k.path("local-out");
    let dest = format!("type=local,dest={}", out.display());
    let run = k
        .run(&[
            "build",
            "--progress=plain",
            "--target",
            "assets",
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("opt/assets/index.html")).unwrap(),
        "<h1>hi</h1>\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("opt/assets/notes/notes.txt")).unwrap(),
        "notes v1\n"
    );
    let names: Vec<String> = run.steps().into_iter().map(|(n, _)| n).collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("/never") && !n.contains("run.sh")),
        "{names:?}"
    );

    let bad = k
        .run(&["build", "--target", "nope", ctx.to_str().unwrap()])
        .fails();
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
}

#[test]
fn oci_directory_export_and_bare_output_path() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = context(&k);
    let dir = k.path("oci-dir");
    let dest = format!("type=oci,dest={},tar=false", dir.display());
    k.run(&[
        "build",
        "-t",
        "demo:2",
        "--output",
        &dest,
        ctx.to_str().unwrap(),
    ])
    .ok();
    let out = tool("skopeo", &["inspect", &format!("oci:{}:2", dir.display())]);
    assert!(out.contains("\"Architecture\""), "{out}");
    let plain = k.path("plain");
    k.run(&[
        "build",
        "-o",
        plain.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    assert!(plain.join("usr/local/bin/run").is_file());
}

#[test]
fn named_local_contexts_serve_copy_from_and_from() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let extra = k.write("extra", &[("shared/lib.txt", "from the extra context\n")]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch AS assets\nCOPY a.txt /a.txt\n\nFROM extra AS copied\n\nFROM scratch\nCOPY --from=extra shared/lib.txt /lib.txt\nCOPY --from=copied /shared /shared\nCOPY --from=assets /a.txt /a.txt\n",
        ), ("a.txt", "a\n")],
    );
    let out = k.path("out");
    let bc = format!("extra={}", extra.display());
    k.run(&[
        "build",
        "--build-context",
        &bc,
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("lib.txt")).unwrap(),
        "from the extra context\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shared/lib.txt")).unwrap(),
        "from the extra context\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "a\n");

    // A named context overrides a stage of the same name, as in buildx.
    let over = k.write("over", &[("a.txt", "overridden\n")]);
    let out2 = k.path("out2");
    let bc2 = format!("assets={}", over.display());
    k.run(&[
        "build",
        "--build-context",
        &bc,
        "--build-context",
        &bc2,
        "-o",
        out2.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out2.join("a.txt")).unwrap(),
        "overridden\n"
    );

    let r = k
        .run(&[
            "build",
            "--build-context",
            "extra=/no/such/dir",
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("/no/such/dir"), "{}", r.stderr);
}

#[test]
fn another_platform_builds_without_run_steps() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM --platform=$BUILDPLATFORM scratch AS tools\nCOPY a.txt /a.txt\nFROM scratch\nARG TARGETARCH\nCOPY --from=tools /a.txt /a-$TARGETARCH.txt\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    let tar = k.path("arm.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    k.run(&[
        "build",
        "--platform",
        "linux/arm64",
        "-t",
        "x:1",
        "--output",
        &dest,
        ctx.to_str().unwrap(),
    ])
    .ok();
    let cfg: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap();
    assert_eq!(cfg["architecture"], "arm64");
    let rootfs = k.unpack(&tar, "arm", "1").join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("a-arm64.txt")).unwrap(),
        "a\n"
    );
    // Several platforms build in one go (multiplatform.rs tests them): one directory each.
    let out = k.path("both");
    k.run(&[
        "build",
        "--platform",
        "linux/amd64,linux/arm64",
        "--output",
        &format!("type=local,dest={}", out.display()),
        ctx.to_str().unwrap(),
    ])
    .ok();
    for arch in ["amd64", "arm64"] {
        let f = out.join(format!("linux_{arch}/a-{arch}.txt"));
        assert_eq!(std::fs::read_to_string(f).unwrap(), "a\n");
    }
}

#[test]
fn concurrent_builds_share_one_store() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = context(&k);
    let c = ctx.display().to_string();
    let outs: Vec<std::path::PathBuf> = (0..4).map(|i| k.path(&format!("par-{i}"))).collect();
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = outs
            .iter()
            .map(|out| {
                let (k, c) = (&k, c.clone());
                s.spawn(move || k.run(&["build", "--no-cache", "-o", out.to_str().unwrap(), &c]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (run, out) in runs.into_iter().zip(&outs) {
        run.ok();
        assert_eq!(
            std::fs::read_to_string(out.join("usr/local/bin/run")).unwrap(),
            "#!/bin/sh\necho run\n"
        );
    }
}

#[test]
fn a_bad_tag_fails_before_the_build() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let long = format!("app:{}", "t".repeat(129));
    for tag in ["Bad/Name:1", "app:with space", long.as_str()] {
        let r = k.run(&["build", "-t", tag, ctx.to_str().unwrap()]).fails();
        assert!(
            r.stderr.contains("invalid tag") && !r.stderr.contains("COPY Dockerfile"),
            "{tag}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_fifo_or_a_huge_file_in_the_context_never_hangs_the_frontend() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let ignore = ctx.join(".dockerignore");
    tool("mkfifo", &[ignore.to_str().unwrap()]);
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains(".dockerignore") && r.stderr.contains("not a regular file"),
        "{}",
        r.stderr
    );
    std::fs::remove_file(&ignore).unwrap();
    std::fs::File::create(&ignore)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("larger than 16 MiB"), "{}", r.stderr);
    // The Dockerfile itself.
    std::fs::remove_file(&ignore).unwrap();
    let df = ctx.join("Dockerfile");
    std::fs::remove_file(&df).unwrap();
    tool("mkfifo", &[df.to_str().unwrap()]);
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
}
