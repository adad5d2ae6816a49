//! The `INCLUDE` instruction plugin: `INCLUDE <path>` inlines a Dockerfile fragment from the
//! build context, whose instructions then run in the including stage as if written there
//! (BuildKit's most requested instruction, moby/buildkit#5824).
//!
//! The plugin only reads the fragment (host callback `context.read_file`) and answers with an
//! [`Expansion`]: the frontend parses and dispatches it, so the fragment's content is part of
//! the graph like any other line, and an edit of it re-runs exactly the steps it changes.
//!
//! Rules (docs/instructions.md has the user's view):
//! - one path, relative to the context root (a leading `/` is the context root too), with the
//!   stage's ENV and ARGs expanded and quotes removed as in a COPY source (no globs); `..` is
//!   refused, a fragment never comes from outside the context;
//! - a missing path, a directory, or a file that is not UTF-8 fails at the INCLUDE line naming
//!   the path;
//! - a frontend that cannot run expansions (protocol 2) gets an error instead of an INCLUDE
//!   that silently does nothing.
//!
//! Architecture invariant: depends on `kiln-plugin-sdk` and the Dockerfile parser's shell
//! expansion only.

use std::collections::BTreeMap;

use dockerfile_parser::shell::{Env, Lexer};
use kiln_plugin_sdk::proto::{
    ErrorKind, Expansion, FileKind, InstructionRequest, InstructionResponse, PluginError,
};
use kiln_plugin_sdk::{Host, Instruction};

/// The context fragments are read from: the main build context.
const CONTEXT: &str = "context";

/// What the plugin needs from kiln: the main context's files.
pub trait Files {
    /// The content of `path` in the build context; `Ok(None)` when there is no such file.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PluginError>;
}

impl Files for Host<'_> {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        match self.stat(CONTEXT, path)? {
            None => return Ok(None),
            Some(info) if info.kind == FileKind::Dir => {
                return Err(invalid(format!(
                    "INCLUDE {path}: is a directory, not a Dockerfile fragment"
                )))
            }
            Some(_) => {}
        }
        match self.read_context_file(CONTEXT, path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `INCLUDE <path>` → the fragment to run in its place.
pub fn lower(
    req: InstructionRequest,
    files: &dyn Files,
) -> Result<InstructionResponse, PluginError> {
    if !req.accepts_expansion {
        return Err(PluginError::unsupported(
            "INCLUDE needs a frontend that runs instruction expansions (kiln plugin protocol 3); the frontend of this build does not",
        ));
    }
    if let Some(flag) = req.flags.first() {
        return Err(invalid(format!("INCLUDE has no flags, got {flag}")));
    }
    let scope = Scope {
        env: req.config.config.env.as_deref().unwrap_or_default(),
        args: &req.build_args,
    };
    let path = fragment_path(&req.args, &scope)?;
    let bytes = files.read(&path)?.ok_or_else(|| {
        PluginError::new(
            ErrorKind::NotFound,
            format!(
                "INCLUDE {path}: no such file in the build context (paths are relative to the \
                 context root; a remote builder does not receive files .dockerignore excludes)"
            ),
        )
    })?;
    let source = String::from_utf8(bytes)
        .map_err(|_| invalid(format!("INCLUDE {path}: the file is not UTF-8 text")))?;
    Ok(InstructionResponse::expand(
        req,
        Expansion {
            file: path,
            source,
            first_line: 1,
        },
    ))
}

/// The variables an INCLUDE path sees, as every path of a Dockerfile: the stage's ENV first
/// (ENV wins over an ARG of the same name), then its ARGs.
pub struct Scope<'a> {
    /// `NAME=value` entries of the stage's config.
    pub env: &'a [String],
    /// The ARGs in scope.
    pub args: &'a BTreeMap<String, String>,
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v)
            })
            .or_else(|| self.args.get(name).map(String::as_str))
    }
}

/// The context-relative path `INCLUDE`'s argument names: one word after variable expansion and
/// quote removal (as a COPY source), no `..`, normalized (`./a//b` → `a/b`).
pub fn fragment_path(args: &str, scope: &Scope<'_>) -> Result<String, PluginError> {
    let raw = args.trim();
    // The Dockerfile's escape token is not in the request; `\` is everyone's but a few
    // Windows Dockerfiles', and a path rarely escapes anything.
    let words = Lexer::new('\\')
        .process_words(raw, scope)
        .map_err(|e| invalid(format!("INCLUDE {raw}: {e}")))?;
    let word = match words.as_slice() {
        [] => {
            return Err(invalid(
                "INCLUDE needs the path of a Dockerfile fragment in the build context",
            ))
        }
        [one] => one.as_str(),
        _ => {
            return Err(invalid(format!(
                "INCLUDE takes one path, got {raw:?} (include each file on its own line)"
            )))
        }
    };
    let mut parts = Vec::new();
    for part in word.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(invalid(format!(
                "INCLUDE {word}: `..` is not allowed, a fragment must be inside the build context"
            )))
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(invalid(format!(
            "INCLUDE {raw}: names the context root, not a file"
        )));
    }
    Ok(parts.join("/"))
}

fn invalid(message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::InvalidInput, message)
}

/// The plugin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Include;

impl Instruction for Include {
    fn lower(
        &self,
        req: InstructionRequest,
        host: &Host<'_>,
    ) -> Result<InstructionResponse, PluginError> {
        lower(req, host)
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "include",
    version: env!("CARGO_PKG_VERSION"),
    instruction: Include => ["INCLUDE"],
}

#[cfg(test)]
mod tests;
