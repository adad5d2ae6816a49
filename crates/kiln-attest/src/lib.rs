//! Supply-chain attestations of a built image, as BuildKit makes them: in-toto statements
//! ([`statement`]) carrying an SLSA provenance predicate ([`provenance`]) or an SPDX 2.3 SBOM
//! read from the image's files ([`sbom`]), and the typed options of buildx's `--provenance`,
//! `--sbom` and `--attest` flags ([`Request`]).
//!
//! Architecture invariant: pure data plus reading a root filesystem directory; it knows
//! nothing of the store, graphs or exporters (the engine gathers what a predicate records, the
//! exporter stores the statements). A secret's value is never an input here: provenance
//! records secret ids only.

pub mod provenance;
pub mod sbom;
pub mod statement;

pub use provenance::{BuildInfo, Material};
pub use statement::{InToto, Subject};

/// The media type of an in-toto statement layer (`intoto.PayloadType`).
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// The predicate type of SLSA provenance v0.2.
pub const PREDICATE_SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
/// The predicate type of SLSA provenance v1.
pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";
/// The predicate type of an SPDX document.
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";

/// Errors of the attestation options and the SBOM scan.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--provenance`, `--sbom` or `--attest` value that cannot be understood.
    #[error("invalid {flag} value {value:?}: {why}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A file of the image the SBOM scan had to read.
    #[error("SBOM scan: {path}: {why}")]
    Scan {
        /// The file, as a path inside the image.
        path: String,
        /// Why it could not be read.
        why: String,
    },
}

/// How much provenance records (BuildKit's `mode=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Materials, frontend, timestamps: safe for every build.
    Min,
    /// Also the build arguments and the ids (never the values) of secrets and ssh agents.
    #[default]
    Max,
}

/// The SLSA provenance version (BuildKit's `version=`; v1 is its default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlsaVersion {
    /// `https://slsa.dev/provenance/v0.2`.
    V02,
    /// `https://slsa.dev/provenance/v1`.
    #[default]
    V1,
}

/// The options of a provenance attestation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvenanceOptions {
    /// `mode=`.
    pub mode: Mode,
    /// `version=`.
    pub version: SlsaVersion,
    /// `builder-id=`: the SLSA builder id (empty when not given, as BuildKit's).
    pub builder_id: Option<String>,
    /// `reproducible=true`.
    pub reproducible: bool,
    /// `inline-only=true`: only outputs that carry attestations inside the image (an index)
    /// get it; a filesystem output (`type=local`, `type=tar`) writes no file of it. buildx's
    /// default provenance is inline-only.
    pub inline_only: bool,
    /// `filename=`: its file's name in a filesystem output (BuildKit's default
    /// `provenance.json`).
    pub filename: Option<String>,
}

/// The attestations a build asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Provenance, when asked for (or on by default).
    pub provenance: Option<ProvenanceOptions>,
    /// An SPDX SBOM of the image's packages.
    pub sbom: bool,
}

impl Request {
    /// Whether any attestation is asked for.
    pub fn any(&self) -> bool {
        self.provenance.is_some() || self.sbom
    }
}

/// What the build flags say about attestations, before the default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// Provenance: `None` when no flag spoke of it, `Some(None)` when disabled.
    pub provenance: Option<Option<ProvenanceOptions>>,
    /// SBOM: `None` when no flag spoke of it.
    pub sbom: Option<bool>,
}

