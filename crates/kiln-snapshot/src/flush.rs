//! Flushing a RUN's layer before its record. A plain overlay's unmount syncs the whole file
//! system of its upper dir: every dirty page of the store's disk, which after a cold `COPY` of
//! a 20,000-file context is that context (0.3 s of a 2.5 s build, measured). Mounted
//! `volatile`, the unmount syncs nothing, and kiln flushes what the step wrote itself: each
//! file and directory of the upper dir when they are few, all plain, and the disk has more
//! dirty pages than those fsyncs cost, else the file system (`syncfs`), which is what the
//! unmount did.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// Above this many entries, one `syncfs` costs less than an `fsync` (a device flush) each.
pub(crate) const MAX_ENTRIES: usize = 32;

/// Whether the kernel takes overlayfs's `volatile` option (5.10 and later): unknown, yes, no.
static VOLATILE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Mounts with `mount(opts)`, adding `volatile` where the kernel has it: whether it did.
pub(crate) fn mount_volatile<E>(
    opts: &str,
    mount: impl FnMut(&str) -> std::result::Result<(), E>,
) -> std::result::Result<bool, E> {
    mount_with(&VOLATILE, opts, mount)
}

fn mount_with<E>(
    known: &AtomicU8,
    opts: &str,
    mut mount: impl FnMut(&str) -> std::result::Result<(), E>,
) -> std::result::Result<bool, E> {
    if known.load(Ordering::Relaxed) == NO {
        return mount(opts).map(|()| false);
    }
    if mount(&format!("{opts},volatile")).is_ok() {
        known.store(YES, Ordering::Relaxed);
        return Ok(true);
    }
    mount(opts)?;
    // The plain mount worked where the volatile one did not: a kernel without the option.
    let _ = known.compare_exchange(UNKNOWN, NO, Ordering::Relaxed, Ordering::Relaxed);
    Ok(false)
}

/// Flushes the upper dir `upper` (written through a volatile overlay, now unmounted) and its
/// parent: file by file when it holds at most [`MAX_ENTRIES`] regular files and directories,
/// else (or when one cannot be opened) its whole file system.
pub(crate) fn flush_upper(upper: &Path) -> io::Result<()> {
    match plain_entries(upper) {
        Some((files, dirs)) if worth_one_by_one(files.len() + dirs.len() + 1) => {
            let each = || -> io::Result<()> {
                for f in &files {
                    fs::File::open(f)?.sync_all()?;
                }
                // Deepest first, the layer's own directory last: each name after what it names.
                for d in dirs.iter().rev() {
                    fs::File::open(d)?.sync_all()?;
                }
                if let Some(parent) = upper.parent() {
                    fs::File::open(parent)?.sync_all()?;
                }
                Ok(())
            };
            each().or_else(|_| syncfs(upper))
        }
        _ => syncfs(upper),
    }
}

/// Whether `n` fsyncs cost less than one `syncfs`: each is a flush of the device's cache (about
/// 1.6 ms on the machines measured), `syncfs` one flush after writing every dirty page of the
/// disk. A step that wrote 3 entries on a quiet disk flushes faster with `syncfs` (30 RUN
/// steps, fsync each: 94 fsyncs, 184 ms; the unmount's syncs: 155 ms); after a cold `COPY` of
/// a large context (100 MB dirty), one by one (the unmount took 0.3 s). Taken as 8 MiB of
/// dirty pages per flush, from `/proc/meminfo`.
fn worth_one_by_one(n: usize) -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| dirty_bytes(&m))
        .is_some_and(|dirty| dirty > (n as u64) << 23)
}

/// The `Dirty:` line of `/proc/meminfo`, in bytes.
fn dirty_bytes(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Dirty:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The regular files and the directories (parents first) of `dir`, itself included, if there
/// are at most [`MAX_ENTRIES`] and nothing else (a whiteout, a symlink, a fifo has no
/// descriptor to flush).
fn plain_entries(dir: &Path) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    let mut next = 0;
    while let Some(d) = dirs.get(next).cloned() {
        next += 1;
        for e in fs::read_dir(&d).ok()? {
            let e = e.ok()?;
            let t = e.file_type().ok()?;
            if t.is_dir() {
                dirs.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            } else {
                return None;
            }
            if files.len() + dirs.len() > MAX_ENTRIES {
                return None;
            }
        }
    }
    Some((files, dirs))
}

/// `syncfs(2)` of the file system holding `path`.
fn syncfs(path: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    // SAFETY: syncfs takes an open descriptor, valid while `f` lives.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_plain_upper_is_listed_and_anything_else_is_not() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("fs");
        fs::create_dir_all(up.join("d/e")).unwrap();
        fs::write(up.join("d/e/f"), "x").unwrap();
        fs::write(up.join("g"), "y").unwrap();
        let (files, dirs) = plain_entries(&up).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(dirs, [up.clone(), up.join("d"), up.join("d/e")]);
        flush_upper(&up).unwrap();
        // A symlink: the file system is synced instead.
        std::os::unix::fs::symlink("g", up.join("l")).unwrap();
        assert!(plain_entries(&up).is_none());
        flush_upper(&up).unwrap();
        fs::remove_file(up.join("l")).unwrap();
        // Too many to flush one by one.
        for i in 0..MAX_ENTRIES {
            fs::write(up.join(format!("n{i}")), "z").unwrap();
        }
        assert!(plain_entries(&up).is_none());
    }

    #[test]
    fn dirty_pages_are_read_from_meminfo() {
        let m = "MemFree:  100 kB\nDirty:            239916 kB\nWriteback:  0 kB\n";
        assert_eq!(dirty_bytes(m), Some(239_916 * 1024));
        assert_eq!(dirty_bytes("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn volatile_is_asked_first_and_given_up_once_refused_where_plain_works() {
        let known = AtomicU8::new(UNKNOWN);
        let mut asked = Vec::new();
        let mut mount = |o: &str| {
            asked.push(o.to_owned());
            if o.ends_with(",volatile") {
                Err(())
            } else {
                Ok(())
            }
        };
        assert_eq!(mount_with(&known, "lowerdir=a", &mut mount), Ok(false));
        assert_eq!(mount_with(&known, "lowerdir=b", &mut mount), Ok(false));
        assert_eq!(asked, ["lowerdir=a,volatile", "lowerdir=a", "lowerdir=b"]);
        // A kernel that has it: volatile, once.
        let known = AtomicU8::new(UNKNOWN);
        let mut asked = Vec::new();
        let ok = mount_with(&known, "lowerdir=c", |o: &str| {
            asked.push(o.to_owned());
            Ok::<(), ()>(())
        });
        assert_eq!((ok, asked.len()), (Ok(true), 1));
        // A mount refused either way is an error, and decides nothing.
        let known = AtomicU8::new(UNKNOWN);
        assert_eq!(
            mount_with(&known, "x", |_: &str| Err::<(), ()>(())),
            Err(())
        );
        assert_eq!(known.load(Ordering::Relaxed), UNKNOWN);
    }
}
