//! The buildx flags CI scripts pass, through the real binary: `--metadata-file` and
//! `--iidfile` hold the digests of the image actually written (read back from the OCI tarball),
//! `-q` prints only the image ID, and `--progress` defaults come from `KILN_PROGRESS` /
//! `BUILDKIT_PROGRESS`.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_e2e::*;
use serde_json::Value;

const DOCKERFILE: &str = "FROM scratch\nCOPY hello.txt /hello.txt\n";

fn context(k: &Kiln) -> String {
    k.write(
        "ctx",
        &[("Dockerfile", DOCKERFILE), ("hello.txt", "hello\n")],
    )
    .display()
    .to_string()
}

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// The manifest descriptor of the only image in an OCI tarball, and the manifest itself,
/// read with `tar` as any OCI tool would.
fn tarball_image(k: &Kiln, tar: &Path) -> (Value, Value) {
    let layout = k.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let desc = manifests[0].clone();
    let digest = desc["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let manifest = json_file(&layout.join("blobs/sha256").join(hex));
    (desc, manifest)
}

#[test]
fn metadata_file_and_iidfile_name_the_exported_image() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let tar = k.path("app.tar");
    let meta = k.path("metadata.json");
    let iid = k.path("iid");
    let r = k
        .run(&[
            "build",
            "--progress=plain",
            "-t",
            "app:1",
            "--output",
            &format!("type=oci,dest={}", tar.display()),
            "--metadata-file",
            meta.to_str().unwrap(),
            "--iidfile",
            iid.to_str().unwrap(),
            &ctx,
        ])
        .ok();
    let (desc, manifest) = tarball_image(&k, &tar);
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let doc = json_file(&meta);
    assert_eq!(doc["containerimage.digest"], desc["digest"], "{doc}");
    assert_eq!(doc["containerimage.config.digest"], config_digest, "{doc}");
    let d = &doc["containerimage.descriptor"];
    assert_eq!(d["digest"], desc["digest"], "{doc}");
    assert_eq!(d["mediaType"], desc["mediaType"], "{doc}");
    assert_eq!(d["size"], desc["size"], "{doc}");
    assert!(
        d["annotations"]["org.opencontainers.image.created"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{doc}"
    );
    assert_eq!(doc["image.name"], "docker.io/library/app:1", "{doc}");
    assert_eq!(r.digest(), desc["digest"].as_str().unwrap());
    // As `docker build --iidfile`: the image ID, i.e. the config digest, without a newline.
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), config_digest);
}

#[test]
fn quiet_prints_only_the_image_id() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let tar = k.path("app.tar");
    let r = k
        .run(&[
            "build",
            "-q",
            "--output",
            &format!("type=oci,dest={}", tar.display()),
            &ctx,
        ])
        .ok();
    let (_, manifest) = tarball_image(&k, &tar);
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert_eq!(r.stdout, format!("{config_digest}\n"));
    assert_eq!(r.stderr, "", "quiet shows no progress");

    // --progress=quiet is the same, and a second build (all cached) prints the same ID.
    let r = k
        .run(&[
            "build",
            "--progress=quiet",
            "--output",
            &format!("type=oci,dest={}", tar.display()),
            &ctx,
        ])
        .ok();
    assert_eq!(r.stdout, format!("{config_digest}\n"));
    assert_eq!(r.stderr, "");

    // -q asks for quiet: another explicit mode contradicts it, as buildx says.
    let r = k.run(&["build", "-q", "--progress=plain", &ctx]).fails();
    assert!(
        r.stderr
            .contains("--progress=plain and --quiet cannot be used together"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_failed_build_leaves_no_stale_image_id_and_quiet_still_says_why() {
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "broken",
        &[("Dockerfile", "FROM scratch\nCOPY missing.txt /\n")],
    );
    let iid = k.path("iid");
    let meta = k.path("metadata.json");
    std::fs::write(&iid, "sha256:from-an-older-build").unwrap();
    let r = k
        .run(&[
            "build",
            "-q",
            "--iidfile",
            iid.to_str().unwrap(),
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(
        !iid.exists(),
        "the old image ID was left for scripts to read"
    );
    assert!(!meta.exists(), "metadata written for a failed build");
    assert_eq!(r.stdout, "", "no image ID for a failed build");
    assert!(
        r.stderr.contains("ERROR: failed to solve") && r.stderr.contains("missing.txt"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_local_export_has_no_image_to_name() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let out = k.path("out");
    let meta = k.path("metadata.json");
    let iid = k.path("iid");
    k.run(&[
        "build",
        "--progress=plain",
        "--output",
        &format!("type=local,dest={}", out.display()),
        "--metadata-file",
        meta.to_str().unwrap(),
        "--iidfile",
        iid.to_str().unwrap(),
        &ctx,
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "hello\n"
    );
    // BuildKit's local exporter reports nothing, so buildx writes `{}` and an empty ID.
    assert_eq!(json_file(&meta), serde_json::json!({}));
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), "");
}

#[test]
fn progress_defaults_come_from_the_environment() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let out = k.path("out");
    let output = format!("type=local,dest={}", out.display());
    let json_lines = |stderr: &str| {
        stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    };
    let r = k
        .run_env(
            &[("BUILDKIT_PROGRESS", "rawjson")],
            &["build", "--output", &output, &ctx],
        )
        .ok();
    assert!(
        r.stderr.contains("\"status\"") && json_lines(&r.stderr),
        "{}",
        r.stderr
    );
    // KILN_PROGRESS wins over BUILDKIT_PROGRESS; an explicit --progress over both.
    let r = k
        .run_env(
            &[("BUILDKIT_PROGRESS", "rawjson"), ("KILN_PROGRESS", "plain")],
            &["build", "--output", &output, &ctx],
        )
        .ok();
    assert!(r.stderr.contains("#1 "), "{}", r.stderr);
    let r = k
        .run_env(
            &[("KILN_PROGRESS", "rawjson")],
            &["build", "--progress=plain", "--output", &output, &ctx],
        )
        .ok();
    assert!(r.stderr.contains("#1 "), "{}", r.stderr);
    // A quiet environment hides progress but prints no ID: only -q does, as in buildx.
    let r = k
        .run_env(
            &[("BUILDKIT_PROGRESS", "quiet")],
            &["build", "--output", &output, &ctx],
        )
        .ok();
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
    let r = k
        .run_env(
            &[("BUILDKIT_PROGRESS", "fancy")],
            &["build", "--output", &output, &ctx],
        )
        .fails();
    assert!(
        r.stderr.contains("invalid BUILDKIT_PROGRESS=\"fancy\""),
        "{}",
        r.stderr
    );
}

#[test]
fn push_metadata_names_the_pushed_image() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let name = format!("{registry}/e2e/metadata:{}", std::process::id());
    let meta = k.path("metadata.json");
    k.run(&[
        "build",
        "--progress=plain",
        "-t",
        &name,
        "--push",
        "--metadata-file",
        meta.to_str().unwrap(),
        &ctx,
    ])
    .ok();
    let doc = json_file(&meta);
    // A push reports the names as given, not normalized (BuildKit's image exporter).
    assert_eq!(doc["image.name"], name.as_str(), "{doc}");
    let remote: Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--tls-verify=false", &format!("docker://{name}")],
    ))
    .unwrap();
    assert_eq!(doc["containerimage.digest"], remote["Digest"], "{doc}");
    let manifest: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    ))
    .unwrap();
    assert_eq!(
        doc["containerimage.config.digest"], manifest["config"]["digest"],
        "{doc}"
    );
}
