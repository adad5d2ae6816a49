//! A build in three phases, the request API that the CLI and a daemon session both drive
//! (issue 11): [`Engine::frontend`] reads the build file and asks the frontend once per
//! platform (and answers `--call`), [`Engine::solve`] checks the graph and runs it,
//! [`Engine::export`] writes the outputs and the caches and collects the store.
//! [`Engine::build`] is the three in a row. One platform and several go through the same
//! phases; they differ only in what is exported (one image, or an index).
//!
//! Each phase's value owns what the later phases need and what must live until the build
//! ends: the store lease (a collector spares what the build uses while it is held), the
//! `--cache-from` reading started beside the frontend (stopped when the value is dropped), the
//! build's own ssh agents (killed when dropped). Dropping a [`Planned`] or a [`Solved`]
//! instead of handing it on ends the build there, cleanly.

use std::sync::Arc;

use kiln_plugin_sdk::proto::{Diagnostic, FrontendRequest};
use kiln_snapshot::gc::Lease;
use kiln_solver::{CancellationToken, Event, ProgressSink, Status};
use kiln_types::image::ImageConfig;
use kiln_types::{Digest, Platform};

use crate::remote_cache::{self, Imported};
use crate::{
    check_entitlements, default_concurrency, exec, explain, export, frontend_options, platforms,
    read_build_file, services, source_date_epoch, ssh_agent, syntax, BuildOutcome, BuildRequest,
    Contexts, Engine, Error, Miss, CALL_RESULT_LABEL,
};

/// What reads the `--cache-from` caches while the frontend runs.
type ImportsTask = tokio::task::JoinHandle<Result<(Arc<Imported>, Vec<Diagnostic>), Error>>;

/// A build after its frontend phase: each target platform's graph and image config, or the
/// answer to a `--call`. Hand it to [`Engine::solve`], or drop it to end the build.
pub struct Planned {
    req: BuildRequest,
    progress: Arc<dyn ProgressSink<Digest>>,
    cancel: CancellationToken,
    /// The target platforms, in `--platform` order (one for a single-platform build).
    targets: Vec<Platform>,
    lease: Lease,
    frontend: String,
    contexts: Contexts,
    /// One graph and one image config per target platform.
    defs: Vec<kiln_graph::Definition>,
    configs: Vec<ImageConfig>,
    warnings: Vec<Diagnostic>,
    imports: ImportsTask,
    /// Cancels the reading of the caches (and their later fetches) when the build ends.
    stop_imports: tokio_util::sync::DropGuard,
    call_result: Option<String>,
}

impl Planned {
    /// For a `--call`: the frontend's answer (JSON). Such a build ends here
    /// ([`Planned::into_outcome`]); it has nothing to solve.
    pub fn call_result(&self) -> Option<&str> {
        self.call_result.as_deref()
    }

    /// The frontend's warnings so far.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The frontend that made the graphs.
    pub fn frontend(&self) -> &str {
        &self.frontend
    }

    /// The target platforms, one graph each.
    pub fn platforms(&self) -> &[Platform] {
        &self.targets
    }

    /// What a build that ends after its frontend reports: the `--call` answer, the warnings,
    /// the frontend; nothing solved or exported. The lease ends and the caches' reading stops.
    pub fn into_outcome(self) -> BuildOutcome {
        BuildOutcome {
            image: None,
            index: None,
            steps: Vec::new(),
            warnings: self.warnings,
            frontend: self.frontend,
            call_result: self.call_result,
            explain: Vec::new(),
        }
    }
}

