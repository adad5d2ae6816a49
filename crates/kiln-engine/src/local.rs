//! Local directory sources (the build context): content-based cache keys and the copy of the
//! selected files into a layer. An unchanged file costs one `stat`: its content hash comes from
//! the stat cache when inode, size, mtime and ctime are unchanged.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_cache::{CacheIndex, StatRecord};
use kiln_graph::LocalSource;
use kiln_ignore::PatternMatcher;
use kiln_snapshot::{LayerId, Store};
use kiln_types::{Digest, Sha256Writer};

use crate::fileop::set_mtime;
use crate::Error;

/// One selected entry of a context.
struct Entry {
    rel: String,
    md: fs::Metadata,
}

fn walk(root: &Path, src: &LocalSource) -> Result<Vec<Entry>, Error> {
    let matcher = PatternMatcher::new(&src.exclude_patterns).map_err(|e| Error::Context {
        context: src.name.clone(),
        message: format!("invalid .dockerignore pattern: {e}"),
    })?;
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(|e| Error::io("read context dir", &abs, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut subdirs = Vec::new();
        for n in names {
            let name = n.to_string_lossy();
            let rel = if dir.is_empty() {
                name.into_owned()
            } else {
                format!("{dir}/{name}")
            };
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            let is_dir = md.is_dir();
            let excluded = !matcher.is_empty()
                && matcher
                    .matches_or_parent_matches(&rel)
                    .map_err(|e| Error::Context {
                        context: src.name.clone(),
                        message: e.to_string(),
                    })?;
            if excluded {
                // An excluded directory may still hold re-included files (`!` patterns).
                if is_dir && matcher.could_reinclude_under(&rel) {
                    subdirs.push(rel);
                }
                continue;
            }
            if is_dir {
                subdirs.push(rel.clone());
            }
            out.push(Entry { rel, md });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The content hash of the selected part of `root`: paths, types, modes, sizes, file contents
/// and link targets, but not mtimes, so a `touch` does not invalidate the cache (as BuildKit).
/// With it, each entry's own digest (path → type, mode, size, content or link target), which
/// `--explain-cache` keeps to name the file an edit changed.
pub fn content_key_with_entries(
    root: &Path,
    src: &LocalSource,
    index: &CacheIndex,
) -> Result<(Digest, Vec<(String, Digest)>), Error> {
    let mut entries = Vec::new();
    let key = hash_entries(root, src, index, walk(root, src)?, Some(&mut entries))?;
    Ok((key, entries))
}

/// Whether context path `rel` is picked by one of the COPY sources `selectors` (each a path
/// whose components may hold wildcards; a picked directory brings everything under it).
pub fn selection_matcher(selectors: &[String]) -> impl Fn(&str) -> bool {
    let patterns: Vec<Vec<String>> = selectors
        .iter()
        .map(|s| {
            s.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect()
        })
        .collect();
    move |rel: &str| {
        let comps: Vec<&str> = rel.split('/').collect();
        patterns.iter().any(|p| {
            comps.len() >= p.len()
                && p.iter()
                    .zip(&comps)
                    .all(|(pat, c)| crate::fileop::glob_match(pat, c))
        })
    }
}

/// The content hash of only the paths that COPY sources `selectors` pick from the context, so
/// that editing one file does not invalidate a COPY of other files (BuildKit's content-based
/// cache keys for COPY).
pub fn selection_key(
    root: &Path,
    src: &LocalSource,
    selectors: &[String],
    index: &CacheIndex,
) -> Result<Digest, Error> {
    let selected = selection_matcher(selectors);
    let entries = walk(root, src)?
        .into_iter()
        .filter(|e| selected(&e.rel))
        .collect();
    let mut h = Sha256Writer::default();
    h.update(b"kiln.selection.v1\n");
    for s in selectors {
        h.update(s.as_bytes());
        h.update(b"\n");
    }
    h.update(hash_entries(root, src, index, entries, None)?.as_bytes());
    Ok(h.finish())
}

fn hash_entries(
    root: &Path,
    src: &LocalSource,
    index: &CacheIndex,
    entries: Vec<Entry>,
    mut each: Option<&mut Vec<(String, Digest)>>,
) -> Result<Digest, Error> {
    let root_id = root.display().to_string();
    let keys: Vec<String> = entries
        .iter()
        .filter(|e| e.md.is_file())
        .map(|e| format!("{root_id}\0{}", e.rel))
        .collect();
    let cached = index.stat_get_many(&keys)?;
    let mut cached = keys.into_iter().zip(cached);
    let mut updates = Vec::new();
    let mut h = Sha256Writer::default();
    h.update(b"kiln.local.v1\n");
    for p in &src.include_patterns {
        h.update(format!("include {p}\n").as_bytes());
    }
    for e in &entries {
        let md = &e.md;
        let kind = if md.is_dir() {
            "d"
        } else if md.file_type().is_symlink() {
            "l"
        } else if md.is_file() {
            "f"
        } else {
            "o"
        };
        // The entry's bytes of the key, gathered so that `each` can get their digest too.
        let mut chunk = format!(
            "{}\0{kind}\0{:o}\0{}\0",
            e.rel,
            md.mode() & 0o7777,
            md.len()
        )
        .into_bytes();
        if md.is_file() {
            let (key, rec) = cached.next().expect("one stat key per file entry");
            let fresh = |r: &StatRecord| {
                r.ino == md.ino()
                    && r.size == md.len()
                    && r.mtime_ns == nanos(md.mtime(), md.mtime_nsec())
                    && r.ctime_ns == nanos(md.ctime(), md.ctime_nsec())
            };
            let hash = match rec.filter(fresh) {
                Some(r) => r.hash,
                None => {
                    let path = root.join(&e.rel);
                    let hash = hash_file(&path)?;
                    updates.push((
                        key,
                        StatRecord {
                            ino: md.ino(),
                            size: md.len(),
                            mtime_ns: nanos(md.mtime(), md.mtime_nsec()),
                            ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
                            hash,
                        },
                    ));
                    hash
                }
            };
            chunk.extend_from_slice(hash.as_bytes());
        } else if md.file_type().is_symlink() {
            let path = root.join(&e.rel);
            let t = fs::read_link(&path).map_err(|e| Error::io("readlink", &path, e))?;
            chunk.extend_from_slice(t.to_string_lossy().as_bytes());
        }
        chunk.push(b'\n');
        h.update(&chunk);
        if let Some(each) = each.as_deref_mut() {
            each.push((e.rel.clone(), Digest::of(&chunk)));
        }
    }
    index.stat_put_many(&updates)?;
    Ok(h.finish())
}

fn nanos(s: i64, ns: i64) -> i128 {
    i128::from(s) * 1_000_000_000 + i128::from(ns)
}

fn hash_file(path: &Path) -> Result<Digest, Error> {
    let mut f = fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let mut h = Sha256Writer::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Copies the selected files into a new layer: modes and mtimes kept, owned by root (as docker
/// sends a context).
pub fn materialize(root: &Path, src: &LocalSource, store: &Store) -> Result<LayerId, Error> {
    let entries = walk(root, src)?;
    let layer = store.new_layer()?;
    let dest_root: PathBuf = layer.fs_dir();
    let mut dirs = Vec::new();
    for e in &entries {
        let from = root.join(&e.rel);
        let to = dest_root.join(&e.rel);
        if let Some(parent) = to.parent() {
            // Parents of re-included files whose directory entry was excluded.
            fs::create_dir_all(parent).map_err(|err| Error::io("mkdir", parent, err))?;
        }
        let ft = e.md.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&to).map_err(|err| Error::io("mkdir", &to, err))?;
            dirs.push((to.clone(), e.md.clone()));
        } else if ft.is_symlink() {
            let t = fs::read_link(&from).map_err(|err| Error::io("readlink", &from, err))?;
            std::os::unix::fs::symlink(&t, &to).map_err(|err| Error::io("symlink", &to, err))?;
            let _ = std::os::unix::fs::lchown(&to, Some(0), Some(0));
            continue;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(|err| Error::io("copy", &from, err))?;
        } else {
            continue;
        }
        let _ = std::os::unix::fs::lchown(&to, Some(0), Some(0));
        fs::set_permissions(&to, fs::Permissions::from_mode(e.md.mode() & 0o7777))
            .map_err(|err| Error::io("chmod", &to, err))?;
        if ft.is_file() {
            set_mtime(&to, &e.md);
        }
    }
    // Directory mtimes last: creating their children changed them.
    for (d, md) in dirs.iter().rev() {
        set_mtime(d, md);
    }
    Ok(layer.commit()?)
}
