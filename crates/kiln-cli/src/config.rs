//! `kiln.toml`: the settings a user or an administrator keeps between builds (store root,
//! registry mirrors and transports, plugin directories, the default executor, parallelism),
//! and `kiln config show`, which prints each effective value with where it came from.
//!
//! Precedence, key by key: a command-line flag > an environment variable > the configuration
//! files > the built-in default. The files are `--config FILE` alone when it is given (a
//! missing one is an error), else `/etc/kiln/kiln.toml` then `$XDG_CONFIG_HOME/kiln/kiln.toml`
//! (`~/.config` when unset), the later overriding the earlier; missing ones are skipped.
//! The names follow buildkitd.toml where kiln has the same setting; docs/config.md is the
//! reference and says where kiln differs.
//!
//! The tables are laid out for growth: `[registry."host"]` takes CAs and client certificates
//! (`ca`, `keypair`), `[worker]` GC limits, and new top-level tables (builders) sit beside them; unknown keys are refused with their
//! file:line:column, so a typo never silently does nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value as Json};

/// The system-wide file.
pub const SYSTEM_FILE: &str = "/etc/kiln/kiln.toml";

/// A configuration file is a few lines; anything larger is a wrong path.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// The runtime of RUN steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// kiln's embedded sandbox.
    Embedded,
    /// runc with an OCI bundle.
    Runc,
}

impl Executor {
    fn name(self) -> &'static str {
        match self {
            Executor::Embedded => "embedded",
            Executor::Runc => "runc",
        }
    }
}

/// `kiln config` subcommands.
#[derive(clap::Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from (default, a file, an
    /// environment variable, a flag).
    Show {
        /// text for people (TOML lines with the source as a comment), json for programs.
        #[arg(long, value_enum, default_value = "text")]
        format: crate::FormatArg,
    },
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// kiln's built-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(name) => write!(f, "env {name}"),
            Source::Flag(name) => f.write_str(name),
        }
    }
}

/// A value and its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    /// The effective value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

impl<T> Setting<T> {
    fn default(value: T) -> Self {
        Setting {
            value,
            source: Source::Default,
        }
    }

    fn set(&mut self, value: T, source: Source) {
        *self = Setting { value, source };
    }
}

/// The settings of one registry host (`[registry."host"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Mirrors tried in order before the host when pulling.
    pub mirrors: Setting<Vec<String>>,
    /// Plain http (default: for loopback hosts only).
    pub http: Setting<bool>,
    /// https without certificate verification.
    pub insecure: Setting<bool>,
    /// CA certificate files trusted for this host besides the system's (`ca`).
    pub ca: Setting<Vec<PathBuf>>,
    /// Client certificates with their keys (`[[registry."host".keypair]]`).
    pub keypair: Setting<Vec<kiln_registry::KeyPair>>,
}

impl RegistrySettings {
    fn new(host: &str) -> Self {
        RegistrySettings {
            mirrors: Setting::default(Vec::new()),
            http: Setting::default(default_http(host, false)),
            insecure: Setting::default(false),
            ca: Setting::default(Vec::new()),
            keypair: Setting::default(Vec::new()),
        }
    }
}

/// Whether a host is plain http when `http` is not set: loopback hosts are, unless they have
/// certificates of their own (`ca`, `keypair`, or docker's certs.d directory for the host),
/// which say that the registry speaks https (kiln_registry decides the same way).
fn default_http(host: &str, has_certificates: bool) -> bool {
    kiln_engine::is_loopback(host)
        && !has_certificates
        && !Path::new(kiln_registry::DOCKER_CERTS_DIR)
            .join(host)
            .is_dir()
}

/// A configuration file kiln looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    /// Its path.
    pub path: PathBuf,
    /// Whether it exists (and was read).
    pub read: bool,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The files looked for, in the order they apply.
    pub files: Vec<FileStatus>,
    /// The store root.
    pub root: Setting<PathBuf>,
    /// Plugin directories searched after `$KILN_PLUGIN_PATH`, before `--plugin-dir`.
    pub plugin_dirs: Setting<Vec<PathBuf>>,
    /// Globs of plugin references usable without a digest (`[plugins] allow`).
    pub plugin_allow: Setting<Vec<String>>,
    /// Plugins pulled from registries for every local build (`[plugins] pull`).
    pub plugin_pull: Setting<Vec<String>>,
    /// The default runtime of RUN steps (`--executor` overrides it per build).
    pub executor: Setting<Executor>,
    /// Steps run at once; `None`: the engine's default.
    pub max_parallelism: Setting<Option<NonZeroUsize>>,
    /// Garbage collection after each build (`[worker] gc`).
    pub gc: Setting<bool>,
    /// The size the collection keeps the store under (`[worker] gckeepstorage`); `None`: 10 %
    /// of the store's disk, at most 20 GB.
    pub gc_keep_storage: Setting<Option<KeepStorage>>,
    /// The memory limit of every RUN step in bytes (`[build] memory`; `--memory` overrides).
    pub memory: Setting<Option<u64>>,
    /// The CPU quota of every RUN step, µs per 100 ms (`[build] cpu-quota`; `--cpu-quota`).
    pub cpu_quota: Setting<Option<u64>>,
    /// The process limit of every RUN step (`[build] pids-limit`; `--pids-limit`).
    pub pids_limit: Setting<Option<u64>>,
    /// Registry hosts with settings, by host.
    pub registries: BTreeMap<String, RegistrySettings>,
}

/// What the configuration is computed from: the global flags and the process environment
/// (injected, so that tests need not change the real one).
pub struct Inputs<'a> {
    /// `--config FILE`.
    pub config_flag: Option<&'a Path>,
    /// `--root DIR`.
    pub root_flag: Option<PathBuf>,
    /// The system-wide file (`/etc/kiln/kiln.toml`).
    pub system_file: PathBuf,
    /// Reads an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<OsString>,
}

