//! Multi-platform builds (`--platform a,b,...`), as buildx drives BuildKit: the frontend is
//! asked once per platform (each answer is one platform's graph and image config), and every
//! graph goes into ONE solve. Vertex digests cover only the op and its inputs, so a stage
//! whose inputs do not depend on the target platform (`FROM --platform=$BUILDPLATFORM ...`
//! that never reads `TARGETARCH`) is the same vertex in every graph and is built once.
//! The results are exported as an image index (one manifest per platform), per-platform
//! directories (`type=local`, `type=tar`: `linux_amd64/`...), or refused (`type=docker`).
//!
//! Also the emulation check every build makes before it solves: the platforms whose RUN steps
//! would execute foreign binaries get their QEMU handler (registered when missing and
//! possible), or the build fails before any step runs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use kiln_export::{Image, ImageFormat, ImageIndex, ImageOptions};
use kiln_graph::{Definition, Op, SourceOp};
use kiln_snapshot::{Snapshot, Store};
use kiln_solver::{Event, ProgressSink};
use kiln_types::image::{Descriptor, ImageConfig};
use kiln_types::{Digest, Platform};

use crate::{source_date_epoch, BuildRequest, Engine, Error, Export};

/// BuildKit's docker exporter refuses an index with this message (buildx shows it as is).
pub(crate) const DOCKER_MULTI_PLATFORM: &str =
    "docker exporter does not currently support exporting manifest lists";

/// The platforms whose RUN steps `def` runs: for each exec step, the platform of the image
/// its root filesystem comes from (followed down through the steps that made the root). A
/// root built from `scratch` or a local directory names no platform.
pub(crate) fn exec_platforms(def: &Definition) -> BTreeSet<Platform> {
    let mut out = BTreeSet::new();
    for v in &def.vertices {
        let Op::Exec(e) = &v.op else { continue };
        let root = e
            .mounts
            .iter()
            .find(|m| m.dest == "/")
            .and_then(|m| m.input)
            .and_then(|i| v.inputs.get(i as usize))
            .map(|edge| edge.vertex);
        let mut cur = root;
        let mut seen = HashSet::new();
        while let Some(id) = cur.filter(|id| seen.insert(*id)) {
            let Some(u) = def.vertex(&id) else { break };
            cur = match &u.op {
                Op::Source(SourceOp::Image(img)) => {
                    out.insert(img.platform.normalize());
                    None
                }
                Op::Source(_) | Op::Custom(_) => None,
                Op::Exec(x) => x
                    .mounts
                    .iter()
                    .find(|m| m.dest == "/")
                    .and_then(|m| m.input)
                    .and_then(|i| u.inputs.get(i as usize))
                    .map(|edge| edge.vertex),
                // A file op and a merge write onto their first input; a diff's base is it too.
                Op::File(_) | Op::Merge | Op::Diff => u.inputs.first().map(|edge| edge.vertex),
            };
        }
    }
    out
}

/// Before anything is solved: every platform whose RUN steps `def` runs must run here,
/// natively or through a QEMU handler (`kiln-emulation` registers one that is missing when
/// it can). Fails with the platform and the package to install otherwise.
pub(crate) fn ensure_emulation(
    def: &Definition,
    progress: &dyn ProgressSink<Digest>,
) -> Result<(), Error> {
    let platforms = exec_platforms(def);
    // The common case, RUN steps of the host's own platform only, reads nothing of the host.
    let host = Platform::host().normalize();
    if platforms.iter().all(|p| *p == host) {
        return Ok(());
    }
    let emulation = kiln_emulation::Emulation::from_host();
    for p in platforms {
        let support = emulation.ensure(&p).map_err(Error::Emulation)?;
        if let kiln_emulation::Support::Emulated {
            registered: true, ..
        } = support
        {
            // A step of its own in the progress, so that every display shows it.
            let id = Digest::of(format!("internal:emulation:{p}").as_bytes());
            let name = format!("[internal] emulation for {p}");
            progress.send(Event::Started {
                id,
                name: name.clone(),
            });
            progress.send(Event::Log {
                id,
                name: name.clone(),
                line: format!("registered the QEMU binfmt_misc handler for {p}"),
            });
            progress.send(Event::Done {
                id,
                name,
                duration: std::time::Duration::ZERO,
            });
        }
    }
    Ok(())
}

