//! ADD's sources beyond COPY's: URLs (the `http` primitive), git repositories (the `git`
//! primitive) and archives (extracted by the file op's `unpack`), with BuildKit's rules:
//!
//! - a local file that is a tar archive (by content) is extracted into the destination, unless
//!   `--unpack=false`;
//! - a URL is downloaded as a file (named after the URL path, `__unnamed__` when it has none,
//!   mode 0600) and is not extracted unless `--unpack=true`; `--checksum` pins its content;
//! - `https://host/repo.git#ref:subdir`, `git@host:repo.git#ref`, `git://` and `ssh://`
//!   sources check out `ref` (default: the remote's HEAD) and copy `subdir` (default: the
//!   whole tree) into the destination; `--keep-git-dir` keeps `.git`; `--checksum` is the
//!   commit the ref must resolve to. BuildKit's query string says the same and more
//!   (`?ref=|tag=|branch=&subdir=&checksum=&keep-git-dir&submodules=&mtime=&fetch-by-commit`),
//!   and must agree with the fragment and the flags.
//!
//! Each remote source becomes a `Custom` vertex (payload below, part of its digest) whose
//! output is copied into the stage by the same file op as the other sources. The cache key of
//! such a vertex covers the payload, plus what the primitive reports at build time for
//! unpinned sources (see the `kiln-http` and `kiln-git` plugins).
//!
//! Payloads: http `{"url", "checksum"?, "filename"}`; git `{"remote", "ref"?, "subdir"?,
//! "keep_git_dir", "checksum"?, "submodules"?, "mtime_commit"?, "fetch_by_commit"?}`.

use dockerfile_parser::instructions as ins;
use kiln_graph::{CopyAction, CustomOp, Op, State};
use serde::Serialize;

use crate::convert::{Converter, Stage};
use crate::error::{Error, Result};

/// The ADD-only flags, as `dispatch_copy` hands them to [`Converter::remote_add_source`].
#[derive(Clone, Debug, Default)]
pub(crate) struct AddFlags {
    /// `--checksum`, expanded.
    pub checksum: Option<String>,
    /// `--keep-git-dir`, when given (a git URL's `?keep-git-dir=` may say it too).
    pub keep_git_dir: Option<bool>,
    /// `--unpack`: `None` = BuildKit's default (local archives yes, URLs no).
    pub unpack: Option<bool>,
}

impl AddFlags {
    /// Whether a local source is extracted when it is an archive.
    pub(crate) fn unpack_local(&self) -> bool {
        self.unpack != Some(false)
    }
}

#[derive(Serialize)]
struct HttpPayload<'a> {
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<&'a str>,
    filename: &'a str,
}

#[derive(Serialize)]
struct GitPayload<'a> {
    remote: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subdir: Option<&'a str>,
    keep_git_dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    checksum: Option<&'a str>,
    // The options below are written only when set, so that the digests of the vertices of
    // sources without them stay what they were before these options existed.
    #[serde(skip_serializing_if = "is_true")]
    submodules: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mtime_commit: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fetch_by_commit: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A git source split into remote, ref, subdir and the options of its query string.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct GitRef<'a> {
    pub remote: &'a str,
    pub reference: Option<String>,
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
pub(crate) fn parse_git(src: &str) -> Option<Result<GitRef<'_>>> {
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
    let subdir = subdir
        .map(|s| {
            crate::paths::clean_abs(s)
                .trim_start_matches('/')
                .to_owned()
        })
        .filter(|s| !s.is_empty());
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
fn query_pairs(query: &str) -> Result<Vec<(String, Vec<String>)>> {
    let decode = |s: &str| -> Result<String> {
        let plus = s.replace('+', " ");
        let bytes = s.as_bytes();
        // A `%` must start two hex digits: Go refuses the pair otherwise.
        let bad = bytes.iter().enumerate().any(|(i, b)| {
            *b == b'%'
                && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        });
        if bad {
            return Err(Error::invalid(format!(
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
            return Err(Error::invalid(format!(
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
fn load_query(git: &mut GitRef<'_>, query: &str) -> Result<()> {
    let conflict = |what: &str, a: &str, b: &str| {
        Err(Error::invalid(format!("{what} conflicts: {a:?} vs {b:?}")))
    };
    let flag = |k: &str, v: Option<&String>| -> Result<bool> {
        match v {
            None => Ok(true),
            Some(v) => {
                parse_go_bool(v).ok_or_else(|| Error::invalid(format!("invalid {k} value: {v:?}")))
            }
        }
    };
    let (mut tag, mut branch) = (None, None);
    for (k, vs) in query_pairs(query)? {
        if vs.len() > 1 {
            return Err(Error::invalid(format!("query {k:?} has multiple values")));
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
            (None, false) => return Err(Error::invalid(format!("query {k:?} has no value"))),
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
                    return Err(Error::invalid(format!(
                        "invalid mtime value: {value:?} (must be \"checkout\" or \"commit\")"
                    )))
                }
            },
            _ => return Err(Error::invalid(format!("unexpected query {k:?}"))),
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
            return Err(Error::invalid("branch conflicts with tag"));
        }
        let b = qualify(b, "refs/heads/");
        if let Some(r) = git.reference.as_deref().filter(|r| *r != b) {
            return conflict("ref", r, &b);
        }
        git.reference = Some(b);
    }
    Ok(())
}

fn is_http(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// BuildKit's name for a downloaded file: the last segment of the URL path (percent-decoded),
/// `__unnamed__` when there is none.
pub(crate) fn url_filename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(last)
        .decode_utf8_lossy()
        .into_owned();
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\0']) {
        "__unnamed__".to_owned()
    } else {
        decoded
    }
}

/// `algo:hex` with a digest algorithm the http primitive verifies.
fn check_digest(s: &str) -> Result<()> {
    let ok = s.split_once(':').is_some_and(|(algo, hex)| {
        let len = match algo {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return false,
        };
        hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid checksum digest format {s:?}: expected sha256:<64 hex digits>"
        )))
    }
}

fn custom(primitive: &str, payload: &impl Serialize, description: &str) -> Result<State> {
    let payload = serde_json::to_string(payload)
        .map_err(|e| Error::invalid(format!("internal error: {primitive} payload: {e}")))?;
    Ok(State::from_op(
        Op::Custom(CustomOp {
            primitive: primitive.to_owned(),
            payload,
        }),
        Vec::new(),
        description,
    ))
}

/// The vertex that checks out `git` (a parsed ADD source or build context), with ADD's
/// `--keep-git-dir` and `--checksum` when given, which must agree with the URL's query.
pub(crate) fn git_source(
    git: &GitRef<'_>,
    keep_git_dir_flag: Option<bool>,
    checksum_flag: Option<&str>,
    description: &str,
) -> Result<State> {
    // BuildKit: the query's options and the flags must agree where both are given.
    let keep_git_dir = match (keep_git_dir_flag, git.keep_git_dir) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::invalid("inconsistent keep-git-dir configuration"))
        }
        (a, b) => b.or(a).unwrap_or(false),
    };
    let checksum = match (checksum_flag, git.checksum.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::invalid(format!("checksum mismatch {a:?} != {b:?}")))
        }
        (a, b) => b.or(a),
    };
    if let Some(sum) = checksum {
        if sum.len() < 7 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "invalid checksum {sum:?} for a Git source: expected a commit id"
            )));
        }
    }
    let payload = GitPayload {
        remote: git.remote,
        reference: git.reference.as_deref(),
        subdir: git.subdir.as_deref(),
        keep_git_dir,
        checksum,
        submodules: git.submodules != Some(false),
        mtime_commit: git.mtime_commit,
        fetch_by_commit: git.fetch_by_commit,
    };
    custom("git", &payload, description)
}

