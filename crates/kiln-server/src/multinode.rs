//! Builds spread over the nodes of a builder (buildx's multi-node builders): each platform of
//! `--platform a,b` goes to a node that builds it ([`assign`]), the nodes build at once, each
//! a remote build of its platforms with the same flags, and the client assembles one image
//! index from their images and writes or pushes it as a build on one machine would.
//!
//! - A push: each node pushes its manifest and blobs by digest (`push-by-digest`, no tag, so
//!   the tag never names one platform's image); the client then puts the index under each tag.
//!   The registry is the shared ground: no layer passes through the client.
//! - `type=oci` (tarball or directory): each node sends its OCI layout tarball and the client
//!   merges them ([`layout`]).
//! - `type=local` / `type=tar`: one directory per platform (`linux_amd64/`...), as one machine
//!   writes them.
//!
//! The first node to fail cancels the others; the failure is reported as a local one, its
//! step named with its platform. Progress of every node goes to one display, each node's
//! steps named with its platform as buildx names them (`[linux/arm64 2/3] RUN ...`).

mod assign;
mod layout;

use std::sync::Arc;

use kiln_engine::{BuildRequest, CacheLocation, Export, TarDest};
use kiln_solver::{CancellationToken, Event, ProgressSink, Status};
use kiln_types::image::Descriptor;
use kiln_types::reference::Reference;
use kiln_types::{Digest, Platform};

pub use assign::{assign, Offer, Share};

use crate::client::{Client, ClientTls, PluginFlags, RemoteResult};
use crate::view::{FailureView, OutcomeView};
use crate::{Address, Error};

/// BuildKit's refusal of a docker-archive of several platforms (the engine's, for one machine).
const DOCKER_MULTI_PLATFORM: &str =
    "docker exporter does not currently support exporting manifest lists";

/// One node of the builder, connected.
pub struct Node {
    /// Its name in the builder.
    pub name: String,
    /// The platforms it is declared to build (empty: ask the daemon).
    pub declared: Vec<Platform>,
    /// Where its daemon listens.
    pub addr: Address,
    /// Its TLS files, for a tcp daemon with mutual TLS.
    pub tls: Option<ClientTls>,
    /// The build's `--plugin` / `--allow-plugin`: each node's daemon pulls the plugins for
    /// its own platform, into its own store.
    pub plugins: PluginFlags,
    /// The build's attestations: each node attests the images of its platforms, and the
    /// client's index lists each image's attestation manifest after the images, as one
    /// machine's does.
    pub attest: kiln_engine::Attestations,
}

/// A node and, once needed, its connection: as buildx boots only the nodes a build uses when
/// the declared platforms suffice, a node no platform goes to is never dialled (it may be
/// down without failing the build).
struct Dialled {
    node: Node,
    client: Option<Client>,
}

