//! Runs the BuildKit conformance data in `shared/conformance` as it is (no copies).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dockerfile_parser::shell::Lexer;
use dockerfile_parser::{dump, parse};

fn conformance_dir() -> PathBuf {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance"),
    };
    assert!(
        dir.join("buildkit").is_dir(),
        "conformance data not found at {} (set KILN_CONFORMANCE_DIR to the shared/conformance folder)",
        dir.display()
    );
    dir
}

fn buildkit(rel: &str) -> PathBuf {
    conformance_dir()
        .join("buildkit/frontend/dockerfile")
        .join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn parser_testfiles() {
    let dirs = case_dirs(&buildkit("parser/testfiles"));
    let mut failures = Vec::new();
    for dir in &dirs {
        let input = read(&dir.join("Dockerfile"));
        let expected = read(&dir.join("result")).replace("\r\n", "\n");
        match parse(&input) {
            Ok(p) => {
                let got = dump(&p);
                if got != expected {
                    failures.push(format!(
                        "{}:\n--- expected\n{expected}--- got\n{got}",
                        dir.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error: {e}", dir.display())),
        }
    }
    println!(
        "parser cases: {} passed, {} failed",
        dirs.len() - failures.len(),
        failures.len()
    );
    assert!(!dirs.is_empty(), "no parser cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parser_negative() {
    let expected: BTreeMap<&str, &str> = [
        ("empty_dockerfile", "file with no instructions"),
        ("only_comments", "file with no instructions"),
        ("env_no_value", "ENV must have two arguments"),
        (
            "shykes-nested-json",
            "when using JSON array syntax, arrays must be comprised of strings only",
        ),
    ]
    .into_iter()
    .collect();
    let dirs = case_dirs(&buildkit("parser/testfiles-negative"));
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let input = read(&dir.join("Dockerfile"));
        match parse(&input) {
            Ok(_) => failures.push(format!("{name}: parsed, expected an error")),
            Err(e) => {
                if let Some(want) = expected.get(name) {
                    if !e.to_string().contains(want) {
                        failures.push(format!("{name}: error {e:?} lacks {want:?}"));
                    }
                }
            }
        }
    }
    println!(
        "negative parser cases: {} passed, {} failed",
        dirs.len() - failures.len(),
        failures.len()
    );
    assert_eq!(
        dirs.len(),
        expected.len(),
        "unexpected set of negative cases"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parser_line_numbers() {
    let input = read(&buildkit("parser/testfile-line/Dockerfile"));
    let p = parse(&input).expect("testfile-line parses");
    let spans: Vec<(usize, usize)> = p.nodes.iter().map(|n| (n.start_line, n.end_line)).collect();
    assert_eq!(p.span(), Some((5, 31)));
    assert_eq!(spans, vec![(5, 5), (11, 12), (17, 31)]);
    assert_eq!(p.escape, '\\');
    println!("line-number case: 1 passed, 0 failed");
}

const ENV_VAR_TEST_ENV: [(&str, &str); 4] = [
    ("PWD", "/home"),
    ("SHELL", "bash"),
    ("KOREAN", "한국어"),
    ("NULL", ""),
];

#[test]
fn shell_env_var_test() {
    let text = read(&buildkit("shell/envVarTest"));
    let lexer = Lexer::new('\\');
    let (mut passed, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            panic!("envVarTest line {}: expected 3 fields: {line:?}", i + 1);
        };
        if platform == "W" {
            skipped += 1;
            continue;
        }
        let got = lexer.process_word(input, ENV_VAR_TEST_ENV.as_slice());
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(v), e) => e != "error" && v == e,
            (Err(_), _) => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: {input:?} → {got:?}, want {expected:?}",
                i + 1
            ));
        }
    }
    println!(
        "envVarTest vectors: {passed} passed, {} failed, {skipped} skipped (W)",
        failures.len()
    );
    assert!(passed > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_words_test() {
    let text = read(&buildkit("shell/wordsTest"));
    let lexer = Lexer::new('\\');
    let mut env: Vec<(String, String)> = Vec::new();
    let mut passed = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            let entry = entry.trim_start_matches(' ');
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        let [input, expected] = fields[..] else {
            panic!("wordsTest line {}: expected 2 fields: {line:?}", i + 1);
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = lexer.process_words(input, &env);
        let ok = match &got {
            Err(_) => expected == ["error"],
            Ok(words) => *words == expected,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {}: {input:?} → {got:?}, want {expected:?}",
                i + 1
            ));
        }
    }
    println!(
        "wordsTest vectors: {passed} passed, {} failed",
        failures.len()
    );
    assert!(passed > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shell_expansion_cases() {
    let text = read(&conformance_dir().join("shell-expansion-cases.jsonl"));
    let lexer = Lexer::new('\\');
    let (mut passed, mut tolerated) = (0, 0);
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let case: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("shell-expansion-cases.jsonl line {}: {e}", i + 1));
        let input = case["input"].as_str().expect("input");
        let env: Vec<(String, String)> = case["env"]
            .as_object()
            .expect("env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("env value").to_string()))
            .collect();
        let got = lexer.process_word_with_matches(input, &env);
        let note = case["note"].as_str().unwrap_or("");
        if note.contains("not guaranteed") {
            tolerated += 1;
            continue;
        }
        let set = |key: &str| -> Option<Vec<String>> {
            case.get(key).and_then(|v| v.as_array()).map(|a| {
                a.iter()
                    .map(|s| s.as_str().expect("name").to_string())
                    .collect()
            })
        };
        let ok = if case["error"].as_bool() == Some(true) {
            match &got {
                Err(e) => case["error_contains"]
                    .as_str()
                    .is_none_or(|want| e.to_string().contains(want)),
                Ok(_) => false,
            }
        } else {
            match &got {
                Ok((value, matched, unmatched)) => {
                    Some(value.as_str()) == case["expected"].as_str()
                        && set("matched")
                            .is_none_or(|m| m == matched.iter().cloned().collect::<Vec<_>>())
                        && set("unmatched")
                            .is_none_or(|m| m == unmatched.iter().cloned().collect::<Vec<_>>())
                }
                Err(_) => false,
            }
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!("line {}: {input:?} → {got:?}, want {line}", i + 1));
        }
    }
    println!(
        "shell-expansion cases: {passed} passed, {} failed, {tolerated} tolerance-only (no panic)",
        failures.len()
    );
    assert!(passed > 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
