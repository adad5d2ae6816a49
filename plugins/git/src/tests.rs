#![allow(clippy::unwrap_used)]

use super::*;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

struct NoCancel;
impl Cancel for NoCancel {
    fn cancelled(&self) -> bool {
        false
    }
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository with `main` (a.txt, sub/b.txt), an annotated tag `v1` on the first commit
/// and a branch `feature` with a second commit.
fn repo(t: &Path) -> String {
    sh(
        t,
        "git init -q -b main src && cd src
         echo one > a.txt && mkdir sub && echo bee > sub/b.txt && ln -s .. sub/up
         git add -A && git commit -qm first && git tag -a v1 -m v1
         git checkout -qb feature && echo two > a.txt && git commit -qam second
         git checkout -q main
         cd .. && git clone -q --bare src repo.git",
    );
    format!("file://{}", t.join("repo.git").display())
}

fn payload(remote: &str, r: Option<&str>) -> Payload {
    Payload {
        remote: remote.to_owned(),
        reference: r.map(str::to_owned),
        ..Payload::default()
    }
}

#[test]
fn refs_tags_subdirs_and_git_dir() {
    let t = tempfile::tempdir().unwrap();
    let remote = repo(t.path());
    let out = |n: &str| {
        let p = t.path().join(n);
        fs::create_dir(&p).unwrap();
        p
    };

    let o = out("head");
    checkout(&payload(&remote, None), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "one\n");
    assert!(!o.join(".git").exists());

    let o = out("feature");
    let commit = checkout(&payload(&remote, Some("feature")), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "two\n");

    let o = out("tag");
    checkout(&payload(&remote, Some("v1")), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "one\n");

    let o = out("commit");
    checkout(&payload(&remote, Some(&commit)), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "two\n");

    let o = out("sub");
    let mut p = payload(&remote, Some("main"));
    p.subdir = Some("sub".into());
    checkout(&p, &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("b.txt")).unwrap(), "bee\n");
    assert!(!o.join("a.txt").exists());
    assert_eq!(fs::read_link(o.join("up")).unwrap(), Path::new(".."));

    let o = out("keep");
    let mut p = payload(&remote, Some("feature"));
    p.keep_git_dir = true;
    checkout(&p, &o, &NoCancel).unwrap();
    assert!(o.join(".git").is_dir());
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(&o)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&head.stdout).trim(), commit);

    let o = out("sum");
    let mut p = payload(&remote, Some("feature"));
    p.checksum = Some(commit[..12].to_owned());
    checkout(&p, &o, &NoCancel).unwrap();
    let o = out("badsum");
    p.checksum = Some("0000000000".into());
    let e = checkout(&p, &o, &NoCancel).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
}

#[test]
fn missing_refs_and_hostile_subdirs_fail() {
    let t = tempfile::tempdir().unwrap();
    let remote = repo(t.path());
    let o = t.path().join("o");
    fs::create_dir(&o).unwrap();
    let e = checkout(&payload(&remote, Some("nope")), &o, &NoCancel)
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("git ref \"nope\" not found in {remote}"));
    for (sub, why) in [
        ("../..", "must stay inside"),
        ("sub/up/sub", "symlink"),
        ("missing", "not found"),
        ("a.txt", "not a directory"),
    ] {
        let mut p = payload(&remote, Some("main"));
        p.subdir = Some(sub.into());
        let e = checkout(&p, &o, &NoCancel).unwrap_err().to_string();
        assert!(e.contains(why), "{sub}: {e}");
    }
    let e = checkout(&payload("file:///nonexistent/x.git", None), &o, &NoCancel)
        .unwrap_err()
        .to_string();
    assert!(e.contains("file:///nonexistent/x.git"), "{e}");
}

#[test]
fn credentials_are_hidden() {
    assert_eq!(redact("https://u:p@host/r.git"), "https://xxxxx@host/r.git");
    assert_eq!(redact("git@host:r.git"), "git@host:r.git");
}

