//! Shell-style word expansion as BuildKit's `frontend/dockerfile/shell` lexer does it.
//!
//! Supported: `'…'`, `"…"`, the escape token, `$V`, `${V}`, `${V:-w}` `${V-w}` `${V:+w}`
//! `${V+w}` `${V:?msg}` `${V?msg}`, `${V#p}` `${V##p}` `${V%p}` `${V%%p}`, `${V/p/r}`
//! `${V//p/r}`. Positional and special parameters (`$1`, `$@`, `$$`…) are always unset.
//! Patterns use `*`, `?` and `\` escapes; like BuildKit, `[` is literal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::Error;

/// How deeply `${...}` may nest inside one word. Each level costs a few stack frames in the
/// recursive descent, so without a cap a 30 KB line of `${A:-${A:-...}}` overflowed the stack
/// (an abort, not even a panic). BuildKit's lexer has no cap (Go stacks grow); no real
/// Dockerfile nests more than a handful of levels.
pub const MAX_EXPANSION_DEPTH: usize = 64;

/// Longest result of expanding one word, in bytes. A heredoc body (at most
/// [`crate::MAX_HEREDOC_BYTES`]) is expanded as one word, so this is twice that; the cap stops
/// `$A$A$A...` (or `${A//?/$A}`) from multiplying a value's size without end.
pub const MAX_EXPANDED_BYTES: usize = 2 * crate::MAX_HEREDOC_BYTES;

/// Work allowed for the `#`, `%` and `/` pattern operators of one word, counted in pattern
/// tokens times value characters visited. Matching a pattern is linear in the value, but a
/// replacement tries every start position: `${V//*x/y}` on a long value is quadratic. Real
/// patterns on real values use a few thousand steps.
pub const MAX_PATTERN_STEPS: usize = 1 << 24;

/// Bytes that all the words expanded by one [`Lexer`] (and its clones: one Dockerfile) may
/// produce together. Each word is capped by [`MAX_EXPANDED_BYTES`], but a few bytes such as
/// `${B//?/${B//?/${B}}}` grow to megabytes, and a Dockerfile may hold thousands of them: without
/// a total, 6 KB of LABELs took 2 GB. Real Dockerfiles expand to kilobytes.
pub const MAX_TOTAL_EXPANDED_BYTES: usize = 64 << 20;

/// Pattern-matching steps (see [`MAX_PATTERN_STEPS`]) that one Dockerfile may spend in total, so
/// that thousands of expensive words cannot add up to minutes.
pub const MAX_TOTAL_PATTERN_STEPS: usize = 1 << 26;

/// Variable lookup for expansion. `Some("")` (set but empty) differs from `None` (unset).
pub trait Env {
    fn get(&self, name: &str) -> Option<&str>;
}

/// An environment where nothing is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _name: &str) -> Option<&str> {
        None
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

/// Ordered `(name, value)` pairs; a later pair overrides an earlier one, as in BuildKit.
impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

/// The word expander. Plain mode (the default) removes quotes and escapes; the switches give
/// BuildKit's `RawQuotes`, `RawEscapes`, `SkipUnsetEnv` and `SkipProcessQuotes` modes.
///
/// Clones share one budget of output bytes and pattern work ([`MAX_TOTAL_EXPANDED_BYTES`],
/// [`MAX_TOTAL_PATTERN_STEPS`]): make one lexer per Dockerfile and derive the others from it.
#[derive(Debug, Clone)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
    spent: Arc<Spent>,
}

/// What the words of one Dockerfile have used so far.
#[derive(Debug, Default)]
struct Spent {
    bytes: AtomicUsize,
    steps: AtomicUsize,
}

/// Everything one expansion produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, spaces kept.
    pub value: String,
    /// The word split on unquoted white space (including white space produced by an unquoted
    /// variable expansion).
    pub words: Vec<String>,
    /// Variables looked up and found.
    pub matched: BTreeSet<String>,
    /// Variables looked up and not found.
    pub unmatched: BTreeSet<String>,
}

