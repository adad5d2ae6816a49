//! `--ssh ID=KEYFILE` (keys loaded into an agent kiln runs for the build), `RUN --device` (CDI
//! devices from spec files) and `kiln build --network`, through the real binary.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::*;

/// `kiln build --progress=plain ARGS... CONTEXT` with extra environment variables.
fn build(k: &Kiln, ctx: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["build", "--progress=plain"];
    all.extend_from_slice(args);
    let c = ctx.display().to_string();
    all.push(&c);
    k.run_env(env, &all)
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// --- ssh -----------------------------------------------------------------------------------

/// Processes whose command line mentions `needle` (other than this test's own).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(cmd)
        })
        .collect()
}

#[test]
fn ssh_key_files_are_served_by_an_agent_of_the_build() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let (key1, fp1) = ssh_keygen(&k, "id_one", "", "kiln-key-one");
    let (key2, fp2) = ssh_keygen(&k, "id_two", "", "kiln-key-two");
    let (hostbin, ld) = host_ssh_add(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN --mount=type=ssh --mount=type=bind,from=hostbin,target=/h \
                 /h/{ld} --library-path /h /h/ssh-add -D 2> /removal || echo refused >> /removal\n\
                 RUN --mount=type=ssh --mount=type=bind,from=hostbin,target=/h \
                 /h/{ld} --library-path /h /h/ssh-add -l > /keys\n\
                 RUN --mount=type=ssh,id=deploy --mount=type=bind,from=hostbin,target=/h \
                 /h/{ld} --library-path /h /h/ssh-add -l > /deploy\n"
            ),
        )],
    );
    // The agent's private directory goes under kiln's temporary directory: a fresh one, so
    // that what is left there afterwards is this build's.
    let tmp = k.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = k.path("out");
    let spec = format!("default={},{}", key1.display(), key2.display());
    let deploy = format!("deploy={}", key2.display());
    let bc = format!("hostbin={}", hostbin.display());
    let o = format!("type=local,dest={}", out.display());
    let r = build(
        &k,
        &ctx,
        &[
            "--ssh",
            &spec,
            "--ssh",
            &deploy,
            "--build-context",
            &bc,
            "-o",
            &o,
        ],
        &[("TMPDIR", tmp.to_str().unwrap()), ("SSH_AUTH_SOCK", "")],
    )
    .ok();
    let keys = read(&out, "keys");
    assert!(
        keys.contains(&fp1) && keys.contains(&fp2),
        "{keys}\n{}",
        r.stderr
    );
    assert!(
        keys.contains("kiln-key-one") && keys.contains("kiln-key-two"),
        "{keys}"
    );
    // The agent is read-only to the steps, as BuildKit's: removing keys is refused.
    assert!(
        read(&out, "removal").ends_with("refused\n"),
        "{}",
        read(&out, "removal")
    );
    let deploy_keys = read(&out, "deploy");
    assert!(
        deploy_keys.contains(&fp2) && !deploy_keys.contains(&fp1),
        "{deploy_keys}"
    );
    // The build is over: its agents are gone, and so are their sockets.
    assert_eq!(agents_left(&tmp), (vec![], vec![]));
}

