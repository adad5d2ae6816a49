//! Rootless mode: kiln running as uid 0 of a user namespace (its own re-exec through the user's
//! subordinate ids, or any other), where it holds every capability of that namespace but none
//! of the host's. Both runtimes ask [`running_in_user_ns`] and then set the sandbox up as
//! rootless runc does (docs/sandbox.md, "Rootless"): device nodes bound from the host's `/dev`
//! (mknod is refused), `/sys` bound from the host when the step shares its network (sysfs can
//! only be mounted by the owner of the network namespace), locked mount flags kept on
//! read-only remounts, ids and devices checked before the step starts. (A step with resource
//! limits whose cgroup kiln may not create is refused by `cgroup.rs` itself.)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use kiln_plugin_sdk::graph::SecurityMode;

use crate::step::Step;
use crate::Error;

/// Whether this process runs in a user namespace other than the initial one, as moby's
/// `userns.RunningInUserNS`: `/proc/self/uid_map` is not the identity map of all 2^32 ids.
/// Read once per process (a process cannot leave its user namespace).
pub fn running_in_user_ns() -> bool {
    static IN_USERNS: OnceLock<bool> = OnceLock::new();
    *IN_USERNS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|map| !is_initial_map(&map))
            // No /proc/self/uid_map: a kernel without user namespaces, so the initial one.
            .unwrap_or(false)
    })
}

/// Refuses, before anything starts, a step that a user namespace cannot run as asked: a uid
/// or gid (of `USER` or a group of it) that the namespace does not map — the kernel would
/// answer EINVAL deep in the setup — and a CDI device node that the user running kiln may
/// not open (in rootless mode the step gets the host's node bound, with the host's
/// permissions: no capability of the namespace opens it).
/// What a rootless `--security=insecure` step is told: it runs, as rootless BuildKit runs it,
/// with every capability of kiln's user namespace, and what needs the host's root (a device
/// node, a kernel module, a block device mount) is still refused by the kernel.
pub fn insecure_warning(step: &Step) -> Option<&'static str> {
    (step.security == SecurityMode::Insecure && running_in_user_ns()).then_some(
        "kiln runs rootless: --security=insecure gives this step the capabilities of kiln's \
         user namespace, not the host's root; device nodes, kernel modules and mounts of block \
         devices are refused (docs/rootless.md)",
    )
}

pub fn check_step(step: &Step) -> Result<(), Error> {
    if !running_in_user_ns() {
        return Ok(());
    }
    static MAPS: OnceLock<(Vec<Extent>, Vec<Extent>)> = OnceLock::new();
    let (uids, gids) = MAPS.get_or_init(|| {
        let read = |f: &str| parse_map(&std::fs::read_to_string(f).unwrap_or_default());
        (read("/proc/self/uid_map"), read("/proc/self/gid_map"))
    });
    let unmapped = |kind: &str, id: u32, map: &[Extent]| {
        Error::Unsupported(format!(
            "the step runs with {kind} {id}, which kiln's user namespace does not map: kiln runs \
             rootless, where only the {kind}s {} exist (0 is the user running kiln, the others \
             come from /etc/subuid and /etc/subgid); use a smaller id in the image, or run kiln \
             as root",
            describe(map)
        ))
    };
    if !is_mapped(uids, step.user.uid) {
        return Err(unmapped("uid", step.user.uid, uids));
    }
    for gid in std::iter::once(&step.user.gid).chain(&step.user.sgids) {
        if !is_mapped(gids, *gid) {
            return Err(unmapped("gid", *gid, gids));
        }
    }
    for node in &step.devices {
        let path = CString::new(node.host_path.as_os_str().as_bytes()).map_err(|_| {
            Error::InvalidInput(format!("{} contains a NUL byte", node.host_path.display()))
        })?;
        // SAFETY: access on a NUL-terminated path.
        let can = |mode| unsafe { libc::access(path.as_ptr(), mode) } == 0;
        if !can(libc::R_OK) && !can(libc::W_OK) {
            return Err(Error::Unsupported(format!(
                "the device {} (host node {}) cannot be given to the step: kiln runs rootless \
                 (in a user namespace), where the step gets the host's node with the host's \
                 permissions, and the user running kiln may neither read nor write it; give \
                 that user access to the device (its group or a udev rule), or run kiln as root",
                node.path,
                node.host_path.display()
            )));
        }
    }
    Ok(())
}

/// One line of an id map: `inside` up to `inside + count` (exclusive) are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    inside: u64,
    count: u64,
}

fn parse_map(map: &str) -> Vec<Extent> {
    map.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u64>);
            let inside = f.next()?.ok()?;
            let _outside = f.next()?.ok()?;
            let count = f.next()?.ok()?;
            Some(Extent { inside, count })
        })
        .collect()
}

fn is_mapped(map: &[Extent], id: u32) -> bool {
    let id = u64::from(id);
    map.iter()
        .any(|e| id >= e.inside && id - e.inside < e.count)
}

/// `0-65535` (or `0, 1000-1999`) for a message.
fn describe(map: &[Extent]) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|e| e.count > 0)
        .map(|e| match e.count {
            1 => e.inside.to_string(),
            n => format!("{}-{}", e.inside, e.inside + n - 1),
        })
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Whether `map` (the text of a `uid_map`) is the initial namespace's `0 0 4294967295`.
fn is_initial_map(map: &str) -> bool {
    let lines: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| !f.is_empty())
        .collect();
    matches!(lines.as_slice(), [only] if only.as_slice() == ["0", "0", "4294967295"])
}

/// What to add to a sandbox setup error seen in a user namespace, for the failures whose
/// cause is rootless mode itself; `None` for the others (and outside a user namespace).
pub fn hint(errno: i32, what: Hint) -> Option<&'static str> {
    if !running_in_user_ns() {
        return None;
    }
    Some(match (what, errno) {
        (Hint::Proc, libc::EPERM | libc::EACCES) => {
            "kiln runs rootless (in a user namespace), where proc can be mounted only if the \
             host's /proc is fully visible: it is partly hidden by mounts over it (as in a \
             container); run kiln as root, or where /proc is not masked"
        }
        (Hint::Sys, libc::EPERM | libc::EACCES) => {
            "kiln runs rootless (in a user namespace) and could neither mount sysfs nor bind the \
             host's /sys; run kiln as root"
        }
        (Hint::Rlimit, libc::EPERM) => {
            "kiln runs rootless (in a user namespace): a limit above kiln's own hard limit needs \
             CAP_SYS_RESOURCE on the host"
        }
        _ => return None,
    })
}

/// The setup steps [`hint`] knows rootless causes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hint {
    /// Mounting `/proc`.
    Proc,
    /// Mounting (or binding) `/sys`.
    Sys,
    /// `setrlimit` of a `--ulimit` or of `RLIMIT_NOFILE`.
    Rlimit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_identity_map_of_all_ids_is_the_initial_namespace() {
        assert!(is_initial_map("         0          0 4294967295\n"));
        assert!(!is_initial_map("         0     200000      65536\n"));
        assert!(!is_initial_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_map(""));
    }

    #[test]
    fn ids_are_mapped_within_the_extents() {
        let map = parse_map("         0       1000          1\n         1     100000      65536\n");
        assert_eq!(describe(&map), "0, 1-65536");
        assert!(is_mapped(&map, 0) && is_mapped(&map, 65536));
        assert!(!is_mapped(&map, 65537) && !is_mapped(&map, u32::MAX));
    }
}
