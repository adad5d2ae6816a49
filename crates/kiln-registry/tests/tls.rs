//! Registries over https with a private CA: a real `docker-registry` serving TLS (and asking
//! for client certificates), certificates made by `openssl`, images pushed and pulled by kiln.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{build_layout, host_platform, image, require_tool, TestRegistry};
use kiln_registry::{Category, HostOptions, KeyPair, Reference, Registry, RegistryOptions};
use kiln_snapshot::Store;
use kiln_types::Platform;

fn openssl(args: &[&str]) {
    let out = Command::new(require_tool("openssl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), and certificates it signs: `server` for 127.0.0.1 and localhost,
/// `client` for client auth, `elsewhere` for the name elsewhere.example only.
fn make_certs(dir: &Path) {
    let d = |n: &str| dir.join(n).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    let (ca_key, ca_pem) = (d("ca.key"), d("ca.pem"));
    args.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=kiln registry test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&args);
    for (who, san, usage) in [
        ("server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
        ("client", "DNS:client.example", "clientAuth"),
        ("elsewhere", "DNS:elsewhere.example", "serverAuth"),
    ] {
        let (key, csr, pem, ext) = (
            d(&format!("{who}.key")),
            d(&format!("{who}.csr")),
            d(&format!("{who}.pem")),
            d(&format!("{who}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .unwrap();
        let subject = format!("/CN=kiln registry test {who}");
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&args);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// `expired.pem` / `expired.key`: a server certificate for 127.0.0.1 signed by the test CA of
/// `make_certs`, valid on 1 January 2020 only (`openssl ca` sets the dates `x509 -req` cannot).
fn make_expired(dir: &Path) {
    let d = |n: &str| dir.join(n).display().to_string();
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    std::fs::write(dir.join("expired.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = test\n[test]\ndatabase = {}\nnew_certs_dir = {}\n\
             default_md = sha256\npolicy = any\nserial = {}\n[any]\ncommonName = supplied\n",
            d("index.txt"),
            dir.display(),
            d("serial")
        ),
    )
    .unwrap();
    let (key, csr) = (d("expired.key"), d("expired.csr"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        "/CN=kiln registry test expired",
    ]);
    openssl(&[
        "ca",
        "-batch",
        "-config",
        &d("ca.cnf"),
        "-cert",
        &d("ca.pem"),
        "-keyfile",
        &d("ca.key"),
        "-in",
        &csr,
        "-out",
        &d("expired.pem"),
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
        "-extfile",
        &d("expired.ext"),
    ]);
}

/// A test CA with its server and client certificates in a new `certs/` under `dir`.
fn test_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    certs
}

/// What resolving `reference` (one platform, this host's) fails with.
async fn resolve_error(
    registry: &Registry,
    reference: &str,
    store: &Store,
) -> kiln_registry::Error {
    registry
        .resolve(&image(reference), &Platform::host(), store)
        .await
        .unwrap_err()
}

/// A registry serving `cert` over TLS; with `client_ca`, it requires client certificates
/// signed by it.
fn tls_registry(certs: &Path, cert: &str, client_ca: bool) -> TestRegistry {
    let mut tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        certs.join(format!("{cert}.pem")).display(),
        certs.join(format!("{cert}.key")).display()
    );
    if client_ca {
        tls.push_str(&format!(
            "    clientcas:\n      - {}\n",
            certs.join("ca.pem").display()
        ));
    }
    TestRegistry::start_tls(&tls)
}

fn client(docker: &Path, host: &str, opts: HostOptions) -> Registry {
    std::fs::create_dir_all(docker).unwrap();
    Registry::new(RegistryOptions {
        insecure: Vec::new(),
        docker_config: Some(docker.to_owned()),
        hosts: [(host.to_owned(), opts)].into_iter().collect(),
    })
    .unwrap()
}

fn with_ca(certs: &Path) -> HostOptions {
    HostOptions {
        ca: vec![certs.join("ca.pem")],
        ..HostOptions::default()
    }
}

fn client_keypair(certs: &Path) -> KeyPair {
    KeyPair {
        cert: certs.join("client.pem"),
        key: certs.join("client.key"),
    }
}

/// Puts a one-platform test image in `store` (from a layout) and pushes it to
/// `registry`'s `target`; returns the manifest digest.
async fn push_test_image(
    tmp: &Path,
    registry: &Registry,
    store: &Store,
    target: &str,
) -> Result<kiln_types::Digest, kiln_registry::Error> {
    let layout = build_layout(&tmp.join("layout"), "v1", &[host_platform()]);
    let local = image(&format!("oci-layout://{}:v1", layout.dir.display()));
    let resolved = registry
        .resolve(&local, &Platform::host(), store)
        .await
        .unwrap();
    registry.fetch_layers(&resolved, store).await.unwrap();
    let manifest = std::fs::read(
        layout
            .dir
            .join("blobs/sha256")
            .join(resolved.manifest_digest.hex()),
    )
    .unwrap();
    let mut blobs = vec![(resolved.config_digest, {
        let p = store.blob_path(&resolved.config_digest);
        std::fs::metadata(p).unwrap().len()
    })];
    blobs.extend(resolved.layers.iter().map(|l| (l.digest, l.size)));
    let target = Reference::parse_normalized(target).unwrap();
    registry
        .push(
            &target,
            &blobs,
            &manifest,
            "application/vnd.oci.image.manifest.v1+json",
            store,
        )
        .await
}

/// `skopeo inspect` of `reference` trusting only `cert_dir` (docker's certs.d layout).
fn skopeo_digest(reference: &str, cert_dir: &Path) -> String {
    let out = Command::new(require_tool("skopeo"))
        .args(["inspect", "--raw"])
        .arg(format!("--cert-dir={}", cert_dir.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    kiln_types::Digest::of(&out.stdout).to_string()
}

/// A certs.d-style directory for skopeo: the CA, and the client certificate when given.
fn skopeo_certs(tmp: &Path, certs: &Path, client: bool) -> PathBuf {
    let dir = tmp.join("skopeo-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(certs.join("ca.pem"), dir.join("ca.crt")).unwrap();
    if client {
        std::fs::copy(certs.join("client.pem"), dir.join("client.cert")).unwrap();
        std::fs::copy(certs.join("client.key"), dir.join("client.key")).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_loopback_https_registry_with_its_ca_in_the_config_is_pushed_to_and_pulled_from() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = test_certs(tmp.path());
    let reg = tls_registry(&certs, "server", false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    // Only `ca` is given: a loopback host with a CA of its own is https.
    let registry = client(&tmp.path().join("docker"), &reg.host, with_ca(&certs));
    let target = format!("{}/tls/app:v1", reg.host);
    let digest = push_test_image(tmp.path(), &registry, &store, &target)
        .await
        .unwrap();
    // Read back by another client, trusting the test CA only.
    let skopeo = skopeo_certs(tmp.path(), &certs, false);
    assert_eq!(skopeo_digest(&target, &skopeo), digest.to_string());

    let pulled = Store::open(tmp.path().join("store2")).unwrap();
    let fresh = client(&tmp.path().join("docker2"), &reg.host, with_ca(&certs));
    let resolved = fresh
        .resolve(&image(&target), &Platform::host(), &pulled)
        .await
        .unwrap();
    assert_eq!(resolved.manifest_digest, digest);
    fresh.fetch_layers(&resolved, &pulled).await.unwrap();
    for l in &resolved.layers {
        assert!(pulled.has_blob(&l.digest), "{}", l.digest);
    }
}

#[tokio::test]
async fn without_its_ca_the_error_names_the_host_and_the_certificate_and_nothing_goes_plain() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = test_certs(tmp.path());
    let reg = tls_registry(&certs, "server", false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let https = HostOptions {
        http: Some(false),
        ..HostOptions::default()
    };
    let registry = client(&tmp.path().join("docker"), &reg.host, https);
    let e = resolve_error(&registry, &format!("{}/tls/app:v1", reg.host), &store).await;
    let text = e.to_string();
    assert_eq!(e.category(), Category::Unavailable, "{text}");
    assert!(
        text.contains(&format!(
            "registry {}: the certificate is not trusted (unknown issuer)",
            reg.host
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("[registry.\"{}\"] ca", reg.host)),
        "{text}"
    );
    // The same refusal when pushing.
    let e = push_test_image(
        tmp.path(),
        &registry,
        &store,
        &format!("{}/tls/app:v1", reg.host),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("unknown issuer"), "{e}");
    // The registry saw TLS handshakes fail, and never a plain-http request (Go's server logs
    // one as "client sent an HTTP request to an HTTPS server", older ones as a first record
    // that "does not look like a TLS handshake").
    // Go's server logs a failed handshake after the client has gone: wait for both (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = reg.log();
    while log.matches("TLS handshake error").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        log = reg.log();
    }
    assert!(log.matches("TLS handshake error").count() >= 2, "{log}");
    assert!(!log.contains("HTTP request to an HTTPS server"), "{log}");
    assert!(!log.contains("does not look like a TLS handshake"), "{log}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_with_the_names() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = test_certs(tmp.path());
    let reg = tls_registry(&certs, "elsewhere", false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let registry = client(&tmp.path().join("docker"), &reg.host, with_ca(&certs));
    let text = resolve_error(&registry, &format!("{}/tls/app:v1", reg.host), &store)
        .await
        .to_string();
    assert!(
        text.contains(&format!(
            "registry {}: the certificate is not valid for the name 127.0.0.1",
            reg.host
        )),
        "{text}"
    );
    assert!(text.contains("(it is for elsewhere.example)"), "{text}");
}

#[tokio::test]
async fn a_registry_requiring_a_client_certificate_gets_the_configured_keypair() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = test_certs(tmp.path());
    let reg = tls_registry(&certs, "server", true);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let target = format!("{}/mtls/app:v1", reg.host);

    // Without a client certificate: refused, and the message says how to give one.
    let registry = client(&tmp.path().join("docker"), &reg.host, with_ca(&certs));
    let text = resolve_error(&registry, &target, &store).await.to_string();
    assert!(
        text.contains(&format!(
            "registry {}: the registry requires a client certificate",
            reg.host
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("[[registry.\"{}\".keypair]]", reg.host)),
        "{text}"
    );

    let mtls = HostOptions {
        keypairs: vec![client_keypair(&certs)],
        ..with_ca(&certs)
    };
    let registry = client(&tmp.path().join("docker2"), &reg.host, mtls);
    let digest = push_test_image(tmp.path(), &registry, &store, &target)
        .await
        .unwrap();
    let skopeo = skopeo_certs(tmp.path(), &certs, true);
    assert_eq!(skopeo_digest(&target, &skopeo), digest.to_string());
    let resolved = registry
        .resolve(&image(&target), &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(resolved.manifest_digest, digest);
}

#[tokio::test]
async fn an_expired_certificate_is_refused_as_expired() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = test_certs(tmp.path());
    make_expired(&certs);
    let reg = tls_registry(&certs, "expired", false);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let registry = client(&tmp.path().join("docker"), &reg.host, with_ca(&certs));
    let text = resolve_error(&registry, &format!("{}/tls/app:v1", reg.host), &store)
        .await
        .to_string();
    assert!(
        text.contains(&format!(
            "registry {}: the certificate has expired",
            reg.host
        )),
        "{text}"
    );
}
