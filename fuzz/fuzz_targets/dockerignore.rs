//! `.dockerignore` reading, pattern compilation and matching on arbitrary input: never a panic,
//! and matching a path answers the same twice (no hidden state).
#![no_main]

use kiln_ignore::{read_ignore_file, PatternMatcher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The file, then a blank line, then the paths to match.
    let (file, paths) = text
        .split_once("\n\n")
        .unwrap_or((text, "a/b/c.txt\nnode_modules/x"));
    let Ok(patterns) = read_ignore_file(file) else {
        return;
    };
    let Ok(matcher) = PatternMatcher::new(&patterns) else {
        return;
    };
    for path in paths.lines().take(16) {
        let first = matcher.matches_or_parent_matches(path);
        let again = matcher.matches_or_parent_matches(path);
        assert_eq!(first.is_ok(), again.is_ok());
        if let (Ok(a), Ok(b)) = (first, again) {
            assert_eq!(a, b, "{path}");
        }
    }
});
