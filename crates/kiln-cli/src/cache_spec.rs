//! Parsers of buildx's `--cache-to` and `--cache-from` specs (`type=local,dest=DIR,mode=max`,
//! `type=local,src=DIR`) into the engine's typed cache exports and imports.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use kiln_engine::{CacheExport, CacheImport, CacheLocation, CacheMode};
use kiln_types::reference::Reference;

/// The `key=value` pairs of a spec, in order; a part without `=` is an error.
fn pairs<'a>(flag: &str, spec: &'a str) -> Result<Vec<(&'a str, &'a str)>> {
    spec.split(',')
        .map(|part| {
            part.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| anyhow!("invalid {flag} {spec:?}: {part:?} is not key=value"))
        })
        .collect()
}

fn boolean(flag: &str, spec: &str, key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => bail!("invalid {flag} {spec:?}: {key}={other} is not true or false"),
    }
}

/// The types kiln does not write or read yet, with what to use instead.
fn unsupported(flag: &str, kind: &str) -> anyhow::Error {
    anyhow!(
        "{flag} type={kind} is not supported yet: kiln reads and writes type=local (an OCI \
         layout directory) and type=registry caches"
    )
}

/// A registry reference for `ref=` (`latest` when it has no tag).
fn registry(flag: &str, spec: &str, reference: Option<&str>) -> Result<CacheLocation> {
    let r = reference
        .filter(|r| !r.is_empty())
        .ok_or_else(|| anyhow!("invalid {flag} {spec:?}: type=registry needs ref=REF"))?;
    let reference = r
        .parse::<Reference>()
        .map_err(|e| anyhow!("invalid {flag} {spec:?}: ref={r}: {e}"))?;
    Ok(CacheLocation::Registry { reference })
}

/// Parses one `--cache-to`.
pub fn parse_cache_to(spec: &str) -> Result<CacheExport> {
    const FLAG: &str = "--cache-to";
    let mut kind = None;
    let mut dest = None;
    let mut reference = None;
    let mut tag = "latest".to_owned();
    let mut out = CacheExport {
        location: CacheLocation::Local {
            dir: PathBuf::new(),
            tag: String::new(),
        },
        mode: CacheMode::Min,
        compression: Default::default(),
        force_compression: false,
        oci_mediatypes: true,
        image_manifest: false,
        ignore_error: false,
        cache_mounts: false,
    };
    for (k, v) in pairs(FLAG, spec)? {
        match k {
            "type" => kind = Some(v),
            "dest" => dest = Some(PathBuf::from(v)),
            "ref" => reference = Some(v),
            "tag" => tag = v.to_owned(),
            "mode" => {
                out.mode = match v {
                    "min" => CacheMode::Min,
                    "max" => CacheMode::Max,
                    other => bail!("invalid {FLAG} {spec:?}: mode={other}: expected min or max"),
                }
            }
            "compression" => {
                out.compression = v
                    .parse()
                    .map_err(|e: String| anyhow!("invalid {FLAG} {spec:?}: {e}"))?
            }
            "oci-mediatypes" => out.oci_mediatypes = boolean(FLAG, spec, k, v)?,
            "image-manifest" => out.image_manifest = boolean(FLAG, spec, k, v)?,
            "ignore-error" => out.ignore_error = boolean(FLAG, spec, k, v)?,
            "cache-mounts" => out.cache_mounts = boolean(FLAG, spec, k, v)?,
            // BuildKit reads a bare `force-compression` as true.
            "force-compression" => {
                out.force_compression = v.is_empty() || boolean(FLAG, spec, k, v)?
            }
            // kiln compresses at the default level.
            "compression-level" => {}
            other => bail!("invalid {FLAG} {spec:?}: unknown option {other:?}"),
        }
    }
    if out.image_manifest && !out.oci_mediatypes {
        bail!("invalid {FLAG} {spec:?}: image-manifest=true needs oci-mediatypes=true");
    }
    out.location = match kind {
        Some("local") => {
            let dir =
                dest.ok_or_else(|| anyhow!("invalid {FLAG} {spec:?}: type=local needs dest=DIR"))?;
            if tag.is_empty() {
                bail!("invalid {FLAG} {spec:?}: tag= is empty");
            }
            CacheLocation::Local { dir, tag }
        }
        Some("registry") => registry(FLAG, spec, reference)?,
        // The cache goes into the image's config; BuildKit's inline cache is min only.
        Some("inline") if out.cache_mounts => bail!(
            "invalid {FLAG} {spec:?}: cache-mounts=true needs type=local or type=registry: an \
             inline cache lives in the image's config and names only the image's layers, and \
             the contents of cache mounts (package caches, often larger than the image) would \
             have to become layers of the image"
        ),
        Some("inline") => CacheLocation::Inline,
        Some(other) => return Err(unsupported(FLAG, other)),
        None => bail!("invalid {FLAG} {spec:?}: missing type= (e.g. type=local,dest=DIR)"),
    };
    Ok(out)
}

