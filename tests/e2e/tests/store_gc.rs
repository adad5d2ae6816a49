//! A store that keeps itself: `kiln du` agrees with `du -sb`, `kiln prune` (as buildx's)
//! frees least recently used cache down to `--keep-storage` or everything with `--all`, the
//! collection after each build keeps the store under kiln.toml's `gckeepstorage`, and a prune
//! while a build runs deletes nothing that build uses.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_e2e::*;

/// Hanging is what the concurrent test looks for: every wait has this generous bound.
const BOUND: Duration = Duration::from_secs(120);

/// `n` bytes that do not compress (a layer blob is as large as its files), from `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `du -sb DIR`: apparent bytes, directories included.
fn du_sb(dir: &Path) -> u64 {
    tool("du", &["-sb", dir.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A go-units size as `kiln du` prints it (`12.35MB`) in bytes.
fn parse_human(text: &str) -> f64 {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1e0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other:?} in {text:?}"),
    };
    num.parse::<f64>().unwrap() * scale
}

/// The value of the `Total:` line.
fn total_line(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Total:"))
        .unwrap_or_else(|| panic!("no Total: line in\n{stdout}"));
    parse_human(line.split_whitespace().nth(1).unwrap())
}

/// A context `FROM scratch` + `COPY --chmod=600 data /data`, `data` being 5 MB of noise from
/// `seed`. The chmod makes the COPY's layer a copy (5 MB of its own): an unchanged COPY of a
/// context file is a hard link to the context layer's, which would halve these stores.
fn copy_context(k: &Kiln, name: &str, seed: u64) -> PathBuf {
    let ctx = k.write(
        name,
        &[("Dockerfile", "FROM scratch\nCOPY --chmod=600 data /data\n")],
    );
    std::fs::write(ctx.join("data"), noise(seed, 5_000_000)).unwrap();
    ctx
}

#[test]
fn du_agrees_with_du_sb_and_prune_frees_down_to_keep_storage_then_all() {
    let k = Kiln::new(&[]);
    let store = k.path("store");
    // Three builds: each keeps its context (5 MB) and its COPY layer (5 MB); the first also
    // exports an image, whose layer blob (5 MB: noise does not compress) stays in the store.
    for seed in 0..3u64 {
        let ctx = copy_context(&k, &format!("ctx{seed}"), seed);
        let mut args = vec!["build", "--progress=plain"];
        let dest = format!("type=oci,dest={}", k.path("img.tar").display());
        if seed == 0 {
            args.extend(["--output", &dest]);
        }
        let c = ctx.display().to_string();
        args.push(&c);
        k.run(&args).ok();
    }
    let size = du_sb(&store);
    assert!(size > 30_000_000, "the store holds {size} bytes");

    let du = k.run(&["du"]).ok();
    let total = total_line(&du.stdout);
    let real = du_sb(&store) as f64;
    assert!(
        (total - real).abs() <= real * 0.05,
        "kiln du says {total}, du -sb {real}:\n{}",
        du.stdout
    );
    assert!(du.stdout.starts_with("ID "), "{}", du.stdout);
    assert!(du.stdout.contains("Reclaimable:"), "{}", du.stdout);
    let verbose = k.run(&["du", "--verbose"]).ok().stdout;
    assert!(verbose.contains("Type:         source.local"), "{verbose}");
    assert!(verbose.contains("COPY --chmod=600 data /data"), "{verbose}");

    // Without -f and no terminal to answer, prune refuses and removes nothing.
    let refused = k.run(&["prune", "--keep-storage", "8MB"]).fails();
    assert!(
        refused.stderr.contains("-f (--force)"),
        "{}",
        refused.stderr
    );
    assert!(du_sb(&store) as f64 >= real * 0.99);

    let pruned = k.run(&["prune", "--keep-storage", "8MB", "-f"]).ok();
    let after = du_sb(&store);
    assert!(after < 8_800_000, "{after} bytes left:\n{}", pruned.stdout);
    let freed = total_line(&pruned.stdout);
    assert!(
        freed >= (size - after) as f64 * 0.9,
        "freed {freed} of {size}:\n{}",
        pruned.stdout
    );

    // The store still builds: the last context again, then a new one.
    let out = k.path("out");
    build_local(&k, &k.path("ctx2"), &out).ok();
    assert_eq!(
        std::fs::read(out.join("data")).unwrap(),
        noise(2, 5_000_000)
    );

    k.run(&["prune", "--all", "-f"]).ok();
    let empty = du_sb(&store);
    assert!(empty < 1_000_000, "prune --all left {empty} bytes");
    let out = k.path("out2");
    build_local(&k, &copy_context(&k, "ctx3", 3), &out).ok();
    assert_eq!(
        std::fs::read(out.join("data")).unwrap(),
        noise(3, 5_000_000)
    );
}

#[test]
fn each_build_collects_down_to_gckeepstorage_unless_gc_is_off() {
    let k = Kiln::new(&[]);
    let store = k.path("store");
    let config = k.write(
        "conf",
        &[("kiln.toml", "[worker]\ngckeepstorage = \"12MB\"\n")],
    );
    let config = config.join("kiln.toml");
    for seed in 0..4u64 {
        let ctx = copy_context(&k, &format!("ctx{seed}"), seed);
        k.run(&[
            "--config",
            config.to_str().unwrap(),
            "build",
            "--progress=plain",
            ctx.to_str().unwrap(),
        ])
        .ok();
        let size = du_sb(&store);
        // 12 MB in docker's units; the newest build (10 MB) stays.
        assert!(size <= 12 << 20, "after build {seed}: {size} bytes");
        assert!(size >= 10_000_000, "after build {seed}: {size} bytes");
    }
    // The newest build is still cached.
    let again = k
        .run(&[
            "--config",
            config.to_str().unwrap(),
            "build",
            "--progress=plain",
            k.path("ctx3").to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        again.step_state("COPY --chmod=600 data /data"),
        "CACHED",
        "{}",
        again.stderr
    );

    let off = k.write(
        "conf-off",
        &[(
            "kiln.toml",
            "[worker]\ngc = false\ngckeepstorage = \"12MB\"\n",
        )],
    );
    let off = off.join("kiln.toml");
    for seed in 4..6u64 {
        let ctx = copy_context(&k, &format!("ctx{seed}"), seed);
        k.run(&[
            "--config",
            off.to_str().unwrap(),
            "build",
            "--progress=plain",
            ctx.to_str().unwrap(),
        ])
        .ok();
    }
    let size = du_sb(&store);
    assert!(
        size > 25_000_000,
        "gc = false still collected: {size} bytes"
    );
}

#[test]
fn prune_while_a_build_runs_spares_everything_it_uses() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let store = k.path("store");
    let data = noise(7, 1_000_000);
    // C: something no running build uses, for the prune to remove. Built first, so that
    // building A separates it in time from B's start.
    let c = copy_context(&k, "c", 8);
    build_local(&k, &c, &k.path("out-c")).ok();
    // A: the base image and the COPY, cached; its RUN makes the FIFO the next build waits on.
    let a = k.write(
        "a",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\nCOPY data /data\n\
                 RUN --mount=type=cache,id=gate,target=/gate rm -f /gate/fifo && mkfifo /gate/fifo\n"
            ),
        )],
    );
    std::fs::write(a.join("data"), &data).unwrap();
    build_local(&k, &a, &k.path("out-a")).ok();

    // B: takes the base and the COPY from the cache, then waits in its RUN on the FIFO.
    let b = k.write(
        "b",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest\nCOPY data /data\n\
                 RUN --mount=type=cache,id=gate,target=/gate \
                 echo gate-$((40+2)) && cat /gate/fifo > /got && cp /data /copy\n"
            ),
        )],
    );
    std::fs::write(b.join("data"), &data).unwrap();
    let out_b = k.path("out-b");
    let dest_b = format!("type=local,dest={}", out_b.display());
    let mut build_b = k.spawn(
        &[],
        &[
            "build",
            "--progress=plain",
            "--output",
            &dest_b,
            b.to_str().unwrap(),
        ],
    );
    assert!(
        build_b.wait_for_line("gate-42", BOUND),
        "build B ended early:\n{}",
        build_b.seen.join("\n")
    );

    // The prune runs while B waits: it removes C (and A's RUN), nothing B holds.
    let pruned = k.run(&["prune", "-f"]).ok();
    assert!(
        total_line(&pruned.stdout) >= 9_000_000.0,
        "C's 10 MB were not freed:\n{}",
        pruned.stdout
    );
    let du = k.run(&["du", "--verbose"]).ok().stdout;
    assert!(du.contains("Reclaimable:  false"), "{du}");

    // Let B go on.
    let fifo = find_named(&store.join("cache-mounts"), "fifo").expect("the FIFO A made");
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(b"go\n").unwrap();
    drop(w);
    let (code, out) = build_b.finish(BOUND);
    assert!(code == 0, "build B failed after the prune:\n{out}");
    assert_eq!(std::fs::read_to_string(out_b.join("got")).unwrap(), "go\n");
    assert_eq!(std::fs::read(out_b.join("copy")).unwrap(), data);
    assert!(out_b.join("bin/busybox").is_file(), "base layers missing");

    // Once B is over, what it used is reclaimable like the rest.
    k.run(&["prune", "--all", "-f"]).ok();
    assert!(du_sb(&store) < 1_000_000);
}

/// The first entry named `name` under `dir`.
fn find_named(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir() {
            if let Some(found) = find_named(&p, name) {
                return Some(found);
            }
        }
    }
    None
}
