//! The low-level Dockerfile parser (BuildKit `frontend/dockerfile/parser`).

use crate::shell::{Lexer, NoEnv};
use crate::Error;

/// A parser directive from the top of the file (`# syntax=…`, `# escape=…`, `# check=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased key.
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A non-fatal finding, e.g. an empty line inside a continuation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub start_line: usize,
    pub end_line: usize,
    pub message: String,
    pub detail: String,
}

/// A heredoc attached to a RUN, COPY or ADD instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body lines, each with its line ending, exactly as in the file (for `<<-` the leading
    /// tabs are still there: see [`Heredoc::body`]).
    pub content: String,
    /// False when (part of) the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines and from the terminator.
    pub chomp: bool,
    /// The `N` of `N<<EOF` (0 when absent).
    pub file_descriptor: u64,
}

impl Heredoc {
    /// The body as the instruction should see it: tab-stripped for `<<-`.
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The keyword as written (`Run`, `COPY`…).
    pub keyword: String,
    /// The keyword lower-cased (`run`, `copy`…).
    pub command: String,
    /// Leading `--name[=value]` tokens, quotes removed, as BuildKit keeps them.
    pub flags: Vec<String>,
    /// The arguments as split for this instruction (BuildKit's `Next` list).
    pub args: Vec<String>,
    /// For ONBUILD: the nested instruction.
    pub nested: Option<Box<Node>>,
    /// The arguments were a JSON array of strings.
    pub json: bool,
    /// 1-based, inclusive; heredoc bodies and lines skipped in continuations are counted.
    pub start_line: usize,
    pub end_line: usize,
    /// The logical line after joining continuations (BuildKit's `Original`).
    pub original: String,
    /// The verbatim source text of lines `start_line..=end_line`.
    pub source: String,
    pub heredocs: Vec<Heredoc>,
    /// The comment block directly above the instruction (blank lines allowed, a bare `#` ends
    /// it), parser directives excluded: each line without its first byte and surrounding
    /// spaces, as BuildKit's `PrevComment`.
    pub comments: Vec<String>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub directives: Vec<Directive>,
    /// The escape token in force (`\` unless `# escape=` said otherwise).
    pub escape: char,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

impl Parsed {
    /// A directive by (case-insensitive) name.
    pub fn directive(&self, name: &str) -> Option<&Directive> {
        self.directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
    }

    /// The `# syntax=` value, if any.
    pub fn syntax(&self) -> Option<&str> {
        self.directive("syntax").map(|d| d.value.as_str())
    }

    /// First line of the first instruction and last line of the last one.
    pub fn span(&self) -> Option<(usize, usize)> {
        Some((self.nodes.first()?.start_line, self.nodes.last()?.end_line))
    }
}

const KNOWN_DIRECTIVES: [&str; 3] = ["syntax", "escape", "check"];

/// Largest Dockerfile accepted, in bytes. Real ones are kilobytes; even with heredoc scripts
/// inlined they stay far below this, while the AST of a much larger file would cost memory in
/// proportion (per node: the logical line, its source, the split arguments).
pub const MAX_DOCKERFILE_BYTES: usize = 8 << 20;

/// Longest logical line (continuations joined), in bytes. Every word of it may be expanded,
/// split and quoted in messages; 1 MiB is far beyond any hand-written `RUN` chain.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Largest heredoc body, in bytes. A heredoc becomes a file (COPY) or a script (RUN) held in
/// memory and in the build graph; larger files belong in the build context.
pub const MAX_HEREDOC_BYTES: usize = 4 << 20;

/// Most instructions in one Dockerfile. Each instruction adds a step to a chain of build-graph
/// states, and kiln-graph drops (and walks) such chains recursively: about 9 000 chained COPYs
/// overflowed a 2 MiB thread stack in a debug build. Real Dockerfiles have tens to hundreds.
pub const MAX_INSTRUCTIONS: usize = 4096;

/// How many `ONBUILD` keywords may wrap one instruction. BuildKit refuses `ONBUILD ONBUILD`
/// when it reads the instruction, but its parser (like ours) recurses once per keyword first.
pub const MAX_ONBUILD_NESTING: usize = 8;

struct Directives {
    escape: char,
    done: bool,
    found: Vec<Directive>,
}

impl Directives {
    /// Records `line` if it is a parser directive; tells whether it was one.
    fn possible_directive(&mut self, line: &str, line_no: usize) -> Result<bool, String> {
        if self.done {
            return Ok(false);
        }
        let Some((key, value)) = match_directive(line) else {
            self.done = true;
            return Ok(false);
        };
        let key = key.to_ascii_lowercase();
        if !KNOWN_DIRECTIVES.contains(&key.as_str()) {
            self.done = true;
            return Ok(false);
        }
        if self.found.iter().any(|d| d.name == key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        if key == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(format!(
                        "invalid escape token '{value}' does not match ` or \\"
                    ))
                }
            };
        }
        self.found.push(Directive {
            name: key,
            value: value.to_string(),
            line: line_no,
        });
        Ok(true)
    }
}

