//! The daemon's side: a mirror of one client context, the plan of a sync, and applying it.
//!
//! Layout of a mirror directory (mode 0700: the tree may hold setuid files of the client's):
//! `tree/` (the context as the build reads it), `record` (what `tree/` holds, see `record.rs`),
//! `tmp/` (files being received; emptied on open), `lock` (held while a [`Mirror`] lives), and
//! `use` and `source` (a session's hold and what it mirrors: see `kept.rs`).
//!
//! Every change inside `tree/` goes through directory descriptors opened one component at a
//! time with `O_NOFOLLOW` (what `openat2(RESOLVE_NO_SYMLINKS)` would give, one level at a time):
//! a symlink met on the way is never followed; it is a leftover of an earlier state and is
//! replaced by the directory the new entries need (or, when deleting, nothing lies below it).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, Flock, FlockArg, OFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use crate::entry::check_entries;
use crate::record::{self, Recorded};
use crate::{Entry, Error, Kind, Result, MAX_ENTRIES, MAX_TOTAL_PATH_BYTES};

/// What one sync did: files and bytes received, entries deleted, entries the mirror now holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files written by [`Mirror::write_file`] in this sync.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Paths deleted because they left the context (a deleted directory counts once).
    pub deleted: u64,
    /// Entries of the context now mirrored (the root and implied directories included).
    pub entries: u64,
}

/// What a sync must do to make the mirror hold the client's entries. Made by [`Mirror::plan`];
/// the files of [`Plan::send`] are then written with [`Mirror::write_file`] (in any order), and
/// [`Mirror::finish`] applies the rest.
#[derive(Debug)]
pub struct Plan {
    /// The entries the mirror will hold: the client's, plus the directories implied by
    /// re-included files whose directory is excluded (mode 0755, mtime 0: the engine never
    /// reads them, it makes its own).
    target: Vec<Entry>,
    /// Files to receive, in path order.
    send: Vec<String>,
    /// Index in `target` and whether it arrived, per file to receive.
    wanted: HashMap<String, (usize, bool)>,
    /// Recorded paths that left the context.
    delete: Vec<String>,
    /// Indexes in `target` of directories and symlinks to make or update.
    apply: Vec<usize>,
    /// Directories whose mtime (and mode) must be set again: something in them changed.
    touched: HashSet<String>,
    /// Whether the record was rewritten with this plan's paths marked unknown.
    marked: bool,
    stats: Stats,
}

impl Plan {
    /// The files whose bytes must be sent (new, changed metadata, or left unknown by a sync
    /// cut short), sorted by path.
    pub fn send(&self) -> &[String] {
        &self.send
    }

    /// Bytes of the files to send, in all (for progress).
    pub fn send_bytes(&self) -> u64 {
        self.wanted
            .values()
            .map(|&(i, _)| self.target[i].size)
            .sum()
    }

    /// The entry of a path of the plan (e.g. to know the size of a file to send).
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.target
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.target[i])
    }

    /// Paths the mirror will delete.
    pub fn deletes(&self) -> &[String] {
        &self.delete
    }

    /// Whether the mirror already holds the entries: nothing to send, delete or update.
    pub fn is_noop(&self) -> bool {
        self.send.is_empty() && self.delete.is_empty() && self.apply.is_empty()
    }

    /// Files and bytes received so far.
    pub fn received(&self) -> Stats {
        self.stats
    }
}

/// A file being received ([`Mirror::start_file`]): a temporary file in the mirror until
/// [`Mirror::commit_file`] renames it into place. Dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Incoming {
    path: String,
    dest: PathBuf,
    declared: u64,
    received: u64,
    file: fs::File,
    tmp_name: String,
    tmp_dir: OwnedFd,
    committed: bool,
}

