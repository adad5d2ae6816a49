//! The copy snapshotter, for hosts without overlayfs: a view is a plain directory made by
//! applying the layers in order, and a write view's changes are found by comparing it with
//! what was materialized, then written as an overlay upper dir, so nothing downstream can tell
//! which snapshotter made a layer.
//!
//! Change detection follows containerd's: an entry is unchanged when its inode, type, mode,
//! owner, size, mtime (with nanoseconds), device number, xattrs and link target are as
//! materialized and it has no new hard link; file contents are compared only where mtimes have no sub-second part
//! (coarse file systems, where a write could keep the mtime). A directory whose inode or birth
//! time changed was deleted and recreated: it becomes opaque, as overlayfs makes it.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::format::{is_opaque, is_overlay_xattr, is_whiteout, opaque_xattr};
use crate::store::{LayerId, Store};
use crate::{io_err, Result};

/// One path of a snapshot: where its top-most version lives, and what it looked like once
/// materialized.
pub(crate) struct Node {
    src: PathBuf,
    /// Which layer `src` is in (its index, base first): names of one inode are hard links of
    /// each other only inside one layer. Across layers (a file a later layer shares with an
    /// earlier one, `link`) they are separate files, as overlayfs shows them.
    layer: usize,
    dir: bool,
    children: BTreeMap<OsString, Node>,
    made: Option<Stamp>,
}

/// What a materialized entry looked like, to tell later whether it was touched.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    born: Option<SystemTime>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    nlink: u64,
    rdev: u64,
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Self {
        Stamp {
            ino: md.ino(),
            born: md.created().ok(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            // A directory's size is file-system bookkeeping, not content.
            size: if md.is_dir() { 0 } else { md.size() },
            mtime: (md.mtime(), md.mtime_nsec()),
            nlink: if md.is_dir() { 0 } else { md.nlink() },
            rdev: md.rdev(),
        }
    }

    /// Whether an entry that looked like `self` when materialized was touched. More links
    /// mean a new name for the file (overlayfs copies the file up then, so do we); fewer only
    /// mean another name was removed, which leaves this one as it was.
    fn touched(&self, now: &Stamp) -> bool {
        let Stamp { nlink, .. } = *now;
        Stamp {
            nlink: self.nlink,
            ..*now
        } != *self
            || nlink > self.nlink
    }
}

impl Node {
    fn new(src: PathBuf, layer: usize, dir: bool) -> Self {
        Node {
            src,
            layer,
            dir,
            children: BTreeMap::new(),
            made: None,
        }
    }
}

/// The merged tree of `layers` (base first), resolved as overlayfs would: whiteouts remove,
/// opaque directories and non-directories replace, other directories merge.
pub(crate) fn lower_tree(store: &Store, layers: &[LayerId]) -> Result<Node> {
    let mut root = Node::new(PathBuf::new(), 0, true);
    for (i, l) in layers.iter().enumerate() {
        overlay_dir(&mut root, &store.layer_dir(l), i)?;
    }
    Ok(root)
}

fn overlay_dir(node: &mut Node, dir: &Path, layer: usize) -> Result<()> {
    // A merged directory shows its top-most version's metadata.
    node.src = dir.to_owned();
    node.layer = layer;
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let entry = entry.map_err(io_err("read dir", dir))?;
        let path = entry.path();
        let md = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let name = entry.file_name();
        if is_whiteout(&md) {
            node.children.remove(&name);
        } else if md.is_dir() {
            let child = match node.children.entry(name) {
                MapEntry::Occupied(o) if o.get().dir && !is_opaque(&path) => o.into_mut(),
                MapEntry::Occupied(mut o) => {
                    *o.get_mut() = Node::new(path.clone(), layer, true);
                    o.into_mut()
                }
                MapEntry::Vacant(v) => v.insert(Node::new(path.clone(), layer, true)),
            };
            overlay_dir(child, &path, layer)?;
        } else {
            node.children.insert(name, Node::new(path, layer, false));
        }
    }
    Ok(())
}

/// Copies the tree into `dest` (an existing empty directory) and records what each entry
/// looks like there.
pub(crate) fn materialize(tree: &mut Node, dest: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_children(tree, dest, &mut links)?;
    if !tree.src.as_os_str().is_empty() {
        copy_meta(&tree.src, dest)?;
    }
    // Only now: a later hard link changes an earlier name's link count.
    stamp(tree, dest)
}

