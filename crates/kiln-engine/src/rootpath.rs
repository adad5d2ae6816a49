//! Resolving a path inside a root directory the way the kernel would inside a chroot: `..` stops
//! at the root and symlinks (absolute or relative) are followed relative to the root. Every file
//! operation on a build filesystem goes through this, so a symlink in an image can never make
//! kiln touch a host path.

use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_LINKS: usize = 255;

/// Resolves `path` (absolute or relative to `/`) inside `root`. The final component is followed
/// when it is a symlink and `follow_last` is set. Missing components are fine: the result is
/// where they would be created.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> io::Result<PathBuf> {
    let mut todo: Vec<String> = components(path);
    todo.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let candidate = join(root, &cur).join(&c);
        let is_last = todo.is_empty();
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() && (!is_last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links resolving {path}"
                    )));
                }
                let target = std::fs::read_link(&candidate)?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    cur.clear();
                }
                let mut more = components(&target);
                more.reverse();
                todo.extend(more);
            }
            _ => cur.push(c),
        }
    }
    Ok(join(root, &cur))
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_owned()),
            _ => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in parts {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_and_dotdot_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        symlink("/etc", r.join("a/abs")).unwrap();
        symlink("../../..", r.join("a/b/up")).unwrap();
        symlink("b", r.join("a/rel")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve(r, "/a/abs/passwd", true).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve(r, "a/b/up/x", true).unwrap(), r.join("x"));
        assert_eq!(resolve(r, "../../../etc", true).unwrap(), r.join("etc"));
        assert_eq!(resolve(r, "/a/rel/f", true).unwrap(), r.join("a/b/f"));
        assert_eq!(resolve(r, "/a/rel", false).unwrap(), r.join("a/rel"));
        assert!(resolve(r, "/loop", true).is_err());
    }
}
