//! "Did you mean ...?" hints, as BuildKit's `util/suggest` gives them: for instructions, flags,
//! mount keys (here) and stage names and variables (in the frontend).

/// Longest word (in characters) that gets a suggestion. Instructions, flags, stage and variable
/// names are short; a name of thousands of characters is no typo, and the edit distance costs
/// time in the product of the two lengths.
pub const MAX_SUGGESTION_CHARS: usize = 64;

/// The option closest to `value` (case-insensitive), when it is close enough to be a typo.
///
/// Cheap whatever the input: words over [`MAX_SUGGESTION_CHARS`] are skipped, and so is every
/// option whose length alone differs by more than the allowed typos, so each distance computed
/// is between two short words.
pub fn closest<'a>(value: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let len = value.chars().count();
    if len > MAX_SUGGESTION_CHARS {
        return None;
    }
    let value = value.to_lowercase();
    // Short words differ from everything by a couple of edits; allow fewer typos for them.
    let limit = if len <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for opt in options {
        // Bytes bound characters from above: a cheap first cut before counting.
        if opt.len() > 4 * (MAX_SUGGESTION_CHARS + limit)
            || opt.chars().count().abs_diff(len) > limit
        {
            continue;
        }
        // Optimal string alignment: a swap of two neighbours (`FORM`) is one typo.
        let d = strsim::osa_distance(&value, &opt.to_lowercase());
        if d == 0 {
            return None;
        }
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        let opts = ["COPY", "FROM", "RUN", "ENV"];
        assert_eq!(closest("COPPY", opts), Some("COPY"));
        assert_eq!(closest("form", opts), Some("FROM"));
        assert_eq!(closest("FOO", opts), None);
        assert_eq!(closest("copy", opts), None);
        assert_eq!(closest("INCLUDE", opts), None);
        assert_eq!(closest("ENVV", opts), Some("ENV"));
        assert_eq!(closest("RNU", opts), Some("RUN"));
    }

    #[test]
    fn long_names_get_no_suggestion_and_cost_nothing() {
        // A full distance matrix for these took (5 000)² cells; 25 000 characters took 4.9 GB.
        let long = "a".repeat(5_000);
        let near = format!("{long}b");
        assert_eq!(closest(&long, [near.as_str()]), None);
        let at_limit = "v".repeat(MAX_SUGGESTION_CHARS);
        let typo = format!("{at_limit}w");
        assert_eq!(closest(&typo, [at_limit.as_str()]), None);
        assert_eq!(
            closest(&at_limit[1..], [at_limit.as_str()]),
            Some(at_limit.as_str())
        );
        // A short word next to a huge option: skipped on length.
        assert_eq!(closest("FROM", [long.as_str(), "FORM"]), Some("FORM"));
    }
}
