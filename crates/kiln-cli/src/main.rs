//! The `kiln` command line: flags compatible with `docker buildx build` where they overlap,
//! parsed here into the engine's typed requests, and errors printed the way BuildKit prints
//! them (the Dockerfile lines around the failing one, then `ERROR: ...`).
//!
//! Architecture invariant: the CLI parses, wires and prints; it holds no build logic and never
//! depends on a frontend or plugin crate.

mod builders;
mod cache_spec;
mod call;
mod config;
mod du;
mod explain;
mod flags;
mod generate;
mod imagetools;
mod multiplatform;
mod output;
mod output_spec;
mod setup;
mod verify;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_engine::{
    BuildRequest, Call, Engine, EngineConfig, Entitlement, ExecRuntime, Export, RunOptions, Status,
};
use kiln_progress::{Mode, Renderer};
use kiln_solver::CancellationToken;
use kiln_types::Platform;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build OCI container images from Dockerfiles"
)]
struct Cli {
    /// Store root (default: $KILN_ROOT, then `root` in kiln.toml, then /var/lib/kiln as root,
    /// ~/.local/share/kiln otherwise).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Configuration file, read instead of /etc/kiln/kiln.toml and ~/.config/kiln/kiln.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a build.
    Build(Box<BuildArgs>),
    /// Manage plugins.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Show the kiln version and plugin ABI.
    Version,
    /// Show the configuration (kiln.toml, environment, flags).
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    Generate(generate::GenerateArgs),
    /// Disk usage of the store: each cache record, cache mount and blob, with a total.
    Du(du::DuArgs),
    /// Remove build cache (least recently used first; nothing a running build uses).
    Prune(du::PruneArgs),
    /// Check every blob of the store against its digest, and the records that use them.
    Verify(verify::VerifyArgs),
    /// Prepare this host: `kiln setup emulation` registers QEMU for other platforms.
    Setup {
        #[command(subcommand)]
        command: setup::SetupCommand,
    },
    /// Work on images in registries: `inspect` shows an index with its platforms, `create`
    /// merges images into one index without pulling layers (as buildx imagetools).
    Imagetools {
        #[command(subcommand)]
        command: imagetools::ImagetoolsCommand,
    },
    /// Manage builder instances (as buildx): named sets of `kiln serve` daemons a build goes
    /// to with `--builder NAME`; `default` is this machine's store.
    Builder {
        #[command(subcommand)]
        command: builders::BuilderCommand,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// List the plugins found on the search path, and the files refused.
    Ls {
        /// Extra directories to search.
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
    },
}

/// buildx's `--network` modes.
#[derive(Clone, Copy, ValueEnum)]
enum NetworkArg {
    Default,
    None,
    Host,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name of the Dockerfile (default: PATH/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (format: name:tag).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Set the target build stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Set build-time variables (KEY=VALUE, or KEY to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Output destination (format: type=local,dest=path | type=oci,dest=file.tar[,tar=false]).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Type of progress output (auto defers to $KILN_PROGRESS, then $BUILDKIT_PROGRESS).
    #[arg(long, value_enum, default_value = "auto")]
    progress: flags::Progress,
    /// Suppress the build output and print the image ID on success.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID (the config digest) to the file.
    #[arg(long)]
    iidfile: Option<PathBuf>,
    /// Write build result metadata (image digests, descriptor, names) to the file, as JSON.
    #[arg(long = "metadata-file")]
    metadata_file: Option<PathBuf>,
    /// Push the image to the registry of each `-t` name (shorthand for --output type=registry).
    #[arg(long)]
    push: bool,
    /// Load the image into docker (shorthand for --output type=docker): `docker load`, which
    /// honours DOCKER_HOST.
    #[arg(long)]
    load: bool,
    /// Add an annotation to the image (format: [type[platform]:]key=value; type is manifest,
    /// manifest-descriptor, index or index-descriptor).
    #[arg(long = "annotation")]
    annotations: Vec<String>,
    /// Always look base image tags up in their registry. kiln does at every build already
    /// (it keeps no tag-to-digest cache), so this is accepted for buildx's scripts.
    #[arg(long)]
    pull: bool,
    /// Do not use cache when building the image.
    #[arg(long)]
    no_cache: bool,
    /// Frontend to use instead of the file's `# syntax=` (a plugin name or path).
    #[arg(long)]
    frontend: Option<String>,
    /// Extra plugin directories.
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
    /// Additional build context (format: name=DIR | name=docker-image://REF | name=oci-layout://DIR[:tag]).
    #[arg(long = "build-context")]
    build_contexts: Vec<String>,
    /// Registry reached over plain http (loopback registries always are).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Secret to expose to the build (format: id=mysecret[,src=/local/secret] or id=X,env=VAR).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Runtime for RUN steps: kiln's embedded sandbox or runc (default: `worker.executor` in
    /// kiln.toml, else embedded).
    #[arg(long, value_enum)]
    executor: Option<config::Executor>,
    /// Target platform (os/arch[/variant]); RUN steps need the host's platform or emulation.
    #[arg(long)]
    platform: Option<String>,
    /// SSH agent socket or keys to expose to the build (format: default|<id>[=<socket>|<key>[,<key>]]).
    #[arg(long = "ssh")]
    ssh: Vec<String>,
    /// Networking mode of the RUN instructions (host grants the network.host entitlement, as buildx).
    #[arg(long, value_enum, default_value = "default")]
    network: NetworkArg,
    /// Allow extra privileged entitlement (network.host, security.insecure, device).
    #[arg(long = "allow")]
    allow: Vec<String>,
    /// Add a custom host-to-IP mapping to RUN steps (format: host:ip).
    #[arg(long = "add-host")]
    add_hosts: Vec<String>,
    /// Size of /dev/shm in RUN steps (e.g. 128m, 1g).
    #[arg(long = "shm-size")]
    shm_size: Option<String>,
    /// Ulimit of RUN steps (format: type=soft[:hard], e.g. nofile=1024:2048).
    #[arg(long = "ulimit")]
    ulimits: Vec<String>,
    /// Cache export destination (format: type=local,dest=DIR | type=registry,ref=REF |
    /// type=inline, with [,mode=min|max] and more: docs/cache.md).
    #[arg(long = "cache-to")]
    cache_to: Vec<String>,
    /// Cache import source (format: type=local,src=DIR[,tag=T] | type=registry,ref=REF | REF).
    #[arg(long = "cache-from")]
    cache_from: Vec<String>,
    /// Do not cache the specified stages.
    #[arg(long = "no-cache-filter")]
    no_cache_filter: Vec<String>,
    /// Set metadata for an image (format: key=value).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Ask the frontend instead of building (targets, outline, check; `,format=json` for JSON).
    #[arg(long)]
    call: Option<String>,
    /// Shorthand for `--call=check`.
    #[arg(long, conflicts_with = "call")]
    check: bool,
    /// Print, for each step that ran, what changed since the last build of the same target.
    #[arg(long = "explain-cache")]
    explain_cache: bool,
    /// Format of a --call result: text for people, json for programs.
    #[arg(long, value_enum, default_value = "text")]
    format: FormatArg,
    /// Build context directory (`-f -` reads the Dockerfile from stdin).
    context: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    // A bug must still read as a message, not as a Rust panic dump.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_owned());
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("ERROR: kiln hit an internal error: {msg}{at}; please report it");
    }));
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn run(cli: Cli) -> Result<ExitCode> {
    // Read only by the commands that use it: a broken kiln.toml must not stop `kiln version`.
    let config = || config::Config::from_process(cli.config.as_deref(), cli.root.clone());
    match cli.command {
        Command::Version => {
            println!(
                "kiln {} (plugin ABI {})",
                env!("CARGO_PKG_VERSION"),
                kiln_plugin_abi::ABI_VERSION
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins {
            command: PluginsCommand::Ls { plugin_dirs },
        } => {
            let dirs = config()?.plugin_dirs_with(&plugin_dirs);
            let registry = kiln_plugin_host::PluginRegistry::discover(
                &kiln_plugin_host::SearchPath::standard(&dirs),
            );
            output::plugins_table(&registry);
            Ok(ExitCode::SUCCESS)
        }
        Command::Build(args) => build(&config()?, *args),
        Command::Config { command } => config::run(&command, &config()?),
        Command::Generate(args) => generate::run(&args),
        Command::Du(args) => du::du(&config()?.root.value, &args),
        Command::Prune(args) => du::prune(&config()?.root.value, &args),
        Command::Verify(args) => verify::run(&config()?.root.value, &args),
        Command::Setup { command } => setup::run(&command),
        Command::Imagetools { command } => imagetools::run(&command, &config()?),
        Command::Builder { command } => builders::run(&command),
    }
}

/// Ctrl-C cancels the build: steps stop and kiln cleans up (unmounts, removes scratch data)
/// before it exits. A wait that cannot be cancelled would leave the user no way out, since the
/// handler keeps SIGINT from killing the process, so a second Ctrl-C exits at once, as
/// `docker compose` does. One listener serves both presses, so a quick second one is not lost.
async fn interrupts(cancel: CancellationToken) {
    let Ok(mut sigint) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    else {
        return;
    };
    if sigint.recv().await.is_none() {
        return;
    }
    eprintln!("\nCancelling the build (press Ctrl-C again to stop kiln at once)");
    cancel.cancel();
    if sigint.recv().await.is_some() {
        eprintln!("ERROR: interrupted twice: kiln stopped without cleaning up");
        std::process::exit(130);
    }
}

fn build(settings: &config::Config, args: BuildArgs) -> Result<ExitCode> {
    // First, while kiln is one thread: the build's mounts live in a namespace of its own and
    // vanish with it, even when it is killed. Where that is not permitted nothing is mounted.
    if let Err(e) = kiln_engine::isolate_mounts() {
        eprintln!("WARNING: {e}: a killed build may leave mounts behind");
    }
    // A URL or `-`: the engine fetches (or reads) it into a local context before the build.
    let remote = flags::remote_context(&args.context, args.file.as_deref())?;
    let context = PathBuf::from(&args.context);
    if remote.is_none() && !context.is_dir() {
        bail!(
            "unable to prepare context: path {:?} not found",
            context.display().to_string()
        );
    }
    // `-f -`: the Dockerfile comes from stdin. It is kept in a private file for the build, so
    // that error messages can show its lines like those of any other Dockerfile.
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
        (Some(c), false) => {
            call::parse_call(c)?.map(|(call, json)| (call, json || args.format == FormatArg::Json))
        }
        (None, false) => None,
    };
    // `--platform a,b,...` (as buildx) builds every platform in one solve into an index; RUN
    // steps of a platform the host does not run need emulation, which the engine checks (and
    // registers when it can) before the build starts.
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
    // The time BuildKit puts on the descriptor it reports (`--metadata-file`).
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
    let mut exports = args
        .outputs
        .iter()
        .map(|o| output_spec::parse_output(o))
        .collect::<Result<Vec<_>>>()?;
    if args.push {
        exports.push(Export::Registry {
            names: Vec::new(),
            format: Default::default(),
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

    let display = flags::resolve_progress(
        args.progress,
        args.quiet,
        |var| std::env::var(var).ok(),
        std::io::stderr().is_terminal(),
    )?;
    // Quiet still renders, into nothing: the renderer keeps each step's last lines either way.
    let (mode, sink): (Mode, Box<dyn std::io::Write + Send>) = match display.mode {
        Some(mode) => (mode, Box::new(std::io::stderr())),
        None => (Mode::Plain, Box::new(std::io::sink())),
    };
    let quiet = display.mode.is_none();
    let renderer = Arc::new(Renderer::new(mode, sink));
    // The steps' display numbers, which `--explain-cache` refers to.
    let progress = Arc::new(explain::Numbered::new(renderer.clone()));

    let engine = Engine::new(EngineConfig {
        root: settings.root.value.clone(),
        plugin_dirs: settings.plugin_dirs_with(&args.plugin_dirs),
        concurrency: settings
            .max_parallelism
            .value
            .map(std::num::NonZeroUsize::get),
        insecure_registries: args.insecure_registries.clone(),
        registries: settings.registry_hosts(),
        gc: settings.gc_policy(),
    })
    .context("opening the kiln store")?;
    for r in engine.plugins().refused() {
        if mode != Mode::RawJson {
            renderer.warning(&format!("plugin refused: {r}"));
        }
    }
    let req = BuildRequest {
        context,
        dockerfile: dockerfile.clone(),
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
            // As buildx: asking for `--network host` on the command line is the consent the
            // entitlement stands for (a Dockerfile alone never gets it).
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cancel = CancellationToken::new();
    // `-f` with a remote context names a file inside it (or, absolute, a local file).
    let remote_file = stdin_file.as_ref().map(|s| s.path()).or(args.file.clone());
    let (prepared, result) = rt.block_on(async {
        tokio::spawn(interrupts(cancel.clone()));
        let mut req = req;
        let prepared = match remote {
            Some(remote) => {
                let fetched = engine
                    .prepare_context(
                        remote,
                        remote_file.as_deref(),
                        &req.build_args,
                        progress.clone(),
                        cancel.clone(),
                    )
                    .await;
                match fetched {
                    Ok(p) => {
                        req.context = p.context().to_owned();
                        req.dockerfile = p.dockerfile().to_owned();
                        Some(p)
                    }
                    Err(e) => return (None, Err(e)),
                }
            }
            None => None,
        };
        (
            prepared,
            engine.build(req, progress.clone(), cancel.clone()).await,
        )
    });
    // The fetched context (and its Dockerfile, whose lines errors show) lives until kiln exits.
    let dockerfile = prepared
        .as_ref()
        .map_or(dockerfile, |p| p.dockerfile().to_owned());
    renderer.finish();
    // What scripts read back, written once the build succeeded, as buildx writes it.
    if let Ok(outcome) = &result {
        let image = multiplatform::built_index(outcome, &created);
        let image = image.or_else(|| {
            outcome.image.as_ref().map(|img| output::BuiltImage {
                manifest: img.manifest.clone(),
                config: img.manifest_doc.config.digest,
                created: created.clone(),
            })
        });
        if let Some(path) = &args.iidfile {
            output::write_iidfile(path, &output::image_id(image.as_ref()))?;
        }
        if let Some(path) = &args.metadata_file {
            let doc = output::metadata(image.as_ref(), &exports, &args.tags);
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
    }
    match result {
        Ok(kiln_engine::BuildOutcome {
            call_result: Some(json),
            ..
        }) => {
            // The engine answers a call only when one was asked for.
            let (call, raw) = call.unwrap_or((Call::Targets, true));
            call::print_call(call, &json, raw, &dockerfile)
        }
        Ok(_) if quiet => Ok(ExitCode::SUCCESS),
        Ok(outcome) => {
            for w in &outcome.warnings {
                let at = w
                    .location
                    .as_ref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                renderer.warning(&format!("{}{at}", w.message));
            }
            if exports.is_empty() {
                renderer.warning(
                    "No output specified: the build result stays only in kiln's cache. \
                     Use --output type=oci,dest=FILE.tar or --output type=local,dest=DIR",
                );
            }
            if args.explain_cache {
                for line in explain::lines(&outcome.explain, &progress, mode == Mode::RawJson) {
                    eprintln!("{line}");
                }
            }
            let ran = outcome
                .steps
                .iter()
                .filter(|(_, s)| matches!(s, Status::Executed { .. }))
                .count();
            let what = match (&outcome.index, &outcome.image) {
                (Some(index), _) => index.digest.to_string(),
                (None, Some(img)) => img.manifest.digest.to_string(),
                (None, None) => "the result".to_owned(),
            };
            // Programs reading rawjson get no human summary line; buildx prints none either.
            if mode == Mode::RawJson {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "\nbuilt {what} ({} steps, {} cached) with frontend {}",
                outcome.steps.len(),
                outcome.steps.len() - ran,
                outcome.frontend
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if let Some(pe) = e.plugin_error() {
                if let Some(loc) = &pe.location {
                    output::show_location(&dockerfile, loc.line as usize);
                }
            }
            // Quiet shows no step output, failed or not, as buildx's quiet display.
            if let Some((id, name)) = e.step().filter(|_| !quiet) {
                // BuildKit's summary: the step and the last lines it printed.
                let tail = renderer.tail(&id);
                if !tail.is_empty() {
                    eprintln!("------\n > {name}:");
                    for l in tail {
                        eprintln!("{l}");
                    }
                    eprintln!("------");
                }
            }
            if let Some(loc) = e.step_location() {
                output::show_location(&dockerfile, loc.line as usize);
            }
            eprintln!("ERROR: failed to solve: {}", output::error_chain(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}