impl Inputs<'_> {
    /// A variable's value, with an empty one treated as unset (as `KILN_ROOT=` in a script).
    fn var(&self, name: &str) -> Option<OsString> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    /// The per-user file: `$XDG_CONFIG_HOME/kiln/kiln.toml`, `$HOME/.config/...` when the
    /// variable is unset or not absolute (the XDG spec says to ignore a relative one).
    fn user_file(&self) -> Option<PathBuf> {
        let base = match self.var("XDG_CONFIG_HOME").map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => dir,
            _ => PathBuf::from(self.var("HOME")?).join(".config"),
        };
        Some(base.join("kiln").join("kiln.toml"))
    }

    /// Where the store lives when nothing says: /var/lib/kiln as root, else
    /// `$XDG_DATA_HOME/kiln` or ~/.local/share/kiln (as BuildKit's rootless default lives under
    /// the user's data dir). Rootless kiln's child is uid 0 in its user namespace but an
    /// ordinary user on the host (rootless.rs): the user's store.
    fn default_root(&self) -> PathBuf {
        let rootless = crate::rootless::is_rootless_child(&|n| self.var(n));
        let is_root = !rootless
            && (self.var("USER").is_some_and(|u| u == "root")
                || std::fs::metadata("/proc/self")
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.uid() == 0
                    })
                    .unwrap_or(false));
        if is_root {
            return PathBuf::from("/var/lib/kiln");
        }
        if let Some(dir) = self.var("XDG_DATA_HOME").map(PathBuf::from) {
            if dir.is_absolute() {
                return dir.join("kiln");
            }
        }
        match self.var("HOME") {
            Some(h) => PathBuf::from(h).join(".local/share/kiln"),
            None => PathBuf::from(".kiln"),
        }
    }
}

// The file format. Every table refuses unknown keys, so a typo is an error with its position.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    root: Option<PathBuf>,
    #[serde(default)]
    registry: BTreeMap<toml::Spanned<String>, RegistryTable>,
    plugins: Option<PluginsTable>,
    worker: Option<WorkerTable>,
    build: Option<BuildTable>,
}

/// `[build]`: defaults of `kiln build` flags, named as the flags (docker's spellings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BuildTable {
    memory: Option<ByteSize>,
    cpu_quota: Option<u64>,
    pids_limit: Option<u64>,
}

/// A size as docker's `--memory`: a number of bytes, or a string with a unit (`"512m"`,
/// `"1g"`, `"512MiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawKeepStorage")]
struct ByteSize(u64);

impl TryFrom<RawKeepStorage> for ByteSize {
    type Error = String;
    fn try_from(raw: RawKeepStorage) -> Result<Self, String> {
        let n = match raw {
            RawKeepStorage::Int(n) => Some(n),
            RawKeepStorage::Text(t) => kiln_types::size::parse_ram_size(t.trim()),
        };
        match n {
            Some(n) if n > 0 => Ok(ByteSize(n)),
            _ => Err(
                "expected a size of at least one byte (\"512m\", \"1g\", bytes as a \
                      number)"
                    .to_owned(),
            ),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryTable {
    mirrors: Option<Vec<Mirror>>,
    http: Option<bool>,
    insecure: Option<bool>,
    // buildkitd.toml's names: `ca = [...]`, `[[registry."host".keypair]]`.
    ca: Option<Vec<PathBuf>>,
    keypair: Option<Vec<KeyPairTable>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyPairTable {
    key: PathBuf,
    cert: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginsTable {
    dirs: Option<Vec<PathBuf>>,
    allow: Option<Vec<String>>,
    pull: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WorkerTable {
    executor: Option<Executor>,
    max_parallelism: Option<NonZeroUsize>,
    // buildkitd.toml's `[worker.oci]` names, kept as they are there.
    gc: Option<bool>,
    gckeepstorage: Option<KeepStorage>,
}

/// `gckeepstorage`, as buildkitd.toml's disk space values: a number of bytes, a size with a
/// unit (`"5GB"`, docker's binary units), or a percentage of the store's disk (`"10%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawKeepStorage")]
pub enum KeepStorage {
    /// Bytes.
    Bytes(u64),
    /// Percent of the file system holding the store.
    Percent(u8),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawKeepStorage {
    Int(u64),
    Text(String),
}

impl TryFrom<RawKeepStorage> for KeepStorage {
    type Error = String;
    fn try_from(raw: RawKeepStorage) -> Result<Self, String> {
        let text = match raw {
            RawKeepStorage::Int(n) => return Ok(KeepStorage::Bytes(n)),
            RawKeepStorage::Text(t) => t,
        };
        if let Some(p) = text.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(KeepStorage::Percent(p)),
                _ => Err(format!(
                    "gckeepstorage {text:?}: a percentage of the disk is 1% to 100%"
                )),
            };
        }
        kiln_types::size::parse_ram_size(&text)
            .map(KeepStorage::Bytes)
            .ok_or_else(|| {
                format!(
                    "gckeepstorage {text:?}: expected a size (\"5GB\", bytes as a number) or a \
                     percentage of the disk (\"10%\")"
                )
            })
    }
}

/// A mirror, checked as it is read so that a bad one is reported at its position.
#[derive(Debug)]
struct Mirror(String);

impl<'de> Deserialize<'de> for Mirror {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_mirror(&s).map_err(serde::de::Error::custom)?;
        Ok(Mirror(s))
    }
}

/// A registry host as docker names it: `name[:port]`, or `[v6]:port`. No scheme, no path.
fn check_host(host: &str) -> Result<(), String> {
    if host.contains("://") {
        return Err(format!(
            "{host:?} has a scheme: write the host alone (`host[:port]`); plain http is \
             `http = true` in the host's [registry.\"HOST\"] table"
        ));
    }
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if !ok {
        return Err(format!(
            "{host:?} is not a registry host (`name[:port]`, e.g. `docker.io` or `127.0.0.1:5000`)"
        ));
    }
    Ok(())
}

/// `host[:port][/path]`, the path being repository components put before the image's own.
fn check_mirror(mirror: &str) -> Result<(), String> {
    if mirror.contains("://") {
        return Err(format!(
            "mirror {mirror:?} has a scheme: write `host[:port][/path]`; plain http is \
             `http = true` in the mirror's own [registry.\"HOST\"] table"
        ));
    }
    let (host, path) = mirror.split_once('/').unwrap_or((mirror, ""));
    check_host(host).map_err(|e| format!("mirror {mirror:?}: {e}"))?;
    let path = path.trim_matches('/');
    if !path.is_empty()
        && kiln_types::reference::Reference::parse_normalized(&format!("localhost/{path}/x"))
            .is_err()
    {
        return Err(format!(
            "mirror {mirror:?}: {path:?} is not a repository path (lowercase components \
             separated by `/`)"
        ));
    }
    Ok(())
}

/// `path:line:column: message`, then the line with a caret under the column.
fn located(path: &Path, text: &str, offset: usize, message: &str) -> anyhow::Error {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let source = text[line_start..].lines().next().unwrap_or("");
    anyhow::anyhow!(
        "invalid configuration {}:{line}:{column}: {}\n {line:>4} | {source}\n      | {}^",
        path.display(),
        message.trim_end(),
        " ".repeat(column - 1)
    )
}

fn parse(path: &Path, text: &str) -> Result<File> {
    let file: File = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        located(path, text, at, e.message())
    })?;
    for host in file.registry.keys() {
        check_host(host.get_ref()).map_err(|why| {
            located(
                path,
                text,
                host.span().start,
                &format!("[registry.{:?}]: {why}", host.get_ref()),
            )
        })?;
    }
    Ok(file)
}

/// Reads a file; `Ok(None)` when it does not exist.
fn read(path: &Path) -> Result<Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read the configuration file {}: {e}", path.display()),
    };
    if !meta.is_file() {
        bail!(
            "the configuration file {} is not a regular file",
            path.display()
        );
    }
    if meta.len() > MAX_FILE_SIZE {
        bail!(
            "the configuration file {} is {} bytes, more than the {MAX_FILE_SIZE} allowed",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path)
        .map(Some)
        .with_context(|| format!("cannot read the configuration file {}", path.display()))
}

impl Config {
    /// Reads the configuration from the real process environment.
    pub fn from_process(config_flag: Option<&Path>, root_flag: Option<PathBuf>) -> Result<Self> {
        let env = |name: &str| std::env::var_os(name);
        Config::load(&Inputs {
            config_flag,
            root_flag,
            system_file: PathBuf::from(SYSTEM_FILE),
            env: &env,
        })
    }

