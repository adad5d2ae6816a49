//! Cache mount sharing modes across processes: two `kiln build` processes on one store
//! (`KILN_ROOT`) use one cache mount, as two builds from two terminals or two CI jobs do.
//! kiln has no daemon, so `sharing=locked|private` must hold between processes, not only
//! between the steps of one build.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_e2e::*;

/// Hanging is the failure these tests look for: every wait has this generous bound.
const BOUND: Duration = Duration::from_secs(120);

/// Starts `kiln build --progress=plain --no-cache` of `ctx` on `k`'s store in the background,
/// exporting to the local directory `out`.
fn start(k: &Kiln, ctx: &Path, out: &Path) -> Background {
    let dest = format!("type=local,dest={}", out.display());
    k.spawn(
        &[],
        &[
            "build",
            "--progress=plain",
            "--no-cache",
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ],
    )
}

/// A build context whose only step holds cache mount `id` (`sharing`) in a critical section:
/// it makes `/c/busy` (failing if the directory is there, that is if another step is inside),
/// records `start NAME` in `/c/log`, writes `/c/inside-NAME`, then stays until the file
/// `/c/go-NAME` appears (the test creates it) or `BOUND` passes, records `end NAME` and removes
/// `/c/busy`.
fn context(k: &Kiln, name: &str, sharing: &str, reg: &str) -> PathBuf {
    let rounds = BOUND.as_secs() * 10;
    let dockerfile = format!(
        r#"FROM {reg}/busybox:latest
RUN --mount=type=cache,id=e2e-locks,target=/c,sharing={sharing} \
    mkdir /c/busy || {{ echo "OVERLAP: another step holds the cache mount" >&2; exit 1; }}; \
    echo "start {name}" >> /c/log; echo {name} > /c/inside-{name}; \
    i=0; while [ ! -e /c/go-{name} ] && [ $i -lt {rounds} ]; do sleep 0.1; i=$((i+1)); done; \
    echo "end {name}" >> /c/log; rmdir /c/busy
"#
    );
    k.write(&format!("ctx-{name}"), &[("Dockerfile", &dockerfile)])
}

/// Polls `found` (a file another process makes) until it answers, failing if `build` ends
/// first or `BOUND` passes.
fn wait_until<T>(build: &mut Background, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(t) = found() {
            return t;
        }
        if let Some((status, out)) = build.ended() {
            panic!("kiln ended ({status}) before {what}:\n{out}");
        }
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The instance directories of the cache mount under the store (`<sha256>`, `<sha256>.p1`...),
/// not the lock files beside them nor a directory still being made (`.<name>.new-<pid>`).
fn cache_dirs(k: &Kiln) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(k.path("store/cache-mounts"))
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| {
                    p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.')
                })
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The cache directory holding `inside-NAME`: the step of build NAME is in its critical section.
fn dir_with(k: &Kiln, name: &str) -> Option<PathBuf> {
    cache_dirs(k)
        .into_iter()
        .find(|d| d.join(format!("inside-{name}")).exists())
}

#[test]
fn two_processes_take_turns_on_a_locked_cache_mount() {
    let reg = test_registry();
    let k = Kiln::new(&[]);
    let ctx_a = context(&k, "a", "locked", &reg);
    let ctx_b = context(&k, "b", "locked", &reg);

    let mut a = start(&k, &ctx_a, &k.path("out-a"));
    let dir = wait_until(&mut a, "build a entered its step", || dir_with(&k, "a"));
    // B will not wait for the test once it is inside: only A's leaving is up to the test.
    std::fs::write(dir.join("go-b"), "").unwrap();

    // B starts while A holds the mount: it must say it waits, and not run beside A.
    let mut b = start(&k, &ctx_b, &k.path("out-b"));
    if !b.wait_for_line("waiting for cache mount \"e2e-locks\"", BOUND) {
        std::fs::write(dir.join("go-a"), "").unwrap();
        let (code, out) = b.finish(BOUND);
        a.finish(BOUND);
        panic!("build b did not wait for build a's locked cache mount (exit {code}):\n{out}");
    }
    assert!(
        !dir.join("inside-b").exists(),
        "build b entered its step while build a held the cache mount"
    );
    // A leaves; only then does B get the mount.
    std::fs::write(dir.join("go-a"), "").unwrap();
    let (code_a, out_a) = a.finish(BOUND);
    assert_eq!(code_a, 0, "build a:\n{out_a}");
    let (code_b, out_b) = b.finish(BOUND);
    assert_eq!(code_b, 0, "build b:\n{out_b}");
    assert_eq!(
        std::fs::read_to_string(dir.join("log")).unwrap(),
        "start a\nend a\nstart b\nend b\n",
        "the critical sections overlapped"
    );
    assert_eq!(cache_dirs(&k), vec![dir], "locked uses one directory");
    assert!(
        mounts_under(&k.path("store")).is_empty(),
        "{:?}",
        mounts_under(&k.path("store"))
    );
}

