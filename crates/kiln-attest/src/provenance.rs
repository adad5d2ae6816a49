//! SLSA provenance predicates as BuildKit writes them (`solver/llbsolver/provenance`): v1
//! (`buildDefinition` / `runDetails`, BuildKit's default) or v0.2 (`invocation` /
//! `materials`). `mode=min` leaves out the build arguments and the secret and ssh ids;
//! secret values are never given to this module.

use std::collections::BTreeMap;

use kiln_types::image::rfc3339_utc;
use kiln_types::Platform;
use serde_json::{json, Map, Value};

use crate::{Mode, ProvenanceOptions, SlsaVersion, PREDICATE_SLSA_V02, PREDICATE_SLSA_V1};

/// BuildKit's build type of v1 provenance.
pub const BUILD_TYPE_V1: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";
/// BuildKit's build type of v0.2 provenance.
pub const BUILD_TYPE_V02: &str = "https://mobyproject.org/buildkit@v1";

/// Something the build used from outside: a base image, a git or http source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Material {
    /// Its URI (`pkg:docker/alpine@3.20?platform=linux%2Famd64`, a git or http URL).
    pub uri: String,
    /// Its digests by algorithm (`sha256`, `sha1` for a git commit); empty when unknown.
    pub digest: BTreeMap<String, String>,
}

/// What a build was asked and used, as provenance records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// The frontend (`dockerfile.v0` for the Dockerfile frontend, as BuildKit names it).
    pub frontend: String,
    /// The build file's name as the request gave it (never a host path).
    pub config_path: String,
    /// The frontend options: `build-arg:NAME`, `label:NAME`, `target`...
    pub args: BTreeMap<String, String>,
    /// The ids of the build's secrets (never their values).
    pub secrets: Vec<String>,
    /// The ids of the build's ssh agents.
    pub ssh: Vec<String>,
    /// The local directories the build read, by name (`context`, `dockerfile`).
    pub locals: Vec<String>,
    /// Base images and remote sources, sorted, no repeats.
    pub materials: Vec<Material>,
    /// The platform the builder ran on.
    pub builder_platform: Platform,
    /// When the build started and finished (unix seconds), when known.
    pub started_on: Option<i64>,
    /// See `started_on`.
    pub finished_on: Option<i64>,
}

