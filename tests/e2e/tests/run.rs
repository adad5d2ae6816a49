//! RUN end to end: a base image pulled from the loopback registry, RUN in the embedded sandbox
//! and through runc, deletions and replaced directories, cache and secret mounts, failures.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use kiln_e2e::*;

const SECRET: &str = "s3cr3t-7f1c0a9e-never-in-a-layer";

fn dockerfile(registry: &str) -> String {
    format!(
        r#"FROM {registry}/busybox:latest AS build
WORKDIR /src
ENV GREETING=hello
ARG FLAVOUR=plain
RUN echo "$GREETING $FLAVOUR" > greeting && mkdir -p dir/sub && echo x > dir/sub/x && echo gone > doomed
RUN ["/bin/sh", "-c", "echo exec-form > /src/exec"]
RUN rm doomed && rm -rf dir && echo now-a-file > dir && rm /bin/vi
RUN --mount=type=cache,target=/cache,id=e2e-cache echo filled > /cache/marker && ls /cache > /src/cache-list
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /src/secret-len && test ! -e /run/secrets/token.copy
RUN --mount=type=secret,id=envtok,target=/tok cat /tok | wc -c > /src/env-secret-len
RUN --mount=type=secret,id=token,env=TOKEN_VAR echo ${{#TOKEN_VAR}} > /src/env-mount-len && test ! -e /run/secrets/token
RUN --mount=type=bind,from=extra,source=lib.txt,target=/mnt/lib.txt cp /mnt/lib.txt /src/from-named
RUN --network=none cat /proc/net/dev | grep -c : > /src/net-none
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group
USER app
RUN id -u > /tmp/uid && id -un > /tmp/name

FROM {registry}/busybox:latest
COPY --from=build /src /out
COPY --from=build /tmp/uid /tmp/name /out/
USER 1000
WORKDIR /out
CMD ["cat", "greeting"]
"#
    )
}

fn build(k: &Kiln, ctx: &Path, tar: &Path, extra: &[&str]) -> Run {
    build_env(k, ctx, tar, extra, &[])
}

fn build_env(k: &Kiln, ctx: &Path, tar: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let secret = k.path("token.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let dest = format!("type=oci,dest={}", tar.display());
    let sec = format!("id=token,src={}", secret.display());
    let extra_ctx = k.write("extra", &[("lib.txt", "named context file\n")]);
    let bc = format!("extra={}", extra_ctx.display());
    let mut args = vec![
        "build",
        "--progress=plain",
        "-t",
        "runs:1",
        "--secret",
        &sec,
        "--secret",
        "id=envtok,env=KILN_E2E_TOKEN",
        "--build-context",
        &bc,
        "--output",
        &dest,
    ];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    let mut env = env.to_vec();
    env.push(("KILN_E2E_TOKEN", "env-secret-value-93b1"));
    k.run_env(&env, &args)
}

fn check_rootfs(rootfs: &Path) {
    let read =
        |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("out/greeting"), "hello plain\n");
    assert_eq!(read("out/exec"), "exec-form\n");
    assert_eq!(
        read("out/dir"),
        "now-a-file\n",
        "a directory replaced by a file"
    );
    assert!(
        !rootfs.join("out/doomed").exists(),
        "deleted file came back"
    );
    assert_eq!(read("out/cache-list"), "marker\n");
    assert_eq!(read("out/secret-len").trim(), SECRET.len().to_string());
    assert_eq!(
        read("out/env-secret-len").trim(),
        "env-secret-value-93b1".len().to_string()
    );
    assert_eq!(read("out/env-mount-len").trim(), SECRET.len().to_string());
    assert_eq!(read("out/from-named"), "named context file\n");
    // Only the loopback device exists in a --network=none step.
    assert_eq!(read("out/net-none").trim(), "1");
    assert_eq!(read("out/uid"), "1000\n");
    assert_eq!(read("out/name"), "app\n");
    assert!(rootfs.join("bin/busybox").is_file(), "base layers missing");
    assert!(!rootfs.join("run/secrets/token").exists());
}

#[test]
fn run_steps_on_a_pulled_base_in_the_sandbox_and_in_runc() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile(&registry))]);
    let tar = k.path("embedded.tar");
    let first = build(&k, &ctx, &tar, &[]).ok();
    let rootfs = k.unpack(&tar, "embedded", "1").join("rootfs");
    check_rootfs(&rootfs);

    // The build stage deleted /bin/vi; the final stage starts from the base again.
    assert!(rootfs.join("bin/vi").exists());
    let cfg: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap();
    assert_eq!(cfg["config"]["User"], "1000");
    assert_eq!(cfg["config"]["WorkingDir"], "/out");
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["cat", "greeting"]));
    let env: Vec<&str> = cfg["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");

    // The secret is nowhere: not in the store, the image or the logs.
    assert!(!first.stderr.contains(SECRET) && !first.stderr.contains("env-secret-value-93b1"));
    assert!(
        files_containing(&k.path("store"), SECRET.as_bytes()).is_empty(),
        "secret in the store"
    );
    assert!(
        files_containing(&k.path("embedded-layout"), SECRET.as_bytes()).is_empty(),
        "secret in the image"
    );
    assert!(
        mounts_under(k.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(k.dir.path())
    );

    // No-op rebuild: nothing runs, same image.
    let again = build(&k, &ctx, &k.path("again.tar"), &[]).ok();
    assert_eq!(again.digest(), first.digest());
    let ran: Vec<_> = again
        .steps()
        .into_iter()
        .filter(|(n, s)| n.contains("RUN") && s != "CACHED")
        .collect();
    assert!(
        ran.is_empty(),
        "RUN steps re-ran: {ran:?}\n{}",
        again.stderr
    );

    // The cache mount persisted: a new step sees what the first build left there.
    let probe = k.write(
        "probe",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\nRUN --mount=type=cache,target=/c,id=e2e-cache cp /c/marker /seen\n"
            ),
        )],
    );
    let out = k.path("probe-out");
    k.run(&[
        "build",
        "-o",
        out.to_str().unwrap(),
        probe.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "filled\n"
    );

    // The same build through runc gives the same files.
    let runc_tar = k.path("runc.tar");
    build(&k, &ctx, &runc_tar, &["--executor", "runc", "--no-cache"]).ok();
    let runc_rootfs = k.unpack(&runc_tar, "runc", "1").join("rootfs");
    check_rootfs(&runc_rootfs);
    let md = std::fs::metadata(runc_rootfs.join("out/greeting")).unwrap();
    assert_eq!(md.len(), "hello plain\n".len() as u64);
}

