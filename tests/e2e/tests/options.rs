//! Build options end to end, through the real binary: `--ssh` with a real ssh-agent,
//! `--allow` entitlements, `--add-host` / `--shm-size` / `--ulimit` in both runtimes, `-f -`,
//! `--no-cache-filter`, `--label`, `--call`, and reproducible layers
//! with `SOURCE_DATE_EPOCH` and `rewrite-timestamp=true`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_e2e::*;

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `kiln build --progress=plain ARGS... CONTEXT`.
fn build(k: &Kiln, ctx: &Path, args: &[&str]) -> Run {
    build_env(k, ctx, args, &[])
}

fn build_env(k: &Kiln, ctx: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let c = ctx.display().to_string();
    all.push(&c);
    k.run_env(env, &all)
}

/// `--output type=local,dest=<k>/<name>`, and that directory.
fn local_out(k: &Kiln, name: &str) -> (String, PathBuf) {
    let dest = k.path(name);
    (format!("type=local,dest={}", dest.display()), dest)
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// --- ssh -----------------------------------------------------------------------------------

/// A real ssh-agent on a socket of the test's own, holding one fresh key.
fn agent(k: &Kiln) -> SshAgent {
    let (key, _) = ssh_keygen(k, "id_ed25519", "", "kiln-e2e-key");
    SshAgent::start(k, &[&key])
}

#[test]
fn ssh_mount_reaches_the_agent() {
    if !have("ssh-agent") {
        panic!("ssh-agent is required (Debian package openssh-client)");
    }
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let agent = agent(&k);
    let (hostbin, ld) = host_ssh_add(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                r#"FROM {reg}/busybox:latest
RUN --mount=type=ssh test -S "$SSH_AUTH_SOCK" && echo "$SSH_AUTH_SOCK" > /sock
RUN --mount=type=ssh --mount=type=bind,from=hostbin,target=/h /h/{ld} --library-path /h /h/ssh-add -l > /keys
RUN --mount=type=ssh,id=other,target=/other-agent test ! -S /other-agent && echo skipped > /optional
"#
            ),
        )],
    );
    let (out, dest) = local_out(&k, "out");
    let ssh = format!("default={}", agent.sock.display());
    let bc = format!("hostbin={}", hostbin.display());
    build(
        &k,
        &ctx,
        &["--ssh", &ssh, "--build-context", &bc, "-o", &out],
    )
    .ok();
    assert_eq!(read(&dest, "sock"), "/run/buildkit/ssh_agent.0\n");
    assert!(
        read(&dest, "keys").contains("kiln-e2e-key"),
        "{}",
        read(&dest, "keys")
    );
    assert_eq!(read(&dest, "optional"), "skipped\n");
    assert!(
        !dest.join("run/buildkit").exists(),
        "the socket mountpoint left a trace"
    );

    // `--ssh default` takes the agent from SSH_AUTH_SOCK, as buildx.
    let sock = agent.sock.display().to_string();
    let (out2, dest2) = local_out(&k, "out2");
    build_env(
        &k,
        &ctx,
        &[
            "--ssh",
            "default",
            "--build-context",
            &bc,
            "--no-cache",
            "-o",
            &out2,
        ],
        &[("SSH_AUTH_SOCK", &sock)],
    )
    .ok();
    assert!(read(&dest2, "keys").contains("kiln-e2e-key"));
}

#[test]
fn ssh_errors_are_clear() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN --mount=type=ssh,required=true true\n"),
        )],
    );
    let r = build(&k, &ctx, &[]).fails();
    assert!(
        r.stderr.contains("no SSH key \"default\" forwarded"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--ssh default"), "{}", r.stderr);

    let key = k.path("id_test");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let spec = format!("default={}", key.display());
    let r = build(&k, &ctx, &["--ssh", &spec]).fails();
    // A key file is loaded into an agent of the build's own: this one is no key.
    assert!(
        r.stderr.contains("failed to parse") && r.stderr.contains("not a private key"),
        "{}",
        r.stderr
    );

    let r = k
        .run_env(
            &[("SSH_AUTH_SOCK", "")],
            &["build", "--ssh", "default", ctx.to_str().unwrap()],
        )
        .fails();
    assert!(r.stderr.contains("SSH_AUTH_SOCK"), "{}", r.stderr);
}

// --- entitlements --------------------------------------------------------------------------

#[test]
fn entitlements_gate_insecure_and_host_network() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "insecure",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\nRUN --security=insecure grep CapEff /proc/self/status > /caps\n"
            ),
        )],
    );
    let r = build(&k, &ctx, &[]).fails();
    assert!(
        r.stderr.contains("security.insecure is not allowed"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--allow security.insecure"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(">>> RUN --security=insecure"),
        "{}",
        r.stderr
    );

    let (out, dest) = local_out(&k, "out");
    build(&k, &ctx, &["--allow", "security.insecure", "-o", &out]).ok();
    let caps = read(&dest, "caps");
    assert!(!caps.contains("00000000a80425fb"), "still confined: {caps}");

    let net = k.write(
        "net",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\nRUN --network=host true\nRUN --network=none true\n"
            ),
        )],
    );
    let r = build(&k, &net, &[]).fails();
    assert!(
        r.stderr.contains("network.host is not allowed"),
        "{}",
        r.stderr
    );
    build(&k, &net, &["--allow", "network.host"]).ok();
    let r = build(&k, &net, &["--allow", "devices"]).fails();
    assert!(r.stderr.contains("unknown entitlement"), "{}", r.stderr);
}

