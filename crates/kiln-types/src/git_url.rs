//! Git source URLs as BuildKit's `dfgitutil.ParseGitRef` reads them: `ADD <git url>` and the
//! build contexts `kiln build <git url>` and `--build-context NAME=<git url>` share this one
//! parser, so that they accept the same grammar (fragment `#ref:subdir`, query string
//! `?ref=&subdir=&checksum=...`), and [`GitPayload`], the request the `git` primitive plugin
//! reads. Pure string work: no I/O.

use serde::Serialize;

/// A git URL that BuildKit refuses (a bad query, a conflict between query and fragment).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GitUrlError(String);

impl GitUrlError {
    fn new(message: impl Into<String>) -> Self {
        GitUrlError(message.into())
    }
}

/// The `git` primitive's payload (part of the vertex digest: fields are written only when set,
/// so that the digests of sources without the newer options stay what they were).
#[derive(Clone, Debug, Serialize)]
pub struct GitPayload<'a> {
    /// The repository.
    pub remote: &'a str,
    /// The ref to check out.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
    /// The directory of the repository to take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subdir: Option<&'a str>,
    /// Keep `.git`.
    pub keep_git_dir: bool,
    /// The commit the ref must resolve to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<&'a str>,
    /// Check out submodules.
    #[serde(skip_serializing_if = "is_true")]
    pub submodules: bool,
    /// Files get the commit's time.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mtime_commit: bool,
    /// Fetch the checksum's commit without listing the refs.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fetch_by_commit: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

impl<'a> GitRef<'a> {
    /// The payload that checks out this source, keeping `.git` when `keep_git_dir`, pinned to
    /// `checksum` (a commit id, at least 7 hex digits) when given.
    pub fn payload(
        &'a self,
        keep_git_dir: bool,
        checksum: Option<&'a str>,
    ) -> Result<GitPayload<'a>, GitUrlError> {
        if let Some(sum) = checksum {
            if sum.len() < 7 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(GitUrlError::new(format!(
                    "invalid checksum {sum:?} for a Git source: expected a commit id"
                )));
            }
        }
        Ok(GitPayload {
            remote: self.remote,
            reference: self.reference.as_deref(),
            subdir: self.subdir.as_deref(),
            keep_git_dir,
            checksum,
            submodules: self.submodules != Some(false),
            mtime_commit: self.mtime_commit,
            fetch_by_commit: self.fetch_by_commit,
        })
    }
}

/// BuildKit cleans the fragment's subdir as an absolute path (Go's `path.Join("/", s)`), then
/// makes it relative again: `..` stops at the top, `.` and empty components go.
fn clean_relative(s: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in s.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// A git source split into remote, ref, subdir and the options of its query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GitRef<'a> {
    /// The repository (URL or scp-like `git@host:path`), without fragment and query.
    pub remote: &'a str,
    /// The ref to check out (`None`: the remote's HEAD).
    pub reference: Option<String>,
    /// The directory of the repository to take (`None`: all of it).
    pub subdir: Option<String>,
    /// `?checksum=` (or `?commit=`): the commit the ref must resolve to.
    pub checksum: Option<String>,
    /// `?keep-git-dir=`.
    pub keep_git_dir: Option<bool>,
    /// `?submodules=`: `Some(false)` skips them.
    pub submodules: Option<bool>,
    /// `?mtime=commit`: files get the commit's time instead of the checkout's.
    pub mtime_commit: bool,
    /// `?fetch-by-commit`: fetch the checksum's commit without listing the remote's refs.
    pub fetch_by_commit: bool,
}

