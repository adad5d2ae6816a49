//! Pseudo-random Dockerfile-ish inputs (fixed seed) must never make the parser, the expander or
//! the instruction layer panic, overflow the stack or run away, and every answer must make sense:
//! a parse gives nodes whose lines lie inside the file, a refusal names a line inside the file,
//! an expansion stays under its size cap, and messages stay short.
//!
//! Besides short token soups, the generator builds the shapes that used to hurt: expansions
//! nested hundreds deep, logical lines of hundreds of kilobytes, heredocs, and long runs of
//! continuation lines.

use dockerfile_parser::instructions::parse_instruction;
use dockerfile_parser::shell::{Lexer, MAX_EXPANDED_BYTES, MAX_EXPANSION_DEPTH};
use dockerfile_parser::{dump, parse, Error, MAX_LINE_BYTES};

const TOKENS: &[&str] = &[
    "FROM ",
    "RUN ",
    "COPY ",
    "ADD ",
    "ENV ",
    "LABEL ",
    "ARG ",
    "CMD ",
    "ENTRYPOINT ",
    "SHELL ",
    "ONBUILD ",
    "HEALTHCHECK ",
    "VOLUME ",
    "EXPOSE ",
    "USER ",
    "WORKDIR ",
    "STOPSIGNAL ",
    "MAINTAINER ",
    "FOO ",
    "--mount=type=cache,target=/x ",
    "--from=a ",
    "--",
    "-",
    "=",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\\",
    "\\\n",
    "`",
    "# escape=`\n",
    "# syntax=x\n",
    "#",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ",",
    "$",
    "${",
    "${a:-",
    "${a#",
    "${a//",
    ":",
    "?",
    "*",
    "<<",
    "<<-",
    "EOF",
    "\nEOF\n",
    "3<<",
    "'EOF'",
    "a",
    "b c",
    "é",
    "♥",
    "한국어",
    "\u{0}",
    "\u{85}",
    "\u{a0}",
    "\u{feff}",
    "\u{10ffff}",
    "AS ",
    "NONE",
    "CMD",
    "[\"a\", \"b\"]",
    "[1]",
    "null",
    "\\u0000",
];

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n
    }

    fn token(&mut self) -> &'static str {
        TOKENS[self.below(TOKENS.len())]
    }
}

/// One input: mostly short token soups, sometimes one of the shapes that once crashed or
/// stalled the parser or the expander.
fn generate(rng: &mut Lcg) -> String {
    let mut text = String::new();
    match rng.below(10) {
        // Expansions nested around the depth limit, inside an instruction, sometimes quoted.
        0 => {
            let depth = [1, MAX_EXPANSION_DEPTH, MAX_EXPANSION_DEPTH + 1, 300, 3_000][rng.below(5)];
            let (open, close) =
                [("${a:-", "}"), ("\"${b:+", "}\""), ("${a//", "/x}")][rng.below(3)];
            text.push_str(["LABEL k=", "ENV k=", "FROM ", "WORKDIR /", "COPY "][rng.below(5)]);
            text.push_str(&open.repeat(depth));
            text.push_str(rng.token());
            if rng.below(4) != 0 {
                text.push_str(&close.repeat(depth));
            }
        }
        // A long logical line, sometimes over the limit, made of continuation lines.
        1 => {
            text.push_str("RUN ");
            let piece = format!("{} \\\n", rng.token().repeat(1 + rng.below(2_000)));
            // Mostly long, now and then just over the limit (which stops the parser early).
            let target = if rng.below(8) == 0 {
                MAX_LINE_BYTES + 10
            } else {
                10_000 + rng.below(40_000)
            };
            while text.len() < target {
                text.push_str(&piece);
            }
            text.push_str("end\n");
        }
        // Many short continuation lines, some empty or comments.
        2 => {
            text.push_str("FROM a\nENV \\\n");
            for _ in 0..rng.below(2_000) {
                text.push_str(["x=1 \\\n", "\\\n", "\n", "# c\n"][rng.below(4)]);
            }
            text.push_str("y=2\n");
        }
        // Heredocs with bodies of various sizes, terminated or not.
        3 => {
            text.push_str(["RUN <<EOF\n", "COPY <<-'A' /f\n", "RUN 3<<X <<Y cat\n"][rng.below(3)]);
            for _ in 0..rng.below(1_000) {
                text.push_str(rng.token());
                text.push('\n');
            }
            if rng.below(3) != 0 {
                text.push_str("EOF\nA\nX\nY\n");
            }
        }
        _ => {
            for _ in 0..1 + rng.below(120) {
                text.push_str(rng.token());
            }
        }
    }
    text
}