impl Lexer {
    /// A plain lexer using `escape` (`\` or `` ` ``) as the escape token.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
            spent: Arc::default(),
        }
    }

    /// The same lexer (and budget) with another escape token.
    pub fn with_escape(mut self, escape: char) -> Self {
        self.escape = escape;
        self
    }

    /// Keep quote characters in the output (still honouring their meaning).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape tokens in the output.
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset variables as written (`$X`, `${X:-y}`).
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters.
    pub fn skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// The escape token this lexer uses.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expand one word (BuildKit `ProcessWord`): no splitting.
    pub fn process_word<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, Error> {
        self.process(word, env).map(|e| e.value)
    }

    /// Expand and split into words (BuildKit `ProcessWords`).
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, Error> {
        self.process(word, env).map(|e| e.words)
    }

    /// Expand one word and report which variables were found and which were not.
    pub fn process_word_with_matches<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<(String, BTreeSet<String>, BTreeSet<String>), Error> {
        self.process(word, env)
            .map(|e| (e.value, e.matched, e.unmatched))
    }

    /// Expand, returning the value, the split words and the variable bookkeeping at once.
    pub fn process<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<Expansion, Error> {
        let fail = |message: String| Error::Expand {
            word: word.to_string(),
            message: crate::short_message(message),
        };
        let steps_left =
            MAX_TOTAL_PATTERN_STEPS.saturating_sub(self.spent.steps.load(Ordering::Relaxed));
        let steps = steps_left.min(MAX_PATTERN_STEPS);
        let mut sw = ShellWord {
            chars: word.chars().collect(),
            pos: 0,
            env,
            lex: self,
            raw_escapes: self.raw_escapes,
            depth: 0,
            budget: Budget {
                left: steps,
                of_total: steps < MAX_PATTERN_STEPS,
            },
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let result = sw.process_stop_on(None, self.raw_escapes);
        self.spent
            .steps
            .fetch_add(steps - sw.budget.left, Ordering::Relaxed);
        let (value, words) = result.map_err(fail)?;
        let total = self.spent.bytes.fetch_add(value.len(), Ordering::Relaxed) + value.len();
        if total > MAX_TOTAL_EXPANDED_BYTES {
            return Err(fail(format!(
                "the expansions of this Dockerfile produce more than {} MiB in total",
                MAX_TOTAL_EXPANDED_BYTES >> 20
            )));
        }
        Ok(Expansion {
            value,
            words,
            matched: sw.matched,
            unmatched: sw.unmatched,
        })
    }
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

struct ShellWord<'a, E: ?Sized> {
    chars: Vec<char>,
    pos: usize,
    env: &'a E,
    lex: &'a Lexer,
    raw_escapes: bool,
    /// `${` levels open around the current position (see [`MAX_EXPANSION_DEPTH`]).
    depth: usize,
    /// Pattern-matching work left (see [`MAX_PATTERN_STEPS`]).
    budget: Budget,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        self.buf.push(c);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

type Step<T> = Result<T, String>;

impl<E: Env + ?Sized> ShellWord<'_, E> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Step<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Step<(String, Vec<String>)> {
        let mut result = String::new();
        let mut words = Words::default();
        let escape = self.lex.escape;
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, words.finish()));
            }
            if ch == '$' {
                let tmp = self.process_dollar()?;
                check_size(result.len() + tmp.len())?;
                result.push_str(&tmp);
                words.add_string(&tmp);
                continue;
            }
            if !self.lex.skip_process_quotes && (ch == '\'' || ch == '"') {
                let tmp = if ch == '\'' {
                    self.single_quote()?
                } else {
                    self.double_quote()?
                };
                check_size(result.len() + tmp.len())?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
                continue;
            }
            self.pos += 1;
            let mut ch = ch;
            if ch == escape {
                if self.raw_escapes {
                    words.add_raw_char(ch);
                    result.push(ch);
                }
                match self.next() {
                    // A lone trailing escape is dropped.
                    None => break,
                    Some(c) => {
                        ch = c;
                        words.add_raw_char(c);
                    }
                }
            } else {
                words.add_char(ch);
            }
            result.push(ch);
        }
        if let Some(s) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {s}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Step<String> {
        let mut result = String::new();
        if let Some(q) = self.next() {
            if self.lex.raw_quotes {
                result.push(q);
            }
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .to_string(),
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Step<String> {
        let mut result = String::new();
        if let Some(q) = self.next() {
            if self.lex.raw_quotes {
                result.push(q);
            }
        }
        let escape = self.lex.escape;
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .to_string(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    check_size(result.len() + v.len())?;
                    result.push_str(&v);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == escape => {
                                self.pos += 1;
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.get(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Every recursion of the expander goes through here (a `${...}` word, also inside double
    /// quotes), so this is where nesting is counted.
    fn process_dollar(&mut self) -> Step<String> {
        if self.depth >= MAX_EXPANSION_DEPTH {
            return Err(format!(
                "variable expansions nested deeper than {MAX_EXPANSION_DEPTH} levels"
            ));
        }
        self.depth += 1;
        let r = self.process_dollar_inner();
        self.depth -= 1;
        r
    }

    fn process_dollar_inner(&mut self) -> Step<String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".to_string()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".to_string()),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(ch) = self.next() else {
            return Err("syntax error: missing '}'".to_string());
        };
        match ch {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => self.modifier(name, ch),
            '/' => self.replace(name),
            _ => Err(format!("unsupported modifier ({ch}) in substitution")),
        }
    }

    fn modifier(&mut self, name: String, first: char) -> Step<String> {
        let mut chs = String::from(first);
        let null_is_unset = first == ':';
        let op = if null_is_unset {
            match self.next() {
                Some(c) => {
                    chs.push(c);
                    c
                }
                None => return Err("syntax error: missing '}'".to_string()),
            }
        } else {
            first
        };
        // Patterns keep their escapes so that `\*` stays a literal star for the matcher.
        let raw = op == '#' || op == '%';
        if null_is_unset && raw {
            return Err(format!("unsupported modifier ({chs}) in substitution"));
        }
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) if self.peek().is_none() => {
                let _ = e;
                return Err("syntax error: missing '}'".to_string());
            }
            Err(e) => return Err(e),
        };
        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let unset_or_null = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            '-' => Ok(if unset_or_null {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if unset_or_null { String::new() } else { word }),
            '?' => match value {
                None => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be unset"
                    } else {
                        &word
                    }
                )),
                Some(v) if null_is_unset && v.is_empty() => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be empty"
                    } else {
                        &word
                    }
                )),
                Some(v) => Ok(v),
            },
            '#' | '%' => {
                let (greedy, pattern) = match word.strip_prefix(op) {
                    Some(p) => (true, p),
                    None => (false, word.as_str()),
                };
                let toks = compile_pattern(pattern).map_err(|e| {
                    format!(
                        "invalid pattern ({}) in substitution: {e}",
                        crate::shorten(pattern)
                    )
                })?;
                let value: Vec<char> = value.unwrap_or_default().chars().collect();
                if op == '#' {
                    trim_prefix(&toks, &value, greedy, &mut self.budget)
                } else {
                    trim_suffix(&toks, &value, greedy, &mut self.budget)
                }
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn replace(&mut self, name: String) -> Step<String> {
        let all = self.peek() == Some('/');
        if all {
            self.pos += 1;
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.peek().is_none() => {
                return Err("syntax error: missing '/' in ${}".to_string())
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.peek().is_none() => return Err("syntax error: missing '}'".to_string()),
            Err(e) => return Err(e),
        };
        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let toks = compile_pattern(&pattern).map_err(|e| {
            format!(
                "invalid pattern ({}) in substitution: {e}",
                crate::shorten(&pattern)
            )
        })?;
        let value: Vec<char> = value.unwrap_or_default().chars().collect();
        replace_pattern(&toks, &value, &replacement, all, &mut self.budget)
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !ch.is_numeric() && ch != '_' {
                break;
            }
            self.pos += 1;
            name.push(ch);
        }
        name
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

/// Shell pattern → tokens. `\` before `}` or `/` only protects it from `${}` parsing and is
/// dropped; `\*`, `\?`, `\\` are literals; any other escape is an error, as in BuildKit.
fn compile_pattern(pattern: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::with_capacity(chars.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::Any),
            '\\' => match chars.get(i) {
                Some('}' | '/') => {}
                Some(&n @ ('*' | '?' | '\\')) => {
                    i += 1;
                    toks.push(Tok::Lit(n));
                }
                Some(&n) => return Err(format!("invalid escape '\\{n}'")),
                None => return Err("invalid escape '\\' at end of pattern".to_string()),
            },
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(toks)
}

/// Fails once an expanded word would pass [`MAX_EXPANDED_BYTES`].
fn check_size(len: usize) -> Step<()> {
    if len > MAX_EXPANDED_BYTES {
        return Err(format!(
            "expansion result is larger than {} MiB",
            MAX_EXPANDED_BYTES >> 20
        ));
    }
    Ok(())
}

/// Pattern-matching work left for one word.
struct Budget {
    left: usize,
    /// Whether what is left is the Dockerfile's remaining total rather than the word's own.
    of_total: bool,
}

impl Budget {
    fn spend(&mut self, steps: usize) -> Step<()> {
        match self.left.checked_sub(steps) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None if self.of_total => Err(format!(
                "pattern substitutions of this Dockerfile need more than \
                 {MAX_TOTAL_PATTERN_STEPS} matching steps in total"
            )),
            None => Err(format!(
                "pattern substitution needs more than {MAX_PATTERN_STEPS} matching steps: use a \
                 shorter pattern or value"
            )),
        }
    }
}

/// `ends[k]` tells whether the pattern matches `s[..k]` exactly. A set-of-states simulation
/// (O(len·pattern)), so that big values cannot make trimming quadratic in the pattern.
fn match_ends(toks: &[Tok], s: &[char], budget: &mut Budget) -> Step<Vec<bool>> {
    // Indexing below stays in bounds: state vectors have `m + 1` slots and `i < m`.
    let m = toks.len();
    let close = |states: &mut Vec<bool>| {
        for i in 0..m {
            if states[i] && toks[i] == Tok::Star {
                states[i + 1] = true;
            }
        }
    };
    let mut states = vec![false; m + 1];
    states[0] = true;
    close(&mut states);
    let mut ends = Vec::with_capacity(s.len() + 1);
    ends.push(states[m]);
    let mut next = vec![false; m + 1];
    for &c in s {
        budget.spend(m + 1)?;
        next.iter_mut().for_each(|n| *n = false);
        for (i, tok) in toks.iter().enumerate() {
            if !states[i] {
                continue;
            }
            match tok {
                Tok::Star => next[i] = true,
                Tok::Any => next[i + 1] = true,
                Tok::Lit(x) if *x == c => next[i + 1] = true,
                Tok::Lit(_) => {}
            }
        }
        close(&mut next);
        std::mem::swap(&mut states, &mut next);
        ends.push(states[m]);
        if !states.iter().any(|s| *s) {
            break;
        }
    }
    Ok(ends)
}

fn pick(ends: &[bool], longest: bool) -> Option<usize> {
    if longest {
        ends.iter().rposition(|e| *e)
    } else {
        ends.iter().position(|e| *e)
    }
}

fn trim_prefix(toks: &[Tok], value: &[char], greedy: bool, budget: &mut Budget) -> Step<String> {
    let cut = pick(&match_ends(toks, value, budget)?, greedy).unwrap_or(0);
    Ok(value.get(cut..).unwrap_or_default().iter().collect())
}

/// Suffix matching is prefix matching of the reversed pattern on the reversed value.
fn trim_suffix(toks: &[Tok], value: &[char], greedy: bool, budget: &mut Budget) -> Step<String> {
    let rtoks: Vec<Tok> = toks.iter().rev().copied().collect();
    let rvalue: Vec<char> = value.iter().rev().copied().collect();
    let cut = pick(&match_ends(&rtoks, &rvalue, budget)?, greedy).unwrap_or(0);
    Ok(value
        .get(..value.len().saturating_sub(cut))
        .unwrap_or_default()
        .iter()
        .collect())
}

/// Leftmost match, longest at that position (BuildKit compiles the pattern greedily).
fn longest_match_at(
    toks: &[Tok],
    value: &[char],
    start: usize,
    budget: &mut Budget,
) -> Step<Option<usize>> {
    let Some(rest) = value.get(start..) else {
        return Ok(None);
    };
    Ok(pick(&match_ends(toks, rest, budget)?, true).map(|len| start + len))
}

fn replace_pattern(
    toks: &[Tok],
    value: &[char],
    replacement: &str,
    all: bool,
    budget: &mut Budget,
) -> Step<String> {
    let mut out = String::new();
    let mut i = 0;
    let mut prev_end: Option<usize> = None;
    let mut replaced = false;
    while i <= value.len() {
        let m = if replaced && !all {
            None
        } else {
            longest_match_at(toks, value, i, budget)?
        };
        match m {
            // Go's regexp ignores an empty match right after the previous match.
            Some(end) if !(end == i && prev_end == Some(i)) => {
                check_size(out.len() + replacement.len())?;
                out.push_str(replacement);
                replaced = true;
                prev_end = Some(end);
                if end > i {
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        if let Some(c) = value.get(i) {
            out.push(*c);
        }
        i += 1;
    }
    check_size(out.len())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(&'static str, &'static str)> {
        vec![("PWD", "/home"), ("NULL", ""), ("FOO", "xxyy")]
    }

    #[test]
    fn basic_forms() {
        let l = Lexer::new('\\');
        let e = env();
        assert_eq!(l.process_word("he${PWD:-x}", &e).unwrap(), "he/home");
        assert_eq!(l.process_word("${NULL-x}", &e).unwrap(), "");
        assert_eq!(l.process_word("${NULL:-x}", &e).unwrap(), "x");
        assert_eq!(l.process_word("${FOO##*x}", &e).unwrap(), "yy");
        assert_eq!(l.process_word("${FOO%y*}", &e).unwrap(), "xxy");
        assert_eq!(l.process_word("${FOO%%y*}", &e).unwrap(), "xx");
        assert_eq!(l.process_word("${FOO/x/z}", &e).unwrap(), "zxyy");
        assert_eq!(l.process_word("${FOO//x/z}", &e).unwrap(), "zzyy");
        assert!(l.process_word("${FOO:=x}", &e).is_err());
        assert!(l.process_word("${FOO#\\a}", &e).is_err());
    }

    #[test]
    fn patterns() {
        let toks = |p: &str| compile_pattern(p).unwrap();
        let b = &mut Budget {
            left: MAX_PATTERN_STEPS,
            of_total: false,
        };
        let v: Vec<char> = "a/b/c.tar.gz".chars().collect();
        assert_eq!(
            trim_prefix(&toks("*/"), &v, false, b).unwrap(),
            "b/c.tar.gz"
        );
        assert_eq!(trim_prefix(&toks("*/"), &v, true, b).unwrap(), "c.tar.gz");
        assert_eq!(trim_suffix(&toks(".*"), &v, false, b).unwrap(), "a/b/c.tar");
        assert_eq!(trim_suffix(&toks(".*"), &v, true, b).unwrap(), "a/b/c");
        assert_eq!(
            trim_suffix(&toks("?"), &v, false, b).unwrap(),
            "a/b/c.tar.g"
        );
        assert_eq!(
            replace_pattern(&toks("/"), &v, "-", true, b).unwrap(),
            "a-b-c.tar.gz"
        );
        assert_eq!(
            replace_pattern(&toks("[.]"), &v, "", true, b).unwrap(),
            v.iter().collect::<String>()
        );
        let big: Vec<char> = "x".repeat(20_000).chars().collect();
        assert_eq!(
            trim_prefix(&toks("*x*x*y"), &big, true, b).unwrap().len(),
            20_000
        );
    }

    #[test]
    fn quadratic_replacement_and_growth_are_capped() {
        let l = Lexer::new('\\');
        // Every start position of a 100 000-character value tries a pattern that never fails
        // early: about 10^10 steps without the budget.
        let long = vec![("V", "x".repeat(100_000))];
        let err = l.process_word("${V//*y/z}", &long).unwrap_err();
        assert!(err.message().contains("matching steps"), "{err}");
        // Ordinary replacements on the same value are well inside it.
        assert_eq!(
            l.process_word("${V//x/y}", &long).unwrap(),
            "y".repeat(100_000)
        );
        // Doubling a value word by word stops at the size cap, not at memory exhaustion.
        let big = vec![("A", "a".repeat(1 << 20))];
        let word = "$A".repeat(64);
        let err = l.process_word(&word, &big).unwrap_err();
        assert!(err.message().contains("larger than"), "{err}");
        let err = l.process_word(&format!("\"{word}\""), &big).unwrap_err();
        assert!(err.message().contains("larger than"), "{err}");
        let err = l.process_word("${A//?/$A}", &big).unwrap_err();
        assert!(err.message().contains("larger than"), "{err}");
    }

    #[test]
    fn one_dockerfile_shares_one_budget() {
        // 9^7 ≈ 4.8 MB from 40 bytes: under the per-word cap, so only a total stops a file of
        // such words (6 KB of them took 2 GB and 40 s before).
        let mut word = "${B}".to_owned();
        for _ in 0..6 {
            word = format!("${{B//?/{word}}}");
        }
        let env = vec![("B", "abcdefghi")];
        let l = Lexer::new('\\');
        let derived = l.clone().raw_quotes(true).with_escape('`');
        let mut made = 0;
        let err = loop {
            // Clones and derived lexers draw on the same budget.
            let lexer = if made % 2 == 0 { &l } else { &derived };
            match lexer.process_word(&word, &env) {
                Ok(v) => made += v.len(),
                Err(e) => break e,
            }
            assert!(made <= MAX_TOTAL_EXPANDED_BYTES, "no total budget");
        };
        assert!(err.message().contains("64 MiB in total"), "{err}");
        assert!(made > MAX_TOTAL_EXPANDED_BYTES / 2, "{made}");
        // A fresh lexer (another Dockerfile) starts with a full budget.
        assert!(Lexer::new('\\').process_word(&word, &env).is_ok());

        // Pattern work adds up too: each word below stays under the per-word budget.
        let long = vec![("V", "x".repeat(1_000))];
        let l = Lexer::new('\\');
        let err = (0..100_000)
            .find_map(|_| l.process_word("${V//*y/z}", &long).err())
            .expect("the total pattern budget ends it");
        assert!(err.message().contains("in total"), "{err}");
    }

    #[test]
    fn fuzz_finding_nested_replacements_multiply_within_the_caps() {
        // `cargo xtask fuzz shell_expand`: nested `${B//…/…}` turned 122 bytes into 7704. Not a
        // bug in itself (replacements multiply), but it showed that only a Dockerfile-wide
        // total bounds such growth: see `one_dockerfile_shares_one_budget`.
        let word = "DL/  ${B///////하/  ${B///////하세Ɛ<<<<<<<O-DL\u{1}\u{0}\u{0}A{BPPF/AR////////하세세Ɛ<\\}^$.\\*\\?|\\{FO]\\[{})^$.\\*\\?|\\]{\\}^$.d\\/}";
        let env = vec![
            ("A", "a"),
            ("B", "two words"),
            ("EMPTY", ""),
            ("P", "/usr/bin"),
        ];
        let out = Lexer::new('\\')
            .raw_escapes(true)
            .process_word(word, &env)
            .expect("expands");
        assert!(out.len() > 10 * word.len() && out.len() <= MAX_EXPANDED_BYTES);
    }

    #[test]
    fn raw_modes() {
        let e = env();
        let raw = Lexer::new('\\').raw_quotes(true);
        assert_eq!(
            raw.process_word("'a b' \"$PWD\"", &e).unwrap(),
            "'a b' \"/home\""
        );
        let skip = Lexer::new('\\').skip_unset_env(true);
        assert_eq!(
            skip.process_word("$X ${Y} ${Z:-a}", &e).unwrap(),
            "$X ${Y} ${Z:-a}"
        );
        let words = Lexer::new('`').process_words("a` b c", &NoEnv).unwrap();
        assert_eq!(words, vec!["a b", "c"]);
    }

    /// `${A:-${A:-...x...}}`, `depth` levels deep.
    fn nested(depth: usize) -> String {
        format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let l = Lexer::new('\\');
        // Used to recurse once per level until the stack overflowed (an abort, not a panic).
        for lexer in [
            l.clone(),
            l.clone().skip_unset_env(true),
            l.clone().raw_quotes(true).raw_escapes(true),
        ] {
            let err = lexer.process_word(&nested(5_000), &NoEnv).unwrap_err();
            assert!(
                err.message()
                    .contains(&format!("nested deeper than {MAX_EXPANSION_DEPTH}")),
                "{err}"
            );
            // The message names the word, shortened: not 30 KB of it.
            assert!(err.to_string().len() < 400, "{}", err.to_string().len());
        }
        let quoted = format!("{}x{}", "\"${A:-".repeat(5_000), "}\"".repeat(5_000));
        assert!(l.process_word(&quoted, &NoEnv).is_err());
        // The limit itself is fine, and expands.
        assert_eq!(
            l.process_word(&nested(MAX_EXPANSION_DEPTH), &NoEnv)
                .unwrap(),
            "x"
        );
    }

    #[test]
    fn the_depth_limit_fits_a_small_stack() {
        // A plugin runs on a runtime's blocking thread; a debug build must still expand the
        // deepest allowed word on a 512 KiB stack.
        let word = nested(MAX_EXPANSION_DEPTH);
        let out = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || Lexer::new('\\').process_word(&word, &NoEnv))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(out.unwrap(), "x");
    }

    #[test]
    fn error_names_the_word() {
        let err = Lexer::new('\\')
            .process_word("${X?nope}", &NoEnv)
            .unwrap_err();
        assert_eq!(err.to_string(), "failed to process \"${X?nope}\": X: nope");
    }
}