#[test]
fn a_failing_run_reports_step_line_and_exit_code_and_leaves_nothing_mounted() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\nRUN echo before\nRUN echo about to fail && exit 3\nRUN echo never\n"
            ),
        )],
    );
    let tar = k.path("o.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let r = k
        .run(&[
            "build",
            "--progress=plain",
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("exit code: 3"), "{}", r.stderr);
    // BuildKit's summary box: the step, then its last output lines.
    assert!(
        r.stderr
            .contains("------\n > [3/4] RUN echo about to fail && exit 3:\nabout to fail\n------"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("Dockerfile:3")
            && r.stderr.contains(">>> RUN echo about to fail && exit 3"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("about to fail"),
        "the step's output is shown:\n{}",
        r.stderr
    );
    assert!(
        !r.steps().iter().any(|(n, _)| n.contains("RUN echo never")),
        "a step after the failure ran:\n{}",
        r.stderr
    );
    assert!(!tar.exists());
    assert!(
        mounts_under(k.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(k.dir.path())
    );

    // A missing base image is a clear error naming it.
    let bad = k.write(
        "bad",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/no-such-image:1\nRUN true\n"),
        )],
    );
    let r = k.run(&["build", bad.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("no-such-image"), "{}", r.stderr);
}

/// Without the privilege to mount a tmpfs (CAP_SYS_ADMIN dropped with `setpriv`; the copy
/// snapshotter needs none), a step with a secret fails and says why, instead of putting the
/// secret in an ordinary directory on disk.
#[test]
fn a_secret_fails_its_step_when_no_tmpfs_can_hold_it() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\nRUN --mount=type=secret,id=token cat /run/secrets/token\n"
            ),
        )],
    );
    let secret = k.path("token.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let tmp = k.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = Command::new("setpriv")
        .args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin"])
        .arg(target_dir().join("kiln"))
        .args(["build", "--progress=plain", "--secret"])
        .arg(format!("id=token,src={}", secret.display()))
        .arg(&ctx)
        .env("KILN_ROOT", k.path("store"))
        .env("KILN_PLUGIN_PATH", k.plugin_dir())
        .env("KILN_SNAPSHOTTER", "copy")
        .env("TMPDIR", &tmp)
        .output()
        .unwrap_or_else(|e| {
            panic!("setpriv is required for this test (Debian package util-linux): {e}")
        });
    let r = Run::from(out).fails();
    assert!(
        r.stderr
            .contains("secret token: cannot mount a private tmpfs")
            && r.stderr.contains("never writes secrets to disk")
            && r.stderr.contains("Dockerfile:2"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "left in TMPDIR"
    );
    assert!(files_containing(&k.path("store"), SECRET.as_bytes()).is_empty());
}

#[test]
fn oci_layout_base_and_named_image_context() {
    let layout = workspace().join("target/kiln-test/fixtures/busybox-oci");
    assert!(
        layout.join("index.json").is_file(),
        "the busybox fixture is built by `cargo xtask test` (missing {})",
        layout.display()
    );
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM oci-layout://{}:latest\nRUN echo from-layout > /marker\nFROM base\nCOPY --from=0 /marker /marker\n", layout.display()),
        )],
    );
    let out = k.path("out");
    let bc = format!("base=oci-layout://{}:latest", layout.display());
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
        std::fs::read_to_string(out.join("marker")).unwrap(),
        "from-layout\n"
    );
    assert!(out.join("bin/busybox").is_file());
}

