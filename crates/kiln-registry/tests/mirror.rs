//! Per-host registry settings (kiln.toml's `[registry."host"]`): mirrors tried in order before
//! the host, as BuildKit's resolver does, and the `http` switch; against real loopback
//! `docker-registry` servers, without internet.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use std::collections::BTreeMap;

use common::{build_layout, free_port, host_platform, image, store_blobs, TestRegistry};
use kiln_registry::{Category, HostOptions, Registry, RegistryOptions};
use kiln_snapshot::Store;
use kiln_types::Platform;

fn client(dir: &std::path::Path, hosts: &[(&str, HostOptions)]) -> Registry {
    std::fs::create_dir_all(dir).unwrap();
    Registry::new(RegistryOptions {
        insecure: Vec::new(),
        docker_config: Some(dir.to_owned()),
        hosts: hosts
            .iter()
            .map(|(h, o)| ((*h).to_owned(), o.clone()))
            .collect::<BTreeMap<_, _>>(),
    })
    .unwrap()
}

fn mirrors(list: &[String]) -> HostOptions {
    HostOptions {
        mirrors: list.to_vec(),
        ..HostOptions::default()
    }
}

#[tokio::test]
async fn docker_hub_images_come_from_the_first_mirror_that_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start();
    let layout = build_layout(&tmp.path().join("layout"), "v1", &[host_platform()]);
    // What a pull-through mirror of Docker Hub holds: the normalized repository.
    reg.push(&layout.dir, "v1", "library/app");
    let want = &layout.images[0];
    let down = format!("127.0.0.1:{}", free_port());
    let registry = client(
        &tmp.path().join("docker"),
        &[("docker.io", mirrors(&[down, reg.host.clone()]))],
    );
    let store = Store::open(tmp.path().join("store")).unwrap();

    // No internet here: only the mirror can answer.
    let app = image("app:v1");
    let got = registry
        .resolve(&app, &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, want.manifest_digest);
    // The image keeps its own name, whichever mirror served it.
    assert_eq!(
        got.reference.to_string(),
        format!("docker.io/library/app:v1@{}", want.manifest_digest)
    );
    registry.fetch_layers(&got, &store).await.unwrap();
    let mut expected: Vec<_> = got.layers.iter().map(|l| l.digest).collect();
    expected.push(got.config_digest);
    expected.sort();
    assert_eq!(store_blobs(&store), expected);
}

#[tokio::test]
async fn a_mirror_path_goes_before_the_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start();
    let layout = build_layout(&tmp.path().join("layout"), "v1", &[host_platform()]);
    // Harbor's proxy projects: `harbor/proxy.docker.io` mirrors Docker Hub.
    reg.push(&layout.dir, "v1", "proxy.docker.io/library/app");
    let registry = client(
        &tmp.path().join("docker"),
        &[(
            "docker.io",
            mirrors(&[format!("{}/proxy.docker.io/", reg.host)]),
        )],
    );
    let store = Store::open(tmp.path().join("store")).unwrap();
    let got = registry
        .resolve(
            &image("docker.io/library/app:v1"),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, layout.images[0].manifest_digest);
}

#[tokio::test]
async fn the_host_itself_is_tried_after_its_mirrors() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = TestRegistry::start();
    let empty_mirror = TestRegistry::start();
    let layout = build_layout(&tmp.path().join("layout"), "v1", &[host_platform()]);
    upstream.push(&layout.dir, "v1", "team/app");
    let registry = client(
        &tmp.path().join("docker"),
        &[(
            upstream.host.as_str(),
            mirrors(std::slice::from_ref(&empty_mirror.host)),
        )],
    );
    let store = Store::open(tmp.path().join("store")).unwrap();
    let r = image(&format!("{}/team/app:v1", upstream.host));
    let got = registry
        .resolve(&r, &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, layout.images[0].manifest_digest);
    registry.fetch_layers(&got, &store).await.unwrap();

    // Nowhere at all: the error is the host's "not found", not a mirror's.
    let missing = image(&format!("{}/team/none:v1", upstream.host));
    let e = registry
        .resolve(&missing, &Platform::host(), &store)
        .await
        .unwrap_err();
    assert_eq!(e.category(), Category::NotFound, "{e}");
}

#[tokio::test]
async fn http_false_makes_even_a_loopback_registry_https() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = TestRegistry::start();
    let layout = build_layout(&tmp.path().join("layout"), "v1", &[host_platform()]);
    reg.push(&layout.dir, "v1", "app");
    let r = image(&format!("{}/app:v1", reg.host));
    let store = Store::open(tmp.path().join("store")).unwrap();

    let https = HostOptions {
        http: Some(false),
        ..HostOptions::default()
    };
    let registry = client(&tmp.path().join("docker"), &[(reg.host.as_str(), https)]);
    let e = registry
        .resolve(&r, &Platform::host(), &store)
        .await
        .unwrap_err();
    // The server speaks plain http: a TLS handshake with it fails.
    assert_eq!(e.category(), Category::Unavailable, "{e}");

    let plain = HostOptions {
        http: Some(true),
        ..HostOptions::default()
    };
    let registry = client(&tmp.path().join("docker2"), &[(reg.host.as_str(), plain)]);
    registry
        .resolve(&r, &Platform::host(), &store)
        .await
        .unwrap();
}
