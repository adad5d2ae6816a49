//! The slice of Go RE2 syntax that upstream's glob → regexp translation can produce: parsed here
//! with RE2's rules, matched by `regex-automata` (linear in path length, no backtracking).
//!
//! Why not a glob matcher: upstream defines matching *through* that translation, and in odd corners
//! (`*` inside `[...]`, `[[:alpha:]]`, `\d`, `^`, `\Q`) the regexp means something other than the
//! glob. Parsing the translated text with RE2's rules is the only way to agree with it there too.
//! Why not hand the text to `regex-syntax`: Rust's syntax is not Go's (`\Q...\E`, octal escapes,
//! ASCII-only `\d`/`\w`/`\b`, what `a**` means), so the parser below builds the `Hir` itself.
//! Go's flags for `regexp.Compile` apply: `.` does not match `\n`, negated classes do, `^`/`$` are
//! start/end of text.
//!
//! Not supported (reported as a bad pattern): Unicode classes `\p{..}`/`\P{..}`, alternation,
//! counted repetition `{n,m}` and `(?flags)`; the translation never produces the last three.

use std::sync::{Mutex, PoisonError};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson::{self, WhichCaptures, NFA};
use regex_automata::{Anchored, Input};
use regex_syntax::hir::{self, Hir};

/// A compiled expression: one lazy DFA, searched for matches and walked byte by byte to tell
/// whether a path prefix can still lead to one. Linear in the text; states are built on demand.
///
/// Just the lazy DFA, not `regex-automata`'s meta regex: that one also compiles a reverse
/// automaton and engines whose answers (match positions, captures) nobody reads here, three times
/// the memory per compiled pattern (measured: 9 KB against 3 KB, before caches), and a
/// `.dockerignore` may hold thousands of patterns.
#[derive(Debug)]
pub(crate) struct Regex {
    dfa: DFA,
    /// The DFA's state cache, made on first use.
    cache: Mutex<Option<Cache>>,
}

