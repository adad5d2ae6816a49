use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_snapshot::{ReadView, Snapshot, Store};

use crate::{io_err, Result};

/// Copies the filesystem of `snapshot` into `dest` (created if needed), keeping modes,
/// symlinks and mtimes; ownership is kept when running as root, as `docker buildx` does (not
/// by rootless kiln: the files are then the user's).
pub fn export_local(store: &Store, snapshot: &Snapshot, dest: &Path) -> Result<()> {
    let view = ReadView::new(store, snapshot)?;
    fs::create_dir_all(dest).map_err(io_err(dest))?;
    copy_tree(view.path(), dest)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let mut entries = fs::read_dir(from)
        .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
        .map_err(io_err(from))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = fs::symlink_metadata(&src).map_err(io_err(&src))?;
        let ft = md.file_type();
        if ft.is_dir() {
            if !dst.is_dir() {
                fs::create_dir(&dst).map_err(io_err(&dst))?;
            }
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(io_err(&src))?;
            let _ = fs::remove_file(&dst);
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err(&dst))?;
        } else if ft.is_file() {
            let _ = fs::remove_file(&dst);
            fs::copy(&src, &dst).map_err(io_err(&dst))?;
        } else {
            // Devices and fifos are not exported to a local directory (buildx skips them too).
            continue;
        }
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(md.mode() & 0o7777))
                .map_err(io_err(&dst))?;
        }
        // Rootless (uid 0 of a user namespace): the files are the user's, as BuildKit's
        // client writes a local export as the user who runs it.
        if nix::unistd::geteuid().is_root() && !kiln_snapshot::in_user_namespace() {
            let _ = std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()));
        }
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                md.mtime().max(0) as u64,
                md.mtime_nsec().clamp(0, 999_999_999) as u32,
            );
        if !ft.is_symlink() {
            if let Ok(f) = fs::File::options()
                .write(ft.is_file())
                .read(!ft.is_file())
                .open(&dst)
            {
                let _ = f.set_modified(mtime);
            }
        }
    }
    Ok(())
}
