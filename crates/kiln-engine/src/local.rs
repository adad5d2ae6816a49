//! Local directory sources (the build context): content-based cache keys and the layer of the
//! selected files.
//!
//! A context is walked once per build ([`scan`]), and that one walk serves the source's key and
//! every COPY selection key. An unchanged file costs one `stat`: its content hash comes from the
//! stat cache (read whole, by one range read) when inode, size, mtime and ctime are unchanged.
//! A file that must be hashed is read once, into a staged copy beside the store's layers while
//! it is hashed, so that the layer made from it holds the very bytes its key was made of.
//! The layer is built from the last one made of the same context: unchanged files are hard
//! links to it (layers never change), changed ones are the staged copies.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_cache::{CacheIndex, ContextFile, ContextLayer, StatRecord};
use kiln_graph::LocalSource;
use kiln_ignore::PatternMatcher;
use kiln_snapshot::{LayerId, Store};
use kiln_types::{Digest, Sha256Writer};

use crate::fileop::at;
use crate::Error;

/// One selected entry of a context, as the walk found it.
struct Entry {
    rel: String,
    md: fs::Metadata,
}

/// Walks `root` as `src` selects it: every selected entry, sorted by path. Directories are read
/// on up to 4 threads (a shared queue of directories still to read): a no-op build's time is
/// mostly this walk's `stat`s (20,000 of them for the bench's context, a third of its CPU in
/// the kernel's name lookups), which a second core halves.
fn walk(root: &Path, src: &LocalSource) -> Result<Vec<Entry>, Error> {
    let matcher = PatternMatcher::new(&src.exclude_patterns).map_err(|e| Error::Context {
        context: src.name.clone(),
        message: format!("invalid .dockerignore pattern: {e}"),
    })?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let queue = WalkQueue {
        state: std::sync::Mutex::new(WalkState {
            pending: vec![String::new()],
            busy: 0,
            failed: false,
        }),
        changed: std::sync::Condvar::new(),
    };
    let work = || -> Result<Vec<Entry>, Error> {
        let mut out = Vec::new();
        while let Some(dir) = queue.next() {
            match read_context_dir(root, &dir, &matcher, src) {
                Ok((entries, subdirs)) => {
                    out.extend(entries);
                    queue.done(subdirs, false);
                }
                Err(e) => {
                    queue.done(Vec::new(), true);
                    return Err(e);
                }
            }
        }
        Ok(out)
    };
    let mut out = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut out = work();
        for h in helpers {
            // A helper that panicked: the scope re-raises its panic when it ends.
            let Ok(theirs) = h.join() else { continue };
            match (&mut out, theirs) {
                (Ok(out), Ok(theirs)) => out.extend(theirs),
                (Ok(_), Err(e)) => out = Err(e),
                (Err(_), _) => {}
            }
        }
        out
    })?;
    out.sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The directories of a context still to read, shared by the threads of [`walk`].
struct WalkQueue {
    state: std::sync::Mutex<WalkState>,
    changed: std::sync::Condvar,
}

struct WalkState {
    pending: Vec<String>,
    /// Directories being read: until none is, an empty queue may still grow.
    busy: usize,
    /// A thread failed: the others stop.
    failed: bool,
}

impl WalkQueue {
    /// The next directory to read; None when the walk is over (or failed).
    fn next(&self) -> Option<String> {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if st.failed {
                return None;
            }
            if let Some(dir) = st.pending.pop() {
                st.busy += 1;
                return Some(dir);
            }
            if st.busy == 0 {
                return None;
            }
            st = self
                .changed
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// A directory was read: its subdirectories join the queue.
    fn done(&self, subdirs: Vec<String>, failed: bool) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.busy -= 1;
        st.failed |= failed;
        st.pending.extend(subdirs);
        self.changed.notify_all();
    }
}

