//! Reading a `.dockerignore` file into patterns (upstream `ignorefile.ReadAll`).

use crate::{path, too_long, Error, MAX_PATTERNS, MAX_PATTERN_BYTES};

/// The patterns of a `.dockerignore` file, as BuildKit reads it.
///
/// Per line: a UTF-8 byte-order mark is dropped from the first line; a line whose first character
/// is `#` is a comment (an indented `#` is not); whitespace is trimmed and empty lines are skipped;
/// a leading `!` is set aside (and the rest trimmed again); the rest is `path.Clean`ed and loses one
/// leading `/`; the `!` is put back. A lone `!` survives here and is rejected by
/// [`PatternMatcher::new`](crate::PatternMatcher::new).
///
/// Upstream fails on lines over 64 KiB (a `bufio.Scanner` limit). This fails, naming the line,
/// on a pattern over [`MAX_PATTERN_BYTES`] and on more than [`MAX_PATTERNS`] patterns.
pub fn read_ignore_file(text: &str) -> Result<Vec<String>, Error> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    // A final newline does not start another line.
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut patterns = Vec::new();
    for (index, line) in lines.into_iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if index == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        if patterns.len() == MAX_PATTERNS {
            return Err(Error::TooManyPatterns {
                line: Some(index + 1),
                limit: MAX_PATTERNS,
            });
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(too_long(pattern, Some(index + 1)));
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = path::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        patterns.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    Ok(patterns)
}

#[cfg(test)]
mod tests {
    use super::read_ignore_file;
    use crate::{Error, MAX_PATTERNS, MAX_PATTERN_BYTES};

    #[test]
    fn readall_rules() {
        let text = "\u{feff}# comment\n  # not a comment\n/\n//abs//x/./y/..\r\n!  /neg \n!\n\n\ttab\t\nlast";
        assert_eq!(
            read_ignore_file(text).unwrap(),
            ["# not a comment", "/", "abs/x", "!neg", "!", "tab", "last"]
        );
    }

    #[test]
    fn bom_only_on_first_line() {
        assert_eq!(
            read_ignore_file("a\n\u{feff}b").unwrap(),
            ["a", "\u{feff}b"]
        );
        assert_eq!(read_ignore_file("\u{feff}#c\nx").unwrap(), ["x"]);
        assert!(read_ignore_file("").unwrap().is_empty());
        assert!(read_ignore_file("\n\n").unwrap().is_empty());
    }

    #[test]
    fn limits_name_the_line() {
        // Comments and blank lines do not count; the pattern past the limit is named.
        let text = format!("# c\n\n{}", "x\n".repeat(MAX_PATTERNS + 1));
        assert_eq!(
            read_ignore_file(&text).unwrap_err(),
            Error::TooManyPatterns {
                line: Some(MAX_PATTERNS + 3),
                limit: MAX_PATTERNS
            }
        );
        assert_eq!(
            read_ignore_file(&"x\n".repeat(MAX_PATTERNS)).unwrap().len(),
            MAX_PATTERNS
        );
        let text = format!("a\n  {}  \n", "y".repeat(MAX_PATTERN_BYTES + 1));
        let err = read_ignore_file(&text).unwrap_err();
        assert!(
            matches!(
                err,
                Error::PatternTooLong {
                    line: Some(2),
                    len: 4097,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("line 2: pattern of 4097 bytes"),
            "{err}"
        );
        assert!(err.to_string().len() < 200, "{err}");
        let at_limit = "z".repeat(MAX_PATTERN_BYTES);
        assert_eq!(read_ignore_file(&at_limit).unwrap(), [at_limit]);
    }
}
