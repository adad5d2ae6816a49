//! Printing for people: the plugin table, the Dockerfile lines around an error, error chains.

use std::path::Path;

use kiln_plugin_host::PluginRegistry;

/// `kiln plugins ls`.
pub fn plugins_table(registry: &PluginRegistry) {
    println!(
        "{:<20} {:<28} {:<10} {:<4} PATH",
        "NAME", "KINDS", "VERSION", "ABI"
    );
    for p in registry.plugins() {
        let kinds: Vec<String> = p
            .kinds()
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect();
        println!(
            "{:<20} {:<28} {:<10} {:<4} {}",
            p.name(),
            kinds.join(","),
            p.version(),
            p.abi_version(),
            p.path().display()
        );
    }
    if !registry.refused().is_empty() {
        println!("\nREFUSED");
        for r in registry.refused() {
            println!("{r}");
        }
    }
}

/// The lines around `line` of the build file, BuildKit style, on stderr.
pub fn show_location(dockerfile: &Path, line: usize) {
    for l in location_lines(dockerfile, line) {
        eprintln!("{l}");
    }
}

/// The lines around `line` of the build file, BuildKit style (none when it cannot be read).
pub fn location_lines(dockerfile: &Path, line: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dockerfile) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return Vec::new();
    }
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![format!("{name}:{line}"), "--------------------".to_owned()];
    let from = line.saturating_sub(3).max(1);
    let to = (line + 2).min(lines.len());
    for (i, l) in lines.iter().enumerate().take(to).skip(from - 1) {
        let n = i + 1;
        let mark = if n == line { ">>>" } else { "   " };
        out.push(format!("{n:>4} | {mark} {}", shorten_line(l)));
    }
    out.push("--------------------".to_owned());
    out
}

/// Lines longer than this are cut in the error box: a hostile Dockerfile's 30 KB line would
/// only bury the message.
const MAX_SHOWN_LINE: usize = 240;

fn shorten_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_SHOWN_LINE {
        return line.into();
    }
    let mut end = MAX_SHOWN_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &line[..end], line.len() - end).into()
}

/// An error and its causes, without repeating a cause already quoted by its parent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_box_cuts_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        let long = format!("LABEL a={}", "é".repeat(15_000));
        std::fs::write(&df, format!("FROM scratch\n{long}\nCOPY a /\n")).unwrap();
        let lines = location_lines(&df, 2);
        assert_eq!(lines[0], "Dockerfile:2");
        let shown = lines.iter().find(|l| l.contains(">>>")).unwrap();
        assert!(
            shown.len() < 300 && shown.contains("more bytes)"),
            "{shown}"
        );
        assert!(lines.iter().any(|l| l.ends_with("COPY a /")), "{lines:?}");
    }
}
