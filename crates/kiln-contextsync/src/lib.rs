//! Incremental sync of a build context from a client to a daemon, without the transport: what
//! BuildKit's fsutil session does for `buildctl`/`buildx` (walk, compare metadata, send only the
//! files that changed, write them into a per-context mirror on the daemon).
//!
//! - **Client**: [`read_ignore`] picks the ignore file the Dockerfile frontend will pick
//!   (`<Dockerfile name>.dockerignore` beside the Dockerfile, else the context's
//!   `.dockerignore`) and
//!   [`scan`] walks the context keeping exactly what the engine's own walk keeps
//!   (`kiln-engine`'s `local.rs`), returning sorted [`Entry`]s: path, kind, mode, owner, size,
//!   mtime, symlink target. Nothing is hashed: like fsutil, a file is "unchanged" when its
//!   metadata is. [`open_for_send`] opens a file the daemon asks for, only if it is one of
//!   the scan's files (a daemon cannot ask for an excluded or outside file).
//! - **Daemon**: [`Mirror::open`] opens (or creates) a mirror directory; [`Mirror::plan`]
//!   compares the client's entries with what the mirror holds and says which files must be sent
//!   ([`Plan::send`]); [`Mirror::write_file`] streams one file's bytes into place (or, for a
//!   transport that gets chunks, [`Mirror::start_file`] → [`Incoming::write`] →
//!   [`Mirror::commit_file`]);
//!   [`Mirror::finish`] deletes what vanished, makes dirs and symlinks, sets metadata and
//!   records the new state. The build then reads [`Mirror::tree`].
//!
//! ```no_run
//! # fn main() -> Result<(), kiln_contextsync::Error> {
//! use kiln_contextsync::{open_for_send, read_ignore, scan, Mirror};
//! # let (context, dockerfile, store) = (std::path::Path::new("."), std::path::Path::new("Dockerfile"), std::path::Path::new("/var/lib/kiln/contexts/k"));
//! // client
//! let ignore = read_ignore(context, dockerfile)?;
//! let entries = scan(context, &ignore)?;
//! // daemon (the entries travel over the wire, then the asked files' bytes)
//! let mut mirror = Mirror::open(store)?;
//! let mut plan = mirror.plan(entries.clone())?;
//! for path in plan.send().to_vec() {
//!     // client: only files of its own scan, never what a daemon makes up
//!     let mut file = open_for_send(context, &entries, &path)?;
//!     mirror.write_file(&mut plan, &path, &mut file)?;
//! }
//! let stats = mirror.finish(plan)?;
//! println!("{} files, {} bytes received", stats.files, stats.bytes);
//! # Ok(()) }
//! ```
//!
//! What the daemon trusts: nothing. Every entry path is checked ([`Error::BadPath`]: absolute,
//! `..`, `.`, empty components, NUL, over [`MAX_PATH_BYTES`]), entries must be strictly sorted,
//! and the mirror is only ever touched through directory descriptors opened one component at a
//! time without following symlinks, so a symlink the client made (`a -> /etc`) can never be
//! written through (`a/passwd`). Device nodes, FIFOs and sockets are not synced at all (the
//! engine leaves them out of a context's layer anyway, and a root daemon must not `mknod` on a
//! client's word). Owners are compared (as fsutil does) but not applied: the engine makes every
//! context file `0:0`.
//!
//! The mirror's record of what it holds is written with one write and a rename; before the
//! first change of a sync it is rewritten with every path about to change marked unknown, so a
//! sync cut short (a dropped connection, a short file) leaves a mirror that the next plan
//! repairs. This crate must not depend on the engine, the store or any transport.

mod entry;
mod kept;
mod mirror;
mod record;
mod scan;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use entry::{Entry, Kind};
pub use kept::{
    collect, list_mirrors, remove_unused, select, InUse, MirrorUsage, DEFAULT_MAX_BYTES,
    DEFAULT_UNUSED_FOR,
};
pub use mirror::{Incoming, Mirror, Plan, Stats};
pub use scan::{open_for_send, read_beside_ignore, read_ignore, scan, IgnoreSpec};

