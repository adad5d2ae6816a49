//! A daemon's context mirrors are build cache of its store (issue 11, with issue 9's store that
//! keeps itself): `kiln du` on the daemon's root lists them as `source.local` records and its
//! total still agrees with `du -sb`; `kiln prune` removes the unused ones (the next remote
//! build sends its context again), never one a build holds. Needs the busybox fixture (`cargo
//! xtask test` builds it), `du` and `kill`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_e2e::serve::Daemon;
use kiln_e2e::{busybox_layout, tool, Kiln};

const PLUGINS: &[&str] = &["kiln-frontend-dockerfile", "kiln-exec"];

/// The test's daemon: on `<test dir>/run/kiln.sock`, with the store `daemon-root`.
fn start(k: &Kiln) -> Daemon {
    Daemon::unix(k, "run/kiln.sock", "daemon-root", &[])
}

/// `kiln --root <daemon root> ARGS` (a second process on the daemon's store).
fn on_store(daemon: &Daemon, k: &Kiln, args: &[&str]) -> kiln_e2e::Run {
    let root = daemon.root.display().to_string();
    let mut all = vec!["--root", &root];
    all.extend_from_slice(args);
    k.run(&all)
}

/// The daemon's context mirrors, sorted.
fn mirrors_of(daemon: &Daemon) -> Vec<PathBuf> {
    let dir = daemon.root.join("contexts");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn build(k: &Kiln, daemon: &Daemon, ctx: &Path) -> kiln_e2e::Run {
    let bb = format!("bb=oci-layout://{}", busybox_layout().display());
    k.run(&[
        "build",
        "--builder",
        &daemon.addr,
        "--progress=plain",
        "--build-context",
        &bb,
        "-t",
        "app:1",
        &ctx.display().to_string(),
    ])
    .ok()
}

fn context(k: &Kiln) -> PathBuf {
    let big = "x".repeat(200_000);
    k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM bb\nCOPY a.txt big.txt /\n"),
            ("a.txt", "alpha\n"),
            ("big.txt", &big),
        ],
    )
}

/// go-units' decimal size (`1.235MB`) back to bytes.
fn parse_size(text: &str) -> f64 {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or_else(|| panic!("no unit in {text:?}"));
    let (num, unit) = text.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other:?} in {text:?}"),
    };
    num.parse::<f64>().expect("a number") * scale
}

fn total(du_stdout: &str) -> f64 {
    let line = du_stdout
        .lines()
        .find(|l| l.starts_with("Total:"))
        .unwrap_or_else(|| panic!("no Total: line in\n{du_stdout}"));
    parse_size(line.trim_start_matches("Total:"))
}

/// The `kiln du --verbose` record of `id`.
fn record<'a>(verbose: &'a str, id: &str) -> &'a str {
    verbose
        .split("\n\n")
        .find(|r| r.starts_with(&format!("ID:           {id}\n")))
        .unwrap_or_else(|| panic!("no record {id} in\n{verbose}"))
}

