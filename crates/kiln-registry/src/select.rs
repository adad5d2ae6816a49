//! Manifest documents as fetched (OCI or docker schema 2, image or index), image configs, and
//! platform choice. Every document is size-checked before it is parsed.

use kiln_types::image::{
    Descriptor, ImageConfig, Index, Manifest, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST,
};
use kiln_types::platform::PlatformMatcher;
use kiln_types::Platform;

/// The manifest media types accepted on pull.
pub(crate) const ACCEPTED: &[&str] = &[
    MEDIA_TYPE_MANIFEST,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
];

/// How deep nested indexes are followed before giving up (a loop would otherwise never end).
pub(crate) const MAX_NESTING: usize = 4;

/// Largest manifest or index accepted, in bytes: 4 MiB, the distribution registry's own limit
/// on manifests it stores (containerd's resolver allows about as much, `4 * 1048 * 1048`).
/// Real manifests are a few KiB; an index of hundreds of platforms stays far below.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Largest image config accepted, in bytes: 8 MiB. Configs grow with history entries and
/// labels, but real ones stay under a few hundred KiB.
pub const MAX_CONFIG_SIZE: u64 = 8 << 20;

/// A parsed manifest document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    /// An image manifest.
    Manifest(Manifest),
    /// An image index (docker manifest list).
    Index(Index),
}

/// `what` of `size` bytes is refused when above `max`; the error says both sizes.
pub(crate) fn check_size(what: &str, size: u64, max: u64) -> Result<(), String> {
    if size > max {
        return Err(format!(
            "{what} is {size} bytes, more than the {max} bytes ({} MiB) kiln accepts",
            max >> 20
        ));
    }
    Ok(())
}

/// Parses a manifest or index (at most [`MAX_MANIFEST_SIZE`] bytes); the error says why it is
/// not usable. JSON nesting is bounded by serde_json's recursion limit (128 levels), which
/// `from_slice` always applies.
pub fn parse_document(bytes: &[u8]) -> Result<Document, String> {
    check_size("manifest", bytes.len() as u64, MAX_MANIFEST_SIZE)?;
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
    if schema != Some(2) {
        return Err(format!(
            "unsupported manifest schema version {} (only schema 2 / OCI manifests are supported)",
            schema.map_or_else(|| "(none)".to_owned(), |s| s.to_string())
        ));
    }
    let media_type = value.get("mediaType").and_then(|v| v.as_str());
    let is_index = match media_type {
        Some(MEDIA_TYPE_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST) => true,
        Some(MEDIA_TYPE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST) => false,
        Some(other) => return Err(format!("unsupported manifest media type {other}")),
        // OCI makes mediaType optional; the members tell the two apart.
        None => value.get("manifests").is_some(),
    };
    if is_index {
        serde_json::from_value(value)
            .map(Document::Index)
            .map_err(|e| format!("invalid image index: {e}"))
    } else {
        serde_json::from_value(value)
            .map(Document::Manifest)
            .map_err(|e| format!("invalid image manifest: {e}"))
    }
}

/// Parses an image config (at most [`MAX_CONFIG_SIZE`] bytes); the error says why it is not
/// usable.
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, String> {
    check_size("image config", bytes.len() as u64, MAX_CONFIG_SIZE)?;
    serde_json::from_slice(bytes).map_err(|e| format!("invalid image config: {e}"))
}

/// A manifest's layers must be the config's `rootfs.diff_ids`, one for one, as containerd
/// checks: the diff ids are what the image says its layers unpack to.
pub(crate) fn check_layer_count(manifest: &Manifest, config: &ImageConfig) -> Result<(), String> {
    let (layers, diff_ids) = (manifest.layers.len(), config.rootfs.diff_ids.len());
    if layers != diff_ids {
        return Err(format!(
            "the manifest lists {layers} layers but the image config lists {diff_ids} diff ids \
             (rootfs.diff_ids): the image is corrupt"
        ));
    }
    Ok(())
}

