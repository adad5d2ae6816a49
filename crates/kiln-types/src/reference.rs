//! Image references: kiln's one parser for `[registry/]repository[:tag][@digest]`, following
//! docker's `distribution/reference` grammar and normalization (`ParseNormalizedNamed`), and
//! for `oci-layout://<dir>[:tag][@digest]`.
//!
//! The grammar (docker's), checked by hand rather than by a regex engine so that the work is
//! linear in the input and nothing here needs a dependency:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [domain "/"] path
//! domain           := host [":" port]             port := [0-9]+
//! host             := domain-name | "[" [a-fA-F0-9:]+ "]"
//! domain-name      := component ("." component)*  component := [a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?
//! path             := path-component ("/" path-component)*        at most 255 characters
//! path-component   := [a-z0-9]+ (separator [a-z0-9]+)*            separator := [._] | "__" | "-"+
//! tag              := [\w][\w.-]{0,127}
//! digest           := "sha256:" [a-f0-9]{64}                      (the only algorithm kiln uses)
//! ```
//!
//! Normalization: the first path element is a registry when it contains `.` or `:`, is
//! `localhost`, or has an upper-case letter; otherwise the registry is `docker.io`.
//! `index.docker.io` is `docker.io`, and a one-element repository on `docker.io` gains
//! `library/`. A reference of neither tag nor digest means `:latest`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";
/// The scheme of an image in an OCI image-layout directory.
pub const LAYOUT_SCHEME: &str = "oci-layout://";
/// Longest repository path, docker's `RepositoryNameTotalLengthMax`.
pub const NAME_MAX: usize = 255;
/// Longest tag, from docker's tag grammar.
pub const TAG_MAX: usize = 128;
/// Longest `oci-layout://` directory: Linux's `PATH_MAX`.
pub const LAYOUT_DIR_MAX: usize = 4096;

const LEGACY_DOCKER_HUB: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// How much of a rejected input an error message repeats.
const SHOWN_MAX: usize = 100;

/// A string that is not a valid image reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input}: {why}")]
pub struct ReferenceError {
    /// The input, quoted and shortened when long (it may come from an untrusted file).
    input: String,
    why: String,
}

impl ReferenceError {
    fn new(input: &str, why: impl Into<String>) -> Self {
        ReferenceError {
            input: shown(input),
            why: why.into(),
        }
    }

    /// What is wrong, without the input.
    pub fn why(&self) -> &str {
        &self.why
    }
}

/// `s` quoted, cut to its first characters when long: errors repeat inputs that untrusted
/// files supply, and a megabyte of it helps no one.
fn shown(s: &str) -> String {
    if s.len() <= SHOWN_MAX {
        return format!("{s:?}");
    }
    let mut end = SHOWN_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// A normalized registry reference: `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Host with an optional port (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag. [`Reference::from_str`] fills in `latest` when neither a tag nor a digest was
    /// given; [`Reference::parse_normalized`] keeps it as written.
    pub tag: Option<String>,
    /// The manifest digest; it wins over the tag when both are set.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `input` as docker's `ParseNormalizedNamed` does: registry and
    /// `library/` filled in, the tag left as written (`None` when absent).
    pub fn parse_normalized(input: &str) -> Result<Reference, ReferenceError> {
        let err = |why: String| ReferenceError::new(input, why);
        if input.is_empty() {
            return Err(err("empty reference".to_owned()));
        }
        if input.len() == 64 && input.bytes().all(is_lower_hex) {
            return Err(err(
                "a 64-character hexadecimal string is an image id, not a repository name"
                    .to_owned(),
            ));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(parse_digest(d).map_err(err)?)),
            None => (input, None),
        };
        let (registry, remote) = split_registry(rest);
        // The path has no `:`, so the first one after the registry starts the tag.
        let (path, tag) = match remote.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (remote, None),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err(format!(
                "repository name {} must be lowercase",
                shown(path)
            )));
        }
        if !valid_registry(registry) {
            return Err(err(format!("invalid registry host {}", shown(registry))));
        }
        let registry = if registry == LEGACY_DOCKER_HUB {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_owned()
        };
        if repository.len() > NAME_MAX {
            return Err(err(format!(
                "repository name is {} characters long, more than the {NAME_MAX} allowed",
                repository.len()
            )));
        }
        if !repository.split('/').all(valid_path_component) {
            return Err(err(format!(
                "invalid repository name {} (components are lower-case letters and digits \
                 separated by '.', '_', '__' or dashes)",
                shown(path)
            )));
        }
        if let Some(t) = tag {
            check_tag(t).map_err(err)?;
        }
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as docker shows it: without `docker.io/`, and without `library/` for
    /// official images (`docker.io/library/busybox` → `busybox`).
    pub fn familiar_name(&self) -> String {
        if self.registry != DOCKER_HUB {
            return self.name();
        }
        match self.repository.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.repository.clone(),
        }
    }

    /// The familiar name with its tag (`latest` when none), as docker's `RepoTags` list it.
    pub fn familiar_tagged(&self) -> String {
        format!(
            "{}:{}",
            self.familiar_name(),
            self.tag.as_deref().unwrap_or(DEFAULT_TAG)
        )
    }
}

