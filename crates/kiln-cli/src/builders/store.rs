//! The builders' files: what a builder is (nodes, endpoints, platforms, TLS files) and where it
//! is kept. Every write is a temporary file renamed over the old one, under a lock, so that a
//! reader never sees half a file and two `kiln builder create --append` never lose a node.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use kiln_server::Address;
use kiln_types::Platform;
use serde::{Deserialize, Serialize};

use super::DEFAULT;

/// How a builder's nodes are run. kiln only connects to daemons started by other means
/// (buildx's `remote` driver); the name is kept for buildx's `--driver` flag and `ls` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Driver {
    Remote,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Remote => "remote",
        })
    }
}

/// Whether `text` is meant as an address (`unix://...`, `tcp://...`) rather than a builder name.
pub fn looks_like_address(text: &str) -> bool {
    text.contains("://")
}

/// A node's address in its file: the text `kiln serve --addr` takes, parsed by kiln-server
/// (the one parser of addresses) when read.
mod address_text {
    use kiln_server::Address;

    pub fn serialize<S: serde::Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Address::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The TLS files of a node, as buildx's remote driver options name them (`cacert=`, `cert=`,
/// `key=`, `servername=`): the client checks the daemon against `cacert`, and shows
/// `cert`/`key` when the daemon asks for a client certificate (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    pub cacert: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The name the daemon's certificate must carry; the endpoint's host when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servername: Option<String>,
}

impl Tls {
    /// The options as `--driver-opt` spells them, in a stable order.
    pub fn driver_opts(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("cacert", self.cacert.display().to_string())];
        if let Some(c) = &self.cert {
            out.push(("cert", c.display().to_string()));
        }
        if let Some(k) = &self.key {
            out.push(("key", k.display().to_string()));
        }
        if let Some(s) = &self.servername {
            out.push(("servername", s.clone()));
        }
        out
    }
}

/// One daemon of a builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(with = "address_text")]
    pub endpoint: Address,
    /// The platforms this node is declared to build (`--platform` at creation), normalized;
    /// empty: whatever the daemon reports.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// A named builder: its driver and nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub name: String,
    pub driver: Driver,
    pub nodes: Vec<Node>,
}

impl Builder {
    /// The builder an address given to `--builder` stands for: one node, named after it.
    pub fn ad_hoc(endpoint: Address) -> Builder {
        let name = endpoint.to_string();
        Builder {
            nodes: vec![Node {
                name: name.clone(),
                endpoint,
                platforms: Vec::new(),
                tls: None,
            }],
            name,
            driver: Driver::Remote,
        }
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// buildx's name for a node given none: the builder's name and the first free number.
    pub fn next_node_name(&self) -> String {
        (0..)
            .map(|i| format!("{}{i}", self.name))
            .find(|n| self.node(n).is_none())
            .expect("some number is free")
    }
}

/// Checks a builder or node name as buildx does (a letter, then letters, digits, `.`, `-`,
/// `_`) and lowercases it, as buildx keeps names.
pub fn validate_name(name: &str) -> Result<String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!(
            "invalid name {name:?}: a name starts with a letter and may not contain symbols, \
             except ._-"
        );
    }
    Ok(name.to_ascii_lowercase())
}

/// The directory of builder files, and the `current` selection in it.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

/// Held while a command reads, changes and writes builders.
pub struct Lock {
    _file: std::fs::File,
}

