//! Pulls against a real `docker-registry` on loopback and from OCI layouts on disk.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use std::time::{Duration, Instant};

use common::{
    build_layout, env, free_port, host_platform, image, other_platform, store_blobs, TestRegistry,
};
use kiln_registry::{Category, Error, ImageRef};
use kiln_types::{Digest, Platform};

fn host() -> Platform {
    Platform::host()
}

#[tokio::test]
async fn resolve_by_tag_and_by_digest() {
    let e = env();
    let reg = TestRegistry::start();
    let layout = build_layout(&e.layouts.join("one"), "v1", &[host_platform()]);
    reg.push(&layout.dir, "v1", "test/hello");
    let want = &layout.images[0];

    let r = image(&format!("{}/test/hello:v1", reg.host));
    let got = e.registry.resolve(&r, &host(), &e.store).await.unwrap();
    assert_eq!(got.manifest_digest, want.manifest_digest);
    assert_eq!(got.config_digest, want.config_digest);
    assert_eq!(got.config.config.cmd, Some(vec!["/bin/hello".to_owned()]));
    assert_eq!(got.config.architecture, host_platform().1);
    assert_eq!(got.layers.len(), 2);
    assert_eq!(got.layers, got.manifest.layers);
    assert_eq!(
        got.reference.to_string(),
        format!("{}/test/hello:v1@{}", reg.host, want.manifest_digest)
    );
    assert_eq!(
        got.reference.to_string().parse::<ImageRef>().unwrap(),
        got.reference
    );
    // The config blob is in the store, the layers not yet.
    assert_eq!(store_blobs(&e.store), vec![want.config_digest]);

    let by_digest = image(&format!("{}/test/hello@{}", reg.host, want.manifest_digest));
    let again = e
        .registry
        .resolve(&by_digest, &host(), &e.store)
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, want.manifest_digest);
    assert_eq!(again.config, got.config);
    assert_eq!(again.reference, by_digest);

    // Resolving the pinned reference gives the same image.
    let pinned = e
        .registry
        .resolve(&got.reference, &host(), &e.store)
        .await
        .unwrap();
    assert_eq!(pinned, got);
}

#[tokio::test]
async fn index_is_narrowed_to_the_platform() {
    let e = env();
    let reg = TestRegistry::start();
    let layout = build_layout(
        &e.layouts.join("multi"),
        "multi",
        &[("linux", "amd64", None), ("linux", "arm64", Some("v8"))],
    );
    reg.push(&layout.dir, "multi", "test/multi");
    let r = image(&format!("{}/test/multi:multi", reg.host));

    let want = layout
        .images
        .iter()
        .find(|i| i.platform == host_platform())
        .unwrap();
    let got = e.registry.resolve(&r, &host(), &e.store).await.unwrap();
    assert_eq!(got.manifest_digest, want.manifest_digest);
    assert_eq!(got.config.architecture, host_platform().1);
    assert_eq!(
        got.reference.to_string(),
        format!("{}/test/multi:multi@{}", reg.host, want.manifest_digest)
    );

    // arm64 without a variant matches the v8 entry.
    let arm = e
        .registry
        .resolve(&r, &"linux/arm64".parse().unwrap(), &e.store)
        .await
        .unwrap();
    assert_eq!(arm.config.architecture, "arm64");
    assert_eq!(
        arm.config.config.env_get("PLATFORM"),
        Some("linux/arm64/v8")
    );

    // By the index digest: narrowed too.
    let by_index = image(&format!("{}/test/multi@{}", reg.host, layout.top_digest));
    let other = other_platform();
    let o = e
        .registry
        .resolve(
            &by_index,
            &format!("{}/{}", other.0, other.1).parse().unwrap(),
            &e.store,
        )
        .await
        .unwrap();
    assert_eq!(o.config.architecture, other.1);

    let err = e
        .registry
        .resolve(&r, &"linux/s390x".parse().unwrap(), &e.store)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("linux/s390x"), "{msg}");
    assert!(msg.contains("linux/amd64, linux/arm64/v8"), "{msg}");
    assert!(
        msg.contains(&format!("{}/test/multi:multi", reg.host)),
        "{msg}"
    );
}

