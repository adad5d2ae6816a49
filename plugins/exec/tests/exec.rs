//! Runs real steps in the embedded sandbox and through runc, in-process through the rlib, on a
//! busybox rootfs under an overlay mount; asserts on exit codes, output and the upper dir.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::fs;
use std::time::Duration;

use common::{cap_eff, exec_op, request, require_runc, sh, with_mounts, Recorder, Rootfs};
use kiln_exec::{execute, Error};
use kiln_plugin_sdk::graph::{NetworkMode, SecurityMode};
use kiln_plugin_sdk::proto::{
    HostEntry, PreparedMount, PreparedMountKind, PrimitiveRequest, Runtime, Ulimit, UlimitResource,
};

/// Docker's default capability set as `/proc/<pid>/status` shows it.
const DEFAULT_CAPS: u64 = 0x00000000a80425fb;

fn run(mut req: PrimitiveRequest, runtime: Runtime) -> (Result<i32, Error>, Recorder) {
    req.runtime = runtime;
    let rec = Recorder::new();
    let r = execute(req, &rec).map(|resp| resp.exit_code.unwrap());
    (r, rec)
}

/// Runs the request `make` builds on a fresh rootfs (one exec per overlay mount, as the engine
/// does: the plugin may tidy the upper dir of a mount it has used).
fn fresh(
    make: impl FnOnce(&Rootfs) -> PrimitiveRequest,
    runtime: Runtime,
) -> (Result<i32, Error>, Recorder, Rootfs) {
    let root = Rootfs::busybox();
    let (r, rec) = run(make(&root), runtime);
    (r, rec, root)
}

// --- cases, each run with both runtimes --------------------------------------------------------

fn writes_only_what_the_process_wrote(runtime: Runtime) {
    let root = Rootfs::busybox();
    let (code, _) = run(sh(&root, "echo hi > /x"), runtime);
    assert_eq!(code.unwrap(), 0);
    // No etc/hosts stub, no copied-up etc/, no proc, dev or sys mountpoints.
    assert_eq!(root.upper_entries(), vec!["x"]);
    assert_eq!(fs::read_to_string(root.upper.join("x")).unwrap(), "hi\n");
    assert!(
        root.leaked_mounts().is_empty(),
        "{:?}",
        root.leaked_mounts()
    );
}

fn bare_rootfs_gets_its_mountpoints_removed(runtime: Runtime) {
    let root = Rootfs::bare();
    let (code, rec) = run(sh(&root, "echo hi > /x; cat /etc/hosts"), runtime);
    assert_eq!(code.unwrap(), 0);
    assert!(
        rec.stdout().iter().any(|l| l.contains("localhost")),
        "{:?}",
        rec.stdout()
    );
    assert_eq!(root.upper_entries(), vec!["x"]);
}

fn exit_codes(runtime: Runtime) {
    let (code, _, root) = fresh(|r| sh(r, "exit 3"), runtime);
    assert_eq!(code.unwrap(), 3);
    assert!(
        root.upper_entries().is_empty(),
        "{:?}",
        root.upper_entries()
    );
    // pid 1 of a namespace ignores signals from inside it, so a child is killed instead.
    let killed = fresh(|r| sh(r, "sh -c 'kill -9 $$'; exit $?"), runtime).0;
    assert_eq!(killed.unwrap(), 128 + 9);
}

fn pid_namespace_and_hostname(runtime: Runtime) {
    let (code, rec, _) = fresh(|r| sh(r, "echo $$; hostname"), runtime);
    assert_eq!(code.unwrap(), 0);
    assert_eq!(rec.stdout(), vec!["1", "buildkitsandbox"]);
    let custom = |r: &Rootfs| {
        let mut req = request(r, &["hostname"]);
        req.hostname = Some("custom".into());
        req
    };
    let (code, rec, _) = fresh(custom, runtime);
    assert_eq!(code.unwrap(), 0);
    assert_eq!(rec.stdout(), vec!["custom"]);
}

