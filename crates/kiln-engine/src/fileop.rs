//! File actions (COPY, mkdir, mkfile, rm, symlink) applied to a writable view, with BuildKit's
//! COPY semantics. Every path is resolved inside its root by [`crate::rootpath`].

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_graph::{Chmod, Chown, CopyAction, FileAction, UserRef};
use kiln_ignore::{MatchInfo, PatternMatcher};

use crate::rootpath::resolve_in;

pub(crate) mod at;
mod direct;
mod unpack;

pub(crate) use direct::{plan as direct_plan, Direct};

// The fuzzing entry point of ADD's extraction; the crate root re-exports it (until it does,
// nothing outside the tests calls it).
pub use unpack::extract_archive_bytes;
pub(crate) use unpack::extract_archive_file;

/// Why a file action failed; the message is what the user sees under the step.
#[derive(Debug, thiserror::Error)]
pub enum FileOpError {
    /// A source that does not exist.
    #[error("\"{0}\" not found")]
    NotFound(String),
    /// A wildcard that matched nothing.
    #[error("no source files were specified: \"{0}\" matched nothing")]
    NoMatch(String),
    /// A user or group name that the filesystem's /etc/passwd or /etc/group does not know.
    #[error("unable to find {kind} {name:?} in /etc/{file} of the destination filesystem")]
    UnknownUser {
        /// user or group.
        kind: &'static str,
        /// The name.
        name: String,
        /// passwd or group.
        file: &'static str,
    },
    /// An include or exclude pattern that cannot be matched.
    #[error("copying {src:?}: {source}")]
    Pattern {
        /// The source (or the path being matched).
        src: String,
        /// Why.
        source: kiln_ignore::Error,
    },
    /// A bad `--chmod`.
    #[error("invalid chmod {0:?}")]
    Chmod(String),
    /// An archive that ADD cannot extract, or an entry it refuses (hostile or broken).
    #[error("extracting {archive}{}: {reason}", if entry.is_empty() { String::new() } else { format!(", entry {entry:?}") })]
    Archive {
        /// The archive (its path in the source filesystem).
        archive: String,
        /// The entry name, empty for the archive as a whole.
        entry: String,
        /// Why.
        reason: String,
    },
    /// An I/O failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path (inside the build filesystem).
        path: String,
        /// Why.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, FileOpError>;

fn ioe<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> FileOpError + 'a {
    move |source| FileOpError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Applies `actions` to the filesystem at `root`; `sources[i]` is the directory of input `i`.
pub fn apply(root: &Path, actions: &[FileAction], sources: &[PathBuf]) -> Result<()> {
    apply_with(root, actions, sources, &[], None)
}

/// What [`apply_direct`] did.
pub(crate) struct DirectDone {
    /// A file was linked.
    pub(crate) linked: bool,
    /// The layer directory's apparent size (as `du -sb`), when it could be read.
    pub(crate) total: Option<u64>,
}

/// Applies the copies of `plan` (see `direct`) to the empty layer directory `root`; files taken
/// unchanged from an input `i` with `linkable[i]` (an immutable layer directory) are hard links
/// to it.
pub(crate) fn apply_direct(
    root: &Path,
    plan: &Direct,
    actions: &[FileAction],
    sources: &[PathBuf],
    linkable: &[bool],
) -> Result<DirectDone> {
    plan.prepare(root)
        .map_err(ioe("make the base's directories", "/"))?;
    let linker = SharedLinker::default();
    apply_with(root, actions, sources, linkable, Some(&linker))?;
    plan.finish(root);
    let linker = linker.borrow();
    Ok(DirectDone {
        linked: linker.linked(),
        // Only a shortcut for the collection: without it, the layer is measured by a walk.
        total: linker.layer_total(root).ok(),
    })
}

type SharedLinker = std::rc::Rc<std::cell::RefCell<direct::Linker>>;

fn apply_with(
    root: &Path,
    actions: &[FileAction],
    sources: &[PathBuf],
    linkable: &[bool],
    linker: Option<&SharedLinker>,
) -> Result<()> {
    for a in actions {
        match a {
            FileAction::Copy(c) => {
                let from_layer = c
                    .source
                    .and_then(|i| linkable.get(i as usize).copied())
                    .unwrap_or(false);
                copy(root, c, sources, linker.filter(|_| from_layer).cloned())?
            }
            FileAction::Mkdir {
                path,
                mode,
                make_parents,
                owner,
            } => {
                let ids = owner.as_ref().map(|o| resolve_owner(root, o)).transpose()?;
                let p = resolve_in(root, path, true).map_err(ioe("resolve", path))?;
                if *make_parents {
                    create_dirs(&p, *mode, ids, path)?;
                } else if !p.is_dir() {
                    fs::create_dir(&p).map_err(ioe("mkdir", path))?;
                    set_meta(&p, Some(*mode), ids, path)?;
                }
            }
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => {
                let ids = owner.as_ref().map(|o| resolve_owner(root, o)).transpose()?;
                let p = resolve_in(root, path, true).map_err(ioe("resolve", path))?;
                if let Some(parent) = p.parent() {
                    create_dirs(parent, 0o755, ids, path)?;
                }
                fs::write(&p, data).map_err(ioe("write", path))?;
                set_meta(&p, Some(*mode), ids, path)?;
            }
            FileAction::Rm {
                path,
                allow_not_found,
                allow_wildcard,
            } => {
                let targets = if *allow_wildcard && has_meta(path) {
                    expand(root, path)?
                } else {
                    vec![path.clone()]
                };
                for t in targets {
                    let t = resolve_in(root, &t, false).map_err(ioe("resolve", path))?;
                    match fs::symlink_metadata(&t) {
                        Ok(md) if md.is_dir() => fs::remove_dir_all(&t).map_err(ioe("rm", path))?,
                        Ok(_) => fs::remove_file(&t).map_err(ioe("rm", path))?,
                        Err(_) if *allow_not_found => {}
                        Err(_) => return Err(FileOpError::NotFound(path.clone())),
                    }
                }
            }
            FileAction::Symlink { target, link } => {
                let p = resolve_in(root, link, false).map_err(ioe("resolve", link))?;
                if let Some(parent) = p.parent() {
                    create_dirs(parent, 0o755, None, link)?;
                }
                std::os::unix::fs::symlink(target, &*p).map_err(ioe("symlink", link))?;
            }
        }
    }
    Ok(())
}

fn copy(
    root: &Path,
    c: &CopyAction,
    sources: &[PathBuf],
    link: Option<SharedLinker>,
) -> Result<()> {
    let empty = PathBuf::new();
    let src_root = match c.source {
        Some(i) => sources.get(i as usize).unwrap_or(&empty),
        None => &empty,
    };
    // Matches are paths inside the source as written; each is resolved (and its directory held
    // open) only while it is copied, so that many matches do not hold many descriptors.
    let matches = if src_root.as_os_str().is_empty() {
        Vec::new()
    } else if c.allow_wildcard && has_meta(&c.src) {
        expand(src_root, &c.src)?
    } else {
        let p = resolve_in(src_root, &c.src, c.follow_symlinks).map_err(ioe("resolve", &c.src))?;
        if fs::symlink_metadata(&p).is_ok() {
            vec![c.src.clone()]
        } else {
            Vec::new()
        }
    };
    if matches.is_empty() {
        if c.allow_wildcard && has_meta(&c.src) {
            if c.allow_empty_wildcard {
                return Ok(());
            }
            return Err(FileOpError::NoMatch(c.src.clone()));
        }
        return Err(FileOpError::NotFound(c.src.clone()));
    }
    let ids = c
        .owner
        .as_ref()
        .map(|o| resolve_owner(root, o))
        .transpose()?;
    let dest = resolve_in(root, &c.dest, true).map_err(ioe("resolve", &c.dest))?;
    let mut opts = CopyOpts::new(c, ids)?;
    opts.link = link;
    for rel in &matches {
        let m = resolve_in(src_root, rel, c.follow_symlinks).map_err(ioe("resolve", rel))?;
        // Never `metadata`: a symlink that is not followed inside the root must not be
        // followed on the host either.
        let md = fs::symlink_metadata(&m).map_err(ioe("stat", rel))?;
        if c.unpack && md.is_file() {
            if let Some(reader) = unpack::open_archive(&m)? {
                // An archive always unpacks into `dest` as a directory, as in BuildKit.
                unpack::extract(reader, &dest, ids, rel.trim_start_matches('/'))?;
                continue;
            }
        }
        if md.is_dir() && c.dir_contents_only {
            let existed = dest.is_dir();
            if c.create_dest_path {
                create_dirs(&dest, opts.created_dir_mode(), ids, &c.dest)?;
            }
            copy_from(
                Step::Contents,
                &m,
                &dest,
                &m,
                &opts,
                &c.dest,
                &Inherited::default(),
            )?;
            // A destination the copy made takes the copied directory's time (as fsutil's
            // copy gives a directory it creates its source's), not the time of the build.
            if !existed && dest.is_dir() {
                set_mtime(&dest, &md);
            }
        } else {
            // The name as the source was written or matched: a followed symlink keeps the
            // link's name with its target's content, as fsutil's copy (`filepath.Base(src)`)
            // in BuildKit. A path without a last name (`/`) takes the found one's.
            let name = Path::new(rel)
                .file_name()
                .or_else(|| m.name())
                .map(PathBuf::from)
                .unwrap_or_default();
            // As fsutil's copy in BuildKit: into the destination when it ends with `/` or is
            // a directory by now (an earlier match may have made it), else onto it. Several
            // matches onto a path that is not a directory replace one another there.
            let into = c.dest.ends_with('/') || dest.is_dir();
            let target = if into {
                dest.join(name)
            } else {
                dest.to_path_buf()
            };
            if let Some(parent) = target.parent() {
                if c.create_dest_path {
                    create_dirs(parent, opts.created_dir_mode(), ids, &c.dest)?;
                }
            }
            copy_from(
                Step::Entry,
                &m,
                &target,
                &m,
                &opts,
                &c.dest,
                &Inherited::default(),
            )?;
        }
    }
    Ok(())
}

struct CopyOpts {
    ids: Option<(u32, u32)>,
    chmod: Option<Chmod>,
    /// `--exclude`: moby/patternmatcher patterns (later `!` re-includes), as fsutil's copy
    /// applies them in BuildKit.
    excludes: Option<PatternMatcher>,
    /// `--parents` and include filters: only paths matching these patterns (relative to the
    /// copied directory) and what is below them are copied, with the directories leading to
    /// them.
    includes: Option<Includes>,
    /// Files copied unchanged from an immutable layer are hard links to it (`direct`).
    link: Option<SharedLinker>,
}

/// Include patterns, matched by kiln-ignore's linear matcher (a `**` never backtracks).
struct Includes {
    /// Whether a path or one of its parents matches a pattern.
    matcher: PatternMatcher,
    /// The same patterns as `!` exclusions, only asked whether something strictly below a
    /// directory could match them.
    below: PatternMatcher,
}

impl CopyOpts {
    /// The mode of directories the copy creates on the way to its destination: an octal
    /// `--chmod`'s, else 0755 (a symbolic one too), as fsutil's `MkdirAll` in BuildKit
    /// (moby/buildkit#4945). Directories that exist keep theirs.
    fn created_dir_mode(&self) -> u32 {
        match &self.chmod {
            Some(Chmod::Octal(m)) => *m & 0o7777,
            _ => 0o755,
        }
    }

