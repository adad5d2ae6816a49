//! BuildKit's git query-string refs in ADD (`repo.git?ref=&subdir=&checksum=`...), checked out
//! by the `git` plugin from a `git daemon` the test runs on 127.0.0.1, and `--add-host
//! NAME:host-gateway` seen by a RUN step. Needs Debian's `git` and `busybox-static`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_e2e::*;

#[test]
fn git_query_strings_select_ref_subdir_and_pin_the_commit() {
    let k = Kiln::new(&[]);
    let repos = k.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    sh(
        &repos,
        "git init -q -b main src && cd src
         echo one > a.txt && mkdir -p docs/api && echo guide > docs/api/g.txt
         git add -A && git commit -qm first && git tag -a v1.2 -m v1.2
         git checkout -qb feature && echo two > a.txt && git commit -qam second
         git checkout -q main && echo three > a.txt && git commit -qam third
         cd .. && git clone -q --bare src repo.git",
    );
    let first = sh(&repos, "git -C repo.git rev-parse 'v1.2^{commit}'");
    let second = sh(&repos, "git -C repo.git rev-parse feature");
    let daemon = GitDaemon::start(&repos);
    let repo = format!("{}/repo.git", daemon.url);
    let dockerfile = format!(
        "FROM scratch\n\
         ADD {repo}?ref=v1.2&subdir=docs&checksum={first} /docs/\n\
         ADD {repo}?branch=feature /feature/\n\
         ADD {repo}?tag=v1.2&keep-git-dir=true /kept/\n\
         ADD {repo}?subdir=docs/api#feature /api/\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.path("out");
    build_local_with(&k, &ctx, &out, &[]).ok();
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("docs/api/g.txt"), "guide\n");
    assert!(
        !out.join("docs/a.txt").exists(),
        "subdir= selects docs only"
    );
    assert_eq!(read("feature/a.txt"), "two\n");
    assert_eq!(read("kept/a.txt"), "one\n");
    assert!(
        out.join("kept/.git").is_dir(),
        "keep-git-dir=true keeps .git"
    );
    let kept = tool(
        "git",
        &[
            "-C",
            out.join("kept").to_str().unwrap(),
            "rev-parse",
            "HEAD",
        ],
    );
    assert_eq!(kept.trim(), first);
    assert_eq!(read("api/g.txt"), "guide\n");

    // mtime=commit: the files keep the commit's time through the copy into the stage.
    sh(
        &repos,
        "cd src && git checkout -qb old v1.2 && echo old > a.txt && \
         GIT_COMMITTER_DATE='2001-02-03T04:05:06Z' git commit -qam old && \
         git push -q ../repo.git old",
    );
    let ctx = k.write(
        "ctx-mtime",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {repo}?branch=old&mtime=commit /m/\nADD {repo}#old /c/\n"),
        )],
    );
    let out_m = k.path("out-mtime");
    build_local_with(&k, &ctx, &out_m, &[]).ok();
    use std::os::unix::fs::MetadataExt;
    let mtime = |p: &str| std::fs::metadata(out_m.join(p)).unwrap().mtime();
    assert_eq!(mtime("m/a.txt"), 981_173_106);
    assert_eq!(mtime("m/docs/api/g.txt"), 981_173_106);
    assert_ne!(
        mtime("c/a.txt"),
        981_173_106,
        "without mtime=commit: the checkout's time"
    );

    // A checksum the ref does not resolve to fails the build and names both commits.
    let ctx = k.write(
        "ctx-moved",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {repo}?ref=feature&checksum={first} /x/\n"),
        )],
    );
    let run = build_local_with(&k, &ctx, &k.path("out2"), &[]).fails();
    assert!(
        run.stderr
            .contains(&format!("expected commit {first}, got {second}")),
        "{}",
        run.stderr
    );

    // BuildKit's refusals come with the Dockerfile line.
    let ctx = k.write(
        "ctx-conflict",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {repo}?ref=main#feature /x/\n"),
        )],
    );
    let run = build_local_with(&k, &ctx, &k.path("out3"), &[]).fails();
    assert!(
        run.stderr.contains(r#"ref conflicts: "feature" vs "main""#),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Dockerfile:2"), "{}", run.stderr);
}

#[test]
fn add_host_gateway_is_the_hosts_loopback() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("busybox not found: install Debian's busybox-static (a static busybox)");
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\n\
             COPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox grep -E 'gw|host.docker.internal' /etc/hosts > /hosts\"]\n",
        )],
    );
    std::fs::copy(busybox, ctx.join("busybox")).unwrap();
    let out = k.path("out");
    build_local_with(
        &k,
        &ctx,
        &out,
        &[
            "--add-host",
            "host.docker.internal:host-gateway",
            "--add-host",
            "gw=host-gateway",
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hosts")).unwrap(),
        "127.0.0.1\thost.docker.internal\n127.0.0.1\tgw\n"
    );
}