impl Dialled {
    async fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.is_none() {
            let tls = self.node.tls.as_ref();
            self.client = Some(
                Client::connect_with(&self.node.addr, tls)
                    .await?
                    .with_plugins(self.node.plugins.clone())
                    .with_attestations(self.node.attest.clone()),
            );
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

/// The platforms `node` builds: the declared ones, else those its daemon reports.
async fn offer(d: &mut Dialled) -> Result<Offer, Error> {
    if !d.node.declared.is_empty() {
        return Ok(Offer {
            name: d.node.name.clone(),
            platforms: d.node.declared.iter().map(Platform::normalize).collect(),
        });
    }
    let info = d.client().await?.info().await?;
    let node = &d.node;
    let platforms = info
        .platforms
        .iter()
        .map(|p| {
            p.parse::<Platform>()
                .map(|p| p.normalize())
                .map_err(|e| Error::Node {
                    node: node.name.clone(),
                    why: format!("it reports platform {p:?}: {e}"),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(Offer {
        name: node.name.clone(),
        platforms,
    })
}

/// Runs `req` (a build of several platforms: `req.platforms`) on the nodes of builder
/// `builder`. `registry` reaches the registries of a push (the client puts the index there).
/// With every platform on one node, the whole request goes to it as one build.
pub async fn build(
    builder: &str,
    nodes: Vec<Node>,
    req: &BuildRequest,
    registry: &kiln_registry::Registry,
    progress: Arc<dyn ProgressSink<Digest>>,
    cancel: CancellationToken,
) -> RemoteResult {
    let targets: Vec<Platform> = if req.platforms.is_empty() {
        vec![req.platform.normalize()]
    } else {
        req.platforms.iter().map(Platform::normalize).collect()
    };
    let mut nodes: Vec<Dialled> = nodes
        .into_iter()
        .map(|node| Dialled { node, client: None })
        .collect();
    let mut offers = Vec::with_capacity(nodes.len());
    for n in &mut nodes {
        offers.push(offer(n).await?);
    }
    // `--call` asks the frontend about the first platform: the node that builds it answers.
    let asked = if req.call.is_some() {
        &targets[..1]
    } else {
        &targets[..]
    };
    let shares = assign(builder, asked, &offers)?;
    if let [share] = &shares[..] {
        let client = nodes[share.node].client().await?;
        return client.build(req, progress, cancel).await;
    }
    check_exports(&req.exports)?;
    if req
        .cache_to
        .iter()
        .any(|c| matches!(c.location, CacheLocation::Local { .. }))
    {
        // Each node's export would replace the others' in the one directory.
        return Err(Error::Unsupported(
            "--cache-to type=local with a builder of several nodes: each node exports its own \
             platforms' steps, and one directory keeps only the last; use type=registry"
                .to_owned(),
        ));
    }
    // Every node used is reachable before any starts: an unreachable one fails the build
    // before the others spend work on it.
    for share in &shares {
        nodes[share.node].client().await?;
    }

    let scratch = tempfile::Builder::new()
        .prefix("kiln-multinode-")
        .tempdir()
        .map_err(|e| Error::io("create a directory in", &std::env::temp_dir(), e))?;
    let stop = cancel.child_token();
    let mut runs = tokio::task::JoinSet::new();
    let mut slots: Vec<Option<Dialled>> = nodes.into_iter().map(Some).collect();
    for (i, share) in shares.iter().enumerate() {
        let Some(Dialled {
            node,
            client: Some(mut client),
        }) = slots.get_mut(share.node).and_then(Option::take)
        else {
            continue;
        };
        let label = label(&share.platforms);
        let mut sub = node_request(req, share, &scratch.path().join(format!("node-{i}")))?;
        // Each node's registry cache goes under a tag of its own, merged below.
        for c in &mut sub.cache_to {
            if let CacheLocation::Registry { reference } = &mut c.location {
                *reference = part_reference(reference, i);
            }
        }
        let sink: Arc<dyn ProgressSink<Digest>> = Arc::new(Labelled {
            inner: progress.clone(),
            label: label.clone(),
        });
        let stop = stop.clone();
        runs.spawn(async move {
            let result = client.build(&sub, sink, stop).await;
            (i, node.name, label, sub, result)
        });
    }
    let mut first_failure: Option<RemoteResult> = None;
    let mut done: Vec<Option<(String, String, BuildRequest, OutcomeView)>> =
        shares.iter().map(|_| None).collect();
    while let Some(joined) = runs.join_next().await {
        let (i, name, label, sub, result) = joined.map_err(|e| Error::Node {
            node: String::new(),
            why: format!("a node's build task failed: {e}"),
        })?;
        match result {
            Ok(Ok(outcome)) => done[i] = Some((name, label, sub, outcome)),
            Ok(Err(failure)) => {
                stop.cancel();
                // A node cancelled because another failed reports a cancellation: the first
                // failure is the one to show.
                first_failure.get_or_insert(Ok(Err(relabel_failure(&label, failure))));
            }
            Err(e) => {
                stop.cancel();
                first_failure.get_or_insert(Err(e));
            }
        }
    }
    if let Some(failure) = first_failure {
        return failure;
    }
    let done: Vec<(String, String, BuildRequest, OutcomeView)> =
        done.into_iter().flatten().collect();
    let index = assemble(req, &targets, &done, scratch.path(), registry).await?;
    let mut outcome = merged_outcome(index, done);
    // One registry cache of every platform, as one machine exports it: the nodes' parts
    // merged at the tag the build named.
    for (n, c) in req.cache_to.iter().enumerate() {
        let CacheLocation::Registry { reference } = &c.location else {
            continue;
        };
        let parts: Vec<Reference> = (0..shares.len())
            .map(|i| part_reference(reference, i))
            .collect();
        let merged = kiln_engine::merge_registry_caches(
            registry,
            &parts,
            reference,
            &scratch.path().join(format!("cache-{n}")),
        )
        .await;
        match merged {
            Ok(_) => {}
            Err(e) if c.ignore_error => outcome.warnings.push((crate::view::error_chain(&e), None)),
            Err(e) => return Err(Error::CacheMerge(Box::new(e))),
        }
    }
    Ok(Ok(outcome))
}

/// Where node `part` of a spread build pushes its share of the registry cache `r`: a tag of
/// its own beside `r`'s (`<tag>-kiln-node<part>`), merged into `r` once every node is done.
fn part_reference(r: &Reference, part: usize) -> Reference {
    let tag = r.tag.as_deref().unwrap_or("latest");
    let suffix = format!("-kiln-node{part}");
    // A tag has at most 128 characters.
    let kept: String = tag.chars().take(128 - suffix.len()).collect();
    Reference {
        tag: Some(format!("{kept}{suffix}")),
        digest: None,
        ..r.clone()
    }
}

/// Refuses, before anything runs, the outputs a spread build cannot make.
fn check_exports(exports: &[Export]) -> Result<(), Error> {
    for e in exports {
        match e {
            Export::Docker { .. } | Export::Load { .. } => {
                return Err(Error::Unsupported(DOCKER_MULTI_PLATFORM.to_owned()))
            }
            Export::Tar {
                dest: TarDest::Stdout,
            } => {
                return Err(Error::Unsupported(
                    "type=tar,dest=- with a builder of several nodes: the platforms' files are \
                     gathered first, give dest=FILE"
                        .to_owned(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// How a node's steps are named: its platform (or platforms).
fn label(platforms: &[Platform]) -> String {
    platforms
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `[linux/arm64 2/3] RUN ...` from `[2/3] RUN ...`, as the engine names one platform's steps
/// in a build of several (BuildKit's naming); a name without brackets gets them. A node of
/// several platforms names its platforms' own steps already: those stay as they are.
fn relabel(label: &str, name: &str) -> String {
    let named = label.split(',').any(|p| {
        name.strip_prefix('[')
            .and_then(|rest| rest.strip_prefix(p))
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with(']'))
    });
    if named {
        return name.to_owned();
    }
    match name.strip_prefix('[') {
        Some(rest) => format!("[{label} {rest}"),
        None => format!("[{label}] {name}"),
    }
}

/// A step's id in the shared display: two nodes may run steps of the same digest (the export
/// step has one id everywhere), which must stay two lines.
fn reid(label: &str, id: &Digest) -> Digest {
    Digest::of(format!("{label}\0{id}").as_bytes())
}

/// A node's progress, named with its platform, into the shared display.
struct Labelled {
    inner: Arc<dyn ProgressSink<Digest>>,
    label: String,
}

impl ProgressSink<Digest> for Labelled {
    fn send(&self, event: Event<Digest>) {
        let l = &self.label;
        self.inner.send(match event {
            Event::Started { id, name } => Event::Started {
                id: reid(l, &id),
                name: relabel(l, &name),
            },
            Event::Cached { id, name } => Event::Cached {
                id: reid(l, &id),
                name: relabel(l, &name),
            },
            Event::Done { id, name, duration } => Event::Done {
                id: reid(l, &id),
                name: relabel(l, &name),
                duration,
            },
            Event::Error { id, name, message } => Event::Error {
                id: reid(l, &id),
                name: relabel(l, &name),
                message,
            },
            Event::Cancelled { id, name } => Event::Cancelled {
                id: reid(l, &id),
                name: relabel(l, &name),
            },
            Event::Log { id, name, line } => Event::Log {
                id: reid(l, &id),
                name: relabel(l, &name),
                line,
            },
        });
    }
}

/// A node's failure as the display knows its step (the relabelled id and name); a failure
/// outside a step says which platforms' node failed.
fn relabel_failure(label: &str, mut f: FailureView) -> FailureView {
    match &mut f.step {
        Some((id, name)) => {
            *id = reid(label, id);
            let named = relabel(label, name);
            // The message opens with the step's name, as a local build's does.
            if let Some(rest) = f.message.strip_prefix(name.as_str()) {
                f.message = format!("{named}{rest}");
            }
            *name = named;
        }
        None => f.message = format!("[{label}] {}", f.message),
    }
    f
}

/// The request `share`'s node builds: its platforms, the same flags, and outputs the client
/// assembles afterwards (files under `scratch`), or writes as they are (a per-platform local
/// directory), or a push by digest.
fn node_request(
    req: &BuildRequest,
    share: &Share,
    scratch: &std::path::Path,
) -> Result<BuildRequest, Error> {
    let mut sub = req.clone();
    sub.platform = share.platforms[0].clone();
    sub.platforms = if share.platforms.len() > 1 {
        share.platforms.clone()
    } else {
        Vec::new()
    };
    std::fs::create_dir_all(scratch).map_err(|e| Error::io("create", scratch, e))?;
    // A directory per platform when the node builds one; a node of several writes them itself.
    let per_platform = |dest: &std::path::Path| match &share.platforms[..] {
        [one] => dest.join(platform_dir(one)),
        _ => dest.to_owned(),
    };
    sub.exports = req
        .exports
        .iter()
        .enumerate()
        .map(|(j, e)| match e {
            Export::Oci { format, .. } => Export::Oci {
                dest: scratch.join(format!("oci-{j}.tar")),
                tar: true,
                format: format.clone(),
            },
            Export::Local { dest } => Export::Local {
                dest: per_platform(dest),
            },
            Export::Tar { .. } => Export::Local {
                dest: per_platform(&scratch.join(format!("tar-{j}"))),
            },
            Export::Registry { names, format, .. } => Export::Registry {
                names: names.clone(),
                format: format.clone(),
                push_by_digest: true,
            },
            other => other.clone(),
        })
        .collect();
    Ok(sub)
}

/// `linux_arm64`: BuildKit's directory of a platform in a multi-platform local export.
fn platform_dir(p: &Platform) -> String {
    p.normalize().to_string().replace('/', "_")
}

/// Writes the outputs gathered from the nodes (`done`: node name, label, request, outcome);
/// returns the descriptor of the first image index written or pushed.
async fn assemble(
    req: &BuildRequest,
    targets: &[Platform],
    done: &[(String, String, BuildRequest, OutcomeView)],
    scratch: &std::path::Path,
    registry: &kiln_registry::Registry,
) -> Result<Option<Descriptor>, Error> {
    let mut first = None;
    for (j, e) in req.exports.iter().enumerate() {
        match e {
            Export::Oci { dest, tar, format } => {
                let blobs = layout::Blobs::in_dir(&scratch.join("blobs"))?;
                let mut images = Vec::new();
                for (name, _, sub, _) in done {
                    let Some(Export::Oci { dest: part, .. }) = sub.exports.get(j) else {
                        continue;
                    };
                    let layout = blobs.add_layout_tar(name, part)?;
                    images.push((name.clone(), layout.manifests));
                }
                let manifests = layout::in_platform_order(targets, &images)?;
                let d = blobs.write_layout(manifests, format, &req.tags, dest, *tar)?;
                first.get_or_insert(d);
            }
            Export::Registry {
                names,
                format,
                push_by_digest,
            } => {
                let to = IndexTarget {
                    names,
                    by_digest: *push_by_digest,
                };
                let d = push_index(done, targets, to, format, registry).await?;
                first.get_or_insert(d);
            }
            Export::Tar { dest } => {
                let root = scratch.join(format!("tar-{j}"));
                kiln_export::export_tar_dir(&root, dest)?;
            }
            // Written by the nodes where the client asked (or refused before the build).
            Export::Local { .. } | Export::Docker { .. } | Export::Load { .. } => {}
        }
    }
    Ok(first)
}

/// Puts under each of `names` the index of the images the nodes pushed by digest.
async fn push_index(
    done: &[(String, String, BuildRequest, OutcomeView)],
    targets: &[Platform],
    IndexTarget { names, by_digest }: IndexTarget<'_>,
    format: &kiln_engine::ImageFormat,
    registry: &kiln_registry::Registry,
) -> Result<Descriptor, Error> {
    let first_name = names.first().ok_or_else(|| {
        Error::Unsupported("pushing needs an image name: give -t registry/repo:tag".to_owned())
    })?;
    let repo = parse_name(first_name)?;
    let mut images = Vec::new();
    for (name, _, sub, outcome) in done {
        let mut manifests = Vec::new();
        match (&outcome.image, &outcome.index) {
            // A node of several platforms, or of attested images, pushed an index of its
            // own: its entries (images and attestation manifests).
            (_, Some(index)) => {
                let by_digest = Reference {
                    tag: None,
                    digest: Some(index.digest),
                    ..repo.clone()
                };
                let (_, bytes) = registry
                    .fetch_manifest(&by_digest)
                    .await
                    .map_err(|source| Error::Push {
                        name: by_digest.to_string(),
                        source: Box::new(source),
                    })?;
                let doc: kiln_types::image::Index =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Node {
                        node: name.clone(),
                        why: format!("its index {}: {e}", index.digest),
                    })?;
                manifests.extend(doc.manifests);
            }
            (Some((manifest, _)), None) => {
                let mut d = manifest.clone();
                d.platform = Some(sub.platform.normalize());
                manifests.push(d);
            }
            (None, None) => {
                return Err(Error::Node {
                    node: name.clone(),
                    why: "it reported no image it pushed".to_owned(),
                })
            }
        }
        images.push((name.clone(), manifests));
    }
    let manifests = layout::in_platform_order(targets, &images)?;
    let doc = kiln_export::index_document(manifests, format)?;
    let digest = Digest::of(&doc.bytes);
    for name in names {
        let mut target = parse_name(name)?;
        // `push-by-digest=true` asked of the build: the index too goes under its digest only.
        if by_digest {
            target.tag = None;
            target.digest = Some(digest);
        }
        registry
            .put_manifest(&target, &doc.bytes, &doc.media_type)
            .await
            .map_err(|source| Error::Push {
                name: name.clone(),
                source: Box::new(source),
            })?;
    }
    let mut d = Descriptor::new(&doc.media_type, digest, doc.bytes.len() as u64);
    d.annotations = doc.descriptor_annotations;
    Ok(d)
}

/// Where the client puts the index: the names, and whether under its digest only.
struct IndexTarget<'a> {
    names: &'a [String],
    by_digest: bool,
}

fn parse_name(name: &str) -> Result<Reference, Error> {
    Reference::parse_normalized(name)
        .map_err(|e| Error::Unsupported(format!("cannot push to {name}: {e}")))
}

/// One outcome of the nodes': the assembled index, every node's steps (named as the display
/// showed them), their warnings once each.
fn merged_outcome(
    index: Option<Descriptor>,
    done: Vec<(String, String, BuildRequest, OutcomeView)>,
) -> OutcomeView {
    let mut out = OutcomeView {
        index,
        ..OutcomeView::default()
    };
    for (_, label, _, o) in done {
        if out.frontend.is_empty() {
            out.frontend = o.frontend;
        }
        out.steps.extend(
            o.steps
                .into_iter()
                .map(|(name, status): (String, Status)| (relabel(&label, &name), status)),
        );
        for w in o.warnings {
            if !out.warnings.contains(&w) {
                out.warnings.push(w);
            }
        }
        out.explain.extend(o.explain);
        if out.call_result.is_none() {
            out.call_result = o.call_result;
        }
    }
    out
}

#[cfg(test)]
mod tests;
