//! `kiln imagetools inspect|create`, as `docker buildx imagetools`: show an image or index as
//! a registry serves it, and merge images (single-platform ones, or indexes) into one index
//! pushed under new tags, copying blobs between repositories by cross-repository mount, so
//! that no layer is pulled. Registries only (not OCI layouts); reached as `kiln build` reaches
//! them (`--insecure-registry`, kiln.toml's `[registry."host"]`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_engine::AnnotationKind;
use kiln_registry::{
    media_type_of, parse_document, BlobCopy, Document, Reference, Registry, RegistryOptions,
};
use kiln_types::image::{Descriptor, Index, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX};
use kiln_types::{Digest, Platform};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;

/// `kiln imagetools` subcommands.
#[derive(clap::Subcommand)]
pub enum ImagetoolsCommand {
    /// Show details of an image in the registry: its media type and digest, and for an index
    /// every manifest with its platform.
    Inspect(InspectArgs),
    /// Create a new image index from source images (single-platform images or indexes, in
    /// the target's registry or not) and push it; layers are mounted, not pulled.
    Create(CreateArgs),
}

/// How to reach registries (as `kiln build`).
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// Registry reached over plain http (loopback registries always are).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
}

/// `kiln imagetools inspect` flags.
#[derive(clap::Args)]
pub struct InspectArgs {
    /// Show the manifest exactly as the registry served it.
    #[arg(long, conflicts_with = "format")]
    raw: bool,
    /// Output template: `{{.Manifest}}` (the default text), `{{json .}}`, `{{json .Manifest}}`,
    /// `{{json .Image}}` or `{{.Name}}` (buildx's templates kiln knows).
    #[arg(long)]
    format: Option<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The image: `[registry/]repository[:tag][@digest]`.
    name: String,
}

/// `kiln imagetools create` flags.
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Reference of the new image (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Print the new index instead of pushing it.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Add the sources to the index the first tag names now.
    #[arg(long)]
    append: bool,
    /// Annotation of the new index (`index:KEY=VALUE`) or of its entries
    /// (`manifest-descriptor[PLATFORM]:KEY=VALUE`).
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Write the new index's descriptor and name to this file, as JSON.
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Keep only these platforms of the sources (os/arch[/variant], comma-separated or
    /// repeated).
    #[arg(short = 'p', long, value_delimiter = ',')]
    platform: Vec<String>,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Source images: references, or digests (`sha256:...`) in the one repository involved.
    sources: Vec<String>,
}

/// Runs a `kiln imagetools` subcommand.
pub fn run(command: &ImagetoolsCommand, settings: &Config) -> Result<ExitCode> {
    let registry_args = match command {
        ImagetoolsCommand::Inspect(a) => &a.registry,
        ImagetoolsCommand::Create(a) => &a.registry,
    };
    let registry = Registry::new(RegistryOptions {
        insecure: registry_args.insecure_registries.clone(),
        docker_config: None,
        hosts: settings.registry_hosts(),
    })
    .context("setting up the registry client")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        ImagetoolsCommand::Inspect(args) => rt.block_on(inspect(&registry, args)),
        ImagetoolsCommand::Create(args) => rt.block_on(create(&registry, args)),
    }
}

fn parse_ref(text: &str) -> Result<Reference> {
    Reference::parse_normalized(text).with_context(|| format!("invalid reference {text:?}"))
}

/// The name as buildx shows it: with `latest` when neither tag nor digest was given.
fn shown(r: &Reference) -> String {
    if r.tag.is_none() && r.digest.is_none() {
        return format!("{r}:latest");
    }
    r.to_string()
}

/// `r` naming `digest` in its repository (tag kept for display, as buildx's names).
fn with_digest(r: &Reference, digest: Digest) -> Reference {
    Reference {
        tag: r
            .tag
            .clone()
            .or_else(|| r.digest.is_none().then(|| "latest".to_owned())),
        digest: Some(digest),
        ..r.clone()
    }
}

fn parse(r: &Reference, bytes: &[u8]) -> Result<Document> {
    parse_document(bytes).map_err(|why| anyhow::anyhow!("{}: {why}", shown(r)))
}

// ---------------------------------------------------------------------------------------
// inspect

/// What an inspect template can show.
enum Template {
    /// buildx's text (`{{.Manifest}}`, the default).
    Text,
    /// `{{.Name}}`.
    Name,
    /// `{{json .}}`.
    JsonAll,
    /// `{{json .Manifest}}`.
    JsonManifest,
    /// `{{json .Image}}`.
    JsonImage,
}