/// RE2's `\s` (no vertical tab).
fn is_re_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

/// BuildKit's `[\t\v\f\r ]+` token separator.
fn is_token_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn match_directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start_matches(is_re_space);
    let key_end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    let key = rest.get(..key_end)?;
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let after_eq = rest
        .get(key_end..)?
        .trim_start_matches(is_re_space)
        .strip_prefix('=')?;
    let value = after_eq.trim_matches(is_re_space);
    if !value.is_empty() {
        return Some((key, value));
    }
    // `.+?` needs one character: with only white space after `=`, the regex keeps the last one.
    let last = after_eq.char_indices().last()?.0;
    Some((key, after_eq.get(last..)?))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(raw: &str) -> bool {
    trim_newline(raw).trim_start().starts_with('#')
}

/// Strips a trailing escape token (plus spaces/tabs) unless it is itself escaped.
/// Returns the line and whether it was the end of the logical line.
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape) {
        match before.chars().last() {
            None => return (String::new(), false),
            Some(c) if c != escape => return (before.to_string(), false),
            Some(_) => {}
        }
    }
    (line.to_string(), true)
}

/// Physical lines, each keeping its `\n`.
fn split_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Parses Dockerfile text. Fails on the first error, like BuildKit; non-fatal findings are in
/// [`Parsed::warnings`].
pub fn parse(text: &str) -> Result<Parsed, Error> {
    parse_with_escape(text, '\\')
}