#[tokio::test]
async fn fetch_layers_stores_exactly_the_layers_once() {
    let e = env();
    let mut reg = TestRegistry::start();
    let layout = build_layout(&e.layouts.join("one"), "v1", &[host_platform()]);
    reg.push(&layout.dir, "v1", "test/hello");
    let want = &layout.images[0];

    let r = image(&format!("{}/test/hello:v1", reg.host));
    let got = e.registry.resolve(&r, &host(), &e.store).await.unwrap();
    e.registry.fetch_layers(&got, &e.store).await.unwrap();

    let mut expected = want.layer_digests.clone();
    expected.push(want.config_digest);
    expected.sort();
    assert_eq!(store_blobs(&e.store), expected);
    for d in &want.layer_digests {
        assert_eq!(Digest::of(&e.store.read_blob(d).unwrap()), *d);
    }
    // Nothing left behind in the store's tmp dir.
    assert_eq!(
        std::fs::read_dir(e.store.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    // Everything is present: the second call must not need the registry at all.
    reg.stop();
    e.registry.fetch_layers(&got, &e.store).await.unwrap();
    assert_eq!(store_blobs(&e.store), expected);
}

#[tokio::test]
async fn a_corrupt_blob_is_refused() {
    let e = env();
    let reg = TestRegistry::start();
    let layout = build_layout(&e.layouts.join("one"), "v1", &[host_platform()]);
    reg.push(&layout.dir, "v1", "test/hello");
    let r = image(&format!("{}/test/hello:v1", reg.host));
    let got = e.registry.resolve(&r, &host(), &e.store).await.unwrap();

    // Same size, other content: the registry serves it as the original digest.
    let victim = got.layers[0].digest;
    let data = reg.blob_data(&victim);
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    let err = e.registry.fetch_layers(&got, &e.store).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err:?}");
    assert_eq!(err.category(), Category::Invalid);
    let msg = err.to_string();
    assert!(msg.contains(&victim.to_string()), "{msg}");
    assert!(msg.contains("test/hello"), "{msg}");
    assert!(!e.store.has_blob(&victim));
    assert_eq!(
        std::fs::read_dir(e.store.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn layout_without_a_registry() {
    let e = env();
    let dir = e.layouts.join("lay");
    let single = build_layout(&dir, "v1", &[host_platform()]);
    let multi = build_layout(
        &dir,
        "multi",
        &[("linux", "amd64", None), ("linux", "arm64", Some("v8"))],
    );

    let r = image(&format!("oci-layout://{}:v1", dir.display()));
    let got = e.registry.resolve(&r, &host(), &e.store).await.unwrap();
    let want = &single.images[0];
    assert_eq!(got.manifest_digest, want.manifest_digest);
    assert_eq!(got.config.config.cmd, Some(vec!["/bin/hello".to_owned()]));
    assert_eq!(
        got.reference.to_string(),
        format!("oci-layout://{}:v1@{}", dir.display(), want.manifest_digest)
    );
    e.registry.fetch_layers(&got, &e.store).await.unwrap();
    let mut expected = want.layer_digests.clone();
    expected.push(want.config_digest);
    expected.sort();
    assert_eq!(store_blobs(&e.store), expected);

    // Nested index, narrowed; and the pinned reference resolves to the same image.
    let r = image(&format!("oci-layout://{}:multi", dir.display()));
    let arm = e
        .registry
        .resolve(&r, &"linux/arm64/v8".parse().unwrap(), &e.store)
        .await
        .unwrap();
    let want = multi
        .images
        .iter()
        .find(|i| i.platform.1 == "arm64")
        .unwrap();
    assert_eq!(arm.manifest_digest, want.manifest_digest);
    let again = e
        .registry
        .resolve(&arm.reference, &host(), &e.store)
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, want.manifest_digest);
    e.registry.fetch_layers(&arm, &e.store).await.unwrap();
    for d in &want.layer_digests {
        assert!(e.store.has_blob(d));
    }

    // Errors name the directory and the tag.
    let err = e
        .registry
        .resolve(
            &image(&format!("oci-layout://{}:nope", dir.display())),
            &host(),
            &e.store,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(err.contains("v1, multi"), "{err}");
    let err = e
        .registry
        .resolve(
            &image(&format!("oci-layout://{}", dir.display())),
            &host(),
            &e.store,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("give a tag"), "{err}");
    let missing = e.layouts.join("missing");
    let err = e
        .registry
        .resolve(
            &image(&format!("oci-layout://{}:v1", missing.display())),
            &host(),
            &e.store,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{}:v1", missing.display())), "{err}");
    assert!(err.contains("index.json"), "{err}");
}

#[tokio::test]
async fn unreachable_registry_fails_fast() {
    let e = env();
    let port = free_port();
    let r = image(&format!("127.0.0.1:{port}/x"));
    let start = Instant::now();
    let err = e.registry.resolve(&r, &host(), &e.store).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(err.category(), Category::Unavailable);
    assert_eq!(
        err.to_string(),
        format!(
            "failed to resolve 127.0.0.1:{port}/x:latest: cannot connect to 127.0.0.1:{port}: connection refused"
        )
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn missing_images_are_not_found() {
    let e = env();
    let reg = TestRegistry::start();
    let layout = build_layout(&e.layouts.join("one"), "v1", &[host_platform()]);
    reg.push(&layout.dir, "v1", "test/hello");
    for missing in [
        format!("{}/test/nope:v1", reg.host),
        format!("{}/test/hello:v2", reg.host),
        format!("{}/test/hello@{}", reg.host, Digest::of(b"nothing")),
    ] {
        let err = e
            .registry
            .resolve(&image(&missing), &host(), &e.store)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{missing}: {err:?}");
        assert_eq!(err.category(), Category::NotFound);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("failed to resolve {missing}")),
            "{msg}"
        );
        assert!(msg.contains("not found"), "{msg}");
    }
}
