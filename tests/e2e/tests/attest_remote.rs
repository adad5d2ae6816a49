//! Attestations through `kiln serve` (issue 13 item 4): the flags and buildx's default
//! provenance of a push travel to the daemon, which attaches them as a local build does. The
//! client decides the default (`BUILDX_NO_DEFAULT_ATTESTATIONS` is read on the client, as
//! buildx reads it: the daemons here run with it set to 1 by the harness, the clients with
//! it off). Checked on real results: the index a daemon pushed to a registry of the test's
//! own (its attestation manifest and statements, copied with skopeo), the `provenance.json`
//! a daemon's `type=local` output brings back, and the index a builder of two nodes pushes
//! (each image's attestation manifest after the images). Needs docker-registry, skopeo, tar
//! and the busybox fixture.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::registry::OwnRegistry;
use kiln_e2e::serve::{builder_create, Daemon};
use kiln_e2e::{busybox_layout, json, registry_json, tool, Kiln, Run};
use serde_json::Value;

const PLUGINS: &[&str] = &["kiln-frontend-dockerfile", "kiln-exec"];
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const SECRET: &str = "s3cr3t-remote-attest-0815";

/// A build arg and a secret a RUN step reads (and does not keep).
const DOCKERFILE: &str = "\
FROM bb
ARG VERSION
RUN --mount=type=secret,id=token test -s /run/secrets/token && echo \"v=$VERSION\" > /version
";

/// `kiln build --builder ADDR` of `ctx` on the busybox base, the client with buildx's default
/// attestations on (and `env` besides).
fn remote(k: &Kiln, addr: &str, env: &[(&str, &str)], ctx: &Path, extra: &[&str]) -> Run {
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    let mut args = vec![
        "build",
        "--builder",
        addr,
        "--progress=plain",
        "--build-context",
        &bb,
    ];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    let mut all = vec![
        ("ATTEST_TOKEN", SECRET),
        ("BUILDX_NO_DEFAULT_ATTESTATIONS", "false"),
    ];
    all.extend_from_slice(env);
    k.run_env(&all, &args)
}

/// The entries of `index` that are attestation manifests, each with the image entry it names
/// (checked to be in the index, listed before every attestation).
fn attestation_pairs(index: &Value) -> Vec<(Value, Value)> {
    let entries = index["manifests"].as_array().unwrap();
    let is_att =
        |m: &Value| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest";
    let images = entries.iter().take_while(|m| !is_att(m)).count();
    assert!(entries[images..].iter().all(is_att), "{index}");
    entries[images..]
        .iter()
        .map(|a| {
            assert_eq!(a["platform"]["os"], "unknown", "{a}");
            let target = &a["annotations"]["vnd.docker.reference.digest"];
            let image = entries[..images]
                .iter()
                .find(|m| &m["digest"] == target)
                .unwrap_or_else(|| panic!("{a} names no image of {index}"));
            (image.clone(), a.clone())
        })
        .collect()
}

/// The attestation manifest `att` of the image `image` in `repo` of `registry`, copied with
/// skopeo (digests verified) into a layout: its statements, by predicate type, each about the
/// image's digest; and the raw bytes of every statement.
fn pushed_statements(
    k: &Kiln,
    registry: &str,
    repo: &str,
    att: &Value,
    image: &Value,
) -> (Vec<(String, Value)>, Vec<u8>) {
    let copied = k.path(&format!(
        "copied-{}",
        &att["digest"].as_str().unwrap()[7..19]
    ));
    let src = format!(
        "docker://{registry}/{repo}@{}",
        att["digest"].as_str().unwrap()
    );
    let dst = format!("oci:{}:a", copied.display());
    tool("skopeo", &["copy", "--src-tls-verify=false", &src, &dst]);
    let blob = |d: &str| {
        std::fs::read(
            copied
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap()),
        )
        .unwrap()
    };
    let manifest: Value = serde_json::from_slice(&blob(att["digest"].as_str().unwrap())).unwrap();
    let want = image["digest"].as_str().unwrap()[7..].to_owned();
    let mut raw = Vec::new();
    let stmts = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let bytes = blob(l["digest"].as_str().unwrap());
            raw.extend_from_slice(&bytes);
            let s: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(s["_type"], "https://in-toto.io/Statement/v1", "{s}");
            for subject in s["subject"].as_array().unwrap() {
                assert_eq!(subject["digest"]["sha256"], want.as_str(), "{s}");
            }
            (s["predicateType"].as_str().unwrap().to_owned(), s)
        })
        .collect();
    (stmts, raw)
}