/// A located refusal must point inside the text (line 1 for a text without any line).
fn assert_located(err: &Error, text: &str) {
    // A leading byte-order mark is not part of the first line.
    let lines = text
        .strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .count();
    if let Some(line) = err.line() {
        assert!(
            (1..=lines.max(1)).contains(&line),
            "line {line} of {lines}: {err}"
        );
    }
    assert!(!err.message().is_empty());
    // The offending line or word is quoted shortened: no message repeats a huge input.
    assert!(
        err.to_string().len() < 2_000,
        "{} bytes: {:.300}",
        err.to_string().len(),
        err.to_string()
    );
}

#[test]
fn random_inputs_never_panic_and_answer_sensibly() {
    let mut rng = Lcg(0x5eed_1234_abcd);
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`').raw_quotes(true).raw_escapes(true),
        Lexer::new('\\').skip_unset_env(true),
    ];
    let env = vec![("a", "x*y"), ("b", "")];
    let (mut parsed_ok, mut refused, mut expanded, mut expansion_errors) = (0, 0, 0, 0);
    for _ in 0..1_200 {
        let text = generate(&mut rng);
        let lines = text.lines().count();
        match parse(&text) {
            Ok(p) => {
                parsed_ok += 1;
                assert!(!p.nodes.is_empty(), "a parse has at least one instruction");
                for node in &p.nodes {
                    assert!(
                        1 <= node.start_line
                            && node.start_line <= node.end_line
                            && node.end_line <= lines,
                        "lines {}..{} of {lines}",
                        node.start_line,
                        node.end_line
                    );
                    assert!(node.original.len() <= MAX_LINE_BYTES);
                    if let Err(e) = parse_instruction(node) {
                        assert_eq!(e.line(), Some(node.start_line), "{e}");
                        assert_located(&e, &text);
                    }
                }
                assert!(!dump(&p).is_empty());
            }
            Err(e) => {
                refused += 1;
                assert_located(&e, &text);
            }
        }
        // The lexer's own limits are tested on words that large; whole inputs of a megabyte,
        // three times over, would only make this test slow.
        let lexers = if text.len() <= 200_000 {
            &lexers[..]
        } else {
            &[]
        };
        for lexer in lexers {
            match lexer.process(&text, &env) {
                Ok(x) => {
                    expanded += 1;
                    assert!(x.value.len() <= MAX_EXPANDED_BYTES);
                    assert!(x.words.iter().all(|w| !w.is_empty()));
                }
                Err(e) => {
                    expansion_errors += 1;
                    assert!(matches!(e, Error::Expand { .. }), "{e}");
                    assert_located(&e, &text);
                }
            }
        }
    }
    println!(
        "random inputs: {parsed_ok} parsed, {refused} refused; {expanded} expanded, \
         {expansion_errors} expansion errors"
    );
    // The generator must reach every outcome, or the assertions above test little.
    assert!(
        parsed_ok > 300 && refused > 50,
        "{parsed_ok} parsed, {refused} refused"
    );
    assert!(expanded > 300 && expansion_errors > 300);
}

#[test]
fn the_shapes_that_crashed_end_with_located_errors() {
    let nested = |depth: usize| format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
    let e = Lexer::new('\\')
        .process_word(&nested(5_000), &Vec::<(String, String)>::new())
        .unwrap_err();
    assert!(e.message().contains("nested deeper than"), "{e}");
    let p = parse(&format!("FROM a\nLABEL a={}\n", nested(5_000))).unwrap();
    assert_eq!(p.nodes[1].start_line, 2);
    let e = parse(&format!("FROM a\n{}x\n", "ONBUILD ".repeat(100_000))).unwrap_err();
    assert_eq!(e.line(), Some(2));
}
