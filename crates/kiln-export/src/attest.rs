//! Attestation manifests in an image index, as BuildKit's image writer stores them
//! (`docs/attestations/attestation-storage.md`): per image, one manifest whose layers are
//! in-toto statements (`application/vnd.in-toto+json`, each annotated with its
//! `in-toto.io/predicate-type`), whose config is an image config of platform
//! `unknown/unknown` listing them as diff ids, and whose index entry has that platform and
//! the `vnd.docker.reference.type=attestation-manifest` and `vnd.docker.reference.digest` =
//! the image's manifest annotations. An attestation manifest is an [`Image`] here, so that
//! the index's writers and pushes carry it as they carry the platform images.

use kiln_snapshot::{LayerBlob, Store};
use kiln_types::image::{
    Descriptor, ImageConfig, Manifest, RootFs, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST,
};
use kiln_types::Platform;

use crate::{assemble_index, Error, Image, ImageFormat, ImageIndex, Result};

/// The media type of an in-toto statement layer.
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The annotation saying what an index entry refers to.
pub const ANNOTATION_REFERENCE_TYPE: &str = "vnd.docker.reference.type";
/// [`ANNOTATION_REFERENCE_TYPE`]'s value on an attestation manifest's entry.
pub const REFERENCE_TYPE_ATTESTATION: &str = "attestation-manifest";
/// The annotation naming the manifest an attestation manifest is about.
pub const ANNOTATION_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
/// The annotation of a statement layer naming its predicate type.
pub const ANNOTATION_PREDICATE_TYPE: &str = "in-toto.io/predicate-type";

/// One in-toto statement to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Its `predicateType`.
    pub predicate_type: String,
    /// The statement's JSON.
    pub bytes: Vec<u8>,
}

/// The platform of an attestation manifest's index entry.
fn unknown_platform() -> Platform {
    Platform {
        os: "unknown".to_owned(),
        architecture: "unknown".to_owned(),
        variant: None,
    }
}

/// Stores `statements` about `target` as its attestation manifest (OCI media types only: a
/// docker manifest list cannot hold one, as BuildKit refuses attestations with
/// `oci-mediatypes=false`).
pub fn attestation_manifest(
    store: &Store,
    target: &Image,
    statements: &[Statement],
    format: &ImageFormat,
) -> Result<Image> {
    if !format.oci() {
        return Err(Error::Options(
            "cannot export attestations with \"oci-mediatypes=false\": pass \
             --provenance=false (and no --sbom), or use OCI media types"
                .to_owned(),
        ));
    }
    let mut layers = Vec::with_capacity(statements.len());
    let mut descriptors = Vec::with_capacity(statements.len());
    for s in statements {
        let digest = store.write_blob(&s.bytes)?;
        let size = s.bytes.len() as u64;
        layers.push(LayerBlob {
            // Statements are stored as they are: the uncompressed digest is the digest.
            diff_id: digest,
            digest,
            size,
            media_type: MEDIA_TYPE_IN_TOTO.to_owned(),
        });
        let mut d = Descriptor::new(MEDIA_TYPE_IN_TOTO, digest, size);
        d.annotations.insert(
            ANNOTATION_PREDICATE_TYPE.to_owned(),
            s.predicate_type.clone(),
        );
        descriptors.push(d);
    }
    let platform = unknown_platform();
    let config = ImageConfig {
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: layers.iter().map(|l| l.diff_id).collect(),
        },
        ..ImageConfig::scratch(&platform)
    };
    let config_bytes = serde_json::to_vec(&config).expect("an image config always serializes");
    let config_digest = store.write_blob(&config_bytes)?;
    let manifest_doc = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
        config: Descriptor::new(MEDIA_TYPE_CONFIG, config_digest, config_bytes.len() as u64),
        layers: descriptors,
        annotations: Default::default(),
    };
    let bytes = serde_json::to_vec(&manifest_doc).expect("a manifest always serializes");
    let digest = store.write_blob(&bytes)?;
    let mut manifest = Descriptor::new(MEDIA_TYPE_MANIFEST, digest, bytes.len() as u64);
    manifest.annotations.insert(
        ANNOTATION_REFERENCE_TYPE.to_owned(),
        REFERENCE_TYPE_ATTESTATION.to_owned(),
    );
    manifest.annotations.insert(
        ANNOTATION_REFERENCE_DIGEST.to_owned(),
        target.manifest.digest.to_string(),
    );
    Ok(Image {
        manifest,
        manifest_doc,
        config,
        layers,
    })
}