/// One directory `dir` (relative to `root`) of a context: its selected entries, and the
/// subdirectories to read next.
fn read_context_dir(
    root: &Path,
    dir: &str,
    matcher: &PatternMatcher,
    src: &LocalSource,
) -> Result<(Vec<Entry>, Vec<String>), Error> {
    let abs = if dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir)
    };
    let mut out = Vec::new();
    let mut subdirs = Vec::new();
    for entry in fs::read_dir(&abs).map_err(|e| Error::io("read context dir", &abs, e))? {
        let Ok(entry) = entry else { continue };
        let n = entry.file_name();
        let name = n.to_string_lossy();
        let rel = if dir.is_empty() {
            name.into_owned()
        } else {
            format!("{dir}/{name}")
        };
        // Stat relative to the directory's open descriptor (as `lstat`, symlinks not
        // followed): the kernel looks up one name, not every component of the path again
        // (a fifth of a no-op build's CPU went to those lookups).
        let md = entry
            .metadata()
            .map_err(|e| Error::io("stat", &root.join(&rel), e))?;
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
    Ok((out, subdirs))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// One entry of a scanned context: what its key is made of, and where its bytes are.
struct Scanned {
    rel: String,
    kind: Kind,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    /// A file's content hash.
    hash: Option<Digest>,
    /// A symlink's target.
    target: Option<String>,
    /// A file read during the scan: its copy in the staging directory (owner 0:0, mode and
    /// mtime already the layer's).
    staged: Option<PathBuf>,
}

impl Scanned {
    /// The entry's bytes of a key (the same bytes whichever key it is part of).
    fn chunk(&self) -> Vec<u8> {
        let kind = match self.kind {
            Kind::Dir => "d",
            Kind::Symlink => "l",
            Kind::File => "f",
            Kind::Other => "o",
        };
        let mut chunk =
            format!("{}\0{kind}\0{:o}\0{}\0", self.rel, self.mode, self.size).into_bytes();
        if let Some(h) = &self.hash {
            chunk.extend_from_slice(h.as_bytes());
        }
        if let Some(t) = &self.target {
            chunk.extend_from_slice(t.as_bytes());
        }
        chunk.push(b'\n');
        chunk
    }

    fn mtime_ns(&self) -> i128 {
        nanos(self.mtime.0, self.mtime.1)
    }
}

/// One walk of a context for one build: every selected entry with its hash, and the staged
/// copies of the files that had to be read. The staging directory goes when the scan does.
pub(crate) struct Scan {
    root: PathBuf,
    /// The context's name, for errors.
    name: String,
    entries: Vec<Scanned>,
    /// The context directory's own mtime: the layer's root gets it (a `COPY . /dir` that
    /// makes `/dir` gives it that time).
    root_mtime: (i64, i64),
    stage: Option<PathBuf>,
}

impl Drop for Scan {
    fn drop(&mut self) {
        if let Some(dir) = &self.stage {
            // Best effort: what is left under tmp/ goes when the next kiln opens the store.
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The stat cache's and the context layer record's name for a context directory.
fn context_id(root: &Path) -> String {
    root.display().to_string()
}

/// Walks `root` as `src` selects it, hashing what the stat cache does not know. Files read are
/// staged (under the store's `tmp/`) as they are hashed.
pub(crate) fn scan(
    root: &Path,
    src: &LocalSource,
    store: &Store,
    index: &CacheIndex,
) -> Result<Scan, Error> {
    let walked = walk(root, src)?;
    let root_md = fs::metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let prefix = format!("{}\0", context_id(root));
    // In the walk's order (sorted), merged with the index's: no map of every record.
    let cached = index.stat_match(&prefix, walked.iter().map(|e| e.rel.as_str()))?;
    let mut scan = Scan {
        root: root.to_owned(),
        name: src.name.clone(),
        entries: Vec::with_capacity(walked.len()),
        root_mtime: (root_md.mtime(), root_md.mtime_nsec()),
        stage: None,
    };
    let mut updates = Vec::new();
    // Files the stat cache does not know: read after the walk, on several threads.
    // Only the index and the stamp: a cold context is 20,000 of them (the peak RSS of a
    // build is held under 64 MiB).
    let mut to_read: Vec<(usize, StatRecord)> = Vec::new();
    for (e, cached) in walked.into_iter().zip(cached) {
        let md = &e.md;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        let mut s = Scanned {
            rel: e.rel,
            kind,
            mode: md.mode() & 0o7777,
            size: md.len(),
            mtime: (md.mtime(), md.mtime_nsec()),
            hash: None,
            target: None,
            staged: None,
        };
        match kind {
            Kind::File => {
                let stamp = StatRecord {
                    ino: md.ino(),
                    size: md.len(),
                    mtime_ns: nanos(md.mtime(), md.mtime_nsec()),
                    ctime_ns: nanos(md.ctime(), md.ctime_nsec()),
                    hash: Digest::of(b""),
                };
                let fresh = cached.filter(|r| {
                    (r.ino, r.size, r.mtime_ns, r.ctime_ns)
                        == (stamp.ino, stamp.size, stamp.mtime_ns, stamp.ctime_ns)
                });
                match fresh {
                    Some(r) => s.hash = Some(r.hash),
                    None => to_read.push((scan.entries.len(), stamp)),
                }
            }
            Kind::Symlink => {
                let path = root.join(&s.rel);
                let t = fs::read_link(&path).map_err(|e| Error::io("readlink", &path, e))?;
                s.target = Some(t.to_string_lossy().into_owned());
            }
            Kind::Dir | Kind::Other => {}
        }
        scan.entries.push(s);
    }
    if !to_read.is_empty() {
        let dir = scan.stage.insert(store.temp_dir("context")?).clone();
        // In batches: the results of one at a time are held (a build's peak RSS stays under
        // 64 MiB; 20,000 results at once were 5 MiB more).
        for batch in to_read.chunks(STAGE_BATCH) {
            let read = stage_all(root, &src.name, &dir, &scan.entries, batch)?;
            for (&(i, ref stamp), read) in batch.iter().zip(read) {
                let s = &mut scan.entries[i];
                s.hash = Some(read.hash);
                s.size = read.len;
                s.staged = Some(staged_name(&dir, i));
                // A file written while it was read is hashed again next time.
                if read.unchanged_since(stamp) {
                    updates.push((
                        format!("{prefix}{}", s.rel),
                        StatRecord {
                            hash: read.hash,
                            ..*stamp
                        },
                    ));
                }
            }
        }
    }
    index.stat_put_many(&updates)?;
    Ok(scan)
}

/// How many files [`stage_all`] reads at a time.
const STAGE_BATCH: usize = 2048;

/// Stages and hashes the entries `todo` (indices into `entries`) into `dir`, each under its
/// index, on up to 4 threads: a cold context of 20,000 files is as many file creations and
/// reads, which a second core halves (the machine this is measured on has two). Results in
/// the order of `todo`, each in a slot of its own (no list is gathered and copied: a build's
/// peak RSS is held under 64 MiB); the first error fails all.
fn stage_all(
    root: &Path,
    name: &str,
    dir: &Path,
    entries: &[Scanned],
    todo: &[(usize, StatRecord)],
) -> Result<Vec<FileRead>, Error> {
    let stage_one = |i: usize| -> Result<FileRead, Error> {
        let e = &entries[i];
        stage_file(&root.join(&e.rel), &staged_name(dir, i), e)
    };
    // A few files (an edit) are not worth a thread.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(todo.len() / 64 + 1);
    if threads <= 1 {
        return todo.iter().map(|(i, _)| stage_one(*i)).collect();
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::OnceLock;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<OnceLock<Result<FileRead, Error>>> =
        (0..todo.len()).map(|_| OnceLock::new()).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let (Some((i, _)), Some(slot)) = (todo.get(n), slots.get(n)) else {
                        break;
                    };
                    let r = stage_one(*i);
                    failed.fetch_or(r.is_err(), Ordering::Relaxed);
                    let _ = slot.set(r);
                }
            });
        }
    });
    // A slot left empty: another file failed first (its error is returned), or a worker
    // panicked (the first file it left unread is named).
    let mut missing = None;
    let mut read = Vec::with_capacity(todo.len());
    for (slot, (i, _)) in slots.into_iter().zip(todo) {
        match slot.into_inner() {
            Some(r) => read.push(r?),
            None => {
                missing.get_or_insert(*i);
            }
        }
    }
    match missing {
        Some(i) => Err(Error::Context {
            context: name.to_owned(),
            message: format!("{}: not read (a staging thread stopped)", entries[i].rel),
        }),
        None => Ok(read),
    }
}

