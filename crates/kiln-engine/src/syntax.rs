//! Which frontend builds a file: `--frontend`, then `--build-arg BUILDKIT_SYNTAX=`, then the
//! `# syntax=` directive, then the Dockerfile frontend.
//!
//! Only `--frontend` may name a library by path: a build file is other people's input, and
//! loading a library runs its code (constructors run at `dlopen`, before any check). A path in
//! `# syntax=` or `BUILDKIT_SYNTAX` is refused before anything is opened; a name is looked up
//! among the plugins already found in the plugin directories, never turned into a file name.
//!
//! A registry reference no installed plugin answers to (`localhost:5000/fe@sha256:…`: a `/`
//! and a valid reference, see [`as_reference`]) is a plugin artifact to pull
//! (plugin_pull.rs): pinned by digest, or unpinned when an allowlist pattern admits it. A bare
//! name (`docker/dockerfile:1`, `echo`) keeps matching installed plugins first, as before.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_plugin_host::{LoadedPlugin, PluginRegistry};
use kiln_types::reference::Reference;

use crate::{Engine, Error};

/// The frontend a build asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxChoice {
    /// A plugin name or syntax (`dockerfile`, `docker/dockerfile`, `kilnfile`...).
    Name(String),
    /// A plugin library given by path (`--frontend PATH` only).
    Path(PathBuf),
}

/// The value of a `# syntax=` directive in the leading comment block of `source`.
pub fn find_syntax(source: &str) -> Option<String> {
    for line in source.lines() {
        let t = line.trim();
        let rest = t.strip_prefix('#')?;
        let (k, v) = rest.split_once('=')?;
        let key = k.trim();
        if !key.chars().all(|c| c.is_ascii_alphanumeric()) || key.is_empty() {
            return None;
        }
        if key.eq_ignore_ascii_case("syntax") {
            let v = v.trim();
            return (!v.is_empty()).then(|| v.to_owned());
        }
    }
    None
}

/// What a build asked for and where the request came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chosen {
    /// The frontend to look up.
    pub(crate) choice: SyntaxChoice,
    /// `Some((origin, value as written))` when the build file (`# syntax=`) or
    /// `BUILDKIT_SYNTAX` chose, `None` for `--frontend` and the default.
    pub(crate) requested: Option<(&'static str, String)>,
    /// The value as written (`--frontend`'s too), for a registry pull.
    pub(crate) raw: String,
}

pub(crate) fn choose(
    frontend: Option<&str>,
    build_args: &BTreeMap<String, String>,
    source: &str,
) -> Result<Chosen, Error> {
    if let Some(flag) = frontend {
        return Ok(Chosen {
            choice: normalize(flag),
            requested: None,
            raw: flag.trim().to_owned(),
        });
    }
    let (origin, raw) = match build_args.get("BUILDKIT_SYNTAX") {
        Some(v) => ("BUILDKIT_SYNTAX", v.clone()),
        None => match find_syntax(source) {
            Some(v) => ("# syntax=", v),
            None => {
                return Ok(Chosen {
                    choice: SyntaxChoice::Name("dockerfile".to_owned()),
                    requested: None,
                    raw: "dockerfile".to_owned(),
                })
            }
        },
    };
    match normalize(&raw) {
        SyntaxChoice::Path(_) => Err(Error::SyntaxPath { origin, value: raw }),
        choice => Ok(Chosen {
            choice,
            raw: raw.trim().to_owned(),
            requested: Some((origin, raw)),
        }),
    }
}

/// Frontend images that are builds of the Dockerfile frontend under another name:
/// `docker/dockerfile-upstream` is BuildKit's master-branch build of `docker/dockerfile`
/// (same syntax, same labs features), so the bundled Dockerfile frontend serves it.
const DOCKERFILE_ALIASES: &[&str] = &["docker/dockerfile-upstream"];

