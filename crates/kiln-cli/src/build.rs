//! `kiln build`, shared by the local build and the remote one (`--builder`): the flags become
//! an engine [`BuildRequest`] (plus what only the client uses), progress is rendered by one
//! [`Renderer`], and an outcome or a failure is reported by one function each, so a remote
//! build prints exactly what a local build prints.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Result};
use kiln_engine::{
    BuildRequest, Call, Entitlement, ExecRuntime, Export, RemoteContext, RunOptions,
};
use kiln_progress::{Mode, Renderer};
use kiln_server::view::{FailureView, OutcomeView};
use kiln_types::Platform;

use crate::{
    cache_spec, call, config, explain, flags, multiplatform, output, output_spec, BuildArgs,
    FormatArg, NetworkArg,
};

/// What the client keeps of a `kiln build` command line beside the engine's request.
pub struct Plan {
    /// The request's exports (where outputs land, what `--metadata-file` reports).
    pub exports: Vec<Export>,
    /// A URL or `-` context: fetched by the engine before the build.
    pub remote: Option<RemoteContext>,
    /// `-f -`: the Dockerfile read from stdin, kept in a private file for the build.
    pub stdin_file: Option<flags::StdinDockerfile>,
    /// `--call` / `--check`, and whether its answer is printed as JSON.
    pub call: Option<(Call, bool)>,
    /// The time BuildKit puts on the descriptor it reports (`--metadata-file`).
    pub created: String,
    /// `--provenance`, `--sbom`, `--attest`, with buildx's default (provenance `mode=min`
    /// when pushing, unless `BUILDX_NO_DEFAULT_ATTESTATIONS` is set).
    pub attest: kiln_engine::Attestations,
}

