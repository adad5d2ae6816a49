//! Plugins pulled from registries: `# syntax=REF@sha256:…`, `--plugin REF@sha256:…` and
//! kiln.toml's `[plugins] pull`.
//!
//! A plugin is native code that runs inside kiln, so a registry reference is used only pinned
//! by digest, or when an allowlist pattern (`--allow-plugin`, `[plugins] allow`) admits it
//! unpinned; then the tag is resolved to a digest now and the log shows it. The pinned index is
//! pulled for the host's platform with every digest verified (kiln-registry's
//! `pull_plugin`), and kept in the store under `<root>/plugins/<index digest>/`: written into
//! the store's tmp/ and renamed into place, so a killed pull leaves nothing half-written. A
//! later build loads it from there without the network, after checking the chain of digests
//! again (the index's own, the manifest the index names, the library the manifest names).
//! Then it is loaded like an installed plugin, with the same probing and refusals.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_plugin_host::{LoadedPlugin, PluginRegistry};
use kiln_plugin_sdk::proto::{Kind, Manifest};
use kiln_registry::{parse_plugin_index, parse_plugin_manifest, PulledPlugin, Reference, Registry};
use kiln_snapshot::Store;
use kiln_types::{Digest, Platform, PlatformMatcher};
use serde::{Deserialize, Serialize};

use crate::{Engine, Error};

/// The store directory of pulled plugins.
pub const PULLED_DIR: &str = "plugins";
const INDEX_FILE: &str = "index.json";
const MANIFEST_FILE: &str = "manifest.json";
const CONFIG_FILE: &str = "config.json";
const SOURCE_FILE: &str = "source.json";
const LIBRARY_FILE: &str = "plugin.so";

/// How long the refusal of an unpinned reference waits for the registry to say what the tag
/// names now (the hint); the refusal is given either way.
const HINT_LOOKUP: Duration = Duration::from_secs(10);

/// Where a pulled plugin came from, kept beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledSource {
    /// `registry/repository` (`localhost:5000/kiln/dockerfile`).
    pub name: String,
    /// The tag it was asked by, when it was (an allowed unpinned reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The index digest: what pins it.
    pub index_digest: Digest,
    /// The manifest of the platform taken.
    pub manifest_digest: Digest,
    /// The platform taken.
    pub platform: Platform,
    /// The library.
    pub library_digest: Digest,
}

impl PulledSource {
    /// `registry/repository@sha256:…`: what `# syntax=` pins.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.name, self.index_digest)
    }
}

/// A pulled plugin in the store, checked.
#[derive(Clone, Debug)]
pub struct KeptPlugin {
    /// Its directory.
    pub dir: PathBuf,
    /// The library file.
    pub library: PathBuf,
    /// Where it came from.
    pub source: PulledSource,
    /// The plugin manifest as the publisher's probe gave it (the config), when readable.
    pub manifest: Option<Manifest>,
}

/// Who asked for a plugin, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    /// `# syntax=`, `BUILDKIT_SYNTAX` or `--frontend`.
    Syntax(&'static str),
    /// `--plugin` or `[plugins] pull`.
    Plugin,
}

impl Asker {
    fn name(self) -> &'static str {
        match self {
            Asker::Syntax(origin) => origin,
            Asker::Plugin => "--plugin",
        }
    }

    /// The line to write with a pinned value, for the hint.
    fn pinned_line(self, pinned: &str) -> String {
        match self {
            Asker::Syntax("--frontend") => format!("--frontend {pinned}"),
            Asker::Syntax("BUILDKIT_SYNTAX") => format!("--build-arg BUILDKIT_SYNTAX={pinned}"),
            Asker::Syntax(_) => format!("# syntax={pinned}"),
            Asker::Plugin => format!("--plugin {pinned}"),
        }
    }
}

/// Whether `pattern` (a glob: `*` any run of characters, `?` one) matches `text` whole.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it was tried at, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The allowlist pattern admitting the unpinned `value` (as written, or normalized:
/// `registry/repository[:tag]`), if any.
pub(crate) fn allowed_by<'a>(
    patterns: &'a [String],
    value: &str,
    r: &Reference,
) -> Option<&'a str> {
    let normalized = match &r.tag {
        Some(t) => format!("{}:{t}", r.name()),
        None => r.name(),
    };
    patterns
        .iter()
        .find(|p| {
            let p = p.trim();
            glob_match(p, value) || glob_match(p, &normalized) || glob_match(p, &r.name())
        })
        .map(String::as_str)
}

