//! kiln's second frontend: a declarative build spec in TOML → build graph + image config.
//!
//! ```toml
//! # syntax=kiln/spec
//! [args]
//! VERSION = "1.0"
//!
//! [stage.build]
//! from = "busybox"
//! workdir = "/src"
//! steps = [
//!   { copy = ".", to = "/src" },
//!   { run = "make", cache = ["/root/.cache"], secrets = ["token"] },
//! ]
//!
//! [stage.final]
//! from = "scratch"
//! steps = [ { copy = "/src/app", from = "build", to = "/app" } ]
//! [stage.final.image]
//! entrypoint = ["/app"]
//! ```
//!
//! The reference is `docs/spec-frontend.md`. The file is read with its spans (`schema`), so
//! every error names its line; the stages are then lowered (`lower`) with the graph constructs
//! the Dockerfile frontend uses, so a step that means what a Dockerfile instruction means has
//! the same vertex digest and both frontends share cache entries.
//!
//! It is a plugin (`cdylib`, named `spec`, answering `# syntax=kiln/spec`) and a library
//! (`rlib`): [`build`] runs against any [`SpecHost`], so tests run in-process with a fake host.
//!
//! Architecture invariant: depends only on `kiln-plugin-sdk`, `kiln-graph`, `kiln-types`,
//! `kiln-ignore`, `dockerfile-parser` (its variable expansion and "did you mean") and `toml`
//! — never on the engine, solver, host or any other kiln crate. No I/O: everything outside the
//! build file comes through the host.

mod call;
mod error;
mod host;
mod image;
mod lower;
mod schema;

#[cfg(test)]
mod tests;

use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
use kiln_plugin_sdk::{Frontend, Host};

pub use host::SpecHost;

/// The `# syntax=` values this frontend answers besides its name `spec`.
pub const SYNTAXES: [&str; 2] = ["kiln/spec", "spec"];

/// Converts `req.source` into a graph and an image config, or answers the `--call` it asks
/// for. Errors about a line carry its location (`req.filename` and the line) and quote the line.
pub fn build(req: &FrontendRequest, host: &dyn SpecHost) -> Result<FrontendResponse, PluginError> {
    let answer = match call::requested(req) {
        None => lower::lower(req, host),
        Some(call) => call::answer(&call, req, host),
    };
    answer.map_err(|e| e.into_plugin_error(&req.filename, &req.source))
}

/// The plugin face of [`build`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SpecFrontend;

impl Frontend for SpecFrontend {
    fn build(
        &self,
        req: FrontendRequest,
        host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        build(&req, host)
    }
}

// Not in this crate's own unit tests: they link the Dockerfile frontend's rlib to compare
// graphs, and two plugins in one binary would define the plugin symbols twice.
#[cfg(not(test))]
kiln_plugin_sdk::export_plugin! {
    name: "spec",
    version: env!("CARGO_PKG_VERSION"),
    frontend: SpecFrontend => [SYNTAXES[0], SYNTAXES[1]],
}
