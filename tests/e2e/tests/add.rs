//! ADD end to end: local archives extracted by content, URLs fetched by the `http` plugin from a
//! server the test runs on 127.0.0.1, git repositories checked out by the `git` plugin from a
//! `git daemon` the test runs on 127.0.0.1. Needs Debian's `git`, `bzip2` and `xz-utils`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_e2e::*;

/// `payload/` (a.txt, dir/b.txt) packed as a tar in `dir/<name>` with `tar` flag `flag`.
fn archive(dir: &Path, name: &str, flag: &str) {
    sh(
        dir,
        &format!(
            "mkdir -p /tmp/kiln-add-$$ && cd /tmp/kiln-add-$$ && mkdir -p dir && \
             echo alpha > a.txt && echo beta > dir/b.txt && \
             tar -c{flag}f {out} a.txt dir && cd / && rm -rf /tmp/kiln-add-$$",
            out = dir.join(name).display()
        ),
    );
}

#[test]
fn local_archives_are_extracted_by_content() {
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\n\
                 ADD plain.tar /plain\n\
                 ADD app.tar.gz /gz/\n\
                 ADD app.tar.bz2 /bz2/\n\
                 ADD app.tar.xz /xz/\n\
                 ADD disguised.dat /disguised/\n\
                 ADD fake.tar.gz /fake/\n\
                 ADD --unpack=false app.tar.gz /kept/\n\
                 ADD --chown=1234:5678 app.tar.gz /owned/\n\
                 COPY app.tar.gz /copied/\n",
            ),
            ("fake.tar.gz", "not an archive\n"),
        ],
    );
    archive(&ctx, "plain.tar", "");
    archive(&ctx, "app.tar.gz", "z");
    archive(&ctx, "app.tar.bz2", "j");
    archive(&ctx, "app.tar.xz", "J");
    archive(&ctx, "disguised.dat", "z");
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();
    for d in ["plain", "gz", "bz2", "xz", "disguised", "owned"] {
        assert_eq!(
            std::fs::read_to_string(out.join(d).join("a.txt")).unwrap(),
            "alpha\n",
            "{d}"
        );
        assert_eq!(
            std::fs::read_to_string(out.join(d).join("dir/b.txt")).unwrap(),
            "beta\n",
            "{d}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("fake/fake.tar.gz")).unwrap(),
        "not an archive\n"
    );
    assert!(out.join("kept/app.tar.gz").is_file());
    assert!(out.join("copied/app.tar.gz").is_file());
    let md = std::fs::metadata(out.join("owned/dir/b.txt")).unwrap();
    assert_root();
    assert_eq!((md.uid(), md.gid()), (1234, 5678), "ADD --chown=1234:5678");
}

#[test]
fn hostile_archive_fails_without_writing_outside() {
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nADD evil.tar /dest/\n")],
    );
    // A tar whose entry climbs out with `..`.
    let bytes = tar_with_raw_name(b"../../../../../../tmp/kiln-add-escaped");
    std::fs::write(ctx.join("evil.tar"), bytes).unwrap();
    let _ = std::fs::remove_file("/tmp/kiln-add-escaped");
    let run = build_local(&k, &ctx, &k.path("out")).fails();
    assert!(
        run.stderr.contains("evil.tar") && run.stderr.contains("climbs out"),
        "{}",
        run.stderr
    );
    assert!(!Path::new("/tmp/kiln-add-escaped").exists());
}

/// The `--chown` assertions need kiln to run as root, as builds do (only root can give files
/// another owner): fail saying so rather than skip them.
fn assert_root() {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .expect("stat /proc/self");
    assert_eq!(
        uid, 0,
        "ADD --chown can only be checked as root (uid {uid} here): run the e2e tests as root, \
         as cargo xtask test does in CI"
    );
}

/// A tiny HTTP/1.1 server on 127.0.0.1: `/files/hello.txt` (with Last-Modified), `/app.tar.gz`,
/// `/old` (redirects to hello.txt), anything else 404. Stops after `max` connections or when the
/// test ends (the thread is detached and the port closes with the process).
fn serve(dir: PathBuf, max: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming().take(max) {
            let Ok(s) = stream else { continue };
            let _ = answer(s, &dir);
        }
    });
    format!("http://{addr}")
}

fn answer(mut s: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, extra, body) = match path {
        "/files/hello.txt" => (
            "200 OK",
            "Last-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n",
            std::fs::read(dir.join("hello.txt"))?,
        ),
        "/app.tar.gz" => ("200 OK", "", std::fs::read(dir.join("app.tar.gz"))?),
        "/old" => (
            "301 Moved Permanently",
            "Location: /files/hello.txt\r\n",
            Vec::new(),
        ),
        _ => ("404 Not Found", "", b"not found".to_vec()),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    s.write_all(&body)
}