    /// Computes the effective configuration: defaults, then each file, then the environment,
    /// then the flags.
    pub fn load(inputs: &Inputs<'_>) -> Result<Self> {
        let mut config = Config {
            files: Vec::new(),
            root: Setting::default(inputs.default_root()),
            plugin_dirs: Setting::default(Vec::new()),
            plugin_allow: Setting::default(Vec::new()),
            plugin_pull: Setting::default(Vec::new()),
            executor: Setting::default(Executor::Embedded),
            max_parallelism: Setting::default(None),
            gc: Setting::default(true),
            gc_keep_storage: Setting::default(None),
            memory: Setting::default(None),
            cpu_quota: Setting::default(None),
            pids_limit: Setting::default(None),
            registries: BTreeMap::new(),
        };
        if let Some(path) = inputs.config_flag {
            let text = read(path)?.with_context(|| {
                format!(
                    "the configuration file {} given by --config does not exist",
                    path.display()
                )
            })?;
            config.apply(path, parse(path, &text)?);
        } else {
            let files = std::iter::once(inputs.system_file.clone()).chain(inputs.user_file());
            for path in files {
                match read(&path)? {
                    Some(text) => config.apply(&path, parse(&path, &text)?),
                    None => config.files.push(FileStatus { path, read: false }),
                }
            }
        }
        if let Some(root) = inputs.var("KILN_ROOT") {
            config
                .root
                .set(PathBuf::from(root), Source::Env("KILN_ROOT"));
        }
        if let Some(v) = inputs.var("KILN_EXECUTOR") {
            let e = match v.to_str() {
                Some("embedded") => Executor::Embedded,
                Some("runc") => Executor::Runc,
                _ => bail!("KILN_EXECUTOR={v:?}: expected embedded or runc"),
            };
            config.executor.set(e, Source::Env("KILN_EXECUTOR"));
        }
        if let Some(v) = inputs.var("KILN_MAX_PARALLELISM") {
            let n = v
                .to_str()
                .and_then(|s| s.trim().parse::<NonZeroUsize>().ok())
                .with_context(|| {
                    format!("KILN_MAX_PARALLELISM={v:?}: expected a number of steps, at least 1")
                })?;
            config
                .max_parallelism
                .set(Some(n), Source::Env("KILN_MAX_PARALLELISM"));
        }
        if let Some(root) = &inputs.root_flag {
            config.root.set(root.clone(), Source::Flag("--root"));
        }
        Ok(config)
    }

