//! Reading a `.dockerignore` file into patterns (upstream `ignorefile.ReadAll`).

use crate::path;

/// The patterns of a `.dockerignore` file, as BuildKit reads it.
///
/// Per line: a UTF-8 byte-order mark is dropped from the first line; a line whose first character
/// is `#` is a comment (an indented `#` is not); whitespace is trimmed and empty lines are skipped;
/// a leading `!` is set aside (and the rest trimmed again); the rest is `path.Clean`ed and loses one
/// leading `/`; the `!` is put back. A lone `!` survives here and is rejected by
/// [`PatternMatcher::new`](crate::PatternMatcher::new).
///
/// Upstream also fails on lines over 64 KiB (a `bufio.Scanner` limit); this reads them.
pub fn read_ignore_file(text: &str) -> Vec<String> {
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
    patterns
}

#[cfg(test)]
mod tests {
    use super::read_ignore_file;

    #[test]
    fn readall_rules() {
        let text = "\u{feff}# comment\n  # not a comment\n/\n//abs//x/./y/..\r\n!  /neg \n!\n\n\ttab\t\nlast";
        assert_eq!(
            read_ignore_file(text),
            ["# not a comment", "/", "abs/x", "!neg", "!", "tab", "last"]
        );
    }

    #[test]
    fn bom_only_on_first_line() {
        assert_eq!(read_ignore_file("a\n\u{feff}b"), ["a", "\u{feff}b"]);
        assert_eq!(read_ignore_file("\u{feff}#c\nx"), ["x"]);
        assert!(read_ignore_file("").is_empty());
        assert!(read_ignore_file("\n\n").is_empty());
    }
}
