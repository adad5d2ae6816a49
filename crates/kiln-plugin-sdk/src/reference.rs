//! Image references as BuildKit writes them into the graph: normalized (`docker.io/library/`,
//! `:latest`) and pinned to the manifest digest the host resolved. The parsing is
//! `kiln_types::reference`'s, the same the host uses to pull, so a frontend names an image the
//! way the host fetches it, and two frontends naming the same image write the same vertex.

use kiln_types::reference::{LayoutRef, Reference, LAYOUT_SCHEME};

/// `alpine` → `docker.io/library/alpine:latest`; `localhost:5000/x` → `localhost:5000/x:latest`.
/// References with a scheme (`oci-layout://...`) are left alone, and so are those that do not
/// parse: the host parses every reference before it resolves one, and refuses those.
pub fn normalize(reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    reference
        .parse::<Reference>()
        .map_or_else(|_| reference.to_owned(), |r| r.to_string())
}

/// The [`normalize`]d reference pinned to `digest` (the manifest digest the host answered),
/// unless it already names one. An `oci-layout://DIR[:tag]` becomes `oci-layout://DIR@digest`,
/// so that the graph (and with it the cache key) changes when the layout's image does.
pub fn pinned(reference: &str, digest: &str) -> String {
    if reference.starts_with(LAYOUT_SCHEME) {
        return match reference.parse::<LayoutRef>() {
            Ok(l) if l.digest.is_none() && !digest.is_empty() => {
                format!("{LAYOUT_SCHEME}{}@{digest}", l.dir.display())
            }
            Ok(l) => l.to_string(),
            Err(_) => reference.to_owned(),
        };
    }
    let n = normalize(reference);
    if n.contains('@') || n.contains("://") || digest.is_empty() {
        n
    } else {
        format!("{n}@{digest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(normalize("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(normalize("me/app:1"), "docker.io/me/app:1");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("ghcr.io/a/b@sha256:00"), "ghcr.io/a/b@sha256:00");
        assert_eq!(normalize("oci-layout://x:y"), "oci-layout://x:y");
        assert_eq!(
            pinned("busybox:1", "sha256:ab"),
            "docker.io/library/busybox:1@sha256:ab"
        );
        assert_eq!(
            pinned("oci-layout:///l/dir:v1", "sha256:ab"),
            "oci-layout:///l/dir@sha256:ab"
        );
        assert_eq!(
            pinned("oci-layout:///l/dir", "sha256:ab"),
            "oci-layout:///l/dir@sha256:ab"
        );
        assert_eq!(
            pinned("oci-layout:///l/d@sha256:cd", "sha256:ab"),
            "oci-layout:///l/d@sha256:cd"
        );
        assert_eq!(pinned("busybox", ""), "docker.io/library/busybox:latest");
    }

    #[test]
    fn docker_hub_spellings_normalize_as_the_host_does() {
        // The graph must name an image the way the host pulls it, whatever the spelling.
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for spelling in [
            "busybox",
            "library/busybox",
            "docker.io/busybox",
            "index.docker.io/busybox",
            "docker.io/library/busybox:latest",
        ] {
            assert_eq!(
                pinned(spelling, d),
                format!("docker.io/library/busybox:latest@{d}"),
                "{spelling}"
            );
        }
    }
}
