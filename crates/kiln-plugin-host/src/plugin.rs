//! One loaded plugin library: probing, loading, manifest checks and calls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph::Definition;
use kiln_plugin_abi::abi_stable::library::lib_header_from_path;
use kiln_plugin_abi::abi_stable::std_types::{RResult, RSlice, RStr};
use kiln_plugin_abi::{PluginModuleRef, ProbeFn, ABI_VERSION, PROBE_SYMBOL};
use kiln_plugin_sdk::proto::{
    self, FrontendRequest, FrontendResponse, InstructionRequest, InstructionResponse, Kind,
    Manifest, PluginError, PrimitiveRequest, PrimitiveResponse,
};
use kiln_types::reference::Reference;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::discovery::absolute;
use crate::error::{Error, Refusal, Refused};
use crate::services::{with_handle, HostServices};

/// A plugin library that passed every load check.
pub struct LoadedPlugin {
    path: PathBuf,
    manifest: Manifest,
    kinds: Vec<Kind>,
    module: PluginModuleRef,
    // Held so the library is never closed while this value exists (abi_stable also keeps its
    // own handle open for the life of the process).
    _library: libloading::Library,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("kinds", &self.kinds)
            .field("path", &self.path)
            .finish()
    }
}

impl LoadedPlugin {
    /// Loads the plugin library at `path` (made absolute), e.g. for `# syntax=/path/lib.so`.
    pub fn load(path: &Path) -> Result<Arc<LoadedPlugin>, Error> {
        let path = absolute(path);
        match load(&path) {
            Ok(p) => Ok(Arc::new(p)),
            Err(reason) => Err(Error::Refused(Refused { path, reason })),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The plugin's own version.
    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// The plugin ABI it was built for.
    pub fn abi_version(&self) -> u32 {
        self.manifest.abi_version
    }

    /// The kinds it implements that this kiln knows.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Whether it implements `kind`.
    pub fn has_kind(&self, kind: Kind) -> bool {
        self.kinds.contains(&kind)
    }

    /// The absolute path of the library.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole manifest, with the capabilities.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether this frontend answers to `# syntax=value`: its name, or one of its syntaxes
    /// (a `:tag` or `@digest` on `value` is ignored).
    pub fn answers_syntax(&self, value: &str) -> bool {
        let Some(caps) = &self.manifest.frontend else {
            return false;
        };
        let bare = syntax_name(value);
        self.name() == value
            || self.name() == bare
            || caps.syntaxes.iter().any(|s| s == value || *s == bare)
    }

    /// Whether this instruction plugin lowers `keyword` (case-insensitive).
    pub fn answers_keyword(&self, keyword: &str) -> bool {
        self.manifest
            .instruction
            .as_ref()
            .is_some_and(|c| c.keywords.iter().any(|k| k.eq_ignore_ascii_case(keyword)))
    }

    /// Whether this primitive executes op `op`.
    pub fn answers_op(&self, op: &str) -> bool {
        self.manifest
            .primitive
            .as_ref()
            .is_some_and(|c| c.ops.iter().any(|o| o == op))
    }

    /// Runs the frontend. The returned graph has been validated and has an output.
    pub fn frontend_build(
        &self,
        req: &FrontendRequest,
        services: &dyn HostServices,
    ) -> Result<FrontendResponse, Error> {
        let method = proto::METHOD_FRONTEND_BUILD;
        let resp: FrontendResponse = self.call(Kind::Frontend, method, req, services)?;
        self.check_graph(method, &resp.definition)?;
        Ok(resp)
    }

    /// Runs the instruction plugin. The returned graph has been validated and has an output.
    pub fn instruction_lower(
        &self,
        req: &InstructionRequest,
        services: &dyn HostServices,
    ) -> Result<InstructionResponse, Error> {
        let method = proto::METHOD_INSTRUCTION_LOWER;
        let resp: InstructionResponse = self.call(Kind::Instruction, method, req, services)?;
        self.check_graph(method, &resp.state)?;
        Ok(resp)
    }

    /// Runs the primitive.
    pub fn primitive_execute(
        &self,
        req: &PrimitiveRequest,
        services: &dyn HostServices,
    ) -> Result<PrimitiveResponse, Error> {
        self.call(
            Kind::Primitive,
            proto::METHOD_PRIMITIVE_EXECUTE,
            req,
            services,
        )
    }

    /// Asks the primitive what `req.op` currently depends on outside the graph; `None` when
    /// it answers nothing or does not know the method (older plugins).
    pub fn primitive_cache_key(
        &self,
        req: &proto::CacheKeyRequest,
        services: &dyn HostServices,
    ) -> Result<Option<String>, Error> {
        let r: Result<proto::CacheKeyResponse, Error> = self.call(
            Kind::Primitive,
            proto::METHOD_PRIMITIVE_CACHE_KEY,
            req,
            services,
        );
        match r {
            Ok(resp) => Ok(resp.key),
            Err(e)
                if e.plugin_error()
                    .is_some_and(|pe| pe.kind == proto::ErrorKind::Unsupported) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Calls any method with raw bytes (for methods newer than this crate's typed wrappers).
    pub fn call_raw(
        &self,
        method: &str,
        request: &[u8],
        services: &dyn HostServices,
    ) -> Result<Vec<u8>, Error> {
        let call = self.module.call();
        let out = with_handle(services, |host| {
            call(RStr::from(method), RSlice::from(request), host)
        });
        match out {
            RResult::ROk(bytes) => Ok(bytes.into_vec()),
            RResult::RErr(text) => Err(Error::Plugin {
                plugin: self.name().to_owned(),
                error: PluginError::from_json(text.as_str()),
            }),
        }
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: Kind,
        method: &str,
        req: &Req,
        services: &dyn HostServices,
    ) -> Result<Resp, Error> {
        if !self.has_kind(kind) {
            return Err(Error::NotCapable {
                plugin: self.name().to_owned(),
                kind,
            });
        }
        let bytes = serde_json::to_vec(req).map_err(|source| Error::Encode {
            method: method.to_owned(),
            source,
        })?;
        let out = self.call_raw(method, &bytes, services)?;
        serde_json::from_slice(&out).map_err(|source| Error::Protocol {
            plugin: self.name().to_owned(),
            method: method.to_owned(),
            source,
        })
    }

    fn check_graph(&self, method: &str, def: &Definition) -> Result<(), Error> {
        def.validate().map_err(|source| Error::InvalidGraph {
            plugin: self.name().to_owned(),
            method: method.to_owned(),
            source: Box::new(source),
        })?;
        if def.outputs.is_empty() {
            return Err(Error::NoOutput {
                plugin: self.name().to_owned(),
                method: method.to_owned(),
            });
        }
        Ok(())
    }
}

/// The frontend a `# syntax=` value names: an image reference's familiar repository name
/// (`docker.io/docker/dockerfile:1.7@sha256:…` → `docker/dockerfile`, a registry port kept), or
/// the value itself when docker's grammar does not make it a reference.
fn syntax_name(value: &str) -> String {
    Reference::parse_normalized(value).map_or_else(|_| value.to_owned(), |r| r.familiar_name())
}

fn load(path: &Path) -> Result<LoadedPlugin, Refusal> {
    // SAFETY: opening a library runs its initializers. Files in plugin directories (or named by
    // the user) are trusted native code by installation; Rust cdylibs have no initializers of
    // their own.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| Refusal::Open(chain(&e)))?;
    // SAFETY: the symbol, when present, is the SDK's `extern "C" fn() -> u32`; its specific name
    // is what makes a library a kiln plugin.
    let probe = unsafe { library.get::<ProbeFn>(PROBE_SYMBOL) }.map_err(|_| Refusal::NotAPlugin)?;
    let found = probe();
    if found != ABI_VERSION {
        return Err(Refusal::AbiMismatch {
            found,
            expected: ABI_VERSION,
        });
    }

    let header = lib_header_from_path(path).map_err(|e| Refusal::Incompatible(e.to_string()))?;
    let module = header
        .init_root_module::<PluginModuleRef>()
        .map_err(|e| Refusal::Incompatible(e.to_string()))?;
    let abi = (module.abi_version())();
    if abi != ABI_VERSION {
        return Err(Refusal::AbiMismatch {
            found: abi,
            expected: ABI_VERSION,
        });
    }

    let json = (module.manifest())();
    let manifest: Manifest = serde_json::from_str(json.as_str())
        .map_err(|e| Refusal::Manifest(format!("unreadable JSON ({e})")))?;
    let kinds = check_manifest(&manifest).map_err(Refusal::Manifest)?;
    check_requires(&manifest)?;
    Ok(LoadedPlugin {
        path: path.to_path_buf(),
        manifest,
        kinds,
        module,
        _library: library,
    })
}

/// The known kinds of a consistent manifest, or why it is not.
fn check_manifest(m: &Manifest) -> Result<Vec<Kind>, String> {
    if m.name.trim().is_empty() {
        return Err("the plugin name is empty".to_owned());
    }
    if m.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the plugin name {:?} contains whitespace", m.name));
    }
    if m.abi_version != ABI_VERSION {
        return Err(format!(
            "it declares ABI {} but its probe symbol says {ABI_VERSION}",
            m.abi_version
        ));
    }
    let mut kinds: Vec<Kind> = m
        .kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Unknown)
        .collect();
    kinds.sort();
    kinds.dedup();
    if kinds.is_empty() {
        return Err(format!(
            "no kind this kiln knows (declared: {:?}); known kinds are frontend, instruction, primitive",
            m.kinds
        ));
    }
    let has = |k| kinds.contains(&k);
    match (&m.frontend, has(Kind::Frontend)) {
        (None, true) => return Err("kind frontend without frontend capabilities".to_owned()),
        (Some(_), false) => return Err("frontend capabilities without kind frontend".to_owned()),
        _ => {}
    }
    match (&m.instruction, has(Kind::Instruction)) {
        (None, true) => return Err("kind instruction without instruction capabilities".to_owned()),
        (Some(_), false) => {
            return Err("instruction capabilities without kind instruction".to_owned())
        }
        (Some(c), true) if c.keywords.iter().all(|k| k.trim().is_empty()) => {
            return Err("an instruction plugin without keywords".to_owned())
        }
        _ => {}
    }
    match (&m.primitive, has(Kind::Primitive)) {
        (None, true) => return Err("kind primitive without primitive capabilities".to_owned()),
        (Some(_), false) => return Err("primitive capabilities without kind primitive".to_owned()),
        (Some(c), true) if c.ops.iter().all(|o| o.trim().is_empty()) => {
            return Err("a primitive plugin without ops".to_owned())
        }
        _ => {}
    }
    Ok(kinds)
}

/// Refuses a plugin that needs a host capability this kiln lacks: it would fail in the middle
/// of a build, or worse, silently do less than it should.
fn check_requires(m: &Manifest) -> Result<(), Refusal> {
    let missing: Vec<String> = m
        .requires
        .iter()
        .filter(|c| !proto::HOST_CAPABILITIES.contains(&c.as_str()))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Refusal::MissingCapabilities {
            missing,
            protocol: m.protocol_version,
        })
    }
}

/// An error with its sources (libloading puts the `dlerror` text in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_sdk::proto::{FrontendCaps, InstructionCaps};

