//! The RUN sandbox end to end, with both runtimes: a step is refused a mount, `unshare -U`,
//! the contents of masked paths and writes to read-only ones, as in Docker; a syscall outside
//! Docker's allow-list gets EPERM; `--security=insecure` (with `--allow security.insecure`)
//! allows the mount. plugins/exec/tests/sandbox.rs checks each syscall one by one.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

const DOCKERFILE: &str = r#"FROM bb
RUN mkdir -p /m /out \
 && { mount -t tmpfs t /m 2>&1; echo "rc=$?"; } > /out/mount \
 && { unshare -U true 2>&1; echo "rc=$?"; } > /out/unshare \
 && { unshare -m true 2>&1; echo "rc=$?"; } > /out/unshare-m \
 && wc -c < /proc/timer_list > /out/timer_list \
 && { echo kiln > /proc/sys/kernel/hostname; echo "rc=$?"; } > /out/proc-sys 2>&1 \
 && { ionice -c 1 -n 0 true 2>&1; echo "rc=$?"; } > /out/ionice \
 && grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status > /out/status
RUN --security=insecure { mount -t tmpfs t /m && echo mounted; } > /out/insecure 2>&1
FROM scratch
COPY --from=0 /out /
"#;

fn check(executor: &str) {
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dest_dir = k.path("out");
    let dest = format!("type=local,dest={}", dest_dir.display());
    build_bb(
        &k,
        &[],
        &ctx,
        &[
            "--allow",
            "security.insecure",
            "--executor",
            executor,
            "--output",
            &dest,
        ],
    )
    .ok();
    let read = |name: &str| std::fs::read_to_string(dest_dir.join(name)).unwrap();

    let mount = read("mount");
    assert!(mount.contains("permission denied"), "{executor}: {mount}");
    assert!(!mount.ends_with("rc=0\n"), "{executor}: {mount}");
    for f in ["unshare", "unshare-m"] {
        let out = read(f);
        assert!(
            out.contains("Operation not permitted") && !out.ends_with("rc=0\n"),
            "{executor} {f}: {out}"
        );
    }
    assert_eq!(
        read("timer_list"),
        "0\n",
        "{executor}: /proc/timer_list is masked"
    );
    let proc_sys = read("proc-sys");
    assert!(
        proc_sys.contains("Read-only file system"),
        "{executor}: {proc_sys}"
    );
    // ioprio_set of the realtime class needs CAP_SYS_ADMIN: the step lacks it.
    let ionice = read("ionice");
    assert!(
        ionice.contains("Operation not permitted"),
        "{executor}: {ionice}"
    );
    assert_eq!(
        read("status"),
        "NoNewPrivs:\t0\nSeccomp:\t2\n",
        "{executor}"
    );
    assert_eq!(read("insecure"), "mounted\n", "{executor}");
}

#[test]
fn sandbox_refuses_what_docker_refuses_embedded() {
    check("embedded");
}

#[test]
fn sandbox_refuses_what_docker_refuses_runc() {
    check("runc");
}