/// The build args provenance v1 recorded.
fn args_of(s: &Value) -> &Value {
    &s["predicate"]["buildDefinition"]["externalParameters"]["request"]["args"]
}

#[test]
fn a_push_through_a_daemon_gets_the_clients_default_provenance_and_asked_attestations() {
    let registry = OwnRegistry::start();
    let k = Kiln::new(PLUGINS);
    let daemon = Daemon::unix(&k, "run/kiln.sock", "daemon-root", &[]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let push = |name: &str, env: &[(&str, &str)], extra: &[&str]| {
        let tag = format!("{}/{name}:1", registry.addr);
        let mut args = vec![
            "--build-arg",
            "VERSION=7.7.7",
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "-t",
            &tag,
            "--push",
        ];
        args.extend_from_slice(extra);
        remote(&k, &daemon.addr, env, &ctx, &args).ok();
        registry_json(&["inspect", "--raw"], &tag)
    };

    // No flag: buildx's default provenance of a push, mode=min, although the daemon itself
    // runs with BUILDX_NO_DEFAULT_ATTESTATIONS=1 (the client decides).
    let index = push("defaulted", &[], &[]);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let pairs = attestation_pairs(&index);
    assert_eq!(pairs.len(), 1, "{index}");
    let (stmts, _) = pushed_statements(&k, &registry.addr, "defaulted", &pairs[0].1, &pairs[0].0);
    assert_eq!(stmts.len(), 1);
    assert_eq!(stmts[0].0, SLSA_V1);
    assert!(
        args_of(&stmts[0].1).get("build-arg:VERSION").is_none(),
        "{}",
        stmts[0].1
    );

    // `--provenance=false`, and buildx's switch on the client: the image alone.
    for (name, env, extra) in [
        ("off", &[][..], &["--provenance=false"][..]),
        (
            "quiet",
            &[("BUILDX_NO_DEFAULT_ATTESTATIONS", "1")][..],
            &[][..],
        ),
    ] {
        let m = push(name, env, extra);
        assert_eq!(
            m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{name}: {m}"
        );
    }

    // mode=max and an SBOM: the build arg and the secret's id are recorded, its value never.
    let index = push("max", &[], &["--provenance=mode=max", "--sbom=true"]);
    let pairs = attestation_pairs(&index);
    assert_eq!(pairs.len(), 1, "{index}");
    let (stmts, raw) = pushed_statements(&k, &registry.addr, "max", &pairs[0].1, &pairs[0].0);
    let kinds: Vec<&str> = stmts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, [SLSA_V1, "https://spdx.dev/Document"]);
    let prov = &stmts[0].1;
    assert_eq!(args_of(prov)["build-arg:VERSION"], "7.7.7", "{prov}");
    assert_eq!(
        prov["predicate"]["buildDefinition"]["externalParameters"]["request"]["secrets"][0]["id"],
        "token",
        "{prov}"
    );
    assert!(
        !raw.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret's value is in a statement"
    );
    let spdx = &stmts[1].1["predicate"];
    assert!(
        spdx["packages"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["SPDXID"].is_string())),
        "{spdx}"
    );
}