fn user_groups_and_cwd(runtime: Runtime) {
    let root = Rootfs::busybox();
    let mut req = sh(&root, "id; pwd; echo $HOME");
    exec_op(&mut req).user = "app".into();
    exec_op(&mut req).cwd = "/work/dir".into();
    let (code, rec) = run(req, runtime);
    assert_eq!(code.unwrap(), 0);
    let out = rec.stdout();
    let id = out.first().unwrap();
    assert!(id.starts_with("uid=1000(app) gid=1000(app)"), "{id}");
    assert!(id.contains("2000(extra)"), "{id}");
    assert_eq!(out.get(1..).unwrap(), ["/work/dir", "/home/app"]);
    // The working directory is created (root-owned, as BuildKit does) and stays in the layer.
    assert_eq!(root.upper_entries(), vec!["work", "work/dir"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(root.upper.join("work/dir")).unwrap().uid(), 0);

    let as_user = |user: &'static str| {
        move |r: &Rootfs| {
            let mut req = request(r, &["id"]);
            exec_op(&mut req).user = user.into();
            req
        }
    };
    let (code, rec, _) = fresh(as_user("1000:2000"), runtime);
    assert_eq!(code.unwrap(), 0);
    let id = rec.stdout().first().cloned().unwrap_or_default();
    assert!(id.starts_with("uid=1000(app) gid=2000(extra)"), "{id}");

    let err = fresh(as_user("nobody"), runtime).0.unwrap_err();
    assert!(
        err.to_string().contains("unable to find user nobody"),
        "{err}"
    );
}

fn environment(runtime: Runtime) {
    let with_env = |script: &'static str, env: &'static str| {
        move |r: &Rootfs| {
            let mut req = sh(r, script);
            exec_op(&mut req).env = vec![env.into()];
            req
        }
    };
    let (code, rec, _) = fresh(
        with_env("echo \"$FOO|$PATH|$HOME\"", "FOO=bar baz"),
        runtime,
    );
    assert_eq!(code.unwrap(), 0);
    assert_eq!(
        rec.stdout(),
        vec!["bar baz|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root"]
    );
    let (_, rec, _) = fresh(with_env("echo $PATH", "PATH=/bin"), runtime);
    assert_eq!(rec.stdout(), vec!["/bin"]);
}

fn network_none_has_only_loopback(runtime: Runtime) {
    let root = Rootfs::busybox();
    let mut req = sh(&root, "ls /sys/class/net; ip link");
    exec_op(&mut req).network = NetworkMode::None;
    let (code, rec) = run(req, runtime);
    assert_eq!(code.unwrap(), 0, "{:?}", rec.stderr());
    let out = rec.stdout();
    assert_eq!(out.first().map(String::as_str), Some("lo"), "{out:?}");
    let links: Vec<_> = out
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(links.len(), 1, "{out:?}");
    assert!(
        links[0].contains("lo:") && links[0].contains("UP"),
        "{out:?}"
    );
}

fn capabilities_and_hardening(runtime: Runtime) {
    let status_as = |user: &'static str, security: SecurityMode| {
        move |r: &Rootfs| {
            let mut req = request(r, &["cat", "/proc/self/status"]);
            exec_op(&mut req).user = user.into();
            exec_op(&mut req).security = security;
            req
        }
    };
    let (code, rec, _) = fresh(status_as("", SecurityMode::Sandbox), runtime);
    assert_eq!(code.unwrap(), 0);
    let status = rec.stdout();
    assert_eq!(cap_eff(&status), DEFAULT_CAPS, "{status:?}");
    // BuildKit leaves no_new_privs unset for RUN (oci.WithNewPrivileges).
    assert!(status.iter().any(|l| l == "NoNewPrivs:\t0"), "{status:?}");
    assert!(status.iter().any(|l| l == "Seccomp:\t2"), "{status:?}");

    let (_, rec, _) = fresh(status_as("app", SecurityMode::Sandbox), runtime);
    assert_eq!(cap_eff(&rec.stdout()), 0);

    let (code, rec, _) = fresh(status_as("", SecurityMode::Insecure), runtime);
    assert_eq!(code.unwrap(), 0);
    let status = rec.stdout();
    assert_eq!(cap_eff(&status), common::own_cap_bnd(), "{status:?}");
    assert!(status.iter().any(|l| l == "Seccomp:\t0"), "{status:?}");

    let (_, rec, _) = fresh(|r| sh(r, "ulimit -n"), runtime);
    assert_eq!(rec.stdout(), vec![kiln_exec_nofile().to_string()]);
}