impl Store {
    /// `$XDG_CONFIG_HOME/kiln/builders`, or `$HOME/.config/kiln/builders` when the variable is
    /// unset, empty or relative (the XDG spec says to ignore a relative one); `None` when
    /// neither gives a directory.
    pub fn locate(env: &dyn Fn(&str) -> Option<OsString>) -> Option<Store> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let base = match var("XDG_CONFIG_HOME") {
            Some(dir) if dir.is_absolute() => dir,
            _ => var("HOME")?.join(".config"),
        };
        Some(Store::at(base.join("kiln").join("builders")))
    }

    /// The store in `dir`.
    pub fn at(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The directory.
    #[cfg(test)]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Takes the store's lock (creating the directory), for a read-modify-write.
    pub fn lock(&self) -> Result<Lock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the builders directory {}", self.dir.display()))?;
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Lock { _file: file })
    }

    /// The builder called `name` (any case), `None` when there is none.
    pub fn get(&self, name: &str) -> Result<Option<Builder>> {
        let Ok(name) = validate_name(name) else {
            return Ok(None);
        };
        let path = self.file(&name);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let b: Builder = serde_json::from_slice(&text).with_context(|| {
            format!(
                "builder file {} is damaged (remove it, or fix it by hand)",
                path.display()
            )
        })?;
        Ok(Some(b))
    }

    /// Every stored builder, by name.
    pub fn list(&self) -> Result<Vec<Builder>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut names = BTreeMap::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", self.dir.display()))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if validate_name(name).ok().as_deref() == Some(name) {
                names.insert(name.to_owned(), ());
            }
        }
        let mut out = Vec::new();
        for name in names.keys() {
            if let Some(b) = self.get(name)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Writes `builder` (replacing the one of that name).
    pub fn save(&self, builder: &Builder) -> Result<()> {
        let name = validate_name(&builder.name)?;
        let mut text =
            serde_json::to_vec_pretty(builder).context("encoding the builder as JSON")?;
        text.push(b'\n');
        self.write_atomic(&format!("{name}.json"), &text)
    }

    /// Removes the builder `name`; false when there was none.
    pub fn remove(&self, name: &str) -> Result<bool> {
        let name = validate_name(name)?;
        let path = self.file(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }

    /// The name `kiln builder use` chose, if any (`None` is `default`).
    pub fn current(&self) -> Result<Option<String>> {
        let path = self.dir.join("current");
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t.trim().to_owned()).filter(|n| !n.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Makes `name` the current builder (`None`: back to `default`).
    pub fn set_current(&self, name: Option<&str>) -> Result<()> {
        match name {
            Some(n) if !n.eq_ignore_ascii_case(DEFAULT) => {
                let n = validate_name(n)?;
                self.write_atomic("current", format!("{n}\n").as_bytes())
            }
            _ => {
                let path = self.dir.join("current");
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
                }
            }
        }
    }

    /// The error for a name that is not a builder, listing those that are.
    pub fn not_found(&self, name: &str, source: &str) -> anyhow::Error {
        let mut known = vec![DEFAULT.to_owned()];
        if let Ok(list) = self.list() {
            known.extend(list.into_iter().map(|b| b.name));
        }
        anyhow!(
            "no builder {name:?} found ({source}; known builders: {}); create it with \
             `kiln builder create --name {name} ENDPOINT`",
            known.join(", ")
        )
    }

    /// Writes `file` in the store as a whole: a temporary file, flushed, renamed over it.
    fn write_atomic(&self, file: &str, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating the builders directory {}", self.dir.display()))?;
        let path = self.dir.join(file);
        let tmp = self.dir.join(format!(".{file}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            anyhow!(e).context(format!("writing {}", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_address_in_a_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_owned());
        std::fs::write(
            dir.path().join("b.json"),
            r#"{"name": "b", "driver": "remote", "nodes": [{"name": "n", "endpoint": "tcp://h"}]}"#,
        )
        .unwrap();
        let err = format!("{:#}", store.get("b").unwrap_err());
        assert!(err.contains("b.json") && err.contains("tcp://h"), "{err}");
    }

    #[test]
    fn names_are_checked_and_lowercased_as_buildx_does() {
        assert_eq!(validate_name("My-Builder_1.x").unwrap(), "my-builder_1.x");
        for bad in ["", "1abc", "a/b", "a b", "../x", "-a"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_directory_follows_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let dir = |s: Option<Store>| s.map(|s| s.dir().to_owned());
        assert_eq!(
            dir(Store::locate(&env(&[
                ("XDG_CONFIG_HOME", "/x"),
                ("HOME", "/h")
            ]))),
            Some(PathBuf::from("/x/kiln/builders"))
        );
        // A relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
        assert_eq!(
            dir(Store::locate(&env(&[
                ("XDG_CONFIG_HOME", "rel"),
                ("HOME", "/h")
            ]))),
            Some(PathBuf::from("/h/.config/kiln/builders"))
        );
        assert_eq!(dir(Store::locate(&env(&[("HOME", "")]))), None);
    }

    #[test]
    fn a_builder_round_trips_and_the_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("b"));
        let b = Builder {
            name: "b1".into(),
            driver: Driver::Remote,
            nodes: vec![Node {
                name: "n1".into(),
                endpoint: Address::parse("tcp://10.0.0.1:1234").unwrap(),
                platforms: vec![Platform::new("linux", "arm", Some("v7"))],
                tls: Some(Tls {
                    cacert: "/certs/ca.pem".into(),
                    cert: Some("/certs/cert.pem".into()),
                    key: Some("/certs/key.pem".into()),
                    servername: None,
                }),
            }],
        };
        store.save(&b).unwrap();
        assert_eq!(store.get("B1").unwrap(), Some(b.clone()));
        assert_eq!(store.list().unwrap(), vec![b]);
        let text = std::fs::read_to_string(dir.path().join("b/b1.json")).unwrap();
        assert!(
            text.contains("\"endpoint\": \"tcp://10.0.0.1:1234\""),
            "{text}"
        );
        assert!(text.contains("\"cacert\": \"/certs/ca.pem\""), "{text}");
        // No temporary file is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["b1.json"]);
        assert!(store.remove("b1").unwrap());
        assert!(!store.remove("b1").unwrap());
        assert_eq!(store.get("b1").unwrap(), None);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_owned());
        std::fs::write(dir.path().join("bad.json"), "{\"name\": ").unwrap();
        let err = format!("{:#}", store.get("bad").unwrap_err());
        assert!(err.contains("bad.json") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn current_is_set_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().to_owned());
        assert_eq!(store.current().unwrap(), None);
        store.set_current(Some("B1")).unwrap();
        assert_eq!(store.current().unwrap().as_deref(), Some("b1"));
        store.set_current(Some("default")).unwrap();
        assert_eq!(store.current().unwrap(), None);
        store.set_current(None).unwrap();
        assert_eq!(store.current().unwrap(), None);
    }
}
