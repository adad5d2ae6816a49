//! Engine types to and from the wire types of `kiln-api`. Parsing of flags stays in the CLI:
//! this maps typed values to typed values, and checks what a client sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_api::v1 as pb;
use kiln_engine::{
    Annotation, ArgState, Attestations, BuildRequest, CacheCompression, CacheExport, CacheImport,
    CacheLocation, CacheMode, Call, Cause, CompressionKind, Entitlement, ExecRuntime, Export,
    FileChange, HostEntry, ImageFormat, Miss, NetworkMode, RunOptions, SecretSource, SshSource,
    Status, StepLimits, Ulimit, UlimitResource,
};
use kiln_solver::Event;
use kiln_types::image::Descriptor;
use kiln_types::{Digest, Platform};

use crate::view::{FailureView, OutcomeView};

/// A wire value the daemon cannot accept: becomes an `invalid argument` status.
#[derive(Debug)]
pub struct Invalid(pub String);

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid(what.into())
}

fn platform(text: &str) -> Result<Platform, Invalid> {
    text.parse::<Platform>()
        .map_err(|e| invalid(format!("invalid platform {text:?}: {e}")))
}

fn digest(text: &str) -> Result<Digest, Invalid> {
    text.parse::<Digest>()
        .map_err(|e| invalid(format!("invalid digest {text:?}: {e}")))
}

// --- the request ---------------------------------------------------------------------------

/// The wire form of an image export's options.
fn format_to_wire(f: &ImageFormat) -> pb::ImageFormat {
    pb::ImageFormat {
        compression: match f.compression {
            CompressionKind::Gzip => pb::Compression::Gzip,
            CompressionKind::Uncompressed => pb::Compression::Uncompressed,
            CompressionKind::Zstd => pb::Compression::Zstd,
        } as i32,
        compression_level: f.compression_level,
        force_compression: f.force_compression,
        oci_media_types: f.oci_media_types,
        annotations: f
            .annotations
            .iter()
            .map(|a| pb::Annotation {
                kind: a.kind.name().to_owned(),
                platform: a.platform.as_ref().map(ToString::to_string),
                key: a.key.clone(),
                value: a.value.clone(),
            })
            .collect(),
        rewrite_timestamp: f.rewrite_timestamp,
    }
}

fn format_from_wire(f: Option<pb::ImageFormat>) -> Result<ImageFormat, Invalid> {
    let f = f.unwrap_or_default();
    Ok(ImageFormat {
        compression: match pb::Compression::try_from(f.compression) {
            Ok(pb::Compression::Gzip) => CompressionKind::Gzip,
            Ok(pb::Compression::Uncompressed) => CompressionKind::Uncompressed,
            Ok(pb::Compression::Zstd) => CompressionKind::Zstd,
            Err(_) => return Err(invalid(format!("unknown compression {}", f.compression))),
        },
        compression_level: f.compression_level,
        force_compression: f.force_compression,
        oci_media_types: f.oci_media_types,
        annotations: f
            .annotations
            .into_iter()
            .map(|a| {
                Ok(Annotation {
                    kind: a.kind.parse().map_err(invalid)?,
                    platform: a.platform.as_deref().map(platform).transpose()?,
                    key: a.key,
                    value: a.value,
                })
            })
            .collect::<Result<_, Invalid>>()?,
        rewrite_timestamp: f.rewrite_timestamp,
    })
}

/// The wire form of one export; the destination (a client path) stays with the client.
pub fn output_to_wire(e: &Export) -> Result<pb::Output, crate::Error> {
    use pb::output::Kind;
    let kind = match e {
        Export::Oci { tar, format, .. } => Kind::Oci(pb::ImageOutput {
            tar: *tar,
            format: Some(format_to_wire(format)),
        }),
        Export::Docker { format, .. } => Kind::Docker(pb::ImageOutput {
            tar: true,
            format: Some(format_to_wire(format)),
        }),
        Export::Tar { .. } => Kind::Tar(pb::Empty {}),
        Export::Local { .. } => Kind::Local(pb::Empty {}),
        Export::Registry {
            names,
            format,
            push_by_digest,
        } => Kind::Registry(pb::RegistryOutput {
            names: names.clone(),
            format: Some(format_to_wire(format)),
            push_by_digest: *push_by_digest,
        }),
        // The CLI turns `--load` into a `type=docker` tarball it receives and loads itself.
        Export::Load { .. } => {
            return Err(crate::Error::Unsupported(
                "--load reached the wire: the client receives a type=docker tarball and loads \
                 it (kiln_engine::load_docker_tarball)"
                    .to_owned(),
            ))
        }
    };
    Ok(pb::Output { kind: Some(kind) })
}

/// Everything of `req` except what travels otherwise (the Dockerfile's content, the local
/// contexts): the client's half of [`request_from_wire`]. `caches` names the local context
/// synced for each `type=local` cache directory (by the directory as given); one without is a
/// directory the client does not have.
/// The `InfoResponse.features` name of a daemon that applies `BuildRequest.memory`,
/// `cpu_quota` and `pids_limit`.
pub const STEP_LIMITS_FEATURE: &str = "step-limits";

