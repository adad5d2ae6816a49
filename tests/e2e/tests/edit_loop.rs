//! The edit-one-file loop: the context layer is built from the last one (unchanged files hard
//! linked), a COPY of it links too, and none of that may show: after every kind of change the
//! image equals a `--no-cache` build's in a fresh store, `--chown` still owns the copies, and
//! a RUN that writes a copied file never writes through to the shared inode (overlay copy-up,
//! and the copy snapshotter's copies).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_e2e::*;

/// Builds `ctx` into an OCI tarball `name`.tar; returns the image digest.
fn image(k: &Kiln, ctx: &Path, name: &str, extra: &[&str]) -> String {
    let dest = format!("type=oci,dest={}", k.path(&format!("{name}.tar")).display());
    let mut args = vec!["--output", &dest];
    args.extend_from_slice(extra);
    build_bb(k, &[], ctx, &args).ok().digest()
}

#[test]
fn incremental_images_equal_no_cache_ones_after_each_kind_of_change() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /app\n"),
            ("a", "aa"),
            ("d/b", "bb"),
            ("d/e/c", "cc"),
            ("gone", "g"),
            ("big", &"x".repeat(300_000)),
        ],
    );
    std::os::unix::fs::symlink("a", ctx.join("l")).unwrap();
    image(&k, &ctx, "first", &[]);
    type Change = fn(&Path);
    let changes: [(&str, Change); 5] = [
        ("edit", |c| fs::write(c.join("d/b"), "edited").unwrap()),
        ("delete", |c| fs::remove_file(c.join("gone")).unwrap()),
        ("add", |c| fs::write(c.join("d/new"), "new").unwrap()),
        ("chmod", |c| {
            fs::set_permissions(c.join("d/e/c"), fs::Permissions::from_mode(0o600)).unwrap()
        }),
        ("relink", |c| {
            fs::remove_file(c.join("l")).unwrap();
            std::os::unix::fs::symlink("d/b", c.join("l")).unwrap();
        }),
    ];
    for (what, change) in changes {
        change(&ctx);
        let incremental = image(&k, &ctx, what, &[]);
        // A second machine: a fresh store, nothing cached.
        let fresh = Kiln::new(&["kiln-frontend-dockerfile"]);
        let scratch = image(&fresh, &ctx, what, &["--no-cache"]);
        assert_eq!(incremental, scratch, "after the {what}");
        let (a, b) = (
            fs::read(k.path(&format!("{what}.tar"))).unwrap(),
            fs::read(fresh.path(&format!("{what}.tar"))).unwrap(),
        );
        assert!(a == b, "after the {what}: the OCI tarballs differ");
    }
    // What the last image holds is the context as it is now.
    let bundle = k.unpack(&k.path("relink.tar"), "last", "latest");
    let app = bundle.join("rootfs/app");
    assert_eq!(fs::read_to_string(app.join("d/b")).unwrap(), "edited");
    assert_eq!(fs::read_to_string(app.join("d/new")).unwrap(), "new");
    assert!(!app.join("gone").exists());
    assert_eq!(fs::read_link(app.join("l")).unwrap(), Path::new("d/b"));
    let mode = fs::metadata(app.join("d/e/c"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn copy_with_chown_after_an_edit_owns_every_file() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nCOPY --chown=1234:5678 src /app\nRUN stat -c '%n %u:%g' /app/* | sort > /owners\n",
            ),
            ("src/a", "a"),
            ("src/b", "b"),
        ],
    );
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    build_bb(&k, &[], &ctx, &["--output", &dest]).ok();
    fs::write(ctx.join("src/b"), "edited").unwrap();
    fs::remove_dir_all(&out).unwrap();
    build_bb(&k, &[], &ctx, &["--output", &dest]).ok();
    assert_eq!(
        fs::read_to_string(out.join("owners")).unwrap(),
        "/app/a 1234:5678\n/app/b 1234:5678\n"
    );
    assert_eq!(fs::read_to_string(out.join("app/b")).unwrap(), "edited");
}

/// A RUN appends to a copied file; another build of the same COPY, and the next build after an
/// edit, must see the file as the context has it.
fn run_writes_never_reach_shared_files(snapshotter: &str) {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let env = [("KILN_SNAPSHOTTER", snapshotter)];
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nCOPY . /app\nRUN echo x >> /app/f && cat /app/f > /seen\n",
            ),
            (
                "Reader.Dockerfile",
                "FROM bb\nCOPY . /app\nRUN cat /app/f > /seen\n",
            ),
            ("f", "orig\n"),
            ("other", "1"),
        ],
    );
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let writer = ctx.join("Dockerfile").display().to_string();
    let reader = ctx.join("Reader.Dockerfile").display().to_string();
    let seen = |file: &str, args: &[&str]| {
        let _ = fs::remove_dir_all(&out);
        let mut a = vec!["--output", &dest, "-f", file];
        a.extend_from_slice(args);
        build_bb(&k, &env, &ctx, &a).ok();
        fs::read_to_string(out.join("seen")).unwrap()
    };
    assert_eq!(seen(&writer, &[]), "orig\nx\n", "{snapshotter}");
    // The same context and COPY (from the cache), read by another RUN.
    assert_eq!(seen(&reader, &[]), "orig\n", "{snapshotter}");
    // Another file edited: the context and COPY layers are made again from the old ones.
    fs::write(ctx.join("other"), "2").unwrap();
    assert_eq!(seen(&writer, &[]), "orig\nx\n", "{snapshotter}");
    assert_eq!(seen(&reader, &[]), "orig\n", "{snapshotter}");
    assert_eq!(fs::read_to_string(ctx.join("f")).unwrap(), "orig\n");
    // Every layer holding `app/f` or `f` from the context still holds the context's bytes,
    // except the RUN's own.
    let layers = k.path("store/layers");
    let mut checked = 0;
    for e in fs::read_dir(&layers).unwrap() {
        let dir = e.unwrap().path().join("fs");
        for p in [dir.join("f"), dir.join("app/f")] {
            if let Ok(text) = fs::read_to_string(&p) {
                if !dir.join("seen").exists() {
                    assert_eq!(text, "orig\n", "{}", p.display());
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 4, "only {checked} layers hold the file");
}

#[test]
fn a_run_writing_a_copied_file_leaves_the_shared_inode_alone_with_overlay() {
    run_writes_never_reach_shared_files("overlay");
}

#[test]
fn a_run_writing_a_copied_file_leaves_the_shared_inode_alone_with_copies() {
    run_writes_never_reach_shared_files("copy");
}

#[test]
fn du_counts_shared_files_once_and_gc_of_one_layer_keeps_the_other() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let store = k.path("store");
    let noise: String = (0..2_000_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /app\n"),
            ("big", &noise),
            ("small", "1"),
        ],
    );
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();
    fs::write(ctx.join("small"), "2").unwrap();
    build_local(&k, &ctx, &out).ok();
    // Two context layers and two COPY layers, one `big` inode among them.
    let du_sb = || -> f64 {
        tool("du", &["-sb", store.to_str().unwrap()])
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let real = du_sb();
    assert!(real < 3_500_000.0, "big is stored more than once: {real}");
    let total = |stdout: &str| -> f64 {
        let line = stdout.lines().find(|l| l.starts_with("Total:")).unwrap();
        let v = line.split_whitespace().nth(1).unwrap();
        let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap();
        let scale = match &v[split..] {
            "B" => 1e0,
            "kB" => 1e3,
            "MB" => 1e6,
            other => panic!("unit {other}"),
        };
        v[..split].parse::<f64>().unwrap() * scale
    };
    let du = k.run(&["du"]).ok();
    assert!(
        (total(&du.stdout) - real).abs() <= real * 0.05,
        "kiln du {} vs du -sb {real}:\n{}",
        total(&du.stdout),
        du.stdout
    );
    // `big` counts half for each build: pruning to 1.5 MB removes the older build's layers
    // (least recently used first), and the newer ones keep `big` whole.
    k.run(&["prune", "--keep-storage", "1.5MB", "-f"]).ok();
    let again = build_local(&k, &ctx, &out).ok();
    assert_eq!(
        again.step_state("COPY . /app"),
        "CACHED",
        "{}",
        again.stderr
    );
    assert_eq!(fs::read_to_string(out.join("app/big")).unwrap(), noise);
    let after = du_sb();
    let du = k.run(&["du"]).ok();
    assert!(
        (total(&du.stdout) - after).abs() <= after * 0.05,
        "after prune: kiln du {} vs du -sb {after}:\n{}",
        total(&du.stdout),
        du.stdout
    );
}
