//! The `kiln` command line: flags compatible with `docker buildx build` where they overlap,
//! parsed here into the engine's typed requests, and errors printed the way BuildKit prints
//! them (the Dockerfile lines around the failing one, then `ERROR: ...`).
//!
//! Architecture invariant: the CLI parses, wires and prints; it holds no build logic and never
//! depends on a frontend or plugin crate.

mod build;
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
mod plugins;
mod remote;
mod rootless;
mod serve;
mod setup;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_engine::Engine;
use kiln_progress::Mode;
use kiln_solver::CancellationToken;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build OCI container images from Dockerfiles"
)]
struct Cli {
    /// Store root (default: $KILN_ROOT, then `root` in kiln.toml, then /var/lib/kiln as root,
    /// $XDG_DATA_HOME/kiln or ~/.local/share/kiln otherwise).
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
    /// Run the build daemon: builds sent with `kiln build --builder ADDR` run on this store.
    Serve(serve::ServeArgs),
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
    /// Publish a plugin library to a registry as an OCI artifact; prints REF@sha256:… to pin.
    Push(plugins::PushArgs),
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
    /// Shorthand for "--attest=type=provenance" (true, false, mode=min|max[,version=v0.2|v1]).
    /// On in mode=min when pushing, as in buildx; false removes it.
    #[arg(long)]
    provenance: Option<String>,
    /// Shorthand for "--attest=type=sbom" (true or false).
    #[arg(long)]
    sbom: Option<String>,
    /// Attestation parameters (format: "type=provenance|sbom[,disabled=true][,mode=max,...]").
    #[arg(long)]
    attest: Vec<String>,
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
    /// Pull an instruction or primitive plugin from a registry for this build
    /// (REGISTRY/REPO@sha256:…, as `kiln plugins push` prints it).
    #[arg(long = "plugin", value_name = "REF")]
    plugins: Vec<String>,
    /// Let plugin references matching this glob be used without a digest (resolved at build
    /// time); adds to kiln.toml's `[plugins] allow`.
    #[arg(long = "allow-plugin", value_name = "PATTERN")]
    allow_plugins: Vec<String>,
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
    /// Memory limit of each RUN step (e.g. 512m, 1g; default: [build] memory in kiln.toml).
    #[arg(short = 'm', long = "memory")]
    memory: Option<String>,
    /// CPU time of each RUN step in microseconds per 100 ms period (docker's --cpu-quota).
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<u64>,
    /// Most processes and threads of each RUN step (docker run's --pids-limit).
    #[arg(long = "pids-limit")]
    pids_limit: Option<u64>,
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
    /// Builder to build on (a name from `kiln builder ls`, or unix://PATH, tcp://HOST:PORT of
    /// a `kiln serve`); default: $KILN_BUILDER, then `kiln builder use`, then this machine.
    #[arg(long)]
    builder: Option<String>,
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
    // Before any thread starts: an ordinary user's store commands run in a user namespace
    // (rootless.rs); the parent only waits for the child that ran the command.
    match rootless::enter(|| needs_store(&cli)) {
        Ok(rootless::Entered::Continue) => {}
        Ok(rootless::Entered::Exited(code)) => return code,
        Err(e) => {
            eprintln!("ERROR: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ERROR: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether the command reads or writes the store or runs steps, which rootless kiln does in
/// a user namespace; `version`, `config`, registry commands and builds sent to a daemon
/// (`--builder`) run as the user.
fn needs_store(cli: &Cli) -> bool {
    match &cli.command {
        Command::Build(args) => !matches!(
            builders::resolve(args.builder.as_deref()),
            Ok(builders::Selected::Remote(_))
        ),
        Command::Du(_)
        | Command::Prune(_)
        | Command::Verify(_)
        | Command::Serve(_)
        | Command::Plugins {
            command: PluginsCommand::Ls { .. },
        } => true,
        Command::Version
        | Command::Config { .. }
        | Command::Generate(_)
        | Command::Setup { .. }
        | Command::Imagetools { .. }
        | Command::Builder { .. }
        | Command::Plugins {
            command: PluginsCommand::Push(_),
        } => false,
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
        } => plugins::ls(&config()?, &plugin_dirs),
        Command::Plugins {
            command: PluginsCommand::Push(args),
        } => plugins::push(&config()?, &args),
        Command::Build(args) => build(&config()?, *args),
        Command::Config { command } => config::run(&command, &config()?),
        Command::Generate(args) => generate::run(&args),
        Command::Du(args) => du::du(&config()?.root.value, &args),
        Command::Prune(args) => du::prune(&config()?.root.value, &args),
        Command::Verify(args) => verify::run(&config()?.root.value, &args),
        Command::Setup { command } => setup::run(&command),
        Command::Imagetools { command } => imagetools::run(&command, &config()?),
        Command::Serve(args) => serve::run(&config()?, &args),
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
    // `--builder`, `KILN_BUILDER`, `kiln builder use`: a daemon builds; `default` is this
    // process, as before.
    if let builders::Selected::Remote(builder) = builders::resolve(args.builder.as_deref())? {
        return remote::build(settings, &args, &builder);
    }
    // First, while kiln is one thread: the build's mounts live in a namespace of its own and
    // vanish with it, even when it is killed. Where that is not permitted nothing is mounted.
    if let Err(e) = kiln_engine::isolate_mounts() {
        eprintln!("WARNING: {e}: a killed build may leave mounts behind");
    }
    let (mut plan, req) = build::Plan::from_args(settings, &args)?;
    let display = build::Display::from_args(&args)?;
    let mut engine =
        Engine::new(settings.engine_config(&args.plugin_dirs, &args.insecure_registries))
            .context("opening the kiln store")?;
    engine.allow_plugins(settings.plugin_allow_with(&args.allow_plugins));
    for r in engine.plugins().refused() {
        if display.mode != Mode::RawJson {
            display.renderer.warning(&format!("plugin refused: {r}"));
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Pulled instruction and primitive plugins join the installed ones before the frontend
    // runs, so that it finds their instructions.
    let pulls = settings.plugin_pull_with(&args.plugins);
    for line in rt.block_on(engine.add_plugins(&pulls))? {
        if display.mode != Mode::RawJson {
            eprintln!("{line}");
        }
    }
    let cancel = CancellationToken::new();
    let dockerfile = req.dockerfile.clone();
    let context = req.context.clone();
    // `-f` with a remote context names a file inside it (or, absolute, a local file).
    let remote_file = plan
        .stdin_file
        .as_ref()
        .map(|s| s.path())
        .or(args.file.clone());
    let progress = display.progress.clone();
    let (prepared, result) = rt.block_on(async {
        tokio::spawn(interrupts(cancel.clone()));
        let mut req = req;
        let prepared = match plan.remote.take() {
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
            engine
                .build_attested(req, plan.attest.clone(), progress.clone(), cancel.clone())
                .await,
        )
    });
    // The fetched context (and its Dockerfile, whose lines errors show) lives until kiln exits.
    let dockerfile = prepared
        .as_ref()
        .map_or(dockerfile, |p| p.dockerfile().to_owned());
    let context = prepared
        .as_ref()
        .map_or(context, |p| p.context().to_owned());
    display.renderer.finish();
    match result {
        Ok(outcome) => build::report_outcome(
            &args,
            &plan,
            &display,
            &kiln_server::view::OutcomeView::from_engine(outcome),
            &dockerfile,
        ),
        Err(e) => Ok(build::report_failure(
            &display,
            &kiln_server::view::FailureView::from_engine(&e),
            &build::excerpt_file(&e, &dockerfile, &context),
        )),
    }
}