/// The `InfoResponse.features` name of a daemon that applies `BuildRequest.attestations`.
pub const ATTESTATIONS_FEATURE: &str = "attestations";

/// What this daemon applies beyond the first release of the wire (`InfoResponse.features`).
pub fn features() -> Vec<String> {
    vec![
        STEP_LIMITS_FEATURE.to_owned(),
        ATTESTATIONS_FEATURE.to_owned(),
    ]
}

/// Whether a request with these limits and attestations needs to know the daemon's features.
pub fn needs_features(req: &BuildRequest, attest: &Attestations) -> bool {
    req.run_options.limits.any() || attest.any()
}

/// Refuses a request the daemon at `addr`, which applies `features`, would run with less than
/// asked: a daemon that predates a field drops it without a word, so limits sent to one would
/// leave the steps unlimited, and attestations sent to one would be missing from the image
/// (a push's default provenance included: buildx's default, decided here).
pub fn check_features(
    req: &BuildRequest,
    attest: &Attestations,
    features: &[String],
    addr: &str,
) -> Result<(), crate::Error> {
    if req.run_options.limits.any() && !features.iter().any(|f| f == STEP_LIMITS_FEATURE) {
        return Err(crate::Error::Unsupported(format!(
            "the kiln server at {addr} does not apply --memory, --cpu-quota or --pids-limit \
             (an older kiln): upgrade it, or build without the limits"
        )));
    }
    if attest.any() && !features.iter().any(|f| f == ATTESTATIONS_FEATURE) {
        let why = if attest.provenance.as_ref().is_some_and(|p| p.inline_only) && !attest.sbom {
            "a push gets provenance by default, as with buildx: upgrade it, or turn the default \
             off with --provenance=false or BUILDX_NO_DEFAULT_ATTESTATIONS=1"
        } else {
            "upgrade it, or build without --provenance, --sbom and --attest"
        };
        return Err(crate::Error::Unsupported(format!(
            "the kiln server at {addr} does not make attestations (an older kiln): {why}"
        )));
    }
    Ok(())
}

/// The attestations of a build, for the wire (`None` when there are none).
pub fn attestations_to_wire(a: &Attestations) -> Option<pb::Attestations> {
    if !a.any() {
        return None;
    }
    Some(pb::Attestations {
        provenance: a.provenance.as_ref().map(|p| pb::Provenance {
            mode_max: p.mode == kiln_attest::Mode::Max,
            version: match p.version {
                kiln_attest::SlsaVersion::V1 => "v1",
                kiln_attest::SlsaVersion::V02 => "v0.2",
            }
            .to_owned(),
            builder_id: p.builder_id.clone(),
            reproducible: p.reproducible,
            inline_only: p.inline_only,
            filename: p.filename.clone(),
        }),
        sbom: a.sbom,
    })
}

/// The attestations a client asked for: the daemon's half of [`attestations_to_wire`].
pub fn attestations_from_wire(w: Option<pb::Attestations>) -> Result<Attestations, Invalid> {
    let Some(w) = w else {
        return Ok(Attestations::default());
    };
    let provenance = match w.provenance {
        None => None,
        Some(p) => Some(kiln_attest::ProvenanceOptions {
            mode: if p.mode_max {
                kiln_attest::Mode::Max
            } else {
                kiln_attest::Mode::Min
            },
            version: match p.version.as_str() {
                "v1" | "" => kiln_attest::SlsaVersion::V1,
                "v0.2" => kiln_attest::SlsaVersion::V02,
                other => {
                    return Err(invalid(format!(
                        "provenance version {other:?}: expected v1 or v0.2"
                    )))
                }
            },
            builder_id: p.builder_id,
            reproducible: p.reproducible,
            inline_only: p.inline_only,
            filename: match p.filename {
                // A name beside the result's files, never a path out of the output.
                Some(f) if f.is_empty() || f.contains('/') || f == "." || f == ".." => {
                    return Err(invalid(format!(
                        "provenance filename {f:?}: not a file name"
                    )))
                }
                f => f,
            },
        }),
    };
    Ok(Attestations {
        provenance,
        sbom: w.sbom,
    })
}