/// The predicate type and predicate of `info`'s provenance.
pub fn predicate(opts: &ProvenanceOptions, info: &BuildInfo) -> (&'static str, Value) {
    let max = opts.mode == Mode::Max;
    // As BuildKit's min mode: the build arguments and labels (which may hold anything the
    // user typed) and the secret and ssh ids are left out.
    let args: Map<String, Value> = info
        .args
        .iter()
        .filter(|(k, _)| max || !(k.starts_with("build-arg:") || k.starts_with("label:")))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut request = json!({
        "frontend": info.frontend,
        "args": args,
        "locals": info.locals.iter().map(|n| json!({ "name": n })).collect::<Vec<_>>(),
    });
    if max {
        if !info.secrets.is_empty() {
            request["secrets"] = info.secrets.iter().map(|id| json!({ "id": id })).collect();
        }
        if !info.ssh.is_empty() {
            request["ssh"] = info.ssh.iter().map(|id| json!({ "id": id })).collect();
        }
    }
    let materials: Vec<Value> = info
        .materials
        .iter()
        .map(|m| json!({ "uri": m.uri, "digest": m.digest }))
        .collect();
    let time = |t: Option<i64>| t.map(rfc3339_utc);
    let builder = json!({ "id": opts.builder_id.clone().unwrap_or_default() });
    match opts.version {
        SlsaVersion::V1 => {
            let mut metadata = json!({
                "buildkit_reproducible": opts.reproducible,
                "buildkit_completeness": { "request": max, "resolvedDependencies": false },
                "buildkit_metadata": {},
            });
            if let Some(t) = time(info.started_on) {
                metadata["startedOn"] = t.into();
            }
            if let Some(t) = time(info.finished_on) {
                metadata["finishedOn"] = t.into();
            }
            let predicate = json!({
                "buildDefinition": {
                    "buildType": BUILD_TYPE_V1,
                    "externalParameters": {
                        "configSource": { "path": info.config_path },
                        "request": request,
                    },
                    "internalParameters": {
                        "builderPlatform": info.builder_platform.to_string(),
                    },
                    "resolvedDependencies": materials,
                },
                "runDetails": { "builder": builder, "metadata": metadata },
            });
            (PREDICATE_SLSA_V1, predicate)
        }
        SlsaVersion::V02 => {
            let mut metadata = json!({
                "completeness": { "parameters": max, "environment": true, "materials": false },
                "reproducible": opts.reproducible,
                "https://mobyproject.org/buildkit@v1#metadata": {},
            });
            if let Some(t) = time(info.started_on) {
                metadata["buildStartedOn"] = t.into();
            }
            if let Some(t) = time(info.finished_on) {
                metadata["buildFinishedOn"] = t.into();
            }
            let predicate = json!({
                "builder": builder,
                "buildType": BUILD_TYPE_V02,
                "materials": materials,
                "invocation": {
                    "configSource": { "entryPoint": info.config_path },
                    "parameters": request,
                    "environment": { "platform": info.builder_platform.to_string() },
                },
                "metadata": metadata,
            });
            (PREDICATE_SLSA_V02, predicate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BuildInfo {
        BuildInfo {
            frontend: "dockerfile.v0".into(),
            config_path: "Dockerfile".into(),
            args: [
                ("build-arg:VERSION".to_owned(), "1.2".to_owned()),
                ("target".to_owned(), "app".to_owned()),
            ]
            .into(),
            secrets: vec!["token".into()],
            ssh: Vec::new(),
            locals: vec!["context".into(), "dockerfile".into()],
            materials: vec![Material {
                uri: "pkg:docker/alpine@3.20?platform=linux%2Famd64".into(),
                digest: [("sha256".to_owned(), "ab".repeat(32))].into(),
            }],
            builder_platform: "linux/amd64".parse().unwrap(),
            started_on: Some(0),
            finished_on: Some(1),
        }
    }

    #[test]
    fn v1_max_records_args_and_secret_ids() {
        let opts = ProvenanceOptions::default();
        let (t, p) = predicate(&opts, &info());
        assert_eq!(t, PREDICATE_SLSA_V1);
        let def = &p["buildDefinition"];
        assert_eq!(def["buildType"], BUILD_TYPE_V1);
        let req = &def["externalParameters"]["request"];
        assert_eq!(req["args"]["build-arg:VERSION"], "1.2");
        assert_eq!(req["secrets"][0]["id"], "token");
        assert_eq!(
            def["resolvedDependencies"][0]["digest"]["sha256"],
            "ab".repeat(32)
        );
        assert_eq!(
            p["runDetails"]["metadata"]["startedOn"],
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(p["runDetails"]["builder"]["id"], "");
    }

    #[test]
    fn min_leaves_out_args_and_secrets() {
        let opts = ProvenanceOptions {
            mode: Mode::Min,
            version: SlsaVersion::V02,
            builder_id: Some("https://b.test".into()),
            reproducible: false,
            ..Default::default()
        };
        let (t, p) = predicate(&opts, &info());
        assert_eq!(t, PREDICATE_SLSA_V02);
        let params = &p["invocation"]["parameters"];
        assert!(params["args"].get("build-arg:VERSION").is_none(), "{p}");
        assert_eq!(params["args"]["target"], "app");
        assert!(params.get("secrets").is_none());
        assert_eq!(p["builder"]["id"], "https://b.test");
        assert_eq!(
            p["materials"][0]["uri"],
            "pkg:docker/alpine@3.20?platform=linux%2Famd64"
        );
        assert_eq!(p["metadata"]["completeness"]["parameters"], false);
    }
}
