//! RUN steps with kiln in a user namespace (rootless mode), with both runtimes: each case runs
//! in a child of this test binary that is uid 0 of a new user namespace mapping 0-65535 to the
//! host's 200000-265535 (ids and groups) with a mount namespace of its own — the situation of
//! kiln's rootless re-exec, made here with the test's real root (`unshare`, `nsenter`). There
//! the child prepares its rootfs (an overlay it mounts itself, owned by the namespace's root)
//! and runs the step: uid 0 that can chown, working `/dev` nodes, a readable `/sys`, a `/proc`
//! of its own, the masked paths, the seccomp allow-list and Docker's capabilities as outside,
//! both network modes, and clear errors where rootless cannot do what is asked.
//!
//! The cases are the `#[ignore]`d tests of `inner` (run by name with `--ignored` in the
//! namespace); the `embedded::*` and `runc::*` tests start them.

#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{exec_op, require_runc, sh, with_mounts, Recorder, Rootfs};
use kiln_exec::execute;
use kiln_plugin_sdk::graph::{NetworkMode, SecurityMode};
use kiln_plugin_sdk::proto::{PreparedMount, PreparedMountKind, PrimitiveRequest, Runtime};

/// The host id the namespace's 0 is (and its 1000 is this + 1000).
const HOST_BASE: u32 = 200_000;
/// Set in the namespace's child: the runtime its case uses, `embedded` or `runc`.
const RUNTIME_VAR: &str = "KILN_EXEC_ROOTLESS_RUNTIME";
/// Set in the namespace's child: a directory the outer test reads after it (owned by 200000).
const KEEP_VAR: &str = "KILN_EXEC_ROOTLESS_KEEP";
/// In the kept directory: a tmpfs mounted nosuid, nodev, noexec before the user namespace.
const LOCKED_DIR: &str = "locked";
/// In the kept directory: a copy of /dev/null owned by the host's root, mode 0600.
const PRIVATE_NODE: &str = "private-null";
/// Set in the namespace's child: the static syscall helper, built by the outer test.
const HELPER_VAR: &str = "KILN_EXEC_ROOTLESS_HELPER";

/// Runs `inner::<case>` in a new user namespace with `runtime`; fails with its output unless
/// it passed. Returns the directory the case may leave files in, for a look from the host.
fn in_user_ns(case: &str, runtime: Runtime) -> tempfile::TempDir {
    for tool in ["unshare", "nsenter"] {
        if Command::new(tool).arg("--version").output().is_err() {
            panic!("{tool} not found: the rootless tests need util-linux's unshare and nsenter");
        }
    }
    let keep = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(keep.path(), Some(HOST_BASE), Some(HOST_BASE)).unwrap();
    // A device node only the host's root may open, for the CDI case.
    let node = std::ffi::CString::new(
        keep.path()
            .join(PRIVATE_NODE)
            .as_os_str()
            .as_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mknod on a NUL-terminated path.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(made, 0, "mknod: {}", std::io::Error::last_os_error());

    // A holder process in the new user and mount namespaces: it says `ready` once they exist
    // and lives until its stdin closes, while the case runs in them. For the case about a
    // partly hidden /proc, first (as the host's root, in a mount namespace of its own) a file
    // of /proc is covered, as container runtimes mask some: such mounts are locked in the
    // user namespace's copy.
    let hold = "exec unshare --user --mount -- sh -c 'echo ready; read _'";
    // For the read-only bind, a host mount with nosuid, nodev and noexec (flags the kernel
    // then locks in the user namespace) to bind from.
    let locked = keep.path().join(LOCKED_DIR);
    std::fs::create_dir(&locked).unwrap();
    let script = match case {
        "proc_hidden_by_a_mount_is_explained" => {
            format!("mount --bind /dev/null /proc/uptime && {hold}")
        }
        "read_only_bind_of_a_host_directory" => format!(
            "mount -t tmpfs -o nosuid,nodev,noexec,uid={HOST_BASE},gid={HOST_BASE} kiln-locked {} \
             && {hold}",
            locked.display()
        ),
        _ => hold.to_owned(),
    };
    let mut holder = Command::new("unshare")
        .args(["--mount", "--", "sh", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the namespace holder did not start");
    let pid = holder.id();
    for map in ["uid_map", "gid_map"] {
        std::fs::write(
            format!("/proc/{pid}/{map}"),
            format!("0 {HOST_BASE} 65536\n"),
        )
        .unwrap_or_else(|e| panic!("cannot write /proc/{pid}/{map} (the tests run as root): {e}"));
    }
    let runtime_name = match runtime {
        Runtime::Runc => "runc",
        _ => "embedded",
    };
    // nsenter makes the case uid and gid 0 of the namespace, with all its capabilities.
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-U", "-m", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("inner::{case}"),
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(RUNTIME_VAR, runtime_name)
        .env(HELPER_VAR, helper())
        .env(KEEP_VAR, keep.path())
        .output()
        .unwrap();
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("test result: ok. 1 passed"),
        "inner::{case} ({runtime_name}) failed in the user namespace:\n{text}"
    );
    keep
}

macro_rules! rootless_cases {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $case() {
                let keep = super::in_user_ns(stringify!($case), super::Runtime::Embedded);
                super::check_from_host(stringify!($case), keep.path());
            })*
        }
        mod runc {
            $(#[test] fn $case() {
                super::require_runc();
                let keep = super::in_user_ns(stringify!($case), super::Runtime::Runc);
                super::check_from_host(stringify!($case), keep.path());
            })*
        }
    };
}