/// A `# syntax=` (or `BUILDKIT_SYNTAX`) value as (familiar repository name, tag as written,
/// digest): `docker/dockerfile:1.7` → (`docker/dockerfile`, `1.7`, none); `docker.io/x/y@sha256:…`
/// → (`x/y`, none, the digest); `localhost:5000/fe` → (`localhost:5000/fe`, none, none).
pub fn split_familiar(
    value: &str,
) -> Result<(String, Option<String>, Option<Digest>), ReferenceError> {
    let r = Reference::parse_normalized(value)?;
    Ok((r.familiar_name(), r.tag, r.digest))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// [`Reference::parse_normalized`], with `latest` when neither tag nor digest is given.
    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let mut r = Reference::parse_normalized(input)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_owned());
        }
        Ok(r)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An image in an OCI image-layout directory: `oci-layout://<dir>[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayoutRef {
    /// The layout directory (holds `index.json` and `blobs/`).
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` to pick from `index.json`.
    pub tag: Option<String>,
    /// The manifest (or index) digest; it wins over the tag when both are set.
    pub digest: Option<Digest>,
}

impl FromStr for LayoutRef {
    type Err = ReferenceError;

    /// Parses `oci-layout://<dir>[:tag][@sha256:…]`. A directory may hold `:` and `@`: only a
    /// valid tag after the last `:` (with no `/` after it) is a tag, and only `@sha256:…` a
    /// digest.
    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let err = |why: String| ReferenceError::new(input, why);
        let Some(rest) = input.strip_prefix(LAYOUT_SCHEME) else {
            return Err(err(format!("expected {LAYOUT_SCHEME}<dir>")));
        };
        let (rest, digest) = match rest.rsplit_once('@') {
            Some((r, d)) if d.starts_with("sha256:") => (r, Some(parse_digest(d).map_err(err)?)),
            _ => (rest, None),
        };
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((dir, t)) if !t.contains('/') && check_tag(t).is_ok() => (dir, Some(t)),
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err(err("missing layout directory".to_owned()));
        }
        if dir.len() > LAYOUT_DIR_MAX {
            return Err(err(format!(
                "layout directory is {} bytes long, more than the {LAYOUT_DIR_MAX} allowed",
                dir.len()
            )));
        }
        Ok(LayoutRef {
            dir: PathBuf::from(dir),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LAYOUT_SCHEME}{}", self.dir.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// `sha256:` and 64 lower-case hex digits; the error names the problem, not the (long) input.
fn parse_digest(d: &str) -> Result<Digest, String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        let algorithm = d.split_once(':').map_or(d, |(a, _)| a);
        return Err(format!(
            "unsupported digest algorithm {} (only sha256 is supported)",
            shown(algorithm)
        ));
    };
    Digest::from_hex(hex)
        .map_err(|_| "invalid digest: expected sha256: and 64 lower-case hex digits".to_owned())
}

/// Splits `name` into (registry, rest) as docker's `splitDockerDomain` does: the first element
/// is a registry when it contains `.` or `:`, is `localhost`, or has an upper-case letter.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

/// `[\w][\w.-]{0,127}`
fn check_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if t.len() > TAG_MAX {
        return Err(format!(
            "tag is {} characters long, more than the {TAG_MAX} allowed",
            t.len()
        ));
    }
    let mut bytes = t.bytes();
    let ok = matches!(bytes.next(), Some(b) if word(b))
        && bytes.all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {} (letters, digits, '_', '.' and '-', not starting with '.' or '-')",
            shown(t)
        ))
    }
}

