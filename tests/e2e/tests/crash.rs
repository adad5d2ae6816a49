//! Crash safety (issue 9): `kiln build` killed with SIGKILL at random moments of a multi-stage
//! build with RUN steps, pulls, COPY and a cache mount. After each kill the same build runs
//! again on the same store, and:
//! - it succeeds, and every step the killed build had finished (its `DONE` was printed) comes
//!   from the cache;
//! - no mount under the store is left in this (the host's) mount table;
//! - the store's `tmp/` (and its session and step locks) are empty once it is done, and so
//!   is the temp dir kiln was given (`TMPDIR`, where the sandbox keeps its scratch files);
//! - the last one gives the digest of an uninterrupted build in a fresh store.
//!
//! The moments are drawn from a seeded generator printed by the test; set `KILN_CRASH_SEED`
//! to replay a failing run.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::*;

const KILLS: u32 = 50;

/// xorshift64*: enough randomness for kill moments, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A duration in [0, max).
    fn below(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap().max(1);
        Duration::from_nanos(self.next() % nanos)
    }
}

fn seed() -> u64 {
    match std::env::var("KILN_CRASH_SEED") {
        Ok(s) if !s.is_empty() => s.parse().expect("KILN_CRASH_SEED is a number"),
        _ => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            // Never 0: xorshift would stay there.
            u64::from(t.subsec_nanos()) ^ t.as_secs() | 1
        }
    }
}

/// The build's arguments: the round changes the first steps of both stages, so that every
/// round has RUN steps to execute (and to be killed in).
fn args(out: &Path, ctx: &Path, round: u32) -> Vec<String> {
    vec![
        "build".into(),
        "--progress=plain".into(),
        "--build-arg".into(),
        "SOURCE_DATE_EPOCH=0".into(),
        "--build-arg".into(),
        format!("ROUND={round}"),
        "--output".into(),
        // Rewritten timestamps: the image digest is the same in every store.
        format!("type=oci,dest={},rewrite-timestamp=true", out.display()),
        ctx.display().to_string(),
    ]
}

fn kiln(store: &Path, k: &Kiln) -> Command {
    let mut cmd = Command::new(target_dir().join("kiln"));
    // A temp dir of the test's own, to see what kiln leaves outside its store.
    let tmpdir = k.path("tmpdir");
    std::fs::create_dir_all(&tmpdir).unwrap();
    cmd.env("XDG_CONFIG_HOME", k.path("xdg-config"))
        .env("TMPDIR", tmpdir)
        .env("KILN_ROOT", store)
        .env("KILN_PLUGIN_PATH", k.plugin_dir())
        .stdin(Stdio::null());
    cmd
}

fn build(store: &Path, k: &Kiln, args: &[String]) -> Run {
    Run::from(kiln(store, k).args(args).output().expect("run kiln"))
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Steps the build executed to the end (not the build's own bookkeeping), by their
/// instruction: a step two stages share (their FROM) may be shown under either stage's label.
fn finished(run: &Run) -> Vec<String> {
    run.steps()
        .into_iter()
        .filter(|(name, state)| {
            state == "DONE" && !name.starts_with("[internal]") && !name.starts_with("exporting")
        })
        .map(|(name, _)| match name.split_once("] ") {
            Some((_, instruction)) if name.starts_with('[') => instruction.to_owned(),
            _ => name,
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_leaves_a_usable_store_and_nothing_behind() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {registry}/busybox:latest AS a\n\
                     ARG ROUND\n\
                     RUN echo \"a $ROUND\" > /a1\n\
                     RUN cat /a1 /a1 > /a2\n\
                     FROM {registry}/busybox:latest AS b\n\
                     ARG ROUND\n\
                     RUN echo \"b $ROUND\" > /b1\n\
                     RUN --mount=type=cache,target=/cache,sharing=locked echo x >> /cache/log\n\
                     COPY --from=a /a1 /from-a\n\
                     FROM b\n\
                     COPY --from=a /a2 /\n\
                     COPY input.txt /\n\
                     RUN cat /a2 /from-a /input.txt /b1 > /final\n"
                ),
            ),
            ("input.txt", "input\n"),
        ],
    );
    let last = KILLS - 1;

    // The uninterrupted build, in a store of its own: its digest is the one to get back, and
    // its length (once the base image is pulled) sets the window the kills are drawn from.
    let fresh = k.path("fresh-store");
    build(&fresh, &k, &args(&k.path("fresh.tar"), &ctx, last + 1)).ok();
    let start = Instant::now();
    let reference = build(&fresh, &k, &args(&k.path("fresh.tar"), &ctx, last)).ok();
    let window = start.elapsed();
    let want = reference.digest();

    let seed = seed();
    println!("crash test seed: {seed} (replay with KILN_CRASH_SEED={seed}); window {window:?}");
    let mut rng = Rng(seed);
    let store = k.path("store");
    let mut mid_build = 0;
    // Killed builds that had reached a RUN step (the moments that once left mounts behind).
    let mut in_run = 0;
    let mut got = String::new();
    for round in 0..KILLS {
        let delay = rng.below(window);
        let log = k.path(&format!("killed-{round}.log"));
        let mut child = kiln(&store, &k)
            .args(args(&k.path(&format!("killed-{round}.tar")), &ctx, round))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kiln build");
        // The kill moment is the test's input, drawn at random: not a synchronization.
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            mid_build += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let killed = Run {
            code: -1,
            stdout: String::new(),
            stderr: std::fs::read_to_string(&log).unwrap(),
        };
        let what = format!("round {round} (seed {seed}), killed after {delay:?}");
        if killed.stderr.contains("] RUN ") {
            in_run += 1;
        }

        assert_eq!(
            mounts_under(&store),
            Vec::<String>::new(),
            "{what}: mounts outlived the killed build"
        );

        let again = build(&store, &k, &args(&k.path("out.tar"), &ctx, round));
        assert_eq!(
            again.code, 0,
            "{what}: the build after the kill failed:\n{}\n--- the killed build:\n{}",
            again.stderr, killed.stderr
        );
        for step in finished(&killed) {
            assert_eq!(
                again.step_state(&step),
                "CACHED",
                "{what}: {step:?} had finished before the kill, but ran again:\n{}",
                again.stderr
            );
        }
        assert_eq!(
            entries(&store.join("tmp")),
            Vec::<String>::new(),
            "{what}: the store's tmp/ is not empty after the next build (sessions: {:?}):\n{}\n\
             --- the killed build:\n{}",
            entries(&store.join("sessions")),
            again.stderr,
            killed.stderr
        );
        assert_eq!(
            entries(&store.join("sessions")),
            Vec::<String>::new(),
            "{what}: session locks outlived the next build"
        );
        // The sandbox's scratch (hosts, resolv.conf) of a step killed mid-run goes when the
        // step runs again.
        assert_eq!(
            entries(&k.path("tmpdir")),
            Vec::<String>::new(),
            "{what}: scratch directories outlived the next build"
        );
        assert_eq!(
            entries(&store.join("running")),
            Vec::<String>::new(),
            "{what}: step locks outlived the next build"
        );
        assert_eq!(mounts_under(&store), Vec::<String>::new(), "{what}");
        got = again.digest();
    }
    println!(
        "{mid_build} of {KILLS} kills hit a running build, {in_run} of the killed builds had reached a RUN step"
    );
    assert!(
        mid_build > 0,
        "no kill hit a running build (seed {seed}): the test proved nothing"
    );
    assert_eq!(
        got, want,
        "the last build after the kills differs from an uninterrupted one"
    );
}

