//! Builder instances, as buildx keeps them: a named set of nodes (`kiln serve` daemons, each
//! reached at `unix://PATH` or `tcp://HOST:PORT`, with the platforms it is declared to build),
//! stored one JSON file per builder under `$XDG_CONFIG_HOME/kiln/builders/`, plus the `current`
//! selection. `kiln builder create|ls|use|rm|inspect` manage them; [`resolve`] picks the one a
//! build goes to (`--builder` > `KILN_BUILDER` > `current` > `default`). The builder `default`
//! is the local store, built in-process: implicit, never stored, never removed.

mod commands;
pub mod store;

pub use commands::{run, BuilderCommand};
pub use store::{looks_like_address, Builder, Store};

use anyhow::{bail, Result};

/// The name of the local builder (the store of this machine, no daemon).
pub const DEFAULT: &str = "default";

/// The variable that selects a builder when `--builder` is not given (as `BUILDX_BUILDER`).
pub const ENV: &str = "KILN_BUILDER";

/// Where a build goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selected {
    /// The local store, in this process (the builder `default`).
    Local,
    /// Remote nodes: a stored builder, or one made on the spot from an address given to
    /// `--builder`/`KILN_BUILDER` (one node, no declared platforms, no TLS files).
    Remote(Builder),
}

/// The builder `kiln build --builder FLAG` goes to: `flag`, else `$KILN_BUILDER`, else the
/// `current` selection (`kiln builder use`), else `default`. A value starting with `unix://` or
/// `tcp://` is an address; anything else a builder name (case does not matter, as in buildx).
/// An unknown name is an error listing the known builders; a `current` that names a builder
/// removed by hand falls back to `default`, as buildx's does.
pub fn resolve(flag: Option<&str>) -> Result<Selected> {
    let env = |name: &str| std::env::var_os(name);
    resolve_in(
        Store::locate(&env).as_ref(),
        flag,
        std::env::var(ENV).ok().as_deref(),
    )
}

