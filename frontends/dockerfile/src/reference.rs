//! Image references as BuildKit writes them into the graph: normalized (`docker.io/library/`,
//! `:latest`) and pinned to the manifest digest the host resolved.

/// `alpine` → `docker.io/library/alpine:latest`; `localhost:5000/x` → `localhost:5000/x:latest`.
/// References with a scheme (`oci-layout://...`) are left alone.
pub(crate) fn normalize(reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_owned();
    }
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let has_domain = name.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    });
    let mut full = if has_domain {
        name.to_owned()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    let has_tag = last.contains(':');
    match digest {
        Some(d) => {
            full.push('@');
            full.push_str(d);
        }
        None if !has_tag => full.push_str(":latest"),
        None => {}
    }
    full
}

/// The normalized reference pinned to `digest`, unless it already names one. An
/// `oci-layout://DIR[:tag]` becomes `oci-layout://DIR@digest`, so that the graph (and with it
/// the cache key) changes when the layout's image does.
pub(crate) fn pinned(reference: &str, digest: &str) -> String {
    let n = normalize(reference);
    if n.contains('@') || digest.is_empty() {
        return n;
    }
    if let Some(rest) = n.strip_prefix("oci-layout://") {
        let dir = match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => dir,
            _ => rest,
        };
        return format!("oci-layout://{dir}@{digest}");
    }
    if n.contains("://") {
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
    }
}
