//! Container path arithmetic with BuildKit's rules: Go's `path.Clean`/`path.Join`/`path.Base`,
//! and the "a trailing slash means into the directory" convention of COPY destinations.
//!
//! Frontends resolve every path they write into the graph with these, so that two frontends
//! that mean the same step write the same path, get the same vertex digest and share cache
//! entries.

/// Go's `path.Clean` of `p` made absolute: `.` and `..` resolved, duplicate slashes removed
/// (`a//b/../c` → `/a/c`).
pub fn clean_abs(p: &str) -> String {
    clean(&format!("/{p}"))
}

/// Go's `path.Clean`, for relative paths too: a `..` that cannot go up is kept (`../x/../..` →
/// `../..`), above the root is the root (`/../a` → `/a`), and nothing at all is `.`.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            // Above the root is the root; above a relative start is kept.
            ".." if rooted => {}
            other => parts.push(other),
        }
    }
    match (rooted, parts.join("/")) {
        (true, body) => format!("/{body}"),
        (false, body) if body.is_empty() => ".".to_owned(),
        (false, body) => body,
    }
}

/// Go's `path.Base`: the last element, trailing slashes ignored; `/` for only slashes and `.`
/// for the empty path.
pub fn base(p: &str) -> &str {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return if p.is_empty() { "." } else { "/" };
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// `p` resolved against the absolute directory `dir` (when `p` is relative) and cleaned:
/// `join("/app", "../x//y/.")` → `/x/y`.
pub fn join(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        clean_abs(p)
    } else {
        clean_abs(&format!("{dir}/{p}"))
    }
}

/// A COPY destination resolved against the working directory, keeping the trailing `/` that
/// tells the copy to go into a directory (BuildKit's `pathRelativeToWorkingDir`): `dest/` in
/// `/app` → `/app/dest/`, `.` → `/app/`.
pub fn dest_in_workdir(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    let joined = join(workdir, dest);
    let into_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == ".";
    if into_dir && joined != "/" {
        format!("{joined}/")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_base_like_go() {
        for (p, want) in [
            ("", "."),
            ("/go/pkg/mod/", "/go/pkg/mod"),
            ("a//b/./c/..", "a/b"),
            ("../x/../..", "../.."),
            ("/../a", "/a"),
            ("/", "/"),
        ] {
            assert_eq!(clean(p), want, "{p:?}");
        }
        for (p, want) in [("", "."), ("/", "/"), ("a/b/", "b"), ("tok", "tok")] {
            assert_eq!(base(p), want, "{p:?}");
        }
        assert_eq!(clean_abs("a//b/../c"), "/a/c");
    }

    #[test]
    fn joins_like_go() {
        assert_eq!(join("/", "app"), "/app");
        assert_eq!(join("/app", "../x//y/."), "/x/y");
        assert_eq!(join("/app", "/abs/"), "/abs");
        assert_eq!(dest_in_workdir("/app", "dest"), "/app/dest");
        assert_eq!(dest_in_workdir("/app", "dest/"), "/app/dest/");
        assert_eq!(dest_in_workdir("/app", "."), "/app/");
        assert_eq!(dest_in_workdir("/app", ""), "/app/");
        assert_eq!(dest_in_workdir("/", "./"), "/");
        assert_eq!(dest_in_workdir("/app", "/x/"), "/x/");
    }
}
