//! COPY straight into its layer. A file op made only of plain copies does not need to see its
//! base through a write view: its layer is an overlayfs upper dir, and what a copy adds to it
//! is the copied files plus the directories on the way to each destination. So the copies run
//! into an empty directory that becomes the layer, after the base's directories on those ways
//! are made there with their metadata (as overlayfs copies a directory up before writing in
//! it), and a file taken unchanged from an immutable layer is a hard link to it there (as
//! BuildKit's merge snapshotter links unchanged files between snapshots). Every file operation
//! through an overlay mount costs several of a plain directory's, and copying no bytes costs
//! nothing: a 20 000-file COPY goes from seconds to a fraction of one.
//!
//! Only where the outcome cannot differ: every destination's way through the base is made of
//! directories or of nothing (a symlink or a file on it would be resolved or replaced in the
//! base), no owner is a name (it is looked up in the base's `/etc/passwd`), no archive is
//! extracted.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use kiln_graph::{FileAction, UserRef};

use super::at;

/// The base's directories a direct copy makes in its layer, parents first.
pub(crate) struct Direct {
    dirs: Vec<(PathBuf, fs::Metadata)>,
}

/// Whether `actions` can be applied directly, `base` being a view of the base (none: scratch).
pub(crate) fn plan(base: Option<&Path>, actions: &[FileAction]) -> Option<Direct> {
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    for a in actions {
        let FileAction::Copy(c) = a else { return None };
        let named = |u: &UserRef| matches!(u, UserRef::Name(_));
        if c.unpack
            || c.owner
                .as_ref()
                .is_some_and(|o| named(&o.user) || o.group.as_ref().is_some_and(named))
        {
            return None;
        }
        let mut rel = PathBuf::new();
        for comp in Path::new(&c.dest).components() {
            match comp {
                Component::RootDir | Component::CurDir => continue,
                Component::Normal(n) => rel.push(n),
                Component::ParentDir | Component::Prefix(_) => return None,
            }
            let Some(base) = base else { break };
            match fs::symlink_metadata(base.join(&rel)) {
                Ok(md) if md.is_dir() => {
                    if !dirs.iter().any(|(d, _)| *d == rel) {
                        dirs.push((rel.clone(), md));
                    }
                }
                Ok(_) => return None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(_) => return None,
            }
        }
    }
    Some(Direct { dirs })
}

impl Direct {
    /// Makes the base's directories in the empty layer directory `root`.
    pub(crate) fn prepare(&self, root: &Path) -> io::Result<()> {
        for (rel, md) in &self.dirs {
            let d = root.join(rel);
            fs::create_dir(&d)?;
            std::os::unix::fs::lchown(&d, Some(md.uid()), Some(md.gid()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(md.mode() & 0o7777))?;
            set_mtime(&d, md);
        }
        Ok(())
    }

    /// After the copies: a base directory that only leads to others keeps its time, as
    /// overlayfs keeps a parent's when it copies a child up; one the copies wrote into has
    /// the time of that write, as through a mount.
    pub(crate) fn finish(&self, root: &Path) {
        let made: HashSet<&Path> = self.dirs.iter().map(|(d, _)| d.as_path()).collect();
        for (rel, md) in self.dirs.iter().rev() {
            let only_ways = fs::read_dir(root.join(rel)).is_ok_and(|entries| {
                entries
                    .flatten()
                    .all(|e| made.contains(rel.join(e.file_name()).as_path()))
            });
            if only_ways {
                set_mtime(&root.join(rel), md);
            }
        }
    }
}

fn set_mtime(p: &Path, md: &fs::Metadata) {
    if let Ok(t) = md.modified() {
        if let Ok(f) = fs::File::open(p) {
            let _ = f.set_modified(t);
        }
    }
}

/// Hard links of one direct copy: each inode once in the layer (a second name would be a
/// hard link entry in its tar, which a copy is not).
#[derive(Default)]
pub(crate) struct Linker {
    inodes: HashSet<(u64, u64)>,
    /// The size of each inode linked, for [`Linker::layer_total`].
    sizes: HashMap<(u64, u64), u64>,
    linked: bool,
}

impl Linker {
    /// Links `dst` to `src` (of metadata `md`) if its inode is not in the layer yet: whether
    /// it did, or why it could not (`dst` exists: replace it, then [`Linker::link_again`]).
    pub(crate) fn link(&mut self, src: &Path, md: &fs::Metadata, dst: &Path) -> io::Result<bool> {
        if !self.inodes.insert((md.dev(), md.ino())) {
            return Ok(false);
        }
        let linked = fs::hard_link(src, dst);
        if linked.is_err() {
            // Not in the layer after all.
            self.inodes.remove(&(md.dev(), md.ino()));
        }
        linked?;
        self.linked = true;
        self.sizes.insert((md.dev(), md.ino()), md.len());
        Ok(true)
    }