    /// Lays one file over the values so far, key by key. Relative paths in a file are relative
    /// to the file's directory, so that a file means the same wherever kiln runs.
    fn apply(&mut self, path: &Path, file: File) {
        self.files.push(FileStatus {
            path: path.to_owned(),
            read: true,
        });
        let source = Source::File(path.to_owned());
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(root) = file.root {
            self.root.set(dir.join(root), source.clone());
        }
        if let Some(plugins) = file.plugins {
            if let Some(dirs) = plugins.dirs {
                let dirs = dirs.into_iter().map(|d| dir.join(d)).collect();
                self.plugin_dirs.set(dirs, source.clone());
            }
            if let Some(allow) = plugins.allow {
                self.plugin_allow.set(allow, source.clone());
            }
            if let Some(pull) = plugins.pull {
                self.plugin_pull.set(pull, source.clone());
            }
        }
        if let Some(worker) = file.worker {
            if let Some(e) = worker.executor {
                self.executor.set(e, source.clone());
            }
            if let Some(n) = worker.max_parallelism {
                self.max_parallelism.set(Some(n), source.clone());
            }
            if let Some(gc) = worker.gc {
                self.gc.set(gc, source.clone());
            }
            if let Some(keep) = worker.gckeepstorage {
                self.gc_keep_storage.set(Some(keep), source.clone());
            }
        }
        if let Some(build) = file.build {
            if let Some(ByteSize(n)) = build.memory {
                self.memory.set(Some(n), source.clone());
            }
            if let Some(n) = build.cpu_quota {
                self.cpu_quota.set(Some(n), source.clone());
            }
            if let Some(n) = build.pids_limit {
                self.pids_limit.set(Some(n), source.clone());
            }
        }
        for (host, table) in file.registry {
            let host = host.into_inner();
            let entry = self
                .registries
                .entry(host.clone())
                .or_insert_with(|| RegistrySettings::new(&host));
            if let Some(mirrors) = table.mirrors {
                let mirrors = mirrors.into_iter().map(|m| m.0).collect();
                entry.mirrors.set(mirrors, source.clone());
            }
            if let Some(http) = table.http {
                entry.http.set(http, source.clone());
            }
            if let Some(insecure) = table.insecure {
                entry.insecure.set(insecure, source.clone());
            }
            if let Some(ca) = table.ca {
                let ca = ca.into_iter().map(|p| dir.join(p)).collect();
                entry.ca.set(ca, source.clone());
            }
            if let Some(pairs) = table.keypair {
                let pairs = pairs
                    .into_iter()
                    .map(|p| kiln_registry::KeyPair {
                        cert: dir.join(p.cert),
                        key: dir.join(p.key),
                    })
                    .collect();
                entry.keypair.set(pairs, source.clone());
            }
            if entry.http.source == Source::Default {
                let has_certificates =
                    !entry.ca.value.is_empty() || !entry.keypair.value.is_empty();
                entry.http.value = default_http(&host, has_certificates);
            }
        }
    }

    /// The plugin directories to search after the standard ones: the configured ones, then
    /// those given on the command line.
    pub fn plugin_dirs_with(&self, flag_dirs: &[PathBuf]) -> Vec<PathBuf> {
        let mut dirs = self.plugin_dirs.value.clone();
        dirs.extend(flag_dirs.iter().cloned());
        dirs
    }

    /// The plugin allowlist: the configured patterns, then `--allow-plugin`'s.
    pub fn plugin_allow_with(&self, flag: &[String]) -> Vec<String> {
        let mut all = self.plugin_allow.value.clone();
        all.extend(flag.iter().cloned());
        all
    }