pub fn request_to_wire(
    req: &BuildRequest,
    dockerfile: Vec<u8>,
    dockerfile_name: String,
    local_contexts: Vec<pb::LocalContext>,
    remote_contexts: BTreeMap<String, String>,
    caches: &BTreeMap<PathBuf, String>,
) -> Result<pb::BuildRequest, crate::Error> {
    for (id, source) in &req.ssh {
        if let SshSource::Keys(_) = source {
            // The CLI serves key files through an agent of its own (kiln_engine::serve_ssh_keys)
            // before it gets here: key files themselves never travel.
            return Err(crate::Error::Unsupported(format!(
                "--ssh {id}=KEYFILE reached the wire: key files are served by an agent of the \
                 client (kiln_engine::serve_ssh_keys), never sent"
            )));
        }
    }
    Ok(pb::BuildRequest {
        dockerfile,
        dockerfile_name,
        local_contexts,
        build_contexts: remote_contexts.into_iter().collect(),
        frontend: req.frontend.clone(),
        build_args: req.build_args.clone().into_iter().collect(),
        target: req.target.clone(),
        no_cache: req.no_cache,
        platform: req.platform.to_string(),
        platforms: req.platforms.iter().map(ToString::to_string).collect(),
        outputs: req
            .exports
            .iter()
            .map(output_to_wire)
            .collect::<Result<_, _>>()?,
        tags: req.tags.clone(),
        runtime: match req.runtime {
            ExecRuntime::Embedded => pb::Runtime::Embedded,
            ExecRuntime::Runc => pb::Runtime::Runc,
        } as i32,
        network: match req.network {
            NetworkMode::Default => pb::Network::Default,
            NetworkMode::None => pb::Network::None,
            NetworkMode::Host => pb::Network::Host,
        } as i32,
        allow: req.allow.iter().map(|a| a.name().to_owned()).collect(),
        add_hosts: req
            .run_options
            .extra_hosts
            .iter()
            .map(|h| pb::HostEntry {
                host: h.host.clone(),
                ip: h.ip.clone(),
            })
            .collect(),
        shm_size: req.run_options.shm_size,
        memory: req.run_options.limits.memory,
        cpu_quota: req.run_options.limits.cpu_quota,
        pids_limit: req.run_options.limits.pids,
        // Set by the client (`Client::with_attestations`): not part of the engine's request.
        attestations: None,
        ulimits: req
            .run_options
            .ulimits
            .iter()
            .map(|u| pb::Ulimit {
                name: u.resource.name().to_owned(),
                soft: u.soft,
                hard: u.hard,
            })
            .collect(),
        no_cache_filter: req.no_cache_filter.clone(),
        labels: req.labels.clone().into_iter().collect(),
        call: req.call.map(|c| c.name().to_owned()).unwrap_or_default(),
        secrets: req.secrets.keys().cloned().collect(),
        ssh: req.ssh.keys().cloned().collect(),
        // Set by the client when the main context is a URL.
        context_url: None,
        context_file: None,
        explain_cache: req.explain_cache,
        // Set by the client when the build file lies in the main local context.
        context_dockerfile: None,
        // Set by the client when the Dockerfile has its own ignore file.
        dockerfile_ignore: None,
        // Set by the client (`Client::with_plugins`): not part of the engine's request.
        plugins: Vec::new(),
        allow_plugins: Vec::new(),
        cache_to: req
            .cache_to
            .iter()
            .map(|c| {
                Ok(pb::CacheExport {
                    location: Some(cache_location_to_wire(&c.location, caches)),
                    mode_max: c.mode == CacheMode::Max,
                    compression: match c.compression {
                        CacheCompression::Gzip => pb::Compression::Gzip,
                        CacheCompression::Uncompressed => pb::Compression::Uncompressed,
                        CacheCompression::Zstd => pb::Compression::Zstd,
                    } as i32,
                    force_compression: c.force_compression,
                    oci_mediatypes: c.oci_mediatypes,
                    image_manifest: c.image_manifest,
                    ignore_error: c.ignore_error,
                    cache_mounts: c.cache_mounts,
                })
            })
            .collect::<Result<_, crate::Error>>()?,
        cache_from: req
            .cache_from
            .iter()
            .map(|c| {
                Ok(pb::CacheImport {
                    location: Some(cache_location_to_wire(&c.location, caches)),
                })
            })
            .collect::<Result<_, crate::Error>>()?,
    })
}

/// The wire form of a cache: a registry or inline one the daemon reaches itself; a local
/// directory is the client's, named by the local context `caches` says syncs it.
fn cache_location_to_wire(
    l: &CacheLocation,
    caches: &BTreeMap<PathBuf, String>,
) -> pb::CacheLocation {
    use pb::cache_location::Kind;
    let kind = match l {
        CacheLocation::Registry { reference } => Kind::Registry(reference.to_string()),
        CacheLocation::Inline => Kind::Inline(pb::Empty {}),
        CacheLocation::Local { dir, tag } => Kind::Local(pb::LocalCache {
            context: caches.get(dir).cloned().unwrap_or_default(),
            tag: tag.clone(),
            client_path: dir.display().to_string(),
        }),
    };
    pb::CacheLocation { kind: Some(kind) }
}

/// The cache `l` stands for; a local one is at `place` on the daemon (see
/// [`Placed::cache_to`]).
fn cache_location_from_wire(
    l: Option<pb::CacheLocation>,
    place: Option<&PathBuf>,
) -> Result<CacheLocation, Invalid> {
    use pb::cache_location::Kind;
    match l.and_then(|l| l.kind) {
        Some(Kind::Registry(r)) => Ok(CacheLocation::Registry {
            reference: r
                .parse()
                .map_err(|e| invalid(format!("invalid cache reference {r:?}: {e}")))?,
        }),
        Some(Kind::Inline(_)) => Ok(CacheLocation::Inline),
        Some(Kind::Local(local)) => Ok(CacheLocation::Local {
            dir: place
                .cloned()
                .ok_or_else(|| invalid("a type=local cache with no place on the daemon"))?,
            tag: local.tag,
        }),
        None => Err(invalid("a cache without a location")),
    }
}

