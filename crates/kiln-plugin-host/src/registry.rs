//! The set of plugins found on the search path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_plugin_sdk::proto::Kind;

use crate::discovery::{absolute, candidates, SearchPath};
use crate::error::{Error, Refusal, Refused};
use crate::plugin::LoadedPlugin;

/// The plugins found on a [`SearchPath`] and the files that were refused.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    plugins: Vec<Arc<LoadedPlugin>>,
    refused: Vec<Refused>,
    /// Every file tried, by canonical path, with its outcome.
    seen: HashMap<PathBuf, Result<Arc<LoadedPlugin>, Refused>>,
    /// The directories scanned, in order (named when nothing answers a lookup).
    searched: Vec<PathBuf>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        PluginRegistry::default()
    }

    /// Loads every `*.so` of every directory of `search` (not recursive), in order. A plugin
    /// whose name was already loaded is refused as shadowed. Missing directories are skipped.
    pub fn discover(search: &SearchPath) -> Self {
        let mut registry = PluginRegistry::new();
        for dir in search.dirs() {
            registry.scan_dir(dir);
        }
        registry
    }

    /// Loads every `*.so` of `dir`, after what is already registered.
    pub fn scan_dir(&mut self, dir: &Path) {
        let dir = absolute(dir);
        if !self.searched.contains(&dir) {
            self.searched.push(dir.clone());
        }
        match candidates(&dir) {
            Ok(files) => {
                for file in files {
                    // Refusals are recorded in `self.refused`.
                    let _ = self.add_file(&file);
                }
            }
            Err(e) => self.refused.push(Refused {
                path: dir,
                reason: Refusal::Unreadable(e.to_string()),
            }),
        }
    }

    /// Loads and registers one library file. A file already registered (by its canonical path)
    /// is returned as is; a refusal is both returned and recorded in [`PluginRegistry::refused`].
    pub fn add_file(&mut self, path: &Path) -> Result<Arc<LoadedPlugin>, Error> {
        let path = absolute(path);
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if let Some(outcome) = self.seen.get(&key) {
            return outcome.clone().map_err(Error::Refused);
        }
        let outcome = match LoadedPlugin::load(&path) {
            Ok(plugin) => match self.plugins.iter().find(|p| p.name() == plugin.name()) {
                Some(first) => Err(Refused {
                    path: path.clone(),
                    reason: Refusal::Shadowed {
                        name: plugin.name().to_owned(),
                        by: first.path().to_path_buf(),
                    },
                }),
                None => Ok(plugin),
            },
            Err(Error::Refused(r)) => Err(r),
            Err(other) => Err(Refused {
                path: path.clone(),
                reason: Refusal::Open(other.to_string()),
            }),
        };
        match &outcome {
            Ok(plugin) => self.plugins.push(plugin.clone()),
            Err(r) => self.refused.push(r.clone()),
        }
        self.seen.insert(key, outcome.clone());
        outcome.map_err(Error::Refused)
    }

    /// A plugin by explicit file path (`# syntax=/path/to/lib.so`): the registered one if that
    /// file is registered, else the file loaded on its own (not registered, so it does not
    /// shadow or get shadowed).
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedPlugin>, Error> {
        let path = absolute(path);
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        match self.seen.get(&key) {
            Some(Ok(p)) => Ok(p.clone()),
            _ => LoadedPlugin::load(&path),
        }
    }

    /// The loaded plugins, in search order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// The refused files, in search order, with the reasons.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// The directories scanned, in search order (missing ones included).
    pub fn searched(&self) -> &[PathBuf] {
        &self.searched
    }

    /// The frontend named `name_or_syntax`, or answering to that `# syntax=` value. Names win
    /// over syntaxes; earlier plugins win over later ones.
    pub fn frontend(&self, name_or_syntax: &str) -> Result<Arc<LoadedPlugin>, Error> {
        let frontends = || self.plugins.iter().filter(|p| p.has_kind(Kind::Frontend));
        frontends()
            .find(|p| p.name() == name_or_syntax)
            .or_else(|| frontends().find(|p| p.answers_syntax(name_or_syntax)))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: Kind::Frontend,
                name: name_or_syntax.to_owned(),
                available: frontends()
                    .map(|p| {
                        let syntaxes = p
                            .manifest()
                            .frontend
                            .as_ref()
                            .map(|c| c.syntaxes.join(", "))
                            .unwrap_or_default();
                        if syntaxes.is_empty() {
                            p.name().to_owned()
                        } else {
                            format!("{} (syntax {syntaxes})", p.name())
                        }
                    })
                    .collect(),
                searched: self.searched.clone(),
            })
    }

    /// The instruction plugin for `keyword` (case-insensitive).
    pub fn instruction(&self, keyword: &str) -> Result<Arc<LoadedPlugin>, Error> {
        self.find(
            Kind::Instruction,
            keyword,
            |p| p.answers_keyword(keyword),
            |p| {
                p.manifest()
                    .instruction
                    .as_ref()
                    .map(|c| c.keywords.clone())
                    .unwrap_or_default()
            },
        )
    }

    /// The primitive for op `op` (`exec`, or a custom op's primitive name).
    pub fn primitive(&self, op: &str) -> Result<Arc<LoadedPlugin>, Error> {
        self.find(
            Kind::Primitive,
            op,
            |p| p.answers_op(op),
            |p| {
                p.manifest()
                    .primitive
                    .as_ref()
                    .map(|c| c.ops.clone())
                    .unwrap_or_default()
            },
        )
    }

    fn find(
        &self,
        kind: Kind,
        name: &str,
        matches: impl Fn(&LoadedPlugin) -> bool,
        offers: impl Fn(&LoadedPlugin) -> Vec<String>,
    ) -> Result<Arc<LoadedPlugin>, Error> {
        let of_kind = || self.plugins.iter().filter(move |p| p.has_kind(kind));
        of_kind()
            .find(|p| matches(p))
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind,
                name: name.to_owned(),
                available: of_kind()
                    .flat_map(|p| {
                        offers(p)
                            .into_iter()
                            .map(move |o| format!("{o} (plugin {})", p.name()))
                    })
                    .collect(),
                searched: self.searched.clone(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_frontend_names_the_directories_searched_and_the_install_command() {
        let tmp = std::env::temp_dir().join(format!("kiln-no-frontend-{}", std::process::id()));
        let bin_plugins = tmp.join("bin/plugins");
        let lib_plugins = tmp.join("lib/kiln/plugins");
        // One directory exists but is empty, the other does not exist: both were searched.
        std::fs::create_dir_all(&bin_plugins).expect("create plugin dir");
        let search = SearchPath::from_parts(Some(&tmp.join("bin")), None, &[]);
        let registry = PluginRegistry::discover(&search);
        assert_eq!(
            registry.searched(),
            [bin_plugins.clone(), lib_plugins.clone()]
        );

        let err = registry
            .frontend("dockerfile")
            .expect_err("no plugin is installed")
            .to_string();
        std::fs::remove_dir_all(&tmp).expect("remove temp dir");
        assert!(
            err.starts_with(&format!(
                "no frontend plugin for \"dockerfile\"; none is installed in {}, {} (",
                bin_plugins.display(),
                lib_plugins.display()
            )),
            "{err}"
        );
        assert!(err.contains("$KILN_PLUGIN_PATH, --plugin-dir"), "{err}");
        assert!(err.contains("`cargo xtask install`"), "{err}");
    }
}