    /// The plugins to pull: the configured ones, then `--plugin`'s (duplicates once).
    pub fn plugin_pull_with(&self, flag: &[String]) -> Vec<String> {
        let mut all = self.plugin_pull.value.clone();
        for p in flag {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }

    /// The engine's configuration from these settings, the plugin directories and insecure
    /// registries of the command line added (`kiln build` and `kiln serve` open the store alike).
    pub fn engine_config(
        &self,
        flag_plugin_dirs: &[PathBuf],
        insecure_registries: &[String],
    ) -> kiln_engine::EngineConfig {
        kiln_engine::EngineConfig {
            root: self.root.value.clone(),
            plugin_dirs: self.plugin_dirs_with(flag_plugin_dirs),
            concurrency: self.max_parallelism.value.map(std::num::NonZeroUsize::get),
            insecure_registries: insecure_registries.to_vec(),
            registries: self.registry_hosts(),
            gc: self.gc_policy(),
        }
    }

    /// The collection after each build, as the engine takes it.
    pub fn gc_policy(&self) -> kiln_engine::gc::GcPolicy {
        kiln_engine::gc::GcPolicy {
            enabled: self.gc.value,
            keep_storage: self.gc_keep_storage.value.map(|k| match k {
                KeepStorage::Bytes(n) => n,
                KeepStorage::Percent(p) => {
                    kiln_engine::gc::keep_storage_percent(&self.root.value, p)
                }
            }),
        }
    }

    /// The registry settings as the engine takes them.
    pub fn registry_hosts(&self) -> BTreeMap<String, kiln_engine::HostOptions> {
        self.registries
            .iter()
            .map(|(host, r)| {
                let options = kiln_engine::HostOptions {
                    mirrors: r.mirrors.value.clone(),
                    // Unset: the registry client decides as `default_http` does.
                    http: (r.http.source != Source::Default).then_some(r.http.value),
                    insecure: r.insecure.value,
                    ca: r.ca.value.clone(),
                    keypairs: r.keypair.value.clone(),
                };
                (host.clone(), options)
            })
            .collect()
    }

    /// Every key, its value (as JSON, which prints as TOML for these types) and its source, in
    /// the order `config show` prints them.
    fn entries(&self) -> Vec<(String, Json, &Source)> {
        let path = |p: &Path| Json::String(p.display().to_string());
        let mut out = vec![
            ("root".to_owned(), path(&self.root.value), &self.root.source),
            (
                "plugins.dirs".to_owned(),
                Json::Array(self.plugin_dirs.value.iter().map(|p| path(p)).collect()),
                &self.plugin_dirs.source,
            ),
            (
                "plugins.allow".to_owned(),
                json!(self.plugin_allow.value),
                &self.plugin_allow.source,
            ),
            (
                "plugins.pull".to_owned(),
                json!(self.plugin_pull.value),
                &self.plugin_pull.source,
            ),
            (
                "worker.executor".to_owned(),
                json!(self.executor.value.name()),
                &self.executor.source,
            ),
            (
                "worker.max-parallelism".to_owned(),
                json!(self
                    .max_parallelism
                    .value
                    .map_or_else(kiln_engine::default_concurrency, NonZeroUsize::get)),
                &self.max_parallelism.source,
            ),
            (
                "worker.gc".to_owned(),
                json!(self.gc.value),
                &self.gc.source,
            ),
            (
                "worker.gckeepstorage".to_owned(),
                match self.gc_keep_storage.value {
                    Some(KeepStorage::Percent(p)) => json!(format!("{p}%")),
                    Some(KeepStorage::Bytes(n)) => json!(n),
                    None => json!(kiln_engine::gc::default_keep_storage(&self.root.value)),
                },
                &self.gc_keep_storage.source,
            ),
        ];
        // Unset limits are not printed: TOML has no null, and unset means unlimited.
        for (key, setting) in [
            ("build.memory", &self.memory),
            ("build.cpu-quota", &self.cpu_quota),
            ("build.pids-limit", &self.pids_limit),
        ] {
            if let Some(n) = setting.value {
                out.push((key.to_owned(), json!(n), &setting.source));
            }
        }
        for (host, r) in &self.registries {
            // A quoted key, as in the file: hosts hold dots.
            let key = |name: &str| format!("registry.{}.{name}", Json::String(host.clone()));
            out.push((key("mirrors"), json!(r.mirrors.value), &r.mirrors.source));
            out.push((key("http"), json!(r.http.value), &r.http.source));
            out.push((key("insecure"), json!(r.insecure.value), &r.insecure.source));
            let paths = |ps: &[PathBuf]| Json::Array(ps.iter().map(|p| path(p)).collect());
            out.push((key("ca"), paths(&r.ca.value), &r.ca.source));
            let pairs = r
                .keypair
                .value
                .iter()
                .map(|p| json!({"key": path(&p.key), "cert": path(&p.cert)}))
                .collect();
            out.push((key("keypair"), Json::Array(pairs), &r.keypair.source));
        }
        out
    }

    /// `kiln config show` as text: the files looked at, then `key = value  # source` lines.
    pub fn show_text(&self) -> String {
        let mut out = String::from("# configuration files (each overrides the one before):\n");
        if self.files.is_empty() {
            out.push_str("#   (none)\n");
        }
        for f in &self.files {
            let state = if f.read { "read" } else { "not found" };
            out.push_str(&format!("#   {} ({state})\n", f.path.display()));
        }
        let lines: Vec<(String, String)> = self
            .entries()
            .into_iter()
            .map(|(key, value, source)| {
                (
                    format!("{key} = {}", toml_value(&value)),
                    source.to_string(),
                )
            })
            .collect();
        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (line, source) in lines {
            out.push_str(&format!("{line:width$}  # {source}\n"));
        }
        out
    }

    /// `kiln config show --format json`.
    pub fn show_json(&self) -> Json {
        let values: serde_json::Map<String, Json> = self
            .entries()
            .into_iter()
            .map(|(key, value, source)| {
                (key, json!({ "value": value, "source": source.to_string() }))
            })
            .collect();
        let files: Vec<Json> = self
            .files
            .iter()
            .map(|f| json!({ "path": f.path.display().to_string(), "read": f.read }))
            .collect();
        json!({ "files": files, "values": values })
    }
}

/// A JSON value written as TOML: strings, numbers, booleans and arrays of them read the same.
fn toml_value(v: &Json) -> String {
    match v {
        Json::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        // An inline table (a keypair).
        Json::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k} = {}", toml_value(v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
        other => other.to_string(),
    }
}

/// Runs `kiln config ...`.
pub fn run(command: &ConfigCommand, config: &Config) -> Result<std::process::ExitCode> {
    match command {
        ConfigCommand::Show { format } => {
            let text = match format {
                crate::FormatArg::Text => config.show_text(),
                crate::FormatArg::Json => {
                    serde_json::to_string_pretty(&config.show_json())
                        .context("encoding the configuration as JSON")?
                        + "\n"
                }
            };
            use std::io::Write;
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                // `kiln config show | head` closes the pipe early: not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing to standard output")?
                }
                _ => {}
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        dir: tempfile::TempDir,
        vars: BTreeMap<String, String>,
    }

    impl Env {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut vars = BTreeMap::new();
            vars.insert(
                "XDG_CONFIG_HOME".to_owned(),
                dir.path().join("xdg").display().to_string(),
            );
            vars.insert(
                "HOME".to_owned(),
                dir.path().join("home").display().to_string(),
            );
            vars.insert("USER".to_owned(), "someone".to_owned());
            Env { dir, vars }
        }
        fn system(&self) -> PathBuf {
            self.dir.path().join("etc/kiln/kiln.toml")
        }
        fn user(&self) -> PathBuf {
            self.dir.path().join("xdg/kiln/kiln.toml")
        }
        fn write(&self, path: &Path, text: &str) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        fn load_with(&self, config: Option<&Path>, root: Option<&str>) -> Result<Config> {
            let vars = self.vars.clone();
            let env = move |name: &str| vars.get(name).map(OsString::from);
            Config::load(&Inputs {
                config_flag: config,
                root_flag: root.map(PathBuf::from),
                system_file: self.system(),
                env: &env,
            })
        }
        fn load(&self) -> Config {
            self.load_with(None, None).unwrap()
        }
    }