/// Cancelled once the flag is set.
struct Flag(Arc<AtomicBool>);
impl Cancel for Flag {
    fn cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A server on 127.0.0.1 that accepts connections and never answers; each accepted connection
/// is handed to the test.
fn stalling() -> (u16, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

/// Cancels `run` once its git has connected to the stalling server, and checks that it stops
/// within a bounded time and that nothing of it still holds the connection (git and its
/// helpers are dead).
fn cancel_while_stalled(run: impl FnOnce(u16, Flag) -> Result<(), Error> + Send + 'static) {
    let (port, accepted) = stalling();
    let flag = Arc::new(AtomicBool::new(false));
    let cancel = Flag(flag.clone());
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(port, cancel));
    });
    let mut conn = accepted
        .recv_timeout(Duration::from_secs(30))
        .expect("git connected to the server");
    flag.store(true, Ordering::SeqCst);
    let e = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the cancelled git step ended within 10 s")
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e:?}");
    assert_eq!(PluginError::from(e).kind, ErrorKind::Cancelled);
    // End of stream: the process that held the connection was killed.
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the connection was closed by the killed git");
}

#[test]
fn cancellation_kills_a_stalled_fetch() {
    // git:// (git itself holds the socket), pinned commit: the fetch of checkout stalls.
    cancel_while_stalled(|port, cancel| {
        let t = tempfile::tempdir().unwrap();
        let p = payload(
            &format!("git://127.0.0.1:{port}/repo.git"),
            Some(&"a".repeat(40)),
        );
        checkout(&p, t.path(), &cancel).map(drop)
    });
    // http:// (a git-remote-http helper holds the socket), a branch: ls-remote stalls.
    cancel_while_stalled(|port, cancel| {
        let t = tempfile::tempdir().unwrap();
        let p = payload(&format!("http://127.0.0.1:{port}/repo.git"), Some("main"));
        checkout(&p, t.path(), &cancel).map(drop)
    });
    // The cache key's ls-remote.
    cancel_while_stalled(|port, cancel| {
        let p = payload(&format!("git://127.0.0.1:{port}/repo.git"), Some("main"));
        current_commit(&p, &cancel).map(drop)
    });
}

/// BuildKit's query-string options: a checksum pins the commit (an annotated tag's object id
/// is accepted too) and a moved ref fails; a branch wins over a tag of the same name;
/// fetch-by-commit needs no listing; mtime=commit gives every file the commit's time.
#[test]
fn checksums_fetch_by_commit_and_commit_mtimes() {
    let t = tempfile::tempdir().unwrap();
    let remote = repo(t.path());
    let rev = |r: &str| {
        let out = Command::new("git")
            .args([
                "-C",
                t.path().join("repo.git").to_str().unwrap(),
                "rev-parse",
                r,
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (first, second) = (rev("v1^{commit}"), rev("feature"));
    let tag_object = rev("v1");
    assert_ne!(tag_object, first);
    let n = std::cell::Cell::new(0);
    let out = || {
        n.set(n.get() + 1);
        let p = t.path().join(format!("out{}", n.get()));
        fs::create_dir(&p).unwrap();
        p
    };
    let with_sum = |r: &str, sum: &str| Payload {
        checksum: Some(sum.to_owned()),
        ..payload(&remote, Some(r))
    };

    assert_eq!(
        checkout(&with_sum("v1", &first[..7]), &out(), &NoCancel).unwrap(),
        first
    );
    assert_eq!(
        checkout(&with_sum("v1", &tag_object), &out(), &NoCancel).unwrap(),
        first
    );
    assert_eq!(
        current_commit(&with_sum("v1", &tag_object), &NoCancel).unwrap(),
        Some(first.clone())
    );
    let e = checkout(&with_sum("feature", &first), &out(), &NoCancel).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("expected commit {first}, got {second}")),
        "{e}"
    );
    let e = current_commit(&with_sum("feature", &first), &NoCancel).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");

    // A tag named like a branch: git (and BuildKit) take the branch.
    sh(
        &t.path().join("src"),
        "git tag feature v1 && git push -q ../repo.git refs/tags/feature",
    );
    let o = out();
    checkout(&payload(&remote, Some("feature")), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "two\n");
    let o = out();
    checkout(&payload(&remote, Some("refs/tags/feature")), &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "one\n");

    let by_commit = Payload {
        fetch_by_commit: true,
        ..with_sum("feature", &second)
    };
    assert_eq!(current_commit(&by_commit, &NoCancel).unwrap(), None);
    let o = out();
    assert_eq!(checkout(&by_commit, &o, &NoCancel).unwrap(), second);
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "two\n");
    let e = checkout(
        &Payload {
            fetch_by_commit: true,
            ..with_sum("feature", &second[..7])
        },
        &out(),
        &NoCancel,
    )
    .unwrap_err();
    assert!(e.to_string().contains("requires a full commit id"), "{e}");

    // A commit dated long ago, so that the checkout's own time cannot pass for it.
    sh(
        &t.path().join("src"),
        "git checkout -qb old v1 && echo old > a.txt && \
         GIT_COMMITTER_DATE='2001-02-03T04:05:06Z' git commit -qam old && \
         git push -q ../repo.git old",
    );
    let o = out();
    checkout(
        &Payload {
            mtime_commit: true,
            ..payload(&remote, Some("old"))
        },
        &o,
        &NoCancel,
    )
    .unwrap();
    use std::os::unix::fs::MetadataExt;
    for p in [o.join("a.txt"), o.join("sub"), o.join("sub/up"), o.clone()] {
        assert_eq!(
            fs::symlink_metadata(&p).unwrap().mtime(),
            981_173_106,
            "{}",
            p.display()
        );
    }
}