impl Incoming {
    /// The entry path being received.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Appends one chunk. More bytes than the entry declared is [`Error::SizeMismatch`]
    /// (nothing more is written).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let received = self.received + bytes.len() as u64;
        if received > self.declared {
            return Err(Error::SizeMismatch {
                path: self.path.clone(),
                declared: self.declared,
                received,
            });
        }
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.dest, e))?;
        self.received = received;
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: tmp/ is emptied when the mirror is next opened anyway.
            let _ = unlinkat(
                &self.tmp_dir,
                self.tmp_name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// A directory on the daemon holding one client context, kept in step with it by syncs. It is
/// locked (`flock`) while this value lives: a second [`Mirror::open`] of the same directory,
/// from any process or this one, waits until the first is dropped. Keep it while a build reads
/// [`Mirror::tree`].
#[derive(Debug)]
pub struct Mirror {
    dir: PathBuf,
    tree: PathBuf,
    tree_fd: OwnedFd,
    tmp_fd: OwnedFd,
    record: Vec<Recorded>,
    next_tmp: u64,
    _lock: Flock<fs::File>,
}

const TREE: &str = "tree";
const TMP: &str = "tmp";
const RECORD: &str = "record";

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn ts(sec: i64, nsec: u32) -> TimeSpec {
    TimeSpec::new(sec, i64::from(nsec))
}

/// `path`'s parent and its last component (`""` has none: the root).
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", path),
    }
}

/// Adds every proper ancestor of `path` (the root `""` included) to `set`.
fn touch_ancestors(set: &mut HashSet<String>, path: &str) {
    if path.is_empty() {
        return;
    }
    let mut p = path;
    loop {
        let (parent, _) = split(p);
        // Ancestors are always added all at once: one already there has its own in too.
        if !set.insert(parent.to_owned()) || parent.is_empty() {
            return;
        }
        p = parent;
    }
}

impl Mirror {
    /// Opens the mirror in `dir`, creating it (mode 0700) if missing, and waits for its lock.
    /// A mirror whose record is missing or damaged is emptied: what its tree holds is not
    /// known, so everything is sent again.
    pub fn open(dir: &Path) -> Result<Mirror> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create mirror dir", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("chmod", dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io("open lock", &lock_path, e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("lock", &lock_path, e.into()))?;
        let tree = dir.join(TREE);
        let tmp = dir.join(TMP);
        // Files of a sync that died mid-transfer.
        remove_path(&tmp)?;
        fs::create_dir(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        let record_path = dir.join(RECORD);
        let record = match fs::read(&record_path) {
            Ok(bytes) => record::decode(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read", &record_path, e)),
        };
        let record = match record {
            Some(r) if tree.is_dir() => r,
            _ => {
                remove_path(&tree)?;
                Vec::new()
            }
        };
        match fs::create_dir(&tree) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create", &tree, e)),
        }
        let open = |p: &Path| {
            nix::fcntl::open(p, dir_flags(), Mode::empty())
                .map_err(|e| Error::io("open", p, e.into()))
        };
        Ok(Mirror {
            tree_fd: open(&tree)?,
            tmp_fd: open(&tmp)?,
            dir: dir.to_owned(),
            tree,
            record,
            next_tmp: 0,
            _lock: lock,
        })
    }

