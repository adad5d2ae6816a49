//! The frozen binary boundary between kiln and its plugins.
//!
//! A plugin is a `cdylib` that exports two things:
//!
//! 1. a plain C function named [`PROBE_SYMBOL`] (`extern "C" fn() -> u32`) returning
//!    [`ABI_VERSION`], which the host reads with `libloading` before abi_stable touches the
//!    library, so that a foreign or outdated library is refused with a clear message;
//! 2. one abi_stable root module, [`PluginModule`], whose layout abi_stable checks at load.
//!
//! The root module and [`HostHandle`] are **frozen forever**: abi_stable refuses a library whose
//! root module has fewer fields than the loader expects, so adding a field would make a new kiln
//! refuse every older plugin. Everything that evolves travels as versioned, serde-encoded
//! messages through the single generic [`PluginModule::call`] entry and the single generic
//! [`HostHandle::call`] callback (the message types live in `kiln-plugin-sdk`).
//!
//! Architecture invariant: this crate depends on abi_stable only and contains no logic. Its
//! package version is pinned to `1.x` (abi_stable compares it at load; majors must match).
//!
//! Plugin authors do not use this crate directly: `kiln-plugin-sdk` wraps it.

#![warn(missing_docs)]

use std::ffi::c_void;

/// The abi_stable crate this boundary is defined with, re-exported so that the SDK, the host
/// and every plugin use exactly the same copy (abi_stable also checks its own version at load).
pub use abi_stable;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;

/// The version of this binary boundary. It changes only if [`PluginModule`] or [`HostHandle`]
/// ever had to change, which is meant never to happen: evolution happens in the messages.
pub const ABI_VERSION: u32 = 1;

/// Name (NUL-terminated, for `dlsym`) of the plain `extern "C" fn() -> u32` every plugin exports
/// outside abi_stable. It returns the [`ABI_VERSION`] the plugin was built for.
pub const PROBE_SYMBOL: &[u8] = b"kiln_plugin_abi_version\0";

/// [`PROBE_SYMBOL`] without the trailing NUL, for messages.
pub const PROBE_SYMBOL_NAME: &str = "kiln_plugin_abi_version";

/// The signature of the function exported as [`PROBE_SYMBOL`].
pub type ProbeFn = extern "C" fn() -> u32;

/// What both generic entries return: response bytes, or an error string. For plugin calls the
/// error string is the JSON of the SDK's `PluginError`; for host callbacks likewise.
pub type CallResult = RResult<RVec<u8>, RString>;

/// The host's callback: `(context, method, request bytes) -> response bytes or error JSON`.
pub type HostCallFn =
    extern "C" fn(ctx: *const c_void, method: RStr<'_>, request: RSlice<'_, u8>) -> CallResult;

/// The host services a plugin can call back into while one [`PluginModule::call`] runs.
///
/// `ctx` is opaque to the plugin; it is handed back unchanged to `call`.
///
/// # Validity
///
/// A handle is valid only for the duration of the [`PluginModule::call`] that received it. A
/// plugin must not keep it (or copies of it) after that call has returned.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HostHandle {
    /// Opaque host context, passed back to [`HostHandle::call`].
    pub ctx: *const c_void,
    /// The one generic callback; method names and messages are defined by the SDK.
    // Written out rather than as `HostCallFn`: abi_stable's derive only understands function
    // pointer types spelled inline.
    pub call:
        extern "C" fn(ctx: *const c_void, method: RStr<'_>, request: RSlice<'_, u8>) -> CallResult,
}

// SAFETY: `ctx` is only ever dereferenced by the host's own `call` function, never by the plugin.
// The host builds a handle from a context that is `Sync` (the host crate requires its services to
// be `Send + Sync`) and keeps it alive for the whole plugin call, so invoking `call` from any
// thread the plugin uses during that call is sound.
unsafe impl Send for HostHandle {}
// SAFETY: see `Send` above; the handle itself is immutable.
unsafe impl Sync for HostHandle {}

impl HostHandle {
    /// Calls the host: `method` with the serialized `request`.
    pub fn call(&self, method: &str, request: &[u8]) -> CallResult {
        (self.call)(self.ctx, RStr::from(method), RSlice::from(request))
    }
}

/// The root module every plugin exports. **Frozen**: never add, remove or change a field.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The [`ABI_VERSION`] the plugin was built for (the same value as the probe symbol).
    pub abi_version: extern "C" fn() -> u32,
    /// The plugin's manifest: name, version, kinds and capabilities, as JSON.
    pub manifest: extern "C" fn() -> RString,
    /// The one generic entry: runs `method` on the serialized `request`; the plugin may call back
    /// into `host` until it returns. Must never unwind.
    #[sabi(last_prefix_field)]
    pub call:
        extern "C" fn(method: RStr<'_>, request: RSlice<'_, u8>, host: HostHandle) -> CallResult,
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "kiln_plugin";
    const NAME: &'static str = "kiln plugin";
    const VERSION_STRINGS: VersionStrings = abi_stable::package_version_strings!();
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn echo(
        ctx: *const c_void,
        method: RStr<'_>,
        request: RSlice<'_, u8>,
    ) -> CallResult {
        // SAFETY: the test passes a pointer to a live `u8`.
        let tag = unsafe { *ctx.cast::<u8>() };
        let mut out = vec![tag];
        out.extend_from_slice(method.as_str().as_bytes());
        out.extend_from_slice(request.as_slice());
        RResult::ROk(RVec::from(out))
    }

    #[test]
    fn host_handle_passes_context_method_and_request() {
        let tag = 7u8;
        let handle = HostHandle {
            ctx: (&tag as *const u8).cast(),
            call: echo,
        };
        let out = handle.call("m", b"-req").unwrap();
        assert_eq!(out.as_slice(), b"\x07m-req");
    }

    #[test]
    fn probe_symbol_is_nul_terminated_name() {
        assert_eq!(
            &PROBE_SYMBOL[..PROBE_SYMBOL.len() - 1],
            PROBE_SYMBOL_NAME.as_bytes()
        );
        assert_eq!(PROBE_SYMBOL.last(), Some(&0));
    }
}
