//! URL helpers for source primitives: the file name a download gets, and a remote shown without
//! its credentials.
//!
//! The file name rules are BuildKit's for `ADD <url>`: an explicit name wins, then the
//! `Content-Disposition` header's `filename*`/`filename`, then the last segment of the URL path;
//! each candidate is reduced to its last path component and refused when empty, `.` or `..`, so
//! that no name leaves the output directory.

/// `name` trimmed, when it is a single, usable file name: not empty, `.` or `..`, and without
/// `/`, `\` or NUL; else `None`.
pub fn safe_file_name(name: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        None
    } else {
        Some(name.to_owned())
    }
}

/// The name BuildKit gives a download whose URL path yields none (its Dockerfile frontend's
/// `ADD <url>` placeholder).
pub const UNNAMED: &str = "__unnamed__";

/// The last segment of the URL path (query and fragment removed), percent-decoded, as the
/// Dockerfile's `ADD <url>` names its download: `https://h/a/b.tar.gz?x` → `b.tar.gz`. `None`
/// (callers use [`UNNAMED`]) when it is empty, `.` or `..`, or holds a decoded `/` or NUL.
///
/// Unlike [`safe_file_name`], which judges names from headers and users, the segment is taken
/// as written: spaces are kept (`%20a` → ` a`) and so is a `\`, an ordinary character in a
/// Linux file name.
pub fn basename(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let decoded = percent_decode(last);
    let unusable =
        decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains(['/', '\0']);
    (!unusable).then_some(decoded)
}

/// The file name of a `Content-Disposition` header value: `filename*=UTF-8''...` (RFC 6266,
/// percent-decoded) wins over `filename=`; either is reduced to its last path component.
pub fn content_disposition_filename(header: &str) -> Option<String> {
    let mut plain = None;
    for part in header.split(';').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let v = v.trim().trim_matches('"');
                let v = v.split_once("''").map_or(v, |(_, rest)| rest);
                if let Some(n) = last_component(&percent_decode(v)) {
                    return Some(n);
                }
            }
            "filename" => plain = last_component(v.trim().trim_matches('"')),
            _ => {}
        }
    }
    plain
}

/// The last `/`- or `\`-separated component of `name`, when it is a [`safe_file_name`].
fn last_component(name: &str) -> Option<String> {
    safe_file_name(name.rsplit(['/', '\\']).next().unwrap_or_default())
}

/// `%XX` sequences decoded; a `%` not followed by two hex digits is kept as is, and bytes that
/// are not UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits make one byte: the cast cannot truncate.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `remote` with any `user:password@` of a `scheme://` URL replaced by `xxxxx@`, for messages
/// and logs: `https://u:p@host/r.git` → `https://xxxxx@host/r.git`. Other forms (`git@host:r`)
/// are returned unchanged.
pub fn redact_credentials(remote: &str) -> String {
    if let Some((scheme, rest)) = remote.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://xxxxx@{}", &rest[at + 1..]);
        }
    }
    remote.to_owned()
}

/// The repository name of a git remote, the name `git clone` gives its directory: the last path
/// segment without a trailing `/` or `.git` (`https://h/o/app.git` → `app`, `git@h:o/app` →
/// `app`, `/srv/app.git/` → `app`); `None` when nothing usable remains.
pub fn repository_name(remote: &str) -> Option<String> {
    let rest = remote.split_once("://").map_or(remote, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = rest.trim_end_matches('/');
    let rest = rest
        .strip_suffix(".git")
        .unwrap_or(rest)
        .trim_end_matches('/');
    // `git@host:owner/app` and `host:app`: the part after the scp-like `:` counts as a path.
    let last = rest.rsplit(['/', ':']).next().unwrap_or_default();
    if rest.len() == last.len() && remote.contains("://") {
        // Only an authority (`https://host`): no repository.
        return None;
    }
    safe_file_name(&percent_decode(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_basenames() {
        assert_eq!(
            basename("https://h/a/b.tar.gz?x#y").as_deref(),
            Some("b.tar.gz")
        );
        assert_eq!(basename("https://h/a%20b").as_deref(), Some("a b"));
        assert_eq!(basename("https://h/"), None);
        assert_eq!(basename("https://h/x/.."), None);
        assert_eq!(basename("https://h/%2e%2e"), None);
        assert_eq!(basename("https://h"), None);
        assert_eq!(
            basename("https://h/caf%C3%A9%zz").as_deref(),
            Some("café%zz")
        );
        assert_eq!(basename("https://h/a%2Fb"), None, "a decoded / is refused");
        assert_eq!(basename("https://h/a%00"), None, "so is a NUL");
    }

    #[test]
    fn url_basenames_keep_what_safe_file_name_trims_or_refuses() {
        // The Dockerfile frontend's (BuildKit's) name for `ADD <url>`: the segment as written.
        assert_eq!(basename("https://h/%20a%20").as_deref(), Some(" a "));
        assert_eq!(safe_file_name(" a ").as_deref(), Some("a"));
        assert_eq!(basename("https://h/a%5Cb").as_deref(), Some("a\\b"));
        assert_eq!(safe_file_name("a\\b"), None);
        assert_eq!(basename("https://h/%20").as_deref(), Some(" "));
    }

    #[test]
    fn disposition_names() {
        assert_eq!(
            content_disposition_filename("attachment; filename=\"../../x.txt\"").as_deref(),
            Some("x.txt")
        );
        assert_eq!(
            content_disposition_filename("attachment; filename=a; filename*=UTF-8''b%20c")
                .as_deref(),
            Some("b c")
        );
        assert_eq!(
            content_disposition_filename("attachment; FILENAME=a.bin").as_deref(),
            Some("a.bin")
        );
        assert_eq!(content_disposition_filename("inline"), None);
        assert_eq!(
            content_disposition_filename("attachment; filename=\"..\""),
            None
        );
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%41%4a%"), "aAJ%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redact_credentials("https://u:p@host/r.git"),
            "https://xxxxx@host/r.git"
        );
        assert_eq!(redact_credentials("git@host:r.git"), "git@host:r.git");
        assert_eq!(
            redact_credentials("https://host/a@b"),
            "https://host/a@b",
            "an @ in the path is not userinfo"
        );
    }

    #[test]
    fn repository_names() {
        for (remote, want) in [
            ("https://github.com/o/app.git", Some("app")),
            ("https://github.com/o/app", Some("app")),
            ("https://github.com/o/app.git/", Some("app")),
            ("https://github.com/o/app.git#main:sub", Some("app")),
            ("git@github.com:o/app.git", Some("app")),
            ("host:app", Some("app")),
            ("file:///srv/git/app.git", Some("app")),
            ("/srv/app/", Some("app")),
            ("https://host", None),
            ("https://host/", None),
        ] {
            assert_eq!(repository_name(remote).as_deref(), want, "{remote}");
        }
    }
}