fn pulled_root(store: &Store) -> PathBuf {
    store.root().join(PULLED_DIR)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and checks the kept plugin in `dir`: the index has the digest the directory is named
/// by, it lists the manifest, the manifest names the library, and the library has that digest.
fn check_kept(dir: &Path) -> Result<KeptPlugin, String> {
    let hex = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a pulled plugin directory", dir.display()))?;
    let index_digest: Digest = format!("sha256:{hex}")
        .parse()
        .map_err(|_| format!("{}: not named by a digest", dir.display()))?;
    let source: PulledSource = read_json(&dir.join(SOURCE_FILE))?;
    let index = std::fs::read(dir.join(INDEX_FILE)).map_err(|e| format!("read index: {e}"))?;
    let got = Digest::of(&index);
    if got != index_digest || source.index_digest != index_digest {
        return Err(format!(
            "its index has digest {got}, the directory says {index_digest}"
        ));
    }
    let parsed = parse_plugin_index(&index)?;
    if !parsed
        .manifests
        .iter()
        .any(|d| d.digest == source.manifest_digest)
    {
        return Err(format!(
            "the index does not list manifest {}",
            source.manifest_digest
        ));
    }
    let manifest =
        std::fs::read(dir.join(MANIFEST_FILE)).map_err(|e| format!("read manifest: {e}"))?;
    let got = Digest::of(&manifest);
    if got != source.manifest_digest {
        return Err(format!(
            "its manifest has digest {got}, expected {}",
            source.manifest_digest
        ));
    }
    let (_, library_desc) = parse_plugin_manifest(&manifest)?;
    let library = dir.join(LIBRARY_FILE);
    let bytes = std::fs::read(&library).map_err(|e| format!("read library: {e}"))?;
    let got = Digest::of(&bytes);
    if got != library_desc.digest || bytes.len() as u64 != library_desc.size {
        return Err(format!(
            "its library has digest {got} ({} bytes), the manifest says {} ({} bytes)",
            bytes.len(),
            library_desc.digest,
            library_desc.size
        ));
    }
    let manifest = read_json(&dir.join(CONFIG_FILE)).ok();
    Ok(KeptPlugin {
        dir: dir.to_path_buf(),
        library,
        source,
        manifest,
    })
}

/// Every pulled plugin kept under `root` (for `kiln plugins ls`), each checked: a directory
/// that fails the check is listed with the reason.
pub fn pulled_plugins(root: &Path) -> Vec<(PathBuf, Result<KeptPlugin, String>)> {
    let Ok(entries) = std::fs::read_dir(root.join(PULLED_DIR)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let checked = check_kept(&d);
            (d, checked)
        })
        .collect()
}

