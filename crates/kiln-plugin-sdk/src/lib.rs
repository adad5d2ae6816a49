//! The kit a kiln plugin author builds against.
//!
//! A plugin is a `cdylib` crate that implements one or more of the safe traits [`Frontend`],
//! [`Instruction`] and [`Primitive`], and exports them with one [`export_plugin!`] invocation:
//!
//! ```no_run
//! use kiln_plugin_sdk::graph::State;
//! use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
//! use kiln_plugin_sdk::types::image::ImageConfig;
//! use kiln_plugin_sdk::{Frontend, Host};
//!
//! struct Empty;
//!
//! impl Frontend for Empty {
//!     fn build(
//!         &self,
//!         req: FrontendRequest,
//!         host: &Host<'_>,
//!     ) -> Result<FrontendResponse, PluginError> {
//!         let _dockerignore = host.stat("context", ".dockerignore")?;
//!         Ok(FrontendResponse::new(
//!             State::definition(&[State::scratch()]),
//!             ImageConfig::scratch(&req.platform),
//!         ))
//!     }
//! }
//!
//! kiln_plugin_sdk::export_plugin! {
//!     name: "empty",
//!     version: env!("CARGO_PKG_VERSION"),
//!     frontend: Empty => ["empty"],
//! }
//! ```
//!
//! The messages are in [`proto`]; callbacks into kiln go through [`Host`]. Helpers that source
//! primitives share: [`payload::custom`] (an op's JSON payload), [`url`] (download file names,
//! repository names, credentials hidden in messages) and [`Cancel`] (polling for cancellation);
//! [`testing::TestHost`] runs a plugin's trait methods in its unit tests.
//! A guide for plugin authors is `docs/plugins.md` in the kiln repository. Calls are synchronous
//! (kiln runs them on blocking threads); a plugin must not start an async runtime of its own. A
//! panic in a plugin is caught and reported as an error of the build; it never unwinds into kiln.
//!
//! Architecture invariant: every plugin compiles this crate, so it depends only on
//! `kiln-plugin-abi`, `kiln-graph`, `kiln-types`, serde and serde_json — never on the engine, the
//! host or anything async.

#![warn(missing_docs)]

pub mod base;
pub mod build_file;
pub mod context;
pub mod death_watch;
pub mod paths;
pub mod payload;
pub mod perms;
pub mod proto;
pub mod reference;
pub mod request;
pub mod signal;
pub mod steps;
pub mod testing;
pub mod url;

mod export;
mod host;

pub use host::{Cancel, Host};
pub use kiln_graph as graph;
pub use kiln_types as types;

use proto::{
    FrontendRequest, FrontendResponse, InstructionRequest, InstructionResponse, PluginError,
    PrimitiveRequest, PrimitiveResponse,
};

/// A frontend: build file text and options → build graph and image config.
///
/// Implementations must be `Send + Sync`: kiln may run several builds at once.
pub trait Frontend: Send + Sync {
    /// Turns `req.source` into a graph. Errors about a line should carry its location.
    fn build(&self, req: FrontendRequest, host: &Host<'_>)
        -> Result<FrontendResponse, PluginError>;
}

/// An instruction plugin: lowers one build file instruction (e.g. a third-party `INCLUDE`) onto
/// the current stage.
pub trait Instruction: Send + Sync {
    /// Returns the stage's new filesystem graph and config.
    fn lower(
        &self,
        req: InstructionRequest,
        host: &Host<'_>,
    ) -> Result<InstructionResponse, PluginError>;
}

/// A primitive: executes one vertex of the graph on inputs that kiln has prepared.
pub trait Primitive: Send + Sync {
    /// Runs `req.op`, writing the result filesystem at `req.output`.
    fn execute(
        &self,
        req: PrimitiveRequest,
        host: &Host<'_>,
    ) -> Result<PrimitiveResponse, PluginError>;

    /// What `req.op`'s result depends on outside the graph right now (see
    /// [`proto::METHOD_PRIMITIVE_CACHE_KEY`]); the default: nothing, the op decides.
    fn cache_key(
        &self,
        req: proto::CacheKeyRequest,
        host: &Host<'_>,
    ) -> Result<proto::CacheKeyResponse, PluginError> {
        let _ = (req, host);
        Ok(proto::CacheKeyResponse::default())
    }
}

#[doc(hidden)]
pub mod __private {
    //! What [`export_plugin!`](crate::export_plugin) expands to. Not a public API.
    pub use crate::export::{call, manifest, root_module, Plugin, ROOT_MODULE_SYMBOL};
    pub use kiln_plugin_abi::abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use kiln_plugin_abi::abi_stable::std_types::{RSlice, RStr, RString};
    pub use kiln_plugin_abi::{CallResult, HostHandle, PluginModuleRef, ABI_VERSION};
}