fn parse_template(format: Option<&str>) -> Result<Template> {
    let Some(f) = format else {
        return Ok(Template::Text);
    };
    // Go templates allow spaces inside the braces.
    let inner = f
        .trim()
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(|s| s.split_whitespace().collect::<Vec<_>>());
    Ok(match inner.as_deref() {
        Some([".Manifest"]) => Template::Text,
        Some([".Name"]) => Template::Name,
        Some(["json", "."]) => Template::JsonAll,
        Some(["json", ".Manifest"]) => Template::JsonManifest,
        Some(["json", ".Image"]) => Template::JsonImage,
        _ => bail!(
            "--format {f:?}: kiln knows these templates of buildx: {{{{.Manifest}}}} (the \
             default), {{{{.Name}}}}, {{{{json .}}}}, {{{{json .Manifest}}}}, {{{{json .Image}}}}"
        ),
    })
}

async fn inspect(registry: &Registry, args: &InspectArgs) -> Result<ExitCode> {
    let template = parse_template(args.format.as_deref())?;
    let r = parse_ref(&args.name)?;
    let (digest, bytes) = registry.fetch_manifest(&r).await?;
    let mut out = std::io::stdout().lock();
    if args.raw {
        // As the registry served it, without a newline: the digest of the output is the
        // manifest's.
        out.write_all(&bytes).context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
        return Ok(ExitCode::SUCCESS);
    }
    let doc = parse(&r, &bytes)?;
    let text = match template {
        Template::Text => text(&r, digest, &doc),
        Template::Name => format!("{}\n", args.name),
        Template::JsonManifest => json(&manifest_json(digest, bytes.len(), &doc))?,
        Template::JsonImage => json(&image_json(registry, &r, &doc).await?)?,
        Template::JsonAll => json(&InspectAll {
            name: &args.name,
            manifest: manifest_json(digest, bytes.len(), &doc),
            image: image_json(registry, &r, &doc).await?,
        })?,
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn json(v: &impl Serialize) -> Result<String> {
    Ok(serde_json::to_string_pretty(v).context("encoding JSON")? + "\n")
}

/// buildx's text: `Name`, `MediaType`, `Digest`, then for an index each manifest.
fn text(r: &Reference, digest: Digest, doc: &Document) -> String {
    let mut s = String::new();
    let media_type = media_type_of(doc);
    for (k, v) in [
        ("Name:", shown(r)),
        ("MediaType:", media_type.to_owned()),
        ("Digest:", digest.to_string()),
    ] {
        writeln!(s, "{k:<11}{v}").expect("writing to a String cannot fail");
    }
    let Document::Index(index) = doc else {
        return s;
    };
    s.push_str("\nManifests:\n");
    // One column for the labels of every entry, as buildx's tabwriter aligns them.
    let any_annotations = index.manifests.iter().any(|m| !m.annotations.is_empty());
    let width = if any_annotations { 15 } else { 13 };
    for (i, m) in index.manifests.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let mut line = |label: &str, value: &str| {
            writeln!(s, "{:<width$}{value}", format!("  {label}"))
                .expect("writing to a String cannot fail");
        };
        line("Name:", &with_digest(r, m.digest).to_string());
        line("MediaType:", &m.media_type);
        if let Some(p) = &m.platform {
            line("Platform:", &p.to_string());
        }
        if !m.annotations.is_empty() {
            line("Annotations:", "");
            let key_width = m.annotations.keys().map(String::len).max().unwrap_or(0) + 2;
            for (k, v) in &m.annotations {
                writeln!(s, "    {:<key_width$}{v}", format!("{k}:"))
                    .expect("writing to a String cannot fail");
            }
        }
    }
    s
}

/// `{{json .}}`: buildx's template input.
#[derive(Serialize)]
struct InspectAll<'a> {
    name: &'a str,
    manifest: ManifestJson,
    #[serde(skip_serializing_if = "Value::is_null")]
    image: Value,
}

/// `.Manifest`: for an index, the index with its digest and size; for an image, its descriptor.
#[derive(Serialize)]
#[serde(untagged)]
enum ManifestJson {
    Index {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: String,
        digest: Digest,
        size: usize,
        manifests: Vec<Descriptor>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        annotations: BTreeMap<String, String>,
    },
    Image(Descriptor),
}

