//! `cargo xtask tidy`: the dependency rule of DESIGN.md, checked on the declared dependencies of
//! the workspace packages (`cargo metadata --no-deps`), plus the `//!` doc every crate starts with.
//!
//! The rule lives in the three tables below; `check` is a pure function over a small model so the
//! rule itself has unit tests.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::workspace::Workspace;

/// The layer of every core crate (everything under `crates/`), in tenths: 15 is L1.5. A core crate
/// may depend only on core crates of a strictly lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("kiln-types", 0),
    ("kiln-plugin-abi", 0),
    ("kiln-ignore", 0),
    ("kiln-attest", 5),
    ("kiln-graph", 10),
    ("kiln-solver", 10),
    ("kiln-snapshot", 10),
    ("kiln-registry", 10),
    ("kiln-emulation", 10),
    ("kiln-api", 10),
    ("kiln-contextsync", 10),
    ("kiln-plugin-sdk", 15),
    ("kiln-cache", 20),
    ("kiln-plugin-host", 20),
    ("kiln-export", 30),
    ("kiln-engine", 40),
    ("kiln-progress", 40),
    ("kiln-server", 45),
    ("kiln-cli", 50),
];

/// Same-layer dependencies between core crates that are allowed on purpose: (crate, dependency,
/// why). Keep it short; every entry is a hole in the layering.
const ALLOWED_SAME_LAYER: &[(&str, &str, &str)] = &[(
    "kiln-registry",
    "kiln-snapshot",
    "pulled blobs stream straight into the content store",
)];

/// Core crates a plugin's or frontend's own tests may use as dev-dependencies: the host, to
/// load the built cdylib the way kiln does (STYLE.md: tests run through the loaded plugin too).
const PLUGIN_TEST_CORE: &[&str] = &["kiln-plugin-host"];

/// The only core crates the plugin side (`plugins/`, `frontends/`, `tests/plugins/`) may use.
const PLUGIN_SIDE_CORE: &[&str] = &[
    "kiln-plugin-sdk",
    "kiln-plugin-abi",
    "kiln-graph",
    "kiln-types",
    "kiln-ignore",
];

/// Every plugin compiles kiln-plugin-sdk, so it may use only these.
const SDK: &str = "kiln-plugin-sdk";
const SDK_DEPS: &[&str] = &["kiln-plugin-abi", "kiln-graph", "kiln-types"];

/// Where a package lives, which decides the rules it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// `crates/`
    Core,
    /// `frontends/`
    Frontend,
    /// `plugins/`
    Plugin,
    /// `tests/plugins/`
    TestPlugin,
    /// `tests/` (the end-to-end tests)
    Tests,
    /// `xtask/`
    Xtask,
    /// anywhere else
    Elsewhere(String),
}

pub struct Crate {
    pub name: String,
    pub place: Place,
    /// (package name, is a dev-dependency)
    pub deps: Vec<(String, bool)>,
    /// Crate roots (`src/lib.rs`, `src/main.rs`) that do not start with a `//!` comment.
    pub undocumented: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub krate: String,
    pub dep: Option<String>,
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dep {
            Some(dep) => write!(f, "tidy: {} depends on {dep}: {}", self.krate, self.rule),
            None => write!(f, "tidy: {}: {}", self.krate, self.rule),
        }
    }
}

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|&(_, l)| l)
}

fn show_layer(l: u8) -> String {
    if l.is_multiple_of(10) {
        format!("L{}", l / 10)
    } else {
        format!("L{}.{}", l / 10, l % 10)
    }
}

/// Every violation of the dependency rule and of the doc rule in `crates`. Dependencies that are
/// neither a workspace package nor a known core crate are third-party and always allowed.
pub fn check(crates: &[Crate]) -> Vec<Violation> {
    let place_of = |name: &str| -> Option<Place> {
        match crates.iter().find(|c| c.name == name) {
            Some(c) => Some(c.place.clone()),
            None => layer(name).map(|_| Place::Core),
        }
    };
    let mut out = Vec::new();
    for c in crates {
        let mut bad = |dep: Option<&str>, rule: String| {
            out.push(Violation {
                krate: c.name.clone(),
                dep: dep.map(str::to_owned),
                rule,
            })
        };
        match &c.place {
            Place::Core if layer(&c.name).is_none() => bad(
                None,
                "lives under crates/ but is not in the layer table: add it to the layer table in \
                 xtask/src/tidy.rs (and to DESIGN.md)"
                    .into(),
            ),
            Place::Core => {}
            Place::Elsewhere(dir) => bad(
                None,
                format!(
                    "lives in {dir}/, outside crates/, frontends/, plugins/, tests/ and xtask/: \
                     move it, or teach xtask/src/tidy.rs where it belongs"
                ),
            ),
            other if layer(&c.name).is_some() => bad(
                None,
                format!("is in the layer table of core crates but lives in {other:?}: core crates live under crates/"),
            ),
            _ => {}
        }
        for file in &c.undocumented {
            bad(
                None,
                format!(
                    "{file} does not start with a `//!` doc comment: say what the crate is for and \
                     what it must not depend on"
                ),
            );
        }
        for (dep, dev) in &c.deps {
            let Some(dep_place) = place_of(dep) else {
                continue; // third-party
            };
            if let Some(rule) = dep_rule(c, dep, *dev, &dep_place) {
                bad(Some(dep), rule);
            }
        }
    }
    out
}

