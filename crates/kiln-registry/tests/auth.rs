//! Basic auth against a real `docker-registry` with an htpasswd file, credentials from a
//! docker `config.json`.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use base64::Engine as _;
use common::{build_layout, host_platform, TestRegistry};
use kiln_registry::{Category, Error, ImageRef, Registry, RegistryOptions};
use kiln_snapshot::Store;
use kiln_types::Platform;

fn registry_with_config(dir: &std::path::Path, config_json: Option<String>) -> Registry {
    std::fs::create_dir_all(dir).unwrap();
    if let Some(json) = config_json {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }
    Registry::new(RegistryOptions {
        insecure: Vec::new(),
        docker_config: Some(dir.to_owned()),
        hosts: Default::default(),
    })
    .unwrap()
}

#[tokio::test]
async fn basic_auth_from_docker_config() {
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let reg = TestRegistry::start_with_htpasswd(&htpasswd);
    let layout = build_layout(&tmp.path().join("layout"), "v1", &[host_platform()]);
    reg.push_as(&layout.dir, "v1", "private/app", Some("alice:s3cret"));
    let store = Store::open(tmp.path().join("store")).unwrap();
    let image: ImageRef = format!("{}/private/app:v1", reg.host).parse().unwrap();
    let host = Platform::host();

    // Anonymous: refused, with what to do.
    let anonymous = registry_with_config(&tmp.path().join("anon"), None);
    let err = anonymous.resolve(&image, &host, &store).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.category(), Category::Unauthorized);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "failed to resolve {image}: unauthorized: authentication required"
        )),
        "{msg}"
    );
    assert!(msg.contains("docker login"), "{msg}");

    // Wrong password: refused too.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let wrong = registry_with_config(
        &tmp.path().join("wrong"),
        Some(format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host,
            b64("alice:nope")
        )),
    );
    let err = wrong.resolve(&image, &host, &store).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert_eq!(err.category(), Category::Unauthorized);

    // The right credentials, keyed the way `docker login` writes them.
    let good = registry_with_config(
        &tmp.path().join("good"),
        Some(format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{}"}}}}}}"#,
            reg.host,
            b64("alice:s3cret")
        )),
    );
    let got = good.resolve(&image, &host, &store).await.unwrap();
    assert_eq!(got.manifest_digest, layout.images[0].manifest_digest);
    good.fetch_layers(&got, &store).await.unwrap();
    for d in &layout.images[0].layer_digests {
        assert!(store.has_blob(d));
    }
}