    fn new(c: &CopyAction, ids: Option<(u32, u32)>) -> Result<CopyOpts> {
        let pattern_err = |source| FileOpError::Pattern {
            src: c.src.clone(),
            source,
        };
        let excludes = if c.exclude_patterns.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(&c.exclude_patterns).map_err(pattern_err)?)
        };
        let includes = if c.include_patterns.is_empty() {
            None
        } else {
            let negated = c.include_patterns.iter().map(|p| format!("!{p}"));
            Some(Includes {
                matcher: PatternMatcher::new(&c.include_patterns).map_err(pattern_err)?,
                below: PatternMatcher::new(negated).map_err(pattern_err)?,
            })
        };
        Ok(CopyOpts {
            ids,
            chmod: c.mode.clone(),
            excludes,
            includes,
            link: None,
        })
    }
}

/// What the patterns said about a directory, handed to its entries so that no entry re-matches
/// its ancestors (a deep tree stays linear).
#[derive(Clone, Default)]
struct Inherited {
    include: MatchInfo,
    exclude: MatchInfo,
}

/// How an entry fares against the include and exclude patterns.
struct Verdict {
    /// Copied (with everything below it, subject to the excludes).
    included: bool,
    /// Not included itself, but a directory below which included paths may lie.
    walk_into: bool,
    excluded: bool,
    info: Inherited,
}

