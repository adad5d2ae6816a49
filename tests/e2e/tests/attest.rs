//! Attestations (issue 13 item 4), as buildx attaches them: `--provenance`, `--sbom` and
//! `--attest` put an in-toto statement per image into an attestation manifest of the image
//! index (`vnd.docker.reference.type=attestation-manifest`, platform `unknown/unknown`), for
//! `type=oci` and for pushes; a push gets `mode=min` provenance by default; builds that ask for
//! nothing get none; asked of a docker output they are refused (buildx's words); `type=local`
//! and `type=tar` get them as files (`provenance.json`, `sbom.spdx.json`) about every file. The statements are checked structurally as
//! slsa-verifier reads provenance, and the SBOM against the SPDX 2.3 schema's rules.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::registry::OwnRegistry;
use kiln_e2e::{build_bb, busybox_layout, json, registry_json, tool, Kiln, Run};
use serde_json::Value;

const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
const SPDX: &str = "https://spdx.dev/Document";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const SECRET: &str = "s3cr3t-attest-value-4711";

/// A build with a build arg and a secret that a RUN step reads (and does not keep).
const DOCKERFILE: &str = "\
FROM bb
ARG VERSION
RUN --mount=type=secret,id=token test -s /run/secrets/token && echo \"v=$VERSION\" > /version
";

/// A build of `ctx` on the busybox base, with buildx's default attestations (a harness may
/// turn them off for other tests).
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    let env = [
        ("ATTEST_TOKEN", SECRET),
        ("BUILDX_NO_DEFAULT_ATTESTATIONS", "false"),
    ];
    build_bb(k, &env, ctx, extra)
}

/// An OCI layout (extracted from a tarball when `src` is a file).
struct Layout(PathBuf);

impl Layout {
    fn of_tar(k: &Kiln, tar: &Path, name: &str) -> Layout {
        let dir = k.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        tool(
            "tar",
            &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
        );
        Layout(dir)
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.0.join("blobs/sha256").join(hex)).unwrap()
    }

    fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).unwrap()
    }

    /// The document `index.json` names.
    fn top(&self) -> Value {
        let index = json(&std::fs::read_to_string(self.0.join("index.json")).unwrap());
        let d = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
        self.json(&d)
    }
}

/// The busybox fixture's manifest digest (the base image every build here starts from).
fn busybox_digest() -> String {
    let index = json(&std::fs::read_to_string(busybox_layout().join("index.json")).unwrap());
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}

/// The attestation manifests of `index`, checked against the image entries they refer to;
/// returns (image entry, attestation manifest entry) pairs.
fn attestation_pairs(index: &Value) -> Vec<(Value, Value)> {
    let entries = index["manifests"].as_array().unwrap();
    let (atts, images): (Vec<&Value>, Vec<&Value>) = entries
        .iter()
        .partition(|m| m["annotations"]["vnd.docker.reference.type"] == "attestation-manifest");
    // As BuildKit lists them: the images first, then their attestations.
    assert!(
        entries[..images.len()]
            .iter()
            .all(|m| m["annotations"].get("vnd.docker.reference.type").is_none()),
        "{index}"
    );
    atts.iter()
        .map(|a| {
            assert_eq!(a["platform"]["os"], "unknown", "{a}");
            assert_eq!(a["platform"]["architecture"], "unknown", "{a}");
            assert_eq!(a["mediaType"], "application/vnd.oci.image.manifest.v1+json");
            let target = a["annotations"]["vnd.docker.reference.digest"].clone();
            let image = images
                .iter()
                .find(|m| m["digest"] == target)
                .unwrap_or_else(|| panic!("{a} refers to no image of {index}"));
            ((*image).clone(), (*a).clone())
        })
        .collect()
}

