//! Attestations of a build's images (`--provenance`, `--sbom`, `--attest`), as buildx and
//! BuildKit attach them: what the build used (materials: base images by digest, git and http
//! sources with their checksums, from the solved graph), what it was asked (the build args in
//! `mode=max`, the ids of its secrets, never their values), and an SBOM read from each
//! image's final root filesystem. The statements go into an attestation manifest beside each
//! image in an index (`kiln_export::assemble_attested_index`); image exports into docker
//! (`type=docker`, `--load`) and the filesystem outputs get none.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use kiln_attest::sbom::Found;
use kiln_attest::{BuildInfo, Material, Request, Subject};
use kiln_export::{AttestationFile, Image, ImageFormat, ImageIndex, Statement};
use kiln_graph::{Definition, Op, SourceOp};
use kiln_snapshot::{ReadView, Snapshot, Store};
use kiln_types::Platform;

use crate::{BuildRequest, Error};

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The materials of each platform's graph (`defs`, in the order of the targets): every image
/// source pinned by digest, every git and http source with the checksum it was pinned to.
pub(crate) fn materials(defs: &[&Definition]) -> Vec<Vec<Material>> {
    defs.iter()
        .map(|def| {
            let mut found: Vec<Material> = def
                .vertices
                .iter()
                .filter_map(|v| material(&v.op))
                .collect();
            found.sort();
            found.dedup();
            found
        })
        .collect()
}

/// The material of one source op, when it is one.
fn material(op: &Op) -> Option<Material> {
    match op {
        Op::Source(SourceOp::Image(img)) => {
            let (name, digest) = match img.reference.rsplit_once("@sha256:") {
                Some((n, hex)) => (n, Some(hex.to_owned())),
                None => (img.reference.as_str(), None),
            };
            let uri = match name.strip_prefix("oci-layout://") {
                // A layout is a directory of the client: its name says which, not its path.
                Some(dir) => {
                    let dir = dir.split_once(':').map_or(dir, |(d, _)| d);
                    let base = Path::new(dir)
                        .file_name()
                        .map_or_else(|| "layout".to_owned(), |n| n.to_string_lossy().into_owned());
                    format!(
                        "pkg:oci/{}?platform={}",
                        base,
                        percent(&img.platform.to_string())
                    )
                }
                None => kiln_attest::statement::docker_purl(name, Some(&img.platform)),
            };
            Some(Material {
                uri,
                digest: digest
                    .into_iter()
                    .map(|hex| ("sha256".to_owned(), hex))
                    .collect(),
            })
        }
        Op::Custom(c) if c.primitive == "http" || c.primitive == "git" => {
            let payload: serde_json::Value = serde_json::from_str(&c.payload).ok()?;
            let field = |k: &str| payload.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (uri, algorithm) = if c.primitive == "http" {
                (field("url")?, "sha256")
            } else {
                let remote = field("remote")?;
                let uri = match field("ref") {
                    Some(r) => format!("{remote}#{r}"),
                    None => remote,
                };
                (uri, "sha1")
            };
            let digest = field("checksum")
                .map(|c| c.strip_prefix("sha256:").map_or(c.clone(), str::to_owned))
                .into_iter()
                .map(|hex| (algorithm.to_owned(), hex))
                .collect();
            Some(Material {
                uri: without_userinfo(&uri),
                digest,
            })
        }
        _ => None,
    }
}