    fn manifest() -> Manifest {
        Manifest {
            name: "x".into(),
            version: "1".into(),
            abi_version: ABI_VERSION,
            protocol_version: proto::PROTOCOL_VERSION,
            kinds: vec![Kind::Frontend],
            frontend: Some(FrontendCaps::default()),
            instruction: None,
            primitive: None,
            requires: Vec::new(),
        }
    }

    #[test]
    fn manifest_rules() {
        assert_eq!(check_manifest(&manifest()).unwrap(), vec![Kind::Frontend]);
        let mut m = manifest();
        m.name = " ".into();
        assert!(check_manifest(&m).unwrap_err().contains("empty"));
        let mut m = manifest();
        m.kinds = vec![Kind::Unknown];
        assert!(check_manifest(&m).unwrap_err().contains("no kind"));
        let mut m = manifest();
        m.kinds.push(Kind::Unknown);
        assert_eq!(check_manifest(&m).unwrap(), vec![Kind::Frontend]);
        let mut m = manifest();
        m.instruction = Some(InstructionCaps::default());
        assert!(check_manifest(&m).unwrap_err().contains("without kind"));
        let mut m = manifest();
        m.kinds.push(Kind::Instruction);
        m.instruction = Some(InstructionCaps::default());
        assert!(check_manifest(&m).unwrap_err().contains("without keywords"));
    }

