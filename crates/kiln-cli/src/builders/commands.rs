//! `kiln builder create|ls|use|rm|inspect`, with buildx's flags, messages and tables.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_types::Platform;

use kiln_server::Address;

use super::store::{looks_like_address, validate_name, Builder, Driver, Node, Store, Tls};
use super::{resolve, Selected, DEFAULT};

/// `kiln builder` subcommands.
#[derive(clap::Subcommand)]
pub enum BuilderCommand {
    /// Create a new builder instance, or add a node to one (`--append`), as buildx create.
    Create(CreateArgs),
    /// List builder instances and their nodes.
    Ls(LsArgs),
    /// Set the current builder instance (`default`: the local store).
    Use(UseArgs),
    /// Remove one or more builder instances (the daemons keep running).
    Rm(RmArgs),
    /// Show a builder's nodes: endpoints, status, platforms declared and reported.
    Inspect(InspectArgs),
}

/// `kiln builder create` flags (buildx's).
#[derive(clap::Args)]
pub struct CreateArgs {
    /// Builder instance name (default: a generated one).
    #[arg(long)]
    name: Option<String>,
    /// Driver to use (available: "remote": a `kiln serve` started by other means).
    #[arg(long, default_value = "remote")]
    driver: String,
    /// Create/modify node with given name (default: the builder's name and a number).
    #[arg(long)]
    node: Option<String>,
    /// Fixed platforms for current node (os/arch[/variant], comma-separated or repeated).
    #[arg(long)]
    platform: Vec<String>,
    /// Append a node to builder instead of changing it.
    #[arg(long)]
    append: bool,
    /// Remove a node from builder instead of changing it.
    #[arg(long, conflicts_with = "append")]
    leave: bool,
    /// Options for the driver: cacert=, cert=, key=, servername= (TLS files of the node).
    #[arg(long = "driver-opt")]
    driver_opts: Vec<String>,
    /// Set the current builder instance.
    #[arg(long = "use")]
    use_it: bool,
    /// Check that every node's daemon answers once the builder is saved (buildx boots it).
    #[arg(long)]
    bootstrap: bool,
    #[command(flatten)]
    timeout: TimeoutArg,
    /// The daemon's address: unix:///path/to.sock or tcp://HOST:PORT.
    endpoint: Option<String>,
}

/// How long `ls`/`inspect` wait for each node's answer.
#[derive(clap::Args)]
pub struct TimeoutArg {
    /// Override the default timeout for loading builder status (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    timeout: Duration,
}

/// `kiln builder ls` flags.
#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    timeout: TimeoutArg,
    /// Don't truncate output (the platform lists).
    #[arg(long = "no-trunc")]
    no_trunc: bool,
    /// Format the output: `table`, or `json` (one object per builder and line, for scripts).
    #[arg(long, value_enum, default_value = "table")]
    format: LsFormat,
}

/// `kiln builder ls --format`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LsFormat {
    Table,
    Json,
}

/// `kiln builder use` flags.
#[derive(clap::Args)]
pub struct UseArgs {
    /// The builder (`default` for the local store).
    name: String,
}

/// `kiln builder rm` flags.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Builders to remove (default: the current one).
    names: Vec<String>,
}

/// `kiln builder inspect` flags.
#[derive(clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    timeout: TimeoutArg,
    /// The builder (default: the selected one: $KILN_BUILDER, then `kiln builder use`'s).
    name: Option<String>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("invalid duration {text:?} (e.g. 5s, 500ms, 1m)"))
}

/// Runs a `kiln builder` subcommand.
pub fn run(command: &BuilderCommand) -> Result<ExitCode> {
    let env = |name: &str| std::env::var_os(name);
    let store = Store::locate(&env).context(
        "cannot find where builders are kept: set HOME (builders live in \
         $XDG_CONFIG_HOME/kiln/builders, else $HOME/.config/kiln/builders)",
    )?;
    match command {
        BuilderCommand::Create(args) => create(&store, args),
        BuilderCommand::Ls(args) => ls(&store, args),
        BuilderCommand::Use(args) => use_builder(&store, &args.name),
        BuilderCommand::Rm(args) => rm(&store, &args.names),
        BuilderCommand::Inspect(args) => inspect(&store, args),
    }
}

// ---- create ----

/// What `create` asks for, parsed.
struct CreateRequest {
    append: bool,
    leave: bool,
    node: Option<String>,
    platforms: Vec<Platform>,
    tls: Option<Tls>,
    endpoint: Option<Address>,
}