/// Whether `raw` reads as a file rather than a plugin name or image reference.
fn is_path(raw: &str) -> bool {
    let lower = raw.to_ascii_lowercase();
    raw.starts_with('/')
        || raw.starts_with("./")
        || raw.starts_with("../")
        || raw.starts_with('~')
        || raw == "."
        || raw == ".."
        || lower.ends_with(".so")
        || lower.contains(".so.")
}

/// `raw` as a registry reference to a plugin artifact, when it is one: not a path, with a `/`
/// (a bare word such as `echo` or `dockerfile` is a plugin name, even though docker's grammar
/// would read it as `docker.io/library/echo`), and valid by docker's grammar.
pub(crate) fn as_reference(raw: &str) -> Option<Reference> {
    let raw = raw.trim();
    if is_path(raw) || !raw.contains('/') {
        return None;
    }
    Reference::parse_normalized(raw).ok()
}

fn normalize(raw: &str) -> SyntaxChoice {
    let raw = raw.trim();
    if is_path(raw) {
        return SyntaxChoice::Path(PathBuf::from(raw));
    }
    // An image reference names the frontend by repository (`docker/dockerfile:1.7` →
    // `docker/dockerfile`); a value that is no reference (`Echo`) is a plugin name as written.
    match kiln_types::reference::split_familiar(raw) {
        Ok((name, _tag, _digest)) if DOCKERFILE_ALIASES.contains(&name.as_str()) => {
            SyntaxChoice::Name("docker/dockerfile".to_owned())
        }
        Ok((name, _tag, _digest)) => SyntaxChoice::Name(name),
        Err(_) => SyntaxChoice::Name(raw.to_ascii_lowercase()),
    }
}

/// The plugin for `chosen`. A syntax the build file asked for that no plugin answers to is
/// an [`Error::UnknownSyntax`] naming `plugin_dirs`: kiln runs no frontend images, so the way
/// on is `--frontend` or a plugin installed into one of them.
pub(crate) fn resolve(
    registry: &PluginRegistry,
    chosen: &Chosen,
    plugin_dirs: &[PathBuf],
) -> Result<Arc<LoadedPlugin>, Error> {
    match &chosen.choice {
        SyntaxChoice::Path(p) => {
            let abs = std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))?;
            Ok(registry.load_file(&abs)?)
        }
        SyntaxChoice::Name(n) => match (registry.frontend(n), &chosen.requested) {
            (Ok(p), _) => Ok(p),
            (
                Err(kiln_plugin_host::Error::NotFound {
                    name, available, ..
                }),
                Some((origin, value)),
            ) => Err(Error::UnknownSyntax {
                origin,
                value: value.clone(),
                name,
                available,
                plugin_dirs: plugin_dirs.to_vec(),
            }),
            (Err(e), _) => Err(e.into()),
        },
    }
}

/// The frontend for `chosen`, with the progress line saying which plugin serves it: an
/// installed one ([`resolve`]), else, for a registry reference, the plugin pulled from it (or
/// kept in the store from an earlier pull).
pub(crate) async fn resolve_frontend(
    engine: &Engine,
    chosen: &Chosen,
) -> Result<(Arc<LoadedPlugin>, Option<String>), Error> {
    let unknown = match resolve(&engine.plugins, chosen, &engine.plugin_dirs) {
        Ok(p) => {
            let line = resolved_line(chosen, &p);
            return Ok((p, line));
        }
        Err(e) => e,
    };
    let reference = match &chosen.choice {
        SyntaxChoice::Name(_) => as_reference(&chosen.raw),
        SyntaxChoice::Path(_) => None,
    };
    let Some(r) = reference else {
        return Err(unknown);
    };
    let origin = chosen.requested.as_ref().map_or("--frontend", |(o, _)| *o);
    let got = engine
        .pulled_frontend(origin, &chosen.raw, r, unknown)
        .await?;
    let sep = if origin.ends_with('=') { "" } else { "=" };
    let sep = if origin == "--frontend" { " " } else { sep };
    let line = format!(
        "{origin}{sep}{}: frontend {} {} {}",
        chosen.raw,
        got.plugin.name(),
        got.plugin.version(),
        got.from
    );
    Ok((got.plugin, Some(line)))
}

