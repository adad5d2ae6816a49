//! `.dockerignore` matching for build contexts, with exactly the semantics of
//! moby/patternmatcher as BuildKit and fsutil use it: which context paths a list of patterns
//! excludes, incrementally during a directory walk, and how a `.dockerignore` file is read.
//!
//! Pure logic on `/`-separated strings relative to the context root. This crate must not depend on
//! I/O (no filesystem, no walking: callers walk and ask), on any other kiln crate, or on a regex
//! engine (the small engine in `re` runs the translation upstream feeds to Go's RE2).
//!
//! ```
//! use kiln_ignore::{read_ignore_file, PatternMatcher};
//!
//! let patterns = read_ignore_file("# build output\ntarget\n*.log\n!keep.log\n");
//! let matcher = PatternMatcher::new(&patterns)?;
//! assert!(matcher.matches_or_parent_matches("target/debug/kiln")?);
//! assert!(!matcher.matches_or_parent_matches("keep.log")?);
//! assert!(!matcher.matches_or_parent_matches("src/main.rs")?);
//! # Ok::<(), kiln_ignore::Error>(())
//! ```

mod ignorefile;
mod matcher;
mod path;
mod pattern;
mod re;
mod syntax;

pub use ignorefile::read_ignore_file;
pub use matcher::{MatchInfo, PatternMatcher};
pub use pattern::{MatchKind, Pattern};

/// Why patterns could not be built or matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pattern that is just `!`, with nothing to re-include.
    #[error(
        "illegal exclusion pattern \"!\": a '!' must be followed by the pattern to re-include \
         (remove the line, or write e.g. \"!keep.txt\")"
    )]
    LoneExclusion,
    /// Malformed glob syntax, or a pattern whose translation cannot be matched.
    #[error(
        "bad .dockerignore pattern {pattern:?}: {reason} \
         (write a literal '[', ']', '*', '?' or '\\' as '\\[', '\\]', '\\*', '\\?', '\\\\')"
    )]
    BadPattern {
        /// The pattern as written (trimmed, with its `!` if any).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A [`MatchInfo`] from a matcher with a different number of patterns.
    #[error(
        "match info holds {got} pattern results but this matcher has {expected} patterns: pass \
         MatchInfo::default() or the info this matcher returned for the parent directory"
    )]
    MatchInfoMismatch {
        /// Patterns in this matcher.
        expected: usize,
        /// Results in the info passed in.
        got: usize,
    },
}
