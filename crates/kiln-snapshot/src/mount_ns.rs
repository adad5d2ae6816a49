//! A mount namespace of the build's own, so that the overlay views it mounts vanish with it.
//! kiln has no daemon: a `kiln build` killed with SIGKILL cannot unmount its views, and in the
//! host's namespace they would stay mounted until someone unmounts them by hand. In a namespace
//! private to the process, the kernel drops them when its last process exits.
//!
//! The namespace is a copy of the host's, and sees the host's mounts (also those mounted
//! later: propagation from the host is kept, as a slave), while nothing mounted in it
//! propagates back. Files written in it (outputs, the store) are the host's files: a mount
//! namespace changes which mounts are seen, not the file systems.
//!
//! Child processes inherit the namespace: the RUN sandbox (which makes its own from it) and
//! OCI runtimes such as runc see the views they run on.

use std::ffi::c_int;

use nix::mount::{mount, MsFlags};

use crate::{Error, Result};

/// Whether [`isolate_mounts`] could give the process a namespace of its own.
#[derive(Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Mounts made from now on are private to this process (and its children).
    Private,
    /// Not permitted here (not root, or no CAP_SYS_ADMIN, as in an unprivileged container):
    /// overlay views cannot be mounted either, so the copy snapshotter serves and nothing is
    /// mounted at all.
    NotPermitted,
}

/// Moves the calling process into a new mount namespace whose mounts do not propagate to
/// the host's. Must be called before the process starts a second thread (a tokio runtime,
/// a plugin): a mount namespace belongs to a thread, and the others would stay in the host's.
pub fn isolate_mounts() -> Result<Isolation> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::Namespace {
            what: "a mount namespace of the build's own",
            why: format!(
                "the process already runs {threads} threads, which would stay in the host's \
                 namespace (an internal ordering error: isolate before starting threads)"
            ),
        });
    }
    // SAFETY: unshare takes a flag word and touches no memory of ours.
    let rc: c_int = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EPERM) => Ok(Isolation::NotPermitted),
            _ => Err(Error::Namespace {
                what: "unshare(CLONE_NEWNS)",
                why: err.to_string(),
            }),
        };
    }
    // The copy keeps the host's propagation: with `/` shared, our mounts would still show up
    // on the host. A slave receives the host's mount events and sends none.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|source| Error::Mount {
        what: "make / a recursive slave of the host's mounts".to_owned(),
        source,
    })?;
    Ok(Isolation::Private)
}

/// The number of threads of this process, from /proc/self/status.
fn thread_count() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| Error::Namespace {
        what: "read /proc/self/status",
        why: e.to_string(),
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| Error::Namespace {
            what: "read /proc/self/status",
            why: "no Threads: line".to_owned(),
        })
}
