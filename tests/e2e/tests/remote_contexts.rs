//! Remote build contexts, as buildx takes them: `kiln build <git url>` (fetched by the `git`
//! plugin from a `git daemon` the test runs on 127.0.0.1), `kiln build <http url>` (a tarball or
//! a Dockerfile, fetched by the `http` plugin from a loopback server), `kiln build -` (a tar or a
//! Dockerfile on stdin), and `--build-context NAME=<git url|http url>`. Needs Debian's `git` and
//! `tar`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;

/// A bare repository `repos/repo.git`: `main` has `app/hello.txt` = "main"; branch `v2` has
/// `app/hello.txt` = "v2", an ignored `app/secret.txt`, `app/other.Dockerfile` and `top.txt`
/// outside `app`. Both `app/Dockerfile`s copy the whole context to `/ctx/`.
fn repo(k: &Kiln) -> (GitDaemon, String) {
    let repos = k.path("repos");
    std::fs::create_dir_all(&repos).unwrap();
    sh(
        &repos,
        "git init -q -b main src && cd src
         mkdir app && echo main > app/hello.txt
         printf 'FROM scratch\\nCOPY . /ctx/\\n' > app/Dockerfile
         git add -A && git commit -qm main
         git checkout -qb v2
         echo v2 > app/hello.txt && echo secret > app/secret.txt && echo top > top.txt
         printf 'secret.txt\\n' > app/.dockerignore
         printf 'FROM scratch\\nCOPY hello.txt /other/\\n' > app/other.Dockerfile
         git add -A && git commit -qm v2 && git checkout -q main
         cd .. && git clone -q --bare src repo.git",
    );
    let daemon = GitDaemon::start(&repos);
    let url = format!("{}/repo.git", daemon.url);
    (daemon, url)
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn build_url(k: &Kiln, url: &str, out: &Path, extra: &[&str]) -> Run {
    let dest = format!("type=local,dest={}", out.display());
    let mut args = vec!["build", "--progress=plain", "--output", &dest];
    args.extend_from_slice(extra);
    args.push(url);
    k.run(&args)
}

#[test]
fn git_url_context_builds_the_ref_and_subdir() {
    let k = Kiln::new(&[]);
    let (_daemon, repo) = repo(&k);

    let out = k.path("out");
    let url = format!("{repo}#v2:app");
    let r = build_url(&k, &url, &out, &[]).ok();
    assert!(
        r.stderr.contains(&format!("load git source {url}")),
        "{}",
        r.stderr
    );
    assert_eq!(read(&out, "ctx/hello.txt"), "v2\n");
    assert!(out.join("ctx/Dockerfile").exists());
    assert!(
        !out.join("ctx/secret.txt").exists(),
        "the context's .dockerignore applies"
    );
    assert!(
        !out.join("ctx/top.txt").exists(),
        "only the subdir is the context"
    );
    assert!(!out.join("ctx/.git").exists(), ".git is dropped");

    // The query-string form, and -f naming a file inside the remote context.
    let out = k.path("out-query");
    build_url(
        &k,
        &format!("{repo}?ref=v2&subdir=app"),
        &out,
        &["-f", "other.Dockerfile"],
    )
    .ok();
    assert_eq!(read(&out, "other/hello.txt"), "v2\n");

    // `-f -`: the Dockerfile from stdin, the context from the URL; an absolute -f is local.
    let out = k.path("out-stdin-df");
    let dest = format!("type=local,dest={}", out.display());
    k.run_stdin(
        b"FROM scratch\nCOPY hello.txt /stdin/\n",
        &["build", "--progress=plain", "-o", &dest, "-f", "-", &url],
    )
    .ok();
    assert_eq!(read(&out, "stdin/hello.txt"), "v2\n");
    let local_df = k.write(
        "local",
        &[("Local.df", "FROM scratch\nCOPY hello.txt /local/\n")],
    );
    let local_df = local_df.join("Local.df").display().to_string();
    let out = k.path("out-abs-df");
    build_url(&k, &url, &out, &["-f", &local_df]).ok();
    assert_eq!(read(&out, "local/hello.txt"), "v2\n");

    // No ref: the remote's HEAD.
    let out = k.path("out-head");
    build_url(&k, &format!("{repo}#:app"), &out, &[]).ok();
    assert_eq!(read(&out, "ctx/hello.txt"), "main\n");

    // BuildKit's BUILDKIT_CONTEXT_KEEP_GIT_DIR keeps .git (of a whole-tree checkout).
    let out = k.path("out-git");
    build_url(
        &k,
        &format!("{repo}#v2"),
        &out,
        &[
            "-f",
            "app/Dockerfile",
            "--build-arg",
            "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
        ],
    )
    .ok();
    assert_eq!(
        read(&out, "ctx/top.txt"),
        "top
"
    );
    assert!(
        out.join("ctx/.git").is_dir(),
        "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 keeps .git"
    );

    // The fetched context is scratch data: nothing is left in the store's tmp/.
    let tmp: Vec<PathBuf> = std::fs::read_dir(k.path("store/tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("remote-context"))
        .collect();
    assert!(tmp.is_empty(), "left behind: {tmp:?}");
}

#[test]
fn git_build_context_serves_copy_from() {
    let k = Kiln::new(&[]);
    let (_daemon, repo) = repo(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=src hello.txt /got.txt\n",
        )],
    );
    let out = k.path("out");
    let named = format!("src={repo}#v2:app");
    build_local_with(&k, &ctx, &out, &["--build-context", &named]).ok();
    assert_eq!(read(&out, "got.txt"), "v2\n");
}

/// `www/ctx.tar.gz`: a Dockerfile copying the context to `/ctx/`, `a.txt`, and `b.txt` that
/// the archive's `.dockerignore` leaves out; `www/Dockerfile`: a Dockerfile copying `f.txt` of
/// the named context `extra`. Returns the server's URL.
fn http_site(k: &Kiln) -> String {
    k.write(
        "tarsrc",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            ("a.txt", "from the tarball\n"),
            ("b.txt", "ignored\n"),
            (".dockerignore", "b.txt\n"),
        ],
    );
    let www = k.write(
        "www",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=extra f.txt /f.txt\n",
        )],
    );
    sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    serve_files(&www)
}