fn verdict(opts: &CopyOpts, rel: &str, parent: &Inherited) -> Result<Verdict> {
    let pattern_err = |source| FileOpError::Pattern {
        src: rel.to_owned(),
        source,
    };
    let mut info = Inherited::default();
    let (included, walk_into) = match &opts.includes {
        None => (true, false),
        Some(inc) => {
            let (m, i) = inc
                .matcher
                .matches_using_parent_results(rel, &parent.include)
                .map_err(pattern_err)?;
            info.include = i;
            (m, !m && inc.below.could_reinclude_under(rel))
        }
    };
    let excluded = match &opts.excludes {
        None => false,
        Some(ex) => {
            let (m, i) = ex
                .matches_using_parent_results(rel, &parent.exclude)
                .map_err(pattern_err)?;
            info.exclude = i;
            m
        }
    };
    Ok(Verdict {
        included,
        walk_into,
        excluded,
        info,
    })
}

/// Copies `src` to `dst` (`Step::Entry`) or the entries of directory `src` into `dst`
/// (`Step::Contents`).
fn copy_from(
    step: Step,
    src: &Path,
    dst: &Path,
    base: &Path,
    opts: &CopyOpts,
    shown: &str,
    info: &Inherited,
) -> Result<()> {
    let job = Job {
        src: src.to_owned(),
        dst: dst.to_owned(),
        info: info.clone(),
        step,
    };
    walk(job, base, opts, shown)
}

/// One step of a copy walk.
struct Job {
    src: PathBuf,
    dst: PathBuf,
    /// What the patterns said about `src` (for its entries).
    info: Inherited,
    step: Step,
}

enum Step {
    /// Copy `src` to `dst`: a file or symlink at once, a directory with its contents.
    Entry,
    /// Copy the entries of directory `src` into `dst`, as the patterns allow.
    Contents,
    /// A directory on the way to copied paths: made only if something lands in it.
    Lazy,
    /// The entries of a copied directory are done: give it its metadata (last, so that a
    /// read-only mode does not stop its entries and writing them does not change its time).
    FinishDir(fs::Metadata),
    /// The entries of a lazy directory are done: drop it if it stayed empty and was new.
    FinishLazy { existed: bool },
}

