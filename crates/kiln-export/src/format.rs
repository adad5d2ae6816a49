//! How an image export writes its image: layer compression, media types and annotations, the
//! options BuildKit's image exporters take (`compression=`, `compression-level=`,
//! `force-compression=`, `oci-mediatypes=`, `annotation*.KEY=`), and their validation.

use std::collections::BTreeMap;

use kiln_types::image::{
    MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST,
};
use kiln_types::Platform;

use crate::{Error, Result};

/// Docker's media type of an uncompressed layer.
const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The compression of new layer blobs (`compression=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CompressionKind {
    /// `uncompressed`.
    Uncompressed,
    /// `gzip`, the default.
    #[default]
    Gzip,
    /// `zstd`: OCI media types only.
    Zstd,
}

impl CompressionKind {
    /// BuildKit's name of it.
    pub fn name(self) -> &'static str {
        match self {
            CompressionKind::Uncompressed => "uncompressed",
            CompressionKind::Gzip => "gzip",
            CompressionKind::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for CompressionKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uncompressed" => Ok(CompressionKind::Uncompressed),
            "gzip" => Ok(CompressionKind::Gzip),
            "zstd" => Ok(CompressionKind::Zstd),
            "estargz" => Err("compression=estargz is not supported by kiln".to_owned()),
            other => Err(format!(
                "unsupported compression type {other:?}: expected gzip, zstd or uncompressed"
            )),
        }
    }
}

/// Where an annotation is written (buildx's `--annotation TYPE:KEY=VALUE` prefixes, BuildKit's
/// `annotation-TYPE.KEY` exporter options).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnnotationKind {
    /// `manifest` (and no prefix): the image manifest.
    Manifest,
    /// `manifest-descriptor`: the descriptor pointing at the manifest (an OCI layout's
    /// `index.json` entry).
    ManifestDescriptor,
    /// `index`: the image index of a multi-platform image.
    Index,
    /// `index-descriptor`: the descriptor pointing at that index.
    IndexDescriptor,
}

impl AnnotationKind {
    /// The prefix naming it.
    pub fn name(self) -> &'static str {
        match self {
            AnnotationKind::Manifest => "manifest",
            AnnotationKind::ManifestDescriptor => "manifest-descriptor",
            AnnotationKind::Index => "index",
            AnnotationKind::IndexDescriptor => "index-descriptor",
        }
    }
}

impl std::str::FromStr for AnnotationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "manifest" => Ok(AnnotationKind::Manifest),
            "manifest-descriptor" => Ok(AnnotationKind::ManifestDescriptor),
            "index" => Ok(AnnotationKind::Index),
            "index-descriptor" => Ok(AnnotationKind::IndexDescriptor),
            other => Err(format!(
                "unrecognized annotation type {other:?}: expected manifest, manifest-descriptor, \
                 index or index-descriptor"
            )),
        }
    }
}

/// One annotation to write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Annotation {
    /// Where it goes.
    pub kind: AnnotationKind,
    /// `[os/arch]`: only on the image of that platform.
    pub platform: Option<Platform>,
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// The options of one image export (`type=oci|docker|image|registry`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ImageFormat {
    /// `compression=`.
    pub compression: CompressionKind,
    /// `compression-level=`.
    pub compression_level: Option<i32>,
    /// `force-compression=true`: recompress layers that already have a blob (base image
    /// layers) to `compression`.
    pub force_compression: bool,
    /// `oci-mediatypes=`; unset means OCI media types.
    pub oci_media_types: Option<bool>,
    /// `--annotation` and `annotation*.KEY=` options.
    pub annotations: Vec<Annotation>,
    /// `rewrite-timestamp=true`: clamp file times in the layers to `SOURCE_DATE_EPOCH`.
    pub rewrite_timestamp: bool,
}

/// The annotations of a single-platform image, by place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PlacedAnnotations {
    pub manifest: BTreeMap<String, String>,
    pub manifest_descriptor: BTreeMap<String, String>,
}

impl ImageFormat {
    /// Whether the image uses OCI media types (the default) rather than docker's.
    pub fn oci(&self) -> bool {
        self.oci_media_types.unwrap_or(true)
    }

    /// Checks the options against each other and the image's platform, as BuildKit's image
    /// writer does, and returns the annotations that apply, by place.
    pub(crate) fn validate(&self, platform: &Platform) -> Result<PlacedAnnotations> {
        let invalid = |why: String| Err(Error::Options(why));
        if self.compression == CompressionKind::Zstd && !self.oci() {
            return invalid(
                "exporter option \"compression=zstd\" conflicts with \"oci-mediatypes=false\": \
                 zstd layers have OCI media types only"
                    .to_owned(),
            );
        }
        if let Some(level) = self.compression_level {
            let max = match self.compression {
                CompressionKind::Gzip => 9,
                CompressionKind::Zstd => 22,
                CompressionKind::Uncompressed => i32::MAX,
            };
            if !(0..=max).contains(&level) {
                return invalid(format!(
                    "compression-level={level} is out of range for {}: expected 0 to {max}",
                    self.compression.name()
                ));
            }
        }
        let mut placed = PlacedAnnotations::default();
        for a in &self.annotations {
            if let Some(p) = &a.platform {
                if p != platform {
                    return invalid(format!(
                        "invalid annotation {}[{p}]:{}: no platform {p} found in source (the \
                         image is {platform})",
                        a.kind.name(),
                        a.key
                    ));
                }
            }
            let place = match a.kind {
                AnnotationKind::Manifest => &mut placed.manifest,
                AnnotationKind::ManifestDescriptor if self.oci() => &mut placed.manifest_descriptor,
                AnnotationKind::ManifestDescriptor => {
                    return invalid(
                        "cannot export annotations with \"oci-mediatypes=false\" (only manifest \
                         annotations fit a docker manifest)"
                            .to_owned(),
                    )
                }
                // BuildKit refuses them too when the result is one image without attestations:
                // there is no index to annotate.
                AnnotationKind::Index | AnnotationKind::IndexDescriptor => {
                    return invalid(format!(
                        "index annotations not supported for single platform export \
                         ({}:{}): kiln writes one manifest and no image index; use manifest: \
                         or manifest-descriptor: annotations",
                        a.kind.name(),
                        a.key
                    ))
                }
            };
            place.insert(a.key.clone(), a.value.clone());
        }
        Ok(placed)
    }

    /// The manifest and config media types.
    pub(crate) fn manifest_types(&self) -> (&'static str, &'static str) {
        if self.oci() {
            (MEDIA_TYPE_MANIFEST, MEDIA_TYPE_CONFIG)
        } else {
            (MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_CONFIG)
        }
    }

    /// A layer media type in this format's family (BuildKit converts between the OCI and docker
    /// names the same way); `None` for one with no counterpart (zstd in docker types).
    pub(crate) fn layer_media_type(&self, media_type: &str) -> Option<&'static str> {
        let kind = match media_type {
            MEDIA_TYPE_LAYER_TAR | MEDIA_TYPE_DOCKER_LAYER_TAR => CompressionKind::Uncompressed,
            MEDIA_TYPE_LAYER_GZIP | MEDIA_TYPE_DOCKER_LAYER_GZIP => CompressionKind::Gzip,
            MEDIA_TYPE_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
                CompressionKind::Zstd
            }
            _ => return None,
        };
        match (kind, self.oci()) {
            (CompressionKind::Uncompressed, true) => Some(MEDIA_TYPE_LAYER_TAR),
            (CompressionKind::Gzip, true) => Some(MEDIA_TYPE_LAYER_GZIP),
            (CompressionKind::Zstd, true) => Some(MEDIA_TYPE_LAYER_ZSTD),
            (CompressionKind::Uncompressed, false) => Some(MEDIA_TYPE_DOCKER_LAYER_TAR),
            (CompressionKind::Gzip, false) => Some(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            (CompressionKind::Zstd, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        "linux/amd64".parse().unwrap()
    }

    fn ann(kind: AnnotationKind, platform: Option<&str>, key: &str) -> Annotation {
        Annotation {
            kind,
            platform: platform.map(|p| p.parse().unwrap()),
            key: key.to_owned(),
            value: "v".to_owned(),
        }
    }

    #[test]
    fn zstd_needs_oci_media_types() {
        let f = ImageFormat {
            compression: CompressionKind::Zstd,
            oci_media_types: Some(false),
            ..ImageFormat::default()
        };
        let err = f.validate(&amd64()).unwrap_err().to_string();
        assert!(
            err.contains("conflicts with \"oci-mediatypes=false\""),
            "{err}"
        );
        let f = ImageFormat {
            compression: CompressionKind::Zstd,
            ..ImageFormat::default()
        };
        assert!(f.validate(&amd64()).is_ok());
    }

    #[test]
    fn levels_are_bounded_per_algorithm() {
        let f = |compression, level| ImageFormat {
            compression,
            compression_level: Some(level),
            ..ImageFormat::default()
        };
        assert!(f(CompressionKind::Gzip, 9).validate(&amd64()).is_ok());
        assert!(f(CompressionKind::Gzip, 10).validate(&amd64()).is_err());
        assert!(f(CompressionKind::Zstd, 22).validate(&amd64()).is_ok());
        assert!(f(CompressionKind::Zstd, 23).validate(&amd64()).is_err());
        assert!(f(CompressionKind::Zstd, -1).validate(&amd64()).is_err());
    }

    #[test]
    fn annotations_are_placed_and_checked() {
        let f = ImageFormat {
            annotations: vec![
                ann(AnnotationKind::Manifest, None, "a"),
                ann(AnnotationKind::Manifest, Some("linux/amd64"), "b"),
                ann(AnnotationKind::ManifestDescriptor, None, "c"),
            ],
            ..ImageFormat::default()
        };
        let placed = f.validate(&amd64()).unwrap();
        assert_eq!(placed.manifest.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(placed.manifest_descriptor.keys().collect::<Vec<_>>(), ["c"]);

        let other = ImageFormat {
            annotations: vec![ann(AnnotationKind::Manifest, Some("linux/arm64"), "b")],
            ..ImageFormat::default()
        };
        let err = other.validate(&amd64()).unwrap_err().to_string();
        assert!(err.contains("no platform linux/arm64"), "{err}");

        let index = ImageFormat {
            annotations: vec![ann(AnnotationKind::Index, None, "i")],
            ..ImageFormat::default()
        };
        let err = index.validate(&amd64()).unwrap_err().to_string();
        assert!(err.contains("index annotations not supported"), "{err}");

        let docker = ImageFormat {
            oci_media_types: Some(false),
            annotations: vec![ann(AnnotationKind::ManifestDescriptor, None, "c")],
            ..ImageFormat::default()
        };
        assert!(docker.validate(&amd64()).is_err());
    }

    #[test]
    fn media_types_follow_the_family() {
        let docker = ImageFormat {
            oci_media_types: Some(false),
            ..ImageFormat::default()
        };
        assert_eq!(
            docker.layer_media_type(MEDIA_TYPE_LAYER_GZIP),
            Some(MEDIA_TYPE_DOCKER_LAYER_GZIP)
        );
        assert_eq!(docker.layer_media_type(MEDIA_TYPE_LAYER_ZSTD), None);
        let oci = ImageFormat::default();
        assert_eq!(
            oci.layer_media_type(MEDIA_TYPE_DOCKER_LAYER_GZIP),
            Some(MEDIA_TYPE_LAYER_GZIP)
        );
    }
}