#[test]
fn http_tarball_and_dockerfile_contexts() {
    let k = Kiln::new(&[]);
    let server = http_site(&k);

    let out = k.path("out");
    build_url(&k, &format!("{server}/ctx.tar.gz"), &out, &[]).ok();
    assert_eq!(read(&out, "ctx/a.txt"), "from the tarball\n");
    assert!(!out.join("ctx/b.txt").exists(), ".dockerignore applies");

    // A body that is no archive is the Dockerfile, with an empty context.
    let extra = k.write("extra", &[("f.txt", "from the named context\n")]);
    let out = k.path("out-text");
    let named = format!("extra={}", extra.display());
    build_url(
        &k,
        &format!("{server}/Dockerfile"),
        &out,
        &["--build-context", &named],
    )
    .ok();
    assert_eq!(read(&out, "f.txt"), "from the named context\n");

    // A named http context is the downloaded file, named `context`, as in BuildKit.
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=dl /context /ctx.tar.gz\n",
        )],
    );
    let out = k.path("out-named");
    let named = format!("dl={server}/ctx.tar.gz");
    build_local_with(&k, &ctx, &out, &["--build-context", &named]).ok();
    assert_eq!(
        std::fs::read(out.join("ctx.tar.gz")).unwrap(),
        std::fs::read(k.path("www/ctx.tar.gz")).unwrap()
    );
}

