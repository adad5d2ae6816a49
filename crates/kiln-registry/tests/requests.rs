//! What a pull asks of a registry: one that needs no authentication is asked so once (a
//! `GET /v2/`), not before every manifest and blob request as oci-client did.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{env, image};
use kiln_types::{Digest, Platform};
use serde_json::json;

/// Serves `/v2/` (200, no challenge) and `files` (path → body) on a loopback port, one
/// request per connection; returns its address and the paths asked, in order.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            log.lock().unwrap().push(path.clone());
            let found = files.iter().find(|(p, _)| *p == path).map(|(_, b)| b);
            let (status, payload): (&str, &[u8]) = match (path.as_str(), found) {
                ("/v2/", _) => ("200 OK", b"{}"),
                (_, Some(body)) => ("200 OK", body),
                _ => ("404 Not Found", b"{}"),
            };
            let content_type = if path.contains("/manifests/") {
                "application/vnd.oci.image.manifest.v1+json"
            } else {
                "application/octet-stream"
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
    (addr, asked)
}

#[tokio::test]
async fn an_open_registry_is_asked_for_authentication_once_per_pull() {
    let e = env();
    let layers: Vec<Vec<u8>> = (0..3).map(|i| format!("layer {i}").into_bytes()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers",
                   "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": layers.iter().map(|l| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": Digest::of(l).to_string(), "size": l.len()})).collect::<Vec<_>>()
    }))
    .unwrap();
    let mut files = vec![
        ("/v2/x/manifests/v1".to_owned(), manifest),
        (format!("/v2/x/blobs/{}", Digest::of(&config)), config),
    ];
    for l in &layers {
        files.push((format!("/v2/x/blobs/{}", Digest::of(l)), l.clone()));
    }
    let (addr, asked) = serve(files);
    let r = image(&format!("{addr}/x:v1"));
    // Two sessions: the resolve (manifest, config) and the blob fetch (three layers).
    let resolved = e
        .registry
        .resolve(&r, &Platform::host(), &e.store)
        .await
        .unwrap();
    let kiln_registry::ImageRef::Registry(reference) = &resolved.reference else {
        panic!("a registry image: {r:?}");
    };
    e.registry
        .fetch_blobs(reference, &resolved.layers, &e.store)
        .await
        .unwrap();
    for l in &resolved.layers {
        assert!(e.store.has_blob(&l.digest), "{} fetched", l.digest);
    }
    let asked = asked.lock().unwrap().clone();
    let pings = asked.iter().filter(|p| *p == "/v2/").count();
    assert_eq!(pings, 1, "asked: {asked:?}");
    assert_eq!(asked.len(), 1 + 1 + 1 + 3, "asked: {asked:?}");
}

#[tokio::test]
async fn a_base_resolved_by_tag_is_pulled_by_digest_without_fetching_its_manifest_again() {
    // A build resolves `FROM x:v1` (the index, then the platform's manifest), then pulls
    // `x@<manifest digest>`: that manifest was fetched, verified, a moment ago.
    let e = env();
    let layer = b"layer".to_vec();
    let config = serde_json::to_vec(&json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&layer).to_string()]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": Digest::of(&layer).to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": Digest::of(&manifest).to_string(), "size": manifest.len(),
                       "platform": {"architecture": Platform::host().architecture,
                                    "os": "linux"}}]
    }))
    .unwrap();
    let manifest_path = format!("/v2/x/manifests/{}", Digest::of(&manifest));
    let files = vec![
        ("/v2/x/manifests/v1".to_owned(), index),
        (manifest_path.clone(), manifest.clone()),
        (format!("/v2/x/blobs/{}", Digest::of(&config)), config),
        (format!("/v2/x/blobs/{}", Digest::of(&layer)), layer),
    ];
    let (addr, asked) = serve(files);
    let by_tag = e
        .registry
        .resolve(&image(&format!("{addr}/x:v1")), &Platform::host(), &e.store)
        .await
        .unwrap();
    let pinned = format!("{addr}/x@{}", Digest::of(&manifest));
    let by_digest = e
        .registry
        .resolve(&image(&pinned), &Platform::host(), &e.store)
        .await
        .unwrap();
    assert_eq!(by_digest.manifest_digest, by_tag.manifest_digest);
    assert_eq!(by_digest.layers, by_tag.layers);
    let asked = asked.lock().unwrap().clone();
    let fetched = asked.iter().filter(|p| **p == manifest_path).count();
    assert_eq!(fetched, 1, "asked: {asked:?}");
    // Another repository is asked, even for the same digest.
    let other = format!("{addr}/y@{}", Digest::of(&manifest));
    assert!(e
        .registry
        .resolve(&image(&other), &Platform::host(), &e.store)
        .await
        .is_err());
}