/// Where the daemon puts what the client sent.
pub struct Placed {
    /// The Dockerfile written from the request's content.
    pub dockerfile: PathBuf,
    /// The mirror of each local context, by name ("" is the main one), and for an OCI
    /// layout the image picked in it.
    pub contexts: BTreeMap<String, (PathBuf, Option<pb::OciLayout>)>,
    /// Where each output that goes back to the client is made (None: the daemon's own, a push).
    pub outputs: Vec<Option<PathBuf>>,
    /// Where each `type=local` `--cache-to` is written (a session copy of its mirror), by
    /// index; None for the other kinds.
    pub cache_to: Vec<Option<PathBuf>>,
    /// Where each `type=local` `--cache-from` is read (its mirror; a path that does not exist
    /// when the client has no such directory), by index.
    pub cache_from: Vec<Option<PathBuf>>,
}

/// The engine request for a wire request whose files were placed at `placed`.
pub fn request_from_wire(
    w: pb::BuildRequest,
    placed: &Placed,
    secrets: &kiln_engine::ProvidedSecret,
    ssh: &BTreeMap<String, PathBuf>,
) -> Result<BuildRequest, Invalid> {
    let context = match (placed.contexts.get(""), &w.context_url) {
        (Some((dir, None)), None) => dir.clone(),
        // Fetched by the daemon before the build, which then names its directory.
        (None, Some(_)) => PathBuf::new(),
        _ => {
            return Err(invalid(
                "the request needs one main context: a local directory named \"\" or a \
                 context_url",
            ))
        }
    };
    let mut build_contexts: BTreeMap<String, String> = w.build_contexts.into_iter().collect();
    for (name, (dir, layout)) in &placed.contexts {
        if name.is_empty() {
            continue;
        }
        let value = match layout {
            None => dir.display().to_string(),
            Some(l) => kiln_types::reference::LayoutRef {
                dir: dir.clone(),
                tag: l.tag.clone(),
                digest: l.digest.as_deref().map(digest).transpose()?,
            }
            .to_string(),
        };
        build_contexts.insert(name.clone(), value);
    }
    let mut exports = Vec::new();
    for (i, o) in w.outputs.into_iter().enumerate() {
        use pb::output::Kind;
        let dest = || {
            placed
                .outputs
                .get(i)
                .cloned()
                .flatten()
                .ok_or_else(|| invalid(format!("output {i} has no place")))
        };
        exports.push(match o.kind {
            Some(Kind::Oci(img)) => Export::Oci {
                dest: dest()?,
                tar: img.tar,
                format: format_from_wire(img.format)?,
            },
            Some(Kind::Docker(img)) => Export::Docker {
                dest: dest()?,
                format: format_from_wire(img.format)?,
            },
            Some(Kind::Tar(_)) => Export::Tar {
                dest: kiln_engine::TarDest::File(dest()?),
            },
            Some(Kind::Local(_)) => Export::Local { dest: dest()? },
            Some(Kind::Registry(r)) => Export::Registry {
                names: r.names,
                format: format_from_wire(r.format)?,
                push_by_digest: r.push_by_digest,
            },
            None => return Err(invalid(format!("output {i} has no kind"))),
        });
    }
    Ok(BuildRequest {
        context,
        dockerfile: placed.dockerfile.clone(),
        frontend: w.frontend,
        build_args: w.build_args.into_iter().collect(),
        target: w.target,
        no_cache: w.no_cache,
        platform: platform(&w.platform)?,
        platforms: w
            .platforms
            .iter()
            .map(|p| platform(p))
            .collect::<Result<_, _>>()?,
        exports,
        tags: w.tags,
        secrets: w
            .secrets
            .iter()
            .map(|id| (id.clone(), SecretSource::Provider(secrets.clone())))
            .collect(),
        runtime: match pb::Runtime::try_from(w.runtime) {
            Ok(pb::Runtime::Runc) => ExecRuntime::Runc,
            _ => ExecRuntime::Embedded,
        },
        build_contexts,
        ssh: ssh
            .iter()
            .map(|(id, sock)| (id.clone(), SshSource::Agent(sock.clone())))
            .collect(),
        network: match pb::Network::try_from(w.network) {
            Ok(pb::Network::None) => NetworkMode::None,
            Ok(pb::Network::Host) => NetworkMode::Host,
            _ => NetworkMode::Default,
        },
        allow: w
            .allow
            .iter()
            .map(|a| a.parse::<Entitlement>().map_err(invalid))
            .collect::<Result<_, _>>()?,
        run_options: RunOptions {
            extra_hosts: w
                .add_hosts
                .into_iter()
                .map(|h| HostEntry {
                    host: h.host,
                    ip: h.ip,
                })
                .collect(),
            shm_size: w.shm_size,
            ulimits: w
                .ulimits
                .iter()
                .map(|u| {
                    Ok(Ulimit {
                        resource: UlimitResource::from_name(&u.name)
                            .ok_or_else(|| invalid(format!("unknown ulimit {:?}", u.name)))?,
                        soft: u.soft,
                        hard: u.hard,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            limits: StepLimits {
                memory: w.memory,
                cpu_quota: w.cpu_quota,
                pids: w.pids_limit,
            },
        },
        no_cache_filter: w.no_cache_filter,
        labels: w.labels.into_iter().collect(),
        call: match w.call.as_str() {
            "" => None,
            "targets" => Some(Call::Targets),
            "outline" => Some(Call::Outline),
            "check" => Some(Call::Check),
            other => return Err(invalid(format!("unknown call {other:?}"))),
        },
        explain_cache: w.explain_cache,
        cache_to: w
            .cache_to
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(CacheExport {
                    location: cache_location_from_wire(
                        c.location,
                        placed.cache_to.get(i).and_then(Option::as_ref),
                    )?,
                    mode: if c.mode_max {
                        CacheMode::Max
                    } else {
                        CacheMode::Min
                    },
                    compression: match pb::Compression::try_from(c.compression) {
                        Ok(pb::Compression::Uncompressed) => CacheCompression::Uncompressed,
                        Ok(pb::Compression::Zstd) => CacheCompression::Zstd,
                        _ => CacheCompression::Gzip,
                    },
                    force_compression: c.force_compression,
                    oci_mediatypes: c.oci_mediatypes,
                    image_manifest: c.image_manifest,
                    ignore_error: c.ignore_error,
                    cache_mounts: c.cache_mounts,
                })
            })
            .collect::<Result<_, Invalid>>()?,
        cache_from: w
            .cache_from
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                Ok(CacheImport {
                    location: cache_location_from_wire(
                        c.location,
                        placed.cache_from.get(i).and_then(Option::as_ref),
                    )?,
                })
            })
            .collect::<Result<_, Invalid>>()?,
    })
}