    /// [`Linker::link`] of `name` in the open directory `from` to `to_name` in `to`; false
    /// (nothing done) when the inode is in the layer already or the link fails, for the caller
    /// to copy it by path.
    pub(crate) fn link_at(
        &mut self,
        md: &fs::Metadata,
        from: &at::Dir,
        name: &std::ffi::OsStr,
        to: &at::Dir,
    ) -> bool {
        if !self.inodes.insert((md.dev(), md.ino())) {
            return false;
        }
        if at::link(from, name, to, name).is_err() {
            self.inodes.remove(&(md.dev(), md.ino()));
            return false;
        }
        self.linked = true;
        self.sizes.insert((md.dev(), md.ino()), md.len());
        true
    }

    /// The apparent size of the layer directory `root` this linker filled, as a walk of it
    /// counts (`du -sb`), with a `stat` only for what was not linked: the entries' inode
    /// numbers (from the directory listing) find the linked files' sizes. A COPY of a
    /// 20,000-file context is 20,000 links, whose measure by a walk was as many `stat`s at
    /// the end of the build.
    pub(crate) fn layer_total(&self, root: &Path) -> io::Result<u64> {
        let top = fs::symlink_metadata(root)?;
        let dev = top.dev();
        let mut total = top.len();
        let mut dirs = vec![root.to_owned()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let known = entry
                    .file_type()?
                    .is_file()
                    .then(|| self.sizes.get(&(dev, entry.ino())))
                    .flatten();
                if let Some(size) = known {
                    total += size;
                    continue;
                }
                let md = entry.metadata()?;
                total += md.len();
                if md.is_dir() {
                    dirs.push(entry.path());
                }
            }
        }
        Ok(total)
    }

    /// [`Linker::link`] once what stood at `dst` was removed.
    pub(crate) fn link_again(&mut self, src: &Path, md: &fs::Metadata, dst: &Path) -> bool {
        self.link(src, md, dst).unwrap_or(false)
    }

    /// Whether a file was linked.
    pub(crate) fn linked(&self) -> bool {
        self.linked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::{Chmod, Chown, CopyAction};

    use crate::fileop::apply_direct;

    fn copy(src: &str, dest: &str) -> CopyAction {
        CopyAction::new(Some(0), src, dest)
    }

    #[test]
    fn only_plain_copies_along_directories_of_the_base_go_direct() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path();
        fs::create_dir_all(base.join("usr/local/bin")).unwrap();
        fs::write(base.join("file"), "f").unwrap();
        std::os::unix::fs::symlink("usr/local", base.join("link")).unwrap();
        let direct = |a: CopyAction| plan(Some(base), &[FileAction::Copy(a)]).is_some();
        assert!(direct(copy("/x", "/usr/local/bin/")));
        assert!(direct(copy("/x", "/new/dir/")));
        assert!(plan(None, &[FileAction::Copy(copy("/x", "/link/bin/"))]).is_some());
        // A symlink or a file on the way: resolved or replaced in the base.
        assert!(!direct(copy("/x", "/link/bin/")));
        assert!(!direct(copy("/x", "/file")));
        assert!(!direct(copy("/x", "/file/under")));
        assert!(!direct(copy("/x", "/usr/../etc/")));
        let mut named = copy("/x", "/app/");
        named.owner = Some(Chown {
            user: UserRef::Id(1),
            group: Some(UserRef::Name("staff".into())),
        });
        assert!(!direct(named));
        let mut add = copy("/x.tar", "/app/");
        add.unpack = true;
        assert!(!direct(add));
        let mkdir = FileAction::Mkdir {
            path: "/d".into(),
            mode: 0o755,
            make_parents: true,
            owner: None,
        };
        assert!(plan(Some(base), &[mkdir]).is_none());
        let p = plan(
            Some(base),
            &[FileAction::Copy(copy("/x", "/usr/local/bin/"))],
        )
        .unwrap();
        let dirs: Vec<&Path> = p.dirs.iter().map(|(d, _)| d.as_path()).collect();
        assert_eq!(dirs, ["usr", "usr/local", "usr/local/bin"].map(Path::new));
    }