// --- --add-host, --shm-size, --ulimit ------------------------------------------------------

fn run_options(executor: &str) {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN grep myhost /etc/hosts > /hosts && grep /dev/shm /proc/mounts > /shm \
                 && ulimit -n > /nofile && ulimit -Hn >> /nofile && df -k /dev/shm | tail -n 1 > /df\n"
            ),
        )],
    );
    let (out, dest) = local_out(&k, "out");
    build(
        &k,
        &ctx,
        &[
            "--executor",
            executor,
            "--add-host",
            "myhost:10.1.2.3",
            "--add-host",
            "other=192.0.2.9",
            "--shm-size",
            "128m",
            "--ulimit",
            "nofile=1024:2048",
            "-o",
            &out,
        ],
    )
    .ok();
    assert_eq!(read(&dest, "hosts"), "10.1.2.3\tmyhost\n");
    assert!(
        read(&dest, "shm").contains("size=131072k"),
        "{}",
        read(&dest, "shm")
    );
    let df: Vec<String> = read(&dest, "df")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(df.get(1).map(String::as_str), Some("131072"), "{df:?}");
    assert_eq!(read(&dest, "nofile"), "1024\n2048\n");
}

#[test]
fn run_options_embedded() {
    run_options("embedded");
}

#[test]
fn run_options_runc() {
    assert!(
        have("runc"),
        "runc not found on PATH: install it (apt-get install runc) — cargo xtask test does"
    );
    run_options("runc");
}

#[test]
fn run_option_values_are_checked() {
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM scratch\n")]);
    for (flag, value, message) in [
        ("--add-host", "nohost", "expected host:ip"),
        ("--add-host", "h:300.1.1.1", "is not an IP address"),
        (
            "--shm-size",
            "12q",
            "expected a number with an optional unit",
        ),
        ("--ulimit", "nofile=4096:1024", "above the hard limit"),
        ("--ulimit", "files=1", "unknown type"),
    ] {
        let r = build(&k, &ctx, &[flag, value]).fails();
        assert!(r.stderr.contains(message), "{flag} {value}: {}", r.stderr);
    }
}

// --- -f - (remote contexts: remote_contexts.rs) ------------------------------------------------

#[test]
fn dockerfile_from_stdin() {
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("a.txt", "from the context\n")]);
    let (out, dest) = local_out(&k, "out");
    let mut child = Command::new(target_dir().join("kiln"))
        .env("KILN_ROOT", k.path("store"))
        .env("KILN_PLUGIN_PATH", k.plugin_dir())
        .args(["build", "--progress=plain", "-f", "-", "-o", &out])
        .arg(&ctx)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nCOPY a.txt /copied\n")
        .unwrap();
    let r = Run::from(child.wait_with_output().unwrap()).ok();
    assert!(
        r.stderr.contains("load build definition from Dockerfile"),
        "{}",
        r.stderr
    );
    assert_eq!(read(&dest, "copied"), "from the context\n");
}

// --- --no-cache-filter, --label, --call ----------------------------------------------------

#[test]
fn no_cache_filter_rebuilds_only_the_named_stage() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest AS base\nRUN echo base > /base\n\
                 FROM base AS app\nRUN echo app > /app\n"
            ),
        )],
    );
    build(&k, &ctx, &[]).ok();
    let r = build(&k, &ctx, &["--no-cache-filter", "app"]).ok();
    let steps = r.steps();
    let word = |needle: &str| {
        steps
            .iter()
            .find(|(n, _)| n.contains(needle))
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| panic!("no step {needle}: {steps:?}"))
    };
    assert_eq!(word("echo base"), "CACHED", "{steps:?}");
    assert_eq!(word("echo app"), "DONE", "{steps:?}");
}