#[test]
fn a_second_process_gets_its_own_private_cache_mount() {
    let reg = test_registry();
    let k = Kiln::new(&[]);
    let ctx_a = context(&k, "a", "private", &reg);
    let ctx_b = context(&k, "b", "private", &reg);

    let mut a = start(&k, &ctx_a, &k.path("out-a"));
    let first = wait_until(&mut a, "build a entered its step", || dir_with(&k, "a"));
    // Were B given A's directory, it would find `/c/busy` there and fail; were it to get
    // through, this file lets it end.
    std::fs::write(first.join("go-b"), "").unwrap();

    // B runs to its end while A still holds the first directory: it got one of its own.
    let mut b = start(&k, &ctx_b, &k.path("out-b"));
    let second = wait_until(&mut b, "build b entered its step", || dir_with(&k, "b"));
    assert_ne!(
        second, first,
        "build b was given the directory build a holds"
    );
    std::fs::write(second.join("go-b"), "").unwrap();
    let (code_b, out_b) = b.finish(BOUND);
    assert_eq!(code_b, 0, "build b:\n{out_b}");
    assert!(
        a.ended().is_none(),
        "build a ended before the test let it go"
    );
    std::fs::write(first.join("go-a"), "").unwrap();
    let (code_a, out_a) = a.finish(BOUND);
    assert_eq!(code_a, 0, "build a:\n{out_a}");
    assert_eq!(
        std::fs::read_to_string(first.join("log")).unwrap(),
        "start a\nend a\n"
    );
    assert_eq!(
        std::fs::read_to_string(second.join("log")).unwrap(),
        "start b\nend b\n"
    );
    assert!(
        second.to_string_lossy().ends_with(".p1"),
        "{}",
        second.display()
    );
}

/// One step mounting one locked cache twice gets one directory at both targets (it used to
/// wait for itself forever), and two stages of one build that lock one cache both finish.
#[test]
fn one_build_shares_a_locked_cache_between_its_steps_and_mounts() {
    let reg = test_registry();
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                r#"FROM {reg}/busybox:latest AS one
RUN --mount=type=cache,id=twice,target=/a,sharing=locked \
    --mount=type=cache,id=twice,target=/b,sharing=locked \
    mkdir /a/busy && echo one > /a/f && cat /b/f > /seen && rmdir /b/busy

FROM {reg}/busybox:latest AS two
RUN --mount=type=cache,id=twice,target=/c,sharing=locked \
    mkdir /c/busy && echo two > /c/g && rmdir /c/busy && echo done > /seen

FROM scratch
COPY --from=one /seen /one
COPY --from=two /seen /two
"#
            ),
        )],
    );
    let (code, out) = start(&k, &ctx, &k.path("out")).finish(BOUND);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(k.path("out/one")).unwrap(), "one\n");
    assert_eq!(
        std::fs::read_to_string(k.path("out/two")).unwrap(),
        "done\n"
    );
    assert_eq!(cache_dirs(&k).len(), 1, "{:?}", cache_dirs(&k));
}
