//! Runs the upstream `.dockerignore` vectors in `shared/conformance` as they are.
//!
//! Folder: `$KILN_CONFORMANCE_DIR`, else `<repo>/../shared/conformance`. Formats: §5 of
//! `shared/conformance/buildkit/README.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use kiln_ignore::{read_ignore_file, MatchInfo, MatchKind, PatternMatcher};
use serde_json::Value;

fn conformance_dir() -> PathBuf {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        dir.is_dir(),
        "conformance data not found at {}: check out `shared/` beside the repository or set \
         KILN_CONFORMANCE_DIR to its `conformance` folder",
        dir.display()
    );
    dir
}

fn read(name: &str) -> String {
    let path = conformance_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Data rows of a TSV file (1-based line number, columns); `#` lines are comments.
fn tsv_rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.starts_with('#') && !line.is_empty())
        .map(|(i, line)| (i + 1, line.split('\t').collect()))
}

/// Prints the count line and fails with every failing row listed.
fn report(what: &str, passed: usize, failures: &str) {
    let failed = failures.lines().count();
    println!("{what}: {passed} passed, {failed} failed");
    assert!(passed > 0, "{what}: no rows read");
    assert!(failures.is_empty(), "{what}: failing rows:\n{failures}");
}

fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("pattern lists hold strings").to_owned())
            .collect(),
        other => panic!("expected a JSON array of strings, got {other}"),
    }
}

/// The answer for `path` walking down from the top with the incremental API, as a walker would.
fn walked(m: &PatternMatcher, path: &str) -> Result<bool, kiln_ignore::Error> {
    let mut info = MatchInfo::default();
    for (i, _) in path.match_indices('/') {
        info = m.matches_using_parent_results(&path[..i], &info)?.1;
    }
    Ok(m.matches_using_parent_results(path, &info)?.0)
}

/// One row's outcome as the `expected` column spells it.
fn outcome(result: Result<bool, kiln_ignore::Error>) -> String {
    match result {
        Ok(b) => b.to_string(),
        Err(_) => "error".to_owned(),
    }
}

#[test]
fn dockerignore_cases() {
    let text = read("dockerignore-cases.tsv");
    let (mut passed, mut failures) = (0, String::new());
    for (lineno, cols) in tsv_rows(&text) {
        assert!(
            cols.len() >= 6,
            "line {lineno}: expected 7 columns, got {cols:?}"
        );
        let (api, patterns_json, path, expected, os) =
            (cols[1], cols[2], cols[3], cols[4], cols[5]);
        // `\` is an escape on unix, which is the only platform this crate models.
        assert!(
            matches!(os, "all" | "unix"),
            "line {lineno}: unknown os {os:?}"
        );
        let patterns: Value = serde_json::from_str(patterns_json)
            .unwrap_or_else(|e| panic!("line {lineno}: bad patterns_json: {e}"));
        let mut patterns = string_list(&patterns);
        if api == "context-exclude" {
            patterns = read_ignore_file(&patterns.join("\n")).expect("within the limits");
        }
        let built = PatternMatcher::new(&patterns);
        let mut problems = Vec::new();
        match api {
            "New" => {
                let got = if built.is_ok() { "ok" } else { "error" };
                if got != expected {
                    problems.push(format!("New gave {got}"));
                }
            }
            "Matches" | "MatchesOrParentMatches" | "context-exclude" => {
                let got = outcome(
                    built
                        .clone()
                        .and_then(|m| m.matches_or_parent_matches(path)),
                );
                if got != expected {
                    problems.push(format!("matches_or_parent_matches gave {got}"));
                }
                if let Ok(m) = &built {
                    let fresh = outcome(
                        m.matches_using_parent_results(path, &MatchInfo::default())
                            .map(|r| r.0),
                    );
                    if fresh != got {
                        problems.push(format!("incremental without parent info gave {fresh}"));
                    }
                    let walk = outcome(walked(m, path));
                    if walk != got {
                        problems.push(format!("incremental walk gave {walk}"));
                    }
                }
            }
            other => panic!("line {lineno}: unknown api {other:?}"),
        }
        if problems.is_empty() {
            passed += 1;
        } else {
            let _ = writeln!(
                failures,
                "  line {}: {api} {patterns_json} {path:?} expected {expected}: {}",
                lineno,
                problems.join("; ")
            );
        }
    }
    report("dockerignore cases", passed, &failures);
}

#[test]
fn dockerignore_readall() {
    let doc: Value = serde_json::from_str(&read("dockerignore-readall.json")).expect("valid JSON");
    let cases = doc["cases"].as_array().expect("a `cases` array");
    let (mut passed, mut failures) = (0, String::new());
    for (i, case) in cases.iter().enumerate() {
        // `null` is "no .dockerignore": no patterns.
        let input = case["input"].as_str().unwrap_or("");
        let expected = string_list(&case["expected"]);
        let got = read_ignore_file(input).expect("within the limits");
        if got == expected {
            passed += 1;
        } else {
            let _ = writeln!(failures, "  case {i}: expected {expected:?}, got {got:?}");
        }
    }
    report("dockerignore readall", passed, &failures);
}

#[test]
fn dockerignore_compile() {
    let text = read("dockerignore-compile.tsv");
    let (mut passed, mut failures) = (0, String::new());
    for (lineno, cols) in tsv_rows(&text) {
        let (pattern, kind, regexp) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        let m = match PatternMatcher::new([pattern]) {
            Ok(m) => m,
            Err(e) => {
                let _ = writeln!(failures, "  line {}: {pattern:?} rejected: {e}", lineno);
                continue;
            }
        };
        let Some(p) = m.patterns().first() else {
            let _ = writeln!(
                failures,
                "  line {}: {pattern:?} produced no pattern",
                lineno
            );
            continue;
        };
        let got_kind = match p.kind() {
            MatchKind::Exact => "exact",
            MatchKind::Prefix => "prefix",
            MatchKind::Suffix => "suffix",
            MatchKind::Regexp => "regexp",
        };
        let got_regexp = p.regexp().unwrap_or("");
        if got_kind == kind && got_regexp == regexp {
            passed += 1;
        } else {
            let _ = writeln!(
                failures,
                "  line {}: {pattern:?} expected {kind} {regexp:?}, got {got_kind} {got_regexp:?}",
                lineno
            );
        }
    }
    report("dockerignore compile", passed, &failures);
}