/// `s` percent-encoded as a package URL qualifier value.
fn percent(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// A URL without its `user:password@` (credentials are not provenance).
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// What provenance records of the request, without the materials.
pub(crate) fn build_info(req: &BuildRequest, frontend: &str, started_on: i64) -> BuildInfo {
    let mut args: BTreeMap<String, String> = req
        .build_args
        .iter()
        .map(|(k, v)| (format!("build-arg:{k}"), v.clone()))
        .collect();
    for (k, v) in &req.labels {
        args.insert(format!("label:{k}"), v.clone());
    }
    if let Some(t) = &req.target {
        args.insert("target".to_owned(), t.clone());
    }
    // The build file as the build names it: its path in the context, never the host's.
    let config_path = req
        .dockerfile
        .strip_prefix(&req.context)
        .ok()
        .or_else(|| req.dockerfile.file_name().map(Path::new))
        .map_or_else(|| "Dockerfile".to_owned(), |p| p.display().to_string());
    let mut locals = vec!["context".to_owned(), "dockerfile".to_owned()];
    locals.extend(
        req.build_contexts
            .iter()
            .filter(|(_, v)| !v.contains("://"))
            .map(|(k, _)| k.clone()),
    );
    BuildInfo {
        frontend: frontend.to_owned(),
        config_path,
        args,
        secrets: req.secrets.keys().cloned().collect(),
        ssh: req.ssh.keys().cloned().collect(),
        locals,
        materials: Vec::new(),
        builder_platform: Platform::host(),
        started_on: Some(started_on),
        finished_on: None,
    }
}

/// Makes the statements of a build's images.
pub(crate) struct Attester {
    request: Request,
    info: BuildInfo,
    /// Per platform, in the order of the targets.
    materials: Vec<Vec<Material>>,
    /// The names the statements' subjects carry (`-t`).
    names: Vec<String>,
    /// The SBOM's `created` time (`SOURCE_DATE_EPOCH` when set).
    created: String,
    /// When the attestation files of a filesystem output were made: `SOURCE_DATE_EPOCH` when
    /// set, else the build's time to the second (BuildKit's).
    mtime: std::time::SystemTime,
    /// Each result's packages, by its top layer: one scan per result for every export.
    scanned: Mutex<HashMap<Option<String>, Found>>,
}

impl Attester {
    /// The attester of a build asking for `request`, or `None` when it asks for nothing.
    pub(crate) fn new(
        request: &Request,
        info: BuildInfo,
        materials: Vec<Vec<Material>>,
        names: Vec<String>,
        epoch: Option<u64>,
    ) -> Option<Attester> {
        if !request.any() {
            return None;
        }
        let secs = epoch.map_or_else(now, |e| i64::try_from(e).unwrap_or(i64::MAX));
        let created = kiln_types::image::rfc3339_utc(secs);
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or_default());
        Some(Attester {
            request: request.clone(),
            info,
            materials,
            names,
            created,
            mtime,
            scanned: Mutex::new(HashMap::new()),
        })
    }

    /// The statements about `image`, the result `snapshot` of the `nth` platform.
    fn statements(
        &self,
        store: &Store,
        nth: usize,
        snapshot: &Snapshot,
        image: &Image,
    ) -> Result<Vec<Statement>, Error> {
        let platform = image.config.platform();
        let subjects = Subject::of_image(&self.names, &platform, image.manifest.digest);
        let mut out = Vec::new();
        if let Some(opts) = &self.request.provenance {
            out.push(to_statement(self.provenance(opts, nth, &subjects)));
        }
        if self.request.sbom {
            out.push(to_statement(self.sbom(store, snapshot, &subjects)?));
        }
        Ok(out)
    }

    /// The provenance statement of the `nth` platform's result about `subjects`.
    fn provenance(
        &self,
        opts: &kiln_attest::ProvenanceOptions,
        nth: usize,
        subjects: &[Subject],
    ) -> kiln_attest::InToto {
        let mut info = self.info.clone();
        info.materials = self.materials.get(nth).cloned().unwrap_or_default();
        info.finished_on = Some(now());
        let (kind, predicate) = kiln_attest::provenance::predicate(opts, &info);
        kiln_attest::statement::statement(subjects, kind, predicate)
    }

    /// The SBOM statement of the result `snapshot` about `subjects`.
    fn sbom(
        &self,
        store: &Store,
        snapshot: &Snapshot,
        subjects: &[Subject],
    ) -> Result<kiln_attest::InToto, Error> {
        let found = self.packages(store, snapshot)?;
        let name = self.names.first().map_or("sbom", String::as_str);
        let doc = kiln_attest::sbom::spdx_document(name, &found, &self.created);
        Ok(kiln_attest::statement::statement(
            subjects,
            kiln_attest::PREDICATE_SPDX,
            doc,
        ))
    }

    /// The attestation files of a filesystem output (`type=local`, `type=tar`) of the `nth`
    /// platform's result `snapshot`, as BuildKit's local exporter writes them: each statement
    /// about every regular file of the result (its path and sha256), indented, named
    /// `provenance.json` (or the `filename=` asked) and `sbom.spdx.json`. An `inline-only`
    /// provenance (buildx's default) writes none. Empty when there is nothing to write.
    pub(crate) fn files(
        &self,
        store: &Store,
        nth: usize,
        snapshot: &Snapshot,
    ) -> Result<Vec<AttestationFile>, Error> {
        let provenance = self.request.provenance.as_ref().filter(|o| !o.inline_only);
        if provenance.is_none() && !self.request.sbom {
            return Ok(Vec::new());
        }
        let subjects: Vec<Subject> = {
            let view = ReadView::new(store, snapshot)?;
            kiln_export::file_subjects(view.path())?
                .into_iter()
                .map(|(name, digest)| Subject {
                    name: Some(name),
                    digest,
                })
                .collect()
        };
        let mut out = Vec::new();
        if let Some(opts) = provenance {
            out.push(AttestationFile {
                name: opts
                    .filename
                    .clone()
                    .unwrap_or_else(|| kiln_export::PROVENANCE_FILE.to_owned()),
                bytes: indented(&self.provenance(opts, nth, &subjects).bytes),
            });
        }
        if self.request.sbom {
            out.push(AttestationFile {
                name: kiln_export::SBOM_FILE.to_owned(),
                bytes: indented(&self.sbom(store, snapshot, &subjects)?.bytes),
            });
        }
        Ok(out)
    }

    /// The time the attestation files are dated.
    pub(crate) fn mtime(&self) -> std::time::SystemTime {
        self.mtime
    }

    /// The packages of `snapshot`'s files, scanned once.
    fn packages(&self, store: &Store, snapshot: &Snapshot) -> Result<Found, Error> {
        let key = snapshot.layers.last().map(|l| l.0.clone());
        let mut scanned = self
            .scanned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = scanned.get(&key) {
            return Ok(p.clone());
        }
        let view = ReadView::new(store, snapshot)?;
        let found = kiln_attest::sbom::scan(view.path())?;
        scanned.insert(key, found.clone());
        Ok(found)
    }

    /// The index of one platform's `image` (the result `snapshot`) and its attestations.
    pub(crate) fn single(
        &self,
        store: &Store,
        image: &Image,
        snapshot: &Snapshot,
        format: &ImageFormat,
    ) -> Result<ImageIndex, Error> {
        let stmts = self.statements(store, 0, snapshot, image)?;
        Ok(kiln_export::assemble_attested_index(
            store,
            vec![image.clone()],
            &[stmts],
            format,
        )?)
    }

    /// The index of every platform's image (`images[i]` made of `snapshots[i]`) and their
    /// attestations.
    pub(crate) fn platforms(
        &self,
        store: &Store,
        images: Vec<Image>,
        snapshots: &[&Snapshot],
        format: &ImageFormat,
    ) -> Result<ImageIndex, Error> {
        let stmts = images
            .iter()
            .zip(snapshots)
            .enumerate()
            .map(|(i, (image, snap))| self.statements(store, i, snap, image))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(kiln_export::assemble_attested_index(
            store, images, &stmts, format,
        )?)
    }
}

