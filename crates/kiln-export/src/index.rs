//! Multi-platform images: one image per platform gathered into an image index, as BuildKit's
//! image exporter writes the result of `--platform a,b`: the index lists each platform's
//! manifest with its `platform`, and an OCI layout's `index.json` names that index (one entry,
//! the index's descriptor with the ref name), so `skopeo --override-arch` picks a platform.

use std::path::Path;

use kiln_snapshot::Store;
use kiln_types::image::{
    Descriptor, Index, ANNOTATION_REF_NAME, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX,
};
use kiln_types::reference::DEFAULT_TAG;
use kiln_types::Digest;

use crate::oci::{tag_of, write_dir, write_tar, ANNOTATION_IMAGE_NAME};
use crate::{AnnotationKind, Error, Image, ImageFormat, Result};
use kiln_types::Platform;

/// An image index whose blobs (the index document and every image's) are all in the store.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    /// The index's descriptor (its digest is what a registry shows for the tag).
    pub descriptor: Descriptor,
    /// The index document.
    pub index: Index,
    /// The images, in the order of the index entries.
    pub images: Vec<Image>,
}

impl ImageIndex {
    /// Every blob of the index: each image's, then the index document; sorted, no repeats
    /// (platforms share layers and configs when their results are the same).
    pub fn blobs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.images.iter().flat_map(Image::blobs).collect();
        v.push(self.descriptor.digest);
        v.sort();
        v.dedup();
        v
    }
}

/// The format of `platform`'s image in a multi-platform export of `format`: its annotations
/// without the index's (`index`, `index-descriptor`: [`assemble_index`] places them) and
/// without those of other platforms (`manifest[linux/arm64]:...` applies to arm64 only).
pub fn platform_format(format: &ImageFormat, platform: &Platform) -> ImageFormat {
    let mut f = format.clone();
    let want = platform.normalize();
    f.annotations = format
        .annotations
        .iter()
        .filter(|a| {
            !matches!(
                a.kind,
                AnnotationKind::Index | AnnotationKind::IndexDescriptor
            )
        })
        .filter(|a| a.platform.as_ref().is_none_or(|p| p.normalize() == want))
        .map(|a| {
            let mut a = a.clone();
            // Chosen for this image already; its config may spell the platform otherwise.
            a.platform = None;
            a
        })
        .collect();
    f
}

/// Gathers `images` (one per platform, in the order of `--platform`, each assembled with
/// [`platform_format`]) into an index stored in `store`. Each entry is the image's manifest
/// descriptor with the platform of its config; the document is [`index_document`]'s.
pub fn assemble_index(
    store: &Store,
    images: Vec<Image>,
    format: &ImageFormat,
) -> Result<ImageIndex> {
    let manifests = images
        .iter()
        .map(|i| {
            let mut d = i.manifest.clone();
            d.platform = Some(i.config.platform());
            d
        })
        .collect();
    let doc = index_document(manifests, format)?;
    let digest = store.write_blob(&doc.bytes)?;
    let mut descriptor = Descriptor::new(&doc.media_type, digest, doc.bytes.len() as u64);
    descriptor.annotations = doc.descriptor_annotations;
    Ok(ImageIndex {
        descriptor,
        index: doc.index,
        images,
    })
}

/// An image index document, before it is stored anywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexDocument {
    /// The document.
    pub index: Index,
    /// Its bytes (what its digest is of).
    pub bytes: Vec<u8>,
    /// Its media type (OCI index or docker manifest list).
    pub media_type: String,
    /// The `index-descriptor` annotations, for the descriptor that names the index (an OCI
    /// layout's `index.json` entry).
    pub descriptor_annotations: std::collections::BTreeMap<String, String>,
}