/// The progress line saying which plugin serves a syntax the build file asked for, as
/// BuildKit shows the frontend image it resolves; `None` when nothing was asked for.
pub(crate) fn resolved_line(chosen: &Chosen, plugin: &LoadedPlugin) -> Option<String> {
    let (origin, value) = chosen.requested.as_ref()?;
    let sep = if origin.ends_with('=') { "" } else { "=" };
    Some(format!(
        "{origin}{sep}{value}: served by the installed frontend plugin {} {} (kiln runs frontend \
         plugins, not frontend images)",
        plugin.name(),
        plugin.version()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_and_precedence() {
        let src = "# syntax=docker/dockerfile:1.7\n# escape=`\nFROM scratch\n";
        assert_eq!(find_syntax(src).as_deref(), Some("docker/dockerfile:1.7"));
        assert_eq!(find_syntax("FROM scratch\n# syntax=x\n"), None);
        assert_eq!(find_syntax("# hello world\n# syntax=x\n"), None);
        let none = BTreeMap::new();
        let pick = |f: Option<&str>, args: &BTreeMap<String, String>, src: &str| {
            choose(f, args, src).expect("a name, not a path").choice
        };
        assert_eq!(
            pick(None, &none, src),
            SyntaxChoice::Name("docker/dockerfile".into())
        );
        assert_eq!(
            pick(None, &none, "FROM scratch"),
            SyntaxChoice::Name("dockerfile".into())
        );
        let args = BTreeMap::from([("BUILDKIT_SYNTAX".to_owned(), "echo".to_owned())]);
        assert_eq!(pick(None, &args, src), SyntaxChoice::Name("echo".into()));
        assert_eq!(
            pick(Some("kilnfile"), &args, src),
            SyntaxChoice::Name("kilnfile".into())
        );
        assert_eq!(
            pick(Some("./libfoo.so"), &none, src),
            SyntaxChoice::Path("./libfoo.so".into())
        );
        assert_eq!(
            normalize(
                "docker.io/docker/dockerfile:1@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            SyntaxChoice::Name("docker/dockerfile".into())
        );
        assert_eq!(
            normalize("localhost:5000/fe"),
            SyntaxChoice::Name("localhost:5000/fe".into())
        );
    }

    #[test]
    fn a_build_file_never_names_a_library_by_path() {
        let none = BTreeMap::new();
        for value in [
            "/tmp/ctx/evil.so",
            "./evil.so",
            "../evil",
            "evil.so",
            "lib/EVIL.SO",
            "libevil.so.1",
            "~/evil",
            "/usr/lib/kiln/plugins/libkiln_frontend_dockerfile",
        ] {
            let src = format!("# syntax={value}\nFROM scratch\n");
            let err = choose(None, &none, &src).expect_err(value);
            assert!(
                matches!(&err, Error::SyntaxPath { origin: "# syntax=", value: v } if v == value),
                "{value}: {err}"
            );
            assert!(err.to_string().contains("--frontend PATH"), "{err}");
            let args = BTreeMap::from([("BUILDKIT_SYNTAX".to_owned(), value.to_owned())]);
            let err = choose(None, &args, "FROM scratch\n").expect_err(value);
            assert!(
                matches!(
                    &err,
                    Error::SyntaxPath {
                        origin: "BUILDKIT_SYNTAX",
                        ..
                    }
                ),
                "{value}: {err}"
            );
            // The command line may.
            assert!(matches!(
                choose(Some(value), &args, &src),
                Ok(Chosen {
                    choice: SyntaxChoice::Path(_),
                    requested: None,
                    ..
                })
            ));
        }
    }

    #[test]
    fn dockerfile_upstream_is_the_dockerfile_frontend() {
        let none = BTreeMap::new();
        for value in [
            "docker/dockerfile-upstream:master",
            "docker/dockerfile-upstream:master-labs",
            "docker.io/docker/dockerfile-upstream:1.7",
            "docker/dockerfile:1-labs",
            "docker/dockerfile",
        ] {
            let src = format!("# syntax={value}\nFROM scratch\n");
            let chosen = choose(None, &none, &src).expect(value);
            assert_eq!(
                chosen.choice,
                SyntaxChoice::Name("docker/dockerfile".into()),
                "{value}"
            );
            assert_eq!(chosen.requested, Some(("# syntax=", value.to_owned())));
        }
        // Other repositories are not the Dockerfile frontend.
        assert_eq!(
            normalize("example.com/docker/dockerfile-upstream:1"),
            SyntaxChoice::Name("example.com/docker/dockerfile-upstream".into())
        );
    }

    #[test]
    fn an_unknown_syntax_image_says_how_to_proceed() {
        let none = BTreeMap::new();
        let registry = PluginRegistry::new();
        let dirs = [PathBuf::from("/opt/kiln/plugins"), PathBuf::from("/p2")];
        let chosen = choose(
            None,
            &none,
            "# syntax=example.com/other/frontend:1\nFROM scratch\n",
        )
        .expect("a name");
        let err = resolve(&registry, &chosen, &dirs).expect_err("nothing installed");
        assert!(
            matches!(&err, Error::UnknownSyntax { name, .. } if name == "example.com/other/frontend"),
            "{err:?}"
        );
        let text = err.to_string();
        for want in [
            "# syntax= \"example.com/other/frontend:1\"",
            "--frontend NAME|PATH",
            "/opt/kiln/plugins, /p2",
            "--plugin-dir DIR",
            "KILN_PLUGIN_PATH",
        ] {
            assert!(text.contains(want), "{want:?} missing from: {text}");
        }
        // `--frontend` naming a missing plugin keeps the host's own error.
        let flag = choose(Some("nope"), &none, "FROM scratch\n").expect("a name");
        assert!(matches!(
            resolve(&registry, &flag, &dirs),
            Err(Error::Plugin(_))
        ));
    }

    #[test]
    fn registry_references_are_told_from_names_and_paths() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (value, want) in [
            // Pinned and unpinned references to plugin artifacts.
            (
                format!("localhost:5000/kiln/df@{digest}"),
                Some(("localhost:5000", "kiln/df", None, true)),
            ),
            (
                format!("localhost:5000/kiln/df:1@{digest}"),
                Some(("localhost:5000", "kiln/df", Some("1"), true)),
            ),
            (
                "localhost:5000/kiln/df:1".to_owned(),
                Some(("localhost:5000", "kiln/df", Some("1"), false)),
            ),
            (
                "docker/dockerfile:1".to_owned(),
                Some(("docker.io", "docker/dockerfile", Some("1"), false)),
            ),
            // Plugin names: no `/`.
            ("dockerfile".to_owned(), None),
            ("echo".to_owned(), None),
            (format!("echo@{digest}"), None),
            // Paths never.
            ("./lib/x.so".to_owned(), None),
            ("/opt/kiln/plugins/fe".to_owned(), None),
            ("lib/fe.so".to_owned(), None),
            // Not a valid reference.
            ("Example.com/UPPER/x".to_owned(), None),
            ("localhost:5000/x@sha256:abc".to_owned(), None),
        ] {
            let got = as_reference(&value);
            let got = got.as_ref().map(|r| {
                (
                    r.registry.as_str(),
                    r.repository.as_str(),
                    r.tag.as_deref(),
                    r.digest.is_some(),
                )
            });
            assert_eq!(got, want, "{value}");
        }
        // `--frontend` keeps the value as written for the pull.
        let none = BTreeMap::new();
        let flag = format!("localhost:5000/kiln/df@{digest}");
        let chosen = choose(Some(&flag), &none, "FROM scratch\n").expect("a reference");
        assert_eq!(chosen.raw, flag);
        assert_eq!(chosen.requested, None);
        let src = format!("# syntax= {flag} \nFROM scratch\n");
        let chosen = choose(None, &none, &src).expect("a reference");
        assert_eq!(chosen.raw, flag);
        assert_eq!(chosen.requested, Some(("# syntax=", flag.clone())));
    }
}
