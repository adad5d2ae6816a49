//! Which frontend builds a file: `--frontend`, then `--build-arg BUILDKIT_SYNTAX=`, then the
//! `# syntax=` directive, then the Dockerfile frontend.

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
    /// A plugin library given by path.
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
) -> SyntaxChoice {
    let raw = frontend
        .map(str::to_owned)
        .or_else(|| build_args.get("BUILDKIT_SYNTAX").cloned())
        .or_else(|| find_syntax(source))
        .unwrap_or_else(|| "dockerfile".to_owned());
    normalize(&raw)
}

fn normalize(raw: &str) -> SyntaxChoice {
    let raw = raw.trim();
    if raw.starts_with('/')
        || raw.starts_with("./")
        || raw.starts_with("../")
        || raw.ends_with(".so")
    {
        return SyntaxChoice::Path(PathBuf::from(raw));
    }
    // An image reference names the frontend by repository: drop digest, tag and docker.io.
    let no_digest = raw.split('@').next().unwrap_or(raw);
    let last_slash = no_digest.rfind('/').map_or(0, |i| i + 1);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    let name = no_tag
        .strip_prefix("docker.io/")
        .unwrap_or(no_tag)
        .to_ascii_lowercase();
    SyntaxChoice::Name(name)
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
        assert_eq!(
            choose(None, &none, src),
            SyntaxChoice::Name("docker/dockerfile".into())
        );
        assert_eq!(
            choose(None, &none, "FROM scratch"),
            SyntaxChoice::Name("dockerfile".into())
        );
        let args = BTreeMap::from([("BUILDKIT_SYNTAX".to_owned(), "echo".to_owned())]);
        assert_eq!(choose(None, &args, src), SyntaxChoice::Name("echo".into()));
        assert_eq!(
            choose(Some("kilnfile"), &args, src),
            SyntaxChoice::Name("kilnfile".into())
        );
        assert_eq!(
            choose(None, &none, "# syntax=./libfoo.so\n"),
            SyntaxChoice::Path("./libfoo.so".into())
        );
        assert_eq!(
            normalize("docker.io/docker/dockerfile:1@sha256:abc"),
            SyntaxChoice::Name("docker/dockerfile".into())
        );
        assert_eq!(
            normalize("localhost:5000/fe"),
            SyntaxChoice::Name("localhost:5000/fe".into())
        );
    }
}
