//! The ordered pattern list and the "later `!` re-includes, parents count" evaluation.

use crate::pattern::Pattern;
use crate::{path, syntax, too_long, Error, MAX_PATTERNS, MAX_PATTERN_BYTES};

/// An ordered list of `.dockerignore` patterns, ready to decide which context paths are excluded.
///
/// Paths are relative to the context root and `/`-separated (`src/main.rs`, not `./src/main.rs`).
/// A path is excluded when the last pattern matching it or one of its parent directories is not a
/// `!` pattern.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

/// Per-pattern results for a directory, handed to its children by
/// [`PatternMatcher::matches_using_parent_results`] so they need not re-match every ancestor.
///
/// `MatchInfo::default()` means "nothing known": the path's ancestors are then checked directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    /// Entry `i`: pattern `i` matches the directory or one of its ancestors.
    matched: Vec<bool>,
}

impl PatternMatcher {
    /// Builds a matcher as upstream `patternmatcher.New` does: each pattern is trimmed, dropped if
    /// empty, `filepath.Clean`ed, stripped of a leading `!` (which makes it an exclusion) and
    /// checked for glob syntax errors.
    ///
    /// Patterns come as they would be handed to BuildKit; to read a `.dockerignore` file, pass its
    /// text through [`read_ignore_file`](crate::read_ignore_file) first.
    pub fn new(
        patterns: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<PatternMatcher, Error> {
        let mut matcher = PatternMatcher::default();
        for raw in patterns {
            let source = raw.as_ref().trim();
            if source.is_empty() {
                continue;
            }
            if matcher.patterns.len() == MAX_PATTERNS {
                return Err(Error::TooManyPatterns {
                    line: None,
                    limit: MAX_PATTERNS,
                });
            }
            if source.len() > MAX_PATTERN_BYTES {
                return Err(too_long(source, None));
            }
            // Upstream cleans before looking at `!`, so `!./a` keeps its `./`.
            let cleaned = path::clean(source);
            let (exclusion, cleaned) = match cleaned.strip_prefix('!') {
                Some("") => return Err(Error::LoneExclusion),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            syntax::check(&cleaned).map_err(|reason| Error::BadPattern {
                pattern: source.to_owned(),
                reason: reason.to_owned(),
            })?;
            matcher.exclusions |= exclusion;
            matcher
                .patterns
                .push(Pattern::new(source.to_owned(), cleaned, exclusion));
        }
        Ok(matcher)
    }

    /// Whether `path` is excluded: patterns apply in order, a later `!` pattern re-includes, and a
    /// pattern applies to a path when it matches the path or any of its parent directories.
    ///
    /// Fails when a pattern that has to be evaluated cannot be compiled (for example the reversed
    /// range in `[Local-Only]`); upstream reports those lazily too, so `new` accepts them.
    pub fn matches_or_parent_matches(&self, path: &str) -> Result<bool, Error> {
        let parents = path::parent_prefixes(path);
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion cannot change an excluded path, nor an exclusion an included one.
            if pattern.is_exclusion() != matched {
                continue;
            }
            if pattern.matches_self_or_parent(path, &parents)? {
                matched = !pattern.is_exclusion();
            }
        }
        Ok(matched)
    }

    /// Incremental form of [`matches_or_parent_matches`](Self::matches_or_parent_matches) for
    /// directory walks: pass the [`MatchInfo`] returned for the parent directory (or
    /// `MatchInfo::default()` for a top-level entry, or when unknown) and get the answer plus the
    /// info to hand to this path's children. Answers and errors are identical to
    /// `matches_or_parent_matches`.
    ///
    /// Unlike upstream `MatchesUsingParentResults`, every pattern's result is recorded, including
    /// patterns the ordering makes irrelevant for this path: upstream leaves those `false`, which
    /// lets a child disagree with `MatchesOrParentMatches` (patterns `a`, `!a/b`, `a` and the path
    /// `a/b` would come out included).
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), Error> {
        let inherited = &parent.matched;
        if !inherited.is_empty() && inherited.len() != self.patterns.len() {
            return Err(Error::MatchInfoMismatch {
                expected: self.patterns.len(),
                got: inherited.len(),
            });
        }
        let parents = if inherited.is_empty() {
            path::parent_prefixes(path)
        } else {
            Vec::new()
        };
        let mut matched = false;
        let mut info = Vec::with_capacity(self.patterns.len());
        for (i, pattern) in self.patterns.iter().enumerate() {
            let relevant = pattern.is_exclusion() == matched;
            let hit = if inherited.get(i) == Some(&true) {
                true
            } else {
                match pattern.matches_self_or_parent(path, &parents) {
                    Ok(hit) => hit,
                    // A pattern that cannot compile never matches; its error only surfaces where
                    // `matches_or_parent_matches` would evaluate it.
                    Err(err) if relevant => return Err(err),
                    Err(_) => false,
                }
            };
            info.push(hit);
            if hit {
                matched = !pattern.is_exclusion();
            }
        }
        Ok((matched, MatchInfo { matched: info }))
    }

