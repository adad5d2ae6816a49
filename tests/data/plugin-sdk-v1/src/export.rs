//! The machinery behind [`export_plugin!`](crate::export_plugin): the manifest, the dispatch of
//! the generic `call` entry, and panic containment.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use kiln_plugin_abi::abi_stable::prefix_type::PrefixTypeTrait;
use kiln_plugin_abi::abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use kiln_plugin_abi::{CallResult, HostHandle, PluginModule, PluginModuleRef, ABI_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::{
    self, ErrorKind, FrontendCaps, InstructionCaps, Kind, Manifest, PluginError, PrimitiveCaps,
};
use crate::{Frontend, Host, Instruction, Primitive};

/// The exported symbol name of abi_stable 0.11's root module header, which its
/// `#[export_root_module]` attribute would generate. Spelled out so that plugins need no direct
/// abi_stable dependency (that attribute expands to `::abi_stable::` paths); a unit test checks
/// it against abi_stable's own constant.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// One plugin's implementations, as declared in `export_plugin!`.
pub struct Plugin {
    name: String,
    version: String,
    frontend: Option<(Box<dyn Frontend>, Vec<String>)>,
    instruction: Option<(Box<dyn Instruction>, Vec<String>)>,
    primitive: Option<(Box<dyn Primitive>, Vec<String>)>,
}

impl Plugin {
    /// A plugin with no implementations yet.
    pub fn new(name: &str, version: &str) -> Self {
        Plugin {
            name: name.to_owned(),
            version: version.to_owned(),
            frontend: None,
            instruction: None,
            primitive: None,
        }
    }

    /// Adds the frontend and the `# syntax=` values it answers to.
    pub fn frontend(mut self, f: impl Frontend + 'static, syntaxes: &[&str]) -> Self {
        self.frontend = Some((Box::new(f), strings(syntaxes)));
        self
    }

    /// Adds the instruction plugin and its keywords.
    pub fn instruction(mut self, i: impl Instruction + 'static, keywords: &[&str]) -> Self {
        self.instruction = Some((Box::new(i), strings(keywords)));
        self
    }

    /// Adds the primitive and its op names.
    pub fn primitive(mut self, p: impl Primitive + 'static, ops: &[&str]) -> Self {
        self.primitive = Some((Box::new(p), strings(ops)));
        self
    }

    fn manifest(&self) -> Manifest {
        let mut kinds = Vec::new();
        if self.frontend.is_some() {
            kinds.push(Kind::Frontend);
        }
        if self.instruction.is_some() {
            kinds.push(Kind::Instruction);
        }
        if self.primitive.is_some() {
            kinds.push(Kind::Primitive);
        }
        Manifest {
            name: self.name.clone(),
            version: self.version.clone(),
            abi_version: ABI_VERSION,
            protocol_version: proto::PROTOCOL_VERSION,
            kinds,
            frontend: self.frontend.as_ref().map(|(_, s)| FrontendCaps {
                syntaxes: s.clone(),
            }),
            instruction: self.instruction.as_ref().map(|(_, k)| InstructionCaps {
                keywords: k.clone(),
            }),
            primitive: self
                .primitive
                .as_ref()
                .map(|(_, o)| PrimitiveCaps { ops: o.clone() }),
        }
    }

    fn dispatch(
        &self,
        method: &str,
        request: &[u8],
        host: &Host<'_>,
    ) -> Result<Vec<u8>, PluginError> {
        match method {
            proto::METHOD_FRONTEND_BUILD => match &self.frontend {
                Some((f, _)) => run(method, request, |r| f.build(r, host)),
                None => Err(self.lacks(method)),
            },
            proto::METHOD_INSTRUCTION_LOWER => match &self.instruction {
                Some((i, _)) => run(method, request, |r| i.lower(r, host)),
                None => Err(self.lacks(method)),
            },
            proto::METHOD_PRIMITIVE_EXECUTE => match &self.primitive {
                Some((p, _)) => run(method, request, |r| p.execute(r, host)),
                None => Err(self.lacks(method)),
            },
            _ => Err(self.lacks(method)),
        }
    }

    /// Records this plugin's name for panic messages on the current thread.
    pub fn note_name(&self) {
        NAME_OF_PANICKED.with(|n| {
            if n.borrow().as_str() != self.name {
                self.name.clone_into(&mut n.borrow_mut());
            }
        });
    }

    fn lacks(&self, method: &str) -> PluginError {
        PluginError::unsupported(format!(
            "plugin {} does not implement method {method:?}",
            self.name
        ))
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn run<Req: DeserializeOwned, Resp: Serialize>(
    method: &str,
    request: &[u8],
    f: impl FnOnce(Req) -> Result<Resp, PluginError>,
) -> Result<Vec<u8>, PluginError> {
    let req = serde_json::from_slice(request).map_err(|e| {
        PluginError::new(
            ErrorKind::InvalidInput,
            format!("cannot decode the {method} request: {e}"),
        )
    })?;
    let resp = f(req)?;
    serde_json::to_vec(&resp)
        .map_err(|e| PluginError::internal(format!("cannot encode the {method} response: {e}")))
}

/// The `manifest` entry: the manifest JSON, or `""` if building the plugin panicked (kiln
/// refuses an unreadable manifest).
pub fn manifest(plugin: fn() -> &'static Plugin) -> RString {
    let json = contained(|| serde_json::to_string(&plugin().manifest()).unwrap_or_default());
    RString::from(json.unwrap_or_default())
}

/// The `call` entry: dispatch by method name, with panics turned into
/// [`ErrorKind::Panic`] errors. Never unwinds.
pub fn call(
    plugin: fn() -> &'static Plugin,
    method: RStr<'_>,
    request: RSlice<'_, u8>,
    host: HostHandle,
) -> CallResult {
    let outcome = contained(|| {
        let p = plugin();
        // SAFETY: `host` is the handle of the call running now, and the `Host` is dropped at the
        // end of this closure, before `call` returns.
        let host = unsafe { Host::from_handle(host) };
        p.dispatch(method.as_str(), request.as_slice(), &host)
    });
    let result = match outcome {
        Ok(r) => r,
        Err(payload) => {
            // `plugin()` may itself be what panicked: do not call it again for the name.
            let name = NAME_OF_PANICKED.with(|n| n.borrow().clone());
            Err(PluginError::new(
                ErrorKind::Panic,
                format!("plugin {name} panicked: {payload}"),
            ))
        }
    };
    match result {
        Ok(bytes) => RResult::ROk(RVec::from(bytes)),
        Err(e) => RResult::RErr(RString::from(e.to_json())),
    }
}

/// Builds the root module from the three entries the macro generated.
pub fn root_module(
    abi_version: extern "C" fn() -> u32,
    manifest: extern "C" fn() -> RString,
    call: extern "C" fn(RStr<'_>, RSlice<'_, u8>, HostHandle) -> CallResult,
) -> PluginModuleRef {
    PluginModule {
        abi_version,
        manifest,
        call,
    }
    .leak_into_prefix()
}

thread_local! {
    /// Set while this thread runs plugin code on behalf of kiln: panics are then reported as
    /// errors, not printed.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    /// Where the last contained panic happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The name shown in panic messages (set by the macro's plugin getter once it succeeded).
    static NAME_OF_PANICKED: RefCell<String> = RefCell::new(String::from("(unnamed)"));
}

/// Runs `f`, catching a panic and returning its message (with its location) instead.
///
/// The default panic hook would print "thread ... panicked at ..." on kiln's stderr. A cdylib has
/// its own copy of std and so its own hook: we chain a hook that stays silent while plugin code
/// runs under `contained` on this thread and defers to the previous hook otherwise. (If the
/// plugin is linked into a program as an rlib and that program calls the FFI entries directly,
/// this chaining happens in that program's std; its behaviour outside plugin calls is unchanged.)
fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_CALL.with(Cell::get) {
                let loc = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_LOCATION.with(|p| *p.borrow_mut() = loc);
            } else {
                previous(info);
            }
        }));
    });
    let was = IN_CALL.with(|c| c.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    IN_CALL.with(|c| c.set(was));
    r.map_err(|payload| {
        let msg = payload_text(payload.as_ref());
        match PANIC_LOCATION.with(|p| p.borrow_mut().take()) {
            Some(loc) => format!("{msg} (at {loc})"),
            None => msg,
        }
    })
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

/// Exports a kiln plugin from a `cdylib` crate: the abi_stable root module, the
/// `kiln_plugin_abi_version` probe symbol, the manifest and the dispatching `call` entry.
///
/// Use it once per crate, at module level. `name` and `version` are required; then any subset
/// of `frontend`, `instruction`, `primitive`, in this order, each an expression building the
/// implementation (evaluated once, on first use) followed by `=>` and the list of `# syntax=`
/// values, instruction keywords or op names it answers to:
///
/// ```ignore
/// kiln_plugin_sdk::export_plugin! {
///     name: "dockerfile",
///     version: env!("CARGO_PKG_VERSION"),
///     frontend: MyFrontend::default() => ["dockerfile", "docker/dockerfile"],
///     instruction: MyInclude => ["INCLUDE"],
///     primitive: MyGit::new() => ["git"],
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr
        $(, frontend: $frontend:expr => [$($syntax:expr),* $(,)?])?
        $(, instruction: $instruction:expr => [$($keyword:expr),* $(,)?])?
        $(, primitive: $primitive:expr => [$($op:expr),* $(,)?])?
        $(,)?
    ) => {
        const _: () = {
            use $crate::__private as __kp;

            fn __kiln_plugin() -> &'static __kp::Plugin {
                static PLUGIN: ::std::sync::OnceLock<__kp::Plugin> = ::std::sync::OnceLock::new();
                let p = PLUGIN.get_or_init(|| {
                    let plugin = __kp::Plugin::new($name, $version);
                    $(let plugin = plugin.frontend($frontend, &[$($syntax),*]);)?
                    $(let plugin = plugin.instruction($instruction, &[$($keyword),*]);)?
                    $(let plugin = plugin.primitive($primitive, &[$($op),*]);)?
                    plugin
                });
                __kp::Plugin::note_name(p);
                p
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn kiln_plugin_abi_version() -> u32 {
                __kp::ABI_VERSION
            }

            extern "C" fn __kiln_manifest() -> __kp::RString {
                __kp::manifest(__kiln_plugin)
            }

            extern "C" fn __kiln_call(
                method: __kp::RStr<'_>,
                request: __kp::RSlice<'_, u8>,
                host: __kp::HostHandle,
            ) -> __kp::CallResult {
                __kp::call(__kiln_plugin, method, request, host)
            }

            fn __kiln_root_module() -> __kp::PluginModuleRef {
                __kp::root_module(kiln_plugin_abi_version, __kiln_manifest, __kiln_call)
            }

            // What abi_stable's `#[export_root_module]` generates, with paths through this crate.
            #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
            pub static __KILN_ROOT_MODULE: __kp::LibHeader = {
                extern "C" fn constructor() -> __kp::RootModuleResult {
                    __kp::__call_root_module_loader(__kiln_root_module)
                }
                // SAFETY: `constructor` returns the prefix of a `PluginModuleRef`, the type given.
                unsafe {
                    __kp::LibHeader::from_constructor::<__kp::PluginModuleRef>(
                        constructor,
                        __kp::CheckTypeLayout::Yes,
                    )
                }
            };
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            kiln_plugin_abi::abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }

    #[test]
    fn panics_become_messages_with_location() {
        let r: Result<(), String> = contained(|| panic!("boom {}", 7));
        let msg = r.unwrap_err();
        assert!(msg.starts_with("boom 7 (at "), "{msg}");
        assert!(msg.contains("export.rs"), "{msg}");
    }
}