impl Plan {
    /// Parses the flags of `kiln build` (everything but the engine's own settings) into the
    /// engine's request (its context and Dockerfile are local paths; a remote build syncs
    /// them) and what the client keeps.
    pub fn from_args(settings: &config::Config, args: &BuildArgs) -> Result<(Plan, BuildRequest)> {
        // A URL or `-`: the engine fetches (or reads) it into a local context before the build.
        let remote = flags::remote_context(&args.context, args.file.as_deref())?;
        let context = PathBuf::from(&args.context);
        if remote.is_none() && !context.is_dir() {
            bail!(
                "unable to prepare context: path {:?} not found",
                context.display().to_string()
            );
        }
        // `-f -`: the Dockerfile comes from stdin. It is kept in a private file for the build,
        // so that error messages can show its lines like those of any other Dockerfile.
        let stdin_file = match &args.file {
            Some(f) if f.as_os_str() == "-" => Some(flags::StdinDockerfile::read()?),
            _ => None,
        };
        let dockerfile = match (&stdin_file, &args.file) {
            (Some(s), _) => s.path(),
            (None, Some(f)) => f.clone(),
            (None, None) => context.join("Dockerfile"),
        };
        let call = match (&args.call, args.check) {
            (_, true) => Some((Call::Check, args.format == FormatArg::Json)),
            (Some(c), false) => call::parse_call(c)?
                .map(|(call, json)| (call, json || args.format == FormatArg::Json)),
            (None, false) => None,
        };
        // `--platform a,b,...` (as buildx) builds every platform in one solve into an index;
        // RUN steps of a platform the host does not run need emulation, which the engine
        // checks (and registers when it can) before the build starts.
        let platforms = match &args.platform {
            None => Vec::new(),
            Some(p) => multiplatform::parse_platforms(p)?,
        };
        let platform = platforms.first().cloned().unwrap_or_else(Platform::host);
        let mut build_args = BTreeMap::new();
        for a in &args.build_args {
            match a.split_once('=') {
                Some((k, v)) => {
                    build_args.insert(k.to_owned(), v.to_owned());
                }
                // buildx: `--build-arg KEY` takes the value from the environment, or is ignored.
                None => {
                    if let Ok(v) = std::env::var(a) {
                        build_args.insert(a.clone(), v);
                    }
                }
            }
        }
        // buildx passes SOURCE_DATE_EPOCH from the environment as a build argument.
        if !build_args.contains_key("SOURCE_DATE_EPOCH") {
            if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
                build_args.insert("SOURCE_DATE_EPOCH".to_owned(), v);
            }
        }
        // As buildx: a bad `-t` name fails before the build, not at export time.
        for tag in &args.tags {
            if let Err(e) = kiln_types::reference::Reference::parse_normalized(tag) {
                bail!("invalid tag {tag:?}: {e}");
            }
        }
        let created = kiln_types::image::rfc3339_utc(
            build_args
                .get("SOURCE_DATE_EPOCH")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                }),
        );
        let exports = exports(args)?;
        let attest_flags = kiln_engine::AttestFlags::parse(
            args.provenance.as_deref(),
            args.sbom.as_deref(),
            &args.attest,
        )?;
        let pushes = exports.iter().any(|e| matches!(e, Export::Registry { .. }));
        // buildx's switch for its default provenance.
        let no_default = kiln_engine::AttestFlags::default_disabled(
            std::env::var("BUILDX_NO_DEFAULT_ATTESTATIONS")
                .ok()
                .as_deref(),
        )?;
        let attest = attest_flags.request(pushes && !no_default);
        let attest_asked = attest_flags
            .provenance
            .as_ref()
            .is_some_and(Option::is_some)
            || attest_flags.sbom == Some(true);
        // buildx refuses attestations asked of its docker exporter (a docker archive holds
        // one image manifest, not the index they live in), with these words; the default
        // provenance of a push is inline-only and simply not loaded.
        if attest_asked {
            match exports
                .iter()
                .find(|e| matches!(e, Export::Docker { .. } | Export::Load { .. }))
            {
                Some(Export::Docker { .. }) => bail!(
                    "docker exporter does not support exporting manifest lists, use the oci \
                     exporter instead (--provenance, --sbom and --attest make an image index)"
                ),
                Some(_) => bail!(
                    "docker exporter does not currently support exporting manifest lists \
                     (--provenance, --sbom and --attest make an image index: build without them \
                     to --load, or use --output type=oci)"
                ),
                None => {}
            }
        }
        let req = BuildRequest {
            context,
            dockerfile,
            frontend: args.frontend.clone(),
            build_args,
            target: args.target.clone(),
            no_cache: args.no_cache,
            platform,
            platforms,
            exports: exports.clone(),
            tags: args.tags.clone(),
            secrets: args
                .secrets
                .iter()
                .map(|s| flags::parse_secret(s))
                .collect::<Result<_>>()?,
            build_contexts: args
                .build_contexts
                .iter()
                .map(|c| {
                    c.split_once('=')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                        .ok_or_else(|| {
                            anyhow::anyhow!("invalid --build-context {c:?}: expected name=value")
                        })
                })
                .collect::<Result<_>>()?,
            runtime: match args.executor.unwrap_or(settings.executor.value) {
                config::Executor::Embedded => ExecRuntime::Embedded,
                config::Executor::Runc => ExecRuntime::Runc,
            },
            ssh: args
                .ssh
                .iter()
                .map(|s| flags::parse_ssh(s))
                .collect::<Result<_>>()?,
            network: match args.network {
                NetworkArg::Default => kiln_engine::NetworkMode::Default,
                NetworkArg::None => kiln_engine::NetworkMode::None,
                NetworkArg::Host => kiln_engine::NetworkMode::Host,
            },
            allow: {
                let mut allow = args
                    .allow
                    .iter()
                    .flat_map(|a| a.split(','))
                    .map(|a| a.trim().parse::<Entitlement>().map_err(anyhow::Error::msg))
                    .collect::<Result<Vec<_>>>()?;
                // As buildx: asking for `--network host` on the command line is the consent
                // the entitlement stands for (a Dockerfile alone never gets it).
                if matches!(args.network, NetworkArg::Host) {
                    allow.push(Entitlement::NetworkHost);
                }
                allow.into_iter().collect()
            },
            run_options: RunOptions {
                extra_hosts: args
                    .add_hosts
                    .iter()
                    .map(|h| flags::parse_add_host(h))
                    .collect::<Result<_>>()?,
                shm_size: args
                    .shm_size
                    .as_deref()
                    .map(flags::parse_shm_size)
                    .transpose()?,
                ulimits: args
                    .ulimits
                    .iter()
                    .map(|u| flags::parse_ulimit(u))
                    .collect::<Result<_>>()?,
                limits: step_limits(settings, args)?,
            },
            no_cache_filter: args
                .no_cache_filter
                .iter()
                .flat_map(|f| f.split(','))
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect(),
            labels: args
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (l.clone(), String::new()),
                })
                .collect(),
            call: call.map(|(c, _)| c),
            cache_to: args
                .cache_to
                .iter()
                .map(|c| cache_spec::parse_cache_to(c))
                .collect::<Result<_>>()?,
            cache_from: args
                .cache_from
                .iter()
                .map(|c| cache_spec::parse_cache_from(c))
                .collect::<Result<_>>()?,
            explain_cache: args.explain_cache,
        };
        if let Some(path) = &args.iidfile {
            output::remove_stale_iidfile(path)?;
        }
        let plan = Plan {
            exports,
            remote,
            stdin_file,
            call,
            created,
            attest,
        };
        Ok((plan, req))
    }
}

