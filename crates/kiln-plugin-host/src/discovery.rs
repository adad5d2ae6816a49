//! Where plugins are looked for.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Colon-separated extra plugin directories.
pub const PLUGIN_PATH_ENV: &str = "KILN_PLUGIN_PATH";

/// The ordered list of plugin directories. Earlier directories win when two plugins share a name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// Exactly these directories, in this order (made absolute).
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut path = SearchPath::default();
        for d in dirs {
            path.push(d);
        }
        path
    }

    /// kiln's standard order: `<exe_dir>/plugins`, `<exe_dir>/../lib/kiln/plugins`, each entry of
    /// `$KILN_PLUGIN_PATH`, then `plugin_dirs` (`--plugin-dir`).
    pub fn standard(plugin_dirs: &[PathBuf]) -> Self {
        let exe = std::env::current_exe().ok();
        let exe_dir = exe.as_deref().and_then(Path::parent);
        let env = std::env::var_os(PLUGIN_PATH_ENV);
        SearchPath::from_parts(exe_dir, env.as_deref(), plugin_dirs)
    }

    /// The standard order from explicit parts (what [`SearchPath::standard`] reads from the
    /// process).
    pub fn from_parts(
        exe_dir: Option<&Path>,
        env: Option<&OsStr>,
        plugin_dirs: &[PathBuf],
    ) -> Self {
        let mut dirs = Vec::new();
        if let Some(exe_dir) = exe_dir {
            dirs.push(exe_dir.join("plugins"));
            dirs.push(exe_dir.join("../lib/kiln/plugins"));
        }
        if let Some(env) = env {
            dirs.extend(std::env::split_paths(env).filter(|p| !p.as_os_str().is_empty()));
        }
        dirs.extend(plugin_dirs.iter().cloned());
        SearchPath::new(dirs)
    }

    /// Appends a directory (made absolute; duplicates are ignored).
    pub fn push(&mut self, dir: PathBuf) {
        let dir = absolute(&dir);
        if !self.dirs.contains(&dir) {
            self.dirs.push(dir);
        }
    }

    /// The directories, in search order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

/// An absolute, lexically normalized path (dlopen must never search its own library path, and
/// messages should show one stable name per file).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The `*.so` files of `dir`, sorted by name; `Ok(empty)` when the directory does not exist.
pub(crate) fn candidates(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension() == Some(OsStr::new("so")) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_order() {
        let p = SearchPath::from_parts(
            Some(Path::new("/opt/kiln/bin")),
            Some(OsStr::new("/a::/b")),
            &[PathBuf::from("/c"), PathBuf::from("/a")],
        );
        let dirs: Vec<_> = p.dirs().iter().map(|d| d.display().to_string()).collect();
        assert_eq!(
            dirs,
            [
                "/opt/kiln/bin/plugins",
                "/opt/kiln/lib/kiln/plugins",
                "/a",
                "/b",
                "/c"
            ]
        );
    }

    #[test]
    fn relative_dirs_become_absolute() {
        let p = SearchPath::new([PathBuf::from("rel/./x/../plugins")]);
        let d = &p.dirs()[0];
        assert!(d.is_absolute());
        assert!(d.ends_with("rel/plugins"), "{}", d.display());
    }

    #[test]
    fn missing_dir_has_no_candidates() {
        assert!(candidates(Path::new("/nonexistent/kiln/plugins"))
            .unwrap()
            .is_empty());
    }
}