fn sha256_of(p: &Path) -> String {
    let out = tool("sha256sum", &[p.to_str().unwrap()]);
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

#[test]
fn urls_are_downloaded_pinned_and_not_extracted() {
    let k = Kiln::new(&[]);
    let files = k.write("www", &[("hello.txt", "hello over http\n")]);
    archive(&files, "app.tar.gz", "z");
    let base = serve(files.clone(), 100);
    let sum = sha256_of(&files.join("hello.txt"));
    let dockerfile = format!(
        "FROM scratch\n\
         ADD {base}/files/hello.txt /hello.txt\n\
         ADD --chmod=755 --chown=10:20 {base}/files/hello.txt /bin/\n\
         ADD --checksum={sum} {base}/old /pinned\n\
         ADD {base}/app.tar.gz /dl/\n\
         ADD --unpack=true {base}/app.tar.gz /unpacked/\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();

    let hello = out.join("hello.txt");
    assert_eq!(
        std::fs::read_to_string(&hello).unwrap(),
        "hello over http\n"
    );
    let md = std::fs::metadata(&hello).unwrap();
    assert_eq!(md.mtime(), 1_445_412_480, "mtime from Last-Modified");
    assert_eq!(md.mode() & 0o7777, 0o600, "BuildKit's mode for downloads");
    let md = std::fs::metadata(out.join("bin/hello.txt")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_root();
    assert_eq!((md.uid(), md.gid()), (10, 20), "ADD --chown=10:20");
    // A redirect is followed; the name is the one of the URL asked for.
    assert_eq!(
        std::fs::read_to_string(out.join("pinned")).unwrap(),
        "hello over http\n"
    );
    // A remote archive is a file unless --unpack=true.
    assert!(out.join("dl/app.tar.gz").is_file());
    assert!(!out.join("dl/a.txt").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("unpacked/dir/b.txt")).unwrap(),
        "beta\n"
    );

    // A wrong checksum fails and says which URL and which digests.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let ctx = k.write(
        "ctx-sum",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD --checksum={wrong} {base}/files/hello.txt /x\n"),
        )],
    );
    let run = build_local(&k, &ctx, &k.path("out2")).fails();
    assert!(
        run.stderr.contains(&format!(
            "checksum mismatch for {base}/files/hello.txt: expected {wrong}, got {sum}"
        )),
        "{}",
        run.stderr
    );

    // A 404 fails naming the URL.
    let ctx = k.write(
        "ctx-404",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {base}/missing.txt /x\n"),
        )],
    );
    let run = build_local(&k, &ctx, &k.path("out3")).fails();
    assert!(
        run.stderr.contains(&format!(
            "failed to download {base}/missing.txt: server answered 404 Not Found"
        )),
        "{}",
        run.stderr
    );
}

#[test]
fn git_sources_select_ref_tag_and_subdir() {
    let k = Kiln::new(&[]);
    let repos = k.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    sh(
        &repos,
        "git init -q -b main src && cd src
         echo one > a.txt && mkdir -p sub/deep && echo bee > sub/deep/b.txt
         git add -A && git commit -qm first && git tag -a v1 -m v1
         git checkout -qb feature && echo two > a.txt && git commit -qam second
         git checkout -q main && echo three > a.txt && git commit -qam third
         cd .. && git clone -q --bare src repo.git",
    );
    let daemon = GitDaemon::start(&repos);
    let repo = format!("{}/repo.git", daemon.url);
    let dockerfile = format!(
        "FROM scratch\n\
         ADD {repo} /head/\n\
         ADD {repo}#feature /feature\n\
         ADD {repo}#v1:sub /tag-sub/\n\
         ADD --keep-git-dir=true {repo}#feature /kept/\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.path("out");
    build_local(&k, &ctx, &out).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("head/a.txt")).unwrap(),
        "three\n"
    );
    assert!(!out.join("head/.git").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("feature/a.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tag-sub/deep/b.txt")).unwrap(),
        "bee\n"
    );
    assert!(!out.join("tag-sub/a.txt").exists());
    assert!(out.join("kept/.git").is_dir());
    let head = tool(
        "git",
        &[
            "-C",
            out.join("kept").to_str().unwrap(),
            "log",
            "-1",
            "--format=%s",
        ],
    );
    assert_eq!(head.trim(), "second");

    let ctx = k.write(
        "ctx-missing",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {repo}#nope /x/\n"),
        )],
    );
    let run = build_local(&k, &ctx, &k.path("out2")).fails();
    assert!(
        run.stderr
            .contains(&format!("git ref \"nope\" not found in {repo}")),
        "{}",
        run.stderr
    );
}

/// Unpinned remote sources are revalidated on every build, as in BuildKit: a changed file
/// behind a URL and a moved branch are fetched again, an unchanged one stays cached.
#[test]
fn unpinned_urls_and_branches_are_revalidated() {
    let k = Kiln::new(&[]);
    let files = k.write("www", &[("hello.txt", "v1\n")]);
    archive(&files, "app.tar.gz", "z");
    let base = serve(files.clone(), 100);
    let repos = k.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    sh(
        &repos,
        "git init -q -b main src && cd src && echo one > a.txt && git add -A && git commit -qm first
         cd .. && git clone -q --bare src repo.git",
    );
    let daemon = GitDaemon::start(&repos);
    let repo = format!("{}/repo.git", daemon.url);
    let dockerfile = format!(
        "FROM scratch\nADD {base}/files/hello.txt /hello.txt\nADD {base}/app.tar.gz /app.tar.gz\nADD {repo}#main /src/\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    build_local(&k, &ctx, &k.path("out1")).ok();

    // Nothing moved: every fetch is a cache hit.
    let again = build_local(&k, &ctx, &k.path("out2")).ok();
    let fetched: Vec<_> = again
        .steps()
        .into_iter()
        .filter(|(n, s)| n.contains("ADD") && s == "DONE")
        .collect();
    assert!(
        fetched.is_empty(),
        "unchanged sources fetched again: {fetched:?}\n{}",
        again.stderr
    );

    // The file behind the URL changes (its length with it) and the branch moves.
    std::fs::write(files.join("hello.txt"), "version two\n").unwrap();
    sh(
        &repos,
        "cd src && echo two > a.txt && git commit -qam second && git push -q ../repo.git main",
    );
    let out = k.path("out3");
    build_local(&k, &ctx, &out).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "version two\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("src/a.txt")).unwrap(),
        "two\n"
    );
}