fn manifest_json(digest: Digest, size: usize, doc: &Document) -> ManifestJson {
    match doc {
        Document::Index(i) => ManifestJson::Index {
            schema_version: i.schema_version,
            media_type: media_type_of(doc).to_owned(),
            digest,
            size,
            manifests: i.manifests.clone(),
            annotations: i.annotations.clone(),
        },
        Document::Manifest(_) => {
            ManifestJson::Image(Descriptor::new(media_type_of(doc), digest, size as u64))
        }
    }
}

/// Whether an index entry is an attestation (buildx's `vnd.docker.reference.digest`), not
/// an image of a platform.
fn is_attestation(d: &Descriptor) -> bool {
    d.annotations.contains_key("vnd.docker.reference.digest")
        || d.annotations.contains_key("com.docker.reference.digest")
}

/// `.Image`: the config of an image; for an index, the config of each platform (by
/// `os/arch[/variant]`), or the one config when there is one platform, as buildx.
async fn image_json(registry: &Registry, r: &Reference, doc: &Document) -> Result<Value> {
    match doc {
        Document::Manifest(m) => config_json(registry, r, &m.config).await,
        Document::Index(index) => {
            let mut configs = serde_json::Map::new();
            for entry in index.manifests.iter().filter(|d| !is_attestation(d)) {
                let child = with_digest(r, entry.digest);
                let (_, bytes) = registry.fetch_manifest(&child).await?;
                // Nested indexes are not followed, as buildx's loader keys images only.
                let Document::Manifest(m) = parse(&child, &bytes)? else {
                    continue;
                };
                let config = config_json(registry, r, &m.config).await?;
                let platform = match &entry.platform {
                    Some(p) => p.normalize(),
                    None => config_platform(&config),
                };
                configs.insert(platform.to_string(), config);
            }
            if configs.len() == 1 {
                return Ok(configs
                    .into_iter()
                    .next()
                    .map(|(_, c)| c)
                    .unwrap_or_default());
            }
            Ok(Value::Object(configs))
        }
    }
}

async fn config_json(registry: &Registry, r: &Reference, config: &Descriptor) -> Result<Value> {
    let bytes = registry.read_config_blob(r, config).await?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: image config {} is not JSON", shown(r), config.digest))
}

/// os/architecture/variant of an image config, normalized.
fn config_platform(config: &Value) -> Platform {
    let field = |k: &str| config.get(k).and_then(Value::as_str).unwrap_or_default();
    let variant = Some(field("variant")).filter(|v| !v.is_empty());
    Platform::new(field("os"), field("architecture"), variant).normalize()
}

// ---------------------------------------------------------------------------------------
// create

/// One entry of the new index and the repository its content is copied from.
struct Entry {
    desc: Descriptor,
    from: Reference,
}