/// Why `c` may not depend on `dep` (which lives in `dep_place`), or `None` when it may.
fn dep_rule(c: &Crate, dep: &str, dev: bool, dep_place: &Place) -> Option<String> {
    let plugin_side = [Place::Frontend, Place::Plugin, Place::TestPlugin];
    match (&c.place, dep_place) {
        (Place::Core, Place::Core) => {
            if c.name == SDK {
                return (!SDK_DEPS.contains(&dep)).then(|| {
                    format!(
                        "{SDK} is compiled into every plugin, so it may use only {}",
                        SDK_DEPS.join(", ")
                    )
                });
            }
            let (Some(mine), Some(theirs)) = (layer(&c.name), layer(dep)) else {
                return None; // reported once, as "not in the layer table"
            };
            let allowed = ALLOWED_SAME_LAYER
                .iter()
                .any(|&(k, d, _)| k == c.name && d == dep);
            (theirs >= mine && !(theirs == mine && allowed)).then(|| {
                format!(
                    "a core crate may use only core crates of a lower layer, and {} is {} while {dep} \
                     is {}{}",
                    c.name,
                    show_layer(mine),
                    show_layer(theirs),
                    if theirs == mine {
                        " (an intended same-layer dependency goes in ALLOWED_SAME_LAYER in xtask/src/tidy.rs)"
                    } else {
                        ""
                    }
                )
            })
        }
        (Place::Core, Place::Frontend | Place::Plugin) => Some(
            "core crates never depend on frontends/ or plugins/: move the shared part into a core crate"
                .into(),
        ),
        (Place::Core, Place::TestPlugin | Place::Tests) => (!dev).then(|| {
            "core crates may use tests/ packages only as dev-dependencies".into()
        }),
        (Place::Core, _) => Some("core crates depend only on lower core crates and third-party crates".into()),
        (p, Place::Core) if plugin_side.contains(p) && dev && PLUGIN_TEST_CORE.contains(&dep) => None,
        (p, Place::Core) if plugin_side.contains(p) => (!PLUGIN_SIDE_CORE.contains(&dep)).then(|| {
            format!(
                "plugins and frontends may use only {} of the core, never the engine, solver, cache, \
                 snapshot, registry, export, host, progress or cli: ask the host through the plugin ABI instead",
                PLUGIN_SIDE_CORE.join(", ")
            )
        }),
        (p, Place::Frontend | Place::Plugin) if plugin_side.contains(p) => None,
        (p, Place::TestPlugin) if plugin_side.contains(p) => {
            (*p != Place::TestPlugin && !dev).then(|| "only tests use tests/plugins/ packages".into())
        }
        (p, _) if plugin_side.contains(p) => Some(
            "plugins and frontends depend only on the plugin-side core crates, other frontend or plugin \
             crates and third-party crates"
                .into(),
        ),
        // The end-to-end tests and xtask may use anything.
        _ => None,
    }
}

/// Reads the model out of the real workspace (the only I/O of tidy).
fn model(ws: &Workspace) -> Result<Vec<Crate>> {
    let mut crates = Vec::new();
    for pkg in &ws.packages {
        let rel = ws.relative(&pkg.dir);
        let place = if rel.starts_with("crates/") {
            Place::Core
        } else if rel.starts_with("frontends/") {
            Place::Frontend
        } else if rel.starts_with("plugins/") {
            Place::Plugin
        } else if rel.starts_with("tests/plugins/") {
            Place::TestPlugin
        } else if rel == "tests" || rel.starts_with("tests/") {
            Place::Tests
        } else if rel == "xtask" {
            Place::Xtask
        } else {
            Place::Elsewhere(rel)
        };
        let mut undocumented = Vec::new();
        for t in &pkg.targets {
            let is_root = t.src_path.ends_with("src/main.rs")
                || t.kinds.iter().any(|k| {
                    matches!(
                        k.as_str(),
                        "lib" | "rlib" | "cdylib" | "dylib" | "staticlib" | "proc-macro"
                    )
                });
            if is_root && !starts_with_doc(&t.src_path)? {
                undocumented.push(ws.relative(&t.src_path));
            }
        }
        crates.push(Crate {
            name: pkg.name.clone(),
            place,
            deps: pkg.deps.iter().map(|d| (d.name.clone(), d.dev)).collect(),
            undocumented,
        });
    }
    Ok(crates)
}