/// The statements of attestation manifest `att`, by predicate type, each checked as
/// slsa-verifier checks an in-toto statement: its type, its subject naming `image` by digest.
fn statements(read: &dyn Fn(&str) -> Vec<u8>, att: &Value, image: &Value) -> Vec<(String, Value)> {
    let manifest: Value = serde_json::from_slice(&read(att["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(
        (&config["os"], &config["architecture"]),
        (&"unknown".into(), &"unknown".into())
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        layers.len()
    );
    layers
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], IN_TOTO, "{l}");
            let kind = l["annotations"]["in-toto.io/predicate-type"]
                .as_str()
                .unwrap()
                .to_owned();
            let s: Value = serde_json::from_slice(&read(l["digest"].as_str().unwrap())).unwrap();
            assert_eq!(s["_type"], "https://in-toto.io/Statement/v1", "{s}");
            assert_eq!(s["predicateType"], kind.as_str(), "{s}");
            let subjects = s["subject"].as_array().unwrap();
            assert!(!subjects.is_empty(), "{s}");
            let want = image["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            for subject in subjects {
                assert_eq!(subject["digest"]["sha256"], want, "{s}");
            }
            assert!(s["predicate"].is_object(), "{s}");
            (kind, s)
        })
        .collect()
}

/// slsa-verifier's structural reading of v1 provenance: build type, builder id, external
/// parameters, resolved dependencies with digests.
fn check_v1(p: &Value) -> (&Value, &Vec<Value>) {
    let def = &p["buildDefinition"];
    assert_eq!(
        def["buildType"],
        "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md"
    );
    assert!(p["runDetails"]["builder"]["id"].is_string(), "{p}");
    assert_eq!(
        def["externalParameters"]["configSource"]["path"],
        "Dockerfile"
    );
    let deps = def["resolvedDependencies"].as_array().unwrap();
    for d in deps {
        assert!(d["uri"].is_string(), "{d}");
        assert!(
            d["digest"].as_object().is_some_and(|m| !m.is_empty()),
            "{d}"
        );
    }
    (&def["externalParameters"]["request"], deps)
}

#[test]
fn provenance_max_on_an_oci_tarball_records_base_digest_and_args_but_no_secret() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let out = k.path("out.tar");
    let dest = format!("type=oci,dest={}", out.display());
    let r = build(
        &k,
        &ctx,
        &[
            "--provenance",
            "mode=max",
            "--build-arg",
            "VERSION=1.2.3",
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "-t",
            "app:1",
            "--output",
            &dest,
        ],
    )
    .ok();
    // Not a byte of the tarball holds the secret's value.
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret's value is in the tarball"
    );
    let layout = Layout::of_tar(&k, &out, "layout");
    let index = layout.top();
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let pairs = attestation_pairs(&index);
    assert_eq!(pairs.len(), 1, "{index}");
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    let (image, att) = &pairs[0];
    assert_eq!(image["platform"]["architecture"], "amd64");
    // The build reports the index (BuildKit's containerimage.digest of an attested image).
    let named = json(&std::fs::read_to_string(layout.0.join("index.json")).unwrap());
    let digest = named["manifests"][0]["digest"].as_str().unwrap();
    assert!(
        r.stderr.contains(&format!("writing image index {digest}")),
        "{}",
        r.stderr
    );
    let stmts = statements(&|d| layout.blob(d), att, image);
    assert_eq!(stmts.len(), 1);
    let (kind, s) = &stmts[0];
    assert_eq!(kind, SLSA_V1);
    assert_eq!(
        s["subject"][0]["name"], "pkg:docker/app@1?platform=linux%2Famd64",
        "{s}"
    );
    let (request, deps) = check_v1(&s["predicate"]);
    assert_eq!(request["args"]["build-arg:VERSION"], "1.2.3", "{s}");
    assert_eq!(request["secrets"][0]["id"], "token", "{s}");
    let base = busybox_digest();
    assert!(
        deps.iter()
            .any(|d| format!("sha256:{}", d["digest"]["sha256"].as_str().unwrap()) == base),
        "no material with the base image's digest {base}: {deps:?}"
    );
    // No host path of the client leaks through a material either.
    let home = busybox_layout().display().to_string();
    assert!(!s.to_string().contains(&home), "{s}");

    // The image itself is the one a build without attestations makes.
    let plain = k.path("plain.tar");
    let dest = format!("type=oci,dest={}", plain.display());
    build(
        &k,
        &ctx,
        &[
            "--build-arg",
            "VERSION=1.2.3",
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "-t",
            "app:1",
            "--output",
            &dest,
        ],
    )
    .ok();
    let plain = Layout::of_tar(&k, &plain, "plain");
    let top = json(&std::fs::read_to_string(plain.0.join("index.json")).unwrap());
    assert_eq!(top["manifests"][0]["digest"], image["digest"], "{top}");
    assert_eq!(
        top["manifests"][0]["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "a build asking for no attestation writes the image as before: {top}"
    );
}