/// Copies a tree depth first with an explicit stack: a tree thousands of directories deep
/// (which a RUN step can make) must not overflow the thread's stack.
fn walk(first: Job, base: &Path, opts: &CopyOpts, shown: &str) -> Result<()> {
    let mut stack = vec![first];
    while let Some(job) = stack.pop() {
        let Job {
            src,
            dst,
            info,
            step,
        } = job;
        match step {
            Step::Contents => {
                let mut entries = fs::read_dir(&src)
                    .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
                    .map_err(ioe("read dir", shown))?;
                entries.sort_by_key(|e| e.file_name());
                // With a linker, the source and destination directories open: most entries are
                // files linked unchanged, each then one name looked up on each side.
                let mut dirs = opts
                    .link
                    .as_ref()
                    .map(|_| at::Dir::open(&src).and_then(|s| Ok((s, at::Dir::open(&dst)?))))
                    .and_then(io::Result::ok);
                // Pushed last to first, so that they are copied in name order.
                for e in entries.iter().rev() {
                    let child_src = e.path();
                    let rel = child_src
                        .strip_prefix(base)
                        .unwrap_or(&child_src)
                        .to_string_lossy()
                        .into_owned();
                    let v = verdict(opts, &rel, &info)?;
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    // An excluded directory is still walked when a later `!` pattern may
                    // bring back something below it, as fsutil's copy does.
                    let reincluded_below = || {
                        opts.excludes
                            .as_ref()
                            .is_some_and(|ex| ex.could_reinclude_under(&rel))
                    };
                    let step = if v.excluded {
                        if is_dir && (v.included || v.walk_into) && reincluded_below() {
                            Step::Lazy
                        } else {
                            continue;
                        }
                    } else if v.included {
                        Step::Entry
                    } else if v.walk_into && is_dir {
                        Step::Lazy
                    } else {
                        continue;
                    };
                    if matches!(step, Step::Entry) && !is_dir {
                        if let Some((from, to)) = &dirs {
                            match link_entry(e, from, to, opts) {
                                Ok(true) => continue,
                                Ok(false) => {}
                                // Copied the usual way below, which reports what fails.
                                Err(_) => dirs = None,
                            }
                        }
                    }
                    stack.push(Job {
                        dst: dst.join(e.file_name()),
                        src: child_src,
                        info: v.info,
                        step,
                    });
                }
            }
            Step::Lazy => {
                let existed = dst.exists();
                if !existed {
                    fs::create_dir(&dst).map_err(ioe("mkdir", shown))?;
                }
                stack.push(Job {
                    src: src.clone(),
                    dst: dst.clone(),
                    info: Inherited::default(),
                    step: Step::FinishLazy { existed },
                });
                stack.push(Job {
                    src,
                    dst,
                    info,
                    step: Step::Contents,
                });
            }
            Step::FinishLazy { existed } => {
                if existed {
                    continue;
                }
                let empty = fs::read_dir(&dst)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(false);
                if empty {
                    fs::remove_dir(&dst).map_err(ioe("rmdir", shown))?;
                } else {
                    let md = fs::symlink_metadata(&src).map_err(ioe("stat", shown))?;
                    set_meta(
                        &dst,
                        Some(md.mode() & 0o7777),
                        opts.ids.or(Some((md.uid(), md.gid()))),
                        shown,
                    )?;
                    set_mtime(&dst, &md);
                }
            }
            Step::FinishDir(md) => {
                let ids = opts.ids.or(Some((md.uid(), md.gid())));
                let mode = chmod(opts.chmod.as_ref(), md.mode() & 0o7777, true)?;
                set_meta(&dst, Some(mode), ids, shown)?;
                set_mtime(&dst, &md);
            }
            Step::Entry => {
                let md = fs::symlink_metadata(&src).map_err(ioe("stat", shown))?;
                if md.is_dir() {
                    match fs::symlink_metadata(&dst) {
                        Ok(d) if d.is_dir() => {}
                        Ok(_) => {
                            fs::remove_file(&dst).map_err(ioe("replace", shown))?;
                            fs::create_dir(&dst).map_err(ioe("mkdir", shown))?;
                        }
                        Err(_) => fs::create_dir(&dst).map_err(ioe("mkdir", shown))?,
                    }
                    stack.push(Job {
                        src: src.clone(),
                        dst: dst.clone(),
                        info: Inherited::default(),
                        step: Step::FinishDir(md),
                    });
                    stack.push(Job {
                        src,
                        dst,
                        info,
                        step: Step::Contents,
                    });
                } else {
                    copy_leaf(&src, &dst, &md, opts, shown)?;
                }
            }
        }
    }
    Ok(())
}

/// Links the directory entry `e` of `from` into `to` under its name when [`copy_leaf`] would
/// link it and nothing stands there: whether it did. An error stops the linking through these
/// directories (the entries are then copied by path).
fn link_entry(e: &fs::DirEntry, from: &at::Dir, to: &at::Dir, opts: &CopyOpts) -> io::Result<bool> {
    let Some(linker) = &opts.link else {
        return Ok(false);
    };
    // Relative to the directory read (as `lstat`): one name looked up.
    let md = e.metadata()?;
    if !linkable(&md, opts)? {
        return Ok(false);
    }
    let name = e.file_name();
    Ok(linker.borrow_mut().link_at(&md, from, &name, to))
}

/// Whether a file of metadata `md` is copied as a link to itself: a non-empty regular file
/// that keeps its owner and mode.
fn linkable(md: &fs::Metadata, opts: &CopyOpts) -> io::Result<bool> {
    if !md.is_file() || md.len() == 0 {
        return Ok(false);
    }
    let ids = opts.ids.or(Some((md.uid(), md.gid())));
    let mode = chmod(opts.chmod.as_ref(), md.mode() & 0o7777, false).map_err(io::Error::other)?;
    Ok(ids == Some((md.uid(), md.gid())) && mode == md.mode() & 0o7777)
}