/// `--output`, `--push`, `--load` and `--annotation`, checked against each other.
/// The cgroup limits of the RUN steps: each flag over its `[build]` key in kiln.toml.
fn step_limits(settings: &config::Config, args: &BuildArgs) -> Result<kiln_engine::StepLimits> {
    limits_from(
        settings,
        args.memory.as_deref(),
        args.cpu_quota,
        args.pids_limit,
    )
}

fn limits_from(
    settings: &config::Config,
    memory: Option<&str>,
    cpu_quota: Option<u64>,
    pids_limit: Option<u64>,
) -> Result<kiln_engine::StepLimits> {
    let memory = match memory {
        Some(spec) => Some(
            kiln_types::size::parse_ram_size(spec.trim())
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "invalid --memory {spec:?}: expected a size of at least one byte with an \
                         optional unit b, k, m, g, t (e.g. 512m)"
                    )
                })?,
        ),
        None => settings.memory.value,
    };
    // As docker: a CPU quota under 1 ms per period cannot be scheduled usefully.
    let cpu_quota = cpu_quota.or(settings.cpu_quota.value);
    if let Some(q) = cpu_quota.filter(|q| *q < 1000) {
        bail!("invalid CPU quota {q}: it must be at least 1000 microseconds (--cpu-quota, [build] cpu-quota)");
    }
    let pids = pids_limit.or(settings.pids_limit.value);
    if pids == Some(0) {
        bail!("invalid pids limit 0: a step needs at least one process (--pids-limit, [build] pids-limit)");
    }
    Ok(kiln_engine::StepLimits {
        memory,
        cpu_quota,
        pids,
    })
}

