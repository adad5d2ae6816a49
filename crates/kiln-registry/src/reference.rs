//! Where an image comes from: a registry reference or an `oci-layout://` directory. Both are
//! parsed by `kiln_types::reference`, kiln's one reference parser (docker's grammar, limits and
//! normalization); this module only tells the two apart.

use std::fmt;
use std::str::FromStr;

use kiln_types::reference::LAYOUT_SCHEME;
pub use kiln_types::reference::{LayoutRef, Reference};
use kiln_types::Digest;

use crate::Error;

/// Where an image comes from: a registry or an OCI image-layout directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `[registry/]repository[:tag][@digest]`, normalized as docker does.
    Registry(Reference),
    /// `oci-layout://<dir>[:tag][@digest]`.
    Layout(LayoutRef),
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

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.starts_with(LAYOUT_SCHEME) {
            return Ok(ImageRef::Layout(s.parse()?));
        }
        // BuildKit's named contexts spell registry images this way.
        let name = s.strip_prefix("docker-image://").unwrap_or(s);
        Ok(ImageRef::Registry(name.parse()?))
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

/// Whether the registry is reached over plain http by default, as docker does: `localhost`,
/// `127.0.0.0/8` and `::1`, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
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
    use std::path::PathBuf;

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
    fn limits_follow_docker() {
        // docker counts the normalized repository path (`library/` included), not the host.
        let err = "x".repeat(250).parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.contains("more than the 255 allowed"), "{err}");
        let long_host = format!("{}.example.com/x", "h".repeat(300));
        assert!(matches!(
            long_host.parse::<ImageRef>().unwrap(),
            ImageRef::Registry(r) if r.repository == "x"
        ));
        // A reference from an untrusted file is not repeated whole in the error.
        let huge = format!("{}!", "a".repeat(1 << 20));
        let err = huge.parse::<ImageRef>().unwrap_err().to_string();
        assert!(err.len() < 600, "{} bytes of error", err.len());
        // registry-1.docker.io is a registry of its own for docker: no `library/` there.
        assert_eq!(
            reg("registry-1.docker.io/busybox").to_string(),
            "registry-1.docker.io/busybox:latest"
        );
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
