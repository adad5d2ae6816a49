//! One cleaned pattern and how it is matched: upstream's fast paths (exact, prefix, suffix) or its
//! glob → regexp translation, matched by `regex-automata` (see `re`).

use crate::re::Regex;
use crate::Error;

/// How a pattern is matched against a path; mirrors upstream's compile step (`TestCompile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    /// No metacharacters: the path must equal the pattern.
    Exact,
    /// `X**` with no other metacharacter in `X`: the path must start with `X` (so `dir/**`
    /// matches everything under `dir/`, but not `dir` itself).
    Prefix,
    /// A pattern starting with `**`, with no other metacharacter after it: the path must end with
    /// what follows the `**` (`**/foo` also matches `foo`).
    Suffix,
    /// Anything else: the translated regular expression decides.
    Regexp,
}

/// A pattern of a [`PatternMatcher`](crate::PatternMatcher), after trimming, `filepath.Clean` and
/// removal of a leading `!`.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As written (trimmed), for error messages.
    source: String,
    cleaned: String,
    exclusion: bool,
    compiled: Compiled,
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact,
    Prefix,
    Suffix,
    /// Upstream compiles lazily and reports a regexp it cannot compile as `ErrBadPattern` each time
    /// the pattern is evaluated, so the failure is kept rather than raised by `new`.
    Regexp {
        expr: String,
        /// Boxed: a compiled lazy DFA is large next to the other variants.
        program: Result<Box<Regex>, String>,
    },
}

impl Pattern {
    /// `source` is the trimmed pattern as written, `cleaned` the cleaned text without its `!`.
    pub(crate) fn new(source: String, cleaned: String, exclusion: bool) -> Pattern {
        let (kind, expr) = translate(&cleaned);
        let compiled = match kind {
            MatchKind::Exact => Compiled::Exact,
            MatchKind::Prefix => Compiled::Prefix,
            MatchKind::Suffix => Compiled::Suffix,
            MatchKind::Regexp => {
                let program = Regex::new(&expr).map(Box::new);
                Compiled::Regexp { expr, program }
            }
        };
        Pattern {
            source,
            cleaned,
            exclusion,
            compiled,
        }
    }