fn exports(args: &BuildArgs) -> Result<Vec<Export>> {
    let mut exports = args
        .outputs
        .iter()
        .map(|o| output_spec::parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    if args.push {
        exports.push(Export::Registry {
            names: Vec::new(),
            format: Default::default(),
            push_by_digest: false,
        });
    }
    if args.load {
        exports.push(Export::Load {
            format: Default::default(),
        });
    }
    // As buildx: `--annotation` applies to every image output.
    let annotations = args
        .annotations
        .iter()
        .map(|a| output_spec::parse_annotation(a))
        .collect::<Result<Vec<_>>>()?;
    if !annotations.is_empty() && !exports.iter().any(|e| e.image_format().is_some()) {
        bail!(
            "--annotation needs an image output: --output type=oci|docker|registry, --push or \
             --load"
        );
    }
    for format in exports.iter_mut().filter_map(Export::image_format_mut) {
        format.annotations.extend(annotations.iter().cloned());
    }
    // A push without `name=` goes to the `-t` names, as with buildx.
    for e in &mut exports {
        if let Export::Registry { names, .. } = e {
            if names.is_empty() {
                names.clone_from(&args.tags);
            }
            if names.is_empty() {
                bail!(
                    "pushing needs an image name: give -t registry/repo:tag (or name= in --output)"
                );
            }
        }
    }
    Ok(exports)
}

/// The progress display of a build.
pub struct Display {
    /// The renderer (its step tails are what a failure shows).
    pub renderer: Arc<Renderer<Box<dyn std::io::Write + Send>>>,
    /// The sink a build sends to: numbers steps for `--explain-cache`, then renders.
    pub progress: Arc<explain::Numbered>,
    /// The mode shown.
    pub mode: Mode,
    /// Quiet: nothing is shown, failed or not.
    pub quiet: bool,
    /// `-q`: print the image ID on stdout at the end.
    pub print_id: bool,
}

impl Display {
    /// The display `--progress`, `-q` and the environment ask for.
    pub fn from_args(args: &BuildArgs) -> Result<Display> {
        let choice = flags::resolve_progress(
            args.progress,
            args.quiet,
            |var| std::env::var(var).ok(),
            std::io::stderr().is_terminal(),
        )?;
        // Quiet still renders, into nothing: the renderer keeps each step's last lines either
        // way.
        let (mode, sink): (Mode, Box<dyn std::io::Write + Send>) = match choice.mode {
            Some(mode) => (mode, Box::new(std::io::stderr())),
            None => (Mode::Plain, Box::new(std::io::sink())),
        };
        let renderer = Arc::new(Renderer::new(mode, sink));
        // The steps' display numbers, which `--explain-cache` refers to.
        let progress = Arc::new(explain::Numbered::new(renderer.clone()));
        Ok(Display {
            renderer,
            progress,
            mode,
            quiet: choice.mode.is_none(),
            print_id: choice.print_id,
        })
    }
}

/// Reports a successful build: `--iidfile`, `--metadata-file`, the ID for `-q`, a `--call`
/// answer, warnings, `--explain-cache` and the summary line.
pub fn report_outcome(
    args: &BuildArgs,
    plan: &Plan,
    display: &Display,
    outcome: &OutcomeView,
    dockerfile: &Path,
) -> Result<ExitCode> {
    let exports = &plan.exports;
    // What scripts read back, written once the build succeeded, as buildx writes it.
    let image = multiplatform::built_index(outcome.index.as_ref(), &plan.created);
    let image = image.or_else(|| {
        outcome
            .image
            .as_ref()
            .map(|(manifest, config)| output::BuiltImage {
                manifest: manifest.clone(),
                config: *config,
                created: plan.created.clone(),
            })
    });
    if let Some(path) = &args.iidfile {
        output::write_iidfile(path, &output::image_id(image.as_ref()))?;
    }
    if let Some(path) = &args.metadata_file {
        let doc = output::metadata(image.as_ref(), exports, &args.tags);
        output::write_metadata_file(path, &doc)?;
    }
    // A tar on stdout (`-o -`) must stay a tar: the ID is not appended to it.
    let stdout_taken = exports.iter().any(|e| {
        matches!(
            e,
            Export::Tar {
                dest: kiln_engine::TarDest::Stdout
            }
        )
    });
    if display.print_id && outcome.call_result.is_none() && !stdout_taken {
        println!("{}", output::image_id(image.as_ref()));
    }
    if let Some(json) = &outcome.call_result {
        // The engine answers a call only when one was asked for.
        let (call, raw) = plan.call.unwrap_or((Call::Targets, true));
        return call::print_call(call, json, raw, dockerfile);
    }
    if display.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    for (message, location) in &outcome.warnings {
        let at = location
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        display.renderer.warning(&format!("{message}{at}"));
    }
    if exports.is_empty() {
        display.renderer.warning(
            "No output specified: the build result stays only in kiln's cache. \
             Use --output type=oci,dest=FILE.tar or --output type=local,dest=DIR",
        );
    }
    if args.explain_cache {
        for line in explain::lines(
            &outcome.explain,
            &display.progress,
            display.mode == Mode::RawJson,
        ) {
            eprintln!("{line}");
        }
    }
    let what = match (&outcome.index, &outcome.image) {
        (Some(index), _) => index.digest.to_string(),
        (None, Some((manifest, _))) => manifest.digest.to_string(),
        (None, None) => "the result".to_owned(),
    };
    // Programs reading rawjson get no human summary line; buildx prints none either.
    if display.mode == Mode::RawJson {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "\nbuilt {what} ({} steps, {} cached) with frontend {}",
        outcome.steps.len(),
        outcome.steps.len() - outcome.executed(),
        outcome.frontend
    );
    Ok(ExitCode::SUCCESS)
}

/// The file whose lines the excerpt of failure `e` shows: the build file `dockerfile`, unless
/// the error is located in another file, a fragment of the context `context` that an
/// instruction expanded (`INCLUDE`): that fragment's lines then, since the build file's lines
/// at that number are unrelated. A location that is not a plain path inside the context gives
/// an empty path, which shows no excerpt.
pub fn excerpt_file(e: &kiln_engine::Error, dockerfile: &Path, context: &Path) -> PathBuf {
    let located = e
        .plugin_error()
        .and_then(|pe| pe.location.as_ref())
        .map(|l| l.file.as_str())
        .or_else(|| e.step_location().map(|l| l.file.as_str()));
    excerpt_path(located, dockerfile, context)
}

/// [`excerpt_file`] for an error located in `located` (the file its location names): a
/// remote builder's failure names it (`FailureView::location_file`), and the client shows
/// the lines from its own context, as a local build does.
pub fn excerpt_path(located: Option<&str>, dockerfile: &Path, context: &Path) -> PathBuf {
    let Some(file) = located else {
        return dockerfile.to_owned();
    };
    if dockerfile.file_name().is_some_and(|n| n == file) {
        return dockerfile.to_owned();
    }
    let rel = Path::new(file);
    if rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        context.join(rel)
    } else {
        PathBuf::new()
    }
}

