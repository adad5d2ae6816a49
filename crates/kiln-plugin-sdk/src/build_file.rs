//! Errors about a line of the build file: located (`Dockerfile:3: …`) and quoting the line, so
//! that the user sees which instruction or value failed even without the file at hand.

use std::borrow::Cow;

use crate::proto::{Location, PluginError};

/// Most characters of a line quoted in a message: enough to recognise it, while a 1 MiB line
/// does not make a 1 MiB message.
pub const MAX_QUOTED_CHARS: usize = 120;

/// `error` located at 1-based `line` of the build file `file` whose text is `source`, with the
/// line quoted after the message (`… (in `RUN make`)`); an error that already has a location
/// (a host's, an instruction plugin's) is returned as it is.
///
/// ```
/// use kiln_plugin_sdk::build_file::locate;
/// use kiln_plugin_sdk::proto::{ErrorKind, PluginError};
/// let e = PluginError::new(ErrorKind::InvalidInput, "no such stage");
/// let e = locate(e, "Dockerfile", "FROM a\nCOPY --from=b x y\n", 2);
/// assert_eq!(e.to_string(), "Dockerfile:2: no such stage (in `COPY --from=b x y`)");
/// ```
pub fn locate(mut error: PluginError, file: &str, source: &str, line: u32) -> PluginError {
    if error.location.is_some() {
        return error;
    }
    if let Some(text) = line_text(source, line) {
        error.message = format!("{} (in `{}`)", error.message, shorten(text));
    }
    error.location = Some(Location {
        file: file.to_owned(),
        line,
    });
    error
}

/// The text of 1-based `line` of `source` (a leading byte order mark ignored), trimmed; `None`
/// when there is no such line or it is blank.
pub fn line_text(source: &str, line: u32) -> Option<&str> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let index = usize::try_from(line).ok()?.checked_sub(1)?;
    let text = source.lines().nth(index)?.trim();
    (!text.is_empty()).then_some(text)
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters, with `…` when something was cut.
pub fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorKind;

    fn invalid(message: &str) -> PluginError {
        PluginError::new(ErrorKind::InvalidInput, message)
    }

    #[test]
    fn located_errors_quote_their_line() {
        let src = "\u{feff}[stage.a]\nfrom = 1\n\n";
        let e = locate(invalid("`from` must be a string"), "build.toml", src, 2);
        assert_eq!(
            e.to_string(),
            "build.toml:2: `from` must be a string (in `from = 1`)"
        );
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e = locate(
            PluginError::not_found("no such image"),
            "build.toml",
            src,
            1,
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "build.toml:1: no such image (in `[stage.a]`)",
            "the byte order mark is not quoted"
        );
        // A blank line or one past the end: located, nothing quoted.
        let e = locate(invalid("x"), "f", src, 3);
        assert_eq!(e.to_string(), "f:3: x");
        assert_eq!(line_text(src, 9), None);
        assert_eq!(line_text(src, 0), None);
        // An error located elsewhere keeps its place.
        let inner = locate(invalid("bad"), "frag", "RUN x", 1);
        let e = locate(inner, "Dockerfile", src, 2);
        assert_eq!(e.to_string(), "frag:1: bad (in `RUN x`)");
    }

    #[test]
    fn long_lines_are_cut() {
        let long = "x".repeat(200);
        let cut = shorten(&long);
        assert_eq!(cut.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(shorten("short"), "short");
    }
}