/// Where entry `i` of a scan is staged in `dir`.
fn staged_name(dir: &Path, i: usize) -> PathBuf {
    dir.join(i.to_string())
}

/// What reading a context file found.
struct FileRead {
    hash: Digest,
    len: u64,
    /// The file's own stat after the read: inode, size, mtime and ctime (ns).
    after: (u64, u64, i128, i128),
}

impl FileRead {
    fn unchanged_since(&self, before: &StatRecord) -> bool {
        self.after == (before.ino, before.size, before.mtime_ns, before.ctime_ns)
    }
}

/// Reads `from` once, writing its bytes to the new file `to` as they are hashed; `to` gets
/// owner 0:0 (as docker sends a context), the entry's mode and mtime.
fn stage_file(from: &Path, to: &Path, e: &Scanned) -> Result<FileRead, Error> {
    let mut src = fs::File::open(from).map_err(|err| Error::io("read", from, err))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|err| Error::io("create", to, err))?;
    let (hash, len) = copy_hashing(&mut src, from, &mut dst, to)?;
    let md = src.metadata().map_err(|err| Error::io("stat", from, err))?;
    let after = (
        md.ino(),
        md.len(),
        nanos(md.mtime(), md.mtime_nsec()),
        nanos(md.ctime(), md.ctime_nsec()),
    );
    let _ = std::os::unix::fs::fchown(&dst, Some(0), Some(0));
    dst.set_permissions(fs::Permissions::from_mode(e.mode))
        .map_err(|err| Error::io("chmod", to, err))?;
    dst.set_modified(system_time(e.mtime))
        .map_err(|err| Error::io("set mtime of", to, err))?;
    Ok(FileRead { hash, len, after })
}

