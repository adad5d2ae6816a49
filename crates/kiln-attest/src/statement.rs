//! in-toto statements (`https://in-toto.io/Statement/v1`), as BuildKit's image exporter wraps
//! each attestation: the subject is the image manifest (one entry per image name, named by
//! its package URL), the predicate is the attestation.

use kiln_types::{Digest, Platform};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Value};

/// The statement type BuildKit writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// One statement, serialized: what an attestation manifest's layer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InToto {
    /// Its `predicateType` (the layer's `in-toto.io/predicate-type` annotation).
    pub predicate_type: String,
    /// The statement's JSON.
    pub bytes: Vec<u8>,
}

/// What a statement is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// A package URL (`pkg:docker/app@1?platform=linux%2Famd64`), or none when the image has
    /// no name.
    pub name: Option<String>,
    /// The image manifest's digest.
    pub digest: Digest,
}

impl Subject {
    /// The subjects of the image `digest` of `platform` named `names` (the `-t` names): one per
    /// name, as BuildKit; one without a name when there is none, so that the statement still
    /// says which manifest it is about.
    pub fn of_image(names: &[String], platform: &Platform, digest: Digest) -> Vec<Subject> {
        if names.is_empty() {
            return vec![Subject { name: None, digest }];
        }
        names
            .iter()
            .map(|n| Subject {
                name: Some(docker_purl(n, Some(platform))),
                digest,
            })
            .collect()
    }
}

/// Characters a package URL segment may not hold as they are.
const PURL_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b':')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'@')
    .add(b'+')
    .add(b'&')
    .add(b'=');

/// `s` as one package URL segment.
pub(crate) fn purl_escape(s: &str) -> String {
    utf8_percent_encode(s, PURL_SEGMENT).to_string()
}

/// The package URL of an image reference, as BuildKit's `purl.RefToPURL`: the familiar name
/// (`alpine`, `localhost:5000/app`), `@` the tag or digest, and the platform as a qualifier.
pub fn docker_purl(reference: &str, platform: Option<&Platform>) -> String {
    let (name, version) = match reference.rsplit_once('@') {
        Some((n, d)) => (n, Some(d.to_owned())),
        None => (reference, None),
    };
    // A tag follows the last `:` after the last `/` (a registry port is not a tag).
    let (name, tag) = match name.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t.to_owned())),
        _ => (name, None),
    };
    let familiar = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    let path: Vec<String> = familiar.split('/').map(purl_escape).collect();
    let mut out = format!("pkg:docker/{}", path.join("/"));
    if let Some(v) = tag.or(version).or_else(|| Some("latest".to_owned())) {
        out.push('@');
        out.push_str(&purl_escape(&v));
    }
    if let Some(p) = platform {
        out.push_str("?platform=");
        out.push_str(&purl_escape(&p.to_string()));
    }
    out
}

/// A `{"sha256": "<hex>"}` digest set.
pub fn digest_set(d: &Digest) -> Value {
    json!({ "sha256": d.hex() })
}

/// The statement of `predicate` (of `predicate_type`) about `subjects`.
pub fn statement(subjects: &[Subject], predicate_type: &str, predicate: Value) -> InToto {
    let subject: Vec<Value> = subjects
        .iter()
        .map(|s| match &s.name {
            Some(n) => json!({ "name": n, "digest": digest_set(&s.digest) }),
            None => json!({ "digest": digest_set(&s.digest) }),
        })
        .collect();
    let doc = json!({
        "_type": STATEMENT_TYPE,
        "predicateType": predicate_type,
        "subject": subject,
        "predicate": predicate,
    });
    InToto {
        predicate_type: predicate_type.to_owned(),
        bytes: serde_json::to_vec(&doc).expect("a JSON value always serializes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_become_package_urls() {
        let amd64: Platform = "linux/amd64".parse().unwrap();
        assert_eq!(
            docker_purl("docker.io/library/alpine:3.20", Some(&amd64)),
            "pkg:docker/alpine@3.20?platform=linux%2Famd64"
        );
        assert_eq!(
            docker_purl("localhost:5000/team/app", None),
            "pkg:docker/localhost%3A5000/team/app@latest"
        );
        let d = Digest::of(b"x");
        assert_eq!(
            docker_purl(&format!("busybox@{d}"), None),
            format!("pkg:docker/busybox@sha256%3A{}", d.hex())
        );
        assert_eq!(
            docker_purl(&format!("reg.test/busybox:1@{d}"), None),
            "pkg:docker/reg.test/busybox@1"
        );
    }

    #[test]
    fn statement_names_its_subjects() {
        let d = Digest::of(b"manifest");
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let s = statement(
            &Subject::of_image(&["app:1".into()], &amd64, d),
            crate::PREDICATE_SLSA_V1,
            json!({}),
        );
        let v: Value = serde_json::from_slice(&s.bytes).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(
            v["subject"][0]["name"],
            "pkg:docker/app@1?platform=linux%2Famd64"
        );
        assert_eq!(v["subject"][0]["digest"]["sha256"], d.hex());
        let unnamed = statement(&Subject::of_image(&[], &amd64, d), "t", json!({}));
        let v: Value = serde_json::from_slice(&unnamed.bytes).unwrap();
        assert!(v["subject"][0].get("name").is_none());
    }
}