/// Most entries one context may hold (a sync refuses more, with [`Error::TooManyEntries`]).
pub const MAX_ENTRIES: usize = 10_000_000;

/// Longest entry path or symlink target, in bytes (`PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Most bytes of paths and symlink targets one sync may hold, the directories implied by
/// re-included files included (a deep path implies one entry per ancestor: this bounds what a
/// client's list can make the daemon allocate).
pub const MAX_TOTAL_PATH_BYTES: u64 = 1 << 30;

/// Largest ignore file read (as the engine reads a build file).
pub const MAX_IGNORE_FILE_BYTES: u64 = 16 << 20;

/// Why a context could not be scanned or synced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed on the client's context or in the mirror.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`"read context dir"`, `"write"`, ...).
        op: &'static str,
        /// Where: a context path on the client, a mirror path on the daemon.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An entry the daemon refuses: its path (or symlink target) could reach outside the
    /// mirror or is malformed.
    #[error("refusing context entry {path:?}: {reason}")]
    BadPath {
        /// The path as the client sent it.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Entries not strictly sorted by path bytes (or a path twice).
    #[error(
        "context entries must be sorted by path and unique: {path:?} comes after {previous:?}"
    )]
    Unsorted {
        /// The entry before.
        previous: String,
        /// The entry out of place.
        path: String,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error(
        "the build context holds more than {limit} entries: exclude what the build does not \
         need in .dockerignore"
    )]
    TooManyEntries {
        /// [`MAX_ENTRIES`].
        limit: usize,
    },
    /// Paths and targets longer than [`MAX_TOTAL_PATH_BYTES`] in all.
    #[error(
        "the build context's paths take more than {limit} bytes in all: exclude what the \
         build does not need in .dockerignore"
    )]
    PathsTooLong {
        /// [`MAX_TOTAL_PATH_BYTES`].
        limit: u64,
    },
    /// A context path whose name is not UTF-8 (kiln's context keys are UTF-8 paths).
    #[error(
        "{}: file name is not valid UTF-8; rename it or exclude it in .dockerignore",
        path.display()
    )]
    NonUtf8 {
        /// The path on the client.
        path: PathBuf,
    },
    /// The ignore file cannot be read or holds a bad pattern.
    #[error("{file}: {reason}")]
    IgnoreFile {
        /// The ignore file, on the client.
        file: PathBuf,
        /// What is wrong (with the pattern's line when there is one).
        reason: String,
    },
    /// A file's bytes did not match its declared size (a transfer cut short, or a file that
    /// changed while it was sent). The mirror stays usable: the next plan asks for it again.
    #[error(
        "context file {path:?}: received {received} bytes but its entry declared {declared} \
         (transfer cut short, or the file changed while it was sent)"
    )]
    SizeMismatch {
        /// The entry's path.
        path: String,
        /// Bytes declared in the entry.
        declared: u64,
        /// Bytes received, counting the chunk that went past the declared size.
        received: u64,
    },
    /// A daemon asked for a path that is not a file of the client's scan (say, a file the
    /// `.dockerignore` excludes): never sent.
    #[error("the builder asked for {path:?}, which is not a file of the context as scanned")]
    NotListed {
        /// The path asked for.
        path: String,
    },
    /// A file asked for is no longer a regular file (replaced since the scan).
    #[error("{}: no longer a regular file (it changed while the context was sent)", path.display())]
    NotAFile {
        /// The path on the client.
        path: PathBuf,
    },
    /// [`Mirror::write_file`] for a path the plan did not ask for.
    #[error("context file {path:?} was not asked for by this sync's plan")]
    NotPlanned {
        /// The path written.
        path: String,
    },
    /// [`Mirror::finish`] before every asked file was written.
    #[error("{missing} asked context file(s) never arrived, the first {path:?}")]
    Missing {
        /// The first missing path.
        path: String,
        /// How many are missing.
        missing: usize,
    },
}

impl Error {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