#[test]
fn the_copy_snapshotter_builds_the_same_image_files() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile(&registry))]);
    let tar = k.path("copy.tar");
    build_env(&k, &ctx, &tar, &[], &[("KILN_SNAPSHOTTER", "copy")]).ok();
    let rootfs = k.unpack(&tar, "copy", "1").join("rootfs");
    check_rootfs(&rootfs);
    assert!(rootfs.join("bin/vi").exists());
    assert!(
        mounts_under(k.dir.path()).is_empty(),
        "mounts left: {:?}",
        mounts_under(k.dir.path())
    );
}

#[test]
fn push_to_a_registry_and_build_from_it() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let unique = format!("{}", std::process::id());
    let name = format!("{registry}/e2e/pushed:{unique}");
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/busybox:latest\nRUN echo pushed-{unique} > /marker\nCMD [\"cat\", \"/marker\"]\n"),
        )],
    );
    let tar = k.path("pushed.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let r = k
        .run(&[
            "build",
            "--progress=plain",
            "-t",
            &name,
            "--push",
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ])
        .ok();
    assert!(
        r.stderr.contains(&format!("pushed {name}@")),
        "{}",
        r.stderr
    );
    // The registry serves the very manifest kiln built (skopeo reads it over plain http).
    let remote: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--tls-verify=false", &format!("docker://{name}")],
    ))
    .unwrap();
    assert_eq!(remote["Digest"].as_str().unwrap(), r.digest());

    // And a build FROM it gets its files (a pull of what was pushed).
    let next = k.write(
        "next",
        &[(
            "Dockerfile",
            &format!("FROM {name}\nRUN cp /marker /copied\n"),
        )],
    );
    let out = k.path("out");
    k.run(&["build", "-o", out.to_str().unwrap(), next.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        format!("pushed-{unique}\n")
    );

    // Pushing needs a name.
    let r = k.run(&["build", "--push", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("needs an image name"), "{}", r.stderr);
}

#[test]
fn docker_archive_output_is_read_by_skopeo_and_umoci() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/busybox:latest\nRUN echo in-docker-archive > /marker\nLABEL kind=docker-archive\n"),
        )],
    );
    let tar = k.path("docker.tar");
    let dest = format!("type=docker,dest={}", tar.display());
    k.run(&[
        "build",
        "-t",
        "app:7",
        "--output",
        &dest,
        ctx.to_str().unwrap(),
    ])
    .ok();
    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", tar.display())],
    ))
    .unwrap();
    assert_eq!(inspect["Labels"]["kind"], "docker-archive");
    // manifest.json names the tag, as `docker load` reads it.
    let manifest: serde_json::Value = serde_json::from_str(&tool(
        "tar",
        &["-xOf", tar.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["app:7"]));
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 2);
    // Converted to an OCI layout and unpacked: umoci checks every layer against its diff id.
    let layout = k.path("from-docker");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", tar.display()),
            &format!("oci:{}:1", layout.display()),
        ],
    );
    let bundle = k.path("docker-bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:1", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/marker")).unwrap(),
        "in-docker-archive\n"
    );
    assert!(bundle.join("rootfs/bin/busybox").is_file());
}