/// The index of `images` (one per platform, as [`assemble_index`] takes them) followed by
/// each image's attestation manifest (`statements[i]` are about `images[i]`; an image with
/// none gets no attestation manifest), as BuildKit lists them: the platform images first.
pub fn assemble_attested_index(
    store: &Store,
    images: Vec<Image>,
    statements: &[Vec<Statement>],
    format: &ImageFormat,
) -> Result<ImageIndex> {
    let mut all = images.clone();
    for (image, stmts) in images.iter().zip(statements) {
        if !stmts.is_empty() {
            all.push(attestation_manifest(store, image, stmts, format)?);
        }
    }
    assemble_index(store, all, format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::tests::store_with_image;
    use kiln_types::image::Index;

    #[test]
    fn the_index_lists_the_image_then_its_attestation_manifest() {
        let t = tempfile::tempdir().unwrap();
        let (store, _snap, image) = store_with_image(&t);
        let stmt = Statement {
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            bytes: br#"{"_type":"https://in-toto.io/Statement/v1"}"#.to_vec(),
        };
        let format = ImageFormat::default();
        let idx =
            assemble_attested_index(&store, vec![image.clone()], &[vec![stmt.clone()]], &format)
                .unwrap();
        let doc: Index =
            serde_json::from_slice(&store.read_blob(&idx.descriptor.digest).unwrap()).unwrap();
        assert_eq!(doc.manifests.len(), 2);
        assert_eq!(doc.manifests[0].digest, image.manifest.digest);
        assert_eq!(doc.manifests[0].platform, Some(image.config.platform()));
        let att = &doc.manifests[1];
        assert_eq!(
            att.platform.as_ref().unwrap().to_string(),
            "unknown/unknown"
        );
        assert_eq!(
            att.annotations[ANNOTATION_REFERENCE_TYPE],
            REFERENCE_TYPE_ATTESTATION
        );
        assert_eq!(
            att.annotations[ANNOTATION_REFERENCE_DIGEST],
            image.manifest.digest.to_string()
        );
        let m: Manifest = serde_json::from_slice(&store.read_blob(&att.digest).unwrap()).unwrap();
        assert_eq!(m.layers[0].media_type, MEDIA_TYPE_IN_TOTO);
        assert_eq!(
            m.layers[0].annotations[ANNOTATION_PREDICATE_TYPE],
            stmt.predicate_type
        );
        assert_eq!(store.read_blob(&m.layers[0].digest).unwrap(), stmt.bytes);
        let c: ImageConfig =
            serde_json::from_slice(&store.read_blob(&m.config.digest).unwrap()).unwrap();
        assert_eq!(
            (c.os.as_str(), c.architecture.as_str()),
            ("unknown", "unknown")
        );
        assert_eq!(c.rootfs.diff_ids, [m.layers[0].digest]);
        // Every blob is written out with the index.
        for d in [att.digest, m.config.digest, m.layers[0].digest] {
            assert!(idx.blobs().contains(&d), "{d}");
        }

        // Docker media types hold no attestations.
        let docker = ImageFormat {
            oci_media_types: Some(false),
            ..Default::default()
        };
        let err = attestation_manifest(&store, &image, &[stmt], &docker)
            .unwrap_err()
            .to_string();
        assert!(err.contains("oci-mediatypes=false"), "{err}");
    }
}
