//! Parsers of the output flags: buildx's `--output` specs (with the image exporters' options:
//! `compression=`, `compression-level=`, `force-compression=`, `oci-mediatypes=`,
//! `annotation*.KEY=`) and `--annotation`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use kiln_engine::{Annotation, AnnotationKind, Export, ImageFormat, TarDest};
use kiln_types::Platform;

/// Parses buildx's `--output` syntax: `type=oci,dest=x.tar`, `type=local,dest=dir`, a bare
/// path (a local directory), or `-` (the result's files as a tar on standard output).
pub fn parse_output(spec: &str) -> Result<Export> {
    if !spec.contains('=') {
        if spec == "-" {
            return Ok(Export::Tar {
                dest: TarDest::Stdout,
            });
        }
        return Ok(Export::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut tar = true;
    let mut name: Option<String> = None;
    let mut push = false;
    let mut push_by_digest = false;
    let mut format = ImageFormat::default();
    let boolean = |k: &str, v: &str| match v.trim() {
        // BuildKit reads a bare `force-compression` (empty value) as true.
        "true" | "" if k == "force-compression" => Ok(true),
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(anyhow::anyhow!(
            "invalid --output {spec:?}: {k}={other} is not true or false"
        )),
    };
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --output {spec:?}: {part:?} is not key=value")
        })?;
        let k = k.trim();
        if let Some(a) =
            parse_annotation_option(k, v).with_context(|| format!("invalid --output {spec:?}"))?
        {
            format.annotations.push(a);
            continue;
        }
        match k {
            "type" => kind = Some(v.trim().to_owned()),
            "dest" => dest = Some(v.trim().to_owned()),
            "tar" => tar = boolean("tar", v)?,
            "rewrite-timestamp" => format.rewrite_timestamp = boolean("rewrite-timestamp", v)?,
            "name" => name = Some(v.trim().to_owned()),
            "push" => push = boolean("push", v)?,
            "push-by-digest" => push_by_digest = boolean(k, v)?,
            "compression" => {
                format.compression = v
                    .trim()
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid --output {spec:?}: {e}"))?
            }
            "compression-level" => {
                format.compression_level = Some(v.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "invalid --output {spec:?}: compression-level={v} is not an integer"
                    )
                })?)
            }
            "force-compression" => format.force_compression = boolean(k, v)?,
            "oci-mediatypes" => format.oci_media_types = Some(boolean(k, v)?),
            other => bail!("invalid --output {spec:?}: unknown attribute {other:?}"),
        }
    }
    let Some(kind) = kind else {
        bail!("invalid --output {spec:?}: missing type= (oci, docker, local, tar, registry)");
    };
    let need_dest = |dest: Option<String>| {
        dest.map(PathBuf::from)
            .ok_or_else(|| anyhow::anyhow!("invalid --output {spec:?}: type={kind} needs dest="))
    };
    let filesystem_only =
        format != ImageFormat::default() && matches!(kind.as_str(), "local" | "tar");
    if filesystem_only {
        bail!(
            "invalid --output {spec:?}: type={kind} writes files, not an image: compression, \
             media type, annotation and rewrite-timestamp options do not apply"
        );
    }
    if push_by_digest && !(kind == "registry" || kind == "image" && push) {
        bail!(
            "invalid --output {spec:?}: push-by-digest applies to a push (type=registry, or \
             type=image,push=true)"
        );
    }
    match kind.as_str() {
        "oci" => Ok(Export::Oci {
            dest: need_dest(dest)?,
            tar,
            format,
        }),
        "local" => Ok(Export::Local {
            dest: need_dest(dest)?,
        }),
        "tar" => Ok(Export::Tar {
            dest: match dest.as_deref().map(str::trim) {
                Some("-") => TarDest::Stdout,
                Some(_) => TarDest::File(need_dest(dest)?),
                None => bail!("invalid --output {spec:?}: type=tar needs dest=FILE or dest=-"),
            },
        }),
        // The names come from `name=` or, when absent, from `-t` (filled in by the caller).
        "registry" => Ok(Export::Registry {
            names: name.into_iter().collect(),
            format,
            push_by_digest,
        }),
        "image" if push => Ok(Export::Registry {
            names: name.into_iter().collect(),
            format,
            push_by_digest,
        }),
        "image" => bail!(
            "--output type=image without push=true is not supported: kiln keeps no image store; \
             use push=true, type=registry, type=oci, or --load"
        ),
        // As buildx: type=docker without dest loads the image into docker.
        "docker" => Ok(match dest {
            Some(d) => Export::Docker {
                dest: PathBuf::from(d),
                format,
            },
            None => Export::Load { format },
        }),
        "cacheonly" => {
            bail!("--output type=cacheonly is not supported yet; give no --output to only fill the cache")
        }
        other => bail!(
            "invalid --output {spec:?}: unknown type {other:?} (oci, docker, local, tar, \
             registry, image)"
        ),
    }
}