/// The first copy of each inode of several links, by (layer, device, inode).
type Links = HashMap<(usize, u64, u64), PathBuf>;

fn copy_children(node: &Node, dest: &Path, links: &mut Links) -> Result<()> {
    for (name, child) in &node.children {
        let to = dest.join(name);
        if child.dir {
            fs::create_dir(&to).map_err(io_err("create", &to))?;
            copy_children(child, &to, links)?;
            copy_meta(&child.src, &to)?;
        } else {
            copy_entry(&child.src, child.layer, &to, links)?;
        }
    }
    Ok(())
}

fn stamp(node: &mut Node, at: &Path) -> Result<()> {
    let md = fs::symlink_metadata(at).map_err(io_err("stat", at))?;
    node.made = Some(Stamp::of(&md));
    for (name, child) in &mut node.children {
        stamp(child, &at.join(name))?;
    }
    Ok(())
}

/// Writes the changes of `merged` against `tree` (as materialized) into `upper` in overlay
/// upper-dir format.
pub(crate) fn diff(tree: &Node, merged: &Path, upper: &Path) -> Result<()> {
    let mut links = HashMap::new();
    diff_dir(tree, merged, upper, &mut links)?;
    Ok(())
}

/// Returns whether anything below `merged` changed.
fn diff_dir(low: &Node, merged: &Path, upper: &Path, links: &mut Links) -> Result<bool> {
    let mut changed = false;
    let mut seen = Vec::new();
    for entry in fs::read_dir(merged).map_err(io_err("read dir", merged))? {
        let entry = entry.map_err(io_err("read dir", merged))?;
        let name = entry.file_name();
        let m = entry.path();
        let u = upper.join(&name);
        let md = fs::symlink_metadata(&m).map_err(io_err("stat", &m))?;
        let lower = low.children.get(&name);
        seen.push(name);
        match lower {
            None => {
                copy_tree(&m, &u, links)?;
                changed = true;
            }
            Some(l) if l.dir && md.is_dir() && same_dir(l, &md) => {
                fs::create_dir(&u).map_err(io_err("create", &u))?;
                if diff_dir(l, &m, &u, links)? || meta_changed(l, &md, &m)? {
                    copy_meta(&m, &u)?;
                    changed = true;
                } else {
                    fs::remove_dir(&u).map_err(io_err("remove", &u))?;
                }
            }
            Some(_) if md.is_dir() => {
                // A new directory where the lower one had something else, or had a directory
                // that was deleted: nothing of the lower one may show through.
                copy_tree(&m, &u, links)?;
                xattr::set(&u, opaque_xattr(), b"y").map_err(io_err("mark opaque", &u))?;
                changed = true;
            }
            Some(l) => {
                if l.dir || meta_changed(l, &md, &m)? || content_changed(l, &md, &m)? {
                    copy_tree(&m, &u, links)?;
                    changed = true;
                }
            }
        }
    }
    seen.sort();
    for name in low.children.keys() {
        if seen.binary_search(name).is_err() {
            let u = upper.join(name);
            mknod(&u, SFlag::S_IFCHR, Mode::empty(), 0)
                .map_err(|e| io_err("create whiteout", &u)(e.into()))?;
            changed = true;
        }
    }
    Ok(changed)
}

fn same_dir(low: &Node, md: &fs::Metadata) -> bool {
    matches!(&low.made, Some(s) if s.ino == md.ino() && s.born == md.created().ok())
}

fn meta_changed(low: &Node, md: &fs::Metadata, merged: &Path) -> Result<bool> {
    match &low.made {
        Some(made) if !made.touched(&Stamp::of(md)) => {}
        _ => return Ok(true),
    }
    // An xattr change touches only the ctime, which a copy cannot reproduce to compare.
    if xattrs(merged)? != xattrs(&low.src)? {
        return Ok(true);
    }
    if md.file_type().is_symlink() {
        let a = fs::read_link(merged).map_err(io_err("read link", merged))?;
        let b = fs::read_link(&low.src).map_err(io_err("read link", &low.src))?;
        return Ok(a != b);
    }
    Ok(false)
}