#[test]
fn ssh_mount_mode_uid_gid_apply_to_the_socket() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let (key, fp) = ssh_keygen(&k, "id_ed25519", "", "kiln-key-user");
    let (hostbin, ld) = host_ssh_add(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN --mount=type=ssh stat -c '%a %u %g' \"$SSH_AUTH_SOCK\" > /perm_default\n\
                 RUN --mount=type=ssh,mode=0666,uid=1000,gid=1001 \
                 stat -c '%a %u %g' \"$SSH_AUTH_SOCK\" > /perm_set\n\
                 USER 1000:1000\n\
                 RUN --mount=type=ssh,uid=1000 --mount=type=bind,from=hostbin,target=/h \
                 /h/{ld} --library-path /h /h/ssh-add -l > /tmp/user_keys\n"
            ),
        )],
    );
    let out = k.path("out");
    let spec = format!("default={}", key.display());
    let bc = format!("hostbin={}", hostbin.display());
    let o = format!("type=local,dest={}", out.display());
    for executor in ["embedded", "runc"] {
        build(
            &k,
            &ctx,
            &[
                "--ssh",
                &spec,
                "--build-context",
                &bc,
                "--executor",
                executor,
                "--no-cache",
                "-o",
                &o,
            ],
            &[],
        )
        .ok();
        // BuildKit's defaults: 0600, root.
        assert_eq!(read(&out, "perm_default"), "600 0 0\n", "{executor}");
        assert_eq!(read(&out, "perm_set"), "666 1000 1001\n", "{executor}");
        // A non-root step reaches the agent through a socket it owns.
        assert!(read(&out, "tmp/user_keys").contains(&fp), "{executor}");
    }
}

/// Agent directories (`kiln-ssh-*`) left in `tmp`, and processes still naming one.
fn agents_left(tmp: &Path) -> (Vec<String>, Vec<String>) {
    let dirs = std::fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kiln-ssh-"))
        .collect();
    (
        dirs,
        processes_mentioning(&format!("{}/kiln-ssh-", tmp.display())),
    )
}

#[test]
fn ssh_agent_is_gone_after_a_failed_or_interrupted_build() {
    use std::time::Duration;
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let (key, _) = ssh_keygen(&k, "id_ed25519", "", "kiln-key");
    let spec = format!("default={}", key.display());
    let tmp = k.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    // A step that fails.
    let failing = k.write(
        "failing",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN --mount=type=ssh false\n"),
        )],
    );
    build(
        &k,
        &failing,
        &["--ssh", &spec],
        &[("TMPDIR", tmp.to_str().unwrap())],
    )
    .fails();
    assert_eq!(agents_left(&tmp), (vec![], vec![]));

    // Ctrl-C while a step that holds the agent runs.
    let slow = k.write(
        "slow",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo step-started && sleep 600\n"
            ),
        )],
    );
    let mut slow_build = k.spawn(
        &[("TMPDIR", tmp.to_str().unwrap())],
        &[
            "build",
            "--progress=plain",
            "--ssh",
            &spec,
            slow.to_str().unwrap(),
        ],
    );
    assert!(
        slow_build.wait_for_line("step-started", Duration::from_secs(60)),
        "the step never started:\n{}",
        slow_build.seen.join("\n")
    );
    // While it runs, the agent is there (beside the step's own socket).
    assert_eq!(agents_left(&tmp).1.len(), 1, "{:?}", agents_left(&tmp));
    let st = Command::new("kill")
        .args(["-INT", &slow_build.id().to_string()])
        .status()
        .expect("kill (procps) is required for this test");
    assert!(st.success());
    // Interrupting must end the build long before the step's sleep would.
    let (code, _) = slow_build.finish(Duration::from_secs(30));
    assert!(code != 0);
    assert_eq!(agents_left(&tmp), (vec![], vec![]));
}