/// A statement as BuildKit writes it to a file: JSON indented by two spaces.
fn indented(bytes: &[u8]) -> Vec<u8> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .and_then(|v| serde_json::to_vec_pretty(&v))
        .unwrap_or_else(|_| bytes.to_vec())
}

fn to_statement(s: kiln_attest::InToto) -> Statement {
    Statement {
        predicate_type: s.predicate_type,
        bytes: s.bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::{CustomOp, ImageSource};

    #[test]
    fn build_info_names_no_host_path_and_no_secret_value() {
        let t = tempfile::tempdir().unwrap();
        let context = t.path().join("ctx");
        let req = BuildRequest {
            dockerfile: context.join("sub/Dockerfile.prod"),
            context,
            build_args: [("V".to_owned(), "1".to_owned())].into(),
            target: Some("app".into()),
            secrets: [(
                "token".to_owned(),
                crate::SecretSource::Env("SOME_VAR".into()),
            )]
            .into(),
            ..crate::phases::tests::request(t.path())
        };
        let info = build_info(&req, "dockerfile", 5);
        assert_eq!(info.config_path, "sub/Dockerfile.prod");
        assert_eq!(info.args["build-arg:V"], "1");
        assert_eq!(info.args["target"], "app");
        assert_eq!(info.secrets, ["token"]);
        assert_eq!(info.started_on, Some(5));
        let text = format!("{info:?}");
        assert!(!text.contains(&t.path().display().to_string()), "{text}");
    }

    #[test]
    fn materials_are_pinned_sources_without_credentials() {
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let hex = "ab".repeat(32);
        let img = Op::Source(SourceOp::Image(ImageSource {
            reference: format!("docker.io/library/busybox:1.36@sha256:{hex}"),
            platform: amd64.clone(),
        }));
        let m = material(&img).unwrap();
        assert_eq!(m.uri, "pkg:docker/busybox@1.36?platform=linux%2Famd64");
        assert_eq!(m.digest["sha256"], hex);
        let layout = Op::Source(SourceOp::Image(ImageSource {
            reference: format!("oci-layout:///home/me/images/bb:latest@sha256:{hex}"),
            platform: amd64,
        }));
        let m = material(&layout).unwrap();
        assert_eq!(m.uri, "pkg:oci/bb?platform=linux%2Famd64");
        assert!(!m.uri.contains("/home/me"));
        let http = Op::Custom(CustomOp {
            primitive: "http".into(),
            payload: format!(
                r#"{{"url":"https://u:pw@example.test/f.tgz","checksum":"sha256:{hex}","filename":"f.tgz"}}"#
            ),
        });
        let m = material(&http).unwrap();
        assert_eq!(m.uri, "https://example.test/f.tgz");
        assert_eq!(m.digest["sha256"], hex);
        let commit = "c".repeat(40);
        let git = Op::Custom(CustomOp {
            primitive: "git".into(),
            payload: format!(
                r#"{{"remote":"https://example.test/r.git","ref":"v1","checksum":"{commit}","keep_git_dir":false}}"#
            ),
        });
        let m = material(&git).unwrap();
        assert_eq!(m.uri, "https://example.test/r.git#v1");
        assert_eq!(m.digest["sha1"], commit);
    }
}
