//! Finds, probes, loads and calls kiln plugins, and serves their callbacks into the engine.
//!
//! - [`SearchPath`] lists the directories to scan; [`PluginRegistry::discover`] loads every
//!   `*.so` found there and records why any file was refused ([`Refused`], for
//!   `kiln plugins ls`).
//! - Loading a file first probes it with libloading (the `kiln_plugin_abi_version` symbol and
//!   its value), then lets abi_stable check the root module layout, then validates the manifest
//!   and refuses a plugin that `requires` a capability missing from
//!   `kiln_plugin_sdk::proto::HOST_CAPABILITIES` ([`Refusal::MissingCapabilities`]).
//! - [`LoadedPlugin`] calls the plugin (`frontend_build`, `instruction_lower`,
//!   `primitive_execute`), validating any graph it returns; callbacks from the plugin are served
//!   by the engine's [`HostServices`] implementation.
//!
//! Calls are synchronous and may block: run them on blocking threads. Libraries stay loaded
//! for the life of the process (abi_stable never unloads them), so nothing is ever closed while
//! a call is in flight.
//!
//! Architecture invariant: depends on the plugin ABI/SDK, kiln-graph and kiln-types only — no
//! engine, solver or async runtime (the engine implements [`HostServices`]).

mod discovery;
mod error;
mod plugin;
mod registry;
mod services;

pub use discovery::{SearchPath, PLUGIN_PATH_ENV};
pub use error::{Error, Refusal, Refused};
pub use kiln_plugin_sdk::proto;
pub use plugin::LoadedPlugin;
pub use registry::PluginRegistry;
pub use services::HostServices;
