//! Named contexts (`--build-context NAME=VALUE`, frontend options `context:NAME`), looked up by
//! the name a FROM, `COPY --from` or `RUN --mount from=` writes.
//!
//! Both names are normalized as buildx and BuildKit's `NamedContext` do: parsed as an image
//! reference, written in familiar form, `:latest` dropped. So `--build-context alpine=...`
//! serves `FROM alpine`, `FROM alpine:latest` and `FROM docker.io/library/alpine:latest`, and
//! `--build-context quay.io/org/img=...` serves `FROM quay.io/org/img:latest`. A name that is
//! no reference (`MyContext`) is matched as written.

use std::collections::{BTreeMap, BTreeSet};

use kiln_plugin_sdk::context::{self, key as context_key};
use kiln_plugin_sdk::proto::Diagnostic;

/// One `--build-context`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NamedContext {
    /// The name as given on the command line.
    pub(crate) name: String,
    /// `docker-image://REF`, `oci-layout://DIR[:tag]`, or `local:NAME` for a directory the host
    /// serves under `NAME`.
    pub(crate) value: String,
}

/// The build's named contexts by normalized name, and which of them the build used.
#[derive(Debug, Default)]
pub(crate) struct NamedContexts {
    by_key: BTreeMap<String, NamedContext>,
    used: BTreeSet<String>,
}

impl NamedContexts {
    /// The `context:NAME` options of a request (a later name with the same normalized form
    /// wins, as in buildx's map).
    pub(crate) fn from_options(options: &BTreeMap<String, String>) -> Self {
        let by_key = context::named(options)
            .map(|(name, value)| {
                let context = NamedContext {
                    name: name.to_owned(),
                    value: value.to_owned(),
                };
                (context_key(name), context)
            })
            .collect();
        NamedContexts {
            by_key,
            used: BTreeSet::new(),
        }
    }

    /// The context `name` refers to, if any.
    pub(crate) fn get(&self, name: &str) -> Option<&NamedContext> {
        self.by_key.get(&context_key(name))
    }

    /// Records that the build reads the context `name` refers to.
    pub(crate) fn mark_used(&mut self, name: &str) {
        let key = context_key(name);
        if self.by_key.contains_key(&key) {
            self.used.insert(key);
        }
    }

    /// One warning per context nothing in the build read: usually a name that matches no FROM
    /// or `--from` (a typo, or a tag the Dockerfile does not use), which would otherwise build
    /// silently from the registry instead.
    pub(crate) fn unused_warnings(&self) -> Vec<Diagnostic> {
        self.by_key
            .iter()
            .filter(|(key, _)| !self.used.contains(*key))
            .map(|(_, c)| Diagnostic {
                message: format!(
                    "unused build context {:?}: no FROM, COPY --from or RUN --mount from= of the \
                     stages built refers to it (--build-context {}=...)",
                    c.name, c.name
                ),
                location: None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_either_form_and_unused_warnings() {
        let options = BTreeMap::from([
            ("call".to_owned(), "build".to_owned()),
            (
                "context:quay.io/org/img".to_owned(),
                "docker-image://example.com/img:2".to_owned(),
            ),
            ("context:alpine".to_owned(), "local:alpine".to_owned()),
            ("context:spare".to_owned(), "local:spare".to_owned()),
        ]);
        let mut named = NamedContexts::from_options(&options);
        assert_eq!(
            named
                .get("quay.io/org/img:latest")
                .map(|c| c.value.as_str()),
            Some("docker-image://example.com/img:2")
        );
        for from in ["alpine", "alpine:latest", "docker.io/library/alpine:latest"] {
            assert_eq!(
                named.get(from).map(|c| c.name.as_str()),
                Some("alpine"),
                "{from}"
            );
        }
        assert_eq!(named.get("alpine:3"), None);
        assert_eq!(named.get("call"), None);
        named.mark_used("docker.io/library/alpine");
        named.mark_used("quay.io/org/img:latest");
        named.mark_used("not-a-context");
        let warnings = named.unused_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .message
                .starts_with("unused build context \"spare\""),
            "{}",
            warnings[0].message
        );
    }
}
