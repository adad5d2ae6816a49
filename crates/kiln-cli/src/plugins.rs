//! `kiln plugins ls` (installed plugins and those pulled from registries, with their source)
//! and `kiln plugins push PATH REF` (publish a plugin library as an OCI artifact), and the
//! build flags that pull plugins (`--plugin`, `--allow-plugin`, kiln.toml `[plugins]`).
//! docs/plugin-distribution.md is the reference.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_plugin_host::{LoadedPlugin, PluginRegistry, SearchPath};
use kiln_registry::{Registry, RegistryOptions};
use kiln_types::reference::Reference;
use kiln_types::{Platform, PlatformMatcher};

use crate::config::Config;

/// `kiln plugins push`.
#[derive(clap::Args)]
pub struct PushArgs {
    /// The plugin library (`.so`) to publish; it is probed first, as kiln loads plugins.
    pub path: PathBuf,
    /// Where to push it: `registry/repository[:tag]` (`latest` without a tag).
    pub reference: String,
    /// The platform the library is for (default: this machine's). A plugin index already at
    /// the tag keeps its other platforms.
    #[arg(long)]
    pub platform: Option<String>,
    /// Registry reached over plain http (loopback registries always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// `kiln plugins ls`: the installed plugins, then those pulled into the store, then refusals.
pub fn ls(config: &Config, flag_dirs: &[PathBuf]) -> Result<ExitCode> {
    let dirs = config.plugin_dirs_with(flag_dirs);
    let registry = PluginRegistry::discover(&SearchPath::standard(&dirs));
    print!("{}", table(&registry, &config.root.value));
    Ok(ExitCode::SUCCESS)
}

fn kinds_of(kinds: &[kiln_plugin_host::proto::Kind]) -> String {
    kinds
        .iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

fn table(registry: &PluginRegistry, root: &Path) -> String {
    let mut out = format!(
        "{:<20} {:<28} {:<10} {:<4} {:<24} PATH\n",
        "NAME", "KINDS", "VERSION", "ABI", "SOURCE"
    );
    for p in registry.plugins() {
        out.push_str(&format!(
            "{:<20} {:<28} {:<10} {:<4} {:<24} {}\n",
            p.name(),
            kinds_of(p.kinds()),
            p.version(),
            p.abi_version(),
            "installed",
            p.path().display()
        ));
    }
    let mut refused: Vec<String> = registry.refused().iter().map(|r| r.to_string()).collect();
    // Pulled plugins are listed from what their publisher's probe said (the config kept beside
    // them): listing runs no plugin code that a build did not ask for.
    for (dir, kept) in kiln_engine::pulled_plugins(root) {
        match kept {
            Ok(k) => {
                let (name, kinds, version, abi) = match &k.manifest {
                    Some(m) => (
                        m.name.clone(),
                        kinds_of(&m.kinds),
                        m.version.clone(),
                        m.abi_version.to_string(),
                    ),
                    None => ("?".into(), "?".into(), "?".into(), "?".into()),
                };
                out.push_str(&format!(
                    "{name:<20} {kinds:<28} {version:<10} {abi:<4} {:<24} {}\n",
                    k.source.pinned(),
                    k.library.display()
                ));
            }
            Err(why) => refused.push(format!(
                "{}: a pulled plugin that fails its digest check ({why}); the next build that \
                 names it pulls it again",
                dir.display()
            )),
        }
    }
    if !refused.is_empty() {
        out.push_str("\nREFUSED\n");
        for r in refused {
            out.push_str(&r);
            out.push('\n');
        }
    }
    out
}

/// `kiln plugins push PATH REF`: probes the library, then pushes it as a plugin artifact and
/// prints the pinned reference on stdout.
pub fn push(config: &Config, args: &PushArgs) -> Result<ExitCode> {
    let host = Platform::host();
    let platform = match &args.platform {
        Some(p) => p
            .parse::<Platform>()
            .with_context(|| format!("invalid --platform {p:?}"))?,
        None => host.clone(),
    };
    // The library is probed (loaded) here: one for a platform this machine cannot load
    // cannot be checked, and an unchecked library is not published.
    if !PlatformMatcher::only(&host).matches(&platform) {
        bail!(
            "cannot push {} for {platform}: kiln probes a plugin before it publishes it, and \
             this {host} machine cannot load a {platform} library; push it from a {platform} \
             machine (to the same tag: the index keeps the platforms pushed before)",
            args.path.display()
        );
    }
    let target = Reference::parse_normalized(args.reference.trim())
        .with_context(|| format!("invalid reference {:?}", args.reference))?;
    if target.digest.is_some() {
        bail!(
            "push to a tag, not a digest ({:?}): the digest is what the push prints",
            args.reference
        );
    }
    let library = std::fs::read(&args.path)
        .with_context(|| format!("cannot read the plugin library {}", args.path.display()))?;
    let plugin = LoadedPlugin::load(&args.path)
        .map_err(|e| anyhow::anyhow!("refusing to push {}: {e}", args.path.display()))?;
    let manifest =
        serde_json::to_vec(plugin.manifest()).context("encoding the plugin's manifest")?;
    let store = kiln_snapshot::Store::open(&config.root.value)
        .with_context(|| format!("opening the kiln store {}", config.root.value.display()))?;
    let registry = Registry::new(RegistryOptions {
        insecure: args.insecure_registries.clone(),
        docker_config: None,
        hosts: config.registry_hosts(),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let pushed =
        rt.block_on(registry.push_plugin(&target, &platform, &manifest, &library, &store))?;
    let shown = args.reference.trim();
    let pinned = format!("{shown}@{}", pushed.index_digest);
    let platforms: Vec<String> = pushed.platforms.iter().map(ToString::to_string).collect();
    eprintln!(
        "pushed plugin {} {} ({}) for {platform} to {shown}: manifest {}, index {} (platforms: \
         {})",
        plugin.name(),
        plugin.version(),
        kinds_of(plugin.kinds()),
        pushed.manifest_digest,
        pushed.index_digest,
        platforms.join(", ")
    );
    if plugin.has_kind(kiln_plugin_host::proto::Kind::Frontend) {
        eprintln!("use it with the first line:  # syntax={pinned}");
    } else {
        eprintln!("use it with:  kiln build --plugin {pinned} ...");
    }
    println!("{pinned}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_pulled_plugins_with_their_source() {
        let root = tempfile::tempdir().unwrap();
        // No pulled plugin, no installed plugin: the header alone.
        let out = table(&PluginRegistry::new(), root.path());
        assert!(out.starts_with("NAME") && out.contains("SOURCE"), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        // A pulled directory that fails its check is listed as refused, with why.
        let bad = root
            .path()
            .join(kiln_engine::PULLED_DIR)
            .join("ab".repeat(32));
        std::fs::create_dir_all(&bad).unwrap();
        let out = table(&PluginRegistry::new(), root.path());
        assert!(out.contains("REFUSED"), "{out}");
        assert!(out.contains("fails its digest check"), "{out}");
    }
}
