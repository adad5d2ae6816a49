//! Sizes as docker writes them (`--shm-size`, a tmpfs `size=`): go-units' `RAMInBytes`.

/// Parses `text` as go-units' `RAMInBytes` does: a decimal number, one optional space, then an
/// optional unit `b`, or `k` `m` `g` `t` `p` (powers of 1024) alone or followed by `b` or `ib`,
/// in any case: `64m`, `1.5g`, `512KiB`. `None` for anything else.
pub fn parse_ram_size(text: &str) -> Option<u64> {
    let num_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(num_end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    // parse-size also takes digit grouping, exponents and exa units; docker does not.
    let docker_unit = match unit.as_bytes() {
        [] | [b'b'] => true,
        [u, rest @ ..] => b"kmgtp".contains(u) && matches!(rest, [] | [b'b'] | [b'i', b'b']),
    };
    if num.is_empty() || !docker_unit {
        return None;
    }
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_go_units_ram_in_bytes() {
        for (text, bytes) in [
            ("100", 100),
            ("32b", 32),
            ("32 B", 32),
            ("64m", 64 << 20),
            ("32k", 32 << 10),
            ("32Kb", 32 << 10),
            ("32KiB", 32 << 10),
            ("32 kib", 32 << 10),
            ("2G", 2 << 30),
            ("1t", 1 << 40),
            ("1p", 1 << 50),
            ("1.5k", 1536),
            ("0", 0),
        ] {
            assert_eq!(parse_ram_size(text), Some(bytes), "{text:?}");
        }
        // What go-units refuses: two spaces, a doubled or unknown suffix, `ki`, exa, digit
        // grouping, exponents, signs, no number.
        for text in [
            "10bb", "1  k", "1kbb", "2ki", "1e", "1eb", "1_000", "1e3", "-1", "m", "", " 1k", "1k ",
        ] {
            assert_eq!(parse_ram_size(text), None, "{text:?}");
        }
    }
}