#[test]
fn attest_flag_makes_v02_provenance_and_min_mode_keeps_args_out() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let out = k.path("out");
    let dest = format!("type=oci,dest={},tar=false", out.display());
    build(
        &k,
        &ctx,
        &[
            "--attest",
            "type=provenance,mode=min,version=v0.2,builder-id=https://builder.example.test/kiln",
            "--build-arg",
            "VERSION=9.9.9",
            "--secret",
            "id=token,env=ATTEST_TOKEN",
            "--output",
            &dest,
        ],
    )
    .ok();
    let layout = Layout(out);
    let index = layout.top();
    let pairs = attestation_pairs(&index);
    let (image, att) = &pairs[0];
    let stmts = statements(&|d| layout.blob(d), att, image);
    let (kind, s) = &stmts[0];
    assert_eq!(kind, SLSA_V02);
    // Unnamed image: the subject is its digest alone.
    assert!(s["subject"][0].get("name").is_none(), "{s}");
    let p = &s["predicate"];
    // slsa-verifier's v0.2 reading: builder id, build type, invocation, materials.
    assert_eq!(
        p["builder"]["id"], "https://builder.example.test/kiln",
        "{p}"
    );
    assert_eq!(p["buildType"], "https://mobyproject.org/buildkit@v1");
    assert_eq!(p["invocation"]["configSource"]["entryPoint"], "Dockerfile");
    assert!(p["invocation"]["parameters"]["frontend"].is_string(), "{p}");
    assert!(
        p["invocation"]["environment"]["platform"].is_string(),
        "{p}"
    );
    let materials = p["materials"].as_array().unwrap();
    let base = busybox_digest();
    assert!(
        materials
            .iter()
            .any(|m| format!("sha256:{}", m["digest"]["sha256"].as_str().unwrap()) == base),
        "{materials:?}"
    );
    // mode=min: neither the build arg nor the secret id.
    let text = s.to_string();
    assert!(!text.contains("9.9.9"), "{text}");
    assert!(
        p["invocation"]["parameters"].get("secrets").is_none(),
        "{p}"
    );
    assert_eq!(p["metadata"]["completeness"]["parameters"], false);
}