impl Flags {
    /// Reads `--provenance` (`true|false|mode=min|...`), `--sbom` (`true|false|...`) and each
    /// `--attest type=provenance|sbom,...` as buildx does: a boolean enables or disables the
    /// type, anything else is its options; a later flag for the same type wins.
    pub fn parse(
        provenance: Option<&str>,
        sbom: Option<&str>,
        attests: &[String],
    ) -> Result<Flags, Error> {
        let mut specs: Vec<(&'static str, String)> = Vec::new();
        if let Some(v) = provenance {
            specs.push(("--provenance", canonical("provenance", v)));
        }
        if let Some(v) = sbom {
            specs.push(("--sbom", canonical("sbom", v)));
        }
        for a in attests {
            specs.push(("--attest", a.clone()));
        }
        let mut flags = Flags::default();
        for (flag, spec) in specs {
            let bad = |why: String| Error::Flag {
                flag,
                value: spec.clone(),
                why,
            };
            let mut kind = None;
            let mut disabled = false;
            let mut opts = ProvenanceOptions::default();
            let mut extra = Vec::new();
            for field in spec.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let (k, v) = field
                    .split_once('=')
                    .ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
                match k.trim().to_ascii_lowercase().as_str() {
                    "type" => kind = Some(v.to_owned()),
                    "disabled" => disabled = parse_bool(v).ok_or_else(|| bad(bool_why(field)))?,
                    _ => extra.push((k.trim().to_owned(), v.to_owned())),
                }
            }
            match kind.as_deref() {
                Some("provenance") => {
                    for (k, v) in &extra {
                        match k.as_str() {
                            "mode" => {
                                opts.mode = match v.as_str() {
                                    "min" => Mode::Min,
                                    "max" => Mode::Max,
                                    _ => {
                                        return Err(bad(format!("mode {v:?}: expected min or max")))
                                    }
                                }
                            }
                            "version" => {
                                opts.version = match v.as_str() {
                                    "v0.2" => SlsaVersion::V02,
                                    "v1" => SlsaVersion::V1,
                                    _ => {
                                        return Err(bad(format!(
                                            "version {v:?}: expected v0.2 or v1"
                                        )))
                                    }
                                }
                            }
                            "builder-id" => opts.builder_id = Some(v.clone()),
                            "reproducible" => {
                                opts.reproducible = parse_bool(v)
                                    .ok_or_else(|| bad(bool_why(&format!("{k}={v}"))))?
                            }
                            "inline-only" => {
                                opts.inline_only = parse_bool(v)
                                    .ok_or_else(|| bad(bool_why(&format!("{k}={v}"))))?
                            }
                            "filename" => {
                                // A name, not a path: BuildKit keeps its base name only.
                                let base = v.rsplit('/').next().unwrap_or_default();
                                if base.is_empty() || base == "." || base == ".." {
                                    return Err(bad(format!(
                                        "filename {v:?}: expected a file name"
                                    )));
                                }
                                opts.filename = Some(base.to_owned());
                            }
                            _ => {
                                return Err(bad(format!(
                                    "unknown provenance option {k:?} (known: mode, version, \
                                     builder-id, reproducible, inline-only, filename)"
                                )))
                            }
                        }
                    }
                    flags.provenance = Some((!disabled).then_some(opts));
                }
                Some("sbom") => {
                    if let Some((k, _)) = extra.iter().find(|(k, _)| k == "generator") {
                        return Err(bad(format!(
                            "{k}: kiln's SBOM is built in (it reads the image's package \
                             databases and lockfiles); no scanner image is run"
                        )));
                    }
                    flags.sbom = Some(!disabled);
                }
                Some(other) => {
                    return Err(bad(format!(
                        "unknown attestation type {other:?}: expected provenance or sbom"
                    )))
                }
                None => return Err(bad("attestation type not specified (type=...)".into())),
            }
        }
        Ok(flags)
    }

    /// Whether buildx's `BUILDX_NO_DEFAULT_ATTESTATIONS`, whose value is `value`, turns the
    /// default provenance of a push off (unset or empty: no).
    pub fn default_disabled(value: Option<&str>) -> Result<bool, Error> {
        match value.map(str::trim) {
            None | Some("") => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| Error::Flag {
                flag: "BUILDX_NO_DEFAULT_ATTESTATIONS",
                value: v.to_owned(),
                why: "expected true or false".to_owned(),
            }),
        }
    }

    /// The attestations of a build: what the flags ask for; with no flag about provenance, it
    /// is on in `mode=min` when the build pushes, as buildx turns it on by default (kiln only
    /// for pushes, so that other outputs stay what they were), and `inline-only` as buildx's
    /// (`mode=min,inline-only=true`): a filesystem output of the same build gets no file of it.
    pub fn request(&self, pushes: bool) -> Request {
        let provenance = match &self.provenance {
            Some(p) => p.clone(),
            None => pushes.then(|| ProvenanceOptions {
                mode: Mode::Min,
                inline_only: true,
                ..Default::default()
            }),
        };
        Request {
            provenance,
            sbom: self.sbom.unwrap_or(false),
        }
    }
}

