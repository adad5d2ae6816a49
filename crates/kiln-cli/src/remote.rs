//! `kiln build --builder ADDR|NAME`: the same flags as a local build, run on a `kiln serve`
//! daemon; progress, outputs and errors come back and are reported as a local build's.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_engine::Export;
use kiln_server::client::{Client, ClientTls};
use kiln_server::Address;
use kiln_solver::CancellationToken;

use crate::build::{report_failure, report_outcome, Display, Plan};
use crate::{builders, config, BuildArgs};

/// Runs the build on `builder`'s node.
pub fn build(
    settings: &config::Config,
    args: &BuildArgs,
    builder: &builders::Builder,
) -> Result<ExitCode> {
    let Some(node) = builder.nodes.first() else {
        bail!(
            "builder {:?} has no nodes: add one with `kiln builder create --append`",
            builder.name
        );
    };
    // The attestations travel as the client decided them (buildx's default provenance of a
    // push and BUILDX_NO_DEFAULT_ATTESTATIONS are read here, as buildx reads them); a daemon
    // that cannot make them is refused by the client before the build.
    let (mut plan, mut req) = Plan::from_args(settings, args)?;
    // `--ssh ID=KEYFILE`: as for a local build, the keys go into an agent of this machine
    // whose socket the relay serves to the daemon, as `--ssh ID=SOCKET`; no key leaves here.
    // The agents live until the build ends (dropped with `_agents`).
    let (ssh, _agents) = kiln_engine::serve_ssh_keys(&req.ssh)?;
    req.ssh = ssh;
    // `-f` with a URL or stdin context: inside it (relative) or a file of this machine
    // (absolute).
    let url_file = plan
        .stdin_file
        .as_ref()
        .map(|s| s.path())
        .or(args.file.clone());
    // A git or http(s) context is fetched by the daemon. Stdin (`-`) is read here, as a local
    // build reads it, into a private directory (removed when `_stdin` drops, after the build)
    // that is then synced as the main context.
    let mut _stdin = None;
    let url = match plan.remote.take() {
        None => None,
        Some(kiln_engine::RemoteContext::Git(u) | kiln_engine::RemoteContext::Http(u)) => Some(u),
        Some(kiln_engine::RemoteContext::Stdin(mut reader)) => {
            let prepared =
                kiln_engine::PreparedContext::from_stdin(&mut reader, url_file.as_deref())?;
            req.context = prepared.context().to_owned();
            req.dockerfile = prepared.dockerfile().to_owned();
            _stdin = Some(prepared);
            None
        }
    };
    if url.is_some() && builder.nodes.len() > 1 {
        bail!("a URL context with a builder of several nodes is not supported yet");
    }
    // `--load`: the daemon writes a docker-archive tarball that comes back to a private file
    // here (as `type=docker,dest=`), which is then loaded into the docker daemon this machine
    // reaches, as a local `--load` loads it. Docker is asked first, before anything is built.
    let mut loads = Vec::new();
    let load_dir = match req.exports.iter().any(|e| matches!(e, Export::Load { .. })) {
        true => {
            kiln_engine::docker_daemon_answers()?;
            Some(RemovedOnDrop(kiln_engine::private_temp_dir(
                "kiln-load",
                "load",
            )?))
        }
        false => None,
    };
    if let Some(dir) = &load_dir {
        for (n, export) in req.exports.iter_mut().enumerate() {
            if let Export::Load { format } = export {
                let dest = dir.0.join(format!("image-{n}.tar"));
                loads.push(dest.clone());
                *export = Export::Docker {
                    dest,
                    format: format.clone(),
                };
            }
        }
    }
    let display = Display::from_args(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cancel = CancellationToken::new();
    let progress = display.progress.clone();
    // Several nodes: each platform goes to a node that builds it (kiln_server::multinode); the
    // client pushes the index of a push, so it reaches registries as a local build does.
    let spread = match builder.nodes.len() {
        1 => None,
        _ => Some(
            kiln_registry::Registry::new(kiln_registry::RegistryOptions {
                insecure: args.insecure_registries.clone(),
                docker_config: None,
                hosts: settings.registry_hosts(),
            })
            .context("setting up the registry client")?,
        ),
    };
    // `--plugin` and `--allow-plugin` (with kiln.toml's `[plugins]`), as a local build takes
    // them: each daemon pulls into its own store and applies them to this build only.
    let plugins = kiln_server::client::PluginFlags {
        pull: settings.plugin_pull_with(&args.plugins),
        allow: settings.plugin_allow_with(&args.allow_plugins),
    };
    let result = rt.block_on(async {
        tokio::spawn(crate::interrupts(cancel.clone()));
        if let Some(registry) = &spread {
            let mut nodes = Vec::new();
            for n in &builder.nodes {
                nodes.push(kiln_server::multinode::Node {
                    name: n.name.clone(),
                    declared: n.platforms.clone(),
                    addr: Address::parse(&n.endpoint.to_string())?,
                    tls: client_tls(n),
                    plugins: plugins.clone(),
                    attest: plan.attest.clone(),
                });
            }
            let name = &builder.name;
            return kiln_server::multinode::build(name, nodes, &req, registry, progress, cancel)
                .await;
        }
        let mut client = connect(node)
            .await?
            .with_plugins(plugins)
            .with_attestations(plan.attest.clone());
        match &url {
            Some(u) => {
                client
                    .build_url(&req, u, url_file.as_deref(), progress, cancel.clone())
                    .await
            }
            None => client.build(&req, progress, cancel.clone()).await,
        }
    });
    display.renderer.finish();
    let result = result?;
    if result.is_ok() {
        for tarball in &loads {
            kiln_engine::load_docker_tarball(tarball)?;
        }
    }
    match result {
        Ok(outcome) => {
            // A `--check` of a build file only the daemon read shows its lines from a copy.
            let fetched = match &outcome.dockerfile {
                Some((name, text)) => Some(fetched_build_file(name, text)?),
                None => None,
            };
            let dockerfile = fetched
                .as_ref()
                .map_or(req.dockerfile.clone(), |(_, f)| f.clone());
            report_outcome(args, &plan, &display, &outcome, &dockerfile)
        }
        Err(failure) => {
            // A build file only the daemon read (inside a git or http context it fetched)
            // comes with the failure: its lines are shown from a private copy, as a local
            // build shows them from the file it fetched.
            let fetched = match &failure.dockerfile {
                Some((name, text)) => Some(fetched_build_file(name, text)?),
                None => None,
            };
            let dockerfile = fetched
                .as_ref()
                .map_or(req.dockerfile.clone(), |(_, f)| f.clone());
            // An error inside a fragment of the context (`INCLUDE`) shows the fragment's
            // lines, read from this machine's context as a local build reads them. Of a
            // context only the daemon fetched, the daemon sent the file the lines are in.
            let shown = match &fetched {
                Some(_) => dockerfile,
                None => crate::build::excerpt_path(
                    failure.location_file.as_deref(),
                    &dockerfile,
                    &req.context,
                ),
            };
            Ok(report_failure(&display, &failure, &shown))
        }
    }
}

/// Writes the build file the daemon sent into a private directory (removed when the returned
/// guard drops), under its own base name, which the excerpt shows.
fn fetched_build_file(name: &str, text: &[u8]) -> Result<(RemovedOnDrop, std::path::PathBuf)> {
    let name = std::path::Path::new(name)
        .file_name()
        .filter(|n| *n != "." && *n != "..")
        .map_or_else(|| "Dockerfile".into(), ToOwned::to_owned);
    let dir = RemovedOnDrop(kiln_engine::private_temp_dir("kiln-dockerfile", "failed")?);
    let file = dir.0.join(name);
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    Ok((dir, file))
}

/// Connects to a builder's node, with the node's TLS files (`kiln builder create
/// --driver-opt cacert=,cert=,key=,servername=`) when it has them.
pub async fn connect(node: &builders::store::Node) -> Result<Client, kiln_server::Error> {
    let addr = Address::parse(&node.endpoint.to_string())?;
    Client::connect_with(&addr, client_tls(node).as_ref()).await
}

/// A node's TLS files, as the client uses them.
fn client_tls(node: &builders::store::Node) -> Option<ClientTls> {
    node.tls.as_ref().map(|t| ClientTls {
        cacert: t.cacert.clone(),
        cert: t.cert.clone().zip(t.key.clone()),
        servername: t.servername.clone(),
    })
}

/// A directory removed, with what it holds, when dropped.
struct RemovedOnDrop(std::path::PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
