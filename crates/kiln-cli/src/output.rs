//! Parsing `--output` and printing tables and errors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use kiln_engine::{Export, SecretSource};
use kiln_plugin_host::PluginRegistry;

/// Parses buildx's `--output` syntax: `type=oci,dest=x.tar`, `type=local,dest=dir`, or a bare
/// path (a local directory; `-` is not supported).
pub fn parse_output(spec: &str) -> Result<Export> {
    if !spec.contains('=') {
        if spec == "-" {
            bail!("--output -: writing to stdout is not supported yet");
        }
        return Ok(Export::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut tar = true;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --output {spec:?}: {part:?} is not key=value")
        })?;
        match k.trim() {
            "type" => kind = Some(v.trim().to_owned()),
            "dest" => dest = Some(PathBuf::from(v.trim())),
            "tar" => {
                tar = match v.trim() {
                    "true" => true,
                    "false" => false,
                    other => bail!("invalid --output {spec:?}: tar={other} is not true or false"),
                }
            }
            // Accepted by buildx exporters; they do not change the result here.
            "name" | "oci-mediatypes" | "compression" | "force-compression" => {}
            other => bail!("invalid --output {spec:?}: unknown attribute {other:?}"),
        }
    }
    let Some(kind) = kind else {
        bail!("invalid --output {spec:?}: missing type= (oci or local)");
    };
    let need_dest = |dest: Option<PathBuf>| {
        dest.ok_or_else(|| anyhow::anyhow!("invalid --output {spec:?}: type={kind} needs dest="))
    };
    match kind.as_str() {
        "oci" => Ok(Export::Oci {
            dest: need_dest(dest)?,
            tar,
        }),
        "local" => Ok(Export::Local {
            dest: need_dest(dest)?,
        }),
        "docker" | "image" | "registry" | "tar" | "cacheonly" => {
            bail!("--output type={kind} is not supported yet; use type=oci or type=local")
        }
        other => bail!("invalid --output {spec:?}: unknown type {other:?} (oci or local)"),
    }
}

/// `kiln plugins ls`.
pub fn plugins_table(registry: &PluginRegistry) {
    println!(
        "{:<20} {:<28} {:<10} {:<4} PATH",
        "NAME", "KINDS", "VERSION", "ABI"
    );
    for p in registry.plugins() {
        let kinds: Vec<String> = p
            .kinds()
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect();
        println!(
            "{:<20} {:<28} {:<10} {:<4} {}",
            p.name(),
            kinds.join(","),
            p.version(),
            p.abi_version(),
            p.path().display()
        );
    }
    if !registry.refused().is_empty() {
        println!("\nREFUSED");
        for r in registry.refused() {
            println!("{r}");
        }
    }
}

/// The lines around `line` of the build file, BuildKit style.
pub fn show_location(dockerfile: &Path, line: usize) {
    let Ok(text) = std::fs::read_to_string(dockerfile) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return;
    }
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("{name}:{line}");
    eprintln!("--------------------");
    let from = line.saturating_sub(3).max(1);
    let to = (line + 2).min(lines.len());
    for (i, l) in lines.iter().enumerate().take(to).skip(from - 1) {
        let n = i + 1;
        let mark = if n == line { ">>>" } else { "   " };
        eprintln!("{n:>4} | {mark} {l}");
    }
    eprintln!("--------------------");
}

/// An error and its causes, without repeating a cause already quoted by its parent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Parses buildx's `--secret`: `id=X,src=FILE` (or `source=`), `id=X,env=VAR`, or `id=X`
/// alone (the environment variable X, as buildx does when it is set).
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --secret {spec:?}: {part:?} is not key=value")
        })?;
        match k.trim() {
            "id" => id = Some(v.trim().to_owned()),
            "src" | "source" => src = Some(PathBuf::from(v.trim())),
            "env" => env = Some(v.trim().to_owned()),
            "type" if matches!(v.trim(), "file" | "env") => {}
            other => bail!("invalid --secret {spec:?}: unknown attribute {other:?}"),
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        bail!("invalid --secret {spec:?}: missing id=");
    };
    let source = match (src, env) {
        (Some(p), None) => SecretSource::File(p),
        (None, Some(v)) => SecretSource::Env(v),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => bail!("invalid --secret {spec:?}: give src=FILE or env=VAR"),
        (Some(_), Some(_)) => bail!("invalid --secret {spec:?}: src= and env= exclude each other"),
    };
    Ok((id, source))
}