fn id(mirror: &Path) -> String {
    mirror
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn du_lists_the_daemons_mirrors_and_prune_removes_them_so_the_next_build_resends() {
    let k = Kiln::new(PLUGINS);
    let ctx = context(&k);
    let mut daemon = start(&k);
    build(&k, &daemon, &ctx);
    let first = daemon.line("build 1: context synced");
    let sent = first
        .split("synced: ")
        .nth(1)
        .and_then(|s| s.split(" files").next())
        .expect("a file count")
        .to_owned();
    // The main context and the `bb` layout.
    let mirrors = mirrors_of(&daemon);
    assert_eq!(mirrors.len(), 2, "{mirrors:?}");

    let verbose = on_store(&daemon, &k, &["du", "--verbose"]).ok().stdout;
    let mut mirrored = 0;
    for m in &mirrors {
        let r = record(&verbose, &id(m));
        assert!(r.contains("Type:         source.local"), "{r}");
        assert!(r.contains("Reclaimable:  true"), "{r}");
        mirrored += parse_size(
            r.lines()
                .find_map(|l| l.strip_prefix("Size:"))
                .expect("a Size: line"),
        ) as u64;
    }
    assert!(
        verbose.contains("local source for the main context of a remote build"),
        "{verbose}"
    );
    // The big file alone is 200 kB of the main context's mirror.
    assert!(mirrored > 200_000, "{mirrored}\n{verbose}");
    let table = on_store(&daemon, &k, &["du"]).ok().stdout;
    for m in &mirrors {
        assert!(table.contains(&id(m)), "{table}");
    }
    // Mirrors live inside the store: the total still agrees with `du -sb` within 5 %.
    let on_disk: f64 = tool("du", &["-sb", &daemon.root.display().to_string()])
        .split_whitespace()
        .next()
        .expect("du's figure")
        .parse()
        .expect("a number");
    let listed = total(&table);
    assert!(
        (listed - on_disk).abs() <= on_disk * 0.05,
        "kiln du says {listed}, du -sb {on_disk}\n{table}"
    );
    assert_eq!(total(&verbose), listed);

    // No build runs: prune --all removes both mirrors and says so.
    let pruned = on_store(&daemon, &k, &["prune", "--all", "-f"]).ok().stdout;
    for m in &mirrors {
        assert!(pruned.contains(&id(m)), "{pruned}");
    }
    assert!(mirrors_of(&daemon).is_empty(), "{:?}", mirrors_of(&daemon));
    let after = on_store(&daemon, &k, &["du", "--verbose"]).ok().stdout;
    assert!(!after.contains("source.local"), "{after}");

    // The next remote build sends the whole context again.
    build(&k, &daemon, &ctx);
    let second = daemon.line("build 2: context synced");
    assert!(
        second.contains(&format!("synced: {sent} files,")),
        "expected {sent} files resent: {second} (first: {first})"
    );
}

#[test]
fn a_mirror_held_by_a_build_is_never_removed_however_old() {
    let k = Kiln::new(PLUGINS);
    let ctx = context(&k);
    let mut daemon = start(&k);
    build(&k, &daemon, &ctx);
    daemon.line("build 1: context synced");
    let mirrors = mirrors_of(&daemon);
    assert_eq!(mirrors.len(), 2, "{mirrors:?}");
    // Both last used three days ago; the first is held as a running session holds it.
    let three_days_ago = SystemTime::now() - Duration::from_secs(3 * 86400);
    for m in &mirrors {
        let stamp = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("use"))
            .expect("the mirror's use stamp");
        stamp.set_modified(three_days_ago).unwrap();
    }
    let held = std::fs::File::open(mirrors[0].join("use")).unwrap();
    held.lock_shared().unwrap();

    let verbose = on_store(&daemon, &k, &["du", "--verbose"]).ok().stdout;
    let r = record(&verbose, &id(&mirrors[0]));
    assert!(r.contains("Reclaimable:  false"), "{r}");
    let r = record(&verbose, &id(&mirrors[1]));
    assert!(r.contains("Reclaimable:  true"), "{r}");
    assert!(r.contains("Last used:    3 days ago"), "{r}");

    let pruned = on_store(
        &daemon,
        &k,
        &["prune", "--all", "-f", "--filter", "until=48h"],
    )
    .ok()
    .stdout;
    assert!(!pruned.contains(&id(&mirrors[0])), "{pruned}");
    assert!(pruned.contains(&id(&mirrors[1])), "{pruned}");
    assert_eq!(mirrors_of(&daemon), vec![mirrors[0].clone()]);

    // Released: it goes too.
    drop(held);
    on_store(&daemon, &k, &["prune", "--all", "-f"]).ok();
    assert!(mirrors_of(&daemon).is_empty(), "{:?}", mirrors_of(&daemon));
}