/// `[a-z0-9]+ (([._]|__|-+) [a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // The separator run between two alphanumeric runs.
    let mut sep: &[u8] = &[];
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if alnum(b) {
            let ok = matches!(sep, [] | [b'.'] | [b'_'] | [b'_', b'_'])
                || sep.iter().all(|&s| s == b'-');
            if !ok {
                return false;
            }
            sep = &[];
            start = i + 1;
        } else if matches!(b, b'.' | b'_' | b'-') {
            sep = &bytes[start..=i];
        } else {
            return false;
        }
    }
    true
}

/// `host[:port]`: a domain name or a bracketed IPv6 address, and digits for the port.
fn valid_registry(r: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, after)) => (
                !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':'),
                after,
            ),
            None => return false,
        }
    } else {
        let (host, port) = match r.find(':') {
            Some(i) => r.split_at(i),
            None => (r, ""),
        };
        (
            !host.is_empty() && host.split('.').all(valid_domain_component),
            port,
        )
    };
    let port_ok = match port.strip_prefix(':') {
        Some(p) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    host_ok && port_ok
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
fn valid_domain_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalizes_like_docker() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox:1.36",
                "docker.io/library/busybox:1.36",
            ),
            ("index.docker.io/a/b", "docker.io/a/b:latest"),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost/x", "localhost/x:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            // A single element is never a host, even with a colon: that is a tag.
            ("localhost:5000", "docker.io/library/localhost:5000"),
            ("localhost", "docker.io/library/localhost:latest"),
            ("Example.com/a", "Example.com/a:latest"),
            ("UPPER/a", "UPPER/a:latest"),
            ("127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag"),
            ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
            ("[fe80::1]/a", "[fe80::1]/a:latest"),
            ("registry-1.docker.io/a", "registry-1.docker.io/a:latest"),
            ("quay.io/a/b/c:v1.2-3_x", "quay.io/a/b/c:v1.2-3_x"),
            ("a-b/c__d.e", "docker.io/a-b/c__d.e:latest"),
            ("a--b/c", "docker.io/a--b/c:latest"),
            ("a:_X", "docker.io/library/a:_X"),
        ] {
            let r = parse(input);
            assert_eq!(r.to_string(), want, "{input}");
            assert_eq!(parse(want), r, "round trip of {want}");
        }
    }

    #[test]
    fn digests_and_tags_together() {
        let r = parse(&format!("ghcr.io/a/b@{D}"));
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("ghcr.io", "a/b")
        );
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.map(|d| d.to_string()).as_deref(), Some(D));
        let r = parse(&format!("busybox:1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1@{D}"));
        // Without a default tag: as written.
        let r = Reference::parse_normalized("busybox").unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn familiar_names() {
        for (input, want) in [
            ("busybox", "busybox"),
            ("docker.io/library/busybox:1", "busybox"),
            ("docker/dockerfile:1.7", "docker/dockerfile"),
            ("docker.io/docker/dockerfile", "docker/dockerfile"),
            ("docker.io/library/a/b", "library/a/b"),
            ("localhost:5000/fe", "localhost:5000/fe"),
        ] {
            assert_eq!(parse(input).familiar_name(), want, "{input}");
        }
        assert_eq!(parse("busybox").familiar_tagged(), "busybox:latest");
        assert_eq!(
            parse("localhost:5000/app:v2").familiar_tagged(),
            "localhost:5000/app:v2"
        );
        let (name, tag, digest) = split_familiar(&format!("docker/dockerfile:1.7@{D}")).unwrap();
        assert_eq!(name, "docker/dockerfile");
        assert_eq!(tag.as_deref(), Some("1.7"));
        assert_eq!(digest.map(|d| d.to_string()).as_deref(), Some(D));
        assert_eq!(
            split_familiar("dockerfile").unwrap(),
            ("dockerfile".to_owned(), None, None)
        );
    }

    #[test]
    fn invalid_references_say_why() {
        for (bad, why) in [
            ("", "empty"),
            ("Busybox", "must be lowercase"),
            ("docker.io/Library/busybox", "must be lowercase"),
            ("busy box", "invalid repository name"),
            ("busybox\n", "invalid repository name"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox:.x", "invalid tag"),
            ("busybox:a:b", "invalid tag"),
            ("a//b", "invalid repository name"),
            ("a/", "invalid repository name"),
            ("-a/b", "invalid repository name"),
            ("a/b-", "invalid repository name"),
            ("a..b", "invalid repository name"),
            ("a___b", "invalid repository name"),
            ("a_-b", "invalid repository name"),
            ("a.b/c..d", "invalid repository name"),
            ("busybox@sha256:abc", "invalid digest"),
            (
                "busybox@md5:0123456789abcdef0123456789abcdef",
                "unsupported digest",
            ),
            ("busybox@@sha256:abc", "unsupported digest"),
            ("host:port/x", "invalid registry host"),
            ("a.-b.com/x", "invalid registry host"),
            ("a..com/x", "invalid registry host"),
            ("host:/x", "invalid registry host"),
            ("[::zz]:5000/x", "invalid registry host"),
            ("[::1/x", "invalid registry host"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "image id",
            ),
        ] {
            let err = bad.parse::<Reference>().expect_err(bad).to_string();
            assert!(err.starts_with("invalid image reference"), "{bad:?}: {err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn length_limits_follow_docker() {
        // The repository path may be 255 characters (`library/` included), not one more.
        let ok = format!("a/{}", "b".repeat(NAME_MAX - 2));
        assert_eq!(parse(&ok).repository.len(), NAME_MAX);
        let long = format!("a/{}", "b".repeat(NAME_MAX - 1));
        let err = long.parse::<Reference>().unwrap_err().to_string();
        assert!(
            err.contains("256 characters long, more than the 255 allowed"),
            "{err}"
        );
        let err = "x".repeat(NAME_MAX - 7).parse::<Reference>().unwrap_err();
        assert!(err.why().contains("more than the 255"), "{err}");
        // The registry host does not count, as in docker.
        let r = parse(&format!("{}.example.com/x", "h".repeat(300)));
        assert_eq!(r.repository, "x");

        let tag = "t".repeat(TAG_MAX);
        assert_eq!(
            parse(&format!("a:{tag}")).tag.as_deref(),
            Some(tag.as_str())
        );
        let err = format!("a:{tag}x").parse::<Reference>().unwrap_err();
        assert!(
            err.why().contains("129 characters long, more than the 128"),
            "{err}"
        );
    }

    #[test]
    fn huge_inputs_give_short_errors() {
        let huge = format!("{}A", "a".repeat(1 << 20));
        let err = huge.parse::<Reference>().unwrap_err().to_string();
        assert!(err.len() < 600, "{} bytes of error", err.len());
        assert!(err.contains("(1048577 bytes)"), "{err}");
    }

    #[test]
    fn layout_refs() {
        let l: LayoutRef = "oci-layout:///abs/dir:tag".parse().unwrap();
        assert_eq!(l.dir, PathBuf::from("/abs/dir"));
        assert_eq!(l.tag.as_deref(), Some("tag"));
        assert_eq!(l.digest, None);
        let l: LayoutRef = format!("oci-layout://dir@{D}").parse().unwrap();
        assert_eq!((l.dir.to_str(), l.tag.as_deref()), (Some("dir"), None));
        assert_eq!(l.digest.map(|d| d.to_string()).as_deref(), Some(D));
        for s in [
            "oci-layout:///a/b".to_owned(),
            "oci-layout:///a/b:v1".to_owned(),
            format!("oci-layout:///a:b/c:v1@{D}"),
        ] {
            let l: LayoutRef = s.parse().unwrap();
            assert_eq!(l.to_string(), s);
        }
        // Not a tag: a colon followed by a path, or by what no tag can be.
        let l: LayoutRef = "oci-layout:///a:b/c".parse().unwrap();
        assert_eq!((l.dir.to_str(), l.tag), (Some("/a:b/c"), None));
        assert!("oci-layout://".parse::<LayoutRef>().is_err());
        assert!("/dir".parse::<LayoutRef>().is_err());
        assert!("oci-layout://d@sha256:12".parse::<LayoutRef>().is_err());
        let long = format!("oci-layout:///{}", "d".repeat(LAYOUT_DIR_MAX));
        let err = long.parse::<LayoutRef>().unwrap_err();
        assert!(err.why().contains("more than the 4096 allowed"), "{err}");
    }
}