// --- progress ------------------------------------------------------------------------------

/// The wire form of a progress event.
pub fn event_to_wire(e: Event<Digest>) -> pb::ProgressEvent {
    let (kind, id, name, duration, text) = match e {
        Event::Started { id, name } => (pb::EventKind::Started, id, name, None, String::new()),
        Event::Cached { id, name } => (pb::EventKind::Cached, id, name, None, String::new()),
        Event::Done { id, name, duration } => {
            (pb::EventKind::Done, id, name, Some(duration), String::new())
        }
        Event::Error { id, name, message } => (pb::EventKind::Error, id, name, None, message),
        Event::Cancelled { id, name } => (pb::EventKind::Cancelled, id, name, None, String::new()),
        Event::Log { id, name, line } => (pb::EventKind::Log, id, name, None, line),
    };
    pb::ProgressEvent {
        kind: kind as i32,
        id: id.to_string(),
        name,
        duration_ns: duration.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        text,
    }
}

/// The event a wire progress event stands for.
pub fn event_from_wire(p: pb::ProgressEvent) -> Result<Event<Digest>, Invalid> {
    let id = digest(&p.id)?;
    let name = p.name;
    Ok(match pb::EventKind::try_from(p.kind) {
        Ok(pb::EventKind::Started) => Event::Started { id, name },
        Ok(pb::EventKind::Cached) => Event::Cached { id, name },
        Ok(pb::EventKind::Done) => Event::Done {
            id,
            name,
            duration: Duration::from_nanos(p.duration_ns),
        },
        Ok(pb::EventKind::Error) => Event::Error {
            id,
            name,
            message: p.text,
        },
        Ok(pb::EventKind::Cancelled) => Event::Cancelled { id, name },
        Ok(pb::EventKind::Log) => Event::Log {
            id,
            name,
            line: p.text,
        },
        Err(_) => return Err(invalid(format!("unknown event kind {}", p.kind))),
    })
}

// --- the result ----------------------------------------------------------------------------

fn descriptor_to_wire(d: &Descriptor) -> pb::Descriptor {
    pb::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size,
        annotations: d.annotations.clone().into_iter().collect(),
        platform: d.platform.as_ref().map(ToString::to_string),
    }
}

fn descriptor_from_wire(d: pb::Descriptor) -> Result<Descriptor, Invalid> {
    Ok(Descriptor {
        media_type: d.media_type,
        digest: digest(&d.digest)?,
        size: d.size,
        annotations: d.annotations.into_iter().collect(),
        platform: d.platform.as_deref().map(platform).transpose()?,
    })
}