fn content_changed(low: &Node, md: &fs::Metadata, merged: &Path) -> Result<bool> {
    if !md.is_file() || md.mtime_nsec() != 0 {
        return Ok(false);
    }
    same_content(merged, &low.src).map(|same| !same)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = fs::File::open(a).map_err(io_err("open", a))?;
    let mut fb = fs::File::open(b).map_err(io_err("open", b))?;
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(io_err("read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(io_err("read", b))?;
        if ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Copies `src` (any kind, directories recursively) to `dst` with its metadata.
fn copy_tree(src: &Path, dst: &Path, links: &mut Links) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    if !md.is_dir() {
        // One tree (a view's): its names of one inode stay links.
        return copy_entry(src, 0, dst, links);
    }
    fs::create_dir(dst).map_err(io_err("create", dst))?;
    for entry in fs::read_dir(src).map_err(io_err("read dir", src))? {
        let entry = entry.map_err(io_err("read dir", src))?;
        copy_tree(&entry.path(), &dst.join(entry.file_name()), links)?;
    }
    copy_meta(src, dst)
}

/// Copies one non-directory with its metadata; names of one inode in one layer stay hard links.
fn copy_entry(src: &Path, layer: usize, dst: &Path, links: &mut Links) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    let ft = md.file_type();
    if ft.is_file() {
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(layer, md.dev(), md.ino())) {
                return fs::hard_link(first, dst).map_err(io_err("link", dst));
            }
            links.insert((layer, md.dev(), md.ino()), dst.to_owned());
        }
        // std's copy uses copy_file_range, which reflinks where the file system can.
        fs::copy(src, dst).map_err(io_err("copy", src))?;
    } else if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(io_err("create symlink", dst))?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            // A socket left behind by a process: a tar cannot hold one (docker skips them too),
            // and failing the whole step for it would help nobody.
            return Ok(());
        };
        mknod(dst, kind, Mode::from_bits_truncate(0o600), md.rdev())
            .map_err(|e| io_err("create device node", dst)(e.into()))?;
    }
    copy_meta(src, dst)
}

/// Copies owner, mode, xattrs (not `trusted.overlay.*`) and mtime; never follows a symlink.
fn copy_meta(src: &Path, dst: &Path) -> Result<()> {
    let md = fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))
            .map_err(io_err("chown", dst))?;
    }
    if !md.file_type().is_symlink() {
        // After chown, which clears setuid/setgid bits.
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io_err("chmod", dst))?;
    }
    for (name, value) in xattrs(src)? {
        xattr::set(dst, &name, &value).map_err(io_err("set xattr on", dst))?;
    }
    let t = TimeSpec::new(md.mtime(), md.mtime_nsec());
    let a = TimeSpec::new(md.atime(), md.atime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &a,
        &t,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("set mtime of", dst)(e.into()))
}

/// The xattrs a copy carries: all but overlay's own bookkeeping.
fn xattrs(path: &Path) -> Result<Vec<(OsString, Vec<u8>)>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        // No xattr support: nothing to carry.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        if is_overlay_xattr(&name.to_string_lossy()) {
            continue;
        }
        if let Some(v) = xattr::get(path, &name).map_err(io_err("read xattr of", path))? {
            out.push((name, v));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use crate::{Snapshot, SnapshotterKind, Store, WriteView};

    #[test]
    fn an_inode_two_layers_share_is_two_files_in_a_view() {
        // A later layer may hard link an earlier one's file (an unchanged context file, a COPY
        // of one): a view showing both must not make the two names one file, or a write to one
        // would change the other, as overlayfs never does.
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path().join("s"), SnapshotterKind::Copy).unwrap();
        let first = store.new_layer().unwrap();
        fs::write(first.fs_dir().join("f"), b"data").unwrap();
        let first = first.commit().unwrap();
        let second = store.new_layer().unwrap();
        fs::create_dir(second.fs_dir().join("app")).unwrap();
        fs::hard_link(
            store.layer_dir(&first).join("f"),
            second.fs_dir().join("app/f"),
        )
        .unwrap();
        let second = second.commit().unwrap();
        let view = WriteView::new(
            &store,
            &Snapshot {
                layers: vec![first.clone(), second],
            },
        )
        .unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(view.path().join("app/f"))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        assert_eq!(fs::read(view.path().join("f")).unwrap(), b"data");
        let top = view.commit().unwrap();
        let top = store.layer_dir(&top);
        assert_eq!(fs::read(top.join("app/f")).unwrap(), b"datax");
        assert!(!top.join("f").exists(), "the other name changed too");
        let shared = store.layer_dir(&first).join("f");
        assert_eq!(fs::read(&shared).unwrap(), b"data");
        assert_eq!(fs::metadata(shared).unwrap().nlink(), 2);
    }
}
