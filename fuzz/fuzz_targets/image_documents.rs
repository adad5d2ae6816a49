//! Manifests, indexes and image configs as a registry or an oci-layout hands them over: never a
//! panic, and a document over its size limit is refused before it is parsed.
#![no_main]

use kiln_registry::{parse_config, parse_document, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let doc = parse_document(data);
    if data.len() as u64 > MAX_MANIFEST_SIZE {
        assert!(doc.is_err());
    }
    let config = parse_config(data);
    if data.len() as u64 > MAX_CONFIG_SIZE {
        assert!(config.is_err());
    }
});