#[test]
fn labels_reach_the_image() {
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM scratch\nLABEL a=1\n")]);
    let tar = k.path("img.tar");
    let out = format!("type=oci,dest={}", tar.display());
    build(&k, &ctx, &["--label", "org.example.team=kiln", "-o", &out]).ok();
    let layout = k.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    let config = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci:{}:latest", layout.display()),
        ],
    );
    assert!(
        config.contains("\"org.example.team\": \"kiln\""),
        "{config}"
    );
}

#[test]
fn call_is_refused_clearly_by_a_frontend_without_it() {
    // The echo frontend answers no call: the engine must say so, not build.
    let k = Kiln::new(&["kiln-test-echo-frontend"]);
    let ctx = k.write("ctx", &[("Dockerfile", "# syntax=echo\nhello\n")]);
    let r = build(&k, &ctx, &["--call", "targets"]).fails();
    assert!(
        r.stderr.contains("does not answer --call=targets"),
        "{}",
        r.stderr
    );
    let r = build(&k, &ctx, &["--call", "explain"]).fails();
    assert!(
        r.stderr
            .contains("expected build, check, outline or targets"),
        "{}",
        r.stderr
    );
}

#[test]
fn call_targets_and_check() {
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "# build compiles the app\nFROM scratch AS build\nCOPY . /\n\nFROM scratch AS Release\nCOPY --from=build / /\n",
        )],
    );
    let r = build(&k, &ctx, &["--call", "targets"]).ok();
    assert!(r.stdout.starts_with("TARGET"), "{}", r.stdout);
    assert!(r.stdout.contains("build"), "{}", r.stdout);
    assert!(
        !r.stderr.contains("exporting"),
        "a call must not build: {}",
        r.stderr
    );
    let r = build(&k, &ctx, &["--call", "targets", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["targets"].is_array(), "{v}");
    // `Release` breaks the stage-name casing rule: check reports it and fails.
    let r = build(&k, &ctx, &["--call", "check"]).fails();
    // As buildx: the count first, then each finding after an empty line, with its lines.
    assert!(
        r.stdout.starts_with(
            "Check complete, 1 warning has been found!\n\nWARNING: StageNameCasing - \
             https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
             Stage name 'Release' should be lowercase\nDockerfile:5\n"
        ),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(" 5 | >>> FROM scratch AS Release\n"),
        "{}",
        r.stdout
    );
    // `TARGET DESCRIPTION` laid out by tabwriter with padding 1, the comment as description.
    let r = build(&k, &ctx, &["--call", "targets"]).ok();
    assert_eq!(
        r.stdout,
        "TARGET            DESCRIPTION\nbuild             compiles the app\nrelease (default) \n"
    );
}

// --- SOURCE_DATE_EPOCH ---------------------------------------------------------------------

#[test]
fn rewrite_timestamp_makes_builds_reproducible() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN mkdir -p /made && echo hi > /made/f\n"),
        )],
    );
    let epoch = "1700000000";
    let epoch_arg = format!("SOURCE_DATE_EPOCH={epoch}");
    let image = |name: &str, rewrite: bool| -> Run {
        let tar = k.path(&format!("{name}.tar"));
        let mut out = format!("type=oci,dest={}", tar.display());
        if rewrite {
            out.push_str(",rewrite-timestamp=true");
        }
        // --no-cache: the RUN step really runs again, writing files with new times.
        build(
            &k,
            &ctx,
            &["--no-cache", "--build-arg", &epoch_arg, "-o", &out],
        )
        .ok()
    };
    let first = image("a", true);
    // Tar headers count whole seconds: make sure the second build's files are newer.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = image("b", true);
    assert_eq!(first.digest(), second.digest());

    // Without the rewrite the layers carry the build's own times.
    let plain1 = image("c", false);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let plain2 = image("d", false);
    assert_ne!(plain1.digest(), plain2.digest());

    // The config says when, as BuildKit writes it; the files say at most that.
    let bundle = k.unpack(&k.path("a.tar"), "a", "latest");
    use std::os::unix::fs::MetadataExt;
    let mtime = std::fs::metadata(bundle.join("rootfs/made/f"))
        .unwrap()
        .mtime();
    assert_eq!(mtime, 1_700_000_000);
    let layout = k.path("a-layout");
    let cfg = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci:{}:latest", layout.display()),
        ],
    );
    assert!(cfg.contains("2023-11-14T22:13:20Z"), "{cfg}");

    let r = build(
        &k,
        &ctx,
        &[
            "-o",
            &format!(
                "type=oci,dest={},rewrite-timestamp=true",
                k.path("e.tar").display()
            ),
        ],
    )
    .fails();
    assert!(r.stderr.contains("needs SOURCE_DATE_EPOCH"), "{}", r.stderr);
}