#[test]
fn ssh_key_file_errors_are_clear() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN --mount=type=ssh true\n"),
        )],
    );
    let tmp = k.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let env = [("TMPDIR", tmp.to_str().unwrap())];

    // A passphrase-protected key is refused before anything runs or prompts.
    let (locked, _) = ssh_keygen(&k, "id_locked", "secret passphrase", "locked");
    let spec = format!("default={}", locked.display());
    let r = build(&k, &ctx, &["--ssh", &spec], &env).fails();
    assert!(
        r.stderr.contains(&format!(
            "ssh default: failed to parse {}: the private key is passphrase protected",
            locked.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ssh-add"), "{}", r.stderr);

    // A file that is no key.
    let junk = k.path("not-a-key");
    std::fs::write(&junk, "hello\n").unwrap();
    let spec = format!("default={}", junk.display());
    let r = build(&k, &ctx, &["--ssh", &spec], &env).fails();
    assert!(
        r.stderr.contains("failed to parse") && r.stderr.contains("not a private key"),
        "{}",
        r.stderr
    );

    // Keys and a socket for one id, as BuildKit refuses them.
    let sock = k.path("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let spec = format!("default={},{}", junk.display(), sock.display());
    let r = build(&k, &ctx, &["--ssh", &spec], &env).fails();
    assert!(
        r.stderr.contains("invalid combination of keys and sockets"),
        "{}",
        r.stderr
    );

    // No OpenSSH on the PATH: the error says which package brings it.
    let (key, _) = ssh_keygen(&k, "id_ok", "", "ok");
    let spec = format!("default={}", key.display());
    let empty = k.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let r = build(
        &k,
        &ctx,
        &["--ssh", &spec],
        &[
            ("TMPDIR", tmp.to_str().unwrap()),
            ("PATH", empty.to_str().unwrap()),
        ],
    )
    .fails();
    assert!(
        r.stderr.contains("ssh-agent was not found") && r.stderr.contains("openssh-client"),
        "{}",
        r.stderr
    );
    assert_eq!(agents_left(&tmp), (vec![], vec![]));
}

// --- RUN --device --------------------------------------------------------------------------

/// A CDI spec directory exposing the host's `/dev/zero` as `/dev/kilntest` (YAML), and a
/// device that only sets a variable (JSON).
fn cdi_dir(k: &Kiln) -> PathBuf {
    let dir = k.path("cdi");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kiln-test.yaml"),
        "cdiVersion: \"0.6.0\"\n\
         kind: kiln.dev/test\n\
         devices:\n\
         - name: zero\n  \
           containerEdits:\n    \
             deviceNodes:\n    \
             - path: /dev/kilntest\n      \
               hostPath: /dev/zero\n    \
             env:\n    \
             - KILNTEST=zero\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("env.json"),
        r#"{"cdiVersion":"0.6.0","kind":"kiln.dev/env","devices":[{"name":"only","containerEdits":{"env":["ONLY=yes"]}}]}"#,
    )
    .unwrap();
    dir
}

#[test]
fn run_device_exposes_cdi_devices_in_both_runtimes() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let cdi = cdi_dir(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN --device=kiln.dev/test=zero,required \
                 test -c /dev/kilntest && head -c 4 /dev/kilntest | od -An -tx1 > /zero \
                 && echo \"$KILNTEST\" > /env\n\
                 RUN --device=kiln.dev/env=only --device=kiln.dev/test=missing \
                 echo \"$ONLY\" > /only && test ! -e /dev/kilntest && echo none > /nodev\n"
            ),
        )],
    );
    let env = [("KILN_CDI_SPEC_DIRS", cdi.to_str().unwrap())];
    for executor in ["embedded", "runc"] {
        let out = k.path(&format!("out-{executor}"));
        let o = format!("type=local,dest={}", out.display());
        let r = build(
            &k,
            &ctx,
            &[
                "--no-cache",
                "--executor",
                executor,
                "--allow",
                "device",
                "-o",
                &o,
            ],
            &env,
        )
        .ok();
        assert_eq!(
            read(&out, "zero").split_whitespace().collect::<Vec<_>>(),
            ["00"; 4]
        );
        assert_eq!(read(&out, "env"), "zero\n");
        assert_eq!(read(&out, "only"), "yes\n");
        assert_eq!(read(&out, "nodev"), "none\n");
        // An optional device that no spec defines: the step runs, and the log says so.
        assert!(
            r.stderr
                .contains("optional device \"kiln.dev/test=missing\" is not registered"),
            "{}",
            r.stderr
        );
        // Nothing of the device is left in the image.
        assert!(!out.join("dev/kilntest").exists(), "{executor}");
    }
}

