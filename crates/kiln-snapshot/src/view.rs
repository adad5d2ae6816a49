//! Views of snapshots as directories. Layers are overlayfs upper dirs, so stacking them is an
//! overlay mount; a view is unmounted when dropped, also on error paths and cancellation. With
//! the copy snapshotter a view is a materialized copy instead (see `copy`), removed when
//! dropped; a write view's changes are diffed into the same upper-dir format on commit.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::copy;
use crate::flush;
use crate::store::{LayerBuilder, LayerId, Snapshot, SnapshotterKind, Store};
use crate::{io_err, Error, Result};

/// A read-only directory showing a snapshot. (With the copy snapshotter, writes to it are not
/// prevented, only discarded.)
pub struct ReadView {
    path: PathBuf,
    mounted: bool,
    owned_dir: Option<PathBuf>,
    /// A fuse-overlayfs mount's watcher (dropped after the unmount).
    _fuse: Option<crate::fuse::Guard>,
}

impl ReadView {
    /// A view of `snap`. One layer is its own directory; more are stacked with overlayfs.
    pub fn new(store: &Store, snap: &Snapshot) -> Result<Self> {
        store.unpack_layers(&snap.layers)?;
        match snap.layers.as_slice() {
            [] => {
                let dir = store.temp_dir("empty")?;
                Ok(ReadView {
                    path: dir.clone(),
                    mounted: false,
                    owned_dir: Some(dir),
                    _fuse: None,
                })
            }
            [one] => Ok(ReadView {
                path: store.layer_dir(one),
                mounted: false,
                owned_dir: None,
                _fuse: None,
            }),
            layers => {
                let dir = store.temp_dir("view")?;
                let mut view = ReadView {
                    path: dir.clone(),
                    mounted: false,
                    owned_dir: Some(dir.clone()),
                    _fuse: None,
                };
                match store.snapshotter() {
                    SnapshotterKind::Overlay => {
                        let opts =
                            format!("lowerdir={},redirect_dir=off", lowerdirs(store, layers));
                        view._fuse = overlay(store, &dir, &opts, MsFlags::MS_RDONLY)
                            .inspect_err(|_| forget_probe(store))?;
                        view.mounted = true;
                    }
                    // On error the view's drop removes the partial copy.
                    SnapshotterKind::Copy => {
                        copy::materialize(&mut copy::lower_tree(store, layers)?, &dir)?
                    }
                }
                Ok(view)
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
        if let Some(d) = &self.owned_dir {
            // Best effort, as for layers: a leftover under tmp/ is swept by GC. Only ever a
            // temp dir of ours (empty, an unmounted mount point, or a copy).
            if self.mounted {
                let _ = fs::remove_dir(d);
            } else {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
}

/// A writable view of a snapshot whose changes land in a new layer.
pub struct WriteView {
    layer: Option<LayerBuilder>,
    merged: PathBuf,
    mounted: bool,
    /// Mounted `volatile`: its unmount flushes nothing, the commit flushes the layer.
    volatile: bool,
    /// Copy snapshotter: what `merged` held at the start, to diff against.
    lower: Option<copy::Node>,
    /// A fuse-overlayfs mount's watcher (dropped after the unmount).
    _fuse: Option<crate::fuse::Guard>,
}

impl WriteView {
    /// A writable view on top of `snap`.
    pub fn new(store: &Store, snap: &Snapshot) -> Result<Self> {
        store.unpack_layers(&snap.layers)?;
        let layer = store.new_layer()?;
        if snap.layers.is_empty() {
            // Nothing below: write straight into the layer, no mount needed.
            let merged = layer.fs_dir();
            return Ok(WriteView {
                layer: Some(layer),
                merged,
                mounted: false,
                volatile: false,
                lower: None,
                _fuse: None,
            });
        }
        if store.snapshotter() == SnapshotterKind::Copy {
            let merged = layer.private_dir().join("merged");
            fs::create_dir_all(&merged).map_err(io_err("create", &merged))?;
            // On error the layer builder's drop removes the partial copy with it.
            let mut lower = copy::lower_tree(store, &snap.layers)?;
            copy::materialize(&mut lower, &merged)?;
            return Ok(WriteView {
                layer: Some(layer),
                merged,
                mounted: false,
                volatile: false,
                lower: Some(lower),
                _fuse: None,
            });
        }
        let work = layer.private_dir().join("work");
        fs::create_dir_all(&work).map_err(io_err("create", &work))?;
        let merged = layer.private_dir().join("merged");
        fs::create_dir_all(&merged).map_err(io_err("create", &merged))?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off",
            lowerdirs(store, &snap.layers),
            layer.fs_dir().display(),
            work.display()
        );
        let mut fuse = None;
        let volatile = flush::mount_volatile(&opts, |opts| {
            fuse = overlay(store, &merged, opts, MsFlags::empty())?;
            Ok::<(), Error>(())
        })
        .inspect_err(|_| forget_probe(store))?;
        Ok(WriteView {
            layer: Some(layer),
            merged,
            mounted: true,
            volatile,
            lower: None,
            _fuse: fuse,
        })
    }

    /// The directory to change.
    pub fn path(&self) -> &Path {
        &self.merged
    }

    /// Unmounts and commits the changes as a layer, flushed to disk first when it was written
    /// through an overlay (docs/architecture.md, "What is flushed to disk").
    pub fn commit(mut self) -> Result<LayerId> {
        self.unmount()?;
        let layer = self.layer.take().ok_or_else(|| Error::Corrupt {
            path: self.merged.clone(),
            why: "write view committed twice".into(),
        })?;
        if self.volatile {
            let upper = layer.fs_dir();
            flush::flush_upper(&upper).map_err(io_err("flush", &upper))?;
        }
        let merged = layer.private_dir().join("merged");
        if let Some(lower) = &self.lower {
            copy::diff(lower, &merged, &layer.fs_dir())?;
            fs::remove_dir_all(&merged).map_err(io_err("remove", &merged))?;
        } else if merged.exists() {
            fs::remove_dir(&merged).map_err(io_err("remove", &merged))?;
        }
        layer.commit()
    }

    /// A strict unmount (not a lazy detach): the upper dir is committed next, so nothing may
    /// still be writing through the mount. A mount can stay busy for a moment after a step's
    /// process exits (its namespace and files are released as the kernel tears the sandbox
    /// down), so EBUSY is retried for up to two seconds, as containerd's unmount does; only
    /// that failure waits, never a clean unmount.
    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            let mut tries = 0;
            loop {
                match umount2(&self.merged, MntFlags::empty()) {
                    Ok(()) => break,
                    Err(nix::errno::Errno::EBUSY) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(source) => {
                        return Err(Error::Mount {
                            what: format!("unmount {}", self.merged.display()),
                            source,
                        })
                    }
                }
            }
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for WriteView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
        }
    }
}

/// The store's record of an overlay probe that succeeded: the conditions it ran under
/// ([`probe_conditions`]). A start of kiln under the same conditions skips the probe, whose
/// mount, unmount and ten directory creations and removals cost 10 to 25 ms of every build
/// (a third of a no-op's time after a registry cache import). Not flushed: a lost record only
/// means one more probe.
const PROBE_RECORD: &str = "overlay-probe";

/// What the verdict of an overlay probe depends on, as text: the kernel (build and release),
/// the privileges (effective uid, capabilities, user namespace, LSM label) and the file system
/// of the store's `tmp/` (type and device). None when one cannot be read: then kiln probes.
fn probe_conditions(store: &Store) -> Option<String> {
    let read = |p: &str| fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let release = read("/proc/sys/kernel/osrelease")?;
    let version = read("/proc/sys/kernel/version")?;
    // Rootless kiln gets a new user namespace at every start: its maps, not its inode, are
    // what the verdict depends on (else every start would probe again).
    let userns = match crate::format::user_namespace() {
        Some(_) => format!(
            "maps {:?} {:?}",
            read("/proc/self/uid_map")?,
            read("/proc/self/gid_map")?
        ),
        None => fs::read_link("/proc/self/ns/user")
            .ok()?
            .display()
            .to_string(),
    };
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let caps = status.lines().find(|l| l.starts_with("CapEff:"))?;
    // Absent without an LSM: that is a condition too.
    let lsm = read("/proc/self/attr/current").unwrap_or_default();
    let tmp = store.root().join("tmp");
    let dev = std::os::unix::fs::MetadataExt::dev(&fs::metadata(&tmp).ok()?);
    let fs_type = nix::sys::statfs::statfs(&tmp).ok()?.filesystem_type();
    Some(format!(
        "overlay probe 1\nkernel {release} {version}\nuserns {userns}\n{caps}\neuid {}\nlsm {lsm}\nfs {fs_type:?} dev {dev}\n",
        nix::unistd::geteuid(),
    ))
}

/// [`probe_overlay`], skipped when the store records a success under the same conditions.
pub(crate) fn probe_overlay_once(store: &Store) -> Result<()> {
    probe_recorded(store, probe_conditions(store), probe_overlay)
}

fn probe_recorded(
    store: &Store,
    conditions: Option<String>,
    probe: impl FnOnce(&Store) -> Result<()>,
) -> Result<()> {
    let record = store.root().join(PROBE_RECORD);
    if let Some(c) = &conditions {
        if fs::read_to_string(&record).is_ok_and(|have| have == *c) {
            return Ok(());
        }
    }
    probe(store)?;
    if let Some(c) = conditions {
        // Best effort: without the record, the next start probes again.
        let tmp = store.tmp_path("probe-record");
        if fs::write(&tmp, c)
            .and_then(|()| fs::rename(&tmp, &record))
            .is_err()
        {
            let _ = fs::remove_file(&tmp);
        }
    }
    Ok(())
}

/// Drops the probe's record after an overlay mount failed, so that the next start probes
/// again (and falls back to copies if overlays stopped working) rather than trust it.
fn forget_probe(store: &Store) {
    let _ = fs::remove_file(store.root().join(PROBE_RECORD));
}

/// Whether a writable overlay with two lower dirs can be mounted in the store's `tmp/`: the
/// mount right, overlayfs, and a file system that can be an upper dir.
pub(crate) fn probe_overlay(store: &Store) -> Result<()> {
    let dir = store.temp_dir("probe")?;
    let result = (|| {
        let mut opts = String::from("lowerdir=");
        for sub in ["l2", "l1", "upper", "work", "merged"] {
            let p = dir.join(sub);
            fs::create_dir(&p).map_err(io_err("create", &p))?;
        }
        opts.push_str(&format!(
            "{}:{},upperdir={},workdir={},redirect_dir=off",
            dir.join("l2").display(),
            dir.join("l1").display(),
            dir.join("upper").display(),
            dir.join("work").display()
        ));
        let merged = dir.join("merged");
        let mut fuse = None;
        mount_probe(&opts, |opts| {
            fuse = overlay(store, &merged, opts, MsFlags::empty())?;
            Ok(())
        })?;
        let unmounted = umount2(&merged, MntFlags::MNT_DETACH).map_err(|source| Error::Mount {
            what: format!("unmount {}", merged.display()),
            source,
        });
        drop(fuse);
        unmounted
    })();
    let _ = fs::remove_dir_all(&dir);
    result
}

/// Mounts the probe's overlay with `opts`, `volatile` first: unmounting an overlay syncs its
/// upper dir's whole file system (every dirty page of the store's disk, 0.3 to 80 ms measured
/// on a busy machine) unless it is volatile, and the probe, which writes nothing, runs at every
/// start of kiln. A kernel without the option (before 5.10) refuses it: then without.
fn mount_probe(opts: &str, mut mount: impl FnMut(&str) -> Result<()>) -> Result<()> {
    mount(&format!("{opts},volatile")).or_else(|_| mount(opts))
}

fn lowerdirs(store: &Store, layers: &[LayerId]) -> String {
    // overlayfs lists the top-most lower dir first.
    layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(l).display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts an overlay of `opts` on `target`: the kernel's, or fuse-overlayfs's when the store
/// uses it (then the guard of its watcher, to keep until after the unmount).
fn overlay(
    store: &Store,
    target: &Path,
    opts: &str,
    flags: MsFlags,
) -> Result<Option<crate::fuse::Guard>> {
    if store.fuse {
        return crate::fuse::mount(target, opts, flags.contains(MsFlags::MS_RDONLY)).map(Some);
    }
    kernel_overlay(target, opts, flags).map(|()| None)
}

fn kernel_overlay(target: &Path, opts: &str, flags: MsFlags) -> Result<()> {
    // In a user namespace (rootless kiln) overlay cannot use trusted.* xattrs: `userxattr`
    // (Linux 5.11) makes it keep its bookkeeping, and read opaque dirs, in user.overlay.*.
    let with_userxattr;
    // There `redirect_dir=off` conflicts with it (off still follows redirects, which would
    // need trusted.*): `nofollow` neither makes nor follows them.
    let opts = if crate::format::user_namespace().is_some() {
        with_userxattr = format!(
            "{},userxattr",
            opts.replace("redirect_dir=off", "redirect_dir=nofollow")
        );
        with_userxattr.as_str()
    } else {
        opts
    };
    mount(Some("overlay"), target, Some("overlay"), flags, Some(opts)).map_err(|source| {
        Error::Mount {
            what: format!("overlay on {} ({opts})", target.display()),
            source,
        }
    })
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    fn refused() -> Error {
        Error::Mount {
            what: "overlay".to_owned(),
            source: nix::errno::Errno::EINVAL,
        }
    }

    #[test]
    fn the_probe_mounts_a_volatile_overlay_when_the_kernel_has_the_option() {
        let mut asked = Vec::new();
        mount_probe("lowerdir=a:b", |o| {
            asked.push(o.to_owned());
            Ok(())
        })
        .unwrap();
        assert_eq!(asked, ["lowerdir=a:b,volatile"]);
    }

    #[test]
    fn the_probe_falls_back_to_a_plain_overlay_on_an_older_kernel() {
        let mut asked = Vec::new();
        mount_probe("lowerdir=a:b", |o| {
            asked.push(o.to_owned());
            if o.ends_with(",volatile") {
                Err(refused())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(asked, ["lowerdir=a:b,volatile", "lowerdir=a:b"]);
        // No overlay at all: the probe fails as before (the copy snapshotter is chosen).
        assert!(mount_probe("lowerdir=a:b", |_| Err(refused())).is_err());
    }

    #[test]
    fn a_probe_that_succeeded_is_not_run_again_under_the_same_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), crate::SnapshotterKind::Overlay).unwrap();
        let runs = std::cell::Cell::new(0);
        let ok = |_: &Store| {
            runs.set(runs.get() + 1);
            Ok(())
        };
        let c1 = || Some("conditions 1\n".to_owned());
        probe_recorded(&store, c1(), ok).unwrap();
        probe_recorded(&store, c1(), ok).unwrap();
        assert_eq!(
            runs.get(),
            1,
            "the second start under the same conditions probed again"
        );
        // Another kernel, user namespace, file system...: probe again.
        probe_recorded(&store, Some("conditions 2\n".to_owned()), ok).unwrap();
        assert_eq!(runs.get(), 2);
        // Conditions that cannot be read: always probe.
        probe_recorded(&store, None, ok).unwrap();
        probe_recorded(&store, None, ok).unwrap();
        assert_eq!(runs.get(), 4);
        // A mount that failed drops the record: the next start probes.
        probe_recorded(&store, c1(), ok).unwrap();
        forget_probe(&store);
        probe_recorded(&store, c1(), ok).unwrap();
        assert_eq!(runs.get(), 6);
        // A failed probe is not recorded: the copy snapshotter is chosen each time it fails.
        forget_probe(&store);
        let failed = probe_recorded(&store, c1(), |_| Err(refused()));
        assert!(failed.is_err());
        probe_recorded(&store, c1(), ok).unwrap();
        assert_eq!(runs.get(), 7);
        let left: Vec<_> = fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }

    #[test]
    fn opening_a_store_records_the_probe_and_its_conditions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.snapshotter(), crate::SnapshotterKind::Overlay);
        let record = fs::read_to_string(dir.path().join(PROBE_RECORD))
            .expect("the store records the probe that succeeded");
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(record.contains(release.trim()), "{record}");
        assert!(record.contains("CapEff:"), "{record}");
        assert_eq!(probe_conditions(&store).as_deref(), Some(record.as_str()));
        drop(store);
        // The next open finds it and still chooses overlays.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.snapshotter(), crate::SnapshotterKind::Overlay);
    }

    #[test]
    fn a_store_opened_here_still_finds_overlay_mounts_working() {
        // The kernel of this machine has `volatile` (5.10+): the probe must still decide for
        // overlay views, and leave nothing behind in tmp/.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), crate::SnapshotterKind::Overlay).unwrap();
        probe_overlay(&store).unwrap();
        let left: Vec<_> = fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }
}