/// buildx's `CanonicalizeAttest`: a boolean enables or disables the type, anything else is
/// its options.
fn canonical(kind: &str, v: &str) -> String {
    match parse_bool(v) {
        Some(b) => format!("type={kind},disabled={}", !b),
        None => format!("type={kind},{v}"),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn bool_why(field: &str) -> String {
    format!("{field:?}: expected true or false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_buildx_reads_them() {
        let f = Flags::parse(Some("mode=max"), None, &[]).unwrap();
        let p = f.request(false).provenance.unwrap();
        assert_eq!(p.mode, Mode::Max);
        assert_eq!(p.version, SlsaVersion::V1);

        // `true` is provenance with BuildKit's defaults (mode=max).
        let f = Flags::parse(Some("true"), Some("true"), &[]).unwrap();
        let r = f.request(false);
        assert_eq!(r.provenance.unwrap().mode, Mode::Max);
        assert!(r.sbom);

        // Off unless pushing; on in mode=min for a push; `false` removes it.
        assert_eq!(Flags::default().request(false), Request::default());
        let pushed = Flags::default().request(true).provenance.unwrap();
        assert_eq!(pushed.mode, Mode::Min);
        assert!(
            pushed.inline_only,
            "buildx's default is mode=min,inline-only=true"
        );
        let named = Flags::parse(Some("filename=x/prov.json,inline-only=false"), None, &[])
            .unwrap()
            .request(false)
            .provenance
            .unwrap();
        assert_eq!(named.filename.as_deref(), Some("prov.json"));
        assert!(!named.inline_only);
        let off = Flags::parse(Some("false"), None, &[]).unwrap();
        assert!(off.request(true).provenance.is_none());

        let f = Flags::parse(
            None,
            None,
            &[
                "type=provenance,mode=min,version=v0.2,builder-id=https://b.test/x".into(),
                "type=sbom".into(),
            ],
        )
        .unwrap();
        let r = f.request(false);
        let p = r.provenance.unwrap();
        assert_eq!(
            (p.mode, p.version, p.builder_id.as_deref()),
            (Mode::Min, SlsaVersion::V02, Some("https://b.test/x"))
        );
        assert!(r.sbom);
        // A later flag for the same type wins.
        let f = Flags::parse(
            Some("mode=max"),
            None,
            &["type=provenance,disabled=true".into()],
        )
        .unwrap();
        assert!(f.request(true).provenance.is_none());

        assert!(!Flags::default_disabled(None).unwrap());
        assert!(!Flags::default_disabled(Some("")).unwrap());
        assert!(Flags::default_disabled(Some("1")).unwrap());
        assert!(!Flags::default_disabled(Some("false")).unwrap());
        let err = Flags::default_disabled(Some("yes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("BUILDX_NO_DEFAULT_ATTESTATIONS"), "{err}");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let err = |p: Option<&str>, a: &[&str]| {
            let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            Flags::parse(p, None, &a).unwrap_err().to_string()
        };
        assert!(err(Some("mode=most"), &[]).contains("expected min or max"));
        assert!(err(None, &["type=vex"]).contains("unknown attestation type \"vex\""));
        assert!(err(None, &["mode=max"]).contains("type not specified"));
        assert!(err(None, &["type=provenance,frob=1"]).contains("unknown provenance option"));
        assert!(err(None, &["type=sbom,generator=img"]).contains("built in"));
        assert!(err(Some("version=v3"), &[]).contains("v0.2 or v1"));
    }
}