#[test]
fn docker_outputs_and_builds_asking_nothing_get_no_attestation() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\nRUN echo hi > /hi\n")]);
    let out = k.path("docker.tar");
    let dest = format!("type=docker,dest={}", out.display());
    // Asked of a docker output, attestations are refused as buildx refuses them (its docker
    // exporter cannot write the index they live in), before anything is built.
    let r = build(
        &k,
        &ctx,
        &["--provenance=true", "--sbom=true", "--output", &dest],
    )
    .fails();
    assert!(
        r.stderr.contains(
            "docker exporter does not support exporting manifest lists, use the oci exporter \
             instead"
        ),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    // `--load` (no docker daemon needed: refused first), with buildx's other wording.
    let r = build(&k, &ctx, &["--sbom=true", "--load"]).fails();
    assert!(
        r.stderr
            .contains("docker exporter does not currently support exporting manifest lists"),
        "{}",
        r.stderr
    );
    // `--provenance=false` asks for nothing: the docker output is written.
    build(&k, &ctx, &["--provenance=false", "--output", &dest]).ok();
    let dir = k.path("docker");
    std::fs::create_dir_all(&dir).unwrap();
    tool(
        "tar",
        &["-xf", out.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let manifest = json(&std::fs::read_to_string(dir.join("manifest.json")).unwrap());
    assert_eq!(manifest.as_array().unwrap().len(), 1, "{manifest}");
    let tarball = std::fs::read(&out).unwrap();
    assert!(
        !tarball
            .windows(IN_TOTO.len())
            .any(|w| w == IN_TOTO.as_bytes()),
        "a docker archive holds no attestation"
    );

    // A bad value names the flag.
    let r = build(&k, &ctx, &["--provenance", "mode=most"]).fails();
    assert!(
        r.stderr.contains("invalid --provenance value"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("expected min or max"), "{}", r.stderr);
}

#[test]
fn a_push_gets_min_provenance_by_default_and_false_removes_it() {
    let registry = OwnRegistry::start();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let name = format!("{}/attested:1", registry.addr);
    let common = [
        "--build-arg",
        "VERSION=7.7.7",
        "--secret",
        "id=token,env=ATTEST_TOKEN",
        "-t",
        &name,
        "--push",
    ];
    build(&k, &ctx, &common).ok();
    let index = registry_json(&["inspect", "--raw"], &name);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let pairs = attestation_pairs(&index);
    assert_eq!(pairs.len(), 1, "{index}");
    let (image, att) = &pairs[0];
    // The attestation manifest with its blobs, copied (digests verified) into a layout.
    let copied = k.path("copied");
    let src = format!(
        "docker://{}/attested@{}",
        registry.addr,
        att["digest"].as_str().unwrap()
    );
    let dst = format!("oci:{}:a", copied.display());
    tool("skopeo", &["copy", "--src-tls-verify=false", &src, &dst]);
    let layout = Layout(copied);
    let stmts = statements(&|d| layout.blob(d), att, image);
    let (kind, s) = &stmts[0];
    assert_eq!(kind, SLSA_V1);
    let (request, _) = check_v1(&s["predicate"]);
    // mode=min: the build arg's value is not recorded.
    assert!(request["args"].get("build-arg:VERSION").is_none(), "{s}");
    assert!(!s.to_string().contains("7.7.7"), "{s}");

    // `--provenance=false`: the image alone, as before.
    let plain = format!("{}/plain:1", registry.addr);
    let mut args: Vec<&str> = common.to_vec();
    args[5] = &plain;
    args.push("--provenance=false");
    build(&k, &ctx, &args).ok();
    let m = registry_json(&["inspect", "--raw"], &plain);
    assert_eq!(
        m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{m}"
    );
    // buildx's switch for the default does the same.
    let quiet = format!("{}/quiet:1", registry.addr);
    args[5] = &quiet;
    args.pop();
    let mut all = vec!["build", "--progress=plain", "--build-context"];
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    all.push(&bb);
    all.extend_from_slice(&args);
    let c = ctx.display().to_string();
    all.push(&c);
    k.run_env(
        &[
            ("ATTEST_TOKEN", SECRET),
            ("BUILDX_NO_DEFAULT_ATTESTATIONS", "1"),
        ],
        &all,
    )
    .ok();
    let m = registry_json(&["inspect", "--raw"], &quiet);
    assert_eq!(
        m["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{m}"
    );
}

#[test]
fn each_platform_gets_its_own_attestation_manifest() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    // No RUN for the target: no emulation needed.
    let dockerfile = "\
FROM --platform=$BUILDPLATFORM bb AS build
RUN mkdir /out && echo built > /out/file
FROM scratch
ARG TARGETARCH
COPY --from=build /out/file /$TARGETARCH
";
    let ctx = k.write("ctx", &[("Dockerfile", dockerfile)]);
    let out = k.path("out");
    let dest = format!("type=oci,dest={},tar=false", out.display());
    build(
        &k,
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance=mode=max",
            "--output",
            &dest,
        ],
    )
    .ok();
    let layout = Layout(out);
    let index = layout.top();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 4, "{index}");
    let pairs = attestation_pairs(&index);
    let mut arches: Vec<String> = pairs
        .iter()
        .map(|(image, _)| {
            image["platform"]["architecture"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    arches.sort();
    assert_eq!(arches, ["amd64", "arm64"]);
    for (image, att) in &pairs {
        let stmts = statements(&|d| layout.blob(d), att, image);
        assert_eq!(stmts[0].0, SLSA_V1);
    }
}

/// A dpkg database, written by COPY.
const DPKG_STATUS: &str = "\
Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell

Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u4
";

const CARGO_LOCK: &str = "\
version = 4

[[package]]
name = \"serde\"
version = \"1.0.200\"
source = \"registry+https://github.com/rust-lang/crates.io-index\"

[[package]]
name = \"app\"
version = \"0.1.0\"
";

#[test]
fn sbom_lists_os_packages_and_cargo_lock_in_spdx() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let dockerfile = "\
FROM bb
COPY status /var/lib/dpkg/status
COPY Cargo.lock /srv/app/Cargo.lock
RUN mkdir -p /lib/apk/db && printf 'P:musl\\nV:1.2.5-r0\\nA:x86_64\\n\\nP:zlib\\nV:1.3.1-r1\\n' > /lib/apk/db/installed
";
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", dockerfile),
            ("status", DPKG_STATUS),
            ("Cargo.lock", CARGO_LOCK),
        ],
    );
    let out = k.path("out");
    let dest = format!("type=oci,dest={},tar=false", out.display());
    build(
        &k,
        &ctx,
        &["--sbom=true", "-t", "sbom:1", "--output", &dest],
    )
    .ok();
    let layout = Layout(out);
    let index = layout.top();
    let pairs = attestation_pairs(&index);
    let (image, att) = &pairs[0];
    let stmts = statements(&|d| layout.blob(d), att, image);
    // `--sbom` alone: no provenance (no push).
    assert_eq!(stmts.len(), 1);
    let (kind, s) = &stmts[0];
    assert_eq!(kind, SPDX);
    let doc = &s["predicate"];
    check_spdx_2_3(doc);
    let purls: Vec<&str> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["externalRefs"][0]["referenceLocator"].as_str().unwrap())
        .collect();
    for want in [
        "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64",
        "pkg:apk/alpine/musl@1.2.5-r0?arch=x86_64",
        "pkg:apk/alpine/zlib@1.3.1-r1",
        "pkg:cargo/serde@1.0.200",
        "pkg:cargo/app@0.1.0",
    ] {
        assert!(purls.contains(&want), "{want} not in {purls:#?}");
    }
}

