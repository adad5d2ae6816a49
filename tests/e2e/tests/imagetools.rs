//! `kiln imagetools inspect|create` against the loopback registry and the goarch fixture that
//! `cargo xtask test` pushes there (`goarch:amd64`, `goarch:arm64`, `goarch:s390x`: one
//! image each; `goarch:latest`: the index of all three).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_e2e::registry::OwnRegistry;
use kiln_e2e::{test_registry, tool, Kiln};
use serde_json::Value;

/// A repository name of this test run, so that runs sharing a registry do not meet.
fn repo(what: &str) -> String {
    format!("imagetools-{}/{what}", std::process::id())
}

/// The HTTP status of `HEAD path` on the plain-http registry `addr`.
fn head(addr: &str, path: &str, accept: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer from {addr}: {answer:?}"))
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// skopeo's view of `reference` for one architecture: the image config.
fn config_for(reference: &str, arch: &str) -> Value {
    serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            &format!("docker://{reference}"),
        ],
    ))
    .unwrap()
}

/// The manifest (or index) as the registry serves it, through skopeo.
fn raw(reference: &str) -> Value {
    serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .unwrap()
}

/// Every blob (config and layers) of every image of index `reference` exists in the
/// repository `repository` of registry `addr`, as do the images' manifests.
fn assert_blobs_in(addr: &str, repository: &str, reference: &str) {
    let index = raw(reference);
    for m in index["manifests"].as_array().unwrap() {
        let digest = m["digest"].as_str().unwrap();
        let path = format!("/v2/{repository}/manifests/{digest}");
        assert_eq!(head(addr, &path, MANIFEST_TYPES), 200, "{path}");
        let manifest = raw(&format!("{addr}/{repository}@{digest}"));
        let layers = manifest["layers"].as_array().unwrap();
        assert!(!layers.is_empty());
        for blob in layers.iter().chain([&manifest["config"]]) {
            let path = format!(
                "/v2/{repository}/blobs/{}",
                blob["digest"].as_str().unwrap()
            );
            assert_eq!(head(addr, &path, "*/*"), 200, "{path}");
        }
    }
}

