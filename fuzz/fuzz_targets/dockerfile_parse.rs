//! The Dockerfile parser and the typed-instruction layer on arbitrary text: never a panic, and
//! every refusal names a line inside the file.
#![no_main]

use dockerfile_parser::instructions::parse_instruction;
use dockerfile_parser::{dump, parse, Error};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count().max(1);
    match parse(text) {
        Ok(parsed) => {
            let _ = dump(&parsed);
            for node in &parsed.nodes {
                if let Err(Error::Instruction { line, .. } | Error::Parse { line, .. }) =
                    parse_instruction(node)
                {
                    assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
                }
            }
        }
        Err(Error::Parse { line, .. }) => {
            assert!(line >= 1 && line <= lines + 1, "line {line} of {lines}");
        }
        Err(_) => {}
    }
});
