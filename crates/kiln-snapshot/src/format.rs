//! The overlayfs upper-dir format that every layer directory is in: a whiteout is a character
//! device 0/0, an opaque directory carries `trusted.overlay.opaque=y`, and of the extended
//! attributes only `user.*` and `security.capability` belong to an image (`trusted.overlay.*`
//! describes a mount, other `trusted.*` and `security.*` names describe a host).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The xattr that marks a directory as hiding everything below it in lower layers.
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
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
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(v)) if v == b"y")
}

/// Whether an xattr is part of the image (kept in tars, on import and in copies).
pub(crate) fn is_image_xattr(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}