/// What the plugin promises for `RLIMIT_NOFILE` here: BuildKit's 1048576, or this process's
/// hard limit when it lacks CAP_SYS_RESOURCE to raise it.
fn kiln_exec_nofile() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let eff = u64::from_str_radix(eff.trim_start_matches("CapEff:").trim(), 16).unwrap();
    let limits = fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .unwrap()
        .parse()
        .unwrap();
    if eff & (1 << 24) == 0 && hard < 1_048_576 {
        hard
    } else {
        1_048_576
    }
}

fn mounts_stay_out_of_the_layer(runtime: Runtime) {
    let root = Rootfs::busybox();
    let host = tempfile::tempdir().unwrap();
    let ro_dir = host.path().join("ro");
    fs::create_dir(&ro_dir).unwrap();
    fs::write(ro_dir.join("data"), "from the host").unwrap();
    let rw_dir = host.path().join("cache");
    fs::create_dir(&rw_dir).unwrap();
    let secret = host.path().join("secret");
    fs::write(&secret, "s3cret").unwrap();
    let bind = |source: &std::path::Path, dest: &str, readonly| PreparedMount {
        dest: dest.into(),
        kind: PreparedMountKind::Bind {
            source: source.display().to_string(),
        },
        readonly,
    };
    let mounts = vec![
        bind(&ro_dir, "/src", true),
        bind(&rw_dir, "/var/cache/app", false),
        bind(&secret, "/run/secrets/token", true),
        PreparedMount {
            dest: "/scratch".into(),
            kind: PreparedMountKind::Tmpfs {
                size: Some(1 << 20),
            },
            readonly: false,
        },
        // Nested inside the tmpfs: its mountpoint is made there, not in the rootfs.
        bind(&ro_dir, "/scratch/inner/src", true),
    ];
    let script = "cat /src/data; echo; cat /run/secrets/token; echo; \
                  echo cached > /var/cache/app/f; echo t > /scratch/t && cat /scratch/t; \
                  cat /scratch/inner/src/data; echo; \
                  if echo no > /src/new; then echo WROTE; else echo refused; fi";
    let (code, rec) = run(with_mounts(sh(&root, script), mounts), runtime);
    assert_eq!(code.unwrap(), 0, "{:?}", rec.stderr());
    assert_eq!(
        rec.stdout(),
        vec!["from the host", "s3cret", "t", "from the host", "refused"]
    );
    assert_eq!(fs::read_to_string(rw_dir.join("f")).unwrap(), "cached\n");
    assert!(!ro_dir.join("new").exists());
    assert!(
        root.upper_entries().is_empty(),
        "{:?}",
        root.upper_entries()
    );
    assert!(
        root.leaked_mounts().is_empty(),
        "{:?}",
        root.leaked_mounts()
    );
}

fn etc_files(runtime: Runtime) {
    let root = Rootfs::busybox();
    let mut req = sh(
        &root,
        "cat /etc/hosts /etc/resolv.conf; echo x >> /etc/hosts || echo ro",
    );
    req.resolv_conf = Some("nameserver 192.0.2.1\n".into());
    let (code, rec) = run(req, runtime);
    assert_eq!(code.unwrap(), 0);
    let out = rec.stdout();
    assert!(
        out.iter()
            .any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l == "nameserver 192.0.2.1"), "{out:?}");
    assert_eq!(out.last().map(String::as_str), Some("ro"));
    assert!(
        root.upper_entries().is_empty(),
        "{:?}",
        root.upper_entries()
    );
}