/// [`resolve`] over an explicit store (`None`: no config directory could be found, which only
/// matters when a name must be looked up) and `$KILN_BUILDER` value.
fn resolve_in(store: Option<&Store>, flag: Option<&str>, env: Option<&str>) -> Result<Selected> {
    let given = flag
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| (v, "--builder"))
        .or_else(|| {
            env.map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| (v, ENV))
        });
    let Some((value, source)) = given else {
        // Nothing asked for: the `current` file, whose stale name is not the user's mistake
        // now, so it falls back quietly to the local builder.
        let Some(store) = store else {
            return Ok(Selected::Local);
        };
        return Ok(match store.current()? {
            Some(name) => match store.get(&name)? {
                Some(b) => Selected::Remote(b),
                None => Selected::Local,
            },
            None => Selected::Local,
        });
    };
    if looks_like_address(value) {
        let endpoint =
            kiln_server::Address::parse(value).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        return Ok(Selected::Remote(Builder::ad_hoc(endpoint)));
    }
    if value.eq_ignore_ascii_case(DEFAULT) {
        return Ok(Selected::Local);
    }
    let Some(store) = store else {
        bail!(
            "no builder {value:?} found ({source}): kiln keeps builders under \
             $XDG_CONFIG_HOME/kiln/builders or $HOME/.config/kiln/builders, and neither \
             variable is set"
        );
    };
    match store.get(value)? {
        Some(b) => Ok(Selected::Remote(b)),
        None => Err(store.not_found(value, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::store::{Driver, Node};
    use super::*;
    use kiln_types::Platform;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::at(dir.path().join("kiln/builders"));
        (dir, store)
    }

    fn builder(name: &str, endpoint: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            driver: Driver::Remote,
            nodes: vec![Node {
                name: format!("{name}0"),
                endpoint: kiln_server::Address::parse(endpoint).expect("endpoint"),
                platforms: vec![Platform::new("linux", "arm64", None)],
                tls: None,
            }],
        }
    }

    #[test]
    fn nothing_selected_is_the_local_builder() {
        let (_dir, store) = store();
        assert_eq!(
            resolve_in(Some(&store), None, None).unwrap(),
            Selected::Local
        );
        assert_eq!(resolve_in(None, None, None).unwrap(), Selected::Local);
        // Empty values count as unset, as `KILN_BUILDER= kiln build` in a script.
        assert_eq!(
            resolve_in(Some(&store), Some(""), Some(" ")).unwrap(),
            Selected::Local
        );
    }

    #[test]
    fn flag_beats_environment_beats_current() {
        let (_dir, store) = store();
        for name in ["a", "b", "c"] {
            store
                .save(&builder(name, &format!("unix:///run/{name}.sock")))
                .unwrap();
        }
        store.set_current(Some("c")).unwrap();
        let name = |s: Selected| match s {
            Selected::Remote(b) => b.name,
            Selected::Local => DEFAULT.to_owned(),
        };
        assert_eq!(name(resolve_in(Some(&store), None, None).unwrap()), "c");
        assert_eq!(
            name(resolve_in(Some(&store), None, Some("b")).unwrap()),
            "b"
        );
        assert_eq!(
            name(resolve_in(Some(&store), Some("a"), Some("b")).unwrap()),
            "a"
        );
        // `default` always means the local store, whatever is current.
        assert_eq!(
            resolve_in(Some(&store), Some("default"), None).unwrap(),
            Selected::Local
        );
        assert_eq!(
            resolve_in(Some(&store), None, Some("DEFAULT")).unwrap(),
            Selected::Local
        );
        // Names are case-insensitive, as buildx lowercases them.
        assert_eq!(
            name(resolve_in(Some(&store), Some("A"), None).unwrap()),
            "a"
        );
    }

    #[test]
    fn an_address_is_a_builder_of_one_node() {
        let Selected::Remote(b) =
            resolve_in(None, Some("unix:///run/kiln/kiln.sock"), None).expect("a unix address")
        else {
            panic!("an address is remote")
        };
        assert_eq!(b.nodes.len(), 1);
        assert_eq!(
            b.nodes[0].endpoint,
            kiln_server::Address::Unix("/run/kiln/kiln.sock".into())
        );
        assert!(b.nodes[0].platforms.is_empty());
        let Selected::Remote(b) =
            resolve_in(None, None, Some("tcp://10.0.0.2:1234")).expect("a tcp address")
        else {
            panic!("an address is remote")
        };
        assert_eq!(
            b.nodes[0].endpoint,
            kiln_server::Address::Tcp {
                host: "10.0.0.2".into(),
                port: 1234
            }
        );
        let err = resolve_in(None, Some("tcp://host"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--builder: invalid builder address \"tcp://host\": expected tcp://HOST:PORT",
            "{err}"
        );
    }

    #[test]
    fn an_unknown_name_lists_the_known_builders() {
        let (_dir, store) = store();
        store.save(&builder("b1", "unix:///run/b1.sock")).unwrap();
        store.save(&builder("b2", "unix:///run/b2.sock")).unwrap();
        let err = resolve_in(Some(&store), Some("nope"), None).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.starts_with("no builder \"nope\" found"), "{msg}");
        assert!(msg.contains("default, b1, b2"), "{msg}");
        let err = resolve_in(Some(&store), None, Some("nope")).unwrap_err();
        assert!(format!("{err:#}").contains(ENV), "{err:#}");
        // Without a config directory a name cannot be found, and the message says why.
        let err = resolve_in(None, Some("b1"), None).unwrap_err();
        assert!(format!("{err:#}").contains("XDG_CONFIG_HOME"), "{err:#}");
    }

    #[test]
    fn a_current_builder_removed_by_hand_falls_back_to_default() {
        let (_dir, store) = store();
        store
            .save(&builder("gone", "unix:///run/gone.sock"))
            .unwrap();
        store.set_current(Some("gone")).unwrap();
        std::fs::remove_file(store.dir().join("gone.json")).unwrap();
        assert_eq!(
            resolve_in(Some(&store), None, None).unwrap(),
            Selected::Local
        );
    }
}
