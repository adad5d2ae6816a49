//! `--call`: parsing the flag, and printing the frontend's answer (targets, outline, check)
//! as buildx prints it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_engine::Call;

use crate::output::location_lines;

/// Parses `--call NAME[,format=json]`; `build` (the default) is `None`.
pub fn parse_call(spec: &str) -> Result<Option<(Call, bool)>> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or_default().trim();
    let mut json = false;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text")) => json = false,
            _ => bail!("invalid --call {spec:?}: unknown option {p:?} (format=json|text)"),
        }
    }
    let call = match name {
        "build" => return Ok(None),
        "targets" => Call::Targets,
        "outline" => Call::Outline,
        "check" | "lint" => Call::Check,
        other => bail!("invalid --call {other:?}: expected build, check, outline or targets"),
    };
    Ok(Some((call, json)))
}

/// Prints the frontend's answer to a `--call` as buildx does: JSON when `raw`, otherwise text
/// for people, on stdout. A check with findings exits 1; a check whose Dockerfile fails to
/// convert prints the error as buildx does (after the findings), on stderr.
pub fn print_call(call: Call, json: &str, raw: bool, dockerfile: &Path) -> Result<ExitCode> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("the frontend's --call={} result is not JSON", call.name()))?;
    let failed = call == Call::Check && check_failed(&value);
    if raw {
        let text = serde_json::to_string_pretty(&value).context("printing the --call result")?;
        println!("{text}");
    } else {
        let text = match call {
            Call::Targets => targets_text(&value),
            Call::Outline => outline_text(&value),
            Call::Check => check_text(&value, dockerfile),
        };
        print!("{text}");
        if call == Call::Check {
            if let Some(error) = check_error_text(&value, dockerfile) {
                eprint!("{error}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or_default()
}

fn list_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    v.get(key)
        .and_then(|x| x.as_array())
        .map_or(&[], |a| a.as_slice())
}

/// Rows laid out as Go's `text/tabwriter` lays them out for buildx (`minwidth 0`, `padchar ' '`,
/// no flags): every cell but a row's last is padded to its column's widest cell plus
/// `padding`, trailing spaces included; the last cell is written as it is.
fn tabwriter(rows: &[Vec<String>], padding: usize) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                + padding
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                out.push_str(cell);
            } else {
                let w = widths.get(c).copied().unwrap_or(0);
                out.push_str(&format!("{cell:<w$}"));
            }
        }
        out.push('\n');
    }
    out
}

/// `TARGET DESCRIPTION`, the default target marked, as BuildKit's `targets.PrintTargets`.
fn targets_text(v: &serde_json::Value) -> String {
    let mut rows = vec![vec!["TARGET".to_owned(), "DESCRIPTION".to_owned()]];
    for t in list_of(v, "targets") {
        let name = str_of(t, "name");
        let default = t.get("default").and_then(|d| d.as_bool()).unwrap_or(false);
        let name = match (name.is_empty(), default) {
            (true, true) => "(default)".to_owned(),
            (false, true) => format!("{name} (default)"),
            _ => name.to_owned(),
        };
        rows.push(vec![name, str_of(t, "description").to_owned()]);
    }
    tabwriter(&rows, 1)
}

/// The target, then its build arguments, secrets and SSH mounts, each block followed by an
/// empty line, as BuildKit's `outline.PrintOutline`.
fn outline_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let name = str_of(v, "name");
    let description = str_of(v, "description");
    if !name.is_empty() || !description.is_empty() {
        let name = if name.is_empty() { "(default)" } else { name };
        let mut rows = vec![vec!["TARGET:".to_owned(), name.to_owned()]];
        if !description.is_empty() {
            rows.push(vec!["DESCRIPTION:".to_owned(), description.to_owned()]);
        }
        out.push_str(&tabwriter(&rows, 1));
        out.push('\n');
    }
    let args = list_of(v, "args");
    if !args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_owned(),
            "VALUE".to_owned(),
            "DESCRIPTION".to_owned(),
        ]];
        for a in args {
            rows.push(vec![
                str_of(a, "name").to_owned(),
                str_of(a, "value").to_owned(),
                str_of(a, "description").to_owned(),
            ]);
        }
        out.push_str(&tabwriter(&rows, 3));
        out.push('\n');
    }
    for (key, title) in [("secrets", "SECRET"), ("ssh", "SSH")] {
        let items = list_of(v, key);
        if items.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_owned(), "REQUIRED".to_owned()]];
        for s in items {
            let required = s.get("required").and_then(|r| r.as_bool()).unwrap_or(false);
            rows.push(vec![
                str_of(s, "name").to_owned(),
                if required { "true" } else { "" }.to_owned(),
            ]);
        }
        out.push_str(&tabwriter(&rows, 3));
        out.push('\n');
    }
    out
}

fn check_error(v: &serde_json::Value) -> Option<&serde_json::Value> {
    v.get("error").filter(|e| !e.is_null())
}

fn check_failed(v: &serde_json::Value) -> bool {
    !list_of(v, "warnings").is_empty() || check_error(v).is_some()
}

/// The 1-based line of a check finding (`location.ranges[0].start.line`).
fn finding_line(w: &serde_json::Value) -> Option<usize> {
    let loc = w.get("location")?;
    let line = loc
        .get("ranges")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("start"))
        .and_then(|s| s.get("line"))
        .or_else(|| loc.get("line"))?;
    usize::try_from(line.as_u64()?).ok()
}

