//! The s-expression dump of BuildKit's `Node.Dump`, used by its parser conformance files.

use std::fmt::Write as _;

use crate::parser::{Node, Parsed};

/// The AST as BuildKit's parser tests print it: one `(keyword [flags] "arg" ...)` per line,
/// ending with a newline.
pub fn dump(parsed: &Parsed) -> String {
    let mut s = String::new();
    for node in &parsed.nodes {
        s.push('(');
        s.push_str(&dump_node(node));
        s.push_str(")\n");
    }
    let mut out = go_trim_space(&s).to_string();
    out.push('\n');
    out
}

fn dump_node(node: &Node) -> String {
    let mut s = node.command.clone();
    if !node.flags.is_empty() {
        let quoted: Vec<String> = node.flags.iter().map(|f| go_quote(f)).collect();
        let _ = write!(s, " [{}]", quoted.join(" "));
    }
    if let Some(nested) = &node.nested {
        s.push_str(" (");
        s.push_str(&dump_node(nested));
        s.push(')');
    }
    for arg in &node.args {
        s.push(' ');
        s.push_str(&go_quote(arg));
    }
    go_trim_space(&s).to_string()
}

/// Go's `strings.TrimSpace`: Unicode white space at both ends.
fn go_trim_space(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// Go's `strconv.Quote`: printable Unicode raw, everything else escaped.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `unicode.IsPrint` without Unicode tables: controls, separators other than
/// the ASCII space, format characters, private use and non-characters are not printable.
/// Unassigned code points are treated as printable (Go escapes them); no Dockerfile relies on it.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format_or_private = matches!(u,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF | 0xFDD0..=0xFDEF);
    let non_character = u & 0xFFFE == 0xFFFE;
    !format_or_private && !non_character
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            go_quote("\" \\ / \u{8} \u{c} \n \r \t \0"),
            r#""\" \\ / \b \f \n \r \t \x00""#
        );
        assert_eq!(go_quote("♥☃"), "\"♥☃\"");
        assert_eq!(
            go_quote("\u{7f}\u{85}\u{a0}\u{200b}"),
            r#""\x7f\u0085\u00a0\u200b""#
        );
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
        assert_eq!(go_quote("한국어"), "\"한국어\"");
    }
}
