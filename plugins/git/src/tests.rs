#![allow(clippy::unwrap_used)]

use super::*;

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