/// [`parse`] with `escape` as the escape token until a `# escape=` directive says otherwise:
/// a fragment inlined into a Dockerfile (kiln's `INCLUDE`) is read as that Dockerfile is.
pub fn parse_with_escape(text: &str, escape: char) -> Result<Parsed, Error> {
    if text.len() > MAX_DOCKERFILE_BYTES {
        return Err(Error::TooLarge {
            message: format!(
                "the Dockerfile is {} bytes, more than the limit of {} MiB",
                text.len(),
                MAX_DOCKERFILE_BYTES >> 20
            ),
        });
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    let line_text = |n: usize| {
        lines
            .get(n.wrapping_sub(1))
            .map(|l| trim_newline(l).to_string())
            .unwrap_or_default()
    };
    let err = |line: usize, message: String| Error::Parse {
        line,
        text: line_text(line),
        message: crate::short_message(message),
    };

    let mut d = Directives {
        escape,
        done: false,
        found: Vec::new(),
    };
    let mut nodes: Vec<Node> = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut idx = 0;
    let mut current_line = 0;

    while let Some(&raw) = lines.get(idx) {
        idx += 1;
        if is_comment(raw) {
            // As BuildKit: the line's first byte is dropped, not its first `#`, so an indented
            // comment keeps its `#` (and never names a stage); a bare `#` ends the block, so
            // the comments above it do not describe the next instruction.
            let rest = String::from_utf8_lossy(raw.as_bytes().get(1..).unwrap_or_default());
            match rest.trim() {
                "" => comments.clear(),
                c => comments.push(c.to_string()),
            }
        }
        let token = trim_newline(raw).trim_start();
        let directive = d
            .possible_directive(token, current_line + 1)
            .map_err(|m| err(current_line + 1, m))?;
        if directive {
            // A parser directive is not part of any instruction's comments.
            comments.pop();
        }
        let token = if token.starts_with('#') { "" } else { token };
        current_line += 1;
        let start_line = current_line;

        let (mut line, mut end_of_line) = trim_continuation(token, d.escape);
        if end_of_line && line.is_empty() {
            continue;
        }
        let too_long = |line: &str| {
            (line.len() > MAX_LINE_BYTES).then(|| {
                err(
                    start_line,
                    format!(
                        "instruction is longer than {} MiB (continuation lines joined)",
                        MAX_LINE_BYTES >> 20
                    ),
                )
            })
        };
        if let Some(e) = too_long(&line) {
            return Err(e);
        }

        let mut empty_continuation = false;
        while !end_of_line {
            let Some(&raw) = lines.get(idx) else { break };
            idx += 1;
            let token = trim_newline(raw);
            d.possible_directive(token, current_line + 1)
                .map_err(|m| err(current_line + 1, m))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if token.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (part, eol) = trim_continuation(token, d.escape);
            line.push_str(&part);
            end_of_line = eol;
            if let Some(e) = too_long(&line) {
                return Err(e);
            }
        }

        if empty_continuation {
            warnings.push(Warning {
                start_line,
                end_line: current_line,
                message: crate::short_message(format!("Empty continuation line found in: {line}")),
                detail: "Empty continuation lines will become errors in a future release"
                    .to_string(),
            });
        }

        if nodes.len() == MAX_INSTRUCTIONS {
            return Err(err(
                start_line,
                format!("more than {MAX_INSTRUCTIONS} instructions in one Dockerfile"),
            ));
        }
        let mut node = node_from_line(&line, d.escape, 0).map_err(|m| err(start_line, m))?;

        if can_contain_heredoc(&node) && line.contains("<<") {
            for mut heredoc in heredocs_from_line(&line).map_err(|m| err(start_line, m))? {
                let mut terminated = false;
                while let Some(&raw) = lines.get(idx) {
                    idx += 1;
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                    if heredoc.content.len() > MAX_HEREDOC_BYTES {
                        return Err(err(
                            start_line,
                            format!(
                                "heredoc <<{} is larger than {} MiB: put the file in the build \
                                 context and COPY it instead",
                                crate::shorten(&heredoc.name),
                                MAX_HEREDOC_BYTES >> 20
                            ),
                        ));
                    }
                }
                if !terminated {
                    return Err(err(start_line, "unterminated heredoc".to_string()));
                }
                node.heredocs.push(heredoc);
            }
        }

        node.start_line = start_line;
        node.end_line = current_line;
        node.source = lines
            .get(start_line - 1..current_line)
            .map(|ls| ls.concat())
            .unwrap_or_default();
        node.comments = std::mem::take(&mut comments);
        if let Some(nested) = node.nested.as_deref_mut() {
            nested.start_line = start_line;
            nested.end_line = current_line;
        }
        nodes.push(node);
    }

    if nodes.is_empty() {
        // Line 1 even for an empty file: a location is never line 0.
        return Err(err(
            current_line.max(1),
            "file with no instructions".to_string(),
        ));
    }
    Ok(Parsed {
        directives: d.found,
        escape: d.escape,
        nodes,
        warnings,
    })
}

fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.command[..], node.nested.as_deref()) {
        ("onbuild", Some(n)) => n,
        _ => node,
    };
    matches!(&target.command[..], "run" | "copy" | "add") && !target.json
}

fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let lexer = Lexer::new('\\')
        .raw_quotes(true)
        .raw_escapes(true)
        .skip_unset_env(true);
    // BuildKit ignores lexing errors here: such a line simply has no heredocs.
    let words = lexer.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Recognises one `[N]<<[-]WORD` token (BuildKit `ParseHeredoc`).
pub(crate) fn parse_heredoc(src: &str) -> Result<Option<Heredoc>, String> {
    let digits_end = src.find(|c: char| !c.is_ascii_digit()).unwrap_or(src.len());
    let (digits, rest) = src.split_at(digits_end);
    let Some(rest) = rest.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return Ok(None);
    }
    let file_descriptor = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().unwrap_or(u64::MAX)
    };

    let lexer = Lexer::new('\\').skip_unset_env(true);
    let words = lexer
        .process_words(rest, &NoEnv)
        .map_err(|e| e.to_string())?;
    let [word] = words.as_slice() else {
        return Ok(None);
    };
    let raw_words = lexer
        .raw_quotes(true)
        .process_words(rest, &NoEnv)
        .map_err(|e| e.to_string())?;
    let [raw_word] = raw_words.as_slice() else {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    };
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        name: word.clone(),
        content: String::new(),
        expand: quotes(word) == quotes(raw_word),
        chomp,
        file_descriptor,
    }))
}