    /// Whether any pattern is a `!` exclusion.
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether some `!` pattern could re-include a path strictly under the directory `dir`.
    ///
    /// A walker that finds an excluded directory may skip its whole subtree when this is `false`:
    /// every descendant is then excluded too. Conservative: `true` when a pattern cannot be ruled
    /// out (including patterns that fail to compile, so their error still surfaces). `dir` is
    /// relative to the context root like any matched path; `""` or `"."` is the root itself.
    pub fn could_reinclude_under(&self, dir: &str) -> bool {
        if !self.exclusions {
            return false;
        }
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() || dir == "." {
            return true;
        }
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.is_exclusion())
            .any(|p| p.may_match_under(&dir_slash))
    }

    /// The active patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns at all (nothing is ever excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).unwrap()
    }

    /// Walks `path` from the top, one directory at a time, as a walker would.
    fn walk(m: &PatternMatcher, path: &str) -> Result<bool, Error> {
        let mut info = MatchInfo::default();
        for (i, _) in path.match_indices('/') {
            info = m.matches_using_parent_results(&path[..i], &info)?.1;
        }
        Ok(m.matches_using_parent_results(path, &info)?.0)
    }

    #[test]
    fn new_trims_drops_and_flags_exclusions() {
        let m = matcher(&["docs", "  !docs/README.md  ", "", "   "]);
        assert_eq!(m.patterns().len(), 2);
        assert!(m.exclusions());
        assert!(m.patterns()[1].is_exclusion());
        assert_eq!(m.patterns()[1].as_str(), "docs/README.md");
    }

    #[test]
    fn one_matcher_serves_many_threads() {
        // Each compiled pattern keeps one lazy-DFA cache behind a lock: threads sharing a
        // matcher must see the answers a single thread sees.
        let m = matcher(&["**/*.log", "!**/keep?.log", "b[0-9]/**", "*/x*y*z"]);
        let paths: Vec<String> = (0..200)
            .flat_map(|i| {
                [
                    format!("d{i}/a.log"),
                    format!("d{i}/keep{}.log", i % 10),
                    format!("b{}/f{i}", i % 12),
                    format!("d{i}/x{i}y{i}z"),
                ]
            })
            .collect();
        let alone: Vec<bool> = paths
            .iter()
            .map(|p| m.matches_or_parent_matches(p).unwrap())
            .collect();
        assert!(alone.iter().any(|b| *b) && alone.iter().any(|b| !*b));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for (p, want) in paths.iter().zip(&alone).rev() {
                        assert_eq!(m.matches_or_parent_matches(p).unwrap(), *want, "{p}");
                        assert!(m.could_reinclude_under(p.split('/').next().unwrap()));
                    }
                });
            }
        });
    }

    #[test]
    fn pattern_count_and_length_are_bounded() {
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("p{i}")).collect();
        assert_eq!(
            PatternMatcher::new(&many).unwrap_err(),
            Error::TooManyPatterns {
                line: None,
                limit: MAX_PATTERNS
            }
        );
        assert!(PatternMatcher::new(&many[1..]).is_ok());
        let long = format!("{}*", "a".repeat(MAX_PATTERN_BYTES));
        assert!(matches!(
            PatternMatcher::new([long.as_str()]).unwrap_err(),
            Error::PatternTooLong { line: None, len, .. } if len == MAX_PATTERN_BYTES + 1
        ));
    }

    #[test]
    fn lone_exclamation_is_an_error() {
        for p in ["!", " ! ", "!/"] {
            assert_eq!(
                PatternMatcher::new([p]).unwrap_err(),
                Error::LoneExclusion,
                "{p:?}"
            );
        }
        // `!!` is an exclusion of the pattern `!`
        assert!(PatternMatcher::new(["!!"]).unwrap().exclusions());
    }

    #[test]
    fn bad_pattern_error_names_the_pattern() {
        let err = PatternMatcher::new(["ok", "  a[  "]).unwrap_err();
        assert!(
            matches!(&err, Error::BadPattern { pattern, .. } if pattern == "a["),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"a[\""), "{err}");
    }

    #[test]
    fn clean_happens_before_exclusion_is_stripped() {
        // `!./foo` cleans to itself, so the exclusion pattern is `./foo`, which matches no
        // relative path: upstream behaviour (ReadAll cleans after stripping `!` and avoids this).
        let m = matcher(&["*", "!./foo"]);
        assert!(m.matches_or_parent_matches("foo").unwrap());
        let m = matcher(&["*", "!foo/"]);
        assert!(!m.matches_or_parent_matches("foo").unwrap());
    }

    #[test]
    fn later_patterns_win() {
        let m = matcher(&["*.go", "!keep.go", "keep*"]);
        assert!(m.matches_or_parent_matches("a.go").unwrap());
        assert!(m.matches_or_parent_matches("keep.go").unwrap());
        assert!(!m.matches_or_parent_matches("a.rs").unwrap());
    }

    #[test]
    fn errors_surface_only_when_the_pattern_is_evaluated() {
        let m = matcher(&["foo", "[z-a]"]);
        // `foo` is already excluded, so the broken inclusion is never tried
        assert!(m.matches_or_parent_matches("foo").unwrap());
        assert!(m.matches_or_parent_matches("bar").is_err());
        assert!(
            m.matches_using_parent_results("foo", &MatchInfo::default())
                .unwrap()
                .0
        );
        assert!(walk(&m, "bar/x").is_err());
    }

    #[test]
    fn incremental_agrees_where_upstream_does_not() {
        let m = matcher(&["a", "!a/b", "a"]);
        assert!(m.matches_or_parent_matches("a/b").unwrap());
        assert!(walk(&m, "a/b").unwrap());
        assert!(walk(&m, "a/b/c").unwrap());
    }

    #[test]
    fn incremental_agrees_on_a_tree() {
        let m = matcher(&[
            "**/*.log",
            "build",
            "!build/keep/**",
            "!**/important.log",
            "docs/*",
            "!docs/README*",
        ]);
        for path in [
            "a.log",
            "src/x.log",
            "src/important.log",
            "build",
            "build/out.o",
            "build/keep",
            "build/keep/x",
            "build/keep/x/y.log",
            "docs/README.md",
            "docs/guide/intro.md",
            "docs/guide/important.log",
            "other",
        ] {
            assert_eq!(
                walk(&m, path).unwrap(),
                m.matches_or_parent_matches(path).unwrap(),
                "{path}"
            );
        }
    }

    #[test]
    fn match_info_from_another_matcher_is_rejected() {
        let a = matcher(&["x", "y"]);
        let b = matcher(&["x"]);
        let (_, info) = a
            .matches_using_parent_results("d", &MatchInfo::default())
            .unwrap();
        assert_eq!(
            b.matches_using_parent_results("d/e", &info).unwrap_err(),
            Error::MatchInfoMismatch {
                expected: 1,
                got: 2
            }
        );
    }

    #[test]
    fn skipping_excluded_directories() {
        let m = matcher(&["build", "node_modules"]);
        assert!(!m.could_reinclude_under("build"));
        let m = matcher(&["build", "!build/keep"]);
        assert!(m.could_reinclude_under("build"));
        assert!(m.could_reinclude_under("build/"));
        assert!(!m.could_reinclude_under("node_modules"));
        assert!(!m.could_reinclude_under("build/keep"));
        assert!(m.could_reinclude_under(""));
        let m = matcher(&["vendor", "!**/LICENSE"]);
        assert!(m.could_reinclude_under("vendor/x"));
        let m = matcher(&["*", "!*.md"]);
        assert!(!m.could_reinclude_under("docs"));
    }
}