fn copy_hashing(
    src: &mut fs::File,
    from: &Path,
    dst: &mut fs::File,
    to: &Path,
) -> Result<(Digest, u64), Error> {
    thread_local! {
        // One buffer per thread, not per file: 256 KiB is an mmap and munmap of its own, and a
        // cold context is 20,000 files.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 256 * 1024]);
    }
    BUF.with_borrow_mut(|buf| {
        let mut h = Sha256Writer::default();
        loop {
            let n = src.read(buf).map_err(|e| Error::io("read", from, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            dst.write_all(&buf[..n])
                .map_err(|e| Error::io("write", to, e))?;
        }
        let len = h.len();
        Ok((h.finish(), len))
    })
}

fn system_time((s, ns): (i64, i64)) -> std::time::SystemTime {
    std::time::UNIX_EPOCH
        + std::time::Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
}

/// The content hash of the selected part of the context: paths, types, modes, sizes, file
/// contents and link targets, but not mtimes, so a `touch` does not invalidate the cache (as
/// BuildKit). With it, each entry's own digest (path → type, mode, size, content or link
/// target), which `--explain-cache` keeps to name the file an edit changed.
pub(crate) fn content_key_with_entries(
    scan: &Scan,
    src: &LocalSource,
) -> (Digest, Vec<(String, Digest)>) {
    let mut each = Vec::with_capacity(scan.entries.len());
    let key = hash_entries(src, scan.entries.iter(), Some(&mut each));
    (key, each)
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
pub(crate) fn selection_key(scan: &Scan, src: &LocalSource, selectors: &[String]) -> Digest {
    let selected = selection_matcher(selectors);
    let mut h = Sha256Writer::default();
    h.update(b"kiln.selection.v1\n");
    for s in selectors {
        h.update(s.as_bytes());
        h.update(b"\n");
    }
    let entries = scan.entries.iter().filter(|e| selected(&e.rel));
    h.update(hash_entries(src, entries, None).as_bytes());
    h.finish()
}

fn hash_entries<'a>(
    src: &LocalSource,
    entries: impl Iterator<Item = &'a Scanned>,
    mut each: Option<&mut Vec<(String, Digest)>>,
) -> Digest {
    let mut h = Sha256Writer::default();
    h.update(b"kiln.local.v1\n");
    for p in &src.include_patterns {
        h.update(format!("include {p}\n").as_bytes());
    }
    for e in entries {
        let chunk = e.chunk();
        h.update(&chunk);
        if let Some(each) = each.as_deref_mut() {
            each.push((e.rel.clone(), Digest::of(&chunk)));
        }
    }
    h.finish()
}

fn nanos(s: i64, ns: i64) -> i128 {
    i128::from(s) * 1_000_000_000 + i128::from(ns)
}

/// The layer of a scanned context: modes and mtimes kept, owned by root (as docker sends a
/// context). A file is its staged copy (moved in), else a hard link to the last layer made of
/// this context when that holds the same bytes, mode and mtime, else a copy from the context
/// (which must still hash as it did when the key was made).
pub(crate) fn materialize(
    scan: &Scan,
    store: &Store,
    index: &CacheIndex,
) -> Result<LayerId, Error> {
    let id = context_id(&scan.root);
    let prev = index
        .context_layer(&id)?
        .filter(|p| store.layer_dir(&p.layer).is_dir());
    let prev_files: HashMap<&str, &ContextFile> = prev
        .iter()
        .flat_map(|p| &p.files)
        .map(|f| (f.rel.as_str(), f))
        .collect();
    let prev_dir = prev.as_ref().map(|p| store.layer_dir(&p.layer));
    let layer = store.new_layer()?;
    let dest_root: PathBuf = layer.fs_dir();
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut linked_prev = false;
    let mut made: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // The layer's size counted alone, as a walk would find it (see `record_total` below):
    // regular files and symlinks here, directories once placed. None once a directory was
    // made that is not in `dirs` (the parents of a re-included file).
    let mut total: Option<u64> = Some(0);
    // Placed once every directory is made, on several threads.
    let mut to_place: Vec<&Scanned> = Vec::new();
    for e in &scan.entries {
        let to = dest_root.join(&e.rel);
        // Parents of re-included files whose directory entry was excluded (entries come in
        // path order, so a selected directory is made before what it holds).
        if let Some((parent, _)) = e.rel.rsplit_once('/') {
            if !made.contains(parent) {
                let p = dest_root.join(parent);
                fs::create_dir_all(&p).map_err(|err| Error::io("mkdir", &p, err))?;
                made.insert(parent);
                total = None;
            }
        }
        match e.kind {
            Kind::Dir => {
                fs::create_dir_all(&to).map_err(|err| Error::io("mkdir", &to, err))?;
                made.insert(&e.rel);
                let _ = std::os::unix::fs::lchown(&to, Some(0), Some(0));
                fs::set_permissions(&to, fs::Permissions::from_mode(e.mode))
                    .map_err(|err| Error::io("chmod", &to, err))?;
                dirs.push((to, e.mtime));
            }
            Kind::Symlink => {
                let t = e.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(t, &to).map_err(|err| Error::io("symlink", &to, err))?;
                total = total.map(|n| n + t.len() as u64);
                let _ = std::os::unix::fs::lchown(&to, Some(0), Some(0));
                crate::fileop::set_link_mtime(&to, e.mtime.0, e.mtime.1);
            }
            Kind::File => {
                let hash = e.hash.expect("a scanned file has its hash");
                total = total.map(|n| n + e.size);
                to_place.push(e);
                files.push(ContextFile {
                    rel: e.rel.clone(),
                    hash,
                    mode: e.mode,
                    mtime_ns: e.mtime_ns(),
                });
            }
            Kind::Other => {}
        }
    }
    // Each file: its staged copy moved in, else a link to the previous layer's, else a copy.
    // Whether one was linked to the previous layer.
    let place = |chunk: &[&Scanned]| -> Result<bool, Error> {
        let mut linked_prev = false;
        // The previous layer's and the new layer's directory of the last file linked, open:
        // the entries come in path order, so a directory's files follow one another.
        let mut open_dirs: Option<(&str, at::Dir, at::Dir)> = None;
        for e in chunk {
            let to = dest_root.join(&e.rel);
            let hash = e.hash.expect("a scanned file has its hash");
            let from_prev = prev_files
                .get(e.rel.as_str())
                .filter(|f| f.hash == hash && f.mode == e.mode && f.mtime_ns == e.mtime_ns())
                .and(prev_dir.as_ref());
            let linked = match (&e.staged, from_prev) {
                // The staged name goes at once: a measure of the store (GC after this
                // build) must not find the layer's file linked from `tmp/` too.
                (Some(staged), _) => fs::rename(staged, &to).is_ok(),
                (None, Some(dir)) => {
                    let ok = link_from_prev(&mut open_dirs, dir, &dest_root, &e.rel);
                    linked_prev |= ok;
                    ok
                }
                (None, None) => false,
            };
            if !linked {
                copy_checked(scan, e, &to, hash)?;
            }
        }
        Ok(linked_prev)
    };
    // 20,000 links (an edit) or renames (a cold build) are as many directory insertions, which
    // a second core shares; each thread takes a run of paths, so its open directories serve.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(to_place.len() / 256 + 1);
    if threads <= 1 {
        linked_prev = place(&to_place)?;
    } else {
        let run = to_place.len().div_ceil(threads);
        let placed: Vec<Result<bool, Error>> = std::thread::scope(|scope| {
            let workers: Vec<_> = to_place
                .chunks(run)
                .map(|chunk| scope.spawn(|| place(chunk)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(Error::Context {
                            context: scan.name.clone(),
                            message: "a thread placing the context's files panicked".into(),
                        })
                    })
                })
                .collect()
        });
        for p in placed {
            linked_prev |= p?;
        }
    }
    // Directory mtimes last: creating their children changed them.
    dirs.insert(0, (dest_root.clone(), scan.root_mtime));
    for (d, mtime) in dirs.iter().rev() {
        if let Ok(f) = fs::File::open(d) {
            let _ = f.set_modified(system_time(*mtime));
        }
    }
    for (d, _) in &dirs {
        total = match (total, fs::symlink_metadata(d)) {
            (Some(n), Ok(md)) => Some(n + md.len()),
            _ => None,
        };
    }
    let committed = layer.commit()?;
    if let Some(n) = total {
        // The collection after the build reads this total instead of walking the layer's
        // 20,000 files (a `stat` each, which the end of an edit's build waited for). A
        // margin keeps it an upper bound should a linked file's size differ from the one
        // scanned (a stat cache record that missed a change).
        // Best effort: without it, the layer is measured by a walk, as before.
        let _ = store.record_total(&committed, n + n / 64 + 4096);
    }
    if let (true, Some(p)) = (linked_prev, &prev) {
        // The older layer's cached size may count as its own what the new one now shares.
        store.forget_size(&p.layer)?;
    }
    index.put_context_layer(
        &id,
        &ContextLayer {
            layer: committed.clone(),
            files,
        },
    )?;
    Ok(committed)
}

