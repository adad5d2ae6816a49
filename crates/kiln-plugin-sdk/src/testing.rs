//! A stand-in for kiln in a plugin's own unit tests: [`TestHost`] serves the host callbacks a
//! trait method makes (context files, logs, cancellation) from memory, so `Frontend::build`,
//! `Instruction::lower` and `Primitive::execute` can be called directly with a real [`Host`].
//!
//! ```
//! use kiln_plugin_sdk::testing::TestHost;
//! let host = TestHost::new().with_file("context", "greeting.txt", b"hi\n");
//! let text = host.run(|h| h.read_context_file("context", "greeting.txt")).unwrap();
//! assert_eq!(text, b"hi\n");
//! let missing = host.run(|h| h.stat("context", "nope")).unwrap();
//! assert_eq!(missing, None);
//! ```

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Mutex;

use kiln_plugin_abi::abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use kiln_plugin_abi::{CallResult, HostHandle};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{
    self, Empty, FileInfo, FileKind, LogRequest, PluginError, ReadDirRequest, ReadFileRequest,
    StatRequest,
};
use crate::Host;

/// An in-memory kiln for tests: context files, a cancellation flag, and the log lines received.
/// Callbacks it does not serve (e.g. `image.resolve_config`) are answered `Unsupported`, as a
/// kiln that lacks a method answers; `instruction.lower` is answered "no plugin" (`null`).
#[derive(Debug, Default)]
pub struct TestHost {
    files: BTreeMap<(String, String), Vec<u8>>,
    cancelled: bool,
    logs: Mutex<Vec<String>>,
}

impl TestHost {
    /// A host with no files, not cancelled.
    pub fn new() -> Self {
        TestHost::default()
    }

    /// Adds a regular file at `path` (relative, `/`-separated) of local context `context`
    /// (`context` is the main one).
    pub fn with_file(mut self, context: &str, path: &str, content: &[u8]) -> Self {
        self.files
            .insert((context.to_owned(), normalize(path)), content.to_owned());
        self
    }

    /// Makes `Host::cancelled` answer `cancelled`.
    pub fn with_cancelled(mut self, cancelled: bool) -> Self {
        self.cancelled = cancelled;
        self
    }

    /// The messages the plugin logged, in order, as `level: message`.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Runs `f` with a [`Host`] whose callbacks this value serves.
    pub fn run<R>(&self, f: impl FnOnce(&Host<'_>) -> R) -> R {
        let handle = HostHandle {
            ctx: (self as *const TestHost).cast::<c_void>(),
            call: trampoline,
        };
        // SAFETY: `handle` points at `self`, which outlives the `Host`, dropped when `f` returns.
        let host = unsafe { Host::from_handle(handle) };
        f(&host)
    }

    fn serve(&self, method: &str, request: &[u8]) -> Result<Vec<u8>, PluginError> {
        match method {
            proto::HOST_CONTEXT_READ_FILE => {
                let r: ReadFileRequest = decode(method, request)?;
                self.files
                    .get(&(r.context.clone(), normalize(&r.path)))
                    .cloned()
                    .ok_or_else(|| {
                        PluginError::not_found(format!("{} not found in {}", r.path, r.context))
                    })
            }
            proto::HOST_CONTEXT_STAT => {
                let r: StatRequest = decode(method, request)?;
                let path = normalize(&r.path);
                let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
                encode(
                    &self
                        .entries(&r.context, dir)
                        .into_iter()
                        .find(|e| e.name == name),
                )
            }
            proto::HOST_CONTEXT_READ_DIR => {
                let r: ReadDirRequest = decode(method, request)?;
                encode(&self.entries(&r.context, &normalize(&r.path)))
            }
            proto::HOST_PROGRESS_LOG => {
                let r: LogRequest = decode(method, request)?;
                if let Ok(mut logs) = self.logs.lock() {
                    logs.push(format!("{:?}: {}", r.level, r.message).to_lowercase());
                }
                encode(&Empty {})
            }
            proto::HOST_BUILD_CANCELLED => encode(&self.cancelled),
            proto::METHOD_INSTRUCTION_LOWER => encode(&Option::<()>::None),
            _ => Err(PluginError::unsupported(format!(
                "the test host does not serve {method:?}"
            ))),
        }
    }

    /// The files and directories directly in `dir` of `context`, sorted by name.
    fn entries(&self, context: &str, dir: &str) -> Vec<FileInfo> {
        let mut out: BTreeMap<String, FileInfo> = BTreeMap::new();
        for ((ctx, path), content) in &self.files {
            if ctx != context {
                continue;
            }
            let rest = if dir.is_empty() {
                path.as_str()
            } else {
                match path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
                    Some(r) => r,
                    None => continue,
                }
            };
            let (name, info) = match rest.split_once('/') {
                Some((d, _)) => (d, (FileKind::Dir, 0, 0o755)),
                None => (rest, (FileKind::File, content.len() as u64, 0o644)),
            };
            out.entry(name.to_owned()).or_insert(FileInfo {
                name: name.to_owned(),
                kind: info.0,
                size: info.1,
                mode: info.2,
                link_target: None,
            });
        }
        out.into_values().collect()
    }
}

extern "C" fn trampoline(
    ctx: *const c_void,
    method: RStr<'_>,
    request: RSlice<'_, u8>,
) -> CallResult {
    // SAFETY: `TestHost::run` made `ctx` from a `&TestHost` that outlives every call of `f`.
    let host = unsafe { &*ctx.cast::<TestHost>() };
    match host.serve(method.as_str(), request.as_slice()) {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(e) => RResult::RErr(RString::from(e.to_json())),
    }
}

fn decode<T: DeserializeOwned>(method: &str, request: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(request)
        .map_err(|e| PluginError::internal(format!("bad {method} request: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PluginError> {
    serde_json::to_vec(value).map_err(|e| PluginError::internal(e.to_string()))
}

/// `path` without `./`, leading or trailing `/`, or empty components (`.` is the root: ``).
fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LogLevel;

    #[test]
    fn serves_files_dirs_logs_and_cancellation() {
        let host = TestHost::new()
            .with_file("context", "a/b.txt", b"bee")
            .with_file("context", "./top", b"t")
            .with_file("other", "x", b"x")
            .with_cancelled(true);
        host.run(|h| {
            assert_eq!(h.read_context_file("context", "a/b.txt").unwrap(), b"bee");
            let e = h.read_context_file("context", "nope").unwrap_err();
            assert_eq!(e.kind, proto::ErrorKind::NotFound);
            let names: Vec<String> = h
                .read_dir("context", ".")
                .unwrap()
                .into_iter()
                .map(|f| f.name)
                .collect();
            assert_eq!(names, ["a", "top"]);
            assert_eq!(h.stat("context", "a").unwrap().unwrap().kind, FileKind::Dir);
            assert_eq!(h.stat("context", "a/b.txt").unwrap().unwrap().size, 3);
            assert_eq!(h.stat("context", "a/c").unwrap(), None);
            let read = |p: &str| h.read_file_if_exists("context", p).unwrap();
            assert_eq!(read("a/b.txt").as_deref(), Some(&b"bee"[..]));
            assert_eq!(read("a/c"), None, "a missing file is None");
            assert_eq!(read("a"), None, "a directory is no file");
            assert!(h.cancelled());
            h.log(LogLevel::Warn, "careful");
            let platform: kiln_types::Platform = "linux/amd64".parse().unwrap();
            let e = h.resolve_image_config("alpine", &platform).unwrap_err();
            assert_eq!(e.kind, proto::ErrorKind::Unsupported);
        });
        assert_eq!(host.logs(), ["warn: careful"]);
    }
}