fn create(store: &Store, args: &CreateArgs) -> Result<ExitCode> {
    if args.driver != "remote" {
        bail!(
            "driver {:?} is not supported: kiln builders use the \"remote\" driver (a `kiln \
             serve` started by other means; see docs/scale-out.md)",
            args.driver
        );
    }
    let name = args.name.as_deref().map(validate_name).transpose()?;
    if name.as_deref() == Some(DEFAULT) {
        bail!("default is a reserved name and cannot be used to identify builder instance");
    }
    if (args.append || args.leave) && name.is_none() {
        bail!(
            "{} requires a builder name (--name)",
            if args.append { "--append" } else { "--leave" }
        );
    }
    let endpoint = args
        .endpoint
        .as_deref()
        .map(|e| Address::parse(e).with_context(|| format!("invalid endpoint {e:?}")))
        .transpose()?;
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let req = CreateRequest {
        append: args.append,
        leave: args.leave,
        node: args.node.as_deref().map(validate_name).transpose()?,
        platforms: parse_platforms(&args.platform)?,
        tls: parse_driver_opts(&args.driver_opts, &cwd)?,
        endpoint,
    };
    let builder = save_change(store, name, req, args.use_it)?;
    if args.bootstrap {
        // As buildx: the builder stays saved; what failed is said, and the exit status shows it.
        let states = probe_all(std::slice::from_ref(&builder), args.timeout.timeout);
        let states = states.first().map_or(&[][..], Vec::as_slice);
        for (n, st) in builder.nodes.iter().zip(states) {
            if !st.running {
                bail!(
                    "failed to bootstrap builder {} (node {}): {}",
                    builder.name,
                    n.name,
                    st.error.as_deref().unwrap_or("the daemon did not answer")
                );
            }
        }
    }
    println!("{}", builder.name);
    Ok(ExitCode::SUCCESS)
}

/// Applies `req` to the builder `name` (a new one, generated, when `None`) and saves it, all
/// under the store's lock, so that concurrent `create --append` each add their node.
fn save_change(
    store: &Store,
    name: Option<String>,
    req: CreateRequest,
    make_current: bool,
) -> Result<Builder> {
    let _lock = store.lock()?;
    let name = match name {
        Some(n) => n,
        None => generate_name(store)?,
    };
    let existing = store.get(&name)?;
    let builder = apply(existing, &name, req)?;
    store.save(&builder)?;
    if make_current {
        store.set_current(Some(&builder.name))?;
    }
    Ok(builder)
}