/// `onbuild_depth` counts the `ONBUILD` keywords already seen on this line.
fn node_from_line(line: &str, escape: char, onbuild_depth: usize) -> Result<Node, String> {
    let trimmed = line.trim();
    let (keyword, rest) = match trimmed.find(is_token_space) {
        Some(i) => (
            trimmed.get(..i).unwrap_or(""),
            Some(
                trimmed
                    .get(i..)
                    .unwrap_or("")
                    .trim_start_matches(is_token_space),
            ),
        ),
        None => (trimmed, None),
    };
    let (args_text, flags) = match rest {
        Some(r) => extract_builder_flags(r),
        None => ("", Vec::new()),
    };
    let args_text = args_text.trim();
    let command = keyword.to_lowercase();

    let mut node = Node {
        keyword: keyword.to_string(),
        command: command.clone(),
        flags,
        original: line.to_string(),
        ..Node::default()
    };
    match &command[..] {
        "add" | "copy" | "volume" => {
            (node.args, node.json) = maybe_json_to_list(args_text)?;
        }
        "cmd" | "entrypoint" | "run" | "shell" => {
            (node.args, node.json) = maybe_json(args_text)?;
        }
        "arg" => node.args = parse_words(args_text, escape),
        "env" => node.args = parse_name_val(args_text, "ENV", escape)?,
        "label" => node.args = parse_name_val(args_text, "LABEL", escape)?,
        "expose" | "from" => node.args = whitespace_delimited(args_text),
        "healthcheck" => {
            let sep = args_text
                .find(char::is_whitespace)
                .unwrap_or(args_text.len());
            if sep > 0 {
                let (kind, cmd) = args_text.split_at(sep);
                let (cmd_args, json) = maybe_json(cmd.trim_start())?;
                node.args = std::iter::once(kind.to_string()).chain(cmd_args).collect();
                node.json = json;
            }
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !args_text.is_empty() {
                node.args = vec![args_text.to_string()];
            }
        }
        "onbuild" => {
            if onbuild_depth >= MAX_ONBUILD_NESTING {
                return Err(format!(
                    "ONBUILD nested more than {MAX_ONBUILD_NESTING} times in one instruction"
                ));
            }
            if !args_text.is_empty() {
                node.nested = Some(Box::new(node_from_line(
                    args_text,
                    escape,
                    onbuild_depth + 1,
                )?));
            }
        }
        // Unknown instructions are kept with one empty argument, as BuildKit's parseIgnore.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// Moves leading `--flag[=value]` words out of the arguments. Quotes and `\` inside a flag word
/// are processed; a bare `--` ends the flags and is dropped.
fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut it = line.char_indices().peekable();
    while let Some((pos, ch)) = it.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            let next_is_dash = it.peek().map(|(_, c)| *c) == Some('-');
            if ch != '-' || !next_is_dash {
                return (line.get(pos..).unwrap_or(""), words);
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line.get(pos..).unwrap_or(""), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                continue;
            }
            if ch == '\\' {
                match it.next() {
                    Some((_, c)) => word.push(c),
                    None => continue,
                }
                continue;
            }
            word.push(ch);
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            continue;
        }
        if ch == '\\' {
            match it.next() {
                Some((_, c)) => word.push(c),
                None => phase = Phase::Word,
            }
            continue;
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    ("", words)
}

enum JsonError {
    NotJson,
    NotStrings,
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Like Go's `json.Decoder.Decode`: the first JSON value counts, anything after it is ignored.
fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    match stream.next() {
        Some(Ok(serde_json::Value::Array(items))) => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(JsonError::NotStrings),
            })
            .collect(),
        _ => Err(JsonError::NotJson),
    }
}

fn maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Ok(v) => Ok((v, true)),
        Err(JsonError::NotStrings) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok((vec![rest.to_string()], false)),
    }
}

fn maybe_json_to_list(rest: &str) -> Result<(Vec<String>, bool), String> {
    match parse_json(rest) {
        Ok(v) => Ok((v, true)),
        Err(JsonError::NotStrings) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok((whitespace_delimited(rest), false)),
    }
}

