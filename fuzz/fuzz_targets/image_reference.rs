//! Image references (`FROM`, `--build-context`, `-t`, `# syntax=`) on arbitrary text: never a
//! panic, the limits hold, and a parsed reference reads back as itself.
#![no_main]

use kiln_types::reference::{Reference, NAME_MAX, TAG_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = Reference::parse_normalized(text) else {
        return;
    };
    assert!(r.repository.len() <= NAME_MAX, "{r}");
    assert!(r.tag.as_ref().is_none_or(|t| t.len() <= TAG_MAX), "{r}");
    let shown = r.to_string();
    let again = Reference::parse_normalized(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, r, "{text:?} → {shown:?}");
});
