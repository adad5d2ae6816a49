//! Randomised (deterministic) checks of the promises a directory walker relies on: the incremental
//! API agrees with `matches_or_parent_matches`, and `could_reinclude_under` never lets a walker
//! skip a directory holding a re-included path. Also: nothing panics on odd patterns or paths.

use kiln_ignore::{MatchInfo, PatternMatcher};

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "a",
    "b",
    "ab",
    "/",
    "*",
    "**",
    "**/",
    "?",
    "[a-b]",
    "[^a]",
    "\\*",
    ".",
    "..",
    "]",
    "[",
    "[z-a]",
    "$",
    "^",
    "\\d",
    "[*]",
    "[[:alpha:]]",
    "\u{feff}",
    "é",
    " ",
];
const SEGMENTS: &[&str] = &["a", "b", "ab", "ba", "é", "a.b", "*", "[", "\n"];

fn outcome(result: Result<bool, kiln_ignore::Error>) -> String {
    match result {
        Ok(b) => b.to_string(),
        Err(_) => "error".to_owned(),
    }
}

fn walk(m: &PatternMatcher, segments: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut info = MatchInfo::default();
    let mut path = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 {
            path.push('/');
        }
        path.push_str(segment);
        match m.matches_using_parent_results(&path, &info) {
            Ok((hit, next)) => {
                out.push((path.clone(), hit.to_string()));
                info = next;
            }
            Err(_) => {
                out.push((path.clone(), "error".to_owned()));
                break;
            }
        }
    }
    out
}

#[test]
fn incremental_walk_and_subtree_skipping_agree_with_direct_matching() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut checked = 0;
    for _ in 0..3000 {
        let patterns: Vec<String> = (0..1 + rng.next() % 4)
            .map(|_| {
                let mut p = String::new();
                if rng.next().is_multiple_of(3) {
                    p.push('!');
                }
                for _ in 0..1 + rng.next() % 4 {
                    p.push_str(rng.pick(PIECES));
                }
                p
            })
            .collect();
        let Ok(m) = PatternMatcher::new(&patterns) else {
            continue;
        };
        for _ in 0..8 {
            let segments: Vec<&str> = (0..1 + rng.next() % 4)
                .map(|_| rng.pick(SEGMENTS))
                .collect();
            for (path, walked) in walk(&m, &segments) {
                let direct = outcome(m.matches_or_parent_matches(&path));
                assert_eq!(walked, direct, "patterns {patterns:?}, path {path:?}");
                checked += 1;
            }
            // A directory the walker may skip holds only excluded paths.
            for depth in 1..segments.len() {
                let dir = segments[..depth].join("/");
                if m.matches_or_parent_matches(&dir).ok() != Some(true)
                    || m.could_reinclude_under(&dir)
                {
                    continue;
                }
                let below = segments.join("/");
                assert_eq!(
                    m.matches_or_parent_matches(&below).ok(),
                    Some(true),
                    "patterns {patterns:?}: skipped {dir:?} but {below:?} is not excluded"
                );
            }
        }
    }
    assert!(checked > 1000, "too few paths checked: {checked}");
}
