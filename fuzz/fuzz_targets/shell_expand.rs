//! Shell-word expansion (`$V`, `${V:-w}`, `${V#p}`, quotes, escapes) on arbitrary words, with a
//! few variables set: never a panic, and the output stays within the per-word cap.
#![no_main]

use std::collections::BTreeMap;

use dockerfile_parser::shell::{Lexer, MAX_EXPANDED_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(word) = std::str::from_utf8(rest) else {
        return;
    };
    let env: BTreeMap<String, String> = [
        ("A", "a"),
        ("B", "two words"),
        ("EMPTY", ""),
        ("P", "/usr/local/bin:/usr/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let lexer = Lexer::new(if flags & 1 == 0 { '\\' } else { '`' })
        .raw_quotes(flags & 2 != 0)
        .raw_escapes(flags & 4 != 0)
        .skip_unset_env(flags & 8 != 0);
    if let Ok(out) = lexer.process_word(word, &env) {
        // Nested replacements multiply sizes (`${B//?/${B//?/$B}}`), but never past the cap.
        assert!(
            out.len() <= MAX_EXPANDED_BYTES,
            "{} from {}",
            out.len(),
            word.len()
        );
    }
    let _ = lexer.process_words(word, &env);
});