    #[test]
    fn required_capabilities_are_checked_against_the_hosts() {
        let mut m = manifest();
        m.requires = vec![proto::CAP_FRONTEND_CALL_RESULT.to_owned()];
        assert_eq!(check_requires(&m), Ok(()));
        m.requires.push("teleport".to_owned());
        let refusal = check_requires(&m).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::MissingCapabilities {
                missing: vec!["teleport".to_owned()],
                protocol: proto::PROTOCOL_VERSION,
            }
        );
        let text = refusal.to_string();
        assert!(
            text.contains("requires host capability \"teleport\""),
            "{text}"
        );
        assert!(text.contains("\"frontend.call_result\""), "{text}");
    }

    #[test]
    fn syntax_suffixes() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (value, want) in [
            ("docker/dockerfile:1.7", "docker/dockerfile"),
            (&format!("docker/dockerfile@{digest}"), "docker/dockerfile"),
            (
                &format!("docker.io/docker/dockerfile:1@{digest}"),
                "docker/dockerfile",
            ),
            ("docker.io/library/dockerfile", "dockerfile"),
            ("localhost:5000/df", "localhost:5000/df"),
            ("localhost:5000/df:1", "localhost:5000/df"),
            // Not references: kept as written.
            ("Kilnfile", "Kilnfile"),
            (
                "docker/dockerfile@sha256:abc",
                "docker/dockerfile@sha256:abc",
            ),
        ] {
            assert_eq!(syntax_name(value), want, "{value}");
        }
    }
}