/// The wire form of a successful build.
pub fn outcome_to_wire(o: &OutcomeView) -> pb::BuildResult {
    pb::BuildResult {
        manifest: o.image.as_ref().map(|(m, _)| descriptor_to_wire(m)),
        config_digest: o.image.as_ref().map(|(_, c)| c.to_string()),
        index: o.index.as_ref().map(descriptor_to_wire),
        steps: o
            .steps
            .iter()
            .map(|(name, s)| match s {
                Status::Cached => pb::Step {
                    name: name.clone(),
                    cached: true,
                    duration_ns: 0,
                },
                Status::Executed { duration } => pb::Step {
                    name: name.clone(),
                    cached: false,
                    duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
                },
            })
            .collect(),
        warnings: o
            .warnings
            .iter()
            .map(|(message, location)| pb::Warning {
                message: message.clone(),
                location: location.clone(),
            })
            .collect(),
        frontend: o.frontend.clone(),
        call_result: o.call_result.clone(),
        explain: o.explain.iter().map(miss_to_wire).collect(),
        dockerfile_name: o.dockerfile.as_ref().map(|(name, _)| name.clone()),
        dockerfile: o.dockerfile.as_ref().map(|(_, text)| text.clone()),
    }
}

/// The wire form of one `--explain-cache` explanation.
fn miss_to_wire(m: &Miss) -> pb::CacheMiss {
    let arg = |a: &ArgState| match a {
        ArgState::Value(v) => format!("={v}"),
        ArgState::Default => "default".to_owned(),
        ArgState::Unset => "unset".to_owned(),
        ArgState::Long => "long".to_owned(),
    };
    let mut w = pb::CacheMiss {
        vertex: m.vertex.to_string(),
        name: m.name.clone(),
        ..Default::default()
    };
    w.cause = match &m.cause {
        Cause::NoEarlierBuild => "no-earlier-build",
        Cause::NewStep => "new-step",
        Cause::Instruction { old, new } => {
            (w.old, w.new) = (old.clone(), new.clone());
            "instruction"
        }
        Cause::Options => "options",
        Cause::BaseImage { old, new } => {
            (w.old, w.new) = (old.clone(), new.clone());
            "base-image"
        }
        Cause::BuildArg { name, old, new } => {
            (w.subject, w.old, w.new) = (name.clone(), arg(old), arg(new));
            "build-arg"
        }
        Cause::Env { name } => {
            w.subject = name.clone();
            "env"
        }
        Cause::File { path, change, more } => {
            w.subject = path.clone();
            w.change = match change {
                FileChange::Changed => "changed",
                FileChange::Added => "added",
                FileChange::Removed => "removed",
            }
            .to_owned();
            w.more = *more as u64;
            "file"
        }
        Cause::Files => "files",
        Cause::Input { vertex, name } => {
            (w.input, w.subject) = (vertex.to_string(), name.clone());
            "input"
        }
        Cause::NoCache => "no-cache",
        Cause::NotCached => "not-cached",
        // A cause this side does not name: rendered as the generic one.
        _ => "other",
    }
    .to_owned();
    w
}

/// The explanation a wire `CacheMiss` stands for.
fn miss_from_wire(w: pb::CacheMiss) -> Result<Miss, Invalid> {
    let arg = |a: &str| match a {
        "default" => ArgState::Default,
        "unset" => ArgState::Unset,
        "long" => ArgState::Long,
        v => ArgState::Value(v.strip_prefix('=').unwrap_or(v).to_owned()),
    };
    let cause = match w.cause.as_str() {
        "no-earlier-build" => Cause::NoEarlierBuild,
        "new-step" => Cause::NewStep,
        "instruction" => Cause::Instruction {
            old: w.old,
            new: w.new,
        },
        "options" => Cause::Options,
        "base-image" => Cause::BaseImage {
            old: w.old,
            new: w.new,
        },
        "build-arg" => Cause::BuildArg {
            old: arg(&w.old),
            new: arg(&w.new),
            name: w.subject,
        },
        "env" => Cause::Env { name: w.subject },
        "file" => Cause::File {
            path: w.subject,
            change: match w.change.as_str() {
                "added" => FileChange::Added,
                "removed" => FileChange::Removed,
                _ => FileChange::Changed,
            },
            more: usize::try_from(w.more).unwrap_or(usize::MAX),
        },
        "files" => Cause::Files,
        "input" => Cause::Input {
            vertex: digest(&w.input)?,
            name: w.subject,
        },
        "no-cache" => Cause::NoCache,
        "not-cached" => Cause::NotCached,
        _ => Cause::Other,
    };
    Ok(Miss {
        vertex: digest(&w.vertex)?,
        name: w.name,
        cause,
    })
}

/// The outcome a wire result stands for.
pub fn outcome_from_wire(r: pb::BuildResult) -> Result<OutcomeView, Invalid> {
    let image = match (r.manifest, r.config_digest) {
        (Some(m), Some(c)) => Some((descriptor_from_wire(m)?, digest(&c)?)),
        _ => None,
    };
    Ok(OutcomeView {
        image,
        index: r.index.map(descriptor_from_wire).transpose()?,
        steps: r
            .steps
            .into_iter()
            .map(|s| {
                let status = if s.cached {
                    Status::Cached
                } else {
                    Status::Executed {
                        duration: Duration::from_nanos(s.duration_ns),
                    }
                };
                (s.name, status)
            })
            .collect(),
        warnings: r
            .warnings
            .into_iter()
            .map(|w| (w.message, w.location))
            .collect(),
        frontend: r.frontend,
        call_result: r.call_result,
        explain: r
            .explain
            .into_iter()
            .map(miss_from_wire)
            .collect::<Result<_, _>>()?,
        dockerfile: r
            .dockerfile
            .map(|text| (r.dockerfile_name.unwrap_or_default(), text)),
    })
}