#[test]
fn a_daemons_local_output_brings_back_provenance_json_about_its_files() {
    let k = Kiln::new(PLUGINS);
    let daemon = Daemon::unix(&k, "run/kiln.sock", "daemon-root", &[]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    remote(
        &k,
        &daemon.addr,
        &[],
        &ctx,
        &[
            "--provenance=mode=max",
            "--build-arg",
            "VERSION=3.3.3",
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "-o",
            &dest,
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("version")).unwrap(),
        "v=3.3.3\n"
    );
    let text = std::fs::read_to_string(out.join("provenance.json")).unwrap();
    let s = json(&text);
    assert_eq!(s["predicateType"], SLSA_V1, "{s}");
    assert_eq!(args_of(&s)["build-arg:VERSION"], "3.3.3", "{s}");
    assert!(!text.contains(SECRET));
    // Its subjects are the result's files: `version` with the sha256 of what came back.
    let sum = tool("sha256sum", &[out.join("version").to_str().unwrap()]);
    let hex = sum.split_whitespace().next().unwrap();
    let version = s["subject"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "version")
        .unwrap_or_else(|| panic!("no subject `version`: {s}"));
    assert_eq!(version["digest"]["sha256"], hex, "{s}");
}

/// Daemons `a` (linux/amd64) and `b` (linux/arm64) and the builder `two` of both.
fn two_nodes(k: &Kiln) -> (Daemon, Daemon) {
    let node = |name: &str, platform: &str| {
        Daemon::unix(
            k,
            &format!("run/{name}.sock"),
            &format!("root-{name}"),
            &["--platform", platform],
        )
    };
    let a = node("a", "linux/amd64");
    let b = node("b", "linux/arm64");
    builder_create(
        k,
        "two",
        &["--node", "a", "--platform", "linux/amd64"],
        &a.addr,
    )
    .ok();
    let append = ["--append", "--node", "b", "--platform", "linux/arm64"];
    builder_create(k, "two", &append, &b.addr).ok();
    (a, b)
}

#[test]
fn two_nodes_push_one_index_with_each_images_attestation_manifest() {
    let registry = OwnRegistry::start();
    let k = Kiln::new(PLUGINS);
    let _nodes = two_nodes(&k);
    // No RUN step: each node builds its platform without emulation.
    let ctx: PathBuf = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY $TARGETARCH.txt /arch.txt\n",
            ),
            ("amd64.txt", "amd64\n"),
            ("arm64.txt", "arm64\n"),
        ],
    );
    let tag = format!("{}/spread:1", registry.addr);
    let args = [
        "--platform",
        "linux/amd64,linux/arm64",
        "--provenance=mode=max",
        "--build-arg",
        "SPREAD=yes",
        "-t",
        &tag,
        "--push",
    ];
    remote(&k, "two", &[], &ctx, &args).ok();
    let index = registry_json(&["inspect", "--raw"], &tag);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{index}");
    let arches: Vec<&str> = entries[..2]
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"], "{index}");
    let pairs = attestation_pairs(&index);
    // One attestation manifest per image, in the images' order.
    let named: Vec<&Value> = pairs.iter().map(|(image, _)| &image["digest"]).collect();
    assert_eq!(
        named,
        [&entries[0]["digest"], &entries[1]["digest"]],
        "{index}"
    );
    for (image, att) in &pairs {
        let (stmts, _) = pushed_statements(&k, &registry.addr, "spread", att, image);
        assert_eq!(stmts.len(), 1);
        assert_eq!(stmts[0].0, SLSA_V1);
        assert_eq!(
            args_of(&stmts[0].1)["build-arg:SPREAD"],
            "yes",
            "{}",
            stmts[0].1
        );
    }
    // A tarball of the same build holds the same layout of images and attestations.
    let out = k.path("spread.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let args = [
        "--platform",
        "linux/amd64,linux/arm64",
        "--provenance=true",
        "-o",
        &dest,
    ];
    remote(&k, "two", &[], &ctx, &args).ok();
    let dir = k.path("spread");
    std::fs::create_dir_all(&dir).unwrap();
    tool(
        "tar",
        &["-xf", out.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let top = json(&std::fs::read_to_string(dir.join("index.json")).unwrap());
    let d = top["manifests"][0]["digest"].as_str().unwrap();
    let index = json(&std::fs::read_to_string(dir.join("blobs/sha256").join(&d[7..])).unwrap());
    let pairs = attestation_pairs(&index);
    assert_eq!(pairs.len(), 2, "{index}");
    for (_, att) in &pairs {
        // Every blob of each attestation manifest is in the layout.
        let m = json(
            &std::fs::read_to_string(
                dir.join("blobs/sha256")
                    .join(&att["digest"].as_str().unwrap()[7..]),
            )
            .unwrap(),
        );
        for l in m["layers"].as_array().unwrap() {
            let s = json(
                &std::fs::read_to_string(
                    dir.join("blobs/sha256")
                        .join(&l["digest"].as_str().unwrap()[7..]),
                )
                .unwrap(),
            );
            assert_eq!(s["predicateType"], SLSA_V1, "{s}");
        }
    }
}