/// The index of a multi-platform result, as BuildKit's image exporter writes it: `manifests`
/// (each platform's manifest descriptor with its `platform`, in the order of `--platform`)
/// listed as they are. The index has the docker manifest-list media type when the manifests
/// are docker's (as BuildKit's `oci-mediatypes=false`), the OCI one otherwise. `format`'s
/// `index` annotations go into the index, its `index-descriptor` ones onto the index's
/// descriptor; an annotation for a platform that is not built is an error, as in BuildKit.
/// One function for a build on one machine and one spread over several (whose manifests
/// come from the nodes), so that both make the same index of the same images.
pub fn index_document(manifests: Vec<Descriptor>, format: &ImageFormat) -> Result<IndexDocument> {
    if manifests.is_empty() {
        return Err(Error::Options(
            "an image index needs at least one image".into(),
        ));
    }
    let platforms: Vec<Platform> = manifests
        .iter()
        .filter_map(|d| d.platform.as_ref().map(Platform::normalize))
        .collect();
    let mut annotations = std::collections::BTreeMap::new();
    let mut descriptor_annotations = std::collections::BTreeMap::new();
    for a in &format.annotations {
        if let Some(p) = &a.platform {
            if !platforms.contains(&p.normalize()) {
                let built: Vec<String> = platforms.iter().map(ToString::to_string).collect();
                return Err(Error::Options(format!(
                    "invalid annotation {}[{p}]:{}: no platform {p} found in source (built: {})",
                    a.kind.name(),
                    a.key,
                    built.join(", ")
                )));
            }
        }
        match a.kind {
            AnnotationKind::Index => annotations.insert(a.key.clone(), a.value.clone()),
            AnnotationKind::IndexDescriptor => {
                descriptor_annotations.insert(a.key.clone(), a.value.clone())
            }
            AnnotationKind::Manifest | AnnotationKind::ManifestDescriptor => None,
        };
    }
    let docker = manifests
        .iter()
        .all(|d| d.media_type == MEDIA_TYPE_DOCKER_MANIFEST);
    if docker && !(annotations.is_empty() && descriptor_annotations.is_empty()) {
        return Err(Error::Options(
            "cannot export annotations with \"oci-mediatypes=false\" (a docker manifest list \
             holds none)"
                .to_owned(),
        ));
    }
    let media_type = if docker {
        MEDIA_TYPE_DOCKER_MANIFEST_LIST
    } else {
        MEDIA_TYPE_INDEX
    };
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type.to_owned()),
        manifests,
        annotations,
    };
    let bytes = serde_json::to_vec(&index).expect("index always serializes");
    Ok(IndexDocument {
        index,
        bytes,
        media_type: media_type.to_owned(),
        descriptor_annotations,
    })
}

/// Writes `index` as an OCI image layout (a tarball at `dest`, or a directory when `as_tar`
/// is false) whose `index.json` names the image index, annotated as [`crate::export_oci`]
/// annotates a single image: the ref name is the tag of the first `-t` name (`latest` when
/// none).
pub fn export_oci_index(
    store: &Store,
    index: &ImageIndex,
    names: &[String],
    dest: &Path,
    as_tar: bool,
) -> Result<()> {
    let layout_bytes = layout_index_of(&index.descriptor, names)?;
    let blobs = index.blobs();
    if as_tar {
        write_tar(store, &blobs, &layout_bytes, dest)
    } else {
        write_dir(store, &blobs, &layout_bytes, dest)
    }
}