/// The rules of the SPDX 2.3 JSON schema (spdx-schema.json of spdx-spec v2.3) that a document
/// of packages must meet, checked by hand: required fields and their types, id patterns,
/// enumerations, relationships naming existing elements.
fn check_spdx_2_3(doc: &Value) {
    let s = |v: &Value, k: &str| -> String {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} is not a string in {v}"))
            .to_owned()
    };
    assert_eq!(s(doc, "spdxVersion"), "SPDX-2.3");
    assert_eq!(s(doc, "dataLicense"), "CC0-1.0");
    assert_eq!(s(doc, "SPDXID"), "SPDXRef-DOCUMENT");
    assert!(!s(doc, "name").is_empty());
    let ns = s(doc, "documentNamespace");
    assert!(
        ns.contains("://") && !ns.contains('#'),
        "documentNamespace is a URI: {ns}"
    );
    let created = s(&doc["creationInfo"], "created");
    // date-time, as `YYYY-MM-DDThh:mm:ssZ`.
    let b = created.as_bytes();
    assert!(
        b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
        "creationInfo.created: {created}"
    );
    let creators = doc["creationInfo"]["creators"].as_array().unwrap();
    assert!(!creators.is_empty());
    for c in creators {
        let c = c.as_str().unwrap();
        assert!(
            ["Tool: ", "Person: ", "Organization: "]
                .iter()
                .any(|p| c.starts_with(p)),
            "{c}"
        );
    }
    let id_ok = |id: &str| {
        id.strip_prefix("SPDXRef-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
    };
    let mut ids = vec!["SPDXRef-DOCUMENT".to_owned()];
    let packages = doc["packages"].as_array().unwrap();
    assert!(!packages.is_empty());
    for p in packages {
        let id = s(p, "SPDXID");
        assert!(id_ok(&id), "{id}");
        assert!(!s(p, "name").is_empty());
        // Required by the schema; NOASSERTION is allowed.
        assert!(!s(p, "downloadLocation").is_empty());
        assert!(p["filesAnalyzed"].is_boolean());
        for r in p["externalRefs"].as_array().unwrap() {
            assert!(
                [
                    "SECURITY",
                    "PACKAGE-MANAGER",
                    "PACKAGE_MANAGER",
                    "PERSISTENT-ID",
                    "OTHER"
                ]
                .contains(&s(r, "referenceCategory").as_str()),
                "{r}"
            );
            assert!(!s(r, "referenceType").is_empty());
            assert!(!s(r, "referenceLocator").contains(' '), "{r}");
        }
        ids.push(id);
    }
    let mut seen = ids.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), ids.len(), "SPDX ids are unique");
    for r in doc["relationships"].as_array().unwrap() {
        assert!(ids.contains(&s(r, "spdxElementId")), "{r}");
        assert!(ids.contains(&s(r, "relatedSpdxElement")), "{r}");
        assert!(!s(r, "relationshipType").is_empty());
    }
}