#[test]
fn stdin_tar_and_stdin_dockerfile() {
    let k = Kiln::new(&[]);
    k.write(
        "tarsrc",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            ("sub/a.txt", "from stdin\n"),
        ],
    );
    sh(k.dir.path(), "tar -cf ctx.tar -C tarsrc .");
    let tar = std::fs::read(k.path("ctx.tar")).unwrap();
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    k.run_stdin(&tar, &["build", "--progress=plain", "-o", &dest, "-"])
        .ok();
    assert_eq!(read(&out, "ctx/sub/a.txt"), "from stdin\n");

    // Compressed, with -f naming a file inside the archive.
    sh(
        k.dir.path(),
        "mv tarsrc/Dockerfile tarsrc/Build.df && tar -czf ctx.tgz -C tarsrc .",
    );
    let tgz = std::fs::read(k.path("ctx.tgz")).unwrap();
    let out = k.path("out-gz");
    let dest = format!("type=local,dest={}", out.display());
    k.run_stdin(
        &tgz,
        &[
            "build",
            "--progress=plain",
            "-o",
            &dest,
            "-f",
            "Build.df",
            "-",
        ],
    )
    .ok();
    assert_eq!(read(&out, "ctx/sub/a.txt"), "from stdin\n");

    // A Dockerfile on stdin, with an empty context.
    let extra = k.write("extra", &[("f.txt", "named\n")]);
    let named = format!("extra={}", extra.display());
    let out = k.path("out-df");
    let dest = format!("type=local,dest={}", out.display());
    k.run_stdin(
        b"FROM scratch\nCOPY --from=extra f.txt /f.txt\n",
        &[
            "build",
            "--progress=plain",
            "-o",
            &dest,
            "--build-context",
            &named,
            "-",
        ],
    )
    .ok();
    assert_eq!(read(&out, "f.txt"), "named\n");
}

/// A tar whose entry climbs out with `..`.
fn hostile_tar() -> Vec<u8> {
    tar_with_raw_name(b"../../../../../../tmp/kiln-remote-context-escaped")
}

#[test]
fn remote_context_errors_name_the_source() {
    let k = Kiln::new(&[]);
    let (_daemon, repo) = repo(&k);
    let server = http_site(&k);
    let out = k.path("out");

    // An unknown ref.
    let url = format!("{repo}#nope");
    let r = build_url(&k, &url, &out, &[]).fails();
    assert!(
        r.stderr
            .contains(&format!("unable to prepare context {url}"))
            && r.stderr.contains("\"nope\" not found"),
        "{}",
        r.stderr
    );
    // A missing Dockerfile in the fetched context.
    let r = build_url(&k, &format!("{repo}#v2:app"), &out, &["-f", "nope.df"]).fails();
    assert!(r.stderr.contains("no file \"nope.df\""), "{}", r.stderr);
    // A server that answers 404, and one that is not there at all.
    let url = format!("{server}/missing.tar.gz");
    let r = build_url(&k, &url, &out, &[]).fails();
    assert!(
        r.stderr
            .contains(&format!("unable to prepare context {url}"))
            && r.stderr.contains("404"),
        "{}",
        r.stderr
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for url in [
        format!("http://127.0.0.1:{closed}/ctx.tar.gz"),
        format!("git://127.0.0.1:{closed}/repo.git"),
    ] {
        let r = build_url(&k, &url, &out, &[]).fails();
        assert!(
            r.stderr
                .contains(&format!("unable to prepare context {url}")),
            "{url}: {}",
            r.stderr
        );
    }
    // A bad query string is refused as ADD refuses it.
    let r = build_url(&k, &format!("{repo}?depth=1"), &out, &[]).fails();
    assert!(
        r.stderr.contains("unexpected query \"depth\""),
        "{}",
        r.stderr
    );

    // stdin: not both context and Dockerfile, not empty, not a hostile archive.
    let r = k
        .run_stdin(b"FROM scratch\n", &["build", "-f", "-", "-"])
        .fails();
    assert!(
        r.stderr
            .contains("can't use stdin for both build context and dockerfile"),
        "{}",
        r.stderr
    );
    let r = k.run_stdin(b"", &["build", "-"]).fails();
    assert!(r.stderr.contains("stdin is empty"), "{}", r.stderr);
    let _ = std::fs::remove_file("/tmp/kiln-remote-context-escaped");
    let r = k.run_stdin(&hostile_tar(), &["build", "-"]).fails();
    assert!(r.stderr.contains("climbs out"), "{}", r.stderr);
    assert!(!Path::new("/tmp/kiln-remote-context-escaped").exists());
    // A Dockerfile on stdin and -f naming another is ambiguous, as in buildx.
    let r = k
        .run_stdin(b"FROM scratch\n", &["build", "-f", "Dockerfile", "-"])
        .fails();
    assert!(
        r.stderr.contains("ambiguous Dockerfile source"),
        "{}",
        r.stderr
    );
}