rootless_cases!(
    root_in_the_namespace_chowns_to_mapped_ids,
    dev_nodes_work,
    sys_is_the_hosts_and_read_only,
    proc_is_its_own_pid_namespace,
    masked_and_read_only_paths_stay,
    seccomp_and_capabilities_as_outside,
    network_none_has_only_lo,
    read_only_bind_of_a_host_directory,
    limits_need_root,
    insecure_gets_the_namespaces_capabilities,
    unmapped_user_is_refused_clearly,
    devices_are_bound_and_unopenable_ones_refused,
    proc_hidden_by_a_mount_is_explained,
    ulimit_above_the_hard_limit_is_explained,
    cgroupfs_is_there_and_read_only,
);

/// Embedded only, as the v2 cases of `limits.rs`: runc picks its cgroup driver from
/// /sys/fs/cgroup (v1 here) and cannot be pointed at the unified mount.
#[test]
fn embedded_cgroupfs_v2_is_bound_read_only() {
    in_user_ns("cgroupfs_v2_is_bound_read_only", Runtime::Embedded);
}

/// What the host sees after a case: the file chowned to 1000 inside belongs to 201000 here
/// (the case moved it from its layer to the kept directory).
fn check_from_host(case: &str, keep: &Path) {
    if case == "root_in_the_namespace_chowns_to_mapped_ids" {
        let meta = std::fs::metadata(keep.join("f")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (HOST_BASE + 1000, HOST_BASE + 1000)
        );
    }
}

/// The cases, run in the user namespace by the tests above (never directly).
mod inner {
    use super::*;

    /// The runtime the outer test chose; fails when not started by it.
    fn runtime() -> Runtime {
        let map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
        assert!(
            map.split_whitespace().collect::<Vec<_>>() == ["0", "200000", "65536"],
            "run by the embedded::/runc:: tests in a user namespace, not directly (uid_map {map:?})"
        );
        match std::env::var(RUNTIME_VAR).as_deref() {
            Ok("runc") => Runtime::Runc,
            Ok("embedded") => Runtime::Embedded,
            other => panic!("{RUNTIME_VAR} is {other:?}"),
        }
    }

    /// A busybox rootfs with more applets and the static syscall helper at `/bin/syscall`.
    fn rootfs() -> Rootfs {
        let root = Rootfs::busybox();
        for applet in ["chown", "head", "mount", "mknod", "mv", "cut", "tr", "sort"] {
            std::os::unix::fs::symlink("busybox", root.merged.join("bin").join(applet)).unwrap();
        }
        std::fs::copy(
            std::env::var(HELPER_VAR).unwrap(),
            root.merged.join("bin/syscall"),
        )
        .unwrap();
        root
    }

    /// Runs `req` on the case's runtime; the exit code and the output (stdout then stderr).
    fn run_req(mut req: PrimitiveRequest) -> (i32, Vec<String>) {
        req.runtime = runtime();
        let rec = Recorder::new();
        let code = match execute(req, &rec) {
            Ok(r) => r.exit_code.unwrap(),
            Err(e) => panic!("the step did not run: {e}\nstderr: {:?}", rec.stderr()),
        };
        let mut lines = rec.stdout();
        lines.extend(rec.stderr());
        (code, lines)
    }