#[test]
fn run_device_that_is_required_and_missing_fails_clearly() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let cdi = cdi_dir(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN --device=kiln.dev/gpu=0,required true\n"),
        )],
    );
    let env = [("KILN_CDI_SPEC_DIRS", cdi.to_str().unwrap())];
    // Host devices are a privilege, as in BuildKit: without --allow device nothing runs.
    let r = build(&k, &ctx, &[], &env).fails();
    assert!(
        r.stderr.contains(
            "device is not allowed: RUN --device needs it; pass --allow device to grant it"
        ),
        "{}",
        r.stderr
    );
    let r = build(&k, &ctx, &["--allow", "device"], &env).fails();
    assert!(
        r.stderr.contains(&format!(
            "required device \"kiln.dev/gpu=0\" is not registered: no CDI spec in {} defines it",
            cdi.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Dockerfile:2"), "{}", r.stderr);

    // A name that is not a qualified CDI name is refused with its line.
    let ctx = k.write(
        "bad",
        &[(
            "Dockerfile",
            &format!("FROM {reg}/busybox:latest\nRUN --device=gpu true\n"),
        )],
    );
    let r = build(&k, &ctx, &[], &[]).fails();
    assert!(
        r.stderr
            .contains("unqualified device \"gpu\", missing vendor"),
        "{}",
        r.stderr
    );
}

// --- kiln build --network ------------------------------------------------------------------

/// The interface names in a copy of `/proc/net/dev`.
fn interfaces(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect()
}

#[test]
fn network_flag_sets_the_default_of_every_run() {
    let k = Kiln::new(&[]);
    let reg = test_registry();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {reg}/busybox:latest\n\
                 RUN cat /proc/net/dev > /default\n\
                 RUN --network=default cat /proc/net/dev > /explicit_default\n\
                 RUN --network=host cat /proc/net/dev > /host\n"
            ),
        )],
    );
    let host_ifaces = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    assert!(
        host_ifaces.len() > 1,
        "this test needs a host with an interface besides lo: {host_ifaces:?}"
    );
    let out = k.path("none");
    let o = format!("type=local,dest={}", out.display());
    build(
        &k,
        &ctx,
        &["--network=none", "--allow", "network.host", "-o", &o],
        &[],
    )
    .ok();
    assert_eq!(interfaces(&read(&out, "default")), ["lo"]);
    assert_eq!(interfaces(&read(&out, "explicit_default")), ["lo"]);
    // A RUN's own --network wins.
    assert_eq!(interfaces(&read(&out, "host")), host_ifaces);

    // Without the flag the default is the host's network, as before: the steps are other
    // steps (a different cache key), not the cached `none` ones.
    let out2 = k.path("default");
    let o2 = format!("type=local,dest={}", out2.display());
    let r = build(&k, &ctx, &["--allow", "network.host", "-o", &o2], &[]).ok();
    assert_eq!(
        interfaces(&read(&out2, "default")),
        host_ifaces,
        "{}",
        r.stderr
    );

    // `--network host` on the command line grants the entitlement, as buildx does (the
    // Dockerfile's `RUN --network=host` is allowed by it too); every step sees the host's.
    let out3 = k.path("host-flag");
    let o3 = format!("type=local,dest={}", out3.display());
    let r = build(&k, &ctx, &["--network", "host", "-o", &o3], &[]).ok();
    assert_eq!(
        interfaces(&read(&out3, "default")),
        host_ifaces,
        "{}",
        r.stderr
    );
    // Without it, the Dockerfile's own `RUN --network=host` still needs `--allow`.
    let r = build(&k, &ctx, &[], &[]).fails();
    assert!(
        r.stderr.contains("network.host is not allowed"),
        "{}",
        r.stderr
    );
    let r = build(&k, &ctx, &["--network", "bridge"], &[]).fails();
    assert!(r.stderr.contains("bridge"), "{}", r.stderr);
}
