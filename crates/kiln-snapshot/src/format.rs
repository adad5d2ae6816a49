//! The overlayfs upper-dir format that every layer directory is in: a whiteout is a character
//! device 0/0, an opaque directory carries `trusted.overlay.opaque=y` (`user.overlay.opaque`
//! in a user namespace, where overlay is mounted with `userxattr`: rootless kiln), and of the
//! extended attributes only `user.*` and `security.capability` belong to an image
//! (`trusted.overlay.*` and `user.overlay.*` describe a mount, other `trusted.*` and
//! `security.*` names describe a host).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

/// The xattr that marks a directory as hiding everything below it in lower layers, as the
/// process's overlay mounts read it: `trusted.*` cannot be set in a user namespace, where
/// overlay is mounted with `userxattr` and reads `user.overlay.*` instead.
pub(crate) fn opaque_xattr() -> &'static str {
    if user_namespace().is_some() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// The ids a user namespace maps: in one, `count` ids from 0 (rootless kiln: the user and
/// its subordinate ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UserNamespace {
    /// Ids 0..uids are mapped.
    pub(crate) uids: u64,
    /// Gids 0..gids are mapped.
    pub(crate) gids: u64,
}

/// The process's user namespace when it is not the host's (decided once: a process does not
/// change namespaces after it starts threads, and kiln enters its own before).
pub(crate) fn user_namespace() -> Option<UserNamespace> {
    static NS: OnceLock<Option<UserNamespace>> = OnceLock::new();
    *NS.get_or_init(|| {
        let uid_map = fs::read_to_string("/proc/self/uid_map").ok()?;
        let gid_map = fs::read_to_string("/proc/self/gid_map").ok()?;
        parse_user_namespace(&uid_map, &gid_map)
    })
}

/// The host's namespace maps all 2^32-1 ids onto themselves; anything else is a user namespace.
fn parse_user_namespace(uid_map: &str, gid_map: &str) -> Option<UserNamespace> {
    // The highest inner id mapped, +1 (ranges are usually contiguous from 0).
    fn extent(map: &str) -> Option<u64> {
        map.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace().map(|n| n.parse::<u64>().ok());
                let (inner, _outer, count) = (f.next()??, f.next()??, f.next()??);
                Some(inner + count)
            })
            .max()
    }
    let initial = |map: &str| {
        let f: Vec<&str> = map.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    };
    if initial(uid_map) {
        return None;
    }
    Some(UserNamespace {
        uids: extent(uid_map).unwrap_or(0),
        gids: extent(gid_map).unwrap_or(0),
    })
}

/// Whether device nodes (other than whiteouts) can be created: as root on the host. In a user
/// namespace the kernel refuses them (as moby's pkg/archive, kiln skips them there).
pub(crate) fn can_create_devices() -> bool {
    nix::unistd::geteuid().is_root() && user_namespace().is_none()
}

/// Why a chown to `uid:gid` fails with EINVAL in a user namespace, when that is the cause: the
/// id is not mapped (rootless kiln maps the user and its subordinate ids).
pub(crate) fn unmapped_owner(uid: u32, gid: u32) -> Option<String> {
    let ns = user_namespace()?;
    let (what, id, max) = if u64::from(uid) >= ns.uids {
        ("uid", uid, ns.uids)
    } else if u64::from(gid) >= ns.gids {
        ("gid", gid, ns.gids)
    } else {
        return None;
    };
    Some(format!(
        "{what} {id} is outside the ids this user namespace maps (0-{}): rootless kiln maps \
         the user's subordinate ids from /etc/subuid and /etc/subgid; give the user a range of \
         65536 or more (usermod --add-subuids/--add-subgids) or build as root",
        max.saturating_sub(1)
    ))
}
/// Prefix of the tar names that stand for a whiteout.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
/// The tar name that marks its directory as opaque.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Whether an entry of a layer dir is a whiteout (it hides the path in lower layers).
pub(crate) fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether a directory of a layer dir is opaque.
pub(crate) fn is_opaque(path: &Path) -> bool {
    // fuse-overlayfs (rootless on older kernels) marks the directories it makes opaque with
    // its own name.
    [opaque_xattr(), FUSE_OPAQUE_XATTR]
        .iter()
        .any(|x| matches!(xattr::get(path, x), Ok(Some(v)) if v == b"y"))
}

/// fuse-overlayfs's opaque mark where `trusted.*` is refused (in a user namespace).
pub(crate) const FUSE_OPAQUE_XATTR: &str = "user.fuseoverlayfs.opaque";

/// Whether an xattr is overlay's own bookkeeping (`trusted.overlay.*`, `user.overlay.*` with
/// `userxattr`, fuse-overlayfs's `user.fuseoverlayfs.*`): it describes a mount, never a file
/// of the image.
pub(crate) fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name.starts_with("user.fuseoverlayfs.")
}

/// Whether an xattr is part of the image (kept in tars, on import and in copies).
pub(crate) fn is_image_xattr(name: &str) -> bool {
    (name.starts_with("user.") && !is_overlay_xattr(name)) || name == "security.capability"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_namespace_is_not_a_user_namespace_and_a_mapped_one_is() {
        assert_eq!(
            parse_user_namespace("         0          0 4294967295\n", "0 0 4294967295\n"),
            None
        );
        assert_eq!(
            parse_user_namespace("0 1001 1\n1 100000 65536\n", "0 1001 1\n1 100000 65536\n"),
            Some(UserNamespace {
                uids: 65537,
                gids: 65537
            })
        );
    }

    #[test]
    fn overlay_bookkeeping_of_either_kind_is_not_an_image_xattr() {
        assert!(is_image_xattr("user.mime_type"));
        assert!(is_image_xattr("security.capability"));
        assert!(!is_image_xattr("user.overlay.opaque"));
        assert!(!is_image_xattr("user.overlay.origin"));
        assert!(!is_image_xattr("user.fuseoverlayfs.opaque"));
        assert!(!is_image_xattr("trusted.overlay.opaque"));
        assert!(!is_image_xattr("security.selinux"));
    }
}