/// The attestation file `name` of a filesystem output at `dir`: an in-toto statement whose
/// subjects are exactly the output's regular files (paths relative to the output, sha256 of
/// each), as BuildKit's local exporter writes it.
fn file_statement(dir: &Path, name: &str, kind: &str) -> Value {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Indented, as BuildKit's json.MarshalIndent writes it.
    assert!(text.starts_with("{\n  \""), "{text}");
    let s = json(&text);
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1", "{s}");
    assert_eq!(s["predicateType"], kind, "{s}");
    assert!(s["predicate"].is_object(), "{s}");
    let subjects: Vec<(String, String)> = s["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["digest"]["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Every regular file of the result but the attestation files, by relative path.
    let mut files = Vec::new();
    walk_files(dir, "", &mut files);
    files.retain(|p| p != "provenance.json" && p != "sbom.spdx.json" && p != "prov.json");
    // One sha256sum for them all, run in the output so that it prints the relative paths.
    let mut args = vec!["--"];
    args.extend(files.iter().map(String::as_str));
    let out = std::process::Command::new("sha256sum")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("sha256sum (coreutils) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (hex, path) = l.split_once("  ").unwrap();
            (path.to_owned(), hex.to_owned())
        })
        .collect();
    assert_eq!(subjects.len(), want.len(), "{s}");
    assert_eq!(subjects, want);
    s
}

fn walk_files(root: &Path, rel: &str, out: &mut Vec<String>) {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let p = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        let md = std::fs::symlink_metadata(root.join(&p)).unwrap();
        if md.is_dir() {
            walk_files(root, &p, out);
        } else if md.is_file() {
            out.push(p);
        }
    }
}

