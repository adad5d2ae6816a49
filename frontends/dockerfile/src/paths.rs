//! Container path arithmetic with BuildKit's rules (`path.Join`/`path.Clean` of Go, and the
//! "a trailing slash means into the directory" convention of COPY destinations).

/// Go's `path.Clean` for absolute paths: `.` and `..` resolved, duplicate slashes removed.
pub(crate) fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `p` resolved against `dir` (when relative) and cleaned.
pub(crate) fn join(dir: &str, p: &str) -> String {
    if p.starts_with('/') {
        clean_abs(p)
    } else {
        clean_abs(&format!("{dir}/{p}"))
    }
}

/// A COPY destination resolved against the working directory, keeping the trailing `/` that
/// tells the copy to go into a directory (BuildKit's `pathRelativeToWorkingDir`).
pub(crate) fn dest_in_workdir(workdir: &str, dest: &str) -> String {
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
    fn joins_like_go() {
        assert_eq!(join("/", "app"), "/app");
        assert_eq!(join("/app", "../x//y/."), "/x/y");
        assert_eq!(join("/app", "/abs/"), "/abs");
        assert_eq!(dest_in_workdir("/app", "dest"), "/app/dest");
        assert_eq!(dest_in_workdir("/app", "dest/"), "/app/dest/");
        assert_eq!(dest_in_workdir("/app", "."), "/app/");
        assert_eq!(dest_in_workdir("/", "./"), "/");
        assert_eq!(dest_in_workdir("/app", "/x/"), "/x/");
    }
}
