//! Image references: docker's normalization rules for registry images, and `oci-layout://`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use kiln_types::Digest;

use crate::Error;

const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";
const LAYOUT_SCHEME: &str = "oci-layout://";
const NAME_MAX: usize = 255;

/// Where an image comes from: a registry or an OCI image-layout directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `[registry/]repository[:tag][@digest]`, normalized as docker does.
    Registry(Reference),
    /// `oci-layout://<dir>[:tag][@digest]`.
    Layout(LayoutRef),
}

/// A normalized registry reference: `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Host with an optional port (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// The manifest digest; it wins over the tag when both are set.
    pub digest: Option<Digest>,
}

/// An image in an OCI image-layout directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayoutRef {
    /// The layout directory (holds `index.json` and `blobs/`).
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` to pick from `index.json`.
    pub tag: Option<String>,
    /// The manifest (or index) digest; it wins over the tag when both are set.
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The same image pinned to `digest`, keeping the tag for display.
    pub fn pinned(&self, digest: Digest) -> ImageRef {
        match self {
            ImageRef::Registry(r) => ImageRef::Registry(Reference {
                digest: Some(digest),
                ..r.clone()
            }),
            ImageRef::Layout(l) => ImageRef::Layout(LayoutRef {
                digest: Some(digest),
                ..l.clone()
            }),
        }
    }

    /// The digest the reference is pinned to, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Registry(r) => r.digest.as_ref(),
            ImageRef::Layout(l) => l.digest.as_ref(),
        }
    }
}

fn invalid(input: &str, why: impl Into<String>) -> Error {
    Error::InvalidReference {
        input: input.to_owned(),
        why: why.into(),
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(rest) = s.strip_prefix(LAYOUT_SCHEME) {
            return parse_layout(s, rest).map(ImageRef::Layout);
        }
        // BuildKit's named contexts spell registry images this way.
        let name = s.strip_prefix("docker-image://").unwrap_or(s);
        name.parse().map(ImageRef::Registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::Layout(l) => l.fmt(f),
        }
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

impl FromStr for Reference {
    type Err = Error;
    fn from_str(input: &str) -> Result<Self, Error> {
        if input.is_empty() {
            return Err(invalid(input, "empty reference"));
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(input, "contains white space"));
        }
        let (rest, digest) = match input.rsplit_once('@') {
            Some((rest, d)) => {
                let digest = d
                    .parse::<Digest>()
                    .map_err(|e| invalid(input, e.to_string()))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let (name, tag) = split_tag(rest);
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(
                    input,
                    format!(
                        "invalid tag {t:?} (allowed: letters, digits, '_', '.', '-'; at most 128)"
                    ),
                ));
            }
        }
        if name.len() > NAME_MAX {
            return Err(invalid(input, "name longer than 255 characters"));
        }
        let (mut registry, mut repository) = match name.split_once('/') {
            // docker's rule: the first component is a host if it looks like one.
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(|c| c.is_ascii_uppercase()) =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            registry = DOCKER_HUB.to_owned();
        }
        if !valid_registry(&registry) {
            return Err(invalid(
                input,
                format!("invalid registry host {registry:?}"),
            ));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid(input, "repository name must be lowercase"));
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(invalid(
                input,
                format!("invalid repository name {repository:?}"),
            ));
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

/// Splits `name[:tag]`: a colon is a tag separator only after the last `/` (else it is a port).
fn split_tag(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) if !s[i..].contains('/') => (&s[..i], Some(&s[i + 1..])),
        _ => (s, None),
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if word(c))
        && t.len() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    let bytes: Vec<char> = c.chars().collect();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(*first) || !alnum(*last) {
        return false;
    }
    let mut sep = String::new();
    for ch in bytes {
        if alnum(ch) {
            let ok = sep.is_empty()
                || sep == "."
                || sep == "_"
                || sep == "__"
                || sep.chars().all(|s| s == '-');
            if !ok {
                return false;
            }
            sep.clear();
        } else if matches!(ch, '.' | '_' | '-') {
            sep.push(ch);
        } else {
            return false;
        }
    }
    true
}

/// A host name, an IPv4 address or a bracketed IPv6 address, with an optional port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", port),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (r, ""),
        }
    };
    let host_ok = host.is_empty() && r.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    let port_ok = (port.is_empty() && !r.ends_with(':'))
        || (!port.is_empty() && port.len() <= 5 && port.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

fn parse_layout(input: &str, rest: &str) -> Result<LayoutRef, Error> {
    let (rest, digest) = match rest.rsplit_once('@') {
        Some((r, d)) if d.starts_with("sha256:") => {
            let digest = d
                .parse::<Digest>()
                .map_err(|e| invalid(input, e.to_string()))?;
            (r, Some(digest))
        }
        _ => (rest, None),
    };
    let (dir, tag) = match split_tag(rest) {
        (dir, Some(t)) if valid_tag(t) => (dir, Some(t.to_owned())),
        _ => (rest, None),
    };
    if dir.is_empty() {
        return Err(invalid(input, "missing layout directory"));
    }
    Ok(LayoutRef {
        dir: PathBuf::from(dir),
        tag,
        digest,
    })
}

/// Whether the registry is reached over plain http by default, as docker does: `localhost`,
/// `127.0.0.0/8` and `::1`, with or without a port.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    if host == "localhost" {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> Reference {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("not a registry ref: {other:?}"),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_normalization() {
        for (input, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/library/busybox:1", "docker.io/library/busybox:1"),
            (
                "index.docker.io/busybox:1.36",
                "docker.io/library/busybox:1.36",
            ),
            ("user/app", "docker.io/user/app:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost/x", "localhost/x:latest"),
            ("127.0.0.1:5000/x:tag", "127.0.0.1:5000/x:tag"),
            ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
            ("quay.io/a/b/c:v1.2-3_x", "quay.io/a/b/c:v1.2-3_x"),
            ("a-b/c__d.e", "docker.io/a-b/c__d.e:latest"),
        ] {
            let r = reg(input);
            assert_eq!(r.to_string(), want, "{input}");
            assert_eq!(reg(want), r, "round trip of {want}");
        }
    }

    #[test]
    fn digests() {
        let r = reg(&format!("ghcr.io/a/b@{D}"));
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().to_string(), D);
        assert_eq!(r.to_string(), format!("ghcr.io/a/b@{D}"));

        let r = reg(&format!("busybox:1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1@{D}"));
        assert_eq!(reg(&r.to_string()), r);
    }

    #[test]
    fn fields() {
        let r = reg("127.0.0.1:5000/x:tag");
        assert_eq!(
            r,
            Reference {
                registry: "127.0.0.1:5000".into(),
                repository: "x".into(),
                tag: Some("tag".into()),
                digest: None
            }
        );
        let r = reg("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn invalid_refs_are_rejected() {
        for bad in [
            "",
            "Busybox",
            "docker.io/Library/busybox",
            "busy box",
            "busybox ",
            "busybox:",
            "busybox:-x",
            "a//b",
            "-a/b",
            "a/b-",
            "a..b",
            "a___b",
            "busybox@sha256:abc",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "host:port/x",
            "[::zz]:5000/x",
        ] {
            let err = bad.parse::<ImageRef>().expect_err(bad);
            assert!(
                err.to_string().contains("invalid image reference"),
                "{bad}: {err}"
            );
        }
        let err = "Busybox".parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.contains("lowercase"), "{err}");
    }

    #[test]
    fn layout_refs() {
        let l = match "oci-layout:///abs/dir:tag".parse::<ImageRef>().unwrap() {
            ImageRef::Layout(l) => l,
            other => panic!("{other:?}"),
        };
        assert_eq!(l.dir, PathBuf::from("/abs/dir"));
        assert_eq!(l.tag.as_deref(), Some("tag"));
        assert_eq!(l.digest, None);

        let input = format!("oci-layout://dir@{D}");
        let r: ImageRef = input.parse().unwrap();
        let ImageRef::Layout(l) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(l.dir, PathBuf::from("dir"));
        assert_eq!(l.tag, None);
        assert_eq!(l.digest.unwrap().to_string(), D);
        assert_eq!(r.to_string(), input);

        for s in [
            "oci-layout:///a/b",
            "oci-layout:///a/b:v1",
            &format!("oci-layout:///a:b/c:v1@{D}"),
        ] {
            let r: ImageRef = s.parse().unwrap();
            assert_eq!(r.to_string(), *s);
            assert_eq!(r.to_string().parse::<ImageRef>().unwrap(), r);
        }
        assert!("oci-layout://".parse::<ImageRef>().is_err());
    }

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