fn run_options(runtime: Runtime) {
    let root = Rootfs::busybox();
    let mut req = sh(
        &root,
        "grep myhost /etc/hosts; grep /dev/shm /proc/mounts; ulimit -n; ulimit -Hn; ulimit -u",
    );
    req.extra_hosts = vec![HostEntry {
        host: "myhost".into(),
        ip: "10.9.8.7".into(),
    }];
    req.shm_size = Some(3 << 20);
    let limit = |resource, soft, hard| Ulimit {
        resource,
        soft,
        hard,
    };
    req.ulimits = vec![
        limit(UlimitResource::Nofile, 1024, 2048),
        limit(UlimitResource::Nproc, 500, 600),
    ];
    let (code, rec) = run(req, runtime);
    assert_eq!(code.unwrap(), 0, "{:?}", rec.stderr());
    let out = rec.stdout();
    assert_eq!(
        out.first().map(String::as_str),
        Some("10.9.8.7\tmyhost"),
        "{out:?}"
    );
    assert!(
        out.get(1).is_some_and(|l| l.contains("size=3072k")),
        "{out:?}"
    );
    assert_eq!(&out[2..], ["1024", "2048", "500"], "{out:?}");
}

fn missing_executable(runtime: Runtime) {
    let root = Rootfs::busybox();
    let err = run(request(&root, &["nonexistent"]), runtime)
        .0
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(
        err.to_string().contains("executable file not found"),
        "{err}"
    );
    assert!(
        root.upper_entries().is_empty(),
        "{:?}",
        root.upper_entries()
    );
}

fn output_is_streamed_by_stream(runtime: Runtime) {
    let root = Rootfs::busybox();
    let (code, rec) = run(
        sh(&root, "echo out1; echo err1 >&2; printf 'no newline'"),
        runtime,
    );
    assert_eq!(code.unwrap(), 0);
    assert_eq!(rec.stdout(), vec!["out1", "no newline"]);
    assert_eq!(rec.stderr(), vec!["err1"]);
}

fn cancellation_kills_the_process(runtime: Runtime) {
    let root = Rootfs::busybox();
    let mut req = sh(&root, "sleep 100 & sleep 100");
    req.runtime = runtime;
    let rec = Recorder::cancelling_after(Duration::from_millis(300));
    let err = execute(req, &rec).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(
        root.leaked_mounts().is_empty(),
        "{:?}",
        root.leaked_mounts()
    );
}

both_runtimes!(
    writes_only_what_the_process_wrote,
    bare_rootfs_gets_its_mountpoints_removed,
    exit_codes,
    pid_namespace_and_hostname,
    user_groups_and_cwd,
    environment,
    network_none_has_only_loopback,
    capabilities_and_hardening,
    mounts_stay_out_of_the_layer,
    etc_files,
    run_options,
    missing_executable,
    output_is_streamed_by_stream,
    cancellation_kills_the_process,
);

#[test]
fn dev_is_usable_by_other_users() {
    let root = Rootfs::busybox();
    let mut req = sh(
        &root,
        "echo x > /dev/null && ls /dev && ls -d /dev/pts/ptmx /dev/shm && cat /proc/kcore | wc -c",
    );
    exec_op(&mut req).user = "app".into();
    let (code, rec) = run(req, Runtime::Embedded);
    assert_eq!(code.unwrap(), 0, "{:?}", rec.stderr());
    let out = rec.stdout();
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd",
    ] {
        assert!(out.iter().any(|l| l == dev), "{dev} missing from {out:?}");
    }
    // /proc/kcore is masked with /dev/null.
    assert_eq!(out.last().map(String::as_str), Some("0"));
}

#[test]
fn unknown_runtime_and_bad_requests_are_errors() {
    let root = Rootfs::busybox();
    let mut req = sh(&root, "true");
    req.runtime = Runtime::Unknown;
    assert!(matches!(
        execute(req, &Recorder::new()),
        Err(Error::Unsupported(_))
    ));
    let req = request(&root, &[]);
    assert!(matches!(
        execute(req, &Recorder::new()),
        Err(Error::InvalidInput(_))
    ));
    let req = with_mounts(
        sh(&root, "true"),
        vec![PreparedMount {
            dest: "relative".into(),
            kind: PreparedMountKind::Tmpfs { size: None },
            readonly: false,
        }],
    );
    assert!(matches!(
        execute(req, &Recorder::new()),
        Err(Error::InvalidInput(_))
    ));
    assert!(
        root.upper_entries().is_empty(),
        "{:?}",
        root.upper_entries()
    );
}
