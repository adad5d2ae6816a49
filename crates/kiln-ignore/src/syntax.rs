//! The syntax check upstream runs when a matcher is built: `filepath.Match(pattern, ".")` on unix,
//! which reports `ErrBadPattern` exactly when some part of the pattern is malformed glob syntax.
//!
//! Matching itself goes through the regexp translation in `translate`; this check only decides
//! which patterns `PatternMatcher::new` rejects.

/// Why a pattern is not valid Go glob syntax.
pub(crate) fn check(pattern: &str) -> Result<(), &'static str> {
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next().ok_or("a trailing '\\' escapes nothing")?;
            }
            '[' => {
                if chars.peek() == Some(&'^') {
                    chars.next();
                }
                let mut ranges = 0usize;
                loop {
                    if ranges > 0 && chars.peek() == Some(&']') {
                        chars.next();
                        break;
                    }
                    class_char(&mut chars)?;
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        class_char(&mut chars)?;
                    }
                    ranges += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One (possibly escaped) character of a `[...]` class; Go's `getEsc`, which also insists that the
/// class goes on after it (an unterminated class is an error).
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<(), &'static str> {
    match chars.next() {
        None => return Err("unterminated character class '['"),
        Some('-') => return Err("'-' must sit between two characters in a character class"),
        Some(']') => return Err("empty character class '[]'"),
        Some('\\') => {
            if chars.next().is_none() {
                return Err("unterminated character class '['");
            }
        }
        Some(_) => {}
    }
    if chars.peek().is_none() {
        return Err("unterminated character class '['");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_go_glob_syntax() {
        for p in [
            "",
            "*",
            "a?b",
            "[abc]",
            "[^a-z]",
            "[\\]a]",
            "[\\-]",
            "[x\\-]",
            "a]b",
            "[*]",
            "[[]",
            // a reversed range is valid glob syntax (it just never matches in Go's filepath.Match)
            "[Local-Only]",
            "\\*",
        ] {
            assert_eq!(check(p), Ok(()), "{p:?}");
        }
    }

    #[test]
    fn rejects_malformed_patterns() {
        for p in [
            "[", "[^", "[^bc", "a[", "[]a]", "[-]", "[x-]", "[-x]", "[a-b-c]", "\\", "a\\", "[\\",
            "[a\\", "[a-", "[a-\\",
        ] {
            assert!(check(p).is_err(), "{p:?} should be rejected");
        }
    }
}
