//! kiln's Dockerfile frontend: Dockerfile text → build graph + image config, with the semantics
//! of BuildKit's `dockerfile2llb` (stages, ARG scoping, `--target`, `.dockerignore`, COPY/ADD,
//! RUN, the image config and its history).
//!
//! It is a plugin (`cdylib`, registered as `dockerfile` for the syntaxes `dockerfile` and
//! `docker/dockerfile`) and a library (`rlib`): [`build`] runs the conversion against any
//! [`FrontendHost`], so tests run in-process with a fake host. Instructions it does not know are
//! handed to instruction plugins through the host.
//!
//! Architecture invariant: depends only on `kiln-plugin-sdk`, `kiln-graph`, `kiln-types`,
//! `kiln-ignore` and `dockerfile-parser` (plus serde and thiserror) — never on the engine,
//! solver, host or any other kiln crate. No I/O: everything outside the Dockerfile text comes
//! through the host.

mod add;
mod call;
mod convert;
mod dispatch;
mod error;
mod expansion;
mod gofmt;
mod host;
mod lint;
mod named;
mod run_opts;
mod suggest;

#[cfg(test)]
mod tests;

use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
use kiln_plugin_sdk::{Frontend, Host};

pub use host::FrontendHost;

/// Converts `req.source` into a graph and an image config. Errors about a line carry its
/// location (`req.filename` and the line) and quote the line.
pub fn build(
    req: &FrontendRequest,
    host: &dyn FrontendHost,
) -> Result<FrontendResponse, PluginError> {
    convert::convert(req, host).map_err(|e| e.into_plugin_error(&req.filename, &req.source))
}

/// The plugin face of [`build`].
#[derive(Clone, Copy, Debug, Default)]
pub struct DockerfileFrontend;

impl Frontend for DockerfileFrontend {
    fn build(
        &self,
        req: FrontendRequest,
        host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        build(&req, host)
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "dockerfile",
    version: env!("CARGO_PKG_VERSION"),
    frontend: DockerfileFrontend => ["dockerfile", "docker/dockerfile"],
}
