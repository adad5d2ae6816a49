//! Images from registries and layouts are untrusted input: layers must unpack to the diff ids
//! their config lists, and documents are size-checked before they are parsed.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

use common::{build_layout_with, env, host_platform, image, TestLayout, TestRegistry};
use kiln_registry::{Category, Error, MAX_MANIFEST_SIZE};
use kiln_snapshot::Store;
use kiln_types::{Digest, Platform};
use serde_json::{json, Value};

/// Resolves the `v1` tag of `layout` for the host platform, which must fail; the message.
async fn resolve_layout_err(e: &common::Env, layout: &TestLayout) -> String {
    let r = image(&format!("oci-layout://{}:v1", layout.dir.display()));
    e.registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap_err()
        .to_string()
}

/// A one-platform layout whose config lists its two diff ids in the wrong order.
fn swapped_diff_ids(dir: &Path) -> TestLayout {
    build_layout_with(
        dir,
        "v1",
        &[host_platform()],
        &|c| {
            let ids = c["rootfs"]["diff_ids"].as_array_mut().unwrap();
            ids.swap(0, 1);
        },
        &|_| {},
    )
}

fn diff_ids_of(layout: &TestLayout) -> Vec<Digest> {
    let config = std::fs::read(
        layout
            .dir
            .join("blobs/sha256")
            .join(layout.images[0].config_digest.hex()),
    )
    .unwrap();
    let config: Value = serde_json::from_slice(&config).unwrap();
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().parse().unwrap())
        .collect()
}

fn assert_diff_id_refused(err: &Error, layout: &TestLayout) {
    let ids = diff_ids_of(layout);
    match err {
        Error::DiffIdMismatch(m) => {
            assert_eq!(m.index, 0);
            assert_eq!(m.layer, layout.images[0].layer_digests[0]);
            // The config lists layer 1's diff id first; layer 0 unpacks to the other one.
            assert_eq!(m.expected, ids[0]);
            assert_eq!(m.computed, ids[1]);
        }
        other => panic!("expected a diff id mismatch, got {other:?}"),
    }
    assert_eq!(err.category(), Category::Invalid);
    let msg = err.to_string();
    for part in [
        "layer 0",
        &ids[0].to_string(),
        &ids[1].to_string(),
        "rootfs.diff_ids[0]",
    ] {
        assert!(msg.contains(part), "{part} missing from: {msg}");
    }
}

/// No layer was unpacked into the store (kiln imports only after `fetch_layers` succeeds; this
/// checks the registry crate did not do it either).
fn assert_nothing_imported(store: &Store) {
    let layers = store.root().join("layers");
    let count = std::fs::read_dir(&layers).map_or(0, |d| {
        d.filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        })
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            !["by-blob", "by-diff-id"].contains(&name.to_str().unwrap_or(""))
        })
        .count()
    });
    assert_eq!(count, 0, "layers were imported into {}", layers.display());
}

#[tokio::test]
async fn a_layer_whose_diff_id_differs_from_the_config_is_refused_from_a_layout() {
    let e = env();
    let layout = swapped_diff_ids(&e.tmp.path().join("layout"));
    let r = image(&format!("oci-layout://{}:v1", layout.dir.display()));
    let got = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    let err = e.registry.fetch_layers(&got, &e.store).await.unwrap_err();
    assert_diff_id_refused(&err, &layout);
    assert_nothing_imported(&e.store);
    // Refused again when the blobs are already in the store.
    let err = e.registry.fetch_layers(&got, &e.store).await.unwrap_err();
    assert_diff_id_refused(&err, &layout);
}

#[tokio::test]
async fn a_layer_whose_diff_id_differs_from_the_config_is_refused_from_a_registry() {
    let e = env();
    let reg = TestRegistry::start();
    let layout = swapped_diff_ids(&e.tmp.path().join("layout"));
    reg.push(&layout.dir, "v1", "test/lying");
    let r = image(&format!("{}/test/lying:v1", reg.host));
    let got = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    let err = e.registry.fetch_layers(&got, &e.store).await.unwrap_err();
    assert_diff_id_refused(&err, &layout);
    assert!(err.to_string().contains("test/lying"), "{err}");
    assert_nothing_imported(&e.store);
}