    /// The mirrored context: the directory a build reads.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Compares the client's `entries` (as [`scan`](crate::scan) returns them: sorted by path,
    /// unique) with what the mirror holds. Fails on any entry the mirror refuses
    /// ([`Error::BadPath`], [`Error::Unsorted`], [`Error::TooManyEntries`]) before touching
    /// anything. A compare of two sorted lists: nothing on disk is read or written.
    pub fn plan(&self, entries: Vec<Entry>) -> Result<Plan> {
        check_entries(&entries)?;
        let target = with_implied_dirs(entries, MAX_ENTRIES, MAX_TOTAL_PATH_BYTES)?;
        let mut plan = Plan {
            send: Vec::new(),
            wanted: HashMap::new(),
            delete: Vec::new(),
            apply: Vec::new(),
            touched: HashSet::new(),
            marked: false,
            stats: Stats::default(),
            target: Vec::new(),
        };
        let old = &self.record;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < target.len() {
            let order = match (old.get(i), target.get(j)) {
                (Some(o), Some(t)) => o.entry.path.as_bytes().cmp(t.path.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            let changed = match order {
                std::cmp::Ordering::Less => {
                    // Left the context. The root is never deleted, only forgotten.
                    if !old[i].entry.path.is_empty() {
                        plan.delete.push(old[i].entry.path.clone());
                    }
                    i += 1;
                    continue;
                }
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => {
                    let c = old[i].unknown || old[i].entry != target[j];
                    i += 1;
                    c
                }
            };
            if changed {
                let t = &target[j];
                match t.kind {
                    Kind::File => {
                        plan.wanted.insert(t.path.clone(), (j, false));
                        plan.send.push(t.path.clone());
                    }
                    Kind::Dir | Kind::Symlink => plan.apply.push(j),
                }
            }
            j += 1;
        }
        plan.target = target;
        Ok(plan)
    }

    /// Receives the bytes of `path`, one of [`Plan::send`], from `reader`: into a temporary
    /// file, checked against the entry's size, given its mode and mtime, then renamed into
    /// place (what was there, of any kind, is replaced). Returns the bytes received. A short
    /// or long stream is [`Error::SizeMismatch`] and changes nothing in the tree.
    /// ([`Mirror::start_file`] does the same chunk by chunk.)
    pub fn write_file(
        &mut self,
        plan: &mut Plan,
        path: &str,
        reader: &mut dyn Read,
    ) -> Result<u64> {
        let mut incoming = self.start_file(plan, path)?;
        // On the stack: a heap buffer per file is 20,000 allocations for a cold context.
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("receive", &incoming.dest, e)),
            };
            incoming.write(&buf[..n])?;
        }
        self.commit_file(plan, incoming)
    }

    /// Starts receiving `path`, one of [`Plan::send`], for a transport that gets a file in
    /// chunks: [`Incoming::write`] each chunk, then [`Mirror::commit_file`]. Dropped before its
    /// commit, the file leaves nothing behind.
    pub fn start_file(&mut self, plan: &mut Plan, path: &str) -> Result<Incoming> {
        let Some(&(index, _)) = plan.wanted.get(path) else {
            return Err(Error::NotPlanned {
                path: path.chars().take(200).collect(),
            });
        };
        self.mark(plan)?;
        self.next_tmp += 1;
        let tmp_name = format!("{}.{}", std::process::id(), self.next_tmp);
        let shown = self.dir.join(TMP).join(&tmp_name);
        let tmp_dir = self
            .tmp_fd
            .try_clone()
            .map_err(|e| Error::io("open", &shown, e))?;
        let fd = openat(
            &tmp_dir,
            tmp_name.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::io("create", &shown, e.into()))?;
        Ok(Incoming {
            path: path.to_owned(),
            dest: self.tree.join(path),
            declared: plan.target[index].size,
            received: 0,
            file: fs::File::from(fd),
            tmp_name,
            tmp_dir,
            committed: false,
        })
    }

    /// Ends receiving a file: checks its size ([`Error::SizeMismatch`] when short), gives it
    /// its entry's mode and mtime and renames it into place, replacing what was there.
    /// Returns its size.
    pub fn commit_file(&mut self, plan: &mut Plan, mut file: Incoming) -> Result<u64> {
        let Some(&(index, _)) = plan.wanted.get(&file.path) else {
            return Err(Error::NotPlanned {
                path: file.path.chars().take(200).collect(),
            });
        };
        let entry = &plan.target[index];
        if file.received != entry.size {
            return Err(Error::SizeMismatch {
                path: file.path.clone(),
                declared: entry.size,
                received: file.received,
            });
        }
        let t = ts(entry.mtime_sec, entry.mtime_nsec);
        // An unbuffered `File`: every chunk is already written.
        fchmod(file.file.as_fd(), Mode::from_bits_truncate(entry.mode))
            .and_then(|()| futimens(file.file.as_fd(), &t, &t))
            .map_err(|e| Error::io("set metadata", &file.dest, e.into()))?;
        let (parent, name) = split(&file.path);
        let parent_fd = self.open_dir(parent, true)?;
        replace(&file.tmp_dir, &file.tmp_name, &parent_fd, name, &file.dest)?;
        file.committed = true;
        touch_ancestors(&mut plan.touched, &file.path);
        if let Some(w) = plan.wanted.get_mut(&file.path) {
            w.1 = true;
        }
        plan.stats.files += 1;
        plan.stats.bytes += file.received;
        Ok(file.received)
    }
    /// Ends a sync: checks that every asked file arrived ([`Error::Missing`] otherwise),
    /// deletes what left the context, makes and updates directories and symlinks, sets
    /// directory modes and mtimes after their contents, and records the new state (one write
    /// and a rename). A no-op plan writes nothing.
    pub fn finish(&mut self, mut plan: Plan) -> Result<Stats> {
        let missing: Vec<&String> = plan
            .send
            .iter()
            .filter(|p| !plan.wanted.get(*p).is_some_and(|w| w.1))
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::Missing {
                path: (*first).clone(),
                missing: missing.len(),
            });
        }
        plan.stats.entries = plan.target.len() as u64;
        if plan.is_noop() {
            return Ok(plan.stats);
        }
        self.mark(&mut plan)?;
        // Deepest first; a path below one already deleted is simply gone.
        for path in plan.delete.iter().rev() {
            let (parent, name) = split(path);
            let Some(parent_fd) = self.open_existing_dir(parent)? else {
                continue;
            };
            if remove_any(&parent_fd, name, &self.tree.join(path))? {
                plan.stats.deleted += 1;
            }
            touch_ancestors(&mut plan.touched, path);
        }
        // Parents first (path order).
        for &index in &plan.apply {
            let e = &plan.target[index];
            if e.path.is_empty() {
                continue;
            }
            let (parent, name) = split(&e.path);
            let parent_fd = self.open_dir(parent, true)?;
            let dest = self.tree.join(&e.path);
            match e.kind {
                Kind::Dir => {
                    make_dir(&parent_fd, name, &dest)?;
                }
                Kind::Symlink => {
                    let target = e.target.as_deref().unwrap_or_default();
                    self.next_tmp += 1;
                    let tmp_name = format!("{}.{}", std::process::id(), self.next_tmp);
                    symlinkat(target, &self.tmp_fd, tmp_name.as_str())
                        .map_err(|err| Error::io("symlink", &dest, err.into()))?;
                    replace(&self.tmp_fd, &tmp_name, &parent_fd, name, &dest)?;
                    let t = ts(e.mtime_sec, e.mtime_nsec);
                    utimensat(&parent_fd, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                        .map_err(|err| Error::io("set mtime", &dest, err.into()))?;
                }
                Kind::File => {}
            }
            touch_ancestors(&mut plan.touched, &e.path);
        }
        // Directory modes and mtimes last: making their children changed them.
        let mut dirs: Vec<usize> = plan
            .apply
            .iter()
            .copied()
            .filter(|&i| plan.target[i].kind == Kind::Dir)
            .collect();
        for path in &plan.touched {
            if let Ok(i) = plan
                .target
                .binary_search_by(|e| e.path.as_str().cmp(path.as_str()))
            {
                if plan.target[i].kind == Kind::Dir {
                    dirs.push(i);
                }
            }
        }
        dirs.sort_unstable();
        dirs.dedup();
        for i in dirs {
            let e = &plan.target[i];
            let dest = self.tree.join(&e.path);
            let fd = if e.path.is_empty() {
                self.tree_fd
                    .try_clone()
                    .map_err(|err| Error::io("open", &dest, err))?
            } else {
                match self.open_existing_dir(&e.path)? {
                    Some(fd) => fd,
                    None => continue,
                }
            };
            let t = ts(e.mtime_sec, e.mtime_nsec);
            fchmod(fd.as_fd(), Mode::from_bits_truncate(e.mode))
                .and_then(|()| futimens(fd.as_fd(), &t, &t))
                .map_err(|err| Error::io("set metadata", &dest, err.into()))?;
        }
        let known: Vec<Recorded> = plan
            .target
            .into_iter()
            .map(|entry| Recorded {
                entry,
                unknown: false,
            })
            .collect();
        self.write_record(&known)?;
        self.record = known;
        Ok(plan.stats)
    }

    /// Before the first change of a sync: the record with every path the plan touches marked
    /// unknown, so that a sync cut short leaves a record that still tells the truth.
    fn mark(&mut self, plan: &mut Plan) -> Result<()> {
        if plan.marked {
            return Ok(());
        }
        let touched: HashSet<&str> = plan
            .send
            .iter()
            .map(String::as_str)
            .chain(plan.apply.iter().map(|&i| plan.target[i].path.as_str()))
            .collect();
        let mut out = Vec::with_capacity(self.record.len().max(plan.target.len()));
        let (mut i, mut j) = (0, 0);
        let old = &self.record;
        while i < old.len() || j < plan.target.len() {
            let order = match (old.get(i), plan.target.get(j)) {
                (Some(o), Some(t)) => o.entry.path.as_bytes().cmp(t.path.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, _) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    // About to be deleted: kept, unknown, until a finished sync drops it.
                    out.push(Recorded {
                        entry: old[i].entry.clone(),
                        unknown: true,
                    });
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(Recorded {
                        entry: plan.target[j].clone(),
                        unknown: true,
                    });
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let t = &plan.target[j];
                    out.push(if touched.contains(t.path.as_str()) {
                        Recorded {
                            entry: t.clone(),
                            unknown: true,
                        }
                    } else {
                        old[i].clone()
                    });
                    i += 1;
                    j += 1;
                }
            }
        }
        self.write_record(&out)?;
        self.record = out;
        plan.marked = true;
        Ok(())
    }

    /// One write of the whole record to a temporary name, then a rename over the old one.
    fn write_record(&self, entries: &[Recorded]) -> Result<()> {
        let tmp = self.dir.join("record.tmp");
        let path = self.dir.join(RECORD);
        fs::write(&tmp, record::encode(entries)).map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &path, e))
    }

    /// Opens directory `path` of the tree without following symlinks. With `create`, missing
    /// components are made and a non-directory in the way (a leftover of an earlier state: the
    /// checked entries put nothing below a file or symlink) is replaced by a directory.
    fn open_dir(&self, path: &str, create: bool) -> Result<OwnedFd> {
        let mut fd = self
            .tree_fd
            .try_clone()
            .map_err(|e| Error::io("open", &self.tree, e))?;
        if path.is_empty() {
            return Ok(fd);
        }
        let mut so_far = self.tree.clone();
        for c in path.split('/') {
            so_far.push(c);
            let next = match openat(&fd, c, dir_flags(), Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    make_dir(&fd, c, &so_far)?;
                    openat(&fd, c, dir_flags(), Mode::empty())
                        .map_err(|e| Error::io("open", &so_far, e.into()))?
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) if create => {
                    remove_any(&fd, c, &so_far)?;
                    make_dir(&fd, c, &so_far)?;
                    openat(&fd, c, dir_flags(), Mode::empty())
                        .map_err(|e| Error::io("open", &so_far, e.into()))?
                }
                Err(e) => return Err(Error::io("open", &so_far, e.into())),
            };
            fd = next;
        }
        Ok(fd)
    }

    /// Opens directory `path` of the tree without following symlinks, or `None` when it is
    /// missing or not a directory (then nothing below it exists in the tree either).
    fn open_existing_dir(&self, path: &str) -> Result<Option<OwnedFd>> {
        let mut fd = self
            .tree_fd
            .try_clone()
            .map_err(|e| Error::io("open", &self.tree, e))?;
        if path.is_empty() {
            return Ok(Some(fd));
        }
        for c in path.split('/') {
            fd = match openat(&fd, c, dir_flags(), Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => return Ok(None),
                Err(e) => return Err(Error::io("open", self.tree.join(path), e.into())),
            };
        }
        Ok(Some(fd))
    }
}

