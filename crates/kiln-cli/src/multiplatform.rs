//! `--platform a,b,...`: the list buildx takes, and what scripts read back from a
//! multi-platform build (the image index's digest, as buildx reports it).

use anyhow::{bail, Context, Result};
use kiln_types::image::{MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX};
use kiln_types::Platform;

use crate::output::BuiltImage;

/// Parses `--platform`'s comma-separated list as buildx does: each entry normalized
/// (containerd's names: `arm64` is `linux/arm64`, `arm` is `linux/arm/v7`), repeats dropped
/// (first one kept), order kept. An empty entry is an error.
pub fn parse_platforms(text: &str) -> Result<Vec<Platform>> {
    let mut out: Vec<Platform> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            bail!("invalid --platform {text:?}: empty platform in the list");
        }
        let p = part
            .parse::<Platform>()
            .with_context(|| format!("invalid --platform {part:?}"))?
            .normalize();
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Whether `media_type` is an image index (OCI) or a manifest list (docker).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_MANIFEST_LIST
}

/// What a multi-platform build reports to `--metadata-file` and `--iidfile`: the index
/// (`containerimage.digest`, `containerimage.descriptor`), and as image ID the index digest,
/// as buildx falls back to it when BuildKit reports no config digest.
pub fn built_index(
    index: Option<&kiln_types::image::Descriptor>,
    created: &str,
) -> Option<BuiltImage> {
    index.map(|d| BuiltImage {
        manifest: d.clone(),
        config: d.digest,
        created: created.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_lists_are_normalized_and_deduplicated() {
        let got: Vec<String> = parse_platforms("linux/amd64, arm64,linux/arm64/v8,arm,s390x")
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]
        );
        assert_eq!(parse_platforms("linux/amd64").unwrap().len(), 1);
        let err = parse_platforms("linux/amd64,").unwrap_err().to_string();
        assert!(err.contains("empty platform"), "{err}");
        assert!(parse_platforms("linux/amd64,not a platform/x/y/z").is_err());
    }

    #[test]
    fn index_media_types() {
        assert!(is_index(MEDIA_TYPE_INDEX));
        assert!(is_index(MEDIA_TYPE_DOCKER_MANIFEST_LIST));
        assert!(!is_index(kiln_types::image::MEDIA_TYPE_MANIFEST));
    }
}