#[tokio::test]
async fn layers_and_diff_ids_must_pair_up() {
    let e = env();
    let layout = build_layout_with(
        &e.tmp.path().join("layout"),
        "v1",
        &[host_platform()],
        &|c| {
            c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
        },
        &|_| {},
    );
    let err = resolve_layout_err(&e, &layout).await;
    assert!(
        err.contains("the manifest lists 2 layers but the image config lists 1 diff ids"),
        "{err}"
    );
}

/// A string of `n` bytes, for annotations and labels that make documents large.
fn filler(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test]
async fn oversized_documents_in_a_layout_are_refused_before_parsing() {
    let e = env();
    let big = usize::try_from(MAX_MANIFEST_SIZE).unwrap();
    let layout = build_layout_with(
        &e.tmp.path().join("manifest"),
        "v1",
        &[host_platform()],
        &|_| {},
        &|m| m["annotations"] = json!({ "pad": filler(big) }),
    );
    let err = resolve_layout_err(&e, &layout).await;
    let digest = layout.images[0].manifest_digest.to_string();
    assert!(err.contains(&format!("manifest {digest} is ")), "{err}");
    assert!(
        err.contains("more than the 4194304 bytes (4 MiB) kiln accepts"),
        "{err}"
    );
    assert!(err.contains(&layout.dir.display().to_string()), "{err}");

    let layout = build_layout_with(
        &e.tmp.path().join("config"),
        "v1",
        &[host_platform()],
        &|c| c["config"]["Labels"]["pad"] = json!(filler(9 << 20)),
        &|_| {},
    );
    let err = resolve_layout_err(&e, &layout).await;
    let digest = layout.images[0].config_digest.to_string();
    assert!(err.contains(&format!("image config {digest} is ")), "{err}");
    assert!(err.contains("(8 MiB) kiln accepts"), "{err}");
    assert!(!e.store.has_blob(&layout.images[0].config_digest));

    // index.json too.
    let dir = e.tmp.path().join("index");
    build_layout_with(&dir, "v1", &[host_platform()], &|_| {}, &|_| {});
    let index = json!({"schemaVersion": 2, "manifests": [], "annotations": {"pad": filler(big)}});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let r = image(&format!("oci-layout://{}:v1", dir.display()));
    let err = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("index.json is "), "{err}");
    assert!(err.contains("(4 MiB) kiln accepts"), "{err}");
}

/// Serves `/v2/` and one manifest, `body`, at `/v2/x/manifests/big` on a loopback port, for
/// at most `max` connections (then the thread ends). A real registry refuses to store a
/// manifest this large, so a hostile one is played by hand.
fn serve_manifest(body: Vec<u8>, max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            let (status, content_type, payload): (&str, &str, &[u8]) = match path {
                "/v2/" => ("200 OK", "application/json", b"{}"),
                "/v2/x/manifests/big" => (
                    "200 OK",
                    "application/vnd.oci.image.manifest.v1+json",
                    &body,
                ),
                _ => ("404 Not Found", "application/json", b"{}"),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Docker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                payload.len(),
                Digest::of(payload)
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(payload);
        }
    });
    addr
}

#[tokio::test]
async fn an_oversized_manifest_from_a_registry_is_refused_before_parsing() {
    let e = env();
    let config = Digest::of(b"config");
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": 6},
        "layers": [],
        "annotations": {"pad": filler(usize::try_from(MAX_MANIFEST_SIZE).unwrap())}
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    let size = body.len();
    let addr = serve_manifest(body, 20);
    let r = image(&format!("{addr}/x:big"));
    let err = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadDocument { .. }), "{err:?}");
    assert_eq!(err.category(), Category::Invalid);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("failed to resolve {addr}/x:big")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "manifest is {size} bytes, more than the 4194304 bytes (4 MiB) kiln accepts"
        )),
        "{msg}"
    );
}