/// A build after its solve: each platform's result, ready to export. Hand it to
/// [`Engine::export`], or drop it to end the build without outputs.
pub struct Solved {
    req: BuildRequest,
    progress: Arc<dyn ProgressSink<Digest>>,
    lease: Lease,
    frontend: String,
    warnings: Vec<Diagnostic>,
    steps: Vec<(String, Status)>,
    /// One result per target platform, in `--platform` order.
    built: Vec<platforms::Built>,
    /// What `--cache-to` exports: every platform's result (none when nothing was solved).
    cache: Option<remote_cache::ExportCx>,
    explain: Vec<Miss>,
    /// The build's own ssh agents, killed when the build ends.
    _agents: Vec<ssh_agent::BuildAgent>,
    /// Lazily imported records may still be fetched while the caches are exported.
    _stop_imports: tokio_util::sync::DropGuard,
    /// The attestations to attach (`--provenance`, `--sbom`), with what they record: each
    /// platform's materials and when the solve started (unix seconds).
    attest: (crate::Attestations, Vec<Vec<kiln_attest::Material>>, i64),
}

impl Solved {
    /// Asks for attestations of the images this build exports (none by default).
    pub fn set_attestations(&mut self, attestations: crate::Attestations) {
        self.attest.0 = attestations;
    }

    /// Every vertex the solve needed and whether it ran or was cached, in graph order.
    pub fn steps(&self) -> &[(String, Status)] {
        &self.steps
    }

    /// The warnings so far (frontend, cache imports, `--explain-cache`).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }
}

/// A solver run: the solution, and the name and status of every step it needed.
type Solution = (
    kiln_solver::Solution<Digest, kiln_snapshot::Snapshot>,
    Vec<(String, Status)>,
);

/// Solves `targets` of `def`: a failed step's error carries its place in the build file.
/// Returns the solution and the name and status of every step the solve needed.
async fn run_solver(
    solver: &kiln_solver::Solver<Digest, exec::OpExecutor>,
    graph: &kiln_solver::Graph<Digest>,
    def: &kiln_graph::Definition,
    targets: &[Digest],
    cancel: &CancellationToken,
) -> Result<Solution, Error> {
    let solution = solver.solve(graph, targets, cancel).await.map_err(|e| {
        let location = match &e {
            kiln_solver::Error::Vertex { id, .. } => {
                def.vertex(id).and_then(|v| v.meta.source.clone())
            }
            _ => None,
        };
        Error::Step {
            location,
            source: e,
        }
    })?;
    let steps = solution
        .vertices
        .iter()
        .map(|(id, st)| {
            let name = def
                .vertex(id)
                .map(|v| v.meta.description.clone())
                .unwrap_or_default();
            (name, *st)
        })
        .collect();
    Ok((solution, steps))
}