/// An exporter option `annotation[-TYPE][\[PLATFORM\]].KEY=VALUE` (BuildKit's syntax); `None`
/// when `key` is another option.
fn parse_annotation_option(key: &str, value: &str) -> Result<Option<Annotation>> {
    let Some(rest) = key.strip_prefix("annotation") else {
        return Ok(None);
    };
    let Some((head, k)) = rest.split_once('.') else {
        return Ok(None);
    };
    if k.is_empty() || k.chars().any(char::is_whitespace) {
        bail!("invalid annotation key {key:?}");
    }
    let (kind, platform) = split_platform(head)?;
    let kind = match kind {
        "" => AnnotationKind::Manifest,
        t => match t.strip_prefix('-') {
            Some(t) if !t.is_empty() => t.parse().map_err(anyhow::Error::msg)?,
            _ => return Ok(None),
        },
    };
    Ok(Some(annotation(kind, platform, k, value)?))
}

/// Parses `--annotation [TYPE[\[PLATFORM\]]:]KEY=VALUE`, as buildx: TYPE is `manifest` (the
/// default), `manifest-descriptor`, `index` or `index-descriptor`.
pub fn parse_annotation(spec: &str) -> Result<Annotation> {
    let (k, v) = spec
        .split_once('=')
        .with_context(|| format!("invalid annotation {spec:?}, expected key=value"))?;
    // A prefix is a type only when it looks like one (`[a-z-]+`, optionally `[platform]`):
    // `com.example:x=1` is a key with a colon.
    let (kind, platform, key) = match k.split_once(':') {
        Some((head, key)) => {
            let (t, p) = split_platform(head)?;
            if !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                let kind: AnnotationKind = t
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("invalid annotation {spec:?}: {e}"))?;
                (kind, p, key)
            } else {
                (AnnotationKind::Manifest, None, k)
            }
        }
        None => (AnnotationKind::Manifest, None, k),
    };
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        bail!("invalid annotation format, expected <type>:<key>=<value>, got {spec:?}");
    }
    annotation(kind, platform, key, v)
}

/// Splits `TYPE[PLATFORM]` into the type and the platform text.
fn split_platform(head: &str) -> Result<(&str, Option<&str>)> {
    match head.split_once('[') {
        Some((t, p)) => {
            let p = p
                .strip_suffix(']')
                .with_context(|| format!("invalid annotation type {head:?}: missing ]"))?;
            Ok((t, Some(p)))
        }
        None => Ok((head, None)),
    }
}