impl Converter<'_> {
    /// The ADD-only flags of `add`, expanded and checked against its sources.
    pub(crate) fn add_flags(&self, stage: &Stage, add: &ins::Add) -> Result<AddFlags> {
        let scope = stage.scope();
        let checksum = add
            .checksum
            .as_deref()
            .map(|c| self.lexer.process_word(c, &scope))
            .transpose()?;
        if checksum.is_some() {
            let all_remote = add
                .sources
                .iter()
                .map(|s| self.lexer.process_word(s, &scope))
                .collect::<Result<Vec<_>, _>>()?
                .iter()
                .all(|s| is_http(s) || parse_git(s).is_some());
            if !all_remote || add.sources.is_empty() {
                return Err(Error::invalid("checksum requires HTTP(S) or Git sources"));
            }
        }
        Ok(AddFlags {
            checksum,
            keep_git_dir: add.keep_git_dir,
            unpack: add.unpack,
        })
    }

    /// For an ADD source that is a URL or a git repository: the vertex that fetches it and the
    /// copy that places its result at `dest` (owner and mode are the caller's). `None` for a
    /// local source.
    pub(crate) fn remote_add_source(
        &self,
        stage: &Stage,
        src: &str,
        dest: &str,
        flags: &AddFlags,
    ) -> Result<Option<(State, CopyAction)>> {
        if let Some(git) = parse_git(src) {
            let st = git_source(&git?, flags.keep_git_dir, flags.checksum.as_deref(), src)?;
            return Ok(Some((stage.finish(st), CopyAction::new(None, "/", dest))));
        }
        if !is_http(src) {
            return Ok(None);
        }
        if let Some(sum) = &flags.checksum {
            check_digest(sum)?;
        }
        let filename = url_filename(src);
        let payload = HttpPayload {
            url: src,
            checksum: flags.checksum.as_deref(),
            filename: &filename,
        };
        let st = stage.finish(custom("http", &payload, src)?);
        let mut action = CopyAction::new(None, &format!("/{filename}"), dest);
        // Remote archives are extracted only when asked (BuildKit's --unpack).
        action.unpack = flags.unpack == Some(true);
        Ok(Some((st, action)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(src: &str) -> GitRef<'_> {
        parse_git(src)
            .expect("a git source")
            .expect("a valid git source")
    }

    fn git_err(src: &str) -> String {
        parse_git(src)
            .expect("a git source")
            .unwrap_err()
            .to_string()
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
        assert!(parse_git("https://h/file.tar.gz").is_none());
        assert!(parse_git("https://h/r.git/").is_none());
        assert!(parse_git("https://h/r.git.bar").is_none());
        assert!(parse_git("http://h/docker.git:#branch").is_none());
        assert!(parse_git("https://h/dl?name=r.git").is_none());
        assert!(parse_git("local.git").is_none());
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

    #[test]
    fn url_filenames() {
        assert_eq!(url_filename("https://h/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_filename("https://h/a%20b"), "a b");
        assert_eq!(url_filename("https://h/"), "__unnamed__");
        assert_eq!(url_filename("https://h"), "__unnamed__");
        assert_eq!(url_filename("https://h/%2e%2e"), "__unnamed__");
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest("sha256:abc").is_err());
        assert!(check_digest("md5:abc").is_err());
    }
}