    fn run(root: &Rootfs, script: &str) -> Vec<String> {
        let (code, lines) = run_req(sh(root, script));
        assert_eq!(code, 0, "{script}: {lines:?}");
        lines
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn root_in_the_namespace_chowns_to_mapped_ids() {
        let root = rootfs();
        let out = run(&root, "id; touch /f; chown 1000:1000 /f; stat -c %u:%g /f");
        assert!(out[0].starts_with("uid=0(root) gid=0(root)"), "{out:?}");
        assert_eq!(out[1], "1000:1000");
        // In the layer (the upper dir) as in the namespace.
        let f = root.upper.join("f");
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        let keep = PathBuf::from(std::env::var(KEEP_VAR).unwrap());
        std::fs::rename(&f, keep.join("f")).unwrap();
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn dev_nodes_work() {
        let root = rootfs();
        let out = run(
            &root,
            "echo gone > /dev/null && echo null-ok; head -c 5 /dev/zero | wc -c; \
             head -c 8 /dev/urandom | wc -c; stat -c '%F %t:%T' /dev/null /dev/zero /dev/full; \
             echo x > /dev/full || echo full-refused",
        );
        assert_eq!(
            &out[..5],
            [
                "null-ok",
                "5",
                "8",
                "character special file 1:3",
                "character special file 1:5",
            ]
        );
        assert!(
            out.contains(&"character special file 1:7".to_owned()),
            "{out:?}"
        );
        assert!(out.contains(&"full-refused".to_owned()), "{out:?}");
    }

    /// `/sys/fs/cgroup` as BuildKit mounts it (`cgroupfs.rs`), with bind mounts only: the
    /// hierarchies are there, nothing in it writable; with both network modes.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn cgroupfs_is_there_and_read_only() {
        for network in [NetworkMode::Default, NetworkMode::None] {
            let root = rootfs();
            let mut req = sh(
                &root,
                "test -f /sys/fs/cgroup/memory/memory.limit_in_bytes && echo limit-file; \
                 touch /sys/fs/cgroup/x 2>&1; mkdir /sys/fs/cgroup/memory/x 2>&1; true",
            );
            exec_op(&mut req).network = network;
            let (code, out) = run_req(req);
            assert_eq!(code, 0, "{network:?}: {out:?}");
            assert_eq!(out[0], "limit-file", "{network:?}: {out:?}");
            for line in &out[1..3] {
                assert!(
                    line.ends_with("Read-only file system"),
                    "{network:?}: {out:?}"
                );
            }
        }
    }

    /// The v2 path (the hybrid host's cgroup2 mount, `KILN_CGROUP2_ROOT`): kiln may not make a
    /// step cgroup there, so the step gets a cgroup namespace at kiln's and that cgroup bound
    /// read-only (no cgroup2 mount in a user namespace).
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn cgroupfs_v2_is_bound_read_only() {
        // This process runs one case: no other step sees the variable.
        std::env::set_var("KILN_CGROUP2_ROOT", "/sys/fs/cgroup/unified");
        let root = rootfs();
        let out = run(
            &root,
            "grep '^0::' /proc/self/cgroup; stat -f -c %t /sys/fs/cgroup; \
             test -f /sys/fs/cgroup/cgroup.procs && echo procs; mkdir /sys/fs/cgroup/x 2>&1; true",
        );
        assert_eq!(out[..3], ["0::/", "63677270", "procs"], "{out:?}");
        assert!(out[3].ends_with("Read-only file system"), "{out:?}");
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn sys_is_the_hosts_and_read_only() {
        let root = rootfs();
        let out = run(
            &root,
            "ls /sys/class/net | sort | tr '\\n' ' '; echo; cat /sys/kernel/uevent_seqnum >/dev/null && echo readable; \
             mkdir /sys/kernel/x 2>&1; mkdir /sys/fs/cgroup/pids/kiln-x 2>&1; true",
        );
        let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        host.sort();
        assert_eq!(
            out[0].trim(),
            host.join(" "),
            "the host network's interfaces"
        );
        assert_eq!(out[1], "readable");
        assert!(out[2].ends_with("Read-only file system"), "{out:?}");
        // The cgroup hierarchies below it: read-only too in the embedded runtime; runc makes
        // only the top mount read-only (the host's root still owns what is below).
        let below_ok = out[3].ends_with("Read-only file system")
            || (runtime() == Runtime::Runc && out[3].ends_with("Permission denied"));
        assert!(below_ok, "{out:?}");
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn proc_is_its_own_pid_namespace() {
        let root = rootfs();
        let out = run(
            &root,
            "echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/1/comm",
        );
        assert_eq!(out[0], "1", "the step is pid 1 of its own pid namespace");
        let count: u32 = out[1].parse().unwrap();
        assert!(count <= 3, "only the step's processes in /proc: {out:?}");
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn masked_and_read_only_paths_stay() {
        let root = rootfs();
        let out = run(
            &root,
            "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /sys/firmware | wc -l; \
             echo 1 > /proc/sys/kernel/domainname 2>&1 || echo sys-refused",
        );
        assert_eq!(&out[..3], ["0", "0", "0"], "{out:?}");
        assert!(out.contains(&"sys-refused".to_owned()), "{out:?}");
        assert!(
            out.iter().any(|l| l.contains("Read-only file system")),
            "{out:?}"
        );
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn seccomp_and_capabilities_as_outside() {
        let root = rootfs();
        let out = run(
            &root,
            &format!(
                "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status; \
                 /bin/syscall {} 0 0 0 0 0; /bin/syscall {}; true",
                libc::SYS_get_mempolicy,
                libc::SYS_getppid
            ),
        );
        let docker = "00000000a80425fb";
        assert!(out.contains(&"Seccomp:\t2".to_owned()), "{out:?}");
        assert!(out.contains(&"NoNewPrivs:\t0".to_owned()), "{out:?}");
        assert!(out.contains(&format!("CapEff:\t{docker}")), "{out:?}");
        assert!(out.contains(&format!("CapBnd:\t{docker}")), "{out:?}");
        assert!(
            out.contains(&"errno 1 Operation not permitted".to_owned()),
            "get_mempolicy is outside the allow-list: {out:?}"
        );
        assert!(out.iter().any(|l| l.starts_with("ok ")), "{out:?}");
        // A user other than root starts with none.
        let root = rootfs();
        let mut req = sh(&root, "grep CapEff /proc/self/status; id -u");
        exec_op(&mut req).user = "1000".into();
        let (code, out) = run_req(req);
        assert_eq!(
            (code, out),
            (
                0,
                vec!["CapEff:\t0000000000000000".to_owned(), "1000".to_owned()]
            )
        );
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn network_none_has_only_lo() {
        let root = rootfs();
        let mut req = sh(
            &root,
            "ip -o link | cut -d: -f2 | tr -d ' '; ls /sys/class/net; \
             ip -o addr show lo | grep -c 127.0.0.1",
        );
        exec_op(&mut req).network = NetworkMode::None;
        let (code, out) = run_req(req);
        assert_eq!(code, 0, "{out:?}");
        assert_eq!(out, ["lo", "lo", "1"]);
    }

    /// A read-only bind of a host directory whose mount's flags (nosuid, nodev, noexec) the
    /// kernel locked when the namespace was made: the remount keeps them.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn read_only_bind_of_a_host_directory() {
        let root = rootfs();
        let src = PathBuf::from(std::env::var(KEEP_VAR).unwrap()).join(LOCKED_DIR);
        let flags = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = flags
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(&*src.display().to_string()))
            .unwrap_or_else(|| panic!("{} is not a mount: {flags}", src.display()));
        assert!(line.contains("nosuid,nodev,noexec"), "{line}");
        std::fs::write(src.join("data"), "hello\n").unwrap();
        let req = with_mounts(
            sh(&root, "cat /src/data; touch /src/new 2>&1; true"),
            vec![PreparedMount {
                dest: "/src".into(),
                kind: PreparedMountKind::Bind {
                    source: src.display().to_string(),
                },
                readonly: true,
            }],
        );
        let (code, out) = run_req(req);
        assert_eq!(code, 0, "{out:?}");
        assert_eq!(out[0], "hello");
        assert!(out[1].ends_with("Read-only file system"), "{out:?}");
    }

    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn limits_need_root() {
        let root = rootfs();
        let mut req = sh(&root, "true");
        req.limits.memory = Some(32 << 20);
        req.runtime = runtime();
        let err = execute(req, &Recorder::new()).unwrap_err().to_string();
        assert!(
            err.contains("resource limits (--memory") && err.contains("need root"),
            "{err}"
        );
    }

    /// `--security=insecure` gives every capability of the namespace: a mount works in the
    /// step (its mount namespace belongs to the user namespace), but what needs the host's
    /// root does not (mknod of a device).
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn insecure_gets_the_namespaces_capabilities() {
        let root = rootfs();
        let mut req = sh(
            &root,
            "grep CapEff /proc/self/status; mkdir /m; mount -t tmpfs t /m && echo mounted; \
             mknod /d c 1 3 2>&1; true",
        );
        exec_op(&mut req).security = SecurityMode::Insecure;
        let (code, out) = run_req(req);
        assert_eq!(code, 0, "{out:?}");
        assert_eq!(out[0], format!("CapEff:\t{:016x}", common::own_cap_bnd()));
        assert_eq!(out[1], "mounted");
        assert!(out[2].ends_with("Operation not permitted"), "{out:?}");
    }

    /// A uid the namespace does not map (only 0-65535 exist in it): refused before the step
    /// starts, naming the id and rootless mode.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn unmapped_user_is_refused_clearly() {
        let root = rootfs();
        let mut req = sh(&root, "true");
        exec_op(&mut req).user = "70000:0".into();
        req.runtime = runtime();
        let err = execute(req, &Recorder::new()).unwrap_err().to_string();
        assert!(
            err.contains("uid 70000") && err.contains("rootless") && err.contains("0-65535"),
            "{err}"
        );
        // A mapped one runs.
        let root = rootfs();
        let mut req = sh(&root, "id -u");
        exec_op(&mut req).user = "65535:65535".into();
        assert_eq!(run_req(req), (0, vec!["65535".to_owned()]));
    }

    /// `RUN --device`: a CDI node is the host's, bound (no mknod in a user namespace), and
    /// works; one the user running kiln may not open is refused with a message saying why.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn devices_are_bound_and_unopenable_ones_refused() {
        let keep = PathBuf::from(std::env::var(KEEP_VAR).unwrap());
        let specs = tempfile::tempdir().unwrap();
        std::fs::write(
            specs.path().join("kiln.yaml"),
            format!(
                "cdiVersion: \"0.6.0\"\nkind: kiln.dev/test\ndevices:\n\
                 - name: zero\n  containerEdits:\n    deviceNodes:\n    \
                 - path: /dev/kilnzero\n      hostPath: /dev/zero\n\
                 - name: private\n  containerEdits:\n    deviceNodes:\n    \
                 - path: /dev/kilnprivate\n      hostPath: {}\n",
                keep.join(PRIVATE_NODE).display()
            ),
        )
        .unwrap();
        // The case runs alone in its process (--test-threads=1).
        std::env::set_var("KILN_CDI_SPEC_DIRS", specs.path());
        let device = |name: &str| kiln_plugin_sdk::graph::Device {
            name: format!("kiln.dev/test={name}"),
            required: true,
        };

        let root = rootfs();
        let mut req = sh(
            &root,
            "head -c 3 /dev/kilnzero | wc -c; stat -c '%t:%T' /dev/kilnzero",
        );
        exec_op(&mut req).devices = vec![device("zero")];
        assert_eq!(run_req(req), (0, vec!["3".to_owned(), "1:5".to_owned()]));

        let root = rootfs();
        let mut req = sh(&root, "true");
        exec_op(&mut req).devices = vec![device("private")];
        req.runtime = runtime();
        let err = execute(req, &Recorder::new()).unwrap_err().to_string();
        assert!(
            err.contains("/dev/kilnprivate")
                && err.contains("rootless")
                && err.contains("neither read nor write"),
            "{err}"
        );
    }

    /// Where mounts hide part of the host's /proc (kiln in a container), the kernel lets no
    /// user namespace mount proc: the step fails saying why.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn proc_hidden_by_a_mount_is_explained() {
        let root = rootfs();
        let mut req = sh(&root, "true");
        req.runtime = runtime();
        let err = execute(req, &Recorder::new()).unwrap_err().to_string();
        assert!(
            err.contains("proc") && err.contains("rootless") && err.contains("fully visible"),
            "{err}"
        );
    }

    /// RLIMIT_NOFILE at kiln's own hard limit (CAP_SYS_RESOURCE of the namespace cannot raise
    /// it to BuildKit's 1048576), and a `--ulimit` above it fails saying why.
    #[test]
    #[ignore = "run in a user namespace by the outer tests"]
    fn ulimit_above_the_hard_limit_is_explained() {
        let mut own = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit64 writes the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit64(libc::RLIMIT_NOFILE, &mut own) },
            0
        );
        let root = rootfs();
        let out = run(&root, "ulimit -Hn");
        let expected = own.rlim_max.min(1_048_576);
        assert_eq!(out, [expected.to_string()]);

        let root = rootfs();
        let mut req = sh(&root, "true");
        req.ulimits = vec![kiln_plugin_sdk::proto::Ulimit {
            resource: kiln_plugin_sdk::proto::UlimitResource::Nofile,
            soft: own.rlim_max + 1,
            hard: own.rlim_max + 1,
        }];
        req.runtime = runtime();
        let err = execute(req, &Recorder::new()).unwrap_err().to_string();
        assert!(
            err.contains("rootless") && err.contains("CAP_SYS_RESOURCE"),
            "{err}"
        );
    }
}

fn helper() -> &'static Path {
    common::syscall_helper()
}