/// BuildKit's `dfgitutil.ParseGitRef`: `git@`, `git://` and `ssh://` sources, and `http(s)://`
/// URLs whose path ends in `.git`; the fragment is `ref[:subdir]` and the query may say `ref`,
/// `tag`, `branch`, `subdir`, `checksum` (or `commit`), `keep-git-dir`, `submodules`, `mtime`
/// and `fetch-by-commit`. `None` when `src` is not a git source; an error for a query BuildKit
/// refuses (unknown key, repeated key, a value that conflicts with the fragment).
pub fn parse(src: &str) -> Option<Result<GitRef<'_>, GitUrlError>> {
    let (with_query, fragment) = match src.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (src, None),
    };
    let (remote, query) = match with_query.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (with_query, None),
    };
    let is_git =
        if src.starts_with("git@") || src.starts_with("git://") || src.starts_with("ssh://") {
            true
        } else if let Some(rest) = remote
            .strip_prefix("https://")
            .or_else(|| remote.strip_prefix("http://"))
        {
            rest.find('/').is_some_and(|i| rest[i..].ends_with(".git"))
        } else {
            false
        };
    if !is_git {
        return None;
    }
    let (reference, subdir) = match fragment {
        Some(f) => match f.split_once(':') {
            Some((r, s)) => (r, Some(s)),
            None => (f, None),
        },
        None => ("", None),
    };
    // BuildKit cleans the fragment's subdir as an absolute path, then makes it relative again.
    let subdir = subdir.map(clean_relative).filter(|s| !s.is_empty());
    let mut git = GitRef {
        remote,
        reference: Some(reference.to_owned()).filter(|r| !r.is_empty()),
        subdir,
        ..GitRef::default()
    };
    Some(match query {
        Some(q) => load_query(&mut git, q).map(|()| git),
        None => Ok(git),
    })
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `query`'s pairs, decoded as Go's `url.ParseQuery` does (`+` is a space), grouped by key in
/// order of first appearance.
fn query_pairs(query: &str) -> Result<Vec<(String, Vec<String>)>, GitUrlError> {
    let decode = |s: &str| -> Result<String, GitUrlError> {
        let plus = s.replace('+', " ");
        let bytes = s.as_bytes();
        // A `%` must start two hex digits: Go refuses the pair otherwise.
        let bad = bytes.iter().enumerate().any(|(i, b)| {
            *b == b'%'
                && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        if bad {
            return Err(GitUrlError::new(format!(
                "invalid escape in the git URL query {query:?}"
            )));
        }
        Ok(percent_encoding::percent_decode_str(&plus)
            .decode_utf8_lossy()
            .into_owned())
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(GitUrlError::new(format!(
                "invalid semicolon separator in the git URL query {query:?}"
            )));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        match out.iter_mut().find(|(key, _)| *key == k) {
            Some((_, vs)) => vs.push(v),
            None => out.push((k, vec![v])),
        }
    }
    Ok(out)
}

/// BuildKit's `GitRef.loadQuery`: the query's options over the fragment's, with its refusals.
fn load_query(git: &mut GitRef<'_>, query: &str) -> Result<(), GitUrlError> {
    let conflict = |what: &str, a: &str, b: &str| {
        Err(GitUrlError::new(format!(
            "{what} conflicts: {a:?} vs {b:?}"
        )))
    };
    let flag = |k: &str, v: Option<&String>| -> Result<bool, GitUrlError> {
        match v {
            None => Ok(true),
            Some(v) => parse_go_bool(v)
                .ok_or_else(|| GitUrlError::new(format!("invalid {k} value: {v:?}"))),
        }
    };
    let (mut tag, mut branch) = (None, None);
    for (k, vs) in query_pairs(query)? {
        if vs.len() > 1 {
            return Err(GitUrlError::new(format!("query {k:?} has multiple values")));
        }
        // A flag written bare (`?keep-git-dir`) is true; any other key needs a value.
        let v = vs.into_iter().next().filter(|v| !v.is_empty());
        let is_flag = matches!(
            k.as_str(),
            "submodules" | "keep-git-dir" | "fetch-by-commit"
        );
        let value = match (&v, is_flag) {
            (Some(v), _) => v.clone(),
            (None, true) => String::new(),
            (None, false) => return Err(GitUrlError::new(format!("query {k:?} has no value"))),
        };
        match k.as_str() {
            "ref" => {
                if let Some(r) = git.reference.as_deref().filter(|r| *r != value) {
                    return conflict("ref", r, &value);
                }
                git.reference = Some(value);
            }
            "tag" => tag = Some(value),
            "branch" => branch = Some(value),
            "subdir" => {
                if let Some(s) = git.subdir.as_deref().filter(|s| *s != value) {
                    return conflict("subdir", s, &value);
                }
                git.subdir = Some(value);
            }
            "checksum" | "commit" => git.checksum = Some(value),
            "keep-git-dir" => git.keep_git_dir = Some(flag(&k, v.as_ref())?),
            "submodules" => git.submodules = Some(flag(&k, v.as_ref())?),
            "fetch-by-commit" => git.fetch_by_commit = flag(&k, v.as_ref())?,
            "mtime" => match value.as_str() {
                "checkout" => git.mtime_commit = false,
                "commit" => git.mtime_commit = true,
                _ => {
                    return Err(GitUrlError::new(format!(
                        "invalid mtime value: {value:?} (must be \"checkout\" or \"commit\")"
                    )))
                }
            },
            _ => return Err(GitUrlError::new(format!("unexpected query {k:?}"))),
        }
    }
    let qualify = |name: String, prefix: &str| {
        if name.starts_with(prefix) {
            name
        } else {
            format!("{prefix}{name}")
        }
    };
    if let Some(t) = tag.clone() {
        let t = qualify(t, "refs/tags/");
        if let Some(r) = git.reference.as_deref().filter(|r| *r != t) {
            return conflict("ref", r, &t);
        }
        git.reference = Some(t);
    }
    if let Some(b) = branch {
        if tag.is_some() {
            return Err(GitUrlError::new("branch conflicts with tag"));
        }
        let b = qualify(b, "refs/heads/");
        if let Some(r) = git.reference.as_deref().filter(|r| *r != b) {
            return conflict("ref", r, &b);
        }
        git.reference = Some(b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(src: &str) -> GitRef<'_> {
        parse(src)
            .expect("a git source")
            .expect("a valid git source")
    }

    fn git_err(src: &str) -> String {
        parse(src).expect("a git source").unwrap_err().to_string()
    }

    fn owned(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn git_refs() {
        assert_eq!(
            git("https://h/r.git#v1:sub/dir"),
            GitRef {
                remote: "https://h/r.git",
                reference: owned("v1"),
                subdir: owned("sub/dir"),
                ..GitRef::default()
            }
        );
        assert_eq!(
            git("git@github.com:o/r.git#main"),
            GitRef {
                remote: "git@github.com:o/r.git",
                reference: owned("main"),
                ..GitRef::default()
            }
        );
        assert_eq!(
            git("git://127.0.0.1:9418/r.git#:sub"),
            GitRef {
                remote: "git://127.0.0.1:9418/r.git",
                subdir: owned("sub"),
                ..GitRef::default()
            }
        );
        // The fragment's subdir is cleaned as BuildKit's path.Join("/", subdir) does.
        assert_eq!(git("https://h/r.git#:../a/./b/").subdir, owned("a/b"));
        assert_eq!(git("https://h/r.git#main:/").subdir, None);
        assert!(parse("https://h/file.tar.gz").is_none());
        assert!(parse("https://h/r.git/").is_none());
        assert!(parse("https://h/r.git.bar").is_none());
        assert!(parse("http://h/docker.git:#branch").is_none());
        assert!(parse("https://h/dl?name=r.git").is_none());
        assert!(parse("local.git").is_none());
    }

    /// BuildKit's TestParseGitRef query cases, in our words.
    #[test]
    fn git_query_strings() {
        assert_eq!(
            git("https://h/o/docker.git?ref=v1.0.0&subdir=/subdir"),
            GitRef {
                remote: "https://h/o/docker.git",
                reference: owned("v1.0.0"),
                subdir: owned("/subdir"),
                ..GitRef::default()
            }
        );
        let g = git("https://h/o/r.git?subdir=/subdir#v1.0.0");
        assert_eq!(
            (g.remote, g.reference, g.subdir),
            ("https://h/o/r.git", owned("v1.0.0"), owned("/subdir"))
        );
        assert_eq!(
            git("https://h/o/r.git?tag=v1.0.0").reference,
            owned("refs/tags/v1.0.0")
        );
        assert_eq!(
            git("https://h/o/r.git?tag=refs/tags/v1").reference,
            owned("refs/tags/v1")
        );
        assert_eq!(
            git("https://h/o/r.git?branch=v1.0").reference,
            owned("refs/heads/v1.0")
        );
        // The same ref said twice is no conflict.
        assert_eq!(
            git("https://h/o/r.git?ref=main#main").reference,
            owned("main")
        );
        let g = git("git@h:o/r.git?subdir=/s#v1");
        assert_eq!(
            (g.remote, g.reference, g.subdir),
            ("git@h:o/r.git", owned("v1"), owned("/s"))
        );
        let g = git("git://h/r.git?checksum=abcdef0&keep-git-dir&submodules=false&mtime=commit");
        assert_eq!(g.remote, "git://h/r.git");
        assert_eq!(g.checksum, owned("abcdef0"));
        assert_eq!(g.keep_git_dir, Some(true));
        assert_eq!(g.submodules, Some(false));
        assert!(g.mtime_commit);
        assert_eq!(
            git("https://h/r.git?commit=abcdef0").checksum,
            owned("abcdef0")
        );
        assert_eq!(
            git("https://h/r.git?keep-git-dir=0").keep_git_dir,
            Some(false)
        );
        let g = git("https://h/r.git?fetch-by-commit&checksum=deadbeef#refs/heads/b");
        assert!(g.fetch_by_commit);
        assert_eq!(g.reference, owned("refs/heads/b"));
        // Query values are URL-decoded, `+` being a space.
        assert_eq!(git("https://h/r.git?subdir=a%2Fb+c").subdir, owned("a/b c"));

        for (src, msg) in [
            (
                "https://h/r.git?ref=v1.0.0#v1.2.3",
                r#"ref conflicts: "v1.2.3" vs "v1.0.0""#,
            ),
            ("https://h/r.git?ref=v1.0.0&tag=v1.2.3", "ref conflicts"),
            (
                "https://h/r.git?tag=v1&branch=v1",
                "branch conflicts with tag",
            ),
            (
                "https://h/r.git?subdir=a#:b",
                r#"subdir conflicts: "b" vs "a""#,
            ),
            (
                "https://h/r.git?ref=a&ref=a",
                r#"query "ref" has multiple values"#,
            ),
            ("https://h/r.git?ref=", r#"query "ref" has no value"#),
            ("https://h/r.git?subdir", r#"query "subdir" has no value"#),
            (
                "https://h/r.git?keep-git-dir=yes",
                r#"invalid keep-git-dir value: "yes""#,
            ),
            ("https://h/r.git?mtime=now", "invalid mtime value"),
            ("https://h/r.git?depth=1", r#"unexpected query "depth""#),
            ("https://h/r.git?ref=%zz", "invalid escape"),
            ("https://h/r.git?ref=a;b", "invalid semicolon"),
        ] {
            let e = git_err(src);
            assert!(e.contains(msg), "{src}: {e}");
        }
    }
}
