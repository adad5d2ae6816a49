//! `.dockerignore` matching for build contexts, with exactly the semantics of
//! moby/patternmatcher as BuildKit and fsutil use it: which context paths a list of patterns
//! excludes, incrementally during a directory walk, and how a `.dockerignore` file is read.
//!
//! Pure logic on `/`-separated strings relative to the context root. This crate must not depend on
//! I/O (no filesystem, no walking: callers walk and ask) or on any other kiln crate. The
//! translation upstream feeds to Go's RE2 is parsed with RE2's rules in `re` and matched by
//! `regex-automata`'s lazy DFA (linear in the path).
//!
//! ```
//! use kiln_ignore::{read_ignore_file, PatternMatcher};
//!
//! let patterns = read_ignore_file("# build output\ntarget\n*.log\n!keep.log\n")?;
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

/// Most patterns one matcher (or one `.dockerignore` file) may hold. Every path of the context
/// is checked against every pattern, so the count multiplies the cost of a walk; real files
/// list tens to hundreds.
pub const MAX_PATTERNS: usize = 10_000;

/// Longest pattern, in bytes: `PATH_MAX`. A longer pattern can only match through `*`s, and each
/// pattern is compiled to a program in proportion to its length.
pub const MAX_PATTERN_BYTES: usize = 4096;

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
    /// More than [`MAX_PATTERNS`] patterns.
    #[error(
        "{}more than {limit} patterns: exclude whole directories (e.g. \"node_modules\") or use \
         `**` instead of listing files one by one",
        at_line(.line)
    )]
    TooManyPatterns {
        /// Line of a `.dockerignore` file where the limit was passed, when read from one.
        line: Option<usize>,
        limit: usize,
    },
    /// A pattern longer than [`MAX_PATTERN_BYTES`].
    #[error(
        "{}pattern of {len} bytes is longer than the limit of {limit} bytes (it starts {start:?})",
        at_line(.line)
    )]
    PatternTooLong {
        /// Line of a `.dockerignore` file, when read from one.
        line: Option<usize>,
        /// The first characters of the pattern.
        start: String,
        len: usize,
        limit: usize,
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

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

/// The error for a pattern over [`MAX_PATTERN_BYTES`], quoting only its start.
pub(crate) fn too_long(pattern: &str, line: Option<usize>) -> Error {
    Error::PatternTooLong {
        line,
        start: pattern.chars().take(40).collect(),
        len: pattern.len(),
        limit: MAX_PATTERN_BYTES,
    }
}