/// The merge of two single-platform pushes is an index that skopeo reads per platform; its
/// images' blobs were mounted into the new repository (no layer went through kiln), and
/// inspect lists both platforms.
#[test]
fn create_merges_single_platform_images_into_an_index() {
    let addr = test_registry();
    let k = Kiln::new(&[]);
    let repository = repo("merged");
    let target = format!("{addr}/{repository}:1");
    let r = k
        .run(&[
            "imagetools",
            "create",
            "-t",
            &target,
            "--metadata-file",
            k.path("metadata.json").to_str().unwrap(),
            &format!("{addr}/goarch:amd64"),
            &format!("{addr}/goarch:arm64"),
        ])
        .ok();
    // Config and layer of each image: mounted from goarch, none streamed.
    assert_eq!(
        r.stderr
            .matches("2 blobs mounted, 0 streamed, 0 already there")
            .count(),
        2,
        "{}",
        r.stderr
    );
    for arch in ["arm64", "amd64"] {
        let cfg = config_for(&target, arch);
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(cfg["config"]["Cmd"][0], "/goarch");
    }
    let index = raw(&target);
    // buildx's metadata: the pushed index's descriptor (skopeo reads it under that digest).
    let metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(k.path("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["image.name"], format!("{addr}/{repository}"));
    let descriptor = &metadata["containerimage.descriptor"];
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let pinned = format!(
        "{addr}/{repository}@{}",
        descriptor["digest"].as_str().unwrap()
    );
    assert_eq!(raw(&pinned), index);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // The images are the sources' own manifests, by digest.
    let source = raw(&format!("{addr}/goarch:latest"));
    for m in index["manifests"].as_array().unwrap() {
        assert!(
            source["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["digest"] == m["digest"] && s["platform"] == m["platform"]),
            "{m} is not in goarch:latest"
        );
    }
    assert_blobs_in(&addr, &repository, &target);

    let shown = k.run(&["imagetools", "inspect", &target]).ok();
    assert!(
        shown.stdout.starts_with(&format!(
            "Name:      {target}\nMediaType: application/vnd.oci.image.index.v1+json\nDigest:    sha256:"
        )),
        "{}",
        shown.stdout
    );
    for (i, platform) in ["linux/amd64", "linux/arm64"].iter().enumerate() {
        let digest = index["manifests"][i]["digest"].as_str().unwrap();
        assert!(
            shown.stdout.contains(&format!(
                "  Name:      {target}@{digest}\n  MediaType: application/vnd.oci.image.manifest.v1+json\n  Platform:  {platform}\n"
            )),
            "{}",
            shown.stdout
        );
    }

    // --append adds s390x to the index the tag names.
    k.run(&[
        "imagetools",
        "create",
        "--append",
        "-t",
        &target,
        &format!("{addr}/goarch:s390x"),
    ])
    .ok();
    assert_eq!(config_for(&target, "s390x")["architecture"], "s390x");
    assert_eq!(config_for(&target, "arm64")["architecture"], "arm64");
    assert_eq!(raw(&target)["manifests"].as_array().unwrap().len(), 3);
}

/// inspect: the index's platforms as text, `--raw` the registry's bytes exactly (same digest
/// as skopeo's), `{{json .}}` the manifest and each platform's config.
#[test]
fn inspect_shows_an_index_raw_and_as_json() {
    let addr = test_registry();
    let k = Kiln::new(&[]);
    let reference = format!("{addr}/goarch:latest");
    let text = k.run(&["imagetools", "inspect", &reference]).ok().stdout;
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("Digest:    "))
        .unwrap_or_else(|| panic!("no digest in:\n{text}"))
        .to_owned();
    for p in ["linux/arm64", "linux/s390x", "linux/amd64"] {
        assert!(text.contains(&format!("  Platform:  {p}\n")), "{text}");
    }

    // JSON is UTF-8, so the text kiln printed is its bytes.
    let bytes = k
        .run(&["imagetools", "inspect", "--raw", &reference])
        .ok()
        .stdout
        .into_bytes();
    let skopeo = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is required for this test");
    assert!(skopeo.status.success());
    assert_eq!(bytes, skopeo.stdout, "--raw must be the registry's bytes");
    assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), digest);

    let all: Value = serde_json::from_str(
        &k.run(&[
            "imagetools",
            "inspect",
            "--format",
            "{{json .}}",
            &reference,
        ])
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(all["name"], reference.as_str());
    assert_eq!(all["manifest"]["digest"], digest.as_str());
    assert_eq!(all["manifest"]["manifests"].as_array().unwrap().len(), 3);
    for arch in ["amd64", "arm64", "s390x"] {
        assert_eq!(all["image"][format!("linux/{arch}")]["architecture"], arch);
    }
    // A single image: its descriptor and its one config.
    let one: Value = serde_json::from_str(
        &k.run(&[
            "imagetools",
            "inspect",
            "--format",
            "{{json .}}",
            &format!("{addr}/goarch:arm64"),
        ])
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(
        one["manifest"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(one["image"]["architecture"], "arm64");
}

/// sha256 of `data` with the system's sha256sum (the harness has no hashing crate).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) is required for this test");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// --dry-run prints the index and pushes nothing: the tag does not exist afterwards.
#[test]
fn dry_run_prints_the_index_and_pushes_nothing() {
    let addr = test_registry();
    let k = Kiln::new(&[]);
    let repository = repo("dry");
    let r = k
        .run(&[
            "imagetools",
            "create",
            "--dry-run",
            "-t",
            &format!("{addr}/{repository}:1"),
            "--annotation",
            "index:org.opencontainers.image.authors=kiln",
            &format!("{addr}/goarch:s390x"),
            &format!("{addr}/goarch:arm64"),
        ])
        .ok();
    let index: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["annotations"]["org.opencontainers.image.authors"],
        "kiln"
    );
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["s390x", "arm64"]);
    // --platform keeps the platforms asked for, under any spelling.
    let r = k
        .run(&[
            "imagetools",
            "create",
            "--dry-run",
            "--platform",
            "linux/aarch64,linux/s390x",
            &format!("{addr}/goarch:latest"),
        ])
        .ok();
    let index: Value = serde_json::from_str(&r.stdout).unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["arm64", "s390x"]);
    assert_eq!(
        head(
            &addr,
            &format!("/v2/{repository}/manifests/1"),
            MANIFEST_TYPES
        ),
        404
    );
}

/// A source that does not exist fails the command, naming it; nothing is pushed.
#[test]
fn a_missing_source_is_named() {
    let addr = test_registry();
    let k = Kiln::new(&[]);
    let repository = repo("missing");
    let missing = format!("{addr}/goarch:no-such-tag");
    let r = k
        .run(&[
            "imagetools",
            "create",
            "-t",
            &format!("{addr}/{repository}:1"),
            &format!("{addr}/goarch:amd64"),
            &missing,
        ])
        .fails();
    assert!(r.stderr.contains(&missing), "{}", r.stderr);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    assert_eq!(
        head(
            &addr,
            &format!("/v2/{repository}/manifests/1"),
            MANIFEST_TYPES
        ),
        404
    );
    let r = k.run(&["imagetools", "inspect", &missing]).fails();
    assert!(r.stderr.contains(&missing), "{}", r.stderr);
}

/// Between two registries no mount is possible: the blobs are streamed from one to the other,
/// and the index (one source index: copied as it is, same digest) reads back per platform.
#[test]
fn create_across_registries_streams_the_blobs() {
    let addr = test_registry();
    let other = OwnRegistry::start();
    let k = Kiln::new(&[]);
    let target = format!("{}/copy:1", other.addr);
    let source = format!("{addr}/goarch:latest");
    let r = k
        .run(&["imagetools", "create", "-t", &target, &source])
        .ok();
    assert_eq!(
        r.stderr
            .matches("0 blobs mounted, 2 streamed, 0 already there")
            .count(),
        3,
        "{}",
        r.stderr
    );
    assert_eq!(raw(&target), raw(&source));
    assert_eq!(config_for(&target, "s390x")["architecture"], "s390x");
    assert_blobs_in(&other.addr, "copy", &target);
}
