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
use kiln_plugin_sdk::url;
use serde::Serialize;

use crate::convert::{Converter, Stage};
use crate::error::{Error, Result};
pub(crate) use kiln_types::git_url::GitRef;

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

/// A git source (BuildKit's `dfgitutil.ParseGitRef`, shared with the remote build contexts of
/// the engine): `None` when `src` is not one, an error for a URL BuildKit refuses.
pub(crate) fn parse_git(src: &str) -> Option<Result<GitRef<'_>>> {
    kiln_types::git_url::parse(src).map(|r| r.map_err(|e| Error::invalid(e.to_string())))
}

fn is_http(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// BuildKit's name for a downloaded file: the last segment of the URL path (percent-decoded),
/// `__unnamed__` when there is none (the SDK's [`url::basename`], which the http primitive uses
/// too).
pub(crate) fn url_filename(src: &str) -> String {
    url::basename(src).unwrap_or_else(|| url::UNNAMED.to_owned())
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
    let payload = git
        .payload(keep_git_dir, checksum)
        .map_err(|e| Error::invalid(e.to_string()))?;
    custom("git", &payload, description)
}

/// The source of a named context given as a URL (`--build-context NAME=<git url>` or
/// `NAME=https://...`), made as BuildKit's dockerui makes it: a git URL is checked out (the
/// subdir's content, `.git` dropped unless the query keeps it); any other http(s) URL is
/// downloaded as one file named `context`, not extracted. `None` for any other value.
pub(crate) fn named_remote_context(name: &str, value: &str) -> Option<Result<State>> {
    let description = format!("[context {name}] {value}");
    if let Some(git) = parse_git(value) {
        return Some(git.and_then(|g| git_source(&g, None, None, &description)));
    }
    if !is_http(value) {
        return None;
    }
    let payload = HttpPayload {
        url: value,
        checksum: None,
        filename: "context",
    };
    Some(custom("http", &payload, &description))
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

    #[test]
    fn url_filenames() {
        assert_eq!(url_filename("https://h/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_filename("https://h/a%20b"), "a b");
        assert_eq!(url_filename("https://h/"), "__unnamed__");
        assert_eq!(url_filename("https://h"), "__unnamed__");
        assert_eq!(url_filename("https://h/%2e%2e"), "__unnamed__");
        // BuildKit takes the segment as written: no trimming, and `\` is a file name character
        // (the SDK's `safe_file_name`, for header and user names, refuses both).
        assert_eq!(url_filename("https://h/%20a%20"), " a ");
        assert_eq!(url_filename("https://h/a%5Cb"), "a\\b");
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest("sha256:abc").is_err());
        assert!(check_digest("md5:abc").is_err());
    }
}