/// `--platform` values: each a comma-separated list, checked and normalized, repeats dropped.
fn parse_platforms(values: &[String]) -> Result<Vec<Platform>> {
    let mut out = Vec::new();
    for v in values {
        for p in crate::multiplatform::parse_platforms(v)? {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// `--driver-opt k=v[,k=v]` into the node's TLS files, checked as buildx's remote driver
/// checks them (a CA is needed once any TLS option is given, a cert goes with a key). A
/// relative path is taken from `cwd` and stored absolute, since builds run from anywhere.
fn parse_driver_opts(values: &[String], cwd: &Path) -> Result<Option<Tls>> {
    let (mut cacert, mut cert, mut key, mut servername) = (None, None, None, None);
    for opt in values.iter().flat_map(|v| v.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let Some((k, v)) = opt.split_once('=') else {
            bail!("invalid --driver-opt {opt:?}: expected key=value");
        };
        let file = |v: &str| -> Result<PathBuf> {
            let p = cwd.join(v);
            if !p.is_file() {
                bail!("--driver-opt {k}: {} is not a file", p.display());
            }
            Ok(p)
        };
        match k.trim() {
            "cacert" => cacert = Some(file(v)?),
            "cert" => cert = Some(file(v)?),
            "key" => key = Some(file(v)?),
            "servername" => servername = Some(v.to_owned()),
            other => bail!(
                "invalid driver option {other:?} for remote driver (known: cacert, cert, key, \
                 servername)"
            ),
        }
    }
    if cacert.is_none() && cert.is_none() && key.is_none() && servername.is_none() {
        return Ok(None);
    }
    let mut missing = Vec::new();
    if cacert.is_none() {
        missing.push("cacert");
    }
    if cert.is_some() && key.is_none() {
        missing.push("key");
    }
    if key.is_some() && cert.is_none() {
        missing.push("cert");
    }
    let Some(cacert) = cacert.filter(|_| missing.is_empty()) else {
        bail!(
            "tls enabled, but missing keys {} (--driver-opt cacert=FILE,cert=FILE,key=FILE)",
            missing.join(", ")
        );
    };
    Ok(Some(Tls {
        cacert,
        cert,
        key,
        servername,
    }))
}

/// A name for a builder given none, as docker's name generator makes them
/// (`adjective_surname`), not taken yet.
fn generate_name(store: &Store) -> Result<String> {
    const ADJECTIVES: &[&str] = &[
        "amazing", "brave", "clever", "eager", "focused", "gallant", "happy", "jolly", "keen",
        "loving", "modest", "nifty", "quirky", "serene", "trusting", "vibrant",
    ];
    const NAMES: &[&str] = &[
        "babbage", "curie", "darwin", "euler", "fermi", "galois", "hopper", "kepler", "lovelace",
        "meitner", "noether", "pascal", "ritchie", "shannon", "turing", "wozniak",
    ];
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..8 {
        // The standard library's per-process random keys are random enough for a name.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let adjective = ADJECTIVES[(r % ADJECTIVES.len() as u64) as usize];
        let surname = NAMES[((r >> 32) % NAMES.len() as u64) as usize];
        let name = format!("{adjective}_{surname}");
        if store.get(&name)?.is_none() {
            return Ok(name);
        }
    }
    bail!("failed to generate a free builder name: give one with --name")
}

/// The builder after `create`: a new one, a node added (`--append`), changed (`--node` of an
/// existing node) or removed (`--leave`), with buildx's rules and messages.
fn apply(existing: Option<Builder>, name: &str, req: CreateRequest) -> Result<Builder> {
    if req.leave {
        let Some(mut b) = existing else {
            bail!("failed to find instance {name:?} for leave");
        };
        let Some(node) = req.node else {
            bail!("--leave requires the node to remove (--node)");
        };
        let Some(i) = b.nodes.iter().position(|n| n.name == node) else {
            bail!("node {node:?} not found for {name}");
        };
        if b.nodes.len() == 1 {
            bail!("can not leave last node, do you want to rm instance instead?");
        }
        b.nodes.remove(i);
        return Ok(b);
    }
    let mut b = match existing {
        Some(b) => {
            if req.node.is_none() && !req.append {
                bail!(
                    "existing instance for {name:?} but no append mode, specify the node name \
                     to make changes for existing instances"
                );
            }
            b
        }
        None if req.append => bail!("failed to find instance {name:?} for append"),
        None => Builder {
            name: name.to_owned(),
            driver: Driver::Remote,
            nodes: Vec::new(),
        },
    };
    let found = req
        .node
        .as_deref()
        .and_then(|n| b.nodes.iter().position(|x| x.name == n));
    let index = match (found, req.append) {
        (Some(_), true) => bail!(
            "node {:?} already exists in builder {name:?}: choose another --node name, or \
             leave out --append to change that node",
            req.node.unwrap_or_default()
        ),
        (Some(i), false) => {
            let n = &mut b.nodes[i];
            if let Some(e) = req.endpoint {
                n.endpoint = e;
            }
            if !req.platforms.is_empty() {
                n.platforms = req.platforms;
            }
            if req.tls.is_some() {
                n.tls = req.tls;
            }
            i
        }
        (None, false) if !b.nodes.is_empty() => bail!(
            "node {} not found, did you mean to append?",
            req.node.unwrap_or_default()
        ),
        (None, _) => {
            let Some(endpoint) = req.endpoint else {
                bail!(
                    "no remote endpoint provided: give the daemon's address, \
                     unix:///path/to.sock or tcp://HOST:PORT"
                );
            };
            let node = match req.node {
                Some(n) => n,
                None => b.next_node_name(),
            };
            b.nodes.push(Node {
                name: node,
                endpoint,
                platforms: req.platforms,
                tls: req.tls,
            });
            b.nodes.len() - 1
        }
    };
    let changed = &b.nodes[index];
    if let Some(other) = b
        .nodes
        .iter()
        .enumerate()
        .find(|(i, n)| *i != index && n.endpoint == changed.endpoint)
        .map(|(_, n)| n)
    {
        bail!(
            "invalid duplicate endpoint {}: node {:?} of {name:?} uses it already",
            changed.endpoint,
            other.name
        );
    }
    // As buildx: a platform is declared by one node only, the last one given it, so that a
    // multi-node build knows where each platform goes.
    let declared = changed.platforms.clone();
    for (i, n) in b.nodes.iter_mut().enumerate() {
        if i != index {
            n.platforms.retain(|p| !declared.contains(p));
        }
    }
    Ok(b)
}

// ---- use, rm ----

fn use_builder(store: &Store, name: &str) -> Result<ExitCode> {
    let _lock = store.lock()?;
    if name.eq_ignore_ascii_case(DEFAULT) {
        store.set_current(None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(b) = store.get(name)? else {
        return Err(store.not_found(name, "kiln builder use"));
    };
    store.set_current(Some(&b.name))?;
    Ok(ExitCode::SUCCESS)
}

fn rm(store: &Store, names: &[String]) -> Result<ExitCode> {
    let _lock = store.lock()?;
    let names = if names.is_empty() {
        // buildx removes the current builder when none is named.
        vec![store.current()?.unwrap_or_else(|| DEFAULT.to_owned())]
    } else {
        names.to_vec()
    };
    let current = store.current()?;
    let mut failed = false;
    for name in &names {
        let result = if name.eq_ignore_ascii_case(DEFAULT) {
            Err(anyhow::anyhow!(
                "the default builder (this machine's store) cannot be removed"
            ))
        } else {
            match store.get(name) {
                Ok(Some(b)) => store.remove(&b.name).map(|_| b.name),
                Ok(None) => Err(store.not_found(name, "kiln builder rm")),
                Err(e) => Err(e),
            }
            .and_then(|removed| {
                // Removing the current builder makes `default` current again.
                if current.as_deref() == Some(removed.as_str()) {
                    store.set_current(None)?;
                }
                Ok(())
            })
        };
        match result {
            Ok(()) => eprintln!("{name} removed"),
            Err(e) => {
                failed = true;
                eprintln!("failed to remove {name}: {e:#}");
            }
        }
    }
    if failed {
        bail!("failed to remove one or more builders");
    }
    Ok(ExitCode::SUCCESS)
}

// ---- status of nodes ----

/// What a node answered (or not).
#[derive(Clone, Debug, Default)]
struct NodeState {
    running: bool,
    /// The platforms the daemon reports it builds.
    reported: Vec<Platform>,
    /// The daemon's version, when it answered.
    version: Option<String>,
    /// Why it could not be asked.
    error: Option<String>,
}

impl NodeState {
    fn status(&self) -> &'static str {
        if self.running {
            "running"
        } else {
            "inactive"
        }
    }
}

/// Asks every node of every builder at once (`Info`), each bounded by `timeout`.
fn probe_all(builders: &[Builder], timeout: Duration) -> Vec<Vec<NodeState>> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let failed = NodeState {
                error: Some(format!("starting the async runtime: {e}")),
                ..NodeState::default()
            };
            return builders
                .iter()
                .map(|b| vec![failed.clone(); b.nodes.len()])
                .collect();
        }
    };
    rt.block_on(async {
        // Every question is asked before any answer is awaited, so the nodes answer in
        // parallel and the whole listing takes one timeout at most.
        let asked: Vec<Vec<_>> = builders
            .iter()
            .map(|b| {
                b.nodes
                    .iter()
                    .map(|n| tokio::spawn(probe(n.clone(), timeout)))
                    .collect()
            })
            .collect();
        let mut out = Vec::with_capacity(asked.len());
        for handles in asked {
            let mut states = Vec::with_capacity(handles.len());
            for h in handles {
                states.push(h.await.unwrap_or_else(|e| NodeState {
                    error: Some(format!("the status check failed: {e}")),
                    ..NodeState::default()
                }));
            }
            out.push(states);
        }
        out
    })
}

/// One node's state from the daemon's `Info` answer: `running` with its version and platforms,
/// or `inactive` (as buildx shows a remote node it cannot reach) with the reason.
async fn probe(node: Node, timeout: Duration) -> NodeState {
    let failed = |why: String| NodeState {
        error: Some(why),
        ..NodeState::default()
    };
    // Connected as a build connects (the node's TLS files when it has them).
    let ask = async {
        let mut client = crate::remote::connect(&node).await?;
        client.info().await
    };
    match tokio::time::timeout(timeout, ask).await {
        Err(_) => failed(format!(
            "cannot reach builder at {}: no answer within {timeout:?}",
            node.endpoint
        )),
        Ok(Err(e)) => failed(e.to_string()),
        Ok(Ok(info)) => {
            let mut reported = Vec::new();
            let mut unknown = Vec::new();
            for p in &info.platforms {
                match p.parse::<Platform>() {
                    Ok(p) => reported.push(p.normalize()),
                    Err(_) => unknown.push(p.clone()),
                }
            }
            NodeState {
                running: true,
                reported,
                version: Some(info.version).filter(|v| !v.is_empty()),
                error: (!unknown.is_empty())
                    .then(|| format!("the daemon reports platforms kiln cannot read: {unknown:?}")),
            }
        }
    }
}

/// The local builder's platforms: what this host runs, natively then by emulation.
fn local_platforms() -> Vec<String> {
    let emulation = kiln_emulation::Emulation::from_host();
    match emulation.status() {
        Ok(s) => s.supported,
        Err(_) => emulation.native().iter().map(ToString::to_string).collect(),
    }
}

/// buildx's platform list: the declared ones marked `*`, then the reported ones not declared.
fn platforms_list(declared: &[Platform], reported: &[Platform]) -> Vec<String> {
    let mut seen: Vec<Platform> = Vec::new();
    let mut out = Vec::new();
    for (group, mark) in [(declared, "*"), (reported, "")] {
        for p in group {
            let p = p.normalize();
            if !seen.contains(&p) {
                out.push(format!("{p}{mark}"));
                seen.push(p);
            }
        }
    }
    out
}

/// The families `ls` shows first when it shortens a list, as buildx orders them.
const MAJOR_PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
    "linux/mips64",
];