/// Links `rel` of the previous layer `prev` into the new layer `dest`, through their directories
/// of `rel` kept open in `open` for the files that follow. Whether it did; the caller copies
/// the file when not.
fn link_from_prev<'a>(
    open: &mut Option<(&'a str, at::Dir, at::Dir)>,
    prev: &Path,
    dest: &Path,
    rel: &'a str,
) -> bool {
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    if open.as_ref().is_none_or(|(p, _, _)| *p != parent) {
        *open = None;
        let dirs = at::Dir::open(&prev.join(parent))
            .and_then(|from| Ok((from, at::Dir::open(&dest.join(parent))?)));
        match dirs {
            Ok((from, to)) => *open = Some((parent, from, to)),
            Err(_) => return false,
        }
    }
    let Some((_, from, to)) = open.as_ref() else {
        return false;
    };
    let name = std::ffi::OsStr::new(name);
    at::link(from, name, to, name).is_ok()
}

/// Copies a context file into the layer, checking that it still holds what its key says.
fn copy_checked(scan: &Scan, e: &Scanned, to: &Path, want: Digest) -> Result<(), Error> {
    let from = scan.root.join(&e.rel);
    let mut src = fs::File::open(&from).map_err(|err| Error::io("read", &from, err))?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|err| Error::io("create", to, err))?;
    let (hash, _) = copy_hashing(&mut src, &from, &mut dst, to)?;
    if hash != want {
        return Err(Error::Context {
            context: scan.name.clone(),
            message: format!(
                "{}: the file changed while kiln was building (its content is not what the \
                 build's cache key was made of); build again",
                e.rel
            ),
        });
    }
    let _ = std::os::unix::fs::fchown(&dst, Some(0), Some(0));
    dst.set_permissions(fs::Permissions::from_mode(e.mode))
        .map_err(|err| Error::io("chmod", to, err))?;
    dst.set_modified(system_time(e.mtime))
        .map_err(|err| Error::io("set mtime of", to, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fixture {
        _t: tempfile::TempDir,
        ctx: PathBuf,
        store: Store,
        index: CacheIndex,
        src: LocalSource,
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir_all(ctx.join("d/e")).unwrap();
        for (p, c) in [("a", "aa"), ("d/b", "bb"), ("d/e/c", "cc"), ("gone", "g")] {
            fs::write(ctx.join(p), c).unwrap();
        }
        symlink("a", ctx.join("l")).unwrap();
        fs::write(ctx.join("skipped.log"), "x").unwrap();
        let store =
            Store::open_with(t.path().join("store"), kiln_snapshot::SnapshotterKind::Copy).unwrap();
        let index = CacheIndex::open(&t.path().join("cache.redb")).unwrap();
        let src = LocalSource {
            name: "context".into(),
            include_patterns: vec![],
            exclude_patterns: vec!["*.log".into()],
        };
        Fixture {
            _t: t,
            ctx,
            store,
            index,
            src,
        }
    }

    /// Every entry of a layer: path → (kind, mode, uid, mtime, content or target).
    fn tree(dir: &Path) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = fs::symlink_metadata(&p).unwrap();
                let what = if md.is_dir() {
                    stack.push(p.clone());
                    "dir".to_owned()
                } else if md.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else {
                    fs::read_to_string(&p).unwrap()
                };
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                let meta = format!(
                    "{:o} {} {:?} {}",
                    md.mode(),
                    md.uid(),
                    (md.mtime(), md.mtime_nsec()),
                    what
                );
                out.push((rel, meta));
            }
        }
        out.sort();
        out
    }

    fn ino(p: PathBuf) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    /// The walk reads directories on several threads: whatever order they finish in, it gives
    /// every selected entry once, sorted, excluded ones left out and re-included ones kept;
    /// an unreadable directory fails it rather than hang it.
    #[test]
    fn a_walk_on_several_threads_gives_every_selected_entry_once_in_order() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        let mut want = Vec::new();
        for d in 0..40 {
            for sub in ["", "/s", "/s/t"] {
                let dir = format!("d{d:02}{sub}");
                fs::create_dir_all(ctx.join(&dir)).unwrap();
                for f in 0..5 {
                    fs::write(ctx.join(format!("{dir}/f{f}")), "x").unwrap();
                }
            }
        }
        fs::write(ctx.join("top"), "x").unwrap();
        let src = LocalSource {
            name: "context".into(),
            include_patterns: vec![],
            // d3x excluded but d31/s/t/f1 re-included; every f4 excluded.
            exclude_patterns: vec!["d3*".into(), "!d31/s/t/f1".into(), "**/f4".into()],
        };
        for d in 0..40 {
            let excluded = d / 10 == 3;
            for sub in ["", "/s", "/s/t"] {
                let dir = format!("d{d:02}{sub}");
                if !excluded {
                    want.push(dir.clone());
                }
                for f in 0..4 {
                    let file = format!("{dir}/f{f}");
                    if !excluded || file == "d31/s/t/f1" {
                        want.push(file);
                    }
                }
            }
        }
        want.push("top".into());
        want.sort();
        for _ in 0..5 {
            let got: Vec<String> = walk(&ctx, &src)
                .unwrap()
                .into_iter()
                .map(|e| e.rel)
                .collect();
            assert_eq!(got, want);
        }
        // A directory that cannot be read fails the walk, and the threads waiting for more
        // directories stop (the test would hang otherwise).
        let err = walk(&t.path().join("missing"), &src)
            .err()
            .expect("no context");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn one_scan_serves_every_key_and_an_unchanged_context_reads_no_file() {
        let f = fixture();
        let scan = scan(&f.ctx, &f.src, &f.store, &f.index).unwrap();
        // Read once, into the staging area: every file.
        assert_eq!(
            scan.entries.iter().filter(|e| e.staged.is_some()).count(),
            4
        );
        let (key, entries) = content_key_with_entries(&scan, &f.src);
        assert!(entries.iter().all(|(rel, _)| rel != "skipped.log"));
        let sel = selection_key(&scan, &f.src, &["d".into()]);
        let again = super::scan(&f.ctx, &f.src, &f.store, &f.index).unwrap();
        assert!(again.entries.iter().all(|e| e.staged.is_none()));
        assert!(again.stage.is_none());
        assert_eq!(content_key_with_entries(&again, &f.src).0, key);
        assert_eq!(selection_key(&again, &f.src, &["d".into()]), sel);
        // Editing a file outside the selection changes the context key only.
        fs::write(f.ctx.join("a"), "changed").unwrap();
        let edited = super::scan(&f.ctx, &f.src, &f.store, &f.index).unwrap();
        let staged: Vec<&str> = edited
            .entries
            .iter()
            .filter(|e| e.staged.is_some())
            .map(|e| e.rel.as_str())
            .collect();
        assert_eq!(staged, ["a"]);
        assert_ne!(content_key_with_entries(&edited, &f.src).0, key);
        assert_eq!(selection_key(&edited, &f.src, &["d".into()]), sel);
        // The staging area goes with the scan.
        let dir = edited.stage.clone().unwrap();
        drop(edited);
        assert!(!dir.exists());
    }

    #[test]
    fn an_incremental_layer_links_what_did_not_change_and_equals_a_fresh_one() {
        let f = fixture();
        let first = materialize(
            &scan(&f.ctx, &f.src, &f.store, &f.index).unwrap(),
            &f.store,
            &f.index,
        )
        .unwrap();
        // An edit, a deletion, a new file, a mode change, a symlink change.
        fs::write(f.ctx.join("d/b"), "edited").unwrap();
        fs::remove_file(f.ctx.join("gone")).unwrap();
        fs::write(f.ctx.join("d/new"), "new").unwrap();
        fs::set_permissions(f.ctx.join("d/e/c"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(f.ctx.join("l")).unwrap();
        symlink("d/b", f.ctx.join("l")).unwrap();
        let second = materialize(
            &scan(&f.ctx, &f.src, &f.store, &f.index).unwrap(),
            &f.store,
            &f.index,
        )
        .unwrap();
        let (one, two) = (f.store.layer_dir(&first), f.store.layer_dir(&second));
        assert_eq!(ino(one.join("a")), ino(two.join("a")), "unchanged: linked");
        assert_ne!(ino(one.join("d/b")), ino(two.join("d/b")));
        assert_ne!(ino(one.join("d/e/c")), ino(two.join("d/e/c")));
        assert_eq!(fs::read_to_string(one.join("d/b")).unwrap(), "bb");
        assert_eq!(fs::read_to_string(one.join("d/e/c")).unwrap(), "cc");
        assert!(!two.join("gone").exists() && one.join("gone").exists());
        // The same layer as one made from nothing (a fresh store and index).
        let fresh = fixture();
        let store = Store::open_with(
            fresh._t.path().join("other"),
            kiln_snapshot::SnapshotterKind::Copy,
        )
        .unwrap();
        let index = CacheIndex::open(&fresh._t.path().join("other.redb")).unwrap();
        let scratch = materialize(
            &scan(&f.ctx, &f.src, &store, &index).unwrap(),
            &store,
            &index,
        )
        .unwrap();
        assert_eq!(tree(&two), tree(&store.layer_dir(&scratch)));
    }

    /// `du -sb` of `path`.
    fn du_sb(path: &Path) -> u64 {
        let out = std::process::Command::new("du")
            .arg("-sb")
            .arg(path)
            .output()
            .expect("du (coreutils) must be installed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du -sb prints a size")
    }

    /// A context layer records its size for the collection after the build (which read it
    /// by walking the layer again: 20,000 `stat`s after an edit); the size is an upper bound
    /// of what a walk counts, and close to it.
    #[test]
    fn a_context_layer_records_its_total_so_that_it_is_not_walked_again() {
        let f = fixture();
        for round in 0..2 {
            if round == 1 {
                fs::write(f.ctx.join("d/b"), "edited, and longer").unwrap();
                fs::write(f.ctx.join("d/new"), vec![b'x'; 10_000]).unwrap();
            }
            let id = materialize(
                &scan(&f.ctx, &f.src, &f.store, &f.index).unwrap(),
                &f.store,
                &f.index,
            )
            .unwrap();
            let layer = f._t.path().join("store/layers").join(&id.0);
            let total: u64 = fs::read_to_string(layer.join("fs.total"))
                .expect("the context layer records its total")
                .trim()
                .parse()
                .unwrap();
            let walked = du_sb(&layer.join("fs"));
            assert!(
                total >= walked && total <= walked + walked / 64 + 4096,
                "round {round}: recorded {total}, a walk counts {walked}"
            );
        }
        // A re-included file's parents are made on the way, unlisted: no total then (the
        // layer is measured by a walk, as before).
        let src = LocalSource {
            exclude_patterns: vec!["d".into(), "!d/e/c".into()],
            ..f.src.clone()
        };
        let id = materialize(
            &scan(&f.ctx, &src, &f.store, &f.index).unwrap(),
            &f.store,
            &f.index,
        )
        .unwrap();
        let layer = f._t.path().join("store/layers").join(&id.0);
        assert!(layer.join("fs/d/e/c").is_file());
        assert!(!layer.join("fs.total").exists());
    }

    #[test]
    fn a_large_context_is_staged_on_several_threads_each_file_under_its_own_entry() {
        let f = fixture();
        for i in 0..300 {
            let d = f.ctx.join(format!("many/d{}", i % 7));
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join(format!("f{i}")),
                format!("content {i}").repeat(i % 50),
            )
            .unwrap();
        }
        let scan = scan(&f.ctx, &f.src, &f.store, &f.index).unwrap();
        let files: Vec<&Scanned> = scan
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .collect();
        assert_eq!(files.len(), 304);
        for e in files {
            let bytes = fs::read(f.ctx.join(&e.rel)).unwrap();
            let staged = e.staged.as_ref().expect("every file read is staged");
            assert_eq!(fs::read(staged).unwrap(), bytes, "{}", e.rel);
            assert_eq!(e.hash, Some(Digest::of(&bytes)), "{}", e.rel);
            assert_eq!(e.size, bytes.len() as u64);
        }
        // The layer made from it holds the same tree as the context.
        let layer = materialize(&scan, &f.store, &f.index).unwrap();
        let dir = f.store.layer_dir(&layer);
        for i in [0, 1, 99, 299] {
            let rel = format!("many/d{}/f{i}", i % 7);
            assert_eq!(
                fs::read(dir.join(&rel)).unwrap(),
                fs::read(f.ctx.join(&rel)).unwrap()
            );
        }
        // An edit: the next layer, placed on several threads too, links every other file.
        fs::write(f.ctx.join("many/d3/f3"), "edited").unwrap();
        let again = materialize(
            &super::scan(&f.ctx, &f.src, &f.store, &f.index).unwrap(),
            &f.store,
            &f.index,
        )
        .unwrap();
        let next = f.store.layer_dir(&again);
        for i in 0..300 {
            let rel = format!("many/d{}/f{i}", i % 7);
            let (a, b) = (ino(dir.join(&rel)), ino(next.join(&rel)));
            assert_eq!(a == b, i != 3, "{rel}");
        }
        assert_eq!(fs::read(next.join("many/d3/f3")).unwrap(), b"edited");
        assert_eq!(tree(&next).len(), tree(&dir).len());
    }

    #[test]
    fn a_file_changed_after_its_key_was_made_fails_the_layer() {
        let f = fixture();
        // Hashed once (stat cache filled), never materialized: nothing to link from.
        drop(scan(&f.ctx, &f.src, &f.store, &f.index).unwrap());
        let keyed = scan(&f.ctx, &f.src, &f.store, &f.index).unwrap();
        assert!(keyed.stage.is_none());
        fs::write(f.ctx.join("d/e/c"), "xx").unwrap();
        let err = materialize(&keyed, &f.store, &f.index).unwrap_err();
        assert!(err.to_string().contains("d/e/c: the file changed"), "{err}");
    }
}