fn whitespace_delimited(rest: &str) -> Vec<String> {
    rest.split(is_token_space)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits on white space, keeping quotes and escapes (they are removed later, by the lexer).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut it = rest.chars().peekable();
    while let Some(mut ch) = it.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                // An escape token at the very end is dropped.
                let Some(next) = it.next() else { continue };
                word.push(ch);
                ch = next;
            }
            word.push(ch);
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            let Some(next) = it.next() else {
                phase = Phase::Word;
                continue;
            };
            word.push(ch);
            ch = next;
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV/LABEL arguments as `name value sep` triples.
fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Vec<String>, String> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        // Legacy `KEY name value...`: the value is the whole rest of the line.
        let Some(i) = rest.find(is_token_space) else {
            return Err(format!("{key} must have two arguments"));
        };
        let name = rest.get(..i).unwrap_or("");
        let value = rest
            .get(i..)
            .unwrap_or("")
            .trim_start_matches(is_token_space);
        return Ok(vec![name.to_string(), value.to_string(), String::new()]);
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for word in &words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                crate::go_quote(word)
            ));
        };
        out.extend([name.to_string(), value.to_string(), "=".to_string()]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heredocs_are_read() {
        let p = parse("FROM a\nRUN <<EOF 3<<-'END'\nhello\nEOF\n\tbye\n\tEND\nRUN x\n").unwrap();
        let run = &p.nodes[1];
        assert_eq!((run.start_line, run.end_line), (2, 6));
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].name, "EOF");
        assert_eq!(run.heredocs[0].content, "hello\n");
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[1].name, "END");
        assert_eq!(run.heredocs[1].file_descriptor, 3);
        assert!(run.heredocs[1].chomp && !run.heredocs[1].expand);
        assert_eq!(run.heredocs[1].body(), "bye\n");
        assert_eq!(p.nodes[2].start_line, 7);
    }

    #[test]
    fn quoted_heredoc_and_copy() {
        let p = parse("COPY <<\"A\" /dst\n$x\nA\n").unwrap();
        let h = &p.nodes[0].heredocs[0];
        assert_eq!(
            (h.name.as_str(), h.expand, h.content.as_str()),
            ("A", false, "$x\n")
        );
        assert_eq!(p.nodes[0].args, vec!["<<\"A\"", "/dst"]);
    }

    #[test]
    fn heredoc_not_in_json_or_other_instructions() {
        let p = parse("RUN [\"<<EOF\"]\nCMD <<EOF\n").unwrap();
        assert!(p.nodes.iter().all(|n| n.heredocs.is_empty()));
        assert_eq!(p.nodes.len(), 2);
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let e = parse("FROM a\nRUN <<EOF\nbody\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("unterminated heredoc"), "{e}");
        assert!(e.to_string().contains("RUN <<EOF"), "{e}");
    }

    #[test]
    fn directives() {
        let p =
            parse("# Syntax = docker/dockerfile:1\n#CHECK=skip=all\n# escape=`\nFROM a `\n  b\n")
                .unwrap();
        assert_eq!(p.syntax(), Some("docker/dockerfile:1"));
        assert_eq!(p.directive("check").map(|d| d.line), Some(2));
        assert_eq!(p.escape, '`');
        assert_eq!(p.nodes[0].args, vec!["a", "b"]);
        let e = parse("# escape=x\nFROM a\n").unwrap_err();
        assert!(e.message().contains("invalid escape token"));
        let e = parse("# syntax=a\n# syntax=b\nFROM a\n").unwrap_err();
        assert!(e.message().contains("only one syntax parser directive"));
        let p = parse("# foo=bar\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(p.escape, '\\');
    }

    #[test]
    fn empty_continuation_warns() {
        let p = parse("RUN a \\\n\n  b\n").unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert_eq!(p.nodes[0].args, vec!["a   b"]);
        assert_eq!((p.nodes[0].start_line, p.nodes[0].end_line), (1, 3));
        assert_eq!(p.nodes[0].source, "RUN a \\\n\n  b\n");
    }

    #[test]
    fn size_limits_give_located_errors() {
        // A logical line over the limit, built from continuation lines of 64 KiB each.
        let piece = format!("{} \\\n", "a".repeat(64 << 10));
        let text = format!("FROM a\nRUN {}b\n", piece.repeat(17));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");
        assert!(e.message().contains("longer than 1 MiB"), "{e}");
        // The offending line is quoted, shortened.
        assert!(e.to_string().contains("(in `RUN aaaa"), "{e}");
        assert!(e.to_string().len() < 400);

        let text = format!("FROM a\nLABEL x={}\n", "y".repeat(MAX_LINE_BYTES));
        assert_eq!(parse(&text).unwrap_err().line(), Some(2));

        let body = format!("{}\n", "z".repeat(1023)).repeat((MAX_HEREDOC_BYTES >> 10) + 1);
        let text = format!("FROM a\n\nCOPY <<EOF /f\n{body}EOF\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(
            e.message().contains("heredoc <<EOF is larger than 4 MiB"),
            "{e}"
        );

        let text = format!(
            "FROM a\n{}",
            "RUN x\n".repeat((MAX_DOCKERFILE_BYTES / 6) + 1)
        );
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        assert!(
            e.to_string().contains("more than the limit of 8 MiB"),
            "{e}"
        );

        // Right under the limits, the same shapes parse.
        let body = "z\n".repeat(1000);
        assert!(parse(&format!("COPY <<EOF /f\n{body}EOF\n")).is_ok());
        assert!(parse(&format!("RUN {}b\n", piece.repeat(15))).is_ok());
    }

    #[test]
    fn messages_quoting_input_stay_short() {
        // The message used to quote the whole 10 000-character word.
        let e = parse(&format!("LABEL a=b {}\n", "x".repeat(10_000))).unwrap_err();
        assert!(
            e.message()
                .starts_with("Syntax error - can't find = in \"xxx"),
            "{e}"
        );
        assert!(e.message().ends_with('…'), "{e}");
        assert!(e.to_string().len() < 700, "{}", e.to_string().len());
        let p = parse(&format!("RUN a \\\n\n{}\n", "y".repeat(10_000))).unwrap();
        assert!(p.warnings[0].message.chars().count() <= crate::MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn instruction_count_is_bounded() {
        let text = format!("FROM a\n{}", "RUN x\n".repeat(MAX_INSTRUCTIONS));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line(), Some(MAX_INSTRUCTIONS + 1), "{e}");
        assert!(e.message().contains("more than 4096 instructions"), "{e}");
        // Comments and blank lines are not instructions.
        let text = format!("# c\n\n{}", "RUN x\n".repeat(MAX_INSTRUCTIONS));
        assert_eq!(parse(&text).unwrap().nodes.len(), MAX_INSTRUCTIONS);
    }

    #[test]
    fn onbuild_nesting_is_bounded() {
        // Used to recurse once per keyword: 100 000 of them overflowed the stack.
        let text = format!("FROM a\n{}RUN x\n", "ONBUILD ".repeat(100_000));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(e.message().contains("ONBUILD nested more than"), "{e}");
        // BuildKit's parser accepts a couple (the instruction layer refuses them later).
        let p = parse("ONBUILD ONBUILD RUN x\n").unwrap();
        assert_eq!(p.nodes[0].nested.as_ref().unwrap().command, "onbuild");
    }

    #[test]
    fn no_instructions_is_located_at_a_real_line() {
        for text in ["", "\u{feff}", "# only a comment\n", "\n\n"] {
            let e = parse(text).unwrap_err();
            assert!(e.message().contains("file with no instructions"), "{e}");
            assert!(e.line().is_some_and(|l| l >= 1), "{text:?}: {e}");
        }
    }

    #[test]
    fn errors_carry_line_and_text() {
        let e = parse("FROM a\nENV PATH\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert_eq!(
            e.to_string(),
            "dockerfile parse error on line 2: ENV must have two arguments (in `ENV PATH`)"
        );
    }
}

#[cfg(test)]
mod comment_tests {
    use super::*;

    fn comments(text: &str) -> Vec<Vec<String>> {
        parse(text)
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.comments)
            .collect()
    }

    #[test]
    fn comment_block_above_an_instruction_matches_buildkit() {
        // A bare `#` ends the block; blank lines do not; a directive is left out.
        let text = "# syntax=docker/dockerfile:1\n# base the image\n#\n# build compiles\n\n# more\nFROM a AS build\n# above RUN\nRUN x \\\n# inside a continuation\n  y\nFROM b\n";
        assert_eq!(
            comments(text),
            [
                vec!["build compiles".to_owned(), "more".to_owned()],
                vec!["above RUN".to_owned()],
                vec![],
            ]
        );
        // Only the first byte goes: an indented comment keeps its `#`; an indented bare `#`
        // is then not empty and does not end the block.
        assert_eq!(
            comments("# a x\n  #\n  # b y\n\t#c\nFROM a\n"),
            [vec![
                "a x".to_owned(),
                "#".to_owned(),
                "# b y".to_owned(),
                "#c".to_owned()
            ]]
        );
        assert_eq!(comments("# a\n#   \r\nFROM a\n"), [Vec::<String>::new()]);
    }
}