/// `?submodules=false`: the submodule's directory stays empty and no submodule is fetched.
#[test]
fn submodules_can_be_skipped() {
    let t = tempfile::tempdir().unwrap();
    sh(
        t.path(),
        "git init -q -b main lib && cd lib && echo lib > l.txt && git add -A && git commit -qm lib
         cd .. && git init -q -b main app && cd app && echo app > a.txt
         git -c protocol.file.allow=always submodule add -q ../lib vendor/lib
         git add -A && git commit -qm app
         cd .. && git clone -q --bare app app.git",
    );
    let remote = format!("file://{}", t.path().join("app.git").display());
    let o = t.path().join("out");
    fs::create_dir(&o).unwrap();
    let p = Payload {
        submodules: false,
        ..payload(&remote, Some("main"))
    };
    checkout(&p, &o, &NoCancel).unwrap();
    assert_eq!(fs::read_to_string(o.join("a.txt")).unwrap(), "app\n");
    assert!(o.join(".gitmodules").is_file());
    assert_eq!(fs::read_dir(o.join("vendor/lib")).unwrap().count(), 0);
    // The payload of an op without the option keeps its old JSON (and so its digest).
    assert_eq!(
        serde_json::to_string(&payload("r", None)).unwrap(),
        r#"{"remote":"r","keep_git_dir":false}"#
    );
    assert!(
        serde_json::from_str::<Payload>(r#"{"remote":"r"}"#)
            .unwrap()
            .submodules
    );
}

/// Closes the child's stdin (its signal to exit) the first time it is asked.
struct ReleasesChild(std::sync::Mutex<Option<std::process::ChildStdin>>);
impl Cancel for ReleasesChild {
    fn cancelled(&self) -> bool {
        drop(self.0.lock().unwrap().take());
        false
    }
}

#[test]
fn the_exit_of_git_ends_the_wait_without_a_tick() {
    // The child exits right after the wait first found it running. Its exit must end the wait,
    // not the next look after a tick: with a tick of an hour, a wait that sleeps never returns
    // in time.
    let mut child = Command::new("sh")
        .args(["-c", "read line; exit 3"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let cancel = ReleasesChild(std::sync::Mutex::new(child.stdin.take()));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let git = Git {
            remote: "r".into(),
            shown: "r".into(),
            git_dir: Path::new("/nonexistent"),
            cancel: &cancel,
        };
        let status = git.wait_ticking(&mut child, Duration::from_secs(3600));
        let _ = tx.send(status.map(|s| s.code()).map_err(|e| e.to_string()));
    });
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the wait did not end when git exited");
    assert_eq!(status, Ok(Some(3)));
}