    /// The cleaned pattern, without the leading `!` of an exclusion (upstream `Pattern.String`).
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` pattern that re-includes what earlier patterns excluded.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Which matching strategy the pattern compiles to.
    pub fn kind(&self) -> MatchKind {
        match self.compiled {
            Compiled::Exact => MatchKind::Exact,
            Compiled::Prefix => MatchKind::Prefix,
            Compiled::Suffix => MatchKind::Suffix,
            Compiled::Regexp { .. } => MatchKind::Regexp,
        }
    }

    /// For [`MatchKind::Regexp`], the Go RE2 expression upstream would compile (with `/` as the
    /// separator); `None` for the other kinds.
    pub fn regexp(&self) -> Option<&str> {
        match &self.compiled {
            Compiled::Regexp { expr, .. } => Some(expr),
            _ => None,
        }
    }

    /// Whether `path` itself (no parents) matches.
    pub(crate) fn matches(&self, path: &str) -> Result<bool, Error> {
        let bytes = path.as_bytes();
        match &self.compiled {
            Compiled::Exact => Ok(bytes == self.cleaned.as_bytes()),
            Compiled::Prefix => Ok(bytes.starts_with(self.fixed_part())),
            Compiled::Suffix => {
                let suffix = self.fixed_part();
                if bytes.ends_with(suffix) {
                    return Ok(true);
                }
                // `**/foo` also matches `foo`.
                Ok(suffix.first() == Some(&b'/') && suffix.get(1..) == Some(bytes))
            }
            Compiled::Regexp { program, .. } => match program {
                Ok(re) => Ok(re.is_match(path)),
                Err(reason) => Err(self.bad(reason.clone())),
            },
        }
    }

    /// Whether `path` or one of `parents` matches; parents never report errors (upstream ignores
    /// them, and `path` was tried first).
    pub(crate) fn matches_self_or_parent(
        &self,
        path: &str,
        parents: &[String],
    ) -> Result<bool, Error> {
        Ok(self.matches(path)? || parents.iter().any(|p| matches!(self.matches(p), Ok(true))))
    }

    /// Whether some path strictly under `dir_slash` (a directory path ending in `/`) could match.
    /// Conservative: `true` when unsure.
    pub(crate) fn may_match_under(&self, dir_slash: &str) -> bool {
        let cleaned = self.cleaned.as_bytes();
        let dir = dir_slash.as_bytes();
        match &self.compiled {
            Compiled::Exact => cleaned.len() > dir.len() && cleaned.starts_with(dir),
            Compiled::Prefix => {
                let prefix = self.fixed_part();
                prefix.starts_with(dir) || dir.starts_with(prefix)
            }
            Compiled::Suffix => true,
            Compiled::Regexp { program, .. } => match program {
                Ok(re) => re.may_match_after(dir_slash),
                Err(_) => true,
            },
        }
    }

    /// The literal part of a prefix pattern (`X` of `X**`) or suffix pattern (`X` of `**X`), as
    /// bytes: upstream cuts two bytes off the cleaned text, which after a leading BOM (skipped by
    /// its scanner) can fall inside a character.
    fn fixed_part(&self) -> &[u8] {
        let cleaned = self.cleaned.as_bytes();
        let part = match self.compiled {
            Compiled::Prefix => cleaned.get(..cleaned.len().saturating_sub(2)),
            Compiled::Suffix => cleaned.get(2..),
            _ => None,
        };
        part.unwrap_or(&[])
    }

    pub(crate) fn bad(&self, reason: String) -> Error {
        Error::BadPattern {
            pattern: self.source.clone(),
            reason,
        }
    }
}

/// Upstream's `Pattern.compile`: classify the pattern and build the equivalent RE2 expression.
///
/// `*` → `[^/]*`, `?` → `[^/]`, `**` → `(.*/)?` (eating one following `/`), or `.*` at the end;
/// `.+()|{}$` are escaped, `\x` is kept as a regexp escape, and everything else, `[` `]` and
/// class contents included, passes through as regexp text.
fn translate(pattern: &str) -> (MatchKind, String) {
    let mut expr = String::from("^");
    let mut kind = MatchKind::Exact;
    // Go's text/scanner silently skips a byte-order mark at the very start.
    let body = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut chars = body.chars().peekable();
    let mut first = true;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    // Trailing `**` accepts everything, as in .gitignore.
                    if kind == MatchKind::Exact {
                        kind = MatchKind::Prefix;
                    } else {
                        expr.push_str(".*");
                        kind = MatchKind::Regexp;
                    }
                } else {
                    expr.push_str("(.*/)?");
                    kind = MatchKind::Regexp;
                }
                if first {
                    kind = MatchKind::Suffix;
                }
            }
            '*' => {
                expr.push_str("[^/]*");
                kind = MatchKind::Regexp;
            }
            '?' => {
                expr.push_str("[^/]");
                kind = MatchKind::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                expr.push('\\');
                expr.push(c);
            }
            '\\' => match chars.next() {
                Some(escaped) => {
                    expr.push('\\');
                    expr.push(escaped);
                    kind = MatchKind::Regexp;
                }
                None => expr.push('\\'),
            },
            '[' | ']' => {
                expr.push(c);
                kind = MatchKind::Regexp;
            }
            c => expr.push(c),
        }
        first = false;
    }
    if kind != MatchKind::Regexp {
        return (kind, String::new());
    }
    expr.push('$');
    (kind, expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Pattern {
        Pattern::new(p.to_owned(), p.to_owned(), false)
    }

    #[test]
    fn translate_fast_paths() {
        assert_eq!(translate("abc.def").0, MatchKind::Exact);
        assert_eq!(translate("dir/**").0, MatchKind::Prefix);
        assert_eq!(translate("abc**").0, MatchKind::Prefix);
        assert_eq!(translate("**").0, MatchKind::Suffix);
        assert_eq!(translate("**/foo/bar").0, MatchKind::Suffix);
        // `**` first wins over a later trailing `**`... until a metacharacter follows
        assert_eq!(
            translate("**/**"),
            (MatchKind::Regexp, "^(.*/)?.*$".to_owned())
        );
        assert_eq!(
            translate("a\\*b"),
            (MatchKind::Regexp, "^a\\*b$".to_owned())
        );
    }

    #[test]
    fn prefix_and_suffix_semantics() {
        assert!(!pattern("abc/**").matches("abc").unwrap());
        assert!(pattern("abc/**").matches("abc/d").unwrap());
        assert!(pattern("abc**").matches("abc").unwrap());
        assert!(pattern("abc**").matches("abcdef").unwrap());
        assert!(pattern("**file").matches("dir/myfile").unwrap());
        assert!(pattern("**/foo").matches("foo").unwrap());
        assert!(pattern("**/foo").matches("a/b/foo").unwrap());
        assert!(!pattern("**/foo").matches("afoo").unwrap());
        assert!(pattern("**").matches("").unwrap());
    }

    #[test]
    fn leading_bom_is_skipped_by_the_scanner_but_not_by_fast_paths() {
        let p = pattern("\u{feff}*.go");
        assert_eq!(p.kind(), MatchKind::Regexp);
        assert!(p.matches("main.go").unwrap());
        // `**` right after the BOM is a suffix pattern whose suffix starts mid-BOM (bytes, no panic)
        let p = pattern("\u{feff}**foo");
        assert_eq!(p.kind(), MatchKind::Suffix);
        assert!(!p.matches("foo").unwrap());
        assert!(p.matches("\u{feff}**foo").unwrap());
    }

    #[test]
    fn class_reaches_across_slash_like_upstream() {
        // RE2 classes know nothing of separators, and neither does Go's filepath.Match.
        assert!(pattern("a[^b]c").matches("a/c").unwrap());
        assert!(!pattern("a?c").matches("a/c").unwrap());
    }

    #[test]
    fn reversed_range_fails_at_match_time() {
        let p = pattern("[Local-Only]");
        assert!(p.matches("x").is_err());
        assert!(p.matches("x").is_err());
    }

    #[test]
    fn viability_under_directory() {
        assert!(pattern("dir/keep").may_match_under("dir/"));
        assert!(!pattern("dir").may_match_under("dir/"));
        assert!(!pattern("other/keep").may_match_under("dir/"));
        assert!(pattern("d**").may_match_under("dir/"));
        assert!(pattern("dir/sub/**").may_match_under("dir/"));
        assert!(!pattern("dir2/**").may_match_under("dir/"));
        assert!(pattern("**/keep").may_match_under("dir/"));
        assert!(pattern("*/keep").may_match_under("dir/"));
        assert!(!pattern("*/keep").may_match_under("a/b/"));
        assert!(!pattern("*.txt").may_match_under("dir/"));
        assert!(pattern("[z-a]").may_match_under("dir/"));
    }
}