/// Copies a file or symlink `src` (of metadata `md`) to `dst`, replacing what is there.
fn copy_leaf(
    src: &Path,
    dst: &Path,
    md: &fs::Metadata,
    opts: &CopyOpts,
    shown: &str,
) -> Result<()> {
    let ft = md.file_type();
    let ids = opts.ids.or(Some((md.uid(), md.gid())));
    let mode = if ft.is_file() {
        chmod(opts.chmod.as_ref(), md.mode() & 0o7777, false)?
    } else {
        md.mode() & 0o7777
    };
    // The same owner, mode and mtime: the source's inode itself will do. Tried before looking
    // for something to replace: a layer written directly is mostly new paths.
    let same = ids == Some((md.uid(), md.gid())) && mode == md.mode() & 0o7777;
    let linker = opts
        .link
        .as_ref()
        .filter(|_| ft.is_file() && same && md.len() > 0);
    if let Some(l) = linker {
        if let Ok(true) = l.borrow_mut().link(src, md, dst) {
            return Ok(());
        }
    }
    if let Ok(existing) = fs::symlink_metadata(dst) {
        if existing.is_dir() {
            fs::remove_dir_all(dst).map_err(ioe("replace", shown))?;
        } else {
            fs::remove_file(dst).map_err(ioe("replace", shown))?;
        }
        if let Some(l) = linker {
            if l.borrow_mut().link_again(src, md, dst) {
                return Ok(());
            }
        }
    }
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(ioe("readlink", shown))?;
        std::os::unix::fs::symlink(&target, dst).map_err(ioe("symlink", shown))?;
        if let Some((u, g)) = ids {
            let _ = std::os::unix::fs::lchown(dst, Some(u), Some(g));
        }
        set_link_mtime(dst, md.mtime(), md.mtime_nsec());
        return Ok(());
    }
    if ft.is_file() {
        fs::copy(src, dst).map_err(ioe("copy", shown))?;
        set_meta(dst, Some(mode), ids, shown)?;
        set_mtime(dst, md);
    }
    // Sockets, fifos and devices are not copied, as in BuildKit's COPY.
    Ok(())
}

/// Gives `p` the modification time of `md` (best effort: a filesystem that refuses keeps its own).
pub(crate) fn set_mtime(p: &Path, md: &fs::Metadata) {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            md.mtime().max(0) as u64,
            md.mtime_nsec().clamp(0, 999_999_999) as u32,
        );
    if let Ok(f) = fs::File::open(p) {
        let _ = f.set_modified(t);
    }
}

/// Gives the symlink `p` itself (not its target) a modification time, as BuildKit keeps a
/// link's (best effort, as [`set_mtime`]).
pub(crate) fn set_link_mtime(p: &Path, secs: i64, nsecs: i64) {
    use nix::sys::time::TimeSpec;
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(secs, nsecs),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

fn set_meta(p: &Path, mode: Option<u32>, ids: Option<(u32, u32)>, shown: &str) -> Result<()> {
    if let Some((u, g)) = ids {
        std::os::unix::fs::lchown(p, Some(u), Some(g)).map_err(ioe("chown", shown))?;
    }
    // chown clears setuid bits, so the mode goes last.
    if let Some(m) = mode {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).map_err(ioe("chmod", shown))?;
    }
    Ok(())
}

/// `mkdir -p`, giving new directories `mode` and owner; `shown` names `p` in errors.
fn create_dirs(p: &Path, mode: u32, ids: Option<(u32, u32)>, shown: &str) -> Result<()> {
    if p.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = p;
    while !cur.exists() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(parent) => cur = parent,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        fs::create_dir(d).map_err(ioe("mkdir", shown))?;
        set_meta(d, Some(mode), ids, shown)?;
    }
    Ok(())
}

fn chmod(spec: Option<&Chmod>, current: u32, is_dir: bool) -> Result<u32> {
    match spec {
        None => Ok(current),
        Some(Chmod::Octal(m)) => Ok(*m & 0o7777),
        Some(Chmod::Symbolic(s)) => {
            symbolic_mode(s, current, is_dir).ok_or_else(|| FileOpError::Chmod(s.clone()))
        }
    }
}

/// `chmod`'s symbolic modes: `[ugoa]*[+-=][rwxXst]*`, comma separated.
fn symbolic_mode(spec: &str, mut mode: u32, is_dir: bool) -> Option<u32> {
    for clause in spec.split(',') {
        let op_pos = clause.find(['+', '-', '='])?;
        let (who, rest) = clause.split_at(op_pos);
        let mut who_mask = 0;
        for c in who.chars() {
            who_mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                'a' => 0o7777,
                _ => return None,
            };
        }
        if who_mask == 0 {
            who_mask = 0o7777;
        }
        let mut chars = rest.chars();
        let op = chars.next()?;
        let mut bits = 0;
        for c in chars {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                'X' => 0,
                's' => 0o6000,
                't' => 0o1000,
                _ => return None,
            };
        }
        let bits = bits & who_mask;
        mode = match op {
            '+' => mode | bits,
            '-' => mode & !bits,
            _ => (mode & !who_mask) | bits,
        };
    }
    Some(mode & 0o7777)
}

fn resolve_owner(root: &Path, o: &Chown) -> Result<(u32, u32)> {
    let (uid, primary_gid) = match &o.user {
        UserRef::Id(u) => (*u, *u),
        UserRef::Name(n) => lookup(root, "passwd", n)?,
    };
    let gid = match &o.group {
        None => primary_gid,
        Some(UserRef::Id(g)) => *g,
        Some(UserRef::Name(n)) => lookup(root, "group", n)?.0,
    };
    Ok((uid, gid))
}