#[test]
fn prune_until_keeps_recently_used_mirrors() {
    let k = Kiln::new(PLUGINS);
    let ctx = context(&k);
    let mut daemon = start(&k);
    build(&k, &daemon, &ctx);
    daemon.line("build 1: context synced");
    let before = mirrors_of(&daemon);
    assert_eq!(before.len(), 2, "{before:?}");
    on_store(&daemon, &k, &["prune", "-f", "--filter", "until=1h"]).ok();
    assert_eq!(mirrors_of(&daemon), before);
}

/// A line with the `bb` layout's path taken out: the daemon names its own mirror of it.
fn without_layout_path(line: &str) -> String {
    match line.split_once("oci-layout://") {
        Some((head, tail)) => {
            let rest = tail.split_once('@').map_or("", |(_, r)| r);
            format!("{head}oci-layout://LAYOUT@{rest}")
        }
        None => line.to_owned(),
    }
}

/// The `--explain-cache` lines a build printed (its header, then one per step, with the step
/// numbers), the layout's path taken out.
fn explained(stderr: &str) -> Vec<String> {
    let mut lines = stderr.lines();
    let header = lines
        .find(|l| l.starts_with("--explain-cache:"))
        .unwrap_or_else(|| panic!("no --explain-cache output:\n{stderr}"));
    let mut out = vec![header.to_owned()];
    out.extend(
        lines
            .take_while(|l| l.starts_with('#'))
            .map(without_layout_path),
    );
    out
}

#[test]
fn explain_cache_through_the_daemon_names_the_edited_file_as_a_local_build_does() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\nRUN cat /a.txt /b.txt > /both\n",
            ),
            ("a.txt", "alpha\n"),
            ("b.txt", "beta\n"),
        ],
    );
    let daemon = start(&k);
    let bb = format!("bb=oci-layout://{}", busybox_layout().display());
    let c = ctx.display().to_string();
    let run = |builder: Option<&str>| {
        let mut args = vec!["build"];
        if let Some(b) = builder {
            args.extend(["--builder", b]);
        }
        args.extend([
            "--progress=plain",
            "--explain-cache",
            "--build-context",
            &bb,
            &c,
        ]);
        k.run(&args).ok()
    };
    let local_first = run(None);
    let remote_first = run(Some(&daemon.addr));
    assert_eq!(
        unnumbered(&remote_first.stderr),
        unnumbered(&local_first.stderr),
        "{}",
        remote_first.stderr
    );
    assert!(
        explained(&remote_first.stderr)[1..]
            .iter()
            .all(|l| l.ends_with(": no earlier build")),
        "{}",
        remote_first.stderr
    );
    std::fs::write(k.path("ctx/b.txt"), "BETA!\n").unwrap();
    let local = run(None);
    let remote = run(Some(&daemon.addr));
    // The edited file, under the number the client's progress gave the step.
    let copy_b = number(&remote.stderr, "COPY b.txt");
    let lines = explained(&remote.stderr);
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("{copy_b} [2/3] COPY b.txt /b.txt: file changed: b.txt")),
        "{}",
        remote.stderr
    );
    assert_eq!(
        unnumbered(&remote.stderr),
        unnumbered(&local.stderr),
        "{}",
        remote.stderr
    );
}

/// The explanation lines without their step numbers, sorted: steps that start together are
/// numbered in the order they happen to start.
fn unnumbered(stderr: &str) -> Vec<String> {
    let mut lines: Vec<String> = explained(stderr)
        .into_iter()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) => rest
                .split_once(' ')
                .map_or(l.clone(), |(_, r)| r.to_owned()),
            None => l,
        })
        .collect();
    lines.sort();
    lines
}

/// The progress number (`#N`) of the first step whose name contains `needle`.
fn number(stderr: &str, needle: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            let (n, name) = l.strip_prefix('#')?.split_once(' ')?;
            name.contains(needle).then(|| format!("#{n}"))
        })
        .unwrap_or_else(|| panic!("no step {needle:?} in:\n{stderr}"))
}