impl Engine {
    /// Runs a build: [`Engine::frontend`], [`Engine::solve`], [`Engine::export`]. A `--call`
    /// ends after the frontend with its answer.
    pub async fn build(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, Error> {
        self.build_attested(req, Default::default(), progress, cancel)
            .await
    }

    /// [`Engine::build`] whose image exports carry `attestations`.
    pub async fn build_attested(
        &self,
        req: BuildRequest,
        attestations: crate::Attestations,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> Result<BuildOutcome, Error> {
        let planned = self.frontend(req, progress, cancel).await?;
        if planned.call_result().is_some() {
            return Ok(planned.into_outcome());
        }
        let mut solved = self.solve(planned).await?;
        solved.set_attestations(attestations);
        self.export(solved).await
    }

    /// The frontend phase: takes the build's lease, reads the build file, chooses the
    /// frontend (`--frontend` > `BUILDKIT_SYNTAX` > `# syntax=` > `dockerfile`) and asks it
    /// once per target platform, while the `--cache-from` caches are read beside it. A
    /// `--call` is answered here ([`Planned::call_result`]).
    pub async fn frontend(
        &self,
        req: BuildRequest,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> Result<Planned, Error> {
        // `--platform a,b,...`: the frontend is asked once per platform and every graph is
        // solved in one run (platforms.rs); a `--call` answers for the first platform.
        let targets: Vec<Platform> = if req.platforms.len() > 1 && req.call.is_none() {
            platforms::check_request(&req)?;
            req.platforms.clone()
        } else {
            vec![req.platform.clone()]
        };
        let multi = targets.len() > 1;
        // While it is held, a collector spares what this build takes and makes (gc.rs).
        let lease = self.store.lease()?;
        let source = read_build_file(&req.dockerfile).map_err(|source| Error::Dockerfile {
            path: req.dockerfile.clone(),
            source,
        })?;
        let filename = req
            .dockerfile
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".to_owned());

        let chosen = syntax::choose(req.frontend.as_deref(), &req.build_args, &source)?;
        let (frontend, resolved_line) = syntax::resolve_frontend(self, &chosen).await?;
        let load_id =
            Digest::of(format!("internal:definition:{}", req.dockerfile.display()).as_bytes());
        let load_name = format!("[internal] load build definition from {filename}");
        progress.send(Event::Started {
            id: load_id,
            name: load_name.clone(),
        });
        if let Some(line) = resolved_line {
            progress.send(Event::Log {
                id: load_id,
                name: load_name.clone(),
                line,
            });
        }
        let started = std::time::Instant::now();
        let mut build_args = req.build_args.clone();
        build_args.remove("BUILDKIT_SYNTAX");
        let (contexts, options) = frontend_options(&req)?;
        // The frontend calls of one build share their image-config resolves: a base on
        // `$BUILDPLATFORM` is asked of the registry once, not once per platform.
        let services = Arc::new(platforms::ResolvedOnce::new(
            services::EngineServices::new(
                contexts.clone(),
                self.plugins.clone(),
                self.registry.clone(),
                self.store.clone(),
                tokio::runtime::Handle::current(),
                progress.clone(),
                load_id,
                load_name.clone(),
                cancel.clone(),
            )
            .with_dockerfile(&req.dockerfile),
        ));
        // The `--cache-from` caches do not depend on the graph: they are read (manifest and
        // config, round trips to a registry) while the frontend runs. A build that ends
        // before it needs them (a frontend error, `--call`, a dropped `Planned`) stops their
        // reading.
        let net_cancel = cancel.child_token();
        let stop_imports = net_cancel.clone().drop_guard();
        let imports = tokio::spawn(remote_cache::read_imports(
            req.cache_from.clone(),
            remote_cache::Net {
                registry: self.registry.clone(),
                handle: tokio::runtime::Handle::current(),
                cancel: net_cancel,
            },
            self.store.clone(),
        ));
        // The frontend once per platform, as BuildKit's Dockerfile frontend makes one LLB per
        // platform; its base images are resolved per platform from their index.
        let mut warnings: Vec<Diagnostic> = Vec::new();
        let mut defs = Vec::with_capacity(targets.len());
        let mut configs = Vec::with_capacity(targets.len());
        let mut call_answers = Vec::with_capacity(targets.len());
        for platform in &targets {
            let freq = FrontendRequest {
                source: source.clone(),
                filename: filename.clone(),
                build_args: build_args.clone(),
                target: req.target.clone(),
                platform: platform.clone(),
                no_cache: req.no_cache,
                no_cache_filter: req.no_cache_filter.clone(),
                contexts: contexts.keys().cloned().collect(),
                options: options.clone(),
            };
            let fe = frontend.clone();
            let svc = services.clone();
            let resp = tokio::task::spawn_blocking(move || fe.frontend_build(&freq, svc.as_ref()))
                .await
                .map_err(|e| Error::Unsupported(format!("frontend task failed: {e}")))?;
            let resp = match resp {
                Ok(r) => r,
                // A frontend whose host callbacks were cancelled (Ctrl-C while it resolved a
                // base image) fails; the build was cancelled, not the Dockerfile wrong.
                Err(_) if cancel.is_cancelled() => {
                    progress.send(Event::Cancelled {
                        id: load_id,
                        name: load_name,
                    });
                    return Err(Error::Cancelled);
                }
                Err(e) => {
                    progress.send(Event::Error {
                        id: load_id,
                        name: load_name,
                        message: if multi {
                            format!("{platform}: {e}")
                        } else {
                            e.to_string()
                        },
                    });
                    return Err(match e.plugin_error() {
                        Some(pe) if pe.location.is_some() => Error::Frontend(pe.clone()),
                        _ => Error::Plugin(e),
                    });
                }
            };
            // The platforms' graphs come from one build file: a warning is said once.
            for w in resp.warnings {
                if !multi || !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            call_answers.push(call_answer(resp.call_result.as_ref(), &resp.config));
            defs.push(resp.definition);
            configs.push(resp.config);
        }
        progress.send(Event::Done {
            id: load_id,
            name: load_name,
            duration: started.elapsed(),
        });

        let call_result = match req.call {
            Some(call) => Some(call_answers.into_iter().next().flatten().ok_or_else(|| {
                Error::Call(format!(
                    "frontend {} does not answer --call={}: it returned no call result \
                             (nor a {CALL_RESULT_LABEL} label, as older frontends do; build \
                             without --call, or use a frontend that supports it)",
                    frontend.name(),
                    call.name()
                ))
            })?),
            None => None,
        };
        Ok(Planned {
            req,
            progress,
            cancel,
            targets,
            lease,
            frontend: frontend.name().to_owned(),
            contexts,
            defs,
            configs,
            warnings,
            imports,
            stop_imports,
            call_result,
        })
    }

    /// The solve phase: refuses what the graph may not do (entitlements, an emulator missing,
    /// outputs that cannot be written), starts the build's ssh agents, waits for the cache
    /// imports, and runs the platforms' graphs, merged by vertex digest, in one solve. Each
    /// platform's explain record (`--explain-cache`) is kept.
    pub async fn solve(&self, planned: Planned) -> Result<Solved, Error> {
        let Planned {
            req,
            progress,
            cancel,
            targets,
            lease,
            frontend,
            contexts,
            mut defs,
            configs,
            mut warnings,
            imports,
            stop_imports,
            call_result,
        } = planned;
        if let (Some(call), Some(_)) = (req.call, call_result) {
            return Err(Error::Call(format!(
                "--call={} was answered by the frontend: such a build has nothing to solve",
                call.name()
            )));
        }
        let multi = targets.len() > 1;
        // Each platform's own graph, kept for its explain record: a build of one platform
        // and the same platform's part of a build of several keep the same record.
        let platform_defs = if multi { defs.clone() } else { Vec::new() };
        let mut def = if multi {
            platforms::merge_definitions(&targets, defs)
        } else {
            defs.pop()
                .expect("the frontend was asked once, for one platform")
        };
        check_entitlements(&def, &req.allow)?;
        let started = crate::attest::now();
        let materials = crate::attest::materials(&if multi {
            platform_defs.iter().collect()
        } else {
            vec![&def]
        });
        // RUN steps of another platform need their emulator before anything runs.
        platforms::ensure_emulation(&def, progress.as_ref())?;
        // Outputs that cannot be written fail now, not after the build.
        export::check(&req.exports, source_date_epoch(&req.build_args)?)?;
        // Key files get an agent of their own for the build; dropped (killed) on every way out.
        let (ssh, agents) = ssh_agent::serve(&req.ssh)?;
        let (imported, import_warnings) = imports
            .await
            .map_err(|e| Error::Unsupported(format!("cache import task failed: {e}")))??;
        warnings.extend(import_warnings);
        if req.no_cache {
            for v in &mut def.vertices {
                v.meta.ignore_cache = true;
            }
        }
        let recorder = Arc::new(explain::Recorder::default());
        let ops = Arc::new(exec::OpExecutor::new(
            exec::BuildEnv {
                store: self.store.clone(),
                index: self.index.clone(),
                plugins: self.plugins.clone(),
                contexts,
                // Restored from the `--cache-from` caches that carry cache mounts.
                cache_mounts: remote_cache::cache_mounts_for(
                    &self.cache_mounts,
                    &imported,
                    &self.store,
                ),
                secrets: req.secrets.clone(),
                ssh,
                run_options: req.run_options.clone(),
                runtime: req.runtime,
                registry: self.registry.clone(),
                handle: tokio::runtime::Handle::current(),
                imported: imported.clone(),
                explain: recorder.clone(),
            },
            &def,
        ));
        let tracker = ops.tracker();
        let graph = kiln_solver::Graph::new(def.vertices.iter().map(|v| {
            kiln_solver::Vertex::new(
                v.digest,
                v.meta.description.clone(),
                v.inputs.iter().map(|e| e.vertex).collect::<Vec<_>>(),
            )
        }))?;
        let solver = kiln_solver::Solver::new(ops)
            .with_progress(progress.clone())
            .with_concurrency(self.concurrency.unwrap_or_else(default_concurrency));
        // Each platform's output (the merged graph has one per platform); platforms with the
        // same result ask for it once.
        let mut wanted: Vec<Digest> = Vec::new();
        for edge in def.outputs.iter().take(targets.len()).flatten() {
            if !wanted.contains(&edge.vertex) {
                wanted.push(edge.vertex);
            }
        }
        let (outputs, steps, explained) = if wanted.is_empty() {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            let (solution, steps) = run_solver(&solver, &graph, &def, &wanted, &cancel).await?;
            let explained = if multi {
                self.keep_explain_platforms(
                    &req,
                    &targets,
                    &platform_defs,
                    &def,
                    &solution.vertices,
                    &recorder,
                    &mut warnings,
                )
            } else {
                let platform = &targets[0];
                let statuses = &solution.vertices;
                self.keep_explain(&req, platform, &def, statuses, &recorder, &mut warnings)
            };
            (solution.outputs, steps, explained)
        };
        let built = platforms::results(&targets, &def, &wanted, outputs, configs);
        // What `--cache-to` exports (every platform's result into one cache); a `type=inline`
        // cache goes into the image's config.
        let cache = (!wanted.is_empty()).then(|| remote_cache::ExportCx {
            store: self.store.clone(),
            index: self.index.clone(),
            imported,
            tracker,
            def: Arc::new(def),
            targets: wanted,
        });
        Ok(Solved {
            req,
            progress,
            lease,
            frontend,
            warnings,
            steps,
            built,
            cache,
            explain: explained,
            _agents: agents,
            _stop_imports: stop_imports,
            attest: (Default::default(), materials, started),
        })
    }

    /// Every successful build of one platform is kept as the last one of its target, so that
    /// the next `--explain-cache` has something to compare with; with `--explain-cache`, what
    /// this build's steps that ran changed. A record that cannot be kept is a warning.
    fn keep_explain(
        &self,
        req: &BuildRequest,
        platform: &Platform,
        def: &kiln_graph::Definition,
        statuses: &[(Digest, Status)],
        recorder: &explain::Recorder,
        warnings: &mut Vec<Diagnostic>,
    ) -> Vec<Miss> {
        let kept = explain::finish(
            self.store.root(),
            &explain::Target {
                context: &req.context,
                dockerfile: &req.dockerfile,
                target: req.target.as_deref(),
                platform,
            },
            &req.build_args,
            def,
            statuses,
            recorder,
            req.explain_cache,
        );
        match kept {
            Ok(misses) => misses,
            Err(e) => {
                let warning = Diagnostic {
                    message: format!(
                        "could not keep this build for --explain-cache in {}: {e}",
                        self.store.root().join("explain").display()
                    ),
                    location: None,
                };
                // Said once, whatever the number of platforms that could not be kept.
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
                Vec::new()
            }
        }
    }

    /// [`Engine::keep_explain`] for each platform of a build of several: the record of each
    /// platform's own graph (as a build of that platform alone keeps it), its steps' statuses
    /// and notes. A step that ran is explained once, under its name in the merged graph (the
    /// platform's name in it), in the merged graph's order.
    #[allow(clippy::too_many_arguments)]
    fn keep_explain_platforms(
        &self,
        req: &BuildRequest,
        targets: &[Platform],
        platform_defs: &[kiln_graph::Definition],
        merged: &kiln_graph::Definition,
        statuses: &[(Digest, Status)],
        recorder: &explain::Recorder,
        warnings: &mut Vec<Diagnostic>,
    ) -> Vec<Miss> {
        let mut misses: Vec<Miss> = Vec::new();
        for (platform, def) in targets.iter().zip(platform_defs) {
            let mine: std::collections::HashSet<Digest> =
                def.vertices.iter().map(|v| v.digest).collect();
            let statuses: Vec<(Digest, Status)> = statuses
                .iter()
                .filter(|(id, _)| mine.contains(id))
                .copied()
                .collect();
            let part = recorder.part(mine.iter().copied());
            for mut miss in self.keep_explain(req, platform, def, &statuses, &part, warnings) {
                if misses.iter().any(|m| m.vertex == miss.vertex) {
                    continue;
                }
                if let Some(v) = merged.vertex(&miss.vertex) {
                    miss.name = v.meta.description.clone();
                }
                misses.push(miss);
            }
        }
        let order: std::collections::HashMap<Digest, usize> = merged
            .vertices
            .iter()
            .enumerate()
            .map(|(i, v)| (v.digest, i))
            .collect();
        misses.sort_by_key(|m| order.get(&m.vertex).copied().unwrap_or(usize::MAX));
        misses
    }

    /// The export phase: the outputs (one image, or an index of the platforms' images; layer
    /// blobs are made only for an image export, as in BuildKit), the `--cache-to` caches,
    /// then, the lease ended, the store's collection down to its limit.
    pub async fn export(&self, solved: Solved) -> Result<BuildOutcome, Error> {
        let Solved {
            req,
            progress,
            lease,
            frontend,
            mut warnings,
            steps,
            mut built,
            cache,
            explain,
            _agents,
            _stop_imports,
            attest: (attestations, materials, started),
        } = solved;
        let attester = crate::attest::Attester::new(
            &attestations,
            crate::attest::build_info(&req, &frontend, started),
            materials,
            req.tags.clone(),
            source_date_epoch(&req.build_args)?,
        )
        .map(Arc::new);
        let (image, index) = if built.len() > 1 {
            let index = if req.exports.is_empty() {
                None
            } else {
                self.export_platforms(&req, built, attester, progress.clone())
                    .await?
            };
            (None, index)
        } else {
            let inline = match &cache {
                Some(cx) => remote_cache::inline_config(cx, &req.cache_to).await?,
                None => None,
            };
            if req.exports.is_empty() {
                (None, None)
            } else {
                let one = built.pop().expect("a build has one result per platform");
                let (snapshot, config) = (one.snapshot, one.config);
                self.export_image(&req, snapshot, config, inline, attester, progress.clone())
                    .await?
            }
        };
        if let Some(cx) = cache {
            remote_cache::export_all(cx, &req.cache_to, progress.as_ref(), &mut warnings).await?;
        }
        self.collect_after_build(lease, &mut warnings).await;
        Ok(BuildOutcome {
            image,
            index,
            steps,
            warnings,
            frontend,
            call_result: None,
            explain,
        })
    }
}

/// A frontend's answer to `--call`, as JSON text: the response's `call_result` (protocol 3), or
/// else the [`CALL_RESULT_LABEL`] label of its config, where protocol 2 frontends put it (kept so
/// that an older frontend, e.g. one pinned by digest in `# syntax=`, still answers).
fn call_answer(
    call_result: Option<&serde_json::Value>,
    config: &kiln_types::image::ImageConfig,
) -> Option<String> {
    match call_result {
        Some(v) => Some(v.to_string()),
        None => config
            .config
            .labels
            .as_ref()
            .and_then(|l| l.get(CALL_RESULT_LABEL))
            .cloned(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
