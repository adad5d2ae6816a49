//! "Did you mean ...?" hints, as BuildKit's `util/suggest` gives them: for instructions, flags,
//! mount keys (here) and stage names and variables (in the frontend).

/// The option closest to `value` (case-insensitive), when it is close enough to be a typo.
pub fn closest<'a>(value: &str, options: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let value = value.to_lowercase();
    // Short words differ from everything by a couple of edits; allow fewer typos for them.
    let limit = if value.chars().count() <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for opt in options {
        let d = distance(&value, &opt.to_lowercase());
        if d == 0 {
            return None;
        }
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o)
}

/// Damerau-Levenshtein distance (optimal string alignment): a swap of two neighbours (`FORM`)
/// is one typo.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
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
    }
}