/// Parses one `--cache-from`. A bare value is an image reference, as buildx reads it
/// (`type=registry,ref=VALUE`).
pub fn parse_cache_from(spec: &str) -> Result<CacheImport> {
    const FLAG: &str = "--cache-from";
    if !spec.contains('=') {
        return Ok(CacheImport {
            location: registry(FLAG, spec, Some(spec))?,
        });
    }
    let mut kind = None;
    let mut src = None;
    let mut reference = None;
    let mut tag = "latest".to_owned();
    for (k, v) in pairs(FLAG, spec)? {
        match k {
            "type" => kind = Some(v),
            "src" => src = Some(PathBuf::from(v)),
            "ref" => reference = Some(v),
            "tag" => tag = v.to_owned(),
            // A digest pins the manifest in BuildKit; kiln checks every blob it reads anyway.
            "digest" => {}
            other => bail!("invalid {FLAG} {spec:?}: unknown option {other:?}"),
        }
    }
    let location = match kind {
        Some("local") => {
            let dir =
                src.ok_or_else(|| anyhow!("invalid {FLAG} {spec:?}: type=local needs src=DIR"))?;
            CacheLocation::Local { dir, tag }
        }
        Some("registry") => registry(FLAG, spec, reference)?,
        Some("inline") => bail!(
            "invalid {FLAG} {spec:?}: an inline cache is read from its image: \
             --cache-from type=registry,ref=IMAGE"
        ),
        Some(other) => return Err(unsupported(FLAG, other)),
        None => bail!("invalid {FLAG} {spec:?}: missing type= (e.g. type=local,src=DIR)"),
    };
    Ok(CacheImport { location })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::CacheCompression;

    #[test]
    fn cache_to_local_with_options() {
        let e = parse_cache_to("type=local,dest=/tmp/c,mode=max,compression=uncompressed").unwrap();
        assert_eq!(
            e.location,
            CacheLocation::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(e.mode, CacheMode::Max);
        assert_eq!(e.compression, CacheCompression::Uncompressed);
        assert!(e.oci_mediatypes && !e.image_manifest && !e.ignore_error);
        let e = parse_cache_to(
            "type=local,dest=c,tag=v2,image-manifest=true,ignore-error=true,oci-mediatypes=true",
        )
        .unwrap();
        assert_eq!(e.mode, CacheMode::Min);
        assert!(e.image_manifest && e.ignore_error && !e.cache_mounts);
        assert!(matches!(e.location, CacheLocation::Local { tag, .. } if tag == "v2"));
        let e = parse_cache_to("type=registry,ref=localhost:5000/c,cache-mounts=true").unwrap();
        assert!(e.cache_mounts);
        assert!(parse_cache_to("type=inline,cache-mounts=false").is_ok());
    }

    #[test]
    fn cache_to_errors_say_what_to_write() {
        for (spec, want) in [
            ("type=local", "needs dest=DIR"),
            ("dest=x", "missing type="),
            ("type=local,dest=x,mode=all", "expected min or max"),
            (
                "type=local,dest=x,compression=brotli",
                "expected gzip, zstd or uncompressed",
            ),
            ("type=local,dest=x,bogus=1", "unknown option \"bogus\""),
            ("type=local,dest=x,ignore-error=yes", "not true or false"),
            ("type=gha", "type=gha is not supported yet"),
            ("type=registry", "needs ref=REF"),
            (
                "type=registry,ref=reg.example/UPPER",
                "ref=reg.example/UPPER",
            ),
            (
                "type=local,dest=x,image-manifest=true,oci-mediatypes=false",
                "needs oci-mediatypes",
            ),
            ("type=local,dest", "is not key=value"),
            ("type=local,dest=x,cache-mounts=1", "not true or false"),
            (
                "type=inline,cache-mounts=true",
                "cache-mounts=true needs type=local or type=registry",
            ),
        ] {
            let err = parse_cache_to(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }

    #[test]
    fn cache_from_local_and_refusals() {
        let i = parse_cache_from("type=local,src=/c,tag=t").unwrap();
        assert_eq!(
            i.location,
            CacheLocation::Local {
                dir: "/c".into(),
                tag: "t".into()
            }
        );
        let bare = parse_cache_from("registry.example/app:cache").unwrap();
        let typed = parse_cache_from("type=registry,ref=registry.example/app:cache").unwrap();
        assert_eq!(bare, typed);
        let CacheLocation::Registry { reference } = bare.location else {
            panic!("a registry cache")
        };
        assert_eq!(reference.to_string(), "registry.example/app:cache");
        let inline = parse_cache_to("type=inline").unwrap();
        assert_eq!(inline.location, CacheLocation::Inline);
        let to = parse_cache_to("type=registry,ref=localhost:5000/c,mode=max").unwrap();
        assert!(matches!(to.location, CacheLocation::Registry { .. }));
        assert_eq!(to.mode, CacheMode::Max);
        for (spec, want) in [
            ("type=gha", "type=gha is not supported yet"),
            ("type=inline", "type=registry,ref=IMAGE"),
            ("type=local", "needs src=DIR"),
        ] {
            let err = parse_cache_from(spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