#[test]
fn local_and_tar_outputs_get_provenance_and_sbom_files_about_their_files() {
    use std::os::unix::fs::PermissionsExt;
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let out = k.path("local");
    let dest = format!("type=local,dest={}", out.display());
    let flags = [
        "--provenance",
        "mode=max",
        "--sbom=true",
        "--build-arg",
        "VERSION=4.5.6",
        "--secret",
        "id=token,env=ATTEST_TOKEN",
    ];
    let mut args = flags.to_vec();
    args.extend(["--output", &dest]);
    build(&k, &ctx, &args).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("version")).unwrap(),
        "v=4.5.6\n"
    );
    let prov = file_statement(&out, "provenance.json", SLSA_V1);
    // The subjects name the result's files, `version` among them.
    assert!(
        prov["subject"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "version"),
        "{prov}"
    );
    let (request, deps) = check_v1(&prov["predicate"]);
    assert_eq!(request["args"]["build-arg:VERSION"], "4.5.6", "{prov}");
    assert_eq!(request["secrets"][0]["id"], "token", "{prov}");
    let base = busybox_digest();
    assert!(
        deps.iter()
            .any(|d| format!("sha256:{}", d["digest"]["sha256"].as_str().unwrap()) == base),
        "{deps:?}"
    );
    let sbom = file_statement(&out, "sbom.spdx.json", SPDX);
    assert_eq!(sbom["predicate"]["spdxVersion"], "SPDX-2.3", "{sbom}");
    for f in ["provenance.json", "sbom.spdx.json"] {
        let md = std::fs::metadata(out.join(f)).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o600, "{f}");
        let bytes = std::fs::read(out.join(f)).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret's value is in {f}"
        );
    }

    // type=tar: the same two files at the top of the tar, beside the result's files.
    let tarball = k.path("out.tar");
    let dest = format!("type=tar,dest={}", tarball.display());
    let mut args = flags.to_vec();
    args.extend(["--output", &dest]);
    build(&k, &ctx, &args).ok();
    let listing = tool("tar", &["-tvf", tarball.to_str().unwrap()]);
    for f in ["provenance.json", "sbom.spdx.json", "version"] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} not in the tar:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("-rw-------") && l.ends_with(" provenance.json")),
        "{listing}"
    );
    let unpacked = k.path("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    tool(
        "tar",
        &[
            "-xf",
            tarball.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    let prov = file_statement(&unpacked, "provenance.json", SLSA_V1);
    assert_eq!(
        check_v1(&prov["predicate"]).0["args"]["build-arg:VERSION"],
        "4.5.6"
    );

    // `filename=` names the file; `inline-only` (buildx's default provenance) writes none;
    // a build asking for nothing writes only the result's files.
    for (flag, present) in [
        ("mode=min,filename=prov.json", Some("prov.json")),
        ("mode=min,inline-only=true", None),
        ("false", None),
    ] {
        let out = k.path(&format!("local-{}", flag.replace([',', '='], "-")));
        let dest = format!("type=local,dest={}", out.display());
        build(
            &k,
            &ctx,
            &[
                "--provenance",
                flag,
                "--secret",
                "id=token,env=ATTEST_TOKEN",
                "--output",
                &dest,
            ],
        )
        .ok();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        assert_eq!(names, present.into_iter().collect::<Vec<_>>(), "{flag}");
        if let Some(f) = present {
            file_statement(&out, f, SLSA_V1);
        }
    }
}

#[test]
fn each_platform_directory_of_a_local_output_gets_its_provenance() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
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
    let out = k.path("local");
    let dest = format!("type=local,dest={}", out.display());
    build(
        &k,
        &ctx,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--provenance=true",
            "--output",
            &dest,
        ],
    )
    .ok();
    for arch in ["amd64", "arm64"] {
        let dir = out.join(format!("linux_{arch}"));
        assert_eq!(
            std::fs::read_to_string(dir.join("arch.txt")).unwrap(),
            format!("{arch}\n")
        );
        let s = file_statement(&dir, "provenance.json", SLSA_V1);
        assert_eq!(s["subject"].as_array().unwrap().len(), 1, "{s}");
    }
    assert!(!out.join("provenance.json").exists());
}
