//! The build's local contexts as a frontend sees them: the names the host serves them under,
//! the name a `--build-context` is matched by, and which ignore file applies.

use std::collections::BTreeMap;

use kiln_types::reference::Reference;

use crate::proto::{ErrorKind, PluginError};

/// The main build context (`kiln build … DIR`).
pub const MAIN: &str = "context";

/// The build file's own directory, as the engine serves it (BuildKit's `dockerfile` local): only
/// the build file and `<name>.dockerignore`. The `=` keeps it apart from every `--build-context
/// NAME=VALUE` name.
pub const BUILD_FILE: &str = "dockerfile=";

/// The prefix of the frontend options that carry `--build-context NAME=VALUE` (`context:NAME`).
pub const OPTION_PREFIX: &str = "context:";

/// The `--build-context`s of a request's options, as (name as written, value): values are
/// `docker-image://REF`, `oci-layout://DIR[:tag]`, or `local:NAME` for a directory the host
/// serves under `NAME`.
pub fn named(options: &BTreeMap<String, String>) -> impl Iterator<Item = (&str, &str)> {
    options
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(OPTION_PREFIX).map(|name| (name, v.as_str())))
}

/// The name a build context is matched by, as buildx and BuildKit's `NamedContext` normalize
/// both sides: the familiar reference without `:latest` (`docker.io/library/alpine:latest` →
/// `alpine`, `quay.io/org/img:latest` → `quay.io/org/img`, `alpine:3` stays), or `name` as
/// written when it is no reference (`MyContext`). So `--build-context alpine=…` serves `FROM
/// alpine`, `FROM alpine:latest` and `FROM docker.io/library/alpine:latest`.
pub fn key(name: &str) -> String {
    let Ok(r) = Reference::parse_normalized(name) else {
        return name.to_owned();
    };
    let mut key = r.familiar_name();
    if let Some(tag) = &r.tag {
        key.push(':');
        key.push_str(tag);
    }
    if let Some(digest) = &r.digest {
        key.push('@');
        key.push_str(&digest.to_string());
    }
    match key.strip_suffix(":latest") {
        Some(bare) => bare.to_owned(),
        None => key,
    }
}

/// The ignore file a build applies to its main context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoreFile {
    /// Its path, for messages: `<build file>.dockerignore` or `.dockerignore`.
    pub path: String,
    /// Its text (bytes that are not UTF-8 replaced).
    pub text: String,
}

/// The ignore file of the build file named `build_file` (a name; of a path only the last part
/// counts), as BuildKit chooses it: `<build file>.dockerignore` beside the build file when
/// present ([`BUILD_FILE`]), else the main context's `.dockerignore`; `None` when neither
/// exists. `read(context, path)` reads a file, `None` when it does not exist (e.g.
/// [`Host::read_file_if_exists`](crate::Host::read_file_if_exists)).
pub fn ignore_file(
    build_file: &str,
    read: impl Fn(&str, &str) -> Result<Option<Vec<u8>>, PluginError>,
) -> Result<Option<IgnoreFile>, PluginError> {
    // The engine passes the file name; a host passing a path still means its last part.
    let name = build_file.rsplit('/').next().unwrap_or_default();
    let mut candidates = Vec::new();
    if !name.is_empty() {
        candidates.push((BUILD_FILE, format!("{name}.dockerignore")));
    }
    candidates.push((MAIN, ".dockerignore".to_owned()));
    for (context, path) in candidates {
        let bytes = match read(context, &path) {
            // A host that does not serve the build file's directory has nothing beside it.
            Err(e) if context == BUILD_FILE && e.kind == ErrorKind::NotFound => None,
            read => read?,
        };
        if let Some(bytes) = bytes {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            return Ok(Some(IgnoreFile { path, text }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_familiar_references_without_latest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (name, want) in [
            ("alpine", "alpine"),
            ("alpine:latest", "alpine"),
            ("docker.io/library/alpine:latest", "alpine"),
            ("index.docker.io/library/alpine", "alpine"),
            ("library/alpine", "alpine"),
            ("alpine:3.19", "alpine:3.19"),
            ("quay.io/org/img", "quay.io/org/img"),
            ("quay.io/org/img:latest", "quay.io/org/img"),
            ("docker.io/org/img:1", "org/img:1"),
            ("localhost:5000/x:latest", "localhost:5000/x"),
            ("mycontext", "mycontext"),
            ("build-stage", "build-stage"),
            // Not references: as written.
            ("MyContext", "MyContext"),
            ("my context", "my context"),
        ] {
            assert_eq!(key(name), want, "{name}");
        }
        assert_eq!(
            key(&format!("docker.io/library/alpine@{digest}")),
            format!("alpine@{digest}")
        );
    }

    #[test]
    fn named_contexts_come_from_context_options() {
        let options = BTreeMap::from([
            ("call".to_owned(), "build".to_owned()),
            ("context:alpine".to_owned(), "local:alpine".to_owned()),
        ]);
        assert_eq!(
            named(&options).collect::<Vec<_>>(),
            [("alpine", "local:alpine")]
        );
    }

    #[test]
    fn the_ignore_file_beside_the_build_file_wins() {
        let files = |present: &'static [(&'static str, &'static str)]| {
            move |context: &str, path: &str| -> Result<Option<Vec<u8>>, PluginError> {
                if context == BUILD_FILE && present.is_empty() {
                    return Err(PluginError::not_found("no build file directory"));
                }
                Ok(present
                    .iter()
                    .find(|(c, p)| *c == context && *p == path)
                    .map(|_| format!("{context}:{path}").into_bytes()))
            }
        };
        let both = files(&[
            (BUILD_FILE, "app.Dockerfile.dockerignore"),
            (MAIN, ".dockerignore"),
        ]);
        let got = ignore_file("dir/app.Dockerfile", both).unwrap().unwrap();
        assert_eq!(got.path, "app.Dockerfile.dockerignore");
        assert_eq!(got.text, "dockerfile=:app.Dockerfile.dockerignore");
        let main_only = files(&[(MAIN, ".dockerignore")]);
        let got = ignore_file("Dockerfile", main_only).unwrap().unwrap();
        assert_eq!(got.path, ".dockerignore");
        // A host without the build file's directory: the main context's file, or none.
        assert_eq!(ignore_file("Dockerfile", files(&[])).unwrap(), None);
        let failing = |_: &str, _: &str| Err(PluginError::internal("disk on fire"));
        assert_eq!(
            ignore_file("Dockerfile", failing).unwrap_err().message,
            "disk on fire"
        );
    }
}