/// buildx's short form of a long platform list in `ls`: at most `max` families (`os/arch`),
/// a family of several variants shown once with their count (`linux/amd64 (+3)`, `*` kept
/// when one of them is declared), then how many were left out (`(5 more)`).
fn truncate_platforms(list: &[String], max: usize) -> String {
    let family = |p: &str| -> String {
        let p = p.trim_end_matches('*');
        let mut parts = p.splitn(3, '/');
        match (parts.next(), parts.next()) {
            (Some(os), Some(arch)) => format!("{os}/{arch}"),
            _ => p.to_owned(),
        }
    };
    // The families taken, in buildx's order: the major ones first, then the others as met,
    // stopping once `max` families are taken.
    let mut groups: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for major in MAJOR_PLATFORMS {
        for p in list {
            if groups.len() >= max {
                break;
            }
            if family(p) == *major {
                groups.entry((*major).to_owned()).or_default().push(p);
            }
        }
    }
    let mut others: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for p in list {
        if groups.len() >= max {
            break;
        }
        if !groups.contains_key(&family(p)) {
            others.entry(family(p)).or_default().push(p);
        }
    }
    groups.extend(others);
    let shown = |key: &str, members: &[&str]| -> String {
        match members {
            [one] => (*one).to_owned(),
            _ => {
                let star = if members.iter().any(|m| m.ends_with('*')) {
                    "*"
                } else {
                    ""
                };
                format!("{key}{star} (+{})", members.len())
            }
        }
    };
    let mut out = Vec::new();
    let mut count = 0;
    for major in MAJOR_PLATFORMS {
        if let Some(members) = groups.get(*major) {
            out.push(shown(major, members));
            count += members.len();
        }
    }
    for (key, members) in &groups {
        if out.len() >= max {
            break;
        }
        if MAJOR_PLATFORMS.contains(&key.as_str()) {
            continue;
        }
        out.push(shown(key, members));
        count += members.len();
    }
    if list.len() > count {
        out.push(format!("({} more)", list.len() - count));
    }
    out.join(", ")
}

