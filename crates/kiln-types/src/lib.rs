//! Pure data shared by every kiln crate and by plugins: content digests, platforms (containerd's
//! names, normalization and matching; BuildKit's platform ARGs), image
//! references (kiln's one parser of them), git source URLs (likewise), and the OCI image config / manifest / index documents.
//!
//! Architecture invariant: no I/O and no dependency on any other kiln crate. Everything here
//! must be cheap for a plugin to compile.

mod digest;
pub mod git_url;
pub mod image;
pub mod platform;
pub mod reference;
pub mod size;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use platform::{Platform, PlatformError, PlatformMatcher};