/// Writes `pulled` into the store: a tmp directory, then renamed to its place. A directory
/// another build put there meanwhile wins (same digest, same bytes).
fn keep(store: &Store, pulled: &PulledPlugin, source: &PulledSource) -> Result<KeptPlugin, String> {
    let root = pulled_root(store);
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let tmp = store
        .temp_dir("plugin-pull")
        .map_err(|e| format!("store tmp: {e}"))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), String> {
        use std::io::Write;
        let path = tmp.join(name);
        let mut f =
            std::fs::File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("write {}: {e}", path.display()))
    };
    let source_json = serde_json::to_vec_pretty(source).map_err(|e| e.to_string())?;
    let written = write(INDEX_FILE, &pulled.index)
        .and_then(|()| write(MANIFEST_FILE, &pulled.manifest))
        .and_then(|()| write(CONFIG_FILE, &pulled.config))
        .and_then(|()| write(LIBRARY_FILE, &pulled.library))
        .and_then(|()| write(SOURCE_FILE, &source_json));
    let dest = root.join(source.index_digest.hex());
    let moved = written.and_then(|()| {
        std::fs::rename(&tmp, &dest).or_else(|e| {
            if dest.is_dir() {
                Ok(())
            } else {
                Err(format!("rename into {}: {e}", dest.display()))
            }
        })
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    moved?;
    check_kept(&dest)
}

/// A pulled plugin loaded, and the words that say where it came from.
pub(crate) struct Obtained {
    pub(crate) plugin: Arc<LoadedPlugin>,
    /// `from REF@sha256:… (…)`.
    pub(crate) from: String,
}

impl Engine {
    /// Patterns (globs) of plugin references that may be used without a digest
    /// (`--allow-plugin`, kiln.toml `[plugins] allow`).
    pub fn allow_plugins(&mut self, patterns: Vec<String>) {
        self.plugin_allow = patterns;
    }

    /// The engine one build of a daemon runs on when its request carries `--plugin` refs or
    /// `--allow-plugin` patterns: this engine's store, cache and registry client, with a plugin
    /// set and allow list of its own, so that what one client asks for never reaches another
    /// client's build (the daemon's own engine is shared by all its builds). The plugins are
    /// pulled into this engine's store. Without refs or patterns, this engine itself. Also
    /// returns the lines [`Engine::add_plugins`] returns.
    pub async fn for_build(
        self: &Arc<Self>,
        refs: &[String],
        allow: &[String],
    ) -> Result<(Arc<Engine>, Vec<String>), Error> {
        if refs.is_empty() && allow.is_empty() {
            return Ok((self.clone(), Vec::new()));
        }
        // The same plugins as this engine, in the same order (dlopen of a library already
        // loaded hands back the same handle): the scanned directories, then what the daemon
        // itself pulled at start.
        let mut plugins = PluginRegistry::new();
        for dir in &self.plugin_dirs {
            plugins.scan_dir(dir);
        }
        for p in self.plugins.plugins() {
            // A refusal is recorded in the registry, as at start.
            let _ = plugins.add_file(p.path());
        }
        let mut engine = Engine {
            store: self.store.clone(),
            index: self.index.clone(),
            plugins: Arc::new(plugins),
            plugin_dirs: self.plugin_dirs.clone(),
            concurrency: self.concurrency,
            cache_mounts: self.cache_mounts.clone(),
            registry: self.registry.clone(),
            gc: self.gc,
            plugin_allow: self.plugin_allow.iter().chain(allow).cloned().collect(),
        };
        let lines = engine.add_plugins(refs).await?;
        Ok((Arc::new(engine), lines))
    }

    /// Pulls (or finds in the store) and registers the instruction and primitive plugins
    /// `refs` (`--plugin REF@sha256:…`, `[plugins] pull`), before a build, so that its frontend
    /// finds their instructions as it finds installed ones. Returns a line per plugin saying
    /// what was loaded from where. Call it before any build: the plugin set is shared with
    /// running builds afterwards.
    pub async fn add_plugins(&mut self, refs: &[String]) -> Result<Vec<String>, Error> {
        let mut lines = Vec::new();
        for value in refs {
            let value = value.trim();
            let Some(r) = crate::syntax::as_reference(value) else {
                return Err(Error::PluginPull {
                    reference: value.to_owned(),
                    why: "--plugin takes a registry reference pinned by digest \
                          (REGISTRY/REPOSITORY@sha256:…, as `kiln plugins push` prints it); \
                          installed plugins are found in the plugin directories"
                        .to_owned(),
                });
            };
            let kept = self.obtain(Asker::Plugin, value, r, None).await?;
            let plugins = Arc::get_mut(&mut self.plugins).ok_or_else(|| Error::PluginPull {
                reference: value.to_owned(),
                why: "plugins can only be added before the first build".to_owned(),
            })?;
            let plugin = register(plugins, &kept.0, value)?;
            lines.push(format!(
                "plugin {} {} ({}) {}",
                plugin.name(),
                plugin.version(),
                kinds(&plugin),
                kept.1
            ));
        }
        Ok(lines)
    }

    /// The frontend a registry reference names (`# syntax=REF@sha256:…`), pulled or found in
    /// the store and loaded; `value` is as written.
    pub(crate) async fn pulled_frontend(
        &self,
        origin: &'static str,
        value: &str,
        r: Reference,
        unknown: Error,
    ) -> Result<Obtained, Error> {
        let (kept, from) = self
            .obtain(Asker::Syntax(origin), value, r, Some(unknown))
            .await?;
        let plugin = load(&self.plugins, &kept, value)?;
        if !plugin.has_kind(Kind::Frontend) {
            return Err(Error::PluginPull {
                reference: value.to_owned(),
                why: format!(
                    "plugin {} ({}) is not a frontend: {origin} needs one",
                    plugin.name(),
                    kinds(&plugin)
                ),
            });
        }
        Ok(Obtained { plugin, from })
    }

    /// The kept plugin for `r` (pinned, or unpinned and allowed), pulling it when the store
    /// lacks it, with the words saying where it came from.
    async fn obtain(
        &self,
        asker: Asker,
        value: &str,
        r: Reference,
        unknown: Option<Error>,
    ) -> Result<(KeptPlugin, String), Error> {
        let pull_err = |why: String| Error::PluginPull {
            reference: value.to_owned(),
            why,
        };
        let (pinned, note) = match r.digest {
            Some(_) => (r, None),
            None => {
                let Some(pattern) = allowed_by(&self.plugin_allow, value, &r) else {
                    let hint = pin_hint(&self.registry, asker, &r).await;
                    return Err(Error::UnpinnedPlugin {
                        origin: asker.name(),
                        value: value.to_owned(),
                        hint,
                        unknown: unknown.map(Box::new),
                    });
                };
                let digest = self
                    .registry
                    .resolve_digest(&r)
                    .await
                    .map_err(|e| pull_err(e.to_string()))?;
                let note = format!(
                    "{value} resolved now to {digest}; unpinned, allowed by the pattern {pattern:?}"
                );
                (
                    Reference {
                        digest: Some(digest),
                        ..r
                    },
                    Some(note),
                )
            }
        };
        let index_digest = pinned.digest.expect("pinned above");
        let source_name = pinned.name();
        let dir = pulled_root(&self.store).join(index_digest.hex());
        let describe = |source: &PulledSource, how: &str| {
            let mut s = format!("from {} ({how}", source.pinned());
            if let Some(n) = &note {
                s.push_str("; ");
                s.push_str(n);
            }
            s.push(')');
            s
        };
        if dir.is_dir() {
            match check_kept(&dir) {
                Ok(kept)
                    if PlatformMatcher::only(&Platform::host()).matches(&kept.source.platform) =>
                {
                    let from = describe(&kept.source, "kept in the store");
                    return Ok((kept, from));
                }
                // Changed on disk behind kiln's back, or for another platform: pulled again.
                _ => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        let pulled = self
            .registry
            .pull_plugin(&pinned, &Platform::host())
            .await
            .map_err(|e| {
                pull_err(match e.category() {
                    kiln_registry::Category::Invalid => {
                        format!("{e}: the plugin is refused, nothing was kept")
                    }
                    _ => e.to_string(),
                })
            })?;
        let (_, library_desc) = parse_plugin_manifest(&pulled.manifest).map_err(&pull_err)?;
        let source = PulledSource {
            name: source_name,
            tag: pinned.tag.clone(),
            index_digest,
            manifest_digest: pulled.manifest_desc.digest,
            platform: pulled
                .manifest_desc
                .platform
                .clone()
                .unwrap_or_else(Platform::host),
            library_digest: library_desc.digest,
        };
        let store = self.store.clone();
        let kept = tokio::task::spawn_blocking(move || keep(&store, &pulled, &source))
            .await
            .map_err(|e| pull_err(format!("keeping it in the store failed to run: {e}")))?
            .map_err(|why| pull_err(format!("cannot keep it in the store: {why}")))?;
        let from = describe(&kept.source, "pulled now, kept in the store");
        Ok((kept, from))
    }
}

/// Loads a kept library with the host's probing; a refused one is removed from the store (it
/// would be refused again).
fn load(
    plugins: &PluginRegistry,
    kept: &KeptPlugin,
    value: &str,
) -> Result<Arc<LoadedPlugin>, Error> {
    plugins
        .load_file(&kept.library)
        .map_err(|e| refused(kept, value, e))
}

/// Loads and registers a kept library (instruction and primitive plugins).
fn register(
    plugins: &mut PluginRegistry,
    kept: &KeptPlugin,
    value: &str,
) -> Result<Arc<LoadedPlugin>, Error> {
    plugins
        .add_file(&kept.library)
        .map_err(|e| refused(kept, value, e))
}

fn refused(kept: &KeptPlugin, value: &str, e: kiln_plugin_host::Error) -> Error {
    let shadowed = matches!(
        &e,
        kiln_plugin_host::Error::Refused(r) if matches!(r.reason, kiln_plugin_host::Refusal::Shadowed { .. })
    );
    if !shadowed {
        let _ = std::fs::remove_dir_all(&kept.dir);
    }
    Error::PluginPull {
        reference: value.to_owned(),
        why: format!(
            "the library pulled from {} is refused: {e}",
            kept.source.pinned()
        ),
    }
}

fn kinds(plugin: &LoadedPlugin) -> String {
    plugin
        .kinds()
        .iter()
        .map(|k| format!("{k:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// How to pin `r`: the exact line with the digest its tag names now, when the registry says.
async fn pin_hint(registry: &Registry, asker: Asker, r: &Reference) -> String {
    let shown = match &r.tag {
        Some(t) => format!("{}:{t}", r.name()),
        None => r.name(),
    };
    let looked = tokio::time::timeout(HINT_LOOKUP, registry.resolve_digest(r)).await;
    match looked {
        Ok(Ok(digest)) => format!(
            "{shown} names {digest} now; to use it, pin it (after checking it is the plugin you \
             mean to run): `{}`, or admit the unpinned name with --allow-plugin PATTERN or \
             kiln.toml's `[plugins] allow`",
            asker.pinned_line(&format!("{shown}@{digest}"))
        ),
        Ok(Err(e)) => format!(
            "pin it as `{}` with the digest `kiln plugins push` printed (the registry could not \
             be asked what {shown} names now: {e}), or admit the unpinned name with \
             --allow-plugin PATTERN or kiln.toml's `[plugins] allow`",
            asker.pinned_line(&format!("{shown}@sha256:<digest>"))
        ),
        Err(_) => format!(
            "pin it as `{}` with the digest `kiln plugins push` printed (the registry did not \
             say within {} s what {shown} names now), or admit the unpinned name with \
             --allow-plugin PATTERN or kiln.toml's `[plugins] allow`",
            asker.pinned_line(&format!("{shown}@sha256:<digest>")),
            HINT_LOOKUP.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("localhost:5000/*", "localhost:5000/kiln/df:1", true),
            ("localhost:5000/*", "localhost:5001/kiln/df:1", false),
            ("*", "anything/at:all", true),
            ("example.com/acme/fe:?", "example.com/acme/fe:1", true),
            ("example.com/acme/fe:?", "example.com/acme/fe:12", false),
            ("example.com/acme/fe", "example.com/acme/fe:1", false),
            ("*/fe*", "example.com/acme/fe:1", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn allowlist_matches_written_and_normalized_forms() {
        let r = |v: &str| Reference::parse_normalized(v).unwrap();
        let patterns = vec![
            "docker.io/acme/*".to_owned(),
            "localhost:5000/fe".to_owned(),
        ];
        // Written familiar, matched normalized.
        assert_eq!(
            allowed_by(&patterns, "acme/fe:1", &r("acme/fe:1")),
            Some("docker.io/acme/*")
        );
        // A pattern without a tag admits every tag of that repository.
        assert_eq!(
            allowed_by(&patterns, "localhost:5000/fe:2", &r("localhost:5000/fe:2")),
            Some("localhost:5000/fe")
        );
        assert_eq!(
            allowed_by(
                &patterns,
                "localhost:5000/other:2",
                &r("localhost:5000/other:2")
            ),
            None
        );
        assert_eq!(allowed_by(&[], "acme/fe:1", &r("acme/fe:1")), None);
    }

    #[test]
    fn a_kept_plugin_is_checked_down_to_its_library() {
        use kiln_registry::{plugin_index, plugin_manifest};
        use kiln_types::image::{Descriptor, MEDIA_TYPE_MANIFEST};
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let config = br#"{"name":"x","version":"1","abi_version":1,"kinds":["frontend"]}"#.to_vec();
        let library = b"\x7fELF not really".to_vec();
        let config_desc = Descriptor::new(
            kiln_registry::PLUGIN_CONFIG_MEDIA_TYPE,
            Digest::of(&config),
            config.len() as u64,
        );
        let library_desc = Descriptor::new(
            kiln_registry::PLUGIN_LIBRARY_MEDIA_TYPE,
            Digest::of(&library),
            library.len() as u64,
        );
        let manifest = plugin_manifest(&config_desc, &library_desc);
        let mut entry = Descriptor::new(
            MEDIA_TYPE_MANIFEST,
            Digest::of(&manifest),
            manifest.len() as u64,
        );
        entry.platform = Some(Platform::host());
        let index = plugin_index(vec![entry.clone()]);
        let pulled = PulledPlugin {
            reference: Reference::parse_normalized(&format!(
                "localhost:5000/x@{}",
                Digest::of(&index)
            ))
            .unwrap(),
            index: index.clone(),
            manifest_desc: entry,
            manifest: manifest.clone(),
            config,
            library_desc: library_desc.clone(),
            library,
        };
        let source = PulledSource {
            name: "localhost:5000/x".into(),
            tag: None,
            index_digest: Digest::of(&index),
            manifest_digest: Digest::of(&manifest),
            platform: Platform::host(),
            library_digest: library_desc.digest,
        };
        let kept = keep(&store, &pulled, &source).unwrap();
        assert_eq!(kept.source, source);
        assert_eq!(
            kept.dir,
            tmp.path().join("plugins").join(source.index_digest.hex())
        );
        // Nothing is left in the store's tmp/.
        assert_eq!(
            std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0
        );
        let listed = pulled_plugins(tmp.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].1.as_ref().unwrap().source.pinned(),
            source.pinned()
        );

        // A library that is no plugin is refused at load like an installed one, and dropped
        // from the store (it would be refused again).
        let err = load(&PluginRegistry::new(), &kept, "localhost:5000/x@…")
            .expect_err("garbage is no library")
            .to_string();
        assert!(
            err.starts_with(
                "plugin localhost:5000/x@…: the library pulled from localhost:5000/x@sha256:"
            ) && err.contains("is refused: ")
                && err.contains("cannot be loaded"),
            "{err}"
        );
        assert!(!kept.dir.exists());
        let kept = keep(&store, &pulled, &source).unwrap();

        // A library changed on disk fails the check, naming both digests.
        std::fs::write(&kept.library, b"\x7fELF tampered").unwrap();
        let err = check_kept(&kept.dir).unwrap_err();
        assert!(
            err.contains(&library_desc.digest.to_string())
                && err.contains("its library has digest"),
            "{err}"
        );
        // So does an index that is not the one the directory names.
        std::fs::write(kept.dir.join(INDEX_FILE), plugin_index(vec![])).unwrap();
        let err = check_kept(&kept.dir).unwrap_err();
        assert!(err.contains("its index has digest"), "{err}");
    }

    /// A daemon's build with `--allow-plugin` gets an engine of its own: the pattern admits
    /// references for that build, never for the daemon's engine that other clients' builds
    /// share; a build without plugin flags runs on the shared engine itself.
    #[tokio::test]
    async fn a_builds_plugin_flags_stay_with_that_build() {
        let root = tempfile::tempdir().unwrap();
        let engine = Arc::new(
            Engine::new(crate::EngineConfig {
                root: root.path().to_owned(),
                plugin_dirs: Vec::new(),
                concurrency: None,
                insecure_registries: Vec::new(),
                registries: Default::default(),
                gc: crate::gc::GcPolicy::default(),
            })
            .unwrap(),
        );
        let (same, lines) = engine.for_build(&[], &[]).await.unwrap();
        assert!(Arc::ptr_eq(&same, &engine));
        assert!(lines.is_empty());
        let pattern = "localhost:5000/kiln/*".to_owned();
        let (own, lines) = engine
            .for_build(&[], std::slice::from_ref(&pattern))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&own, &engine));
        assert!(lines.is_empty());
        assert_eq!(own.plugin_allow, vec![pattern]);
        assert!(engine.plugin_allow.is_empty(), "{:?}", engine.plugin_allow);
        // The same installed plugins, in the same order.
        let names = |e: &Engine| {
            e.plugins()
                .plugins()
                .iter()
                .map(|p| p.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&own), names(&engine));
    }
}
