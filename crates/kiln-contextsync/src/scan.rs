//! The client's side: which ignore file applies, and the walk of the context.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kiln_ignore::PatternMatcher;

use crate::{Entry, Error, Kind, Result, MAX_ENTRIES, MAX_IGNORE_FILE_BYTES};

/// The `.dockerignore` that applies to a context, as the client read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoreSpec {
    /// The context's `.dockerignore` (its path relative to the context root), when that is
    /// the file chosen. [`scan`] always keeps this entry, even when its own patterns exclude
    /// it: the daemon's frontend reads it again from the mirror.
    pub file: Option<String>,
    /// The Dockerfile's own ignore file, `<name>.dockerignore` beside the Dockerfile (its path
    /// on the client), when that is the file chosen. The daemon's frontend reads it beside
    /// the Dockerfile the daemon writes, not from the mirror: the client sends [`content`]
    /// for the daemon to write there as `<name>.dockerignore`.
    ///
    /// [`content`]: IgnoreSpec::content
    pub beside_dockerfile: Option<PathBuf>,
    /// Its bytes as read.
    pub content: Vec<u8>,
    /// Its patterns (`kiln_ignore::read_ignore_file`).
    pub patterns: Vec<String>,
}

impl IgnoreSpec {
    /// No ignore file: everything is kept (named `--build-context` directories).
    pub fn none() -> IgnoreSpec {
        IgnoreSpec::default()
    }

    /// Patterns given directly, with no file to keep.
    pub fn from_patterns(patterns: Vec<String>) -> IgnoreSpec {
        IgnoreSpec {
            file: None,
            beside_dockerfile: None,
            content: Vec::new(),
            patterns,
        }
    }

    /// The ignore file on the client, for messages.
    fn path_on_client(&self, context: &Path) -> PathBuf {
        match &self.beside_dockerfile {
            Some(p) => p.clone(),
            None => context.join(self.file.as_deref().unwrap_or(".dockerignore")),
        }
    }
}

/// Reads the ignore file the Dockerfile frontend will choose for `context` (its
/// `read_ignore_patterns`), as BuildKit does: `<name>.dockerignore` in the directory of
/// `dockerfile` (`<name>` its file name; the engine serves that directory to the frontend),
/// else `.dockerignore` at the context root. Neither there: an empty spec. A relative
/// `dockerfile` is relative to the current directory, as `-f` is.
///
/// The frontend reads through a symlink (inside its directory); a remote build would then
/// need the link's target too, so a symlinked ignore file is refused with a clear error
/// instead.
pub fn read_ignore(context: &Path, dockerfile: &Path) -> Result<IgnoreSpec> {
    if let Some(beside) = read_beside_ignore(dockerfile)? {
        return Ok(beside);
    }
    let rel = ".dockerignore";
    Ok(match read_ignore_file(&context.join(rel))? {
        Some((content, patterns)) => IgnoreSpec {
            file: Some(rel.to_owned()),
            beside_dockerfile: None,
            content,
            patterns,
        },
        None => IgnoreSpec::none(),
    })
}

/// The Dockerfile's own ignore file, `<name>.dockerignore` beside `dockerfile`, when there.
/// A remote build's client sends its content for the daemon to write beside the Dockerfile
/// the daemon writes, also when the context is a URL the daemon fetches and only the
/// Dockerfile is local.
pub fn read_beside_ignore(dockerfile: &Path) -> Result<Option<IgnoreSpec>> {
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".to_owned());
    let dir = match dockerfile.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let path = dir.join(format!("{name}.dockerignore"));
    Ok(
        read_ignore_file(&path)?.map(|(content, patterns)| IgnoreSpec {
            file: None,
            beside_dockerfile: Some(path),
            content,
            patterns,
        }),
    )
}

/// The bytes and patterns of the ignore file `path`, `None` when it does not exist.
fn read_ignore_file(path: &Path) -> Result<Option<(Vec<u8>, Vec<String>)>> {
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("stat", path, e)),
    };
    let fail = |reason: String| Error::IgnoreFile {
        file: path.to_owned(),
        reason,
    };
    if md.file_type().is_symlink() {
        return Err(fail(
            "is a symlink: a remote build needs the ignore file itself (replace the link by a \
             copy)"
                .to_owned(),
        ));
    }
    if !md.is_file() {
        return Err(fail("not a regular file".to_owned()));
    }
    let mut content = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_IGNORE_FILE_BYTES + 1).read_to_end(&mut content))
        .map_err(|e| Error::io("read", path, e))?;
    if content.len() as u64 > MAX_IGNORE_FILE_BYTES {
        return Err(fail(format!(
            "larger than {} MiB",
            MAX_IGNORE_FILE_BYTES >> 20
        )));
    }
    let patterns = kiln_ignore::read_ignore_file(&String::from_utf8_lossy(&content))
        .map_err(|e| fail(e.to_string()))?;
    Ok(Some((content, patterns)))
}