    #[test]
    fn defaults_without_files() {
        let env = Env::new();
        let c = env.load();
        assert_eq!(
            c.files,
            vec![
                FileStatus {
                    path: env.system(),
                    read: false
                },
                FileStatus {
                    path: env.user(),
                    read: false
                },
            ]
        );
        if !std::fs::metadata("/proc/self")
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                m.uid() == 0
            })
            .unwrap_or(false)
        {
            assert_eq!(c.root.value, env.dir.path().join("home/.local/share/kiln"));
        }
        assert_eq!(c.root.source, Source::Default);
        assert_eq!(c.executor, Setting::default(Executor::Embedded));
        assert_eq!(c.max_parallelism, Setting::default(None));
        assert_eq!(c.gc, Setting::default(true));
        assert_eq!(c.gc_keep_storage, Setting::default(None));
        assert!(c.registries.is_empty());
    }

    #[test]
    fn rootless_kiln_uses_the_users_store_though_it_is_uid_0_in_its_namespace() {
        // The tests run as root (CI) or not: KILN_ROOTLESS=1 wins either way.
        let mut env = Env::new();
        env.vars.insert("KILN_ROOTLESS".to_owned(), "1".to_owned());
        env.vars.insert("USER".to_owned(), "root".to_owned());
        let c = env.load();
        assert_eq!(c.root.value, env.dir.path().join("home/.local/share/kiln"));
        assert_eq!(c.root.source, Source::Default);
        // $XDG_DATA_HOME when absolute, as the XDG spec says; a relative one is ignored.
        env.vars
            .insert("XDG_DATA_HOME".to_owned(), "/data/u".to_owned());
        assert_eq!(env.load().root.value, PathBuf::from("/data/u/kiln"));
        env.vars
            .insert("XDG_DATA_HOME".to_owned(), "rel".to_owned());
        assert_eq!(
            env.load().root.value,
            env.dir.path().join("home/.local/share/kiln")
        );
        // Anything else than 1 is not the rootless child: root's store.
        env.vars.insert("KILN_ROOTLESS".to_owned(), "0".to_owned());
        assert_eq!(env.load().root.value, PathBuf::from("/var/lib/kiln"));
    }

    #[test]
    fn plugin_allowlist_and_pulls_come_from_the_file_then_the_flags() {
        let env = Env::new();
        env.write(
            &env.system(),
            "[plugins]\nallow = [\"localhost:5000/*\"]\npull = [\"localhost:5000/a@sha256:1\"]\n",
        );
        env.write(&env.user(), "[plugins]\nallow = [\"example.com/acme/*\"]\n");
        let c = env.load();
        // The user file replaces the allowlist key; `pull` stays the system file's.
        assert_eq!(c.plugin_allow.value, vec!["example.com/acme/*".to_owned()]);
        assert_eq!(c.plugin_allow.source, Source::File(env.user()));
        assert_eq!(c.plugin_pull.source, Source::File(env.system()));
        assert_eq!(
            c.plugin_allow_with(&["x/*".to_owned()]),
            vec!["example.com/acme/*".to_owned(), "x/*".to_owned()]
        );
        assert_eq!(
            c.plugin_pull_with(&[
                "localhost:5000/a@sha256:1".to_owned(),
                "localhost:5000/b@sha256:2".to_owned()
            ]),
            vec![
                "localhost:5000/a@sha256:1".to_owned(),
                "localhost:5000/b@sha256:2".to_owned()
            ]
        );
        let text = c.show_text();
        assert!(
            text.contains("plugins.allow = [\"example.com/acme/*\"]"),
            "{text}"
        );
        assert!(
            text.contains("plugins.pull = [\"localhost:5000/a@sha256:1\"]"),
            "{text}"
        );
        // A typo in the table is refused with its position.
        env.write(&env.user(), "[plugins]\nalow = [\"x\"]\n");
        let err = format!("{:#}", env.load_with(None, None).unwrap_err());
        assert!(err.contains("alow"), "{err}");
    }

    #[test]
    fn user_file_overrides_system_file_key_by_key() {
        let env = Env::new();
        env.write(
            &env.system(),
            "root = \"/srv/kiln\"\n[worker]\nexecutor = \"runc\"\nmax-parallelism = 3\n\
             [registry.\"docker.io\"]\nmirrors = [\"mirror.example.com\"]\n\
             [registry.\"quay.io\"]\ninsecure = true\n",
        );
        env.write(
            &env.user(),
            "[worker]\nmax-parallelism = 5\n[registry.\"docker.io\"]\nhttp = true\n\
             [plugins]\ndirs = [\"plugins\", \"/opt/kiln\"]\n",
        );
        let c = env.load();
        let sys = Source::File(env.system());
        let user = Source::File(env.user());
        assert!(c.files.iter().all(|f| f.read), "{:?}", c.files);
        assert_eq!(
            c.root,
            Setting {
                value: "/srv/kiln".into(),
                source: sys.clone()
            }
        );
        assert_eq!(
            c.executor,
            Setting {
                value: Executor::Runc,
                source: sys.clone()
            }
        );
        assert_eq!(c.max_parallelism.value.map(NonZeroUsize::get), Some(5));
        assert_eq!(c.max_parallelism.source, user);
        // Relative directories are relative to the file that names them.
        assert_eq!(
            c.plugin_dirs.value,
            vec![
                env.dir.path().join("xdg/kiln/plugins"),
                PathBuf::from("/opt/kiln")
            ]
        );
        let hub = &c.registries["docker.io"];
        assert_eq!(hub.mirrors.value, vec!["mirror.example.com".to_owned()]);
        assert_eq!(hub.mirrors.source, sys);
        assert_eq!(
            hub.http,
            Setting {
                value: true,
                source: user
            }
        );
        assert_eq!(hub.insecure, Setting::default(false));
        assert!(c.registries["quay.io"].insecure.value);
        let hosts = c.registry_hosts();
        assert_eq!(
            hosts["docker.io"].mirrors,
            vec!["mirror.example.com".to_owned()]
        );
        assert_eq!(hosts["docker.io"].http, Some(true));
    }

    #[test]
    fn env_overrides_files_and_flags_override_env() {
        let mut env = Env::new();
        env.write(
            &env.user(),
            "root = \"/from/file\"\n[worker]\nexecutor = \"embedded\"\nmax-parallelism = 2\n",
        );
        env.vars.insert("KILN_ROOT".into(), "/from/env".into());
        env.vars.insert("KILN_EXECUTOR".into(), "runc".into());
        env.vars.insert("KILN_MAX_PARALLELISM".into(), "7".into());
        let c = env.load();
        assert_eq!(
            c.root,
            Setting {
                value: "/from/env".into(),
                source: Source::Env("KILN_ROOT")
            }
        );
        assert_eq!(c.executor.value, Executor::Runc);
        assert_eq!(c.executor.source, Source::Env("KILN_EXECUTOR"));
        assert_eq!(c.max_parallelism.value.map(NonZeroUsize::get), Some(7));
        let c = env.load_with(None, Some("/from/flag")).unwrap();
        assert_eq!(
            c.root,
            Setting {
                value: "/from/flag".into(),
                source: Source::Flag("--root")
            }
        );

        env.vars.insert("KILN_EXECUTOR".into(), "docker".into());
        let e = env.load_with(None, None).unwrap_err().to_string();
        assert!(
            e.contains("KILN_EXECUTOR=\"docker\": expected embedded or runc"),
            "{e}"
        );
        env.vars.insert("KILN_EXECUTOR".into(), "runc".into());
        env.vars.insert("KILN_MAX_PARALLELISM".into(), "0".into());
        let e = env.load_with(None, None).unwrap_err().to_string();
        assert!(e.contains("KILN_MAX_PARALLELISM=\"0\""), "{e}");
    }

    #[test]
    fn config_flag_replaces_the_searched_files() {
        let env = Env::new();
        env.write(&env.system(), "root = \"/system\"\n");
        env.write(
            &env.user(),
            "root = \"/user\"\n[worker]\nexecutor = \"runc\"\n",
        );
        let given = env.dir.path().join("given.toml");
        env.write(&given, "root = \"/given\"\n");
        let c = env.load_with(Some(&given), None).unwrap();
        assert_eq!(
            c.files,
            vec![FileStatus {
                path: given.clone(),
                read: true
            }]
        );
        assert_eq!(c.root.value, PathBuf::from("/given"));
        assert_eq!(c.executor, Setting::default(Executor::Embedded));

        let missing = env.dir.path().join("missing.toml");
        let e = format!("{:#}", env.load_with(Some(&missing), None).unwrap_err());
        assert!(
            e.contains("missing.toml given by --config does not exist"),
            "{e}"
        );
    }

    #[test]
    fn typos_and_bad_values_are_located() {
        let env = Env::new();
        let cases: &[(&str, &str, &str)] = &[
            (
                "root = \"/x\"\n[worker]\nmax-paralelism = 4\n",
                ":3:1:",
                "unknown field `max-paralelism`",
            ),
            ("roots = \"/x\"\n", ":1:1:", "unknown field `roots`"),
            (
                "[worker]\nexecutor = \"docker\"\n",
                ":2:12:",
                "unknown variant `docker`",
            ),
            ("[worker]\nmax-parallelism = 0\n", ":2:19:", "nonzero"),
            (
                "[registry.\"docker.io\"]\nmirror = [\"m\"]\n",
                ":2:1:",
                "unknown field `mirror`",
            ),
            (
                "[registry.\"docker.io\"]\nmirrors = [\"https://m.example.com\"]\n",
                ":2:11:",
                "has a scheme",
            ),
            (
                "[registry.\"http://docker.io\"]\nhttp = true\n",
                ":1:11:",
                "has a scheme",
            ),
            ("root = \n", ":1:", "string"),
        ];
        for (text, at, why) in cases {
            env.write(&env.user(), text);
            let e = format!("{:#}", env.load_with(None, None).unwrap_err());
            let want = format!("invalid configuration {}{at}", env.user().display());
            assert!(e.contains(&want), "{text:?}: want {want}: {e}");
            assert!(e.contains(why), "{text:?}: want {why}: {e}");
        }
        // The line is shown under the message, with a caret at the column.
        env.write(&env.user(), "[worker]\nexecutor = \"docker\"\n");
        let e = format!("{:#}", env.load_with(None, None).unwrap_err());
        assert!(
            e.contains("\n    2 | executor = \"docker\"\n      |            ^"),
            "{e}"
        );
    }

    #[test]
    fn registry_ca_and_keypairs_are_read_relative_to_their_file() {
        let env = Env::new();
        env.write(
            &env.user(),
            "[registry.\"127.0.0.1:5443\"]\nca = [\"certs/ca.pem\", \"/etc/ssl/other.pem\"]\n\
             [[registry.\"127.0.0.1:5443\".keypair]]\nkey = \"certs/client.key\"\n\
             cert = \"certs/client.pem\"\n\
             [registry.\"127.0.0.1:5444\"]\nmirrors = []\n",
        );
        let c = env.load();
        let dir = env.dir.path().join("xdg/kiln");
        let tls = &c.registries["127.0.0.1:5443"];
        assert_eq!(
            tls.ca.value,
            vec![
                dir.join("certs/ca.pem"),
                PathBuf::from("/etc/ssl/other.pem")
            ]
        );
        assert_eq!(tls.ca.source, Source::File(env.user()));
        assert_eq!(
            tls.keypair.value,
            vec![kiln_registry::KeyPair {
                cert: dir.join("certs/client.pem"),
                key: dir.join("certs/client.key"),
            }]
        );
        // A loopback host with certificates of its own speaks https; one without, plain http.
        assert_eq!(tls.http, Setting::default(false));
        assert!(c.registries["127.0.0.1:5444"].http.value);
        // Unset `http` is left to the registry client, which also looks at certs.d.
        let hosts = c.registry_hosts();
        assert_eq!(hosts["127.0.0.1:5443"].http, None);
        assert_eq!(hosts["127.0.0.1:5443"].ca, tls.ca.value);
        assert_eq!(hosts["127.0.0.1:5443"].keypairs, tls.keypair.value);
        let text = c.show_text();
        let ca_line = format!(
            "registry.\"127.0.0.1:5443\".ca = [\"{}\", \"/etc/ssl/other.pem\"]",
            dir.join("certs/ca.pem").display()
        );
        assert!(text.contains(&ca_line), "{text}");
        let pair_line = format!(
            "registry.\"127.0.0.1:5443\".keypair = [{{ cert = \"{}\", key = \"{}\" }}]",
            dir.join("certs/client.pem").display(),
            dir.join("certs/client.key").display()
        );
        assert!(text.contains(&pair_line), "{text}");
        // Each printed line is valid TOML.
        for line in text.lines().filter(|l| l.starts_with("registry.")) {
            let value = line.split("  #").next().unwrap_or(line);
            toml::from_str::<toml::Table>(value).unwrap_or_else(|e| panic!("{value}: {e}"));
        }

        // A keypair needs both files; a typo in it is refused with its position.
        env.write(
            &env.user(),
            "[[registry.\"r.example.com\".keypair]]\nkey = \"k\"\ncrt = \"c\"\n",
        );
        let err = format!("{:#}", env.load_with(None, None).unwrap_err());
        assert!(err.contains("unknown field `crt`"), "{err}");
        assert!(err.contains(":3:1"), "{err}");
    }

    #[test]
    fn mirrors_with_paths_and_ports_are_accepted() {
        for ok in [
            "mirror.gcr.io",
            "127.0.0.1:5000",
            "harbor.example.com/proxy.docker.io",
            "[::1]:5000",
        ] {
            check_mirror(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "http://x", "a b", "host/Upper"] {
            assert!(check_mirror(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_limits_come_from_the_file_with_docker_sizes() {
        let env = Env::new();
        env.write(
            &env.user(),
            "[build]\nmemory = \"512m\"\ncpu-quota = 50000\npids-limit = 64\n",
        );
        let c = env.load();
        let user = Source::File(env.user());
        assert_eq!(c.memory.value, Some(512 << 20));
        assert_eq!(c.memory.source, user);
        assert_eq!(c.cpu_quota.value, Some(50_000));
        assert_eq!(c.pids_limit.value, Some(64));
        let text = c.show_text();
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
                .to_owned()
        };
        assert!(
            line("build.memory").starts_with("build.memory = 536870912"),
            "{text}"
        );
        assert!(line("build.pids-limit").ends_with(&format!("# {}", env.user().display())));
        for (toml, want) in [
            ("\"1g\"", 1 << 30),
            ("\"512MiB\"", 512 << 20),
            ("1024", 1024),
        ] {
            env.write(&env.user(), &format!("[build]\nmemory = {toml}\n"));
            assert_eq!(env.load().memory.value, Some(want), "{toml}");
        }
        // Unset: unlimited, and not shown.
        env.write(&env.user(), "");
        assert!(!env.load().show_text().contains("build."));
        for bad in ["\"12x\"", "\"0\"", "0", "[build]"] {
            let text = if bad == "[build]" {
                "[build]\nmemroy = 1\n".to_owned()
            } else {
                format!("[build]\nmemory = {bad}\n")
            };
            env.write(&env.user(), &text);
            let err = format!("{:#}", env.load_with(None, None).unwrap_err());
            assert!(err.contains("kiln.toml"), "{bad}: {err}");
        }
    }

    #[test]
    fn show_prints_every_key_with_its_source() {
        let mut env = Env::new();
        env.write(
            &env.user(),
            "[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n",
        );
        env.vars.insert("KILN_EXECUTOR".into(), "runc".into());
        let c = env.load_with(None, Some("/flag/root")).unwrap();
        let text = c.show_text();
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
                .to_owned()
        };
        assert!(
            line("root").contains("\"/flag/root\"") && line("root").ends_with("# --root"),
            "{text}"
        );
        assert!(line("worker.executor").contains("= \"runc\""), "{text}");
        assert!(
            line("worker.executor").ends_with("# env KILN_EXECUTOR"),
            "{text}"
        );
        assert!(
            line("worker.max-parallelism").ends_with("# default"),
            "{text}"
        );
        assert!(
            line("plugins.dirs").starts_with("plugins.dirs = []"),
            "{text}"
        );
        let mirrors = line("registry.\"docker.io\".mirrors");
        assert!(mirrors.contains("[\"127.0.0.1:5000\"]"), "{text}");
        assert!(
            mirrors.ends_with(&format!("# {}", env.user().display())),
            "{text}"
        );
        assert!(
            line("registry.\"docker.io\".http").contains("= false"),
            "{text}"
        );
        assert!(
            text.contains(&format!("#   {} (not found)", env.system().display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("#   {} (read)", env.user().display())),
            "{text}"
        );

        let j = c.show_json();
        assert_eq!(j["values"]["root"]["source"], "--root");
        assert_eq!(j["values"]["worker.executor"]["value"], "runc");
        assert_eq!(
            j["values"]["registry.\"docker.io\".mirrors"]["value"][0],
            "127.0.0.1:5000"
        );
        assert_eq!(j["files"][1]["read"], true);
    }

    #[test]
    fn gc_keys_follow_buildkitd_names_and_units() {
        let env = Env::new();
        env.write(
            &env.user(),
            "[worker]\ngc = false\ngckeepstorage = \"5GB\"\n",
        );
        let c = env.load();
        assert!(!c.gc.value);
        assert_eq!(c.gc_keep_storage.value, Some(KeepStorage::Bytes(5 << 30)));
        assert_eq!(c.gc_keep_storage.source, Source::File(env.user()));
        let policy = c.gc_policy();
        assert!(!policy.enabled);
        assert_eq!(policy.keep_storage, Some(5 << 30));
        assert!(c.show_text().contains("worker.gckeepstorage = 5368709120"));

        env.write(&env.user(), "[worker]\ngckeepstorage = 8000000\n");
        assert_eq!(
            env.load().gc_keep_storage.value,
            Some(KeepStorage::Bytes(8_000_000))
        );
        env.write(&env.user(), "[worker]\ngckeepstorage = \"10%\"\n");
        let c = env.load();
        assert_eq!(c.gc_keep_storage.value, Some(KeepStorage::Percent(10)));
        assert!(c.gc_policy().keep_storage.is_some_and(|n| n > 0));
        assert!(c.show_text().contains("worker.gckeepstorage = \"10%\""));

        env.write(&env.user(), "[worker]\ngckeepstorage = \"lots\"\n");
        let e = env.load_with(None, None).unwrap_err().to_string();
        assert!(
            e.contains(":2:") && e.contains("gckeepstorage \"lots\""),
            "{e}"
        );
    }
}
