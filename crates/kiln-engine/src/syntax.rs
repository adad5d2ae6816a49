//! Which frontend builds a file: `--frontend`, then `--build-arg BUILDKIT_SYNTAX=`, then the
//! `# syntax=` directive, then the Dockerfile frontend.
//!
//! Only `--frontend` may name a library by path: a build file is other people's input, and
//! loading a library runs its code (constructors run at `dlopen`, before any check). A path in
//! `# syntax=` or `BUILDKIT_SYNTAX` is refused before anything is opened; a name is looked up
//! among the plugins already found in the plugin directories, never turned into a file name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_plugin_host::{LoadedPlugin, PluginRegistry};

use crate::Error;

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

pub(crate) fn choose(
    frontend: Option<&str>,
    build_args: &BTreeMap<String, String>,
    source: &str,
) -> Result<SyntaxChoice, Error> {
    if let Some(flag) = frontend {
        return Ok(normalize(flag));
    }
    let (origin, raw) = match build_args.get("BUILDKIT_SYNTAX") {
        Some(v) => ("BUILDKIT_SYNTAX", v.clone()),
        None => match find_syntax(source) {
            Some(v) => ("# syntax=", v),
            None => return Ok(SyntaxChoice::Name("dockerfile".to_owned())),
        },
    };
    match normalize(&raw) {
        SyntaxChoice::Path(_) => Err(Error::SyntaxPath { origin, value: raw }),
        name => Ok(name),
    }
}

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

fn normalize(raw: &str) -> SyntaxChoice {
    let raw = raw.trim();
    if is_path(raw) {
        return SyntaxChoice::Path(PathBuf::from(raw));
    }
    // An image reference names the frontend by repository (`docker/dockerfile:1.7` →
    // `docker/dockerfile`); a value that is no reference (`Echo`) is a plugin name as written.
    match kiln_types::reference::split_familiar(raw) {
        Ok((name, _tag, _digest)) => SyntaxChoice::Name(name),
        Err(_) => SyntaxChoice::Name(raw.to_ascii_lowercase()),
    }
}

pub(crate) fn resolve(
    registry: &PluginRegistry,
    choice: &SyntaxChoice,
) -> Result<Arc<LoadedPlugin>, Error> {
    match choice {
        SyntaxChoice::Path(p) => {
            let abs = std::path::absolute(p).map_err(|e| Error::io("resolve", p, e))?;
            Ok(registry.load_file(&abs)?)
        }
        SyntaxChoice::Name(n) => Ok(registry.frontend(n)?),
    }
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
            choose(f, args, src).expect("a name, not a path")
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
                Ok(SyntaxChoice::Path(_))
            ));
        }
    }
}
