//! What kiln offers plugins during a call, and the `extern "C"` callback that serves it.

use std::ffi::c_void;
use std::panic::{self, AssertUnwindSafe};

use kiln_plugin_abi::abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use kiln_plugin_abi::{CallResult, HostHandle};
use kiln_plugin_sdk::proto::{
    self, Empty, FileInfo, InstructionRequest, InstructionResponse, LogLevel, LogRequest,
    PluginError, ReadDirRequest, ReadFileRequest, ResolveImageConfigRequest,
    ResolveImageConfigResponse, StatRequest,
};
use kiln_types::Platform;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The engine's side of the host callbacks. Methods may block; they run on the thread of the
/// plugin call. Every method has a default (an `Unsupported` error, "no plugin", no-op or
/// "not cancelled") so that a new callback never breaks an existing implementation.
pub trait HostServices: Send + Sync {
    /// The bytes of `path` in local context `context`.
    fn read_context_file(&self, context: &str, path: &str) -> Result<Vec<u8>, PluginError> {
        let _ = (context, path);
        Err(PluginError::unsupported(
            "this build offers no context files",
        ))
    }

    /// What `path` in `context` is; `None` when it does not exist.
    fn stat(&self, context: &str, path: &str) -> Result<Option<FileInfo>, PluginError> {
        let _ = (context, path);
        Err(PluginError::unsupported(
            "this build offers no context files",
        ))
    }

    /// The entries of directory `path` in `context`, sorted by name.
    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<FileInfo>, PluginError> {
        let _ = (context, path);
        Err(PluginError::unsupported(
            "this build offers no context files",
        ))
    }

    /// The config of image `reference` for `platform`.
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        let _ = platform;
        Err(PluginError::unsupported(format!(
            "this build cannot resolve image {reference}"
        )))
    }

    /// Lowers an instruction the frontend does not know through an instruction plugin;
    /// `Ok(None)` when none handles `req.keyword`.
    fn lower_instruction(
        &self,
        req: InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        let _ = req;
        Ok(None)
    }

    /// A progress message from the plugin.
    fn log(&self, level: LogLevel, message: &str) {
        let _ = (level, message);
    }

    /// Whether the build was cancelled.
    fn cancelled(&self) -> bool {
        false
    }
}

/// Runs `f` with a [`HostHandle`] serving `services`. The handle must not be used after `f`
/// returns (the SDK guarantees that for plugins).
pub(crate) fn with_handle<R>(services: &dyn HostServices, f: impl FnOnce(HostHandle) -> R) -> R {
    // A thin pointer to the fat `&dyn` reference, which lives on this stack frame until `f` has
    // returned, i.e. for the whole plugin call.
    let services_ref: &dyn HostServices = services;
    let handle = HostHandle {
        ctx: (&services_ref as *const &dyn HostServices).cast::<c_void>(),
        call: host_call,
    };
    f(handle)
}

extern "C" fn host_call(
    ctx: *const c_void,
    method: RStr<'_>,
    request: RSlice<'_, u8>,
) -> CallResult {
    // SAFETY: `ctx` was made by `with_handle` from a `&&dyn HostServices` that outlives the
    // plugin call during which the plugin may invoke this callback.
    let services: &dyn HostServices = unsafe { *ctx.cast::<&dyn HostServices>() };
    let method = method.as_str();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        serve(services, method, request.as_slice())
    }));
    let result = outcome.unwrap_or_else(|_| {
        Err(PluginError::internal(format!(
            "kiln failed while serving the {method} callback (internal error)"
        )))
    });
    match result {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(e) => RResult::RErr(RString::from(e.to_json())),
    }
}

fn serve(
    services: &dyn HostServices,
    method: &str,
    request: &[u8],
) -> Result<Vec<u8>, PluginError> {
    match method {
        proto::HOST_CONTEXT_READ_FILE => {
            let r: ReadFileRequest = decode(method, request)?;
            services.read_context_file(&r.context, &r.path)
        }
        proto::HOST_CONTEXT_STAT => {
            let r: StatRequest = decode(method, request)?;
            encode(method, &services.stat(&r.context, &r.path)?)
        }
        proto::HOST_CONTEXT_READ_DIR => {
            let r: ReadDirRequest = decode(method, request)?;
            encode(method, &services.read_dir(&r.context, &r.path)?)
        }
        proto::HOST_IMAGE_RESOLVE_CONFIG => {
            let r: ResolveImageConfigRequest = decode(method, request)?;
            encode(
                method,
                &services.resolve_image_config(&r.reference, &r.platform)?,
            )
        }
        proto::METHOD_INSTRUCTION_LOWER => {
            let r: InstructionRequest = decode(method, request)?;
            encode(method, &services.lower_instruction(r)?)
        }
        proto::HOST_PROGRESS_LOG => {
            let r: LogRequest = decode(method, request)?;
            services.log(r.level, &r.message);
            encode(method, &Empty {})
        }
        proto::HOST_BUILD_CANCELLED => encode(method, &services.cancelled()),
        _ => Err(PluginError::unsupported(format!(
            "this kiln does not offer the host method {method:?}"
        ))),
    }
}

fn decode<T: DeserializeOwned>(method: &str, request: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(request).map_err(|e| {
        PluginError::new(
            proto::ErrorKind::InvalidInput,
            format!("unreadable {method} request from the plugin: {e}"),
        )
    })
}

fn encode<T: Serialize>(method: &str, value: &T) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(value)
        .map_err(|e| PluginError::internal(format!("cannot encode the {method} response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl HostServices for Nothing {}

    fn call(method: &str, request: &[u8]) -> Result<Vec<u8>, PluginError> {
        with_handle(&Nothing, |h| match h.call(method, request) {
            RResult::ROk(v) => Ok(v.into_vec()),
            RResult::RErr(e) => Err(PluginError::from_json(e.as_str())),
        })
    }

    #[test]
    fn unknown_methods_are_unsupported() {
        let e = call("future.method", b"{}").unwrap_err();
        assert_eq!(e.kind, proto::ErrorKind::Unsupported);
        assert!(e.message.contains("future.method"));
    }

    #[test]
    fn defaults_and_bad_requests() {
        assert_eq!(call(proto::HOST_BUILD_CANCELLED, b"{}").unwrap(), b"false");
        let e = call(proto::HOST_CONTEXT_STAT, b"not json").unwrap_err();
        assert_eq!(e.kind, proto::ErrorKind::InvalidInput);
        let none = call(
            proto::HOST_PROGRESS_LOG,
            br#"{"message":"hi","level":"info","added_later":1}"#,
        )
        .unwrap();
        assert_eq!(none, b"{}");
    }
}