/// Walks `context` and returns its entries sorted by path, the root first (path `""`).
///
/// Keeps exactly what the engine's walk of a local source keeps: a path is left out when
/// `matches_or_parent_matches` says so, and an excluded directory is still walked when a `!`
/// pattern could re-include something below it (the directory itself is then not an entry,
/// as in the engine; the mirror makes it). Symlinks are not followed. Devices, FIFOs and
/// sockets are skipped. A kept path that is not UTF-8 is an error naming it.
pub fn scan(context: &Path, ignore: &IgnoreSpec) -> Result<Vec<Entry>> {
    let matcher = PatternMatcher::new(&ignore.patterns).map_err(|e| Error::IgnoreFile {
        file: ignore.path_on_client(context),
        reason: e.to_string(),
    })?;
    let root_md = fs::metadata(context).map_err(|e| Error::io("stat", context, e))?;
    if !root_md.is_dir() {
        return Err(Error::io(
            "read context dir",
            context,
            std::io::Error::from(std::io::ErrorKind::NotADirectory),
        ));
    }
    let mut out = vec![entry(String::new(), &root_md, None)];
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            context.to_path_buf()
        } else {
            context.join(&dir)
        };
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(|e| Error::io("read context dir", &abs, e))?
            .map(|e| e.map(|e| (e.file_name(), e)))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("read context dir", &abs, e))?;
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (n, dirent) in names {
            let lossy = n.to_string_lossy();
            let rel = if dir.is_empty() {
                lossy.to_string()
            } else {
                format!("{dir}/{lossy}")
            };
            // `lstat` relative to the open directory, as the engine does.
            let md = dirent
                .metadata()
                .map_err(|e| Error::io("stat", abs.join(&n), e))?;
            let is_dir = md.is_dir();
            let forced = ignore.file.as_deref() == Some(rel.as_str());
            let excluded = !forced
                && !matcher.is_empty()
                && matcher
                    .matches_or_parent_matches(&rel)
                    .map_err(|e| Error::IgnoreFile {
                        file: ignore.path_on_client(context),
                        reason: e.to_string(),
                    })?;
            if excluded {
                if is_dir && matcher.could_reinclude_under(&rel) {
                    subdirs.push(rel);
                }
                continue;
            }
            if n.to_str().is_none() {
                return Err(Error::NonUtf8 { path: abs.join(&n) });
            }
            let ft = md.file_type();
            let target = if ft.is_symlink() {
                let p = abs.join(&n);
                let t = fs::read_link(&p).map_err(|e| Error::io("readlink", &p, e))?;
                match t.into_os_string().into_string() {
                    Ok(t) => Some(t),
                    Err(_) => return Err(Error::NonUtf8 { path: p }),
                }
            } else if ft.is_dir() || ft.is_file() {
                None
            } else {
                // Devices, FIFOs, sockets: not in a context's layer, never made by the daemon.
                continue;
            };
            if is_dir {
                subdirs.push(rel.clone());
            }
            out.push(entry(rel, &md, target));
            if out.len() > MAX_ENTRIES {
                return Err(Error::TooManyEntries { limit: MAX_ENTRIES });
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn entry(path: String, md: &fs::Metadata, target: Option<String>) -> Entry {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    Entry {
        path,
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == Kind::File { md.len() } else { 0 },
        mtime_sec: md.mtime(),
        // The kernel keeps it below a second.
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
        target,
    }
}

/// Opens file `path` of `context` to send its bytes to a daemon that asked for it. Only a file
/// of `entries` (the client's own [`scan`]) is opened, so a daemon cannot have the client send
/// a file `.dockerignore` excludes or one outside the context ([`Error::NotListed`]). The last
/// component is not followed and a FIFO put there since the scan does not block; anything but
/// a regular file is [`Error::NotAFile`].
pub fn open_for_send(context: &Path, entries: &[Entry], path: &str) -> Result<fs::File> {
    let listed = entries
        .binary_search_by(|e| e.path.as_str().cmp(path))
        .ok()
        .map(|i| &entries[i]);
    if !listed.is_some_and(|e| e.kind == Kind::File) {
        return Err(Error::NotListed {
            path: path.chars().take(200).collect(),
        });
    }
    let p = context.join(path);
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc_flags())
        .open(&p)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                Error::NotAFile { path: p.clone() }
            }
            _ => Error::io("open", &p, e),
        })?;
    let md = file.metadata().map_err(|e| Error::io("stat", &p, e))?;
    if !md.is_file() {
        return Err(Error::NotAFile { path: p });
    }
    Ok(file)
}

/// `O_NOFOLLOW | O_NONBLOCK`: a symlink is refused, a FIFO opens without waiting for a writer
/// (and is then refused). Non-blocking mode does not change reads of a regular file.
fn libc_flags() -> i32 {
    (nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits()
}