/// Issue 9: 8 builds at once on one store, 4 of one build and 4 of others, all succeed; the
/// identical ones give one digest, and the RUN step they share ran once (in one of them: the
/// others waited for it and took its result), as with BuildKit's daemon.
#[test]
fn eight_builds_at_once_on_one_store_run_a_shared_step_once() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    // The step prints `ran-42` only when it really runs (its name shows the unexpanded text),
    // and writes a stamp that differs at each run, so that two runs give two digests. It lasts
    // a second so that the identical builds reach it together.
    let same = k.write(
        "same",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\n\
                 RUN echo \"ran-$((6*7))\" && sleep 1 && cat /proc/uptime > /stamp\n\
                 RUN cat /stamp > /copy\n"
            ),
        )],
    );
    let others: Vec<_> = (0..4)
        .map(|i| {
            k.write(
                &format!("other-{i}"),
                &[(
                    "Dockerfile",
                    &format!(
                        "FROM {registry}/busybox:latest\n\
                         RUN echo other {i} > /other && sleep 1\n"
                    ),
                )],
            )
        })
        .collect();
    let store = k.path("store");
    let start = |ctx: &Path, n: usize| {
        let out = k.path(&format!("out-{n}.tar"));
        kiln(&store, &k)
            .args([
                "build",
                "--progress=plain",
                "--build-arg",
                "SOURCE_DATE_EPOCH=0",
            ])
            .arg("--output")
            .arg(format!("type=oci,dest={}", out.display()))
            .arg(ctx)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kiln build")
    };
    let mut children = Vec::new();
    for (n, other) in others.iter().enumerate() {
        children.push((true, start(&same, n)));
        children.push((false, start(other, 4 + n)));
    }
    let runs: Vec<(bool, Run)> = children
        .into_iter()
        .map(|(same, c)| (same, Run::from(c.wait_with_output().unwrap())))
        .collect();
    for (_, r) in &runs {
        assert_eq!(r.code, 0, "a concurrent build failed:\n{}", r.stderr);
    }
    let same_runs: Vec<&Run> = runs.iter().filter(|(s, _)| *s).map(|(_, r)| r).collect();
    let digests: Vec<String> = same_runs.iter().map(|r| r.digest()).collect();
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "identical builds gave {digests:?}"
    );
    let ran: usize = same_runs
        .iter()
        .map(|r| r.stderr.lines().filter(|l| l.ends_with(" ran-42")).count())
        .sum();
    assert_eq!(
        ran,
        1,
        "the shared RUN step ran {ran} times:\n{}",
        same_runs
            .iter()
            .map(|r| r.stderr.as_str())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
    let other_digests: std::collections::BTreeSet<String> = runs
        .iter()
        .filter(|(s, _)| !*s)
        .map(|(_, r)| r.digest())
        .collect();
    assert_eq!(other_digests.len(), 4, "the different builds differ");
    assert_eq!(entries(&store.join("tmp")), Vec::<String>::new());
    assert_eq!(entries(&store.join("running")), Vec::<String>::new());
}
