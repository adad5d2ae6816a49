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

/// Prints the frontend's answer to a `--call` on stdout, as buildx does: JSON when `raw`,
/// otherwise text for people. A check with findings exits 1.
pub fn print_call(call: Call, json: &str, raw: bool, dockerfile: &Path) -> Result<ExitCode> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("the frontend's --call={} result is not JSON", call.name()))?;
    let failed = call == Call::Check && check_failed(&value);
    let text = if raw {
        serde_json::to_string_pretty(&value).context("printing the --call result")?
    } else {
        match call {
            Call::Targets => targets_text(&value),
            Call::Outline => outline_text(&value),
            Call::Check => check_text(&value, dockerfile),
        }
    };
    println!("{}", text.trim_end());
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

/// Columns separated by at least two spaces, as Go's tabwriter in buildx.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let w = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `TARGET  DESCRIPTION`, the default target marked as buildx marks it.
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
    table(&rows)
}

/// The target, then its build arguments, secrets and SSH mounts.
fn outline_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let name = str_of(v, "name");
    if !name.is_empty() {
        out.push_str(&format!("TARGET:      {name}\n"));
    }
    let description = str_of(v, "description");
    if !description.is_empty() {
        out.push_str(&format!("DESCRIPTION: {description}\n"));
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
        out.push('\n');
        out.push_str(&table(&rows));
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
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

fn check_failed(v: &serde_json::Value) -> bool {
    !list_of(v, "warnings").is_empty() || v.get("error").is_some_and(|e| !e.is_null())
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

/// Each finding as buildx prints it, then the summary line.
fn check_text(v: &serde_json::Value, dockerfile: &Path) -> String {
    let mut out = String::new();
    let warnings = list_of(v, "warnings");
    for w in warnings {
        let rule = str_of(w, "ruleName");
        let url = str_of(w, "url");
        out.push_str(&format!("WARNING: {rule}"));
        if !url.is_empty() {
            out.push_str(&format!(" - {url}"));
        }
        out.push('\n');
        let detail = match str_of(w, "detail") {
            "" => str_of(w, "description"),
            d => d,
        };
        out.push_str(&format!("{detail}\n"));
        if let Some(line) = finding_line(w) {
            for l in location_lines(dockerfile, line) {
                out.push_str(&format!("{l}\n"));
            }
        }
        out.push('\n');
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        out.push_str(&format!("ERROR: {}\n", str_of(e, "message")));
        if let Some(line) = finding_line(e) {
            for l in location_lines(dockerfile, line) {
                out.push_str(&format!("{l}\n"));
            }
        }
        out.push('\n');
    }
    match warnings.len() {
        0 if v.get("error").is_some_and(|e| !e.is_null()) => {
            out.push_str("Check complete, an error was found!\n")
        }
        0 => out.push_str("Check complete, no warnings found.\n"),
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
    }
    out
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
                {"name":"release","default":true,"description":"the image"}]}"#,
        )
        .unwrap();
        assert_eq!(
            targets_text(&v),
            "TARGET             DESCRIPTION\nbuild              compile it\nrelease (default)  the image\n"
        );
        let v: serde_json::Value = serde_json::from_str(
            r#"{"name":"app","args":[{"name":"VERSION","value":"1.0","description":"the version"}],
                "secrets":[{"name":"token","required":true}]}"#,
        )
        .unwrap();
        let text = outline_text(&v);
        assert!(text.starts_with("TARGET:      app\n"), "{text}");
        assert!(text.contains("VERSION    1.0    the version"), "{text}");
        assert!(text.contains("token   true"), "{text}");
        let v: serde_json::Value = serde_json::from_str(
            r#"{"warnings":[{"ruleName":"StageNameCasing","url":"https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
                "detail":"Stage name 'Build' should be lowercase",
                "location":{"ranges":[{"start":{"line":1}}]}}]}"#,
        )
        .unwrap();
        assert!(check_failed(&v));
        let text = check_text(&v, Path::new("/nonexistent/Dockerfile"));
        assert!(
            text.starts_with("WARNING: StageNameCasing - https://"),
            "{text}"
        );
        assert!(
            text.ends_with("Check complete, 1 warning has been found!\n"),
            "{text}"
        );
        let clean: serde_json::Value = serde_json::from_str(r#"{"warnings":[]}"#).unwrap();
        assert!(!check_failed(&clean));
        assert!(check_text(&clean, Path::new("x")).contains("no warnings found"));
    }
}