/// Finds `name` in the filesystem's /etc/passwd (→ uid, gid) or /etc/group (→ gid, gid).
fn lookup(root: &Path, file: &'static str, name: &str) -> Result<(u32, u32)> {
    let unknown = || FileOpError::UnknownUser {
        kind: if file == "passwd" { "user" } else { "group" },
        name: name.to_owned(),
        file,
    };
    let p = resolve_in(root, &format!("/etc/{file}"), true).map_err(|_| unknown())?;
    let text = fs::read_to_string(&p).map_err(|_| unknown())?;
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.first() != Some(&name) {
                return None;
            }
            let id = f.get(2)?.parse().ok()?;
            let gid = if file == "passwd" {
                f.get(3)?.parse().ok()?
            } else {
                id
            };
            Some((id, gid))
        })
        .ok_or_else(unknown)
}

fn has_meta(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// The paths inside `root` (as written, `/`-separated, relative to it) matching the glob
/// `pattern`, sorted. Directories are read inside the root: a symlink on the way cannot list a
/// host directory.
fn expand(root: &Path, pattern: &str) -> Result<Vec<String>> {
    let mut cur = vec![String::new()];
    for seg in pattern.split('/').filter(|s| !s.is_empty() && *s != ".") {
        let mut next = Vec::new();
        for rel in &cur {
            let join = |name: &str| {
                if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                }
            };
            if !has_meta(seg) {
                let candidate = join(seg);
                let exists = resolve_in(root, &candidate, false)
                    .is_ok_and(|p| fs::symlink_metadata(&p).is_ok());
                if exists {
                    next.push(candidate);
                }
                continue;
            }
            let Ok(dir) = resolve_in(root, rel, true) else {
                continue;
            };
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                // A name that is not UTF-8 cannot be named again through a `&str` path.
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for n in names {
                if glob_match(seg, &n) {
                    next.push(join(&n));
                }
            }
        }
        cur = next;
    }
    if cur.len() == 1 && cur[0].is_empty() {
        return Ok(Vec::new());
    }
    Ok(cur)
}