/// What buildx prints on stdout for `--call check`: the count first, then each finding after
/// an empty line with the Dockerfile lines around it (`lint.LintResults.PrintTo`); "no
/// warnings found" only when there is neither a finding nor an error.
fn check_text(v: &serde_json::Value, dockerfile: &Path) -> String {
    let mut out = String::new();
    let warnings = list_of(v, "warnings");
    match warnings.len() {
        0 if check_error(v).is_some() => {}
        0 => out.push_str("Check complete, no warnings found.\n"),
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
    }
    for w in warnings {
        out.push_str(&format!("\nWARNING: {}", str_of(w, "ruleName")));
        let url = str_of(w, "url");
        if !url.is_empty() {
            out.push_str(&format!(" - {url}"));
        }
        let detail = match str_of(w, "detail") {
            "" => str_of(w, "description"),
            d => d,
        };
        out.push_str(&format!("\n{detail}\n"));
        if let Some(line) = finding_line(w) {
            for l in location_lines(dockerfile, line) {
                out.push_str(&format!("{l}\n"));
            }
        }
    }
    if check_error(v).is_some() && !warnings.is_empty() {
        out.push('\n');
    }
    out
}

/// A check whose Dockerfile fails: buildx returns the error (message, then the lines around
/// it), which its main prints as `ERROR: ...` on stderr.
fn check_error_text(v: &serde_json::Value, dockerfile: &Path) -> Option<String> {
    let e = check_error(v)?;
    let mut out = format!("ERROR: {}\n", str_of(e, "message"));
    if let Some(line) = finding_line(e) {
        for l in location_lines(dockerfile, line) {
            out.push_str(&format!("{l}\n"));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls() {
        assert_eq!(parse_call("build").unwrap(), None);
        assert_eq!(parse_call("targets").unwrap(), Some((Call::Targets, false)));
        assert_eq!(
            parse_call("outline,format=json").unwrap(),
            Some((Call::Outline, true))
        );
        assert!(parse_call("nope").is_err());
        assert!(parse_call("check,color=1").is_err());
    }

    #[test]
    fn call_texts() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"targets":[{"name":"build","description":"compile it"},
                {"name":"test"},
                {"name":"release","default":true,"description":"the image"}]}"#,
        )
        .unwrap();
        // tabwriter, padding 1: the column is as wide as its widest cell plus one, and a
        // target without a description keeps its padding.
        assert_eq!(
            targets_text(&v),
            "TARGET            DESCRIPTION\nbuild             compile it\ntest              \nrelease (default) the image\n"
        );
        let v: serde_json::Value = serde_json::from_str(
            r#"{"name":"app","args":[{"name":"VERSION","value":"1.0","description":"the version"},
                {"name":"GO_VERSION","value":"1.23"}],
                "secrets":[{"name":"token","required":true},{"name":"npmrc"}]}"#,
        )
        .unwrap();
        assert_eq!(
            outline_text(&v),
            "TARGET: app\n\n\
             BUILD ARG    VALUE   DESCRIPTION\n\
             VERSION      1.0     the version\n\
             GO_VERSION   1.23    \n\n\
             SECRET   REQUIRED\n\
             token    true\n\
             npmrc    \n\n"
        );
        // A description widens the TARGET: column; no name reads "(default)".
        let v: serde_json::Value = serde_json::from_str(r#"{"description":"the image"}"#).unwrap();
        assert_eq!(
            outline_text(&v),
            "TARGET:      (default)\nDESCRIPTION: the image\n\n"
        );
    }

    #[test]
    fn check_texts() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        std::fs::write(&df, "FROM scratch AS Build\nCOPY a /\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(
            r#"{"warnings":[{"ruleName":"StageNameCasing","url":"https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
                "detail":"Stage name 'Build' should be lowercase",
                "location":{"ranges":[{"start":{"line":1}}]}}]}"#,
        )
        .unwrap();
        assert!(check_failed(&v));
        assert_eq!(
            check_text(&v, &df),
            "Check complete, 1 warning has been found!\n\
             \n\
             WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
             Stage name 'Build' should be lowercase\n\
             Dockerfile:1\n\
             --------------------\n   \
             1 | >>> FROM scratch AS Build\n   \
             2 |     COPY a /\n   \
             3 |     \n\
             --------------------\n"
        );
        assert!(check_error_text(&v, &df).is_none());
        let clean: serde_json::Value = serde_json::from_str(r#"{"warnings":[]}"#).unwrap();
        assert!(!check_failed(&clean));
        assert_eq!(
            check_text(&clean, &df),
            "Check complete, no warnings found.\n"
        );
        // An error alone: no count line on stdout, the error on stderr.
        let broken: serde_json::Value = serde_json::from_str(
            r#"{"warnings":[],"error":{"message":"invalid chmod parameter","location":{"file":"Dockerfile","line":2}}}"#,
        )
        .unwrap();
        assert!(check_failed(&broken));
        assert_eq!(check_text(&broken, &df), "");
        let e = check_error_text(&broken, &df).unwrap();
        assert!(
            e.starts_with("ERROR: invalid chmod parameter\nDockerfile:2\n"),
            "{e}"
        );
    }
}
