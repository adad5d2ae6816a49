//! Pseudo-random Dockerfile-ish inputs (fixed seed) must never make the parser, the expander or
//! the instruction layer panic.

use dockerfile_parser::instructions::parse_instruction;
use dockerfile_parser::shell::Lexer;
use dockerfile_parser::{dump, parse};

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
}

#[test]
fn random_inputs_never_panic() {
    let mut rng = Lcg(0x5eed_1234_abcd);
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`').raw_quotes(true).raw_escapes(true),
        Lexer::new('\\').skip_unset_env(true),
    ];
    let env = vec![("a", "x*y"), ("b", "")];
    let mut parsed_ok = 0;
    for _ in 0..4000 {
        let n = 1 + (rng.next() % 40) as usize;
        let mut text = String::new();
        for _ in 0..n {
            let t = TOKENS[(rng.next() as usize) % TOKENS.len()];
            text.push_str(t);
        }
        if let Ok(p) = parse(&text) {
            parsed_ok += 1;
            let _ = dump(&p);
            for node in &p.nodes {
                let _ = parse_instruction(node);
            }
        }
        for lexer in &lexers {
            let _ = lexer.process(&text, &env);
        }
    }
    assert!(
        parsed_ok > 0,
        "the generator should produce some valid files"
    );
}