fn annotation(
    kind: AnnotationKind,
    platform: Option<&str>,
    key: &str,
    value: &str,
) -> Result<Annotation> {
    let platform = platform
        .map(|p| p.parse::<Platform>())
        .transpose()
        .context("invalid annotation platform")?;
    if platform.is_some()
        && matches!(
            kind,
            AnnotationKind::Index | AnnotationKind::IndexDescriptor
        )
    {
        bail!(
            "a platform applies to manifest annotations only ({}[...])",
            kind.name()
        );
    }
    Ok(Annotation {
        kind,
        platform,
        key: key.to_owned(),
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::CompressionKind;

    #[test]
    fn output_rewrite_timestamp() {
        assert_eq!(
            parse_output("type=oci,dest=a.tar,rewrite-timestamp=true").unwrap(),
            Export::Oci {
                dest: "a.tar".into(),
                tar: true,
                format: ImageFormat {
                    rewrite_timestamp: true,
                    ..ImageFormat::default()
                },
            }
        );
        assert!(parse_output("type=oci,dest=a.tar,rewrite-timestamp=maybe").is_err());
    }

    #[test]
    fn output_compression_options() {
        let e = parse_output(
            "type=oci,dest=a.tar,compression=zstd,compression-level=19,force-compression=true,oci-mediatypes=true",
        )
        .unwrap();
        let f = e.image_format().unwrap();
        assert_eq!(f.compression, CompressionKind::Zstd);
        assert_eq!(f.compression_level, Some(19));
        assert!(f.force_compression);
        assert_eq!(f.oci_media_types, Some(true));
        let e = parse_output("type=registry,compression=uncompressed,force-compression=").unwrap();
        assert_eq!(
            e.image_format().unwrap().compression,
            CompressionKind::Uncompressed
        );
        assert!(e.image_format().unwrap().force_compression);
        for bad in [
            "type=oci,dest=a,compression=lz4",
            "type=oci,dest=a,compression-level=high",
            "type=oci,dest=a,oci-mediatypes=yes",
            "type=local,dest=a,compression=zstd",
        ] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_push_by_digest() {
        let by_digest = |spec: &str| match parse_output(spec).unwrap() {
            Export::Registry {
                push_by_digest,
                names,
                ..
            } => (push_by_digest, names),
            other => panic!("{spec}: {other:?}"),
        };
        assert_eq!(
            by_digest("type=registry,name=localhost:5000/app,push-by-digest=true"),
            (true, vec!["localhost:5000/app".to_owned()])
        );
        assert!(by_digest("type=image,push=true,push-by-digest=true").0);
        assert!(!by_digest("type=registry").0);
        assert!(!by_digest("type=registry,push-by-digest=false").0);
        let err = parse_output("type=oci,dest=x.tar,push-by-digest=true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("push-by-digest applies to a push"), "{err}");
        let err = parse_output("type=registry,push-by-digest=yes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("push-by-digest=yes is not true or false"),
            "{err}"
        );
    }

    #[test]
    fn output_tar_docker_and_stdout() {
        assert_eq!(
            parse_output("type=tar,dest=fs.tar").unwrap(),
            Export::Tar {
                dest: TarDest::File("fs.tar".into())
            }
        );
        assert_eq!(
            parse_output("type=tar,dest=-").unwrap(),
            Export::Tar {
                dest: TarDest::Stdout
            }
        );
        assert_eq!(
            parse_output("-").unwrap(),
            Export::Tar {
                dest: TarDest::Stdout
            }
        );
        assert!(parse_output("type=tar").is_err());
        assert_eq!(
            parse_output("type=docker").unwrap(),
            Export::Load {
                format: ImageFormat::default()
            }
        );
    }

    #[test]
    fn output_annotation_options() {
        let e = parse_output(
            "type=oci,dest=a,annotation.a=1,annotation-manifest-descriptor.b=2,annotation-manifest[linux/arm64].c=3,annotation-index.d=4",
        )
        .unwrap();
        let got: Vec<_> = e
            .image_format()
            .unwrap()
            .annotations
            .iter()
            .map(|a| {
                (
                    a.kind,
                    a.platform.as_ref().map(ToString::to_string),
                    a.key.as_str(),
                    a.value.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (AnnotationKind::Manifest, None, "a", "1"),
                (AnnotationKind::ManifestDescriptor, None, "b", "2"),
                (
                    AnnotationKind::Manifest,
                    Some("linux/arm64".to_owned()),
                    "c",
                    "3"
                ),
                (AnnotationKind::Index, None, "d", "4"),
            ]
        );
        assert!(parse_output("type=oci,dest=a,annotation-bogus.k=v").is_err());
    }

    #[test]
    fn annotation_flags() {
        let a = parse_annotation("org.opencontainers.image.title=demo").unwrap();
        assert_eq!(
            (a.kind, a.key.as_str(), a.value.as_str()),
            (
                AnnotationKind::Manifest,
                "org.opencontainers.image.title",
                "demo"
            )
        );
        let a = parse_annotation("manifest-descriptor:k=v=w").unwrap();
        assert_eq!(
            (a.kind, a.key.as_str(), a.value.as_str()),
            (AnnotationKind::ManifestDescriptor, "k", "v=w")
        );
        let a = parse_annotation("manifest[linux/amd64]:k=v").unwrap();
        assert_eq!(a.platform.unwrap().to_string(), "linux/amd64");
        assert_eq!(
            parse_annotation("index:k=v").unwrap().kind,
            AnnotationKind::Index
        );
        // A colon in a key that is not a type prefix stays in the key.
        assert_eq!(
            parse_annotation("com.example:x=1").unwrap().key,
            "com.example:x"
        );
        assert!(parse_annotation("bogus:k=v").is_err());
        assert!(parse_annotation("novalue").is_err());
        assert!(parse_annotation("index[linux/amd64]:k=v").is_err());
    }
}