// ---- ls ----

fn ls(store: &Store, args: &LsArgs) -> Result<ExitCode> {
    let builders = store.list()?;
    // A listing still lists when the selection is broken (an unknown KILN_BUILDER): it is
    // where the user looks for the right name.
    let current = match resolve(None) {
        Ok(Selected::Local) => DEFAULT.to_owned(),
        Ok(Selected::Remote(b)) => b.name,
        Err(e) => {
            eprintln!("WARNING: {e:#}");
            String::new()
        }
    };
    let states = probe_all(&builders, args.timeout.timeout);
    if args.format == LsFormat::Json {
        for line in ls_json(&builders, &states, &current, &local_platforms()) {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}",
        ls_table(
            &builders,
            &states,
            &current,
            &local_platforms(),
            !args.no_trunc
        )
    );
    let mut errors = Vec::new();
    for (b, states) in builders.iter().zip(&states) {
        for (n, s) in b.nodes.iter().zip(states) {
            if let Some(e) = &s.error {
                errors.push(format!(
                    "Failed to get status for {} ({}): {e}",
                    b.name, n.name
                ));
            }
        }
    }
    if !errors.is_empty() {
        eprintln!();
        for e in errors {
            eprintln!("{e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls --format json`: a line per builder, `default` first, each node with its status,
/// platforms (declared ones marked `*`, as in the table), version and error.
fn ls_json(
    builders: &[Builder],
    states: &[Vec<NodeState>],
    current: &str,
    local: &[String],
) -> Vec<String> {
    let mut out = vec![serde_json::json!({
        "Name": DEFAULT,
        "Driver": "local",
        "Current": current == DEFAULT,
        "Nodes": [{
            "Name": DEFAULT,
            "Endpoint": "local",
            "Status": "running",
            "Platforms": local,
        }],
    })
    .to_string()];
    for (b, states) in builders.iter().zip(states) {
        let nodes: Vec<serde_json::Value> = b
            .nodes
            .iter()
            .zip(states)
            .map(|(n, s)| {
                let mut node = serde_json::json!({
                    "Name": n.name,
                    "Endpoint": n.endpoint.to_string(),
                    "Status": s.status(),
                    "Platforms": platforms_list(&n.platforms, &s.reported),
                });
                if let Some(v) = &s.version {
                    node["Version"] = v.as_str().into();
                }
                if let Some(e) = &s.error {
                    node["Error"] = e.as_str().into();
                }
                node
            })
            .collect();
        out.push(
            serde_json::json!({
                "Name": b.name,
                "Driver": b.driver.to_string(),
                "Current": current == b.name,
                "Nodes": nodes,
            })
            .to_string(),
        );
    }
    out
}

/// The table buildx's `ls` prints: a row per builder (`*` on the current one), then one per
/// node, indented with ` \_ `.
fn ls_table(
    builders: &[Builder],
    states: &[Vec<NodeState>],
    current: &str,
    local: &[String],
    trunc: bool,
) -> String {
    const INDENT: &str = " \\_ ";
    let shorten = |list: Vec<String>| {
        if trunc {
            truncate_platforms(&list, 4)
        } else {
            list.join(", ")
        }
    };
    let star = |name: &str| {
        if name == current {
            format!("{name}*")
        } else {
            name.to_owned()
        }
    };
    let mut rows: Vec<[String; 4]> = vec![[
        "NAME/NODE".into(),
        "DRIVER/ENDPOINT".into(),
        "STATUS".into(),
        "PLATFORMS".into(),
    ]];
    rows.push([star(DEFAULT), "local".into(), String::new(), String::new()]);
    rows.push([
        format!("{INDENT}{DEFAULT}"),
        format!("{INDENT}local"),
        "running".into(),
        shorten(local.to_vec()),
    ]);
    for (b, states) in builders.iter().zip(states) {
        rows.push([
            star(&b.name),
            b.driver.to_string(),
            String::new(),
            String::new(),
        ]);
        for (n, s) in b.nodes.iter().zip(states) {
            rows.push([
                format!("{INDENT}{}", n.name),
                format!("{INDENT}{}", n.endpoint),
                s.status().into(),
                shorten(platforms_list(&n.platforms, &s.reported)),
            ]);
        }
    }
    // docker's table writer: columns at least 10 wide, 3 spaces apart.
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count() + 3).max(10);
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ---- inspect ----

fn inspect(store: &Store, args: &InspectArgs) -> Result<ExitCode> {
    let selected = match &args.name {
        Some(name) if name.eq_ignore_ascii_case(DEFAULT) => Selected::Local,
        Some(name) if !looks_like_address(name) => match store.get(name)? {
            Some(b) => Selected::Remote(b),
            None => return Err(store.not_found(name, "kiln builder inspect")),
        },
        Some(addr) => resolve(Some(addr))?,
        None => resolve(None)?,
    };
    let text = match selected {
        Selected::Local => inspect_local(&local_platforms()),
        Selected::Remote(b) => {
            let states = probe_all(std::slice::from_ref(&b), args.timeout.timeout);
            inspect_text(&b, states.first().map_or(&[][..], Vec::as_slice))
        }
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn inspect_local(platforms: &[String]) -> String {
    aligned(&[
        vec![("Name", DEFAULT.to_owned()), ("Driver", "local".to_owned())],
        vec![],
        vec![
            ("Name", DEFAULT.to_owned()),
            ("Endpoint", "local".to_owned()),
            ("Status", "running".to_owned()),
            ("Platforms", platforms.join(", ")),
        ],
    ])
}

/// buildx's `inspect`: the builder, then a block per node.
fn inspect_text(b: &Builder, states: &[NodeState]) -> String {
    let mut blocks = vec![
        vec![("Name", b.name.clone()), ("Driver", b.driver.to_string())],
        vec![],
    ];
    for (n, s) in b.nodes.iter().zip(states) {
        let mut block = vec![
            ("Name", n.name.clone()),
            ("Endpoint", n.endpoint.to_string()),
        ];
        if let Some(tls) = &n.tls {
            let opts: Vec<String> = tls
                .driver_opts()
                .into_iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            block.push(("Driver Options", opts.join(" ")));
        }
        block.push(("Status", s.status().to_owned()));
        if let Some(e) = &s.error {
            block.push(("Error", e.clone()));
        }
        if let Some(v) = &s.version {
            block.push(("Version", v.clone()));
        }
        let platforms = platforms_list(&n.platforms, &s.reported).join(", ");
        if !platforms.is_empty() {
            block.push(("Platforms", platforms));
        }
        blocks.push(block);
    }
    aligned(&blocks)
}

/// Blocks of `Key: value` lines, values aligned within a block (as Go's tabwriter aligns a
/// run of tabbed lines); the second block (empty) is the `Nodes:` heading.
fn aligned(blocks: &[Vec<(&str, String)>]) -> String {
    let mut out = String::new();
    for (i, block) in blocks.iter().enumerate() {
        if i == 1 {
            out.push_str("\nNodes:\n");
            continue;
        }
        if i > 2 {
            out.push('\n');
        }
        let width = block.iter().map(|(k, _)| k.len() + 2).max().unwrap_or(0);
        for (k, v) in block {
            let key = format!("{k}:");
            out.push_str(&format!("{key:width$}{v}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse::<Platform>().unwrap().normalize()
    }

    /// `kiln builder create --name NAME ARGS` on `existing`, ARGS written as on the command
    /// line (`--append`, `--leave`, `--node N`, `--platform P`, an endpoint).
    fn create(existing: Option<&Builder>, name: &str, args: &str) -> Result<Builder> {
        let mut req = CreateRequest {
            append: false,
            leave: false,
            node: None,
            platforms: Vec::new(),
            tls: None,
            endpoint: None,
        };
        let mut words = args.split_whitespace();
        while let Some(w) = words.next() {
            match w {
                "--append" => req.append = true,
                "--leave" => req.leave = true,
                "--node" => req.node = words.next().map(ToOwned::to_owned),
                "--platform" => {
                    req.platforms = parse_platforms(&[words.next().unwrap().to_owned()]).unwrap()
                }
                endpoint => req.endpoint = Some(Address::parse(endpoint).unwrap()),
            }
        }
        apply(existing.cloned(), name, req)
    }

    #[test]
    fn create_makes_a_builder_and_append_adds_nodes() {
        let b = create(
            None,
            "b1",
            "--node n1 --platform linux/amd64 unix:///run/a.sock",
        )
        .unwrap();
        assert_eq!(b.nodes.len(), 1);
        assert_eq!(b.nodes[0].name, "n1");
        let b = create(
            Some(&b),
            "b1",
            "--append --platform linux/arm64 unix:///run/b.sock",
        )
        .unwrap();
        // A node given no name gets buildx's: the builder's name and a number.
        assert_eq!(b.nodes[1].name, "b10");
        assert_eq!(b.nodes[1].platforms, vec![p("linux/arm64")]);
        assert_eq!(b.nodes[0].platforms, vec![p("linux/amd64")]);
    }

    #[test]
    fn create_refuses_what_buildx_refuses() {
        let one = create(None, "b1", "--node n1 unix:///run/a.sock").unwrap();
        for (existing, name, args, why) in [
            (
                Some(&one),
                "b1",
                "--append --node n1 unix:///run/b.sock",
                "node \"n1\" already exists in builder \"b1\"",
            ),
            (
                Some(&one),
                "b1",
                "--append unix:///run/a.sock",
                "invalid duplicate endpoint unix:///run/a.sock",
            ),
            (Some(&one), "b1", "unix:///run/c.sock", "no append mode"),
            (
                None,
                "nope",
                "--append unix:///run/c.sock",
                "failed to find instance \"nope\" for append",
            ),
            (None, "b2", "", "no remote endpoint provided"),
            (
                Some(&one),
                "b1",
                "--leave --node n1",
                "can not leave last node",
            ),
            (
                Some(&one),
                "b1",
                "--node n9 unix:///run/c.sock",
                "node n9 not found, did you mean to append?",
            ),
        ] {
            let e = format!("{:#}", create(existing, name, args).unwrap_err());
            assert!(e.contains(why), "{args}: {e}");
        }
    }

    #[test]
    fn concurrent_appends_each_add_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_owned());
        let first = create(None, "b1", "unix:///run/n0.sock").unwrap();
        store.save(&first).unwrap();
        std::thread::scope(|s| {
            for i in 1..=8 {
                let store = &store;
                s.spawn(move || {
                    let req = CreateRequest {
                        append: true,
                        leave: false,
                        node: Some(format!("n{i}")),
                        platforms: Vec::new(),
                        tls: None,
                        endpoint: Some(Address::parse(&format!("unix:///run/n{i}.sock")).unwrap()),
                    };
                    save_change(store, Some("b1".into()), req, false).unwrap();
                });
            }
        });
        let mut names: Vec<String> = store
            .get("b1")
            .unwrap()
            .unwrap()
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["b10", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"]
        );
    }

    #[test]
    fn a_platform_is_declared_by_the_last_node_given_it() {
        let b = create(
            None,
            "b1",
            "--platform linux/amd64,linux/arm64 unix:///run/a.sock",
        )
        .unwrap();
        let b = create(
            Some(&b),
            "b1",
            "--append --platform linux/arm64 unix:///run/b.sock",
        )
        .unwrap();
        assert_eq!(b.nodes[0].platforms, vec![p("linux/amd64")]);
        assert_eq!(b.nodes[1].platforms, vec![p("linux/arm64")]);
        // Leaving takes the node out, the others stay.
        let b = create(Some(&b), "b1", "--leave --node b10").unwrap();
        assert_eq!(b.nodes.len(), 1);
        assert_eq!(b.nodes[0].name, "b11");
    }

    #[test]
    fn changing_a_node_by_name_keeps_what_was_not_given() {
        let b = create(
            None,
            "b1",
            "--node n1 --platform linux/amd64 unix:///run/a.sock",
        )
        .unwrap();
        let b = create(Some(&b), "b1", "--node n1 tcp://10.0.0.9:1234").unwrap();
        assert_eq!(b.nodes.len(), 1);
        assert_eq!(b.nodes[0].endpoint.to_string(), "tcp://10.0.0.9:1234");
        assert_eq!(b.nodes[0].platforms, vec![p("linux/amd64")]);
    }

    #[test]
    fn platforms_are_validated_and_normalized() {
        assert_eq!(
            parse_platforms(&["linux/amd64,arm64".into(), "linux/arm64".into()]).unwrap(),
            vec![p("linux/amd64"), p("linux/arm64")]
        );
        let e = format!("{:#}", parse_platforms(&["bogus".into()]).unwrap_err());
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn driver_opts_are_buildx_remote_tls_options() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let tls = parse_driver_opts(
            &["cacert=ca.pem,cert=cert.pem".into(), "key=key.pem".into()],
            dir.path(),
        )
        .unwrap()
        .unwrap();
        // Relative paths are stored absolute: a build may run from anywhere.
        assert_eq!(tls.cacert, dir.path().join("ca.pem"));
        assert_eq!(tls.key, Some(dir.path().join("key.pem")));
        assert_eq!(parse_driver_opts(&[], dir.path()).unwrap(), None);
        let err = |opts: &[&str]| {
            let v: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
            format!("{:#}", parse_driver_opts(&v, dir.path()).unwrap_err())
        };
        assert!(err(&["cert=cert.pem"]).contains("missing keys cacert, key"));
        assert!(err(&["cacert=nope.pem"]).contains("is not a file"));
        assert!(err(&["image=moby/buildkit"]).contains("invalid driver option \"image\""));
    }

    #[test]
    fn ls_prints_buildx_table() {
        let b = Builder {
            name: "b1".into(),
            driver: Driver::Remote,
            nodes: vec![
                Node {
                    name: "n1".into(),
                    endpoint: Address::parse("unix:///run/n1.sock").unwrap(),
                    platforms: vec![p("linux/amd64")],
                    tls: None,
                },
                Node {
                    name: "n2".into(),
                    endpoint: Address::parse("tcp://10.0.0.2:1234").unwrap(),
                    platforms: vec![p("linux/arm64")],
                    tls: None,
                },
            ],
        };
        let states = vec![vec![
            NodeState {
                running: true,
                reported: vec![p("linux/amd64"), p("linux/386")],
                ..NodeState::default()
            },
            NodeState::default(),
        ]];
        let table = ls_table(&[b], &states, "b1", &["linux/amd64".to_owned()], true);
        let expected = "\
NAME/NODE     DRIVER/ENDPOINT           STATUS     PLATFORMS
default       local
 \\_ default    \\_ local                 running    linux/amd64
b1*           remote
 \\_ n1         \\_ unix:///run/n1.sock   running    linux/amd64*, linux/386
 \\_ n2         \\_ tcp://10.0.0.2:1234   inactive   linux/arm64*
";
        assert_eq!(table, expected);
    }

    #[test]
    fn inspect_prints_nodes_with_status_and_platforms() {
        let b = Builder {
            name: "b1".into(),
            driver: Driver::Remote,
            nodes: vec![
                Node {
                    name: "n1".into(),
                    endpoint: Address::parse("unix:///run/n1.sock").unwrap(),
                    platforms: vec![p("linux/amd64")],
                    tls: Some(Tls {
                        cacert: "/c/ca.pem".into(),
                        cert: None,
                        key: None,
                        servername: None,
                    }),
                },
                Node {
                    name: "n2".into(),
                    endpoint: Address::parse("unix:///run/n2.sock").unwrap(),
                    platforms: Vec::new(),
                    tls: None,
                },
            ],
        };
        let states = [
            NodeState {
                running: true,
                reported: vec![p("linux/amd64"), p("linux/arm64")],
                version: Some("0.1.0".into()),
                error: None,
            },
            NodeState {
                error: Some("cannot reach unix:///run/n2.sock: No such file".into()),
                ..NodeState::default()
            },
        ];
        let expected = "\
Name:   b1
Driver: remote

Nodes:
Name:           n1
Endpoint:       unix:///run/n1.sock
Driver Options: cacert=\"/c/ca.pem\"
Status:         running
Version:        0.1.0
Platforms:      linux/amd64*, linux/arm64

Name:     n2
Endpoint: unix:///run/n2.sock
Status:   inactive
Error:    cannot reach unix:///run/n2.sock: No such file
";
        assert_eq!(inspect_text(&b, &states), expected);
    }

    #[test]
    fn long_platform_lists_are_shortened_as_buildx_does() {
        // buildx's own cases (commands/ls_test.go).
        let list = |s: &[&str]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            truncate_platforms(
                &list(&[
                    "linux/arm64*",
                    "linux/amd64",
                    "linux/amd64/v2",
                    "linux/riscv64",
                    "linux/ppc64le",
                    "linux/s390x",
                    "linux/386",
                    "linux/mips64le",
                    "linux/mips64",
                    "linux/arm/v7",
                    "linux/arm/v6",
                ]),
                4
            ),
            "linux/amd64 (+2), linux/arm64*, linux/arm (+2), linux/ppc64le, (5 more)"
        );
        assert_eq!(
            truncate_platforms(&list(&["linux/riscv64*"]), 4),
            "linux/riscv64*"
        );
        assert_eq!(
            truncate_platforms(&list(&["linux/amd64", "linux/386"]), 4),
            "linux/amd64, linux/386"
        );
        for (input, expected) in [
            (
                &["linux/arm64", "linux/arm/v7", "linux/arm/v6"][..],
                "linux/arm64, linux/arm (+2)",
            ),
            (
                &[
                    "darwin/arm64*",
                    "linux/arm64*",
                    "linux/arm/v5*",
                    "linux/arm/v6*",
                    "linux/arm/v7*",
                    "windows/arm64*",
                ],
                "linux/arm64*, linux/arm* (+3), darwin/arm64*, windows/arm64*",
            ),
            (
                &[
                    "linux/amd64/v2*",
                    "linux/arm/v6*",
                    "linux/mips64le*",
                    "linux/amd64",
                    "linux/amd64/v3",
                    "linux/386",
                    "linux/arm64",
                    "linux/riscv64",
                    "linux/ppc64le",
                    "linux/s390x",
                    "linux/mips64",
                    "linux/arm/v7",
                ],
                "linux/amd64* (+3), linux/arm64, linux/arm* (+2), linux/ppc64le, (5 more)",
            ),
            (
                &[
                    "linux/arm64",
                    "linux/arm/v7",
                    "linux/arm/v6",
                    "linux/mips64le/softfloat",
                    "linux/mips64le/hardfloat",
                ],
                "linux/arm64, linux/arm (+2), linux/mips64le (+2)",
            ),
        ] {
            assert_eq!(truncate_platforms(&list(input), 4), expected, "{input:?}");
        }
    }

    #[test]
    fn ls_json_is_a_line_per_builder() {
        let b = Builder {
            name: "b1".into(),
            driver: Driver::Remote,
            nodes: vec![Node {
                name: "n1".into(),
                endpoint: Address::parse("unix:///run/n1.sock").unwrap(),
                platforms: vec![p("linux/amd64")],
                tls: None,
            }],
        };
        let states = vec![vec![NodeState {
            error: Some("cannot reach builder at unix:///run/n1.sock: gone".into()),
            ..NodeState::default()
        }]];
        let lines = ls_json(&[b], &states, "b1", &["linux/amd64".to_owned()]);
        assert_eq!(lines.len(), 2);
        let default: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(default["Name"], "default");
        assert_eq!(default["Current"], false);
        let b1: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            b1,
            serde_json::json!({
                "Name": "b1",
                "Driver": "remote",
                "Current": true,
                "Nodes": [{
                    "Name": "n1",
                    "Endpoint": "unix:///run/n1.sock",
                    "Status": "inactive",
                    "Platforms": ["linux/amd64*"],
                    "Error": "cannot reach builder at unix:///run/n1.sock: gone",
                }],
            })
        );
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_timeout("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_timeout("2").unwrap(), Duration::from_secs(2));
        assert!(parse_timeout("soon").is_err());
    }
}