/// The `index.json` of an OCI layout that holds the image index `descriptor` names: one entry,
/// annotated with the first of `names` (`io.containerd.image.name`) and its tag as the ref
/// name (`latest` when no name is given), as BuildKit's OCI exporter writes it.
pub fn layout_index_of(descriptor: &Descriptor, names: &[String]) -> Result<Vec<u8>> {
    let mut desc = descriptor.clone();
    let tag = match names.first() {
        Some(n) => {
            desc.annotations
                .insert(ANNOTATION_IMAGE_NAME.to_owned(), n.clone());
            tag_of(n)?
        }
        None => DEFAULT_TAG.to_owned(),
    };
    desc.annotations.insert(ANNOTATION_REF_NAME.to_owned(), tag);
    let layout = Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
        manifests: vec![desc],
        annotations: Default::default(),
    };
    Ok(serde_json::to_vec(&layout).expect("index always serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::tests::store_with_image;

    #[test]
    fn index_lists_each_platform_and_the_layout_names_the_index() {
        let t = tempfile::tempdir().unwrap();
        let (store, snap, amd64) = store_with_image(&t);
        let mut config = amd64.config.clone();
        config.architecture = "arm64".to_owned();
        config.variant = Some("v8".to_owned());
        config.rootfs.diff_ids.clear();
        let arm64 =
            crate::assemble_image(&store, &snap, config, crate::ImageOptions::gzip()).unwrap();
        let idx = assemble_index(
            &store,
            vec![amd64.clone(), arm64.clone()],
            &ImageFormat::default(),
        )
        .unwrap();
        assert_eq!(idx.descriptor.media_type, MEDIA_TYPE_INDEX);
        let doc: Index =
            serde_json::from_slice(&store.read_blob(&idx.descriptor.digest).unwrap()).unwrap();
        assert_eq!(doc, idx.index);
        let platforms: Vec<String> = doc
            .manifests
            .iter()
            .map(|d| d.platform.as_ref().unwrap().to_string())
            .collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(doc.manifests[0].digest, amd64.manifest.digest);
        assert_eq!(doc.manifests[1].digest, arm64.manifest.digest);
        // The shared layer is written once.
        let blobs = idx.blobs();
        assert_eq!(blobs.len(), 1 + 2 + 2 + 1, "{blobs:?}");

        let dir = t.path().join("layout");
        export_oci_index(&store, &idx, &["app:1".to_owned()], &dir, false).unwrap();
        let layout = crate::read_index(&dir).unwrap();
        assert_eq!(layout.manifests.len(), 1);
        let top = &layout.manifests[0];
        assert_eq!(top.digest, idx.descriptor.digest);
        assert_eq!(top.media_type, MEDIA_TYPE_INDEX);
        assert_eq!(top.annotations[ANNOTATION_REF_NAME], "1");
        for d in &blobs {
            assert!(dir.join("blobs/sha256").join(d.hex()).is_file(), "{d}");
        }
        // The tarball holds the same layout.
        let tar = t.path().join("out.tar");
        export_oci_index(&store, &idx, &[], &tar, true).unwrap();
        let mut names = Vec::new();
        let mut a = tar::Archive::new(std::fs::File::open(&tar).unwrap());
        for e in a.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert!(names.contains(&format!("blobs/sha256/{}", idx.descriptor.digest.hex())));
        assert!(names.contains(&"index.json".to_owned()));
    }

    #[test]
    fn docker_manifests_make_a_manifest_list() {
        let t = tempfile::tempdir().unwrap();
        let (store, snap, image) = store_with_image(&t);
        let format = ImageFormat {
            oci_media_types: Some(false),
            ..Default::default()
        };
        let docker = crate::assemble_image(
            &store,
            &snap,
            image.config.clone(),
            crate::ImageOptions {
                format: format.clone(),
                source_date_epoch: None,
            },
        )
        .unwrap();
        let idx = assemble_index(&store, vec![docker.clone()], &format).unwrap();
        assert_eq!(idx.descriptor.media_type, MEDIA_TYPE_DOCKER_MANIFEST_LIST);
        assert!(assemble_index(&store, Vec::new(), &format).is_err());
        // A docker manifest list holds no annotations.
        let mut annotated = format.clone();
        annotated.annotations.push(crate::Annotation {
            kind: AnnotationKind::Index,
            platform: None,
            key: "k".into(),
            value: "v".into(),
        });
        let err = assemble_index(&store, vec![docker], &annotated)
            .unwrap_err()
            .to_string();
        assert!(err.contains("oci-mediatypes=false"), "{err}");
    }

    #[test]
    fn annotations_go_to_the_index_its_descriptor_or_their_platform() {
        let t = tempfile::tempdir().unwrap();
        let (store, snap, amd64) = store_with_image(&t);
        let ann = |kind, platform: Option<&str>, key: &str| crate::Annotation {
            kind,
            platform: platform.map(|p| p.parse().unwrap()),
            key: key.into(),
            value: format!("{key}-value"),
        };
        let format = ImageFormat {
            annotations: vec![
                ann(AnnotationKind::Index, None, "i"),
                ann(AnnotationKind::IndexDescriptor, None, "id"),
                ann(AnnotationKind::Manifest, None, "all"),
                ann(AnnotationKind::Manifest, Some("linux/arm64/v8"), "arm"),
            ],
            ..Default::default()
        };
        let arm: Platform = "linux/arm64".parse().unwrap();
        let f = platform_format(&format, &arm);
        let keys: Vec<&str> = f.annotations.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["all", "arm"]);
        assert!(f.annotations.iter().all(|a| a.platform.is_none()));
        let f = platform_format(&format, &"linux/amd64".parse().unwrap());
        let keys: Vec<&str> = f.annotations.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["all"]);

        let mut config = amd64.config.clone();
        config.architecture = "arm64".to_owned();
        config.rootfs.diff_ids.clear();
        let opts = |f: ImageFormat| crate::ImageOptions {
            format: f,
            source_date_epoch: None,
        };
        let arm64 =
            crate::assemble_image(&store, &snap, config, opts(platform_format(&format, &arm)))
                .unwrap();
        assert_eq!(arm64.manifest_doc.annotations["arm"], "arm-value");
        let idx = assemble_index(&store, vec![amd64.clone(), arm64.clone()], &format).unwrap();
        assert_eq!(idx.index.annotations["i"], "i-value");
        assert_eq!(idx.index.annotations.len(), 1);
        assert_eq!(idx.descriptor.annotations["id"], "id-value");
        let dir = t.path().join("layout");
        export_oci_index(&store, &idx, &[], &dir, false).unwrap();
        let top = crate::read_index(&dir).unwrap();
        assert_eq!(top.manifests[0].annotations["id"], "id-value");
        assert_eq!(top.manifests[0].annotations[ANNOTATION_REF_NAME], "latest");

        // A platform that is not built.
        let mut other = format.clone();
        other
            .annotations
            .push(ann(AnnotationKind::Manifest, Some("linux/s390x"), "z"));
        let err = assemble_index(&store, vec![amd64, arm64], &other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no platform linux/s390x"), "{err}");
    }
}