async fn create(registry: &Registry, args: &CreateArgs) -> Result<ExitCode> {
    if !args.dry_run && args.tags.is_empty() {
        bail!("can't push with no tags specified, please set --tag or --dry-run");
    }
    let tags = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<Vec<_>>>()?;
    if tags.iter().any(|t| t.digest.is_some()) {
        bail!("a --tag names a tag, not a digest");
    }
    let mut source_args: Vec<&str> = Vec::new();
    if args.append {
        let Some(first) = args.tags.first() else {
            bail!("--append needs a --tag: the index to add the sources to");
        };
        source_args.push(first);
    }
    source_args.extend(args.sources.iter().map(String::as_str));
    if source_args.is_empty() {
        bail!("no sources specified");
    }
    let sources = resolve_sources(&source_args, &tags)?;
    let annotations = args
        .annotations
        .iter()
        .map(|a| crate::output_spec::parse_annotation(a))
        .collect::<Result<Vec<_>>>()?;

    // The documents and, for images, the platform from the config: small reads only.
    let mut entries: Vec<Entry> = Vec::new();
    // The one source, when it is an index: its bytes and media type.
    let mut single_index: Option<(Vec<u8>, String)> = None;
    for (text, r) in &sources {
        let (digest, bytes) = registry
            .fetch_manifest(r)
            .await
            .with_context(|| format!("source {text:?}"))?;
        let doc = parse(r, &bytes)?;
        match &doc {
            Document::Index(index) => {
                if sources.len() == 1 {
                    single_index = Some((bytes.clone(), media_type_of(&doc).to_owned()));
                }
                for d in &index.manifests {
                    add_entry(&mut entries, d.clone(), r);
                }
            }
            Document::Manifest(m) => {
                let config = registry
                    .read_config_blob(r, &m.config)
                    .await
                    .with_context(|| format!("source {text:?}"))?;
                let config: Value = serde_json::from_slice(&config).with_context(|| {
                    format!(
                        "source {text:?}: image config {} is not JSON",
                        m.config.digest
                    )
                })?;
                let platform = config_platform(&config);
                if platform.os.is_empty() || platform.architecture.is_empty() {
                    bail!(
                        "source {text:?}: its image config names no os and architecture, so \
                         it has no platform to be listed under in an index"
                    );
                }
                let mut desc = Descriptor::new(media_type_of(&doc), digest, bytes.len() as u64);
                desc.platform = Some(platform);
                add_entry(&mut entries, desc, r);
            }
        }
    }

    let platforms = args
        .platform
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<Platform>()
                .with_context(|| format!("--platform {p}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let before = entries.len();
    let mut entries = keep_platforms(entries, &platforms)?;
    // One index source and nothing to change: the index as it is (buildx's carbon copy).
    let unchanged = annotations.is_empty() && entries.len() == before;
    let (index_bytes, media_type) = match single_index {
        Some(as_is) if unchanged => as_is,
        _ => new_index(&mut entries, &annotations)?,
    };
    let index_digest = Digest::of(&index_bytes);
    if args.dry_run {
        let mut out = std::io::stdout().lock();
        out.write_all(&index_bytes)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .context("writing to stdout")?;
        return Ok(ExitCode::SUCCESS);
    }

    // Per target repository: every image, with its blobs, then the index under each tag.
    let mut repos: BTreeMap<String, Vec<&Reference>> = BTreeMap::new();
    for t in &tags {
        repos.entry(t.name()).or_default().push(t);
    }
    for (repo, repo_tags) in &repos {
        let target = repo_tags[0];
        for e in &entries {
            eprintln!("copying {} from {} to {repo}", e.desc.digest, e.from.name());
            let report = registry
                .copy_image(&e.from, target, e.desc.digest)
                .await
                .with_context(|| format!("copy {} from {} to {repo}", e.desc.digest, e.from))?;
            let count = |k: BlobCopy| report.blobs.iter().filter(|(_, c)| *c == k).count();
            eprintln!(
                "  {} blobs mounted, {} streamed, {} already there",
                count(BlobCopy::Mounted),
                count(BlobCopy::Streamed),
                count(BlobCopy::Present)
            );
        }
        for t in repo_tags {
            eprintln!("pushing {index_digest} to {}", shown(t));
            registry
                .put_manifest(t, &index_bytes, &media_type)
                .await
                .with_context(|| format!("publish {index_digest} to {}", shown(t)))?;
        }
    }
    if let Some(path) = &args.metadata_file {
        let doc = serde_json::json!({
            "containerimage.descriptor": {
                "mediaType": media_type,
                "digest": index_digest.to_string(),
                "size": index_bytes.len(),
            },
            "image.name": repos.keys().cloned().collect::<Vec<_>>().join(","),
        });
        crate::output::write_metadata_file(path, &doc)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The sources as references; a bare digest names an image of the one repository the
/// sources (or else the tags) use, as buildx infers it.
fn resolve_sources<'a>(texts: &[&'a str], tags: &[Reference]) -> Result<Vec<(&'a str, Reference)>> {
    /// A source as written: a reference, or a digest in a repository to infer.
    enum Written {
        Ref(Reference),
        Digest(Digest),
    }
    let mut parsed: Vec<(&str, Written)> = Vec::new();
    for &t in texts {
        if t.starts_with("sha256:") {
            let d: Digest = t
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid source {t:?}: {e}"))?;
            parsed.push((t, Written::Digest(d)));
        } else {
            let r = parse_ref(t).context(
                "a source is a reference (repository[:tag][@digest]) or a digest (sha256:...)",
            )?;
            parsed.push((t, Written::Ref(r)));
        }
    }
    let refs = || {
        parsed.iter().filter_map(|(_, w)| match w {
            Written::Ref(r) => Some(r),
            Written::Digest(_) => None,
        })
    };
    let mut repos: Vec<String> = tags.iter().map(Reference::name).collect();
    repos.extend(refs().map(Reference::name));
    repos.sort();
    repos.dedup();
    let default_repo = refs().next().or_else(|| tags.first()).cloned();
    parsed
        .into_iter()
        .map(|(text, w)| match w {
            Written::Ref(r) => Ok((text, r)),
            Written::Digest(d) => match (&default_repo, repos.len()) {
                (Some(base), 1) => Ok((
                    text,
                    Reference {
                        tag: None,
                        digest: Some(d),
                        ..base.clone()
                    },
                )),
                (None, _) => bail!(
                    "no repository to find source {text:?} in: give a reference with it or a \
                     --tag"
                ),
                _ => bail!("multiple repositories specified, cannot infer repository for {text:?}"),
            },
        })
        .collect()
}

/// The entries of `platforms` (all when none is given), as buildx's `--platform`: an entry
/// without a platform stays, and an attestation stays with the image it is about.
fn keep_platforms(entries: Vec<Entry>, platforms: &[Platform]) -> Result<Vec<Entry>> {
    if platforms.is_empty() {
        return Ok(entries);
    }
    let wanted = |e: &Entry| {
        !is_attestation(&e.desc)
            && e.desc
                .platform
                .as_ref()
                .is_none_or(|p| platforms.iter().any(|w| w.matches(p)))
    };
    let kept: Vec<Digest> = entries
        .iter()
        .filter(|e| wanted(e))
        .map(|e| e.desc.digest)
        .collect();
    if kept.is_empty() {
        bail!("none of the manifests match the provided platforms");
    }
    let about_kept = |e: &Entry| {
        ["vnd.docker.reference.digest", "com.docker.reference.digest"]
            .iter()
            .filter_map(|k| e.desc.annotations.get(*k))
            .any(|d| kept.iter().any(|k| k.to_string() == *d))
    };
    Ok(entries
        .into_iter()
        .filter(|e| kept.contains(&e.desc.digest) || about_kept(e))
        .collect())
}

/// Adds an index entry, merging one seen already (same digest): its platform and annotations
/// are updated, as buildx merges them.
fn add_entry(entries: &mut Vec<Entry>, desc: Descriptor, from: &Reference) {
    if let Some(e) = entries.iter_mut().find(|e| e.desc.digest == desc.digest) {
        if desc.platform.is_some() {
            e.desc.platform = desc.platform;
        }
        e.desc.annotations.extend(desc.annotations);
        e.from = from.clone();
        return;
    }
    entries.push(Entry {
        desc,
        from: from.clone(),
    });
}

/// The new index's bytes and media type: a docker manifest list when every entry is a docker
/// manifest, else an OCI index; `index:` and `manifest-descriptor:` annotations applied.
fn new_index(
    entries: &mut [Entry],
    annotations: &[kiln_engine::Annotation],
) -> Result<(Vec<u8>, String)> {
    let docker = entries
        .iter()
        .all(|e| e.desc.media_type.starts_with("application/vnd.docker."));
    let media_type = if docker {
        MEDIA_TYPE_DOCKER_MANIFEST_LIST
    } else {
        MEDIA_TYPE_INDEX
    };
    let mut index_annotations = BTreeMap::new();
    for a in annotations {
        if docker {
            bail!(
                "--annotation {}: annotations need an OCI index, and every source is a docker \
                 manifest (which makes a docker manifest list)",
                a.key
            );
        }
        match a.kind {
            AnnotationKind::Index => {
                index_annotations.insert(a.key.clone(), a.value.clone());
            }
            AnnotationKind::ManifestDescriptor => {
                let want = a.platform.as_ref().map(Platform::normalize);
                for e in entries.iter_mut() {
                    let have = e.desc.platform.as_ref().map(Platform::normalize);
                    if want.is_none() || want == have {
                        e.desc.annotations.insert(a.key.clone(), a.value.clone());
                    }
                }
            }
            AnnotationKind::Manifest => bail!(
                "--annotation {}: imagetools create cannot annotate manifests (that would \
                 change the images): use index:KEY=VALUE or \
                 manifest-descriptor[PLATFORM]:KEY=VALUE",
                a.key
            ),
            AnnotationKind::IndexDescriptor => bail!(
                "--annotation {}: index-descriptor annotations are invalid while creating an \
                 image (there is no descriptor of the index to annotate)",
                a.key
            ),
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type.to_owned()),
        manifests: entries.iter().map(|e| e.desc.clone()).collect(),
        annotations: index_annotations,
    };
    let bytes = serde_json::to_vec_pretty(&index).context("encoding the index")?;
    Ok((bytes, media_type.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse_normalized(s).unwrap()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn templates() {
        assert!(matches!(parse_template(None).unwrap(), Template::Text));
        assert!(matches!(
            parse_template(Some("{{ json . }}")).unwrap(),
            Template::JsonAll
        ));
        assert!(matches!(
            parse_template(Some("{{json .Manifest}}")).unwrap(),
            Template::JsonManifest
        ));
        let err = parse_template(Some("{{.Foo}}")).err().unwrap().to_string();
        assert!(err.contains("{{json .Manifest}}"), "{err}");
    }

    #[test]
    fn bare_digests_take_the_one_repository() {
        let tags = [r("localhost:5000/app:1")];
        let got = resolve_sources(&["localhost:5000/app:amd64", D], &tags).unwrap();
        assert_eq!(got[1].1.to_string(), format!("localhost:5000/app@{D}"));
        let err = resolve_sources(&["localhost:5000/other:x", D], &tags)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot infer repository"), "{err}");
        assert!(resolve_sources(&["sha256:12"], &tags).is_err());
    }

    #[test]
    fn text_lists_every_platform() {
        let mut a = Descriptor::new(
            kiln_types::image::MEDIA_TYPE_MANIFEST,
            D.parse().unwrap(),
            10,
        );
        a.platform = Some("linux/arm64".parse().unwrap());
        let doc = Document::Index(Index {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
            manifests: vec![a],
            annotations: BTreeMap::new(),
        });
        let t = text(&r("localhost:5000/app"), D.parse().unwrap(), &doc);
        assert_eq!(
            t,
            format!(
                "Name:      localhost:5000/app:latest\n\
                 MediaType: application/vnd.oci.image.index.v1+json\n\
                 Digest:    {D}\n\
                 \n\
                 Manifests:\n  \
                 Name:      localhost:5000/app:latest@{D}\n  \
                 MediaType: application/vnd.oci.image.manifest.v1+json\n  \
                 Platform:  linux/arm64\n"
            )
        );
    }

    #[test]
    fn platforms_filter_entries_and_their_attestations() {
        let d = |c: char| D.replace('0', &c.to_string());
        let mut entries = Vec::new();
        for (p, digest) in [("linux/amd64", d('1')), ("linux/arm64/v8", d('2'))] {
            let mut desc = Descriptor::new(
                kiln_types::image::MEDIA_TYPE_MANIFEST,
                digest.parse().unwrap(),
                1,
            );
            desc.platform = Some(p.parse().unwrap());
            add_entry(&mut entries, desc, &r("localhost:5000/app"));
        }
        let mut att = Descriptor::new(
            kiln_types::image::MEDIA_TYPE_MANIFEST,
            d('3').parse().unwrap(),
            1,
        );
        att.platform = Some(Platform::new("unknown", "unknown", None));
        att.annotations
            .insert("vnd.docker.reference.digest".to_owned(), d('2'));
        add_entry(&mut entries, att, &r("localhost:5000/app"));
        let kept = keep_platforms(entries, &["linux/arm64".parse().unwrap()]).unwrap();
        let kept: Vec<String> = kept.iter().map(|e| e.desc.digest.to_string()).collect();
        assert_eq!(kept, [d('2'), d('3')]);
        let none = keep_platforms(Vec::new(), &["linux/s390x".parse().unwrap()]);
        assert!(none
            .err()
            .unwrap()
            .to_string()
            .contains("none of the manifests"));
    }

    #[test]
    fn annotations_go_on_the_index_and_matching_entries() {
        let mut entries = Vec::new();
        for (p, d) in [
            ("linux/amd64", D),
            ("linux/arm64", &D.replace('0', "1")[..]),
        ] {
            let mut desc = Descriptor::new(
                kiln_types::image::MEDIA_TYPE_MANIFEST,
                d.parse().unwrap(),
                1,
            );
            desc.platform = Some(p.parse().unwrap());
            add_entry(&mut entries, desc, &r("localhost:5000/app"));
        }
        let ann = [
            crate::output_spec::parse_annotation("index:org.example.a=1").unwrap(),
            crate::output_spec::parse_annotation("manifest-descriptor[linux/arm64]:b=2").unwrap(),
        ];
        let (bytes, mt) = new_index(&mut entries, &ann).unwrap();
        assert_eq!(mt, MEDIA_TYPE_INDEX);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["annotations"]["org.example.a"], "1");
        assert!(v["manifests"][0].get("annotations").is_none());
        assert_eq!(v["manifests"][1]["annotations"]["b"], "2");
        let manifest = [crate::output_spec::parse_annotation("c=3").unwrap()];
        let err = new_index(&mut entries, &manifest)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot annotate manifests"), "{err}");
    }
}
