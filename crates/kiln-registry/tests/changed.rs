//! A layer blob changed on disk in the store after it was pulled is fetched again by the next
//! pull, never built on.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use common::{build_layout, env, host_platform, image};
use kiln_snapshot::verify::BlobState;
use kiln_types::Platform;

/// Flips one bit in the middle of `path`, keeping its size.
fn flip_byte(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

#[tokio::test]
async fn a_changed_layer_blob_is_fetched_again() {
    let e = env();
    let dir = e.layouts.join("lay");
    let built = build_layout(&dir, "v1", &[host_platform()]);
    let r = image(&format!("oci-layout://{}:v1", dir.display()));
    let got = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    e.registry.fetch_layers(&got, &e.store).await.unwrap();
    let layer = built.images[0].layer_digests[0];
    let size = std::fs::metadata(e.store.blob_path(&layer)).unwrap().len();

    flip_byte(&e.store.blob_path(&layer));
    assert!(matches!(
        e.store.check_blob(&layer).unwrap(),
        BlobState::Changed(_)
    ));
    // The next pull of the image finds it changed, and fetches it again.
    e.registry.fetch_layers(&got, &e.store).await.unwrap();
    assert_eq!(
        e.store.check_blob(&layer).unwrap(),
        BlobState::Good { size }
    );
}

#[tokio::test]
async fn a_changed_config_is_fetched_again_never_read() {
    let e = env();
    let dir = e.layouts.join("lay");
    build_layout(&dir, "v1", &[host_platform()]);
    let r = image(&format!("oci-layout://{}:v1", dir.display()));
    let got = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    let config = got.config_digest;
    let size = std::fs::metadata(e.store.blob_path(&config)).unwrap().len();
    flip_byte(&e.store.blob_path(&config));

    let again = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    assert_eq!(again.config.config.cmd, Some(vec!["/bin/hello".to_owned()]));
    assert_eq!(
        e.store.check_blob(&config).unwrap(),
        BlobState::Good { size }
    );
}