/// The entries plus every directory they imply but do not list (parents of files re-included
/// under an excluded directory), sorted by path; at most `max_entries` of them, with at most
/// `max_bytes` of paths and targets in all.
pub(crate) fn with_implied_dirs(
    entries: Vec<Entry>,
    max_entries: usize,
    max_bytes: u64,
) -> Result<Vec<Entry>> {
    let mut bytes: u64 = entries
        .iter()
        .map(|e| (e.path.len() + e.target.as_ref().map_or(0, String::len)) as u64)
        .sum();
    if bytes > max_bytes {
        return Err(Error::PathsTooLong { limit: max_bytes });
    }
    let mut dirs: HashSet<String> = entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .map(|e| e.path.clone())
        .collect();
    dirs.insert(String::new());
    let mut implied = Vec::new();
    for e in &entries {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if !dirs.insert(parent.to_owned()) {
                break;
            }
            bytes += parent.len() as u64;
            if bytes > max_bytes {
                return Err(Error::PathsTooLong { limit: max_bytes });
            }
            if entries.len() + implied.len() >= max_entries {
                return Err(Error::TooManyEntries { limit: max_entries });
            }
            implied.push(Entry {
                path: parent.to_owned(),
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                target: None,
            });
            p = parent;
        }
    }
    if implied.is_empty() {
        return Ok(entries);
    }
    let mut all = entries;
    all.extend(implied);
    all.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(all)
}