impl Clone for Regex {
    fn clone(&self) -> Self {
        Regex {
            dfa: self.dfa.clone(),
            cache: Mutex::new(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    Start,
    End,
    WordBoundary,
    NotWordBoundary,
}

/// A set of code points as sorted, non-overlapping inclusive ranges (u32 so that a `\x{D800}`
/// escape, which Go accepts and which never matches, needs no special case).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Class {
    ranges: Vec<(u32, u32)>,
}

const MAX_RUNE: u32 = 0x10_FFFF;

impl Class {
    fn of(ranges: &[(u32, u32)]) -> Self {
        Class {
            ranges: ranges.to_vec(),
        }
        .normalized()
    }

    fn single(c: u32) -> Self {
        Class {
            ranges: vec![(c, c)],
        }
    }

    /// Adds a range; call [`normalized`](Self::normalized) once all are in.
    fn add(&mut self, lo: u32, hi: u32) {
        self.ranges.push((lo, hi));
    }

    fn add_class(&mut self, other: &Class) {
        self.ranges.extend_from_slice(&other.ranges);
    }

    /// Sorted and merged, as `negated` and `contains` need.
    fn normalized(mut self) -> Class {
        self.ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
        self
    }

    /// The complement; `self` must be normalized.
    fn negated(&self) -> Class {
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut next = 0u32;
        for &(lo, hi) in &self.ranges {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi.saturating_add(1);
        }
        if next <= MAX_RUNE {
            out.push((next, MAX_RUNE));
        }
        Class { ranges: out }
    }
}

/// `\d`, `\s`, `\w` and their negations (ASCII, as in RE2).
fn perl_class(c: char) -> Option<Class> {
    let (base, negate) = match c {
        'd' | 'D' => (Class::of(&[(0x30, 0x39)]), c == 'D'),
        's' | 'S' => (
            Class::of(&[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]),
            c == 'S',
        ),
        'w' | 'W' => (
            Class::of(&[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]),
            c == 'W',
        ),
        _ => return None,
    };
    Some(if negate { base.negated() } else { base })
}

/// `[:alpha:]` and friends (ASCII, as in RE2); `name` is what sits between `[:` and `:]`.
fn posix_class(name: &str) -> Option<Class> {
    let (name, negate) = match name.strip_prefix('^') {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let ranges: &[(u32, u32)] = match name {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "ascii" => &[(0x00, 0x7F)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
        "digit" => &[(0x30, 0x39)],
        "graph" => &[(0x21, 0x7E)],
        "lower" => &[(0x61, 0x7A)],
        "print" => &[(0x20, 0x7E)],
        "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "space" => &[(0x09, 0x0D), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5A)],
        "word" => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    let class = Class::of(ranges);
    Some(if negate { class.negated() } else { class })
}

#[derive(Debug)]
enum Node {
    Class(Class),
    Look(Look),
    Group(Vec<Node>),
    Repeat(Box<Node>, Rep),
}

#[derive(Debug, Clone, Copy)]
enum Rep {
    Star,
    Plus,
    Opt,
}

/// Groups are only ever one level deep in translated patterns; the cap keeps recursion bounded.
const MAX_NESTING: usize = 64;

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn seq(&mut self, depth: usize) -> Result<Vec<Node>, String> {
        if depth > MAX_NESTING {
            return Err("groups nested too deeply".to_owned());
        }
        let mut seq = Vec::new();
        loop {
            let Some(c) = self.bump() else {
                if depth > 0 {
                    return Err("missing closing ')'".to_owned());
                }
                return Ok(seq);
            };
            match c {
                ')' if depth > 0 => return Ok(seq),
                ')' => return Err("unexpected ')'".to_owned()),
                '(' => {
                    if self.peek() == Some('?') {
                        return Err("group flags '(?' are not supported".to_owned());
                    }
                    seq.push(Node::Group(self.seq(depth + 1)?));
                }
                '|' => return Err("alternation '|' is not supported".to_owned()),
                '*' | '+' | '?' => {
                    let rep = match c {
                        '*' => Rep::Star,
                        '+' => Rep::Plus,
                        _ => Rep::Opt,
                    };
                    let sub = match seq.pop() {
                        None => {
                            return Err(format!("missing argument to repetition operator '{c}'"))
                        }
                        Some(Node::Repeat(..)) => {
                            return Err(format!("invalid nested repetition operator '{c}'"));
                        }
                        Some(node) => node,
                    };
                    // A trailing '?' only makes the repetition lazy: same set of matches.
                    if self.peek() == Some('?') {
                        self.pos += 1;
                    }
                    seq.push(Node::Repeat(Box::new(sub), rep));
                }
                '^' => seq.push(Node::Look(Look::Start)),
                '$' => seq.push(Node::Look(Look::End)),
                '.' => seq.push(Node::Class(Class::single(u32::from('\n')).negated())),
                '[' => seq.push(Node::Class(self.class()?)),
                '\\' => self.top_escape(&mut seq)?,
                c => seq.push(Node::Class(Class::single(u32::from(c)))),
            }
        }
    }

    /// After a `\` outside a class.
    fn top_escape(&mut self, seq: &mut Vec<Node>) -> Result<(), String> {
        let Some(c) = self.peek() else {
            return Err("trailing '\\'".to_owned());
        };
        let look = match c {
            'A' => Some(Look::Start),
            'z' => Some(Look::End),
            'b' => Some(Look::WordBoundary),
            'B' => Some(Look::NotWordBoundary),
            _ => None,
        };
        if let Some(look) = look {
            self.pos += 1;
            seq.push(Node::Look(look));
            return Ok(());
        }
        match c {
            'C' => Err("'\\C' is not supported".to_owned()),
            'Q' => {
                // `\Q...\E` quotes everything up to `\E` or the end of the expression.
                self.pos += 1;
                while let Some(c) = self.bump() {
                    if c == '\\' && self.peek() == Some('E') {
                        self.pos += 1;
                        break;
                    }
                    seq.push(Node::Class(Class::single(u32::from(c))));
                }
                Ok(())
            }
            'p' | 'P' => Err("Unicode classes '\\p'/'\\P' are not supported".to_owned()),
            _ => {
                if let Some(class) = perl_class(c) {
                    self.pos += 1;
                    seq.push(Node::Class(class));
                } else {
                    let r = self.escape()?;
                    seq.push(Node::Class(Class::single(r)));
                }
                Ok(())
            }
        }
    }

    /// Go's `parseEscape`, positioned just after the `\`.
    fn escape(&mut self) -> Result<u32, String> {
        let Some(c) = self.bump() else {
            return Err("trailing '\\'".to_owned());
        };
        let invalid = || Err(format!("invalid escape sequence '\\{c}'"));
        match c {
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(u32::from(c)),
            '0'..='7' => {
                // A lone non-zero digit would be a backreference, which RE2 does not have.
                if c != '0' && !matches!(self.peek(), Some('0'..='7')) {
                    return invalid();
                }
                let mut r = c as u32 - u32::from('0');
                for _ in 1..3 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            r = r * 8 + (d as u32 - u32::from('0'));
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                Ok(r)
            }
            'x' => {
                let Some(first) = self.bump() else {
                    return invalid();
                };
                if first == '{' {
                    let mut r = 0u32;
                    let mut digits = 0;
                    loop {
                        match self.bump() {
                            Some('}') if digits > 0 => return Ok(r),
                            Some(d) => match d.to_digit(16) {
                                Some(v) => {
                                    r = r * 16 + v;
                                    if r > MAX_RUNE {
                                        return invalid();
                                    }
                                    digits += 1;
                                }
                                None => return invalid(),
                            },
                            None => return invalid(),
                        }
                    }
                }
                let second = self.bump();
                match (first.to_digit(16), second.and_then(|d| d.to_digit(16))) {
                    (Some(x), Some(y)) => Ok(x * 16 + y),
                    _ => invalid(),
                }
            }
            'a' => Ok(0x07),
            'f' => Ok(0x0C),
            'n' => Ok(0x0A),
            'r' => Ok(0x0D),
            't' => Ok(0x09),
            'v' => Ok(0x0B),
            _ => invalid(),
        }
    }

    /// Go's `parseClass`, positioned just after the `[`.
    fn class(&mut self) -> Result<Class, String> {
        let negate = self.peek() == Some('^');
        if negate {
            self.pos += 1;
        }
        let mut class = Class::default();
        let mut first = true;
        loop {
            match self.peek() {
                None => return Err("missing closing ']'".to_owned()),
                Some(']') if !first => {
                    self.pos += 1;
                    break;
                }
                _ => {}
            }
            first = false;
            if self.peek() == Some('[') && self.peek_at(1) == Some(':') {
                let rest: String = self.chars[self.pos + 2..].iter().collect();
                if let Some(end) = rest.find(":]") {
                    let name = &rest[..end];
                    let Some(named) = posix_class(name) else {
                        return Err(format!("invalid character class '[:{name}:]'"));
                    };
                    class.add_class(&named);
                    self.pos += 2 + name.chars().count() + 2;
                    continue;
                }
            }
            if self.peek() == Some('\\') {
                match self.peek_at(1) {
                    Some('p' | 'P') => {
                        return Err("Unicode classes '\\p'/'\\P' are not supported".to_owned());
                    }
                    Some(c) => {
                        if let Some(perl) = perl_class(c) {
                            self.pos += 2;
                            class.add_class(&perl);
                            continue;
                        }
                    }
                    None => {}
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err(format!(
                        "character class range '{}-{}' is reversed",
                        display_rune(lo),
                        display_rune(hi)
                    ));
                }
            }
            class.add(lo, hi);
        }
        let class = class.normalized();
        Ok(if negate { class.negated() } else { class })
    }

    fn class_char(&mut self) -> Result<u32, String> {
        match self.bump() {
            None => Err("missing closing ']'".to_owned()),
            Some('\\') => self.escape(),
            Some(c) => Ok(u32::from(c)),
        }
    }
}

fn display_rune(r: u32) -> String {
    char::from_u32(r).map_or_else(|| format!("\\x{{{r:X}}}"), String::from)
}

/// Go's RE2 semantics as a `Hir`: groups are plain concatenations (nothing reads captures) and
/// `\b`/`\B` are ASCII word boundaries, as in RE2.
fn to_hir(node: &Node) -> Hir {
    match node {
        Node::Class(class) => {
            // Surrogates are no `char`: a class of only those (`\x{D800}`) never matches, in
            // Go as here.
            let ranges = class.ranges.iter().flat_map(|&(lo, hi)| {
                [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)]
                    .into_iter()
                    .filter(|(lo, hi)| lo <= hi)
                    .filter_map(|(lo, hi)| Some((char::from_u32(lo)?, char::from_u32(hi)?)))
                    .map(|(lo, hi)| hir::ClassUnicodeRange::new(lo, hi))
            });
            Hir::class(hir::Class::Unicode(hir::ClassUnicode::new(ranges)))
        }
        Node::Look(look) => Hir::look(match look {
            Look::Start => hir::Look::Start,
            Look::End => hir::Look::End,
            Look::WordBoundary => hir::Look::WordAscii,
            Look::NotWordBoundary => hir::Look::WordAsciiNegate,
        }),
        Node::Group(nodes) => Hir::concat(nodes.iter().map(to_hir).collect()),
        Node::Repeat(sub, rep) => {
            let (min, max) = match rep {
                Rep::Star => (0, None),
                Rep::Plus => (1, None),
                Rep::Opt => (0, Some(1)),
            };
            Hir::repetition(hir::Repetition {
                min,
                max,
                greedy: true,
                sub: Box::new(to_hir(sub)),
            })
        }
    }
}

impl Regex {
    /// Parses an expression in the supported subset of Go RE2 syntax.
    pub(crate) fn new(expr: &str) -> Result<Regex, String> {
        let mut parser = Parser {
            chars: expr.chars().collect(),
            pos: 0,
        };
        let nodes = parser.seq(0)?;
        let hir = Hir::concat(nodes.iter().map(to_hir).collect());
        let nfa = NFA::compiler()
            .configure(thompson::Config::new().which_captures(WhichCaptures::None))
            .build_from_hir(&hir)
            .map_err(|e| format!("cannot compile {expr:?}: {e}"))?;
        // The default configuration never gives up on a search (no minimum cache clear count)
        // and never quits (no Unicode word boundaries: RE2's `\b` is ASCII).
        let dfa = DFA::builder()
            .build_from_nfa(nfa)
            .map_err(|e| format!("cannot compile {expr:?}: {e}"))?;
        Ok(Regex {
            dfa,
            cache: Mutex::new(None),
        })
    }

    /// Runs `f` with this expression's cache; a poisoned lock only means another search
    /// panicked, and a cache is always in a usable state between calls.
    fn with_cache<T>(&self, f: impl FnOnce(&mut Cache) -> T) -> T {
        let mut slot = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        f(slot.get_or_insert_with(|| self.dfa.create_cache()))
    }

    /// Go `Regexp.MatchString`, for expressions that begin with `^` (all translated patterns do):
    /// the match must start at 0 but may end anywhere.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        let input = Input::new(text).anchored(Anchored::Yes).earliest(true);
        self.with_cache(|cache| {
            // An error cannot happen with this configuration (see `new`).
            matches!(self.dfa.try_search_fwd(cache, &input), Ok(Some(_)))
        })
    }

    /// Whether some text `prefix + x`, with `x` non-empty, could match. Conservative: `true`
    /// when the DFA cannot tell.
    pub(crate) fn may_match_after(&self, prefix: &str) -> bool {
        self.with_cache(|cache| self.viable_after(cache, prefix).unwrap_or(true))
    }

    /// `None` when the DFA's cache gives up (it does not with this configuration).
    fn viable_after(&self, cache: &mut Cache, prefix: &str) -> Option<bool> {
        let dfa = &self.dfa;
        let input = Input::new(prefix).anchored(Anchored::Yes);
        let mut state: LazyStateID = dfa.start_state_forward(cache, &input).ok()?;
        for &byte in prefix.as_bytes() {
            state = dfa.next_state(cache, state, byte).ok()?;
            // A match ending inside the prefix: the match may end anywhere, so any `x` works.
            if state.is_match() || state.is_quit() {
                return Some(true);
            }
            if state.is_dead() {
                return Some(false);
            }
        }
        // `x` is non-empty: some next byte must keep the search alive.
        for byte in 0..=u8::MAX {
            if !dfa.next_state(cache, state, byte).ok()?.is_dead() {
                return Some(true);
            }
        }
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::Regex;

    fn matches(expr: &str, text: &str) -> bool {
        match Regex::new(expr) {
            Ok(re) => re.is_match(text),
            Err(e) => panic!("{expr:?} failed to compile: {e}"),
        }
    }

    #[test]
    fn translated_shapes() {
        assert!(matches("^[^/]*$", "file.go"));
        assert!(!matches("^[^/]*$", "dir/file.go"));
        assert!(matches("^(.*/)?dir2/[^/]*$", "dir/dir2/file"));
        assert!(matches("^(.*/)?dir2/[^/]*$", "dir2/file"));
        assert!(matches("^(.*/)?(.*/)?[^/]*\\.txt$", "a/b/c.txt"));
        assert!(!matches("^(.*/)?(.*/)?[^/]*\\.txt$", "a/b/c.txt2"));
        assert!(matches("^a[b-d]e$", "ace"));
        assert!(!matches("^a[^b-d]e$", "ace"));
        // `.` stops at a newline, a negated class does not
        assert!(!matches("^(.*/)?x$", "a\nb/x"));
        assert!(matches("^[^/]*$", "a\nb"));
    }

    #[test]
    fn go_re2_corners() {
        // `^` in the middle can never hold; `$` inside `\Q` is literal and leaves the end open
        assert!(!matches("^a^b$", "a^b"));
        assert!(matches("^^ab$", "ab"));
        assert!(matches("^\\Qa$", "a$xyz"));
        assert!(matches("^a\\d$", "a7"));
        assert!(!matches("^a\\d$", "ad"));
        assert!(matches("^[[:alpha:]]$", "q"));
        assert!(!matches("^[[:^alpha:]]$", "q"));
        assert!(matches("^\\x41$", "A"));
        assert!(matches("^\\101$", "A"));
        assert!(matches("^\\.$", "."));
        assert!(matches("^[\\]a]$", "]"));
        assert!(matches("^[x\\-]$", "-"));
        assert!(matches("^a\\b$", "a"));
        // `[*]` after translation: a class of `[`, `^`, `/` repeated, then a literal `]`
        assert!(matches("^[[^/]*]$", "[/^]"));
        assert!(matches("^[a-ζ][^/]*$", "α"));
    }

    #[test]
    fn rejected_like_go() {
        for expr in [
            "^[Local-Only]$",
            "^a**$",
            "*a",
            "(*a)",
            "^[a$",
            "^\\e$",
            "^\\1$",
            "^\\pL$",
            "^[[:nope:]]$",
            "^\\x\\{41\\}$",
            "^(a$",
            "^a)$",
        ] {
            assert!(Regex::new(expr).is_err(), "{expr:?} should not compile");
        }
    }

    #[test]
    fn prefix_viability() {
        let re = Regex::new("^(.*/)?keep$").unwrap();
        assert!(re.may_match_after("dir/"));
        let re = Regex::new("^other/[^/]*$").unwrap();
        assert!(!re.may_match_after("dir/"));
        assert!(re.may_match_after("other/"));
        let re = Regex::new("^dir$").unwrap();
        assert!(!re.may_match_after("dir/"));
    }

    #[test]
    fn no_blowup_on_many_stars() {
        let re = Regex::new(&format!("^{}b$", "[^/]*a".repeat(40))).unwrap();
        assert!(!re.is_match(&"a".repeat(5000)));
    }
}
