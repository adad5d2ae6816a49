//! Go's `path.Clean` / `path.Dir` for `/`-separated paths (what `filepath` does on unix).
//!
//! Upstream cleans patterns and computes parent directories with these; reproducing them exactly is
//! what makes `a//b`, `./a` and `a/../b` behave as they do in BuildKit.

/// Lexically shortest equivalent of `path` (Go `path.Clean`).
pub(crate) fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // `/..` is `/`; a relative path keeps leading `..`s.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// All but the last element of `path`, cleaned (Go `path.Dir`): `"a/b"` → `"a"`, `"a/"` → `"a"`,
/// `"a"` → `"."`, `"/"` → `"/"`.
pub(crate) fn dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_owned(),
    }
}

/// The parent directories upstream tries a pattern against: every `/`-prefix of `dir(path)`,
/// shortest first (`"/a/b/c"` → `""`, `"/a"`, `"/a/b"`); none when the parent is `"."`.
pub(crate) fn parent_prefixes(path: &str) -> Vec<String> {
    let parent = dir(path);
    if parent == "." {
        return Vec::new();
    }
    let mut out: Vec<String> = parent
        .match_indices('/')
        .map(|(i, _)| parent[..i].to_owned())
        .collect();
    out.push(parent);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_matches_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("./", "."),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a/./b/", "a/b"),
            ("a/../b", "b"),
            ("a/..", "."),
            ("../a", "../a"),
            ("../../a/..", "../.."),
            ("/", "/"),
            ("//", "/"),
            ("/../a", "/a"),
            ("/a/b/../..", "/"),
            ("**/", "**"),
            ("!./foo", "!./foo"),
            ("[Local-Only]/", "[Local-Only]"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn dir_matches_go() {
        for (input, want) in [
            ("", "."),
            ("file", "."),
            ("file/", "file"),
            ("dir/file", "dir"),
            ("/", "/"),
            ("/a", "/"),
            ("a//b", "a"),
            ("a/../b/c", "b"),
        ] {
            assert_eq!(dir(input), want, "dir({input:?})");
        }
    }

    #[test]
    fn parent_prefixes_match_upstream_split() {
        assert_eq!(parent_prefixes("file"), Vec::<String>::new());
        assert_eq!(parent_prefixes("a/b/c"), ["a", "a/b"]);
        assert_eq!(
            parent_prefixes("/any/path/there"),
            ["", "/any", "/any/path"]
        );
        assert_eq!(parent_prefixes("/"), ["", "/"]);
        assert_eq!(parent_prefixes("dir/file/"), ["dir", "dir/file"]);
    }
}