/// The host services of the per-platform frontend calls of one build, which remember each
/// image config resolved: a stage on `$BUILDPLATFORM` resolves the same image for the same
/// platform in every call, and asks the registry once (as BuildKit's per-session resolver
/// cache). Failures are not kept. Every method of [`HostServices`] is forwarded: one left to
/// its default would answer "unsupported".
pub(crate) struct ResolvedOnce<S> {
    inner: S,
    resolved: std::sync::Mutex<
        HashMap<(String, Platform), kiln_plugin_sdk::proto::ResolveImageConfigResponse>,
    >,
}

impl<S> ResolvedOnce<S> {
    pub(crate) fn new(inner: S) -> Self {
        ResolvedOnce {
            inner,
            resolved: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn cache(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<(String, Platform), kiln_plugin_sdk::proto::ResolveImageConfigResponse>,
    > {
        // Only whole entries are inserted: a panic elsewhere leaves the map consistent.
        self.resolved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<S: kiln_plugin_host::HostServices> kiln_plugin_host::HostServices for ResolvedOnce<S> {
    fn read_context_file(
        &self,
        context: &str,
        path: &str,
    ) -> Result<Vec<u8>, kiln_plugin_sdk::proto::PluginError> {
        self.inner.read_context_file(context, path)
    }

    fn stat(
        &self,
        context: &str,
        path: &str,
    ) -> Result<Option<kiln_plugin_sdk::proto::FileInfo>, kiln_plugin_sdk::proto::PluginError> {
        self.inner.stat(context, path)
    }

    fn read_dir(
        &self,
        context: &str,
        path: &str,
    ) -> Result<Vec<kiln_plugin_sdk::proto::FileInfo>, kiln_plugin_sdk::proto::PluginError> {
        self.inner.read_dir(context, path)
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<
        kiln_plugin_sdk::proto::ResolveImageConfigResponse,
        kiln_plugin_sdk::proto::PluginError,
    > {
        let key = (reference.to_owned(), platform.clone());
        if let Some(found) = self.cache().get(&key) {
            return Ok(found.clone());
        }
        // Not held across the registry's round trips: the calls could run at once.
        let found = self.inner.resolve_image_config(reference, platform)?;
        self.cache().insert(key, found.clone());
        Ok(found)
    }

    fn lower_instruction(
        &self,
        req: kiln_plugin_sdk::proto::InstructionRequest,
    ) -> Result<
        Option<kiln_plugin_sdk::proto::InstructionResponse>,
        kiln_plugin_sdk::proto::PluginError,
    > {
        self.inner.lower_instruction(req)
    }

    fn log(&self, level: kiln_plugin_sdk::proto::LogLevel, message: &str) {
        self.inner.log(level, message)
    }

    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// The directory (or tar prefix) of `platform` in a multi-platform local export: BuildKit's
/// `platforms.Format` with `/` replaced by `_` (`linux_amd64`, `linux_arm_v7`).
pub(crate) fn platform_dir(platform: &Platform) -> String {
    platform.normalize().to_string().replace('/', "_")
}

/// Joins the graphs of several platforms into one: vertices by digest (a vertex the graphs
/// share appears once; each graph lists inputs first, so the union does too), the outputs in
/// platform order. A step of one platform's graph only is named with its platform, as BuildKit
/// shows them (`[linux/arm64 stage-1 1/2] COPY ...`); a shared one keeps its name.
pub(crate) fn merge_definitions(platforms: &[Platform], defs: Vec<Definition>) -> Definition {
    let mut users: HashMap<Digest, usize> = HashMap::new();
    for def in &defs {
        let mut mine = HashSet::new();
        for v in &def.vertices {
            if mine.insert(v.digest) {
                *users.entry(v.digest).or_default() += 1;
            }
        }
    }
    let mut seen = HashSet::new();
    let mut merged = Definition {
        vertices: Vec::new(),
        outputs: Vec::new(),
    };
    for (platform, def) in platforms.iter().zip(defs) {
        for mut v in def.vertices {
            if !seen.insert(v.digest) {
                continue;
            }
            if users.get(&v.digest) == Some(&1) {
                v.meta.description = match v.meta.description.strip_prefix('[') {
                    Some(rest) => format!("[{platform} {rest}"),
                    None => format!("[{platform}] {}", v.meta.description),
                };
            }
            merged.vertices.push(v);
        }
        merged.outputs.push(def.outputs.first().copied().flatten());
    }
    merged
}

/// One platform's result.
pub(crate) struct Built {
    pub(crate) platform: Platform,
    pub(crate) snapshot: Snapshot,
    pub(crate) config: ImageConfig,
}

/// Refuses what a build of several platforms cannot do, before anything runs.
pub(crate) fn check_request(req: &BuildRequest) -> Result<(), Error> {
    // Every platform's chain goes into one `type=local|registry` cache; an inline cache
    // would be one per platform's image config, which kiln does not write yet.
    if req
        .cache_to
        .iter()
        .any(|c| c.location == crate::CacheLocation::Inline)
    {
        return Err(Error::Unsupported(
            "--cache-to type=inline with several --platform values is not supported yet: \
             use type=registry or type=local"
                .into(),
        ));
    }
    if req
        .exports
        .iter()
        .any(|e| matches!(e, Export::Docker { .. } | Export::Load { .. }))
    {
        return Err(Error::Unsupported(DOCKER_MULTI_PLATFORM.into()));
    }
    Ok(())
}

/// Each platform's result: its output edge of the merged graph `def`, found among the solved
/// `wanted` vertices (whose snapshots are `outputs`, in that order), with its image config.
pub(crate) fn results(
    platforms: &[Platform],
    def: &Definition,
    wanted: &[Digest],
    outputs: Vec<Snapshot>,
    configs: Vec<ImageConfig>,
) -> Vec<Built> {
    platforms
        .iter()
        .zip(def.outputs.iter())
        .zip(configs)
        .map(|((platform, out), config)| {
            let snapshot = out
                .and_then(|edge| wanted.iter().position(|t| *t == edge.vertex))
                .and_then(|i| outputs.get(i).cloned())
                .unwrap_or_default();
            Built {
                platform: platform.clone(),
                snapshot,
                config,
            }
        })
        .collect()
}

impl Engine {
    /// Writes every export of a multi-platform result; returns the index of the first image
    /// export.
    pub(crate) async fn export_platforms(
        &self,
        req: &BuildRequest,
        built: Vec<Built>,
        attester: Option<Arc<crate::attest::Attester>>,
        progress: Arc<dyn ProgressSink<Digest>>,
    ) -> Result<Option<Descriptor>, Error> {
        let store = self.store.clone();
        let exports = req.exports.clone();
        let epoch = source_date_epoch(&req.build_args)?;
        let tags = req.tags.clone();
        let registry = self.registry.clone();
        let handle = tokio::runtime::Handle::current();
        let step = crate::ExportStep::begin(progress.as_ref());
        let sink = progress.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<Option<Descriptor>, Error> {
            let mut indexes: Vec<(ImageFormat, ImageIndex)> = Vec::new();
            let mut first = None;
            for e in &exports {
                let mut index_for = |format: &ImageFormat| -> Result<ImageIndex, Error> {
                    if let Some((_, i)) = indexes.iter().find(|(f, _)| f == format) {
                        return Ok(i.clone());
                    }
                    let images = built
                        .iter()
                        .map(|b| {
                            kiln_export::assemble_image(
                                &store,
                                &b.snapshot,
                                b.config.clone(),
                                ImageOptions {
                                    format: kiln_export::platform_format(format, &b.platform),
                                    source_date_epoch: epoch,
                                },
                            )
                        })
                        .collect::<Result<Vec<Image>, _>>()?;
                    let idx = match &attester {
                        Some(a) => {
                            let snaps: Vec<&Snapshot> = built.iter().map(|b| &b.snapshot).collect();
                            a.platforms(&store, images, &snaps, format)?
                        }
                        None => kiln_export::assemble_index(&store, images, format)?,
                    };
                    indexes.push((format.clone(), idx.clone()));
                    Ok(idx)
                };
                match e {
                    Export::Oci { dest, tar, format } => {
                        let idx = index_for(format)?;
                        kiln_export::export_oci_index(&store, &idx, &tags, dest, *tar)?;
                        first.get_or_insert(idx.descriptor);
                    }
                    Export::Registry {
                        names,
                        format,
                        push_by_digest,
                    } => {
                        let idx = index_for(format)?;
                        let by_digest = *push_by_digest;
                        push_index(&store, &registry, &handle, &idx, names, by_digest, &*sink)?;
                        first.get_or_insert(idx.descriptor);
                    }
                    Export::Local { dest } => {
                        for (nth, b) in built.iter().enumerate() {
                            let dir = dest.join(platform_dir(&b.platform));
                            kiln_export::export_local(&store, &b.snapshot, &dir)?;
                            write_attestations(&store, attester.as_deref(), nth, b, &dir)?;
                        }
                    }
                    Export::Tar { dest } => export_tar(&store, &built, attester.as_deref(), dest)?,
                    Export::Docker { .. } | Export::Load { .. } => {
                        return Err(Error::Unsupported(DOCKER_MULTI_PLATFORM.into()))
                    }
                }
            }
            Ok(first)
        })
        .await
        .map_err(|e| Error::Unsupported(format!("export task failed: {e}")))?;
        step.end(progress.as_ref(), &result, |index| {
            index
                .as_ref()
                .map(|d| format!("writing image index {}", d.digest))
        });
        result
    }
}

/// The local directories served to the frontend by name, and the frontend's options.
/// `type=tar` of several platforms: one tar whose top directories are the platforms
/// (`linux_amd64/...`), as BuildKit's tar exporter writes a multi-platform result. Each
/// platform's tree is exported into a scratch directory of the store, then the whole is
/// written as one tar.
fn export_tar(
    store: &Store,
    built: &[Built],
    attester: Option<&crate::attest::Attester>,
    dest: &kiln_export::TarDest,
) -> Result<(), Error> {
    let scratch = store.temp_dir("multi-platform-tar")?;
    let res = (|| -> Result<(), Error> {
        let root = scratch.join("root");
        for (nth, b) in built.iter().enumerate() {
            let dir = root.join(platform_dir(&b.platform));
            kiln_export::export_local(store, &b.snapshot, &dir)?;
            write_attestations(store, attester, nth, b, &dir)?;
        }
        Ok(kiln_export::export_tar_dir(&root, dest)?)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    res
}

/// The attestation files of the `nth` platform's result `b`, into its directory `dir` of a
/// filesystem output (`linux_amd64/provenance.json`, as BuildKit splits them by platform).
fn write_attestations(
    store: &Store,
    attester: Option<&crate::attest::Attester>,
    nth: usize,
    b: &Built,
    dir: &std::path::Path,
) -> Result<(), Error> {
    let Some(a) = attester else {
        return Ok(());
    };
    let files = a.files(store, nth, &b.snapshot)?;
    if !files.is_empty() {
        kiln_export::write_attestation_files(dir, &files, a.mtime())?;
    }
    Ok(())
}

/// Pushes an index to each of `names`, as BuildKit does: each platform's manifest with its
/// blobs under its digest (no tag names it, so the tag never shows a single platform's image,
/// even for a moment), then the index under the tag (under its digest too when `by_digest`).
pub(crate) fn push_index(
    store: &Store,
    registry: &kiln_registry::Registry,
    handle: &tokio::runtime::Handle,
    index: &ImageIndex,
    names: &[String],
    by_digest: bool,
    progress: &dyn ProgressSink<Digest>,
) -> Result<(), Error> {
    for d in index.blobs() {
        if let kiln_snapshot::verify::BlobState::Changed(m) = store.check_blob(&d)? {
            return Err(kiln_snapshot::Error::BlobChanged(m).into());
        }
    }
    let bytes = store.read_blob(&index.descriptor.digest)?;
    let pushed = |target: &kiln_registry::Reference, digest: Digest| {
        progress.send(Event::Log {
            id: Digest::of(b"internal:export"),
            name: "exporting to image".to_owned(),
            line: format!("pushed {target}@{digest}"),
        });
    };
    for name in names {
        let target = match name.parse::<kiln_registry::ImageRef>()? {
            kiln_registry::ImageRef::Registry(r) => r,
            kiln_registry::ImageRef::Layout(_) => {
                return Err(Error::Unsupported(format!(
                    "cannot push to {name}: use --output type=oci,dest=DIR,tar=false for a layout"
                )))
            }
        };
        for image in &index.images {
            let mut blobs: Vec<(Digest, u64)> =
                image.layers.iter().map(|l| (l.digest, l.size)).collect();
            blobs.push((
                image.manifest_doc.config.digest,
                image.manifest_doc.config.size,
            ));
            let manifest = store.read_blob(&image.manifest.digest)?;
            let by_digest = kiln_registry::Reference {
                tag: None,
                digest: Some(image.manifest.digest),
                ..target.clone()
            };
            let digest = handle.block_on(registry.push(
                &by_digest,
                &blobs,
                &manifest,
                &image.manifest.media_type,
                store,
            ))?;
            pushed(
                &kiln_registry::Reference {
                    digest: None,
                    ..by_digest
                },
                digest,
            );
        }
        // `push-by-digest`: the index too goes under its digest only.
        let target = if by_digest {
            kiln_registry::Reference {
                tag: None,
                digest: Some(index.descriptor.digest),
                ..target
            }
        } else {
            target
        };
        let digest = handle.block_on(registry.push(
            &target,
            &[],
            &bytes,
            &index.descriptor.media_type,
            store,
        ))?;
        pushed(
            &kiln_registry::Reference {
                digest: None,
                ..target
            },
            digest,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::{ExecBuilder, ImageSource, Mount, MountKind, State};

    fn image(platform: &str) -> State {
        State::image(
            ImageSource {
                reference: "docker.io/library/busybox:latest".into(),
                platform: platform.parse().unwrap(),
            },
            "[build 1/2] FROM busybox",
        )
    }

    /// The graph the Dockerfile frontend makes for `target`: a build stage on the build
    /// platform (amd64) that does not read the target, and a final stage of the target's base
    /// that mounts the build stage's result.
    fn graph(target: &str) -> Definition {
        let shared = ExecBuilder::new(&image("linux/amd64"), vec!["make".into()])
            .build("[build 2/2] RUN make");
        let last = ExecBuilder::new(&image(target), vec![format!("install-{target}")])
            .mount(
                &shared,
                Mount {
                    input: None,
                    selector: String::new(),
                    dest: "/src".into(),
                    readonly: true,
                    kind: MountKind::Bind,
                },
            )
            .build("[stage-1 1/1] RUN install");
        State::definition(&[last])
    }

    fn platforms() -> Vec<Platform> {
        ["linux/amd64", "linux/arm64", "linux/s390x"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    #[test]
    fn shared_vertices_are_merged_once_and_the_others_named_by_platform() {
        let defs: Vec<Definition> = ["linux/amd64", "linux/arm64", "linux/s390x"]
            .iter()
            .map(|p| graph(p))
            .collect();
        let shared = defs[0].vertices[1].digest;
        let merged = merge_definitions(&platforms(), defs.clone());
        // amd64's base (shared by the build stage and amd64's final stage), the build stage's
        // RUN, amd64's RUN; then arm64's and s390x's base and RUN.
        assert_eq!(merged.vertices.len(), 7, "{:#?}", merged.vertices);
        let names: Vec<&str> = merged
            .vertices
            .iter()
            .map(|v| v.meta.description.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "[build 1/2] FROM busybox",
                "[build 2/2] RUN make",
                "[linux/amd64 stage-1 1/1] RUN install",
                "[linux/arm64 build 1/2] FROM busybox",
                "[linux/arm64 stage-1 1/1] RUN install",
                "[linux/s390x build 1/2] FROM busybox",
                "[linux/s390x stage-1 1/1] RUN install",
            ]
        );
        assert_eq!(
            merged
                .vertices
                .iter()
                .filter(|v| v.digest == shared)
                .count(),
            1
        );
        let outs: Vec<Digest> = merged.outputs.iter().map(|o| o.unwrap().vertex).collect();
        let want: Vec<Digest> = defs.iter().map(|d| d.outputs[0].unwrap().vertex).collect();
        assert_eq!(outs, want);
        // Inputs come before their users, as the solver's graph needs.
        let mut defined = HashSet::new();
        for v in &merged.vertices {
            assert!(v.inputs.iter().all(|e| defined.contains(&e.vertex)));
            defined.insert(v.digest);
        }
    }

    #[test]
    fn run_steps_are_checked_for_the_platform_of_their_root() {
        let defs: Vec<Definition> = ["linux/amd64", "linux/arm64", "linux/s390x"]
            .iter()
            .map(|p| graph(p))
            .collect();
        let merged = merge_definitions(&platforms(), defs);
        let got: Vec<String> = exec_platforms(&merged)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["linux/amd64", "linux/arm64", "linux/s390x"]);
        // A RUN on an arm64/v8 base is checked for arm64, normalized.
        let only_build =
            State::definition(&[
                ExecBuilder::new(&image("linux/arm64/v8"), vec!["true".into()]).build("RUN true"),
            ]);
        let got: Vec<String> = exec_platforms(&only_build)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["linux/arm64"]);
        // A RUN on scratch names no platform; no RUN, nothing to check.
        let on_scratch =
            State::definition(&[
                ExecBuilder::new(&State::scratch(), vec!["x".into()]).build("RUN x")
            ]);
        assert!(exec_platforms(&on_scratch).is_empty());
        assert!(exec_platforms(&State::definition(&[image("linux/arm64")])).is_empty());
    }

    /// The bench's `multiplatform` workload: every RUN is in stages on `$BUILDPLATFORM` (the
    /// host), one per target for `TARGETARCH`, and the final stages are `FROM scratch`. Only
    /// the host's platform is checked: riscv64 needs no emulator.
    #[test]
    fn build_platform_run_steps_need_no_emulator_for_any_target() {
        let host = Platform::host().normalize();
        let targets = ["linux/amd64", "linux/arm64", "linux/riscv64"];
        let defs: Vec<Definition> = targets
            .iter()
            .map(|t| {
                let toolchain = ExecBuilder::new(&image(&host.to_string()), vec!["gen".into()])
                    .build("[toolchain 2/2] RUN gen");
                let build = ExecBuilder::new(&toolchain, vec![format!("cat > app-{t}")])
                    .build("[build 3/3] RUN cat");
                State::definition(&[build])
            })
            .collect();
        let merged = merge_definitions(
            &targets
                .iter()
                .map(|t| t.parse().unwrap())
                .collect::<Vec<_>>(),
            defs,
        );
        assert_eq!(
            exec_platforms(&merged).into_iter().collect::<Vec<_>>(),
            [host]
        );
    }

    /// Counts the resolves that reach it; fails for `bad`.
    #[derive(Default)]
    struct Counting {
        resolves: std::sync::Mutex<Vec<String>>,
    }

    impl kiln_plugin_host::HostServices for Counting {
        fn resolve_image_config(
            &self,
            reference: &str,
            platform: &Platform,
        ) -> Result<
            kiln_plugin_sdk::proto::ResolveImageConfigResponse,
            kiln_plugin_sdk::proto::PluginError,
        > {
            self.resolves
                .lock()
                .unwrap()
                .push(format!("{reference} {platform}"));
            if reference == "bad" {
                return Err(kiln_plugin_sdk::proto::PluginError::internal(
                    "no such image",
                ));
            }
            Ok(kiln_plugin_sdk::proto::ResolveImageConfigResponse {
                digest: Digest::of(format!("{reference} {platform}").as_bytes()),
                config: ImageConfig::default(),
            })
        }

        fn read_context_file(
            &self,
            context: &str,
            path: &str,
        ) -> Result<Vec<u8>, kiln_plugin_sdk::proto::PluginError> {
            Ok(format!("{context}:{path}").into_bytes())
        }

        fn cancelled(&self) -> bool {
            true
        }
    }

    #[test]
    fn an_image_config_is_resolved_once_per_platform_across_frontend_calls() {
        use kiln_plugin_host::HostServices;
        let s = ResolvedOnce::new(Counting::default());
        let amd64: Platform = "linux/amd64".parse().unwrap();
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let first = s.resolve_image_config("busybox", &amd64).unwrap();
        assert_eq!(s.resolve_image_config("busybox", &amd64).unwrap(), first);
        assert_ne!(s.resolve_image_config("busybox", &arm64).unwrap(), first);
        // A failure is asked again.
        assert!(s.resolve_image_config("bad", &amd64).is_err());
        assert!(s.resolve_image_config("bad", &amd64).is_err());
        assert_eq!(
            *s.inner.resolves.lock().unwrap(),
            [
                "busybox linux/amd64",
                "busybox linux/arm64",
                "bad linux/amd64",
                "bad linux/amd64"
            ]
        );
        // The other services are the inner ones.
        assert_eq!(s.read_context_file("ctx", "a").unwrap(), b"ctx:a");
        assert!(s.cancelled());
    }

    #[test]
    fn platform_directories_are_named_as_buildkit() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(platform_dir(&p("linux/amd64")), "linux_amd64");
        assert_eq!(platform_dir(&p("linux/arm64")), "linux_arm64");
        assert_eq!(platform_dir(&p("linux/arm64/v8")), "linux_arm64");
        assert_eq!(platform_dir(&p("linux/arm")), "linux_arm_v7");
    }
}