/// Go's `filepath.Match` for one path segment: `*`, `?`, `[...]` (with `^`/`!` and ranges) and
/// `\` escapes.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star_p, mut star_n) = (usize::MAX, 0);
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star_p = pi;
                    star_n = ni;
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class(&p[pi..], n[ni]) {
                        if matched {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        if star_p != usize::MAX {
            pi = star_p + 1;
            star_n += 1;
            ni = star_n;
            continue;
        }
        return false;
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class at the start of `p`; returns (matched, class length).
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some('^') | Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = if p[i] == '\\' {
            i += 1;
            *p.get(i)?
        } else {
            p[i]
        };
        i += 1;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&x| x != ']') {
            i += 1;
            let h = if p[i] == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                p[i]
            };
            i += 1;
            h
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::CopyAction;

    fn tree(root: &Path, files: &[(&str, &str)]) {
        for (p, c) in files {
            let p = root.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
    }

    /// A temporary directory with `src` and an existing `dst` in it.
    fn src_and_dst() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(&dst).unwrap();
        (t, src, dst)
    }

    #[test]
    fn include_patterns_keep_only_matching_paths_and_their_parents() {
        let (_t, src, dst) = src_and_dst();
        tree(
            &src,
            &[
                ("pkgs/a/manifest.txt", "a"),
                ("pkgs/b/manifest.txt", "b"),
                ("pkgs/b/other.txt", "o"),
                ("top.txt", "t"),
                ("deep/x/y/keep.md", "k"),
            ],
        );
        let mut c = CopyAction::new(Some(0), "/", "/out/");
        c.include_patterns = vec!["pkgs/*/manifest.txt".into(), "**/*.md".into()];
        apply(&dst, &[FileAction::Copy(c)], &[src]).unwrap();
        assert_eq!(
            fs::read_to_string(dst.join("out/pkgs/a/manifest.txt")).unwrap(),
            "a"
        );
        assert_eq!(
            fs::read_to_string(dst.join("out/pkgs/b/manifest.txt")).unwrap(),
            "b"
        );
        assert_eq!(
            fs::read_to_string(dst.join("out/deep/x/y/keep.md")).unwrap(),
            "k"
        );
        assert!(!dst.join("out/pkgs/b/other.txt").exists());
        assert!(!dst.join("out/top.txt").exists());
    }

    #[test]
    fn many_double_stars_over_a_deep_tree_match_in_linear_time() {
        let (_t, src, dst) = src_and_dst();
        let mut dir = src.clone();
        for i in 0..40 {
            dir = dir.join(format!("d{i}"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("other.txt"), "o").unwrap();
        }
        fs::write(dir.join("leaf.txt"), "leaf").unwrap();
        let mut c = CopyAction::new(Some(0), "/", "/out/");
        c.include_patterns = vec!["**/**/**/**/**/**/**/leaf.txt".into()];
        let start = std::time::Instant::now();
        apply(&dst, &[FileAction::Copy(c)], &[src]).unwrap();
        // Used to backtrack for minutes; a generous bound, not a benchmark.
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        let rel: PathBuf = (0..40).map(|i| format!("d{i}")).collect();
        let out = dst.join("out").join(&rel);
        assert_eq!(fs::read_to_string(out.join("leaf.txt")).unwrap(), "leaf");
        assert!(!out.join("other.txt").exists());
        assert!(!dst.join("out/d0/other.txt").exists());
    }

    #[test]
    fn a_followed_symlink_keeps_its_name() {
        // BuildKit's testCopySymlinks: named or matched by a wildcard, a symlink is followed
        // and the copy is named after the link, not its target.
        let (_t, src, dst) = src_and_dst();
        tree(&src, &[("tool-2.1", "tool"), ("sub/baz", "baz")]);
        std::os::unix::fs::symlink("tool-2.1", src.join("tool")).unwrap();
        std::os::unix::fs::symlink("baz", src.join("sub/l0")).unwrap();
        let named = CopyAction::new(Some(0), "/tool", "/bin/");
        let mut matched = CopyAction::new(Some(0), "/sub/l*", "/links/");
        matched.allow_wildcard = true;
        apply(
            &dst,
            &[FileAction::Copy(named), FileAction::Copy(matched)],
            &[src],
        )
        .unwrap();
        let tool = dst.join("bin/tool");
        assert!(fs::symlink_metadata(&tool).unwrap().is_file());
        assert_eq!(fs::read_to_string(&tool).unwrap(), "tool");
        assert!(!dst.join("bin/tool-2.1").exists());
        assert_eq!(fs::read_to_string(dst.join("links/l0")).unwrap(), "baz");
        assert!(!dst.join("links/baz").exists());
    }

    #[test]
    fn an_octal_chmod_sets_the_mode_of_created_directories() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let (_t, src, dst) = src_and_dst();
        tree(&src, &[("app.conf", "k=v")]);
        fs::create_dir(dst.join("etc")).unwrap();
        fs::set_permissions(dst.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        let mut octal = CopyAction::new(Some(0), "/app.conf", "/etc/app/conf.d/");
        octal.mode = Some(Chmod::Octal(0o750));
        let mut symbolic = CopyAction::new(Some(0), "/app.conf", "/etc/other/conf.d/");
        symbolic.mode = Some(Chmod::Symbolic("u=rw,go=r".into()));
        apply(
            &dst,
            &[FileAction::Copy(octal), FileAction::Copy(symbolic)],
            &[src],
        )
        .unwrap();
        // Created ones take the octal mode (moby/buildkit#4945); an existing one keeps its own.
        assert_eq!(mode(dst.join("etc")), 0o755);
        assert_eq!(mode(dst.join("etc/app")), 0o750);
        assert_eq!(mode(dst.join("etc/app/conf.d")), 0o750);
        assert_eq!(mode(dst.join("etc/app/conf.d/app.conf")), 0o750);
        assert_eq!(mode(dst.join("etc/other")), 0o755);
        assert_eq!(mode(dst.join("etc/other/conf.d")), 0o755);
        assert_eq!(mode(dst.join("etc/other/conf.d/app.conf")), 0o644);
    }

    #[test]
    fn exclude_patterns_follow_patternmatcher() {
        let (_t, src, dst) = src_and_dst();
        tree(
            &src,
            &[
                ("a/x.md", "1"),
                ("a/b/y.md", "2"),
                ("a/b/keep.md", "3"),
                ("a/z.txt", "4"),
                ("vendor/v.txt", "5"),
            ],
        );
        let mut c = CopyAction::new(Some(0), "/", "/out/");
        c.exclude_patterns = vec!["**/*.md".into(), "!a/b/keep.md".into(), "vendor".into()];
        apply(&dst, &[FileAction::Copy(c)], &[src]).unwrap();
        assert!(!dst.join("out/a/x.md").exists());
        assert!(!dst.join("out/a/b/y.md").exists());
        assert!(!dst.join("out/vendor").exists());
        assert_eq!(
            fs::read_to_string(dst.join("out/a/b/keep.md")).unwrap(),
            "3"
        );
        assert_eq!(fs::read_to_string(dst.join("out/a/z.txt")).unwrap(), "4");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.go", "a.go"));
        assert!(!glob_match("*.go", "a.rs"));
        assert!(glob_match("fi?e[0-9]", "file7"));
        assert!(glob_match("[^a]*", "b"));
        assert!(!glob_match("[!a]*", "ab"));
        assert!(glob_match("a\\*", "a*"));
    }

    #[test]
    fn copy_semantics() {
        let (_t, src, dst) = src_and_dst();
        tree(
            &src,
            &[
                ("dir/a.txt", "a"),
                ("dir/sub/b.txt", "b"),
                ("one.go", "1"),
                ("two.go", "2"),
            ],
        );
        tree(
            &dst,
            &[(
                "etc/passwd",
                "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
            )],
        );
        let sources = vec![src.clone()];
        let mut c1 = CopyAction::new(Some(0), "dir", "/app");
        c1.owner = Some(Chown {
            user: UserRef::Name("app".into()),
            group: None,
        });
        let c2 = CopyAction::new(Some(0), "*.go", "/gos/");
        let mut c3 = CopyAction::new(Some(0), "one.go", "/renamed.go");
        c3.mode = Some(Chmod::Octal(0o751));
        let c4 = CopyAction::new(Some(0), "missing", "/x");
        apply(
            &dst,
            &[
                FileAction::Copy(c1),
                FileAction::Copy(c2),
                FileAction::Copy(c3),
            ],
            &sources,
        )
        .unwrap();
        // Directory contents, not the directory itself.
        assert_eq!(fs::read_to_string(dst.join("app/a.txt")).unwrap(), "a");
        assert_eq!(fs::read_to_string(dst.join("app/sub/b.txt")).unwrap(), "b");
        let md = fs::metadata(dst.join("app/sub/b.txt")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
        assert!(dst.join("gos/one.go").is_file() && dst.join("gos/two.go").is_file());
        assert_eq!(
            fs::metadata(dst.join("renamed.go")).unwrap().mode() & 0o7777,
            0o751
        );
        let err = apply(&dst, &[FileAction::Copy(c4)], &sources).unwrap_err();
        assert_eq!(err.to_string(), "\"missing\" not found");
    }

    #[test]
    fn destination_without_slash_is_a_directory_only_if_one_exists() {
        // `WORKDIR /src` + `COPY go.mod go.sum ..`-style copies: the frontend sends `/src`
        // without a trailing slash; the copy decides at solve time, as fsutil's does in BuildKit.
        let (_t, src, dst) = src_and_dst();
        tree(
            &src,
            &[
                ("go.mod", "module x"),
                ("go.sum", "sums"),
                ("pkg/a.go", "a"),
                ("one.go", "1"),
                ("two.go", "2"),
            ],
        );
        fs::create_dir_all(dst.join("src")).unwrap();
        let sources = vec![src.clone()];
        let copies = [
            CopyAction::new(Some(0), "go.*", "/src"),
            CopyAction::new(Some(0), "pkg", "/src"),
            // Several wildcard matches onto a path that is not a directory: each replaces the
            // last (BuildKit's result), not a directory made up for them.
            CopyAction::new(Some(0), "*.go", "/file"),
            // A directory copied first makes the destination a directory for the file after it.
            CopyAction::new(Some(0), "pkg", "/made"),
            CopyAction::new(Some(0), "one.go", "/made"),
        ];
        apply(&dst, &copies.map(FileAction::Copy), &sources).unwrap();
        let read = |p: &str| fs::read_to_string(dst.join(p)).unwrap();
        assert_eq!(read("src/go.mod"), "module x");
        assert_eq!(read("src/go.sum"), "sums");
        assert_eq!(read("src/a.go"), "a");
        assert_eq!(read("file"), "2");
        assert_eq!(
            (read("made/a.go"), read("made/one.go")),
            ("a".into(), "1".into())
        );
    }

    #[test]
    fn symlinked_destination_stays_inside_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let a = FileAction::Mkfile {
            path: "/escape/pwned".into(),
            mode: 0o644,
            data: "x".into(),
            owner: None,
        };
        apply(&root, &[a], &[]).unwrap();
        assert!(!outside.join("pwned").exists());
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("pwned")
            .exists());
    }

    #[test]
    fn sources_never_reach_the_host_through_symlinks() {
        let (t, src, dst) = src_and_dst();
        let outside = t.path().join("outside");
        tree(&outside, &[("secret", "host")]);
        tree(&src, &[("ok.txt", "ok")]);
        std::os::unix::fs::symlink(&outside, src.join("d")).unwrap();
        // A wildcard below a symlink to a host directory lists the source's own tree.
        let mut c = CopyAction::new(Some(0), "/d/*", "/w/");
        c.allow_empty_wildcard = false;
        let sources = std::slice::from_ref(&src);
        let err = apply(&dst, &[FileAction::Copy(c)], sources).unwrap_err();
        assert!(matches!(err, FileOpError::NoMatch(_)), "{err}");
        assert!(!dst.join("w/secret").exists());
        // A symlink that is not followed is copied as a symlink, not as the host directory.
        let mut c = CopyAction::new(Some(0), "/d", "/nf/");
        c.follow_symlinks = false;
        apply(&dst, &[FileAction::Copy(c)], sources).unwrap();
        assert!(!dst.join("nf/secret").exists());
        assert!(fs::symlink_metadata(dst.join("nf/d"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Removing through a wildcard stays inside too.
        let rm = FileAction::Rm {
            path: "/d/*".into(),
            allow_not_found: true,
            allow_wildcard: true,
        };
        apply(&src, &[rm], &[]).unwrap();
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "host");
    }

    #[test]
    fn deep_tree_copy_fits_a_blocking_thread_stack() {
        let (_t, src, dst) = src_and_dst();
        let depth = (4000 - src.as_os_str().len()) / 2;
        let rel: PathBuf = std::iter::repeat_n("a", depth).collect();
        fs::create_dir_all(src.join(&rel)).unwrap();
        fs::write(src.join(&rel).join("f"), "deep").unwrap();
        let (s2, d2) = (src.clone(), dst.clone());
        // Tokio's blocking threads, where file ops run, have 2 MiB stacks.
        let r = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let c = CopyAction::new(Some(0), "/", "/");
                apply(&d2, &[FileAction::Copy(c)], &[s2]).map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .unwrap();
        r.unwrap();
        assert_eq!(
            fs::read_to_string(dst.join(&rel).join("f")).unwrap(),
            "deep"
        );
    }

    #[test]
    fn symbolic_modes() {
        assert_eq!(symbolic_mode("u+x", 0o644, false), Some(0o744));
        assert_eq!(symbolic_mode("go-r", 0o644, false), Some(0o600));
        assert_eq!(symbolic_mode("a=rX", 0o700, true), Some(0o555));
        assert_eq!(symbolic_mode("bogus", 0o644, false), None);
    }
}