/// Picks the manifest for `want` from an index, or returns the platforms it offers. The choice
/// is containerd's `platforms.Only(want)`, as BuildKit pulls: the best entry among those a
/// `want` machine runs (`linux/arm64` takes `arm64/v8`, and 32-bit `arm/v8` .. `arm/v5` when no
/// arm64 image is there; `linux/amd64` takes `386` but never `amd64/v3`, whose instructions
/// an amd64 machine may lack), the first of equally good ones.
pub(crate) fn select_platform<'a>(
    index: &'a Index,
    want: &Platform,
) -> Result<&'a Descriptor, Vec<String>> {
    // An index with one entry without a platform (e.g. an OCI layout of one image) is that image.
    if let [only] = index.manifests.as_slice() {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let with_platform: Vec<(&Descriptor, &Platform)> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| (d, p)))
        .collect();
    let matcher = PlatformMatcher::only(want);
    if let Some(i) = matcher.best(with_platform.iter().map(|(_, p)| *p)) {
        return Ok(with_platform[i].0);
    }
    Err(with_platform
        .iter()
        .map(|(_, p)| *p)
        // attestation manifests carry unknown/unknown
        .filter(|p| p.os != "unknown")
        .map(ToString::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_types::Digest;

    fn index(platforms: &[&str]) -> Index {
        Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.into()),
            manifests: platforms
                .iter()
                .map(|p| {
                    let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(p.as_bytes()), 1);
                    d.platform = Some(p.parse().unwrap());
                    d
                })
                .collect(),
            annotations: Default::default(),
        }
    }

    fn pick(idx: &Index, want: &str) -> Result<String, Vec<String>> {
        select_platform(idx, &want.parse().unwrap())
            .map(|d| d.platform.as_ref().unwrap().to_string())
    }

    #[test]
    fn platform_matching() {
        let idx = index(&[
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v6",
            "linux/arm/v7",
        ]);
        assert_eq!(pick(&idx, "linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), "linux/arm64/v8");
        assert_eq!(pick(&idx, "linux/arm64/v8").unwrap(), "linux/arm64/v8");
        assert_eq!(pick(&idx, "linux/arm").unwrap(), "linux/arm/v7");
        assert_eq!(pick(&idx, "linux/arm/v6").unwrap(), "linux/arm/v6");
        assert_eq!(
            pick(&idx, "linux/s390x").unwrap_err(),
            vec![
                "linux/amd64",
                "linux/arm64/v8",
                "linux/arm/v6",
                "linux/arm/v7"
            ]
        );
        let idx = index(&["linux/arm64"]);
        assert_eq!(pick(&idx, "linux/arm64/v8").unwrap(), "linux/arm64");
        // A v9 core runs v8 code (containerd's table), a v8.2 one v8.1 and v8 code.
        assert_eq!(pick(&idx, "linux/arm64/v9").unwrap(), "linux/arm64");
        assert_eq!(pick(&idx, "linux/arm64/v8.2").unwrap(), "linux/arm64");
    }

    /// containerd's `platforms.Only`, which BuildKit pulls with: an amd64 machine does not take
    /// an amd64/v3 image (it may lack the instructions), but an amd64/v3 one takes plain amd64.
    #[test]
    fn amd64_does_not_take_a_higher_micro_architecture() {
        let idx = index(&["linux/amd64/v3"]);
        assert_eq!(
            pick(&idx, "linux/amd64").unwrap_err(),
            vec!["linux/amd64/v3"]
        );
        let idx = index(&["linux/amd64/v2", "linux/amd64", "linux/amd64/v3"]);
        assert_eq!(pick(&idx, "linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(pick(&idx, "linux/amd64/v2").unwrap(), "linux/amd64/v2");
        assert_eq!(pick(&idx, "linux/amd64/v4").unwrap(), "linux/amd64/v3");
        // Without any amd64 image, an amd64 machine runs 386 code.
        let idx = index(&["linux/arm64", "linux/386"]);
        assert_eq!(pick(&idx, "linux/amd64").unwrap(), "linux/386");
        assert_eq!(pick(&idx, "linux/amd64/v1").unwrap(), "linux/386");
    }

    /// arm64 takes 32-bit arm images (arm/v8 first, then v7, v6, v5) when there is no arm64
    /// one, and prefers arm64 when there is; 32-bit arm never takes arm64.
    #[test]
    fn arm64_falls_back_to_32_bit_arm() {
        let idx = index(&["linux/arm/v6", "linux/arm/v8", "linux/arm/v7"]);
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), "linux/arm/v8");
        let idx = index(&["linux/arm/v5", "linux/arm/v7"]);
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), "linux/arm/v7");
        let idx = index(&["linux/arm/v7", "linux/arm64/v8"]);
        assert_eq!(pick(&idx, "linux/arm64").unwrap(), "linux/arm64/v8");
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/arm/v7");
        let idx = index(&["linux/arm64"]);
        assert!(pick(&idx, "linux/arm/v7").is_err());
        // arm/v6 does not run v7 code; v7 runs v6.
        let idx = index(&["linux/arm/v7"]);
        assert!(pick(&idx, "linux/arm/v6").is_err());
        let idx = index(&["linux/arm/v6"]);
        assert_eq!(pick(&idx, "linux/arm").unwrap(), "linux/arm/v6");
        // Spellings an index may hold as they are: aarch64 is arm64, armhf is arm/v7.
        let mut idx = index(&["linux/ppc64le", "linux/ppc64le"]);
        idx.manifests[0].platform = Some(Platform::new("linux", "aarch64", None));
        idx.manifests[1].platform = Some(Platform::new("linux", "armhf", None));
        assert_eq!(pick(&idx, "linux/arm64/v8").unwrap(), "linux/aarch64");
        assert_eq!(pick(&idx, "linux/arm/v7").unwrap(), "linux/armhf");
    }

    #[test]
    fn documents() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","size":1},"layers":[]}"#;
        assert!(matches!(parse_document(m), Ok(Document::Manifest(_))));
        let i = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(parse_document(i), Ok(Document::Index(_))));
        let v1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(parse_document(v1)
            .err()
            .unwrap()
            .contains("schema version 1"));
    }

    #[test]
    fn documents_are_bounded_before_parsing() {
        // serde_json's recursion limit (128) turns deep nesting into an error, not a stack
        // overflow: one more level than any real manifest has, 100,000 deep.
        let deep = format!(
            r#"{{"schemaVersion":2,"annotations":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = parse_document(deep.as_bytes()).err().unwrap();
        assert!(err.contains("recursion limit exceeded"), "{err}");
        // Typed fields stop at the first bracket; an unknown one is skipped without recursing.
        assert!(parse_config(deep.as_bytes()).is_err());

        let size = usize::try_from(MAX_MANIFEST_SIZE).unwrap() + 1;
        let err = parse_document(&vec![b' '; size]).err().unwrap();
        assert!(
            err.contains(&format!(
                "manifest is {size} bytes, more than the 4194304 bytes"
            )),
            "{err}"
        );
        let size = usize::try_from(MAX_CONFIG_SIZE).unwrap() + 1;
        let err = parse_config(&vec![b' '; size]).err().unwrap();
        assert!(err.contains("more than the 8388608 bytes (8 MiB)"), "{err}");
    }
}
