//! fuse-overlayfs, for rootless kiln where the kernel refuses overlayfs in a user namespace
//! (before Linux 5.11), as rootless BuildKit and Podman fall back to it. The layers are the same
//! upper dirs: fuse-overlayfs reads char 0/0 whiteouts and `user.overlay.opaque`, and marks the
//! directories it makes opaque with `user.fuseoverlayfs.opaque` (format.rs reads both).
//!
//! fuse-overlayfs serves its mount from a daemon of its own, which a dead kiln cannot stop: in
//! kiln's mount namespace it would keep the mount, and itself, alive forever. So each mount is
//! made by a small `sh` that mounts, says so, and waits on a pipe kiln holds: when kiln ends
//! without unmounting (killed), the pipe closes and the `sh` unmounts, which ends the daemon.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{Error, Result};

/// The program.
const PROGRAM: &str = "fuse-overlayfs";

/// Whether fuse-overlayfs is installed (on PATH).
pub(crate) fn installed() -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(PROGRAM);
            std::fs::metadata(&f).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Keeps a fuse-overlayfs mount's watcher; dropped after the view unmounted it.
#[derive(Debug)]
pub(crate) struct Guard {
    watcher: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Closing its stdin lets the watcher end (its lazy unmount of what the view already
        // unmounted fails quietly); reaped so that it leaves no zombie.
        drop(self.watcher.stdin.take());
        let _ = self.watcher.wait();
    }
}

/// The options fuse-overlayfs takes of kiln's kernel overlay options: the directories (it
/// neither has `redirect_dir`, `userxattr` nor `volatile`: it never syncs on unmount).
fn fuse_options(opts: &str, read_only: bool) -> String {
    let mut kept: Vec<&str> = opts
        .split(',')
        .filter(|o| {
            o.starts_with("lowerdir=") || o.starts_with("upperdir=") || o.starts_with("workdir=")
        })
        .collect();
    if read_only {
        kept.push("ro");
    }
    // Steps run as other users than the mounter (`USER app`): FUSE lets only the mounter in
    // unless told otherwise.
    kept.push("allow_other");
    kept.join(",")
}

/// Mounts `opts` (kernel overlay options) on `target` with fuse-overlayfs.
pub(crate) fn mount(target: &Path, opts: &str, read_only: bool) -> Result<Guard> {
    let options = fuse_options(opts, read_only);
    let failed = |why: String| Error::FuseMount {
        target: target.to_owned(),
        why,
    };
    // `$0` options, `$1` target. The daemon detaches once its mount is up, then `mounted`.
    let mut watcher = Command::new("sh")
        .args([
            "-c",
            "fuse-overlayfs -o \"$0\" \"$1\" || exit 1; echo mounted; \
             read -r _; umount -l \"$1\" 2>/dev/null; exit 0",
        ])
        .arg(&options)
        .arg(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("run sh for {PROGRAM}: {e}")))?;
    let mut line = String::new();
    let stdout = watcher.stdout.take();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "mounted" {
        drop(watcher.stdin.take());
        let mut err = String::new();
        if let Some(mut e) = watcher.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = watcher.wait();
        // Its complaints about options it ignores are noise; the rest says why (e.g. "fuse:
        // failed to open /dev/fuse: Permission denied").
        let why: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("unknown argument ignored"))
            .collect();
        return Err(failed(format!(
            "{PROGRAM} -o {options}: {}",
            if why.is_empty() {
                "failed".to_owned()
            } else {
                why.join("; ")
            }
        )));
    }
    // Its later output (none but a failed lazy unmount, silenced) is not read.
    drop(watcher.stderr.take());
    Ok(Guard { watcher })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_directories_reach_fuse_overlayfs() {
        assert_eq!(
            fuse_options(
                "lowerdir=/a:/b,upperdir=/u,workdir=/w,redirect_dir=off,volatile",
                false
            ),
            "lowerdir=/a:/b,upperdir=/u,workdir=/w,allow_other"
        );
        assert_eq!(
            fuse_options("lowerdir=/a:/b,redirect_dir=off", true),
            "lowerdir=/a:/b,ro,allow_other"
        );
    }
}