    #[test]
    fn unchanged_files_are_linked_once_and_the_rest_copied() {
        let t = tempfile::tempdir().unwrap();
        let (src, base, layer) = (
            t.path().join("src"),
            t.path().join("base"),
            t.path().join("l"),
        );
        fs::create_dir_all(src.join("d")).unwrap();
        fs::create_dir_all(base.join("usr/share")).unwrap();
        fs::create_dir_all(&layer).unwrap();
        fs::set_permissions(base.join("usr"), fs::Permissions::from_mode(0o700)).unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        fs::File::open(base.join("usr"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        for (p, c) in [("a", "aa"), ("d/b", "bb"), ("empty", "")] {
            fs::write(src.join(p), c).unwrap();
        }
        let mode = fs::metadata(src.join("a")).unwrap().mode() & 0o7777;
        let mut owned = copy("/d/b", "/usr/share/owned");
        owned.owner = Some(Chown {
            user: UserRef::Id(1234),
            group: None,
        });
        let mut same_mode = copy("/a", "/usr/share/same");
        same_mode.mode = Some(Chmod::Octal(mode));
        let mut other_mode = copy("/a", "/usr/share/other");
        other_mode.mode = Some(Chmod::Octal(0o741));
        let actions =
            [copy("/", "/usr/share/app/"), owned, same_mode, other_mode].map(FileAction::Copy);
        let p = plan(Some(&base), &actions).unwrap();
        let done = apply_direct(&layer, &p, &actions, std::slice::from_ref(&src), &[true]).unwrap();
        assert!(done.linked);
        // The layer's size, found without a stat of each linked file, is what `du -sb` counts.
        let du = std::process::Command::new("du")
            .arg("-sb")
            .arg(&layer)
            .output()
            .expect("du (coreutils) must be installed");
        let du: u64 = String::from_utf8_lossy(&du.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("du -sb prints a size");
        assert_eq!(done.total, Some(du));
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        let out = layer.join("usr/share");
        assert_eq!(ino(&out.join("app/a")), ino(&src.join("a")));
        assert_eq!(ino(&out.join("app/d/b")), ino(&src.join("d/b")));
        // One inode under one name: the second unchanged copy of `a` is a copy.
        assert_ne!(ino(&out.join("same")), ino(&src.join("a")));
        assert_eq!(fs::read_to_string(out.join("same")).unwrap(), "aa");
        assert_eq!(fs::read_to_string(out.join("owned")).unwrap(), "bb");
        assert_eq!(fs::metadata(out.join("owned")).unwrap().uid(), 1234);
        assert_ne!(ino(&out.join("owned")), ino(&src.join("d/b")));
        assert_eq!(
            fs::metadata(out.join("other")).unwrap().mode() & 0o7777,
            0o741
        );
        assert!(out.join("app/empty").is_file());
        // The base's directories, made with their metadata; `usr` only leads to `share`.
        let usr = fs::metadata(layer.join("usr")).unwrap();
        assert_eq!(usr.mode() & 0o7777, 0o700);
        assert_eq!(usr.modified().unwrap(), old);
        // Not a layer: nothing linked.
        let other = t.path().join("other");
        fs::create_dir_all(&other).unwrap();
        let all = [FileAction::Copy(copy("/", "/app/"))];
        let p = plan(None, &all).unwrap();
        assert!(
            !apply_direct(&other, &p, &all, std::slice::from_ref(&src), &[false])
                .unwrap()
                .linked
        );
        assert_ne!(ino(&other.join("app/a")), ino(&src.join("a")));
    }
}

#[cfg(test)]
mod times {
    use std::fs;
    use std::path::Path;

    use kiln_graph::{CopyAction, FileAction};

    #[test]
    fn a_created_destination_and_symlinks_keep_their_sources_times() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(src.join("f"), "f").unwrap();
        std::os::unix::fs::symlink("f", src.join("l")).unwrap();
        let old = |secs| nix::sys::time::TimeSpec::new(secs, 5);
        for (p, secs) in [(src.join("l"), 1_000_000), (src.clone(), 2_000_000)] {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &old(secs),
                &old(secs),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        let actions = [FileAction::Copy(CopyAction::new(Some(0), "/", "/app/"))];
        crate::fileop::apply(&dst, &actions, &[src]).unwrap();
        let mtime = |p: &Path| {
            let md = fs::symlink_metadata(p).unwrap();
            (
                std::os::unix::fs::MetadataExt::mtime(&md),
                std::os::unix::fs::MetadataExt::mtime_nsec(&md),
            )
        };
        assert_eq!(mtime(&dst.join("app")), (2_000_000, 5));
        assert_eq!(mtime(&dst.join("app/l")), (1_000_000, 5));
    }
}