/// Makes directory `name` in `parent` (mode 0700 until its own mode is set), or keeps the one
/// there; a non-directory there is replaced.
fn make_dir(parent: &OwnedFd, name: &str, shown: &Path) -> Result<()> {
    match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => match openat(parent, name, dir_flags(), Mode::empty()) {
            Ok(_) => Ok(()),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                remove_any(parent, name, shown)?;
                mkdirat(parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| Error::io("mkdir", shown, e.into()))
            }
            Err(e) => Err(Error::io("open", shown, e.into())),
        },
        Err(e) => Err(Error::io("mkdir", shown, e.into())),
    }
}

/// Removes `name` from `parent` whatever it is (a directory with all it holds, never following
/// a symlink). Whether something was there.
fn remove_any(parent: &OwnedFd, name: &str, shown: &Path) -> Result<bool> {
    match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(Errno::EISDIR) => {
            // std's remove_dir_all opens each level with O_NOFOLLOW and works below the
            // pinned parent descriptor: a symlink inside is unlinked, not followed.
            let pinned = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(name);
            fs::remove_dir_all(&pinned).map_err(|e| Error::io("remove", shown, e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io("remove", shown, e.into())),
    }
}

/// Renames `tmp_name` (in the mirror's tmp dir) to `name` in `parent`, replacing what is there
/// (a directory in the way is removed first: rename cannot replace one by a file).
fn replace(
    tmp_fd: &OwnedFd,
    tmp_name: &str,
    parent: &OwnedFd,
    name: &str,
    shown: &Path,
) -> Result<()> {
    match renameat(tmp_fd, tmp_name, parent, name) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR | Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR) => {
            remove_any(parent, name, shown)?;
            renameat(tmp_fd, tmp_name, parent, name)
                .map_err(|e| Error::io("rename into place", shown, e.into()))
        }
        Err(e) => Err(Error::io("rename into place", shown, e.into())),
    }
}

/// Removes a path of the mirror's own layout (not the client's), whatever it is.
fn remove_path(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).map_err(|e| Error::io("remove", p, e)),
        Ok(_) => fs::remove_file(p).map_err(|e| Error::io("remove", p, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", p, e)),
    }
}
