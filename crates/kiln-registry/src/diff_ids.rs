//! A pulled layer's diff id (the sha256 of its uncompressed tar) must be the one the image
//! config lists in `rootfs.diff_ids`, as containerd checks when it unpacks: otherwise the
//! config describes other content than the layers kiln would build on and export.

use std::collections::HashMap;

use kiln_snapshot::Store;
use kiln_types::{Digest, Sha256Writer};

use crate::select::check_layer_count;
use crate::{DiffIdMismatch, Error, Op, ResolvedImage};

/// Hashes the uncompressed tar of every layer of `image` (blobs already in `store`) and
/// compares it with the config's diff id at the same position. Blocking: reads and
/// decompresses every layer once.
pub(crate) fn verify(image: &ResolvedImage, store: &Store) -> Result<(), Error> {
    let op = Op::FetchLayers;
    let name = image.reference.to_string();
    check_layer_count(&image.manifest, &image.config).map_err(|why| Error::BadDocument {
        op,
        image: name.clone(),
        why,
    })?;
    // A blob listed twice is hashed once.
    let mut computed: HashMap<Digest, Digest> = HashMap::new();
    for (index, (layer, expected)) in image
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
        .enumerate()
    {
        let diff_id = match computed.get(&layer.digest) {
            Some(d) => *d,
            None => {
                let bad = |why: String| Error::BadLayer {
                    op,
                    image: name.clone(),
                    index,
                    layer: layer.digest,
                    why,
                };
                let mut tar = store
                    .open_layer_tar(&layer.digest, &layer.media_type)
                    .map_err(|e| bad(e.to_string()))?;
                let mut hash = Sha256Writer::default();
                std::io::copy(&mut tar, &mut hash).map_err(|e| bad(e.to_string()))?;
                let d = hash.finish();
                computed.insert(layer.digest, d);
                d
            }
        };
        if diff_id != *expected {
            return Err(Error::DiffIdMismatch(Box::new(DiffIdMismatch {
                op,
                image: name,
                index,
                layer: layer.digest,
                expected: *expected,
                computed: diff_id,
            })));
        }
    }
    Ok(())
}