/// The wire form of a failure.
pub fn failure_to_wire(f: &FailureView) -> pb::BuildFailure {
    pb::BuildFailure {
        message: f.message.clone(),
        step_id: f.step.as_ref().map(|(id, _)| id.to_string()),
        step_name: f.step.as_ref().map(|(_, name)| name.clone()),
        step_line: f.step_line,
        frontend_line: f.frontend_line,
        dockerfile_name: f.dockerfile.as_ref().map(|(name, _)| name.clone()),
        dockerfile: f.dockerfile.as_ref().map(|(_, text)| text.clone()),
        location_file: f.location_file.clone(),
    }
}

/// The failure a wire failure stands for.
pub fn failure_from_wire(f: pb::BuildFailure) -> Result<FailureView, Invalid> {
    let step = match (f.step_id, f.step_name) {
        (Some(id), Some(name)) => Some((digest(&id)?, name)),
        _ => None,
    };
    Ok(FailureView {
        message: f.message,
        step,
        step_line: f.step_line,
        frontend_line: f.frontend_line,
        dockerfile: f
            .dockerfile
            .map(|text| (f.dockerfile_name.unwrap_or_default(), text)),
        location_file: f.location_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request with every field at its plain value.
    fn sample_request() -> BuildRequest {
        BuildRequest {
            context: "/ctx".into(),
            dockerfile: "/ctx/Dockerfile".into(),
            frontend: None,
            build_args: BTreeMap::new(),
            target: None,
            no_cache: false,
            platform: platform("linux/amd64").unwrap(),
            platforms: Vec::new(),
            exports: Vec::new(),
            tags: Vec::new(),
            secrets: BTreeMap::new(),
            build_contexts: BTreeMap::new(),
            runtime: ExecRuntime::Embedded,
            ssh: BTreeMap::new(),
            network: NetworkMode::Default,
            allow: Default::default(),
            run_options: Default::default(),
            no_cache_filter: Vec::new(),
            labels: BTreeMap::new(),
            call: None,
            cache_to: Vec::new(),
            cache_from: Vec::new(),
            explain_cache: false,
        }
    }

    #[test]
    fn step_limits_travel_only_to_a_daemon_that_applies_them() {
        let mut req = sample_request();
        let send = |req: &BuildRequest| {
            request_to_wire(
                req,
                b"FROM scratch\n".to_vec(),
                "Dockerfile".into(),
                Vec::new(),
                BTreeMap::new(),
                &BTreeMap::new(),
            )
        };
        let none = Attestations::default();
        assert!(check_features(&req, &none, &[], "tcp://old:1234").is_ok());
        req.run_options.limits = StepLimits {
            memory: Some(32 << 20),
            cpu_quota: Some(50_000),
            pids: Some(16),
        };
        let err = check_features(&req, &none, &[], "tcp://old:1234")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--pids-limit") && err.contains("tcp://old:1234"),
            "{err}"
        );
        assert!(check_features(&req, &none, &features(), "tcp://new:1234").is_ok());
        // The limits are on the wire (tests/e2e/tests/limits.rs sees a daemon apply them).
        let w = send(&req).unwrap();
        assert_eq!(
            (w.memory, w.cpu_quota, w.pids_limit),
            (Some(32 << 20), Some(50_000), Some(16))
        );
    }

    #[test]
    fn attestations_travel_whole_and_only_to_a_daemon_that_makes_them() {
        let req = sample_request();
        let asked = Attestations {
            provenance: Some(kiln_attest::ProvenanceOptions {
                mode: kiln_attest::Mode::Max,
                version: kiln_attest::SlsaVersion::V02,
                builder_id: Some("https://b.test/x".into()),
                reproducible: true,
                inline_only: false,
                filename: Some("prov.json".into()),
            }),
            sbom: true,
        };
        let back = attestations_from_wire(attestations_to_wire(&asked)).unwrap();
        assert_eq!(back, asked);
        // buildx's default provenance of a push (mode=min, inline-only) travels as it is.
        let default = kiln_attest::Flags::default().request(true);
        let back = attestations_from_wire(attestations_to_wire(&default)).unwrap();
        assert_eq!(back, default);
        assert!(attestations_to_wire(&Attestations::default()).is_none());
        assert_eq!(
            attestations_from_wire(None).unwrap(),
            Attestations::default()
        );

        // An old daemon (no "attestations" feature) would drop them: refused, saying how.
        assert!(needs_features(&req, &asked));
        assert!(!needs_features(&req, &Attestations::default()));
        let err = check_features(&req, &asked, &["step-limits".into()], "tcp://old:1")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not make attestations") && err.contains("--provenance"),
            "{err}"
        );
        let err = check_features(&req, &default, &[], "tcp://old:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("BUILDX_NO_DEFAULT_ATTESTATIONS=1"), "{err}");
        assert!(check_features(&req, &asked, &features(), "tcp://new:1").is_ok());

        // A file name that would leave the output is refused by the daemon.
        let mut w = attestations_to_wire(&asked).unwrap();
        w.provenance.as_mut().unwrap().filename = Some("../../etc/x".into());
        assert!(attestations_from_wire(Some(w)).is_err());
    }

    #[test]
    fn every_explain_cache_cause_survives_the_wire() {
        let arg = |v: &str| ArgState::Value(v.to_owned());
        for cause in [
            Cause::NoEarlierBuild,
            Cause::NewStep,
            Cause::Instruction {
                old: "RUN a".into(),
                new: "RUN b".into(),
            },
            Cause::Options,
            Cause::BaseImage {
                old: "sha256:1".into(),
                new: "sha256:2".into(),
            },
            Cause::BuildArg {
                name: "V".into(),
                old: arg("=1"),
                new: ArgState::Default,
            },
            Cause::BuildArg {
                name: "V".into(),
                old: ArgState::Unset,
                new: ArgState::Long,
            },
            Cause::Env {
                name: "PATH".into(),
            },
            Cause::File {
                path: "src/a.rs".into(),
                change: FileChange::Removed,
                more: 3,
            },
            Cause::File {
                path: "b".into(),
                change: FileChange::Added,
                more: 0,
            },
            Cause::Files,
            Cause::Input {
                vertex: Digest::of(b"input"),
                name: "[1/2] COPY".into(),
            },
            Cause::NoCache,
            Cause::NotCached,
            Cause::Other,
        ] {
            let miss = Miss {
                vertex: Digest::of(b"step"),
                name: "[2/2] RUN x".into(),
                cause,
            };
            assert_eq!(miss_from_wire(miss_to_wire(&miss)).unwrap(), miss);
        }
    }

    #[test]
    fn the_build_file_is_taken_from_the_mirror_only_as_a_plain_file_with_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/Dockerfile"), "FROM x\n").unwrap();
        std::os::unix::fs::symlink("sub", tree.join("link")).unwrap();
        let ok = crate::server::in_mirror(&tree, "sub/Dockerfile", b"FROM x\n");
        assert_eq!(ok, Some(tree.join("sub/Dockerfile")));
        for (rel, content) in [
            ("sub/Dockerfile", &b"FROM y\n"[..]),
            ("link/Dockerfile", b"FROM x\n"),
            ("sub/../sub/Dockerfile", b"FROM x\n"),
            ("sub", b""),
            ("", b""),
        ] {
            assert_eq!(crate::server::in_mirror(&tree, rel, content), None, "{rel}");
        }
    }

    #[test]
    fn events_survive_the_wire() {
        let id = Digest::of(b"step");
        for e in [
            Event::Started {
                id,
                name: "[1/2] RUN x".to_owned(),
            },
            Event::Done {
                id,
                name: "n".to_owned(),
                duration: Duration::from_millis(1234),
            },
            Event::Log {
                id,
                name: "n".to_owned(),
                line: "hello".to_owned(),
            },
            Event::Error {
                id,
                name: "n".to_owned(),
                message: "exit 1".to_owned(),
            },
        ] {
            let back = event_from_wire(event_to_wire(e.clone())).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
    }

    #[test]
    fn failures_and_outcomes_survive_the_wire() {
        let f = FailureView {
            message: "process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
                .to_owned(),
            step: Some((Digest::of(b"x"), "[2/2] RUN false".to_owned())),
            step_line: Some(3),
            frontend_line: None,
            dockerfile: Some(("Dockerfile".to_owned(), b"FROM bb\n".to_vec())),
            location_file: Some("parts/base.Dockerfile".to_owned()),
        };
        assert_eq!(failure_from_wire(failure_to_wire(&f)).unwrap(), f);
        let o = OutcomeView {
            image: Some((
                Descriptor::new(
                    "application/vnd.oci.image.manifest.v1+json",
                    Digest::of(b"m"),
                    7,
                ),
                Digest::of(b"c"),
            )),
            steps: vec![
                ("a".to_owned(), Status::Cached),
                (
                    "b".to_owned(),
                    Status::Executed {
                        duration: Duration::from_secs(2),
                    },
                ),
            ],
            warnings: vec![("w".to_owned(), Some("Dockerfile:1".to_owned()))],
            frontend: "dockerfile".to_owned(),
            ..OutcomeView::default()
        };
        let back = outcome_from_wire(outcome_to_wire(&o)).unwrap();
        assert_eq!(back.image, o.image);
        assert_eq!(back.steps, o.steps);
        assert_eq!(back.warnings, o.warnings);
        assert_eq!(back.executed(), 1);
    }
}
