//! Hard links between two open directories. A layer made of 20,000 links (an edited context,
//! a COPY of it) paid more for the kernel's lookups of every component of both full paths
//! (`filename_lookup`, a quarter of an edit build's CPU) than for the links themselves: with
//! both directories open, each link looks up one name on each side.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// An open directory, for [`link`].
pub(crate) struct Dir(fs::File);

impl Dir {
    pub(crate) fn open(path: &Path) -> io::Result<Dir> {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map(Dir)
    }
}

/// Makes `to` in `to_dir` a hard link to `from` in `from_dir` (symlinks not followed, as
/// `link(2)`).
pub(crate) fn link(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr) -> io::Result<()> {
    let from = CString::new(from.as_bytes())?;
    let to = CString::new(to.as_bytes())?;
    // SAFETY: both descriptors are open directories owned by `Dir`s that outlive the call,
    // and both names are NUL-terminated strings that outlive it.
    let r = unsafe {
        libc::linkat(
            from_dir.0.as_raw_fd(),
            from.as_ptr(),
            to_dir.0.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn links_one_name_to_another_between_open_directories() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("f"), "x").unwrap();
        let (da, db) = (Dir::open(&a).unwrap(), Dir::open(&b).unwrap());
        link(&da, OsStr::new("f"), &db, OsStr::new("g")).unwrap();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&a.join("f")), ino(&b.join("g")));
        let taken = link(&da, OsStr::new("f"), &db, OsStr::new("g")).unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AlreadyExists);
        let missing = link(&da, OsStr::new("nope"), &db, OsStr::new("h")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(
            Dir::open(&a.join("f")).is_err(),
            "a file is not a directory"
        );
    }
}