fn starts_with_doc(path: &std::path::Path) -> Result<bool> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    for line in BufReader::new(file).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let line = line.trim();
        if !line.is_empty() {
            return Ok(line.starts_with("//!"));
        }
    }
    Ok(false)
}

pub fn run() -> Result<ExitCode> {
    let ws = Workspace::load()?;
    let crates = model(&ws)?;
    let violations = check(&crates);
    for v in &violations {
        println!("{v}");
    }
    if violations.is_empty() {
        println!(
            "tidy: {} packages follow the dependency rule and start with a //! doc",
            crates.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "tidy: {} violation(s); the rule is in DESIGN.md, its tables in xtask/src/tidy.rs",
            violations.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(name: &str, place: Place, deps: &[&str]) -> Crate {
        Crate {
            name: name.into(),
            place,
            deps: deps.iter().map(|d| ((*d).to_owned(), false)).collect(),
            undocumented: Vec::new(),
        }
    }

    /// The workspace as DESIGN.md draws it, with the dependencies it intends.
    fn good_model() -> Vec<Crate> {
        use Place::*;
        let mut model = vec![
            krate("kiln-types", Core, &["serde", "sha2"]),
            krate("kiln-plugin-abi", Core, &["abi_stable"]),
            krate("kiln-ignore", Core, &[]),
            krate("kiln-graph", Core, &["kiln-types"]),
            krate("kiln-solver", Core, &["tokio"]),
            krate("kiln-snapshot", Core, &["kiln-types"]),
            krate("kiln-registry", Core, &["kiln-types"]),
            krate(
                "kiln-plugin-sdk",
                Core,
                &["kiln-plugin-abi", "kiln-graph", "kiln-types"],
            ),
            krate("kiln-cache", Core, &["kiln-types", "kiln-snapshot"]),
            krate(
                "kiln-plugin-host",
                Core,
                &["kiln-plugin-abi", "kiln-plugin-sdk", "kiln-graph"],
            ),
            krate(
                "kiln-export",
                Core,
                &["kiln-snapshot", "kiln-cache", "kiln-registry"],
            ),
            krate(
                "kiln-engine",
                Core,
                &[
                    "kiln-graph",
                    "kiln-solver",
                    "kiln-cache",
                    "kiln-plugin-host",
                    "kiln-export",
                    "kiln-ignore",
                ],
            ),
            krate("kiln-progress", Core, &["kiln-solver"]),
            krate("kiln-cli", Core, &["kiln-engine", "kiln-progress", "clap"]),
            krate("dockerfile-parser", Frontend, &["thiserror"]),
            krate(
                "kiln-frontend-dockerfile",
                Frontend,
                &[
                    "dockerfile-parser",
                    "kiln-plugin-sdk",
                    "kiln-graph",
                    "kiln-types",
                ],
            ),
            krate("kiln-plugin-exec", Plugin, &["kiln-plugin-sdk", "nix"]),
            krate("kiln-test-plugin-panicky", TestPlugin, &["kiln-plugin-sdk"]),
            krate(
                "kiln-tests",
                Tests,
                &["kiln-engine", "kiln-frontend-dockerfile"],
            ),
            krate("xtask", Xtask, &["anyhow"]),
        ];
        // The host's own tests load a test plugin: a dev-dependency on tests/ is allowed.
        for c in &mut model {
            if c.name == "kiln-plugin-host" {
                c.deps.push(("kiln-test-plugin-panicky".into(), true));
            }
        }
        model
    }

    fn with_dep(mut model: Vec<Crate>, name: &str, dep: &str) -> Vec<Crate> {
        for c in &mut model {
            if c.name == name {
                c.deps.push((dep.into(), false));
            }
        }
        model
    }

    fn deps_flagged(model: &[Crate]) -> Vec<(String, String)> {
        check(model)
            .into_iter()
            .map(|v| (v.krate, v.dep.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_intended_workspace_passes() {
        assert_eq!(check(&good_model()), vec![]);
    }

    #[test]
    fn core_crate_importing_a_plugin_fails() {
        let model = with_dep(good_model(), "kiln-engine", "kiln-plugin-exec");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-engine".into(), "kiln-plugin-exec".into())]
        );
        let model = with_dep(good_model(), "kiln-plugin-host", "kiln-frontend-dockerfile");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-host".into(), "kiln-frontend-dockerfile".into())]
        );
    }

    #[test]
    fn core_crate_may_not_use_a_test_plugin_outside_dev_dependencies() {
        let model = with_dep(good_model(), "kiln-plugin-host", "kiln-test-plugin-panicky");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-host".into(), "kiln-test-plugin-panicky".into())]
        );
    }

    #[test]
    fn plugin_importing_the_engine_fails() {
        for forbidden in [
            "kiln-engine",
            "kiln-solver",
            "kiln-cache",
            "kiln-snapshot",
            "kiln-plugin-host",
        ] {
            let model = with_dep(good_model(), "kiln-plugin-exec", forbidden);
            assert_eq!(
                deps_flagged(&model),
                [("kiln-plugin-exec".into(), forbidden.into())]
            );
        }
        let model = with_dep(good_model(), "kiln-frontend-dockerfile", "kiln-engine");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-frontend-dockerfile".into(), "kiln-engine".into())]
        );
    }

    #[test]
    fn a_plugin_may_load_itself_through_the_host_only_in_its_tests() {
        let mut model = good_model();
        let exec = model
            .iter_mut()
            .find(|c| c.name == "kiln-plugin-exec")
            .expect("the model has the exec plugin");
        exec.deps.push(("kiln-plugin-host".to_owned(), true));
        assert!(deps_flagged(&model).is_empty());
        let model = with_dep(good_model(), "kiln-plugin-exec", "kiln-plugin-host");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-exec".into(), "kiln-plugin-host".into())]
        );
        // Only the host: a dev-dependency on the engine is still refused.
        let mut model = good_model();
        if let Some(c) = model.iter_mut().find(|c| c.name == "kiln-plugin-exec") {
            c.deps.push(("kiln-engine".to_owned(), true));
        }
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-exec".into(), "kiln-engine".into())]
        );
    }

    #[test]
    fn registry_may_use_the_store_but_not_the_reverse() {
        let model = with_dep(good_model(), "kiln-registry", "kiln-snapshot");
        assert!(deps_flagged(&model).is_empty());
        let model = with_dep(good_model(), "kiln-snapshot", "kiln-registry");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-snapshot".into(), "kiln-registry".into())]
        );
    }

    #[test]
    fn plugin_importing_a_core_crate_missing_from_the_workspace_still_fails() {
        let model: Vec<Crate> = good_model()
            .into_iter()
            .filter(|c| c.name != "kiln-export")
            .collect();
        let model = with_dep(model, "kiln-plugin-exec", "kiln-export");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-exec".into(), "kiln-export".into())]
        );
    }

    #[test]
    fn lower_layer_importing_a_higher_one_fails() {
        let model = with_dep(good_model(), "kiln-graph", "kiln-engine");
        let v = check(&model);
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0].to_string(),
            "tidy: kiln-graph depends on kiln-engine: a core crate may use only core crates of a \
             lower layer, and kiln-graph is L1 while kiln-engine is L4"
        );
    }

    #[test]
    fn same_layer_fails_unless_allowed() {
        let model = with_dep(good_model(), "kiln-solver", "kiln-graph");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-solver".into(), "kiln-graph".into())]
        );
    }

    #[test]
    fn sdk_stays_small() {
        let model = with_dep(good_model(), "kiln-plugin-sdk", "kiln-solver");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-sdk".into(), "kiln-solver".into())]
        );
        let model = with_dep(good_model(), "kiln-plugin-sdk", "kiln-ignore");
        assert_eq!(
            deps_flagged(&model),
            [("kiln-plugin-sdk".into(), "kiln-ignore".into())]
        );
    }

    #[test]
    fn unknown_core_crate_and_missing_docs_fail() {
        let mut model = good_model();
        model.push(krate("kiln-misc", Place::Core, &[]));
        model[0]
            .undocumented
            .push("crates/kiln-types/src/lib.rs".into());
        let v = check(&model);
        assert_eq!(v.len(), 2);
        assert!(v
            .iter()
            .any(|v| v.krate == "kiln-misc" && v.rule.contains("add it to the layer table")));
        assert!(v
            .iter()
            .any(|v| v.krate == "kiln-types" && v.rule.contains("//!")));
    }
}