/// Reports a failed build as BuildKit does: the frontend error's line, the failing step with
/// its last lines, the step's Dockerfile excerpt, then `ERROR: failed to solve: ...`.
pub fn report_failure(display: &Display, failure: &FailureView, dockerfile: &Path) -> ExitCode {
    if let Some(line) = failure.frontend_line {
        output::show_location(dockerfile, line as usize);
    }
    // Quiet shows no step output, failed or not, as buildx's quiet display.
    if let Some((id, name)) = failure.step.as_ref().filter(|_| !display.quiet) {
        // BuildKit's summary: the step and the last lines it printed.
        let tail = display.renderer.tail(id);
        if !tail.is_empty() {
            eprintln!("------\n > {name}:");
            for l in tail {
                eprintln!("{l}");
            }
            eprintln!("------");
        }
    }
    if let Some(line) = failure.step_line {
        output::show_location(dockerfile, line as usize);
    }
    eprintln!("ERROR: failed to solve: {}", failure.message);
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_flags_override_the_file_and_parse_like_docker() {
        let env = |_: &str| None;
        let mut settings = config::Config::load(&config::Inputs {
            config_flag: None,
            root_flag: Some("/tmp/kiln-k2-none".into()),
            system_file: "/nonexistent/kiln.toml".into(),
            env: &env,
        })
        .unwrap();
        assert_eq!(
            limits_from(&settings, None, None, None).unwrap(),
            kiln_engine::StepLimits::default()
        );
        let l = limits_from(&settings, Some("32m"), Some(50_000), Some(16)).unwrap();
        assert_eq!(
            (l.memory, l.cpu_quota, l.pids),
            (Some(32 << 20), Some(50_000), Some(16))
        );
        assert_eq!(
            limits_from(&settings, Some("1g"), None, None)
                .unwrap()
                .memory,
            Some(1 << 30)
        );
        settings.memory.value = Some(512 << 20);
        settings.pids_limit.value = Some(8);
        let l = limits_from(&settings, Some("64m"), None, None).unwrap();
        assert_eq!((l.memory, l.pids), (Some(64 << 20), Some(8)));
        for bad in ["0", "12x", "m", "-1"] {
            let err = limits_from(&settings, Some(bad), None, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--memory"), "{bad}: {err}");
        }
        assert!(limits_from(&settings, None, Some(999), None).is_err());
        assert!(limits_from(&settings, None, None, Some(0)).is_err());
    }
}
