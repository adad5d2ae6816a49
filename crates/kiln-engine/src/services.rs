//! The host callbacks the engine offers plugins during a frontend call.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_plugin_host::{HostServices, PluginRegistry};
use kiln_plugin_sdk::proto::{
    ErrorKind, FileInfo, FileKind, InstructionRequest, InstructionResponse, LogLevel, PluginError,
    ResolveImageConfigResponse,
};
use kiln_solver::{CancellationToken, Event, ProgressSink};
use kiln_types::Digest;

use crate::rootpath;

/// The name the build file's own directory is served under: BuildKit's `dockerfile` local,
/// where its Dockerfile frontend reads `<name>.dockerignore` before the context's
/// `.dockerignore`. A `--build-context NAME=VALUE` name never holds `=`, so this name cannot
/// collide with a named context (BuildKit's `dockerfile` could). The Dockerfile frontend
/// spells it too (`convert.rs`).
pub(crate) const DOCKERFILE_CONTEXT: &str = "dockerfile=";

pub(crate) struct EngineServices {
    contexts: BTreeMap<String, PathBuf>,
    /// The build file's directory and file name, served under [`DOCKERFILE_CONTEXT`].
    dockerfile: Option<(PathBuf, String)>,
    plugins: Arc<PluginRegistry>,
    registry: kiln_registry::Registry,
    store: kiln_snapshot::Store,
    handle: tokio::runtime::Handle,
    progress: Arc<dyn ProgressSink<Digest>>,
    id: Digest,
    name: String,
    cancel: CancellationToken,
}

impl EngineServices {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        contexts: BTreeMap<String, PathBuf>,
        plugins: Arc<PluginRegistry>,
        registry: kiln_registry::Registry,
        store: kiln_snapshot::Store,
        handle: tokio::runtime::Handle,
        progress: Arc<dyn ProgressSink<Digest>>,
        id: Digest,
        name: String,
        cancel: CancellationToken,
    ) -> Self {
        EngineServices {
            contexts,
            dockerfile: None,
            plugins,
            registry,
            store,
            handle,
            progress,
            id,
            name,
            cancel,
        }
    }

    /// Serves the directory of the build file `dockerfile` under [`DOCKERFILE_CONTEXT`],
    /// limited to the two files BuildKit reads there: the build file and `<name>.dockerignore`
    /// (the rest of that directory may be anything, outside every context).
    pub(crate) fn with_dockerfile(mut self, dockerfile: &Path) -> Self {
        if let Some(name) = dockerfile.file_name() {
            let dir = match dockerfile.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            self.dockerfile = Some((dir, name.to_string_lossy().into_owned()));
        }
        self
    }

    fn path(&self, context: &str, path: &str, follow: bool) -> Result<PathBuf, PluginError> {
        if context == DOCKERFILE_CONTEXT {
            return match &self.dockerfile {
                Some((dir, name)) => dockerfile_dir_path(dir, name, path, follow),
                None => Err(PluginError::not_found("no build file directory is served")),
            };
        }
        let Some(root) = self.contexts.get(context) else {
            return Err(PluginError::not_found(format!(
                "no build context named {context:?}"
            )));
        };
        rootpath::resolve(root, path, follow)
            .map_err(|e| PluginError::internal(format!("{path}: {e}")))
    }
}

/// `path` in the build file's directory `dir`: only the build file `name` itself and
/// `<name>.dockerignore`, resolved inside `dir` (a symlink cannot lead out of it); any other
/// path is "not found", as if the directory held nothing else.
fn dockerfile_dir_path(
    dir: &Path,
    name: &str,
    path: &str,
    follow: bool,
) -> Result<PathBuf, PluginError> {
    let rel = path.trim_start_matches('/').trim_start_matches("./");
    let ignore = format!("{name}.dockerignore");
    if rel != name && rel != ignore {
        return Err(PluginError::not_found(format!(
            "{path} not found beside the build file (only {name} and {ignore} are served)"
        )));
    }
    rootpath::resolve(dir, rel, follow).map_err(|e| PluginError::internal(format!("{path}: {e}")))
}

fn info(name: String, md: &std::fs::Metadata, link: Option<String>) -> FileInfo {
    let ft = md.file_type();
    FileInfo {
        name,
        kind: if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        },
        size: md.len(),
        mode: md.permissions().mode() & 0o7777,
        link_target: link,
    }
}

/// A registry failure as a plugin sees it: the registry's message (what, which image, why)
/// with the kind of failure, so that a frontend can tell "no such image" from the rest.
fn registry_error(e: &kiln_registry::Error) -> PluginError {
    use kiln_registry::Category;
    let kind = match e.category() {
        Category::NotFound => ErrorKind::NotFound,
        Category::Invalid => ErrorKind::InvalidInput,
        Category::Unauthorized => ErrorKind::Unauthorized,
        Category::Unavailable => ErrorKind::Unavailable,
        Category::Internal => ErrorKind::Internal,
    };
    PluginError::new(kind, e.to_string())
}

impl HostServices for EngineServices {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Vec<u8>, PluginError> {
        let p = self.path(context, path, true)?;
        // A frontend reads small files (`.dockerignore`, a build file): never a FIFO that
        // blocks forever, nor more than a build file may weigh.
        crate::read_regular_file(&p, crate::MAX_BUILD_FILE_BYTES).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                PluginError::not_found(format!("{path} not found in {context}"))
            }
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => PluginError::new(
                ErrorKind::InvalidInput,
                format!("read {path} in {context}: {e}"),
            ),
            _ => PluginError::internal(format!("read {path} in {context}: {e}")),
        })
    }

    fn stat(&self, context: &str, path: &str) -> Result<Option<FileInfo>, PluginError> {
        let p = self.path(context, path, false)?;
        match std::fs::symlink_metadata(&p) {
            Ok(md) => {
                let link = std::fs::read_link(&p)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned());
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(Some(info(name, &md, link)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PluginError::internal(format!("stat {path}: {e}"))),
        }
    }

    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<FileInfo>, PluginError> {
        let p = self.path(context, path, true)?;
        let rd = std::fs::read_dir(&p)
            .map_err(|e| PluginError::not_found(format!("read dir {path}: {e}")))?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            if let Ok(md) = std::fs::symlink_metadata(e.path()) {
                let link = std::fs::read_link(e.path())
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned());
                out.push(info(
                    e.file_name().to_string_lossy().into_owned(),
                    &md,
                    link,
                ));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &kiln_types::Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        let image: kiln_registry::ImageRef = reference
            .parse()
            .map_err(|e: kiln_registry::Error| registry_error(&e))?;
        self.log(LogLevel::Info, &format!("resolve image config for {image}"));
        // Plugin calls run on a blocking thread of the runtime, where blocking on it is allowed.
        let resolved = crate::block_unless_cancelled(
            &self.handle,
            &self.cancel,
            self.registry.resolve(&image, platform, &self.store),
        )
        .ok_or_else(|| PluginError::new(ErrorKind::Cancelled, "the build was cancelled"))?
        .map_err(|e| registry_error(&e))?;
        Ok(ResolveImageConfigResponse {
            digest: resolved.manifest_digest,
            config: resolved.config,
        })
    }

    fn lower_instruction(
        &self,
        req: InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        let plugin = match self.plugins.instruction(&req.keyword) {
            Ok(p) => p,
            Err(kiln_plugin_host::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(PluginError::internal(e.to_string())),
        };
        plugin
            .instruction_lower(&req, self)
            .map(Some)
            .map_err(|e| match e.plugin_error() {
                Some(pe) => pe.clone(),
                None => PluginError::internal(e.to_string()),
            })
    }

    fn log(&self, level: LogLevel, message: &str) {
        let _ = level;
        self.progress.send(Event::Log {
            id: self.id,
            name: self.name.clone(),
            line: message.to_owned(),
        });
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_dir_serves_only_the_build_file_and_its_ignore_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("docker");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("app.Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(dir.join("app.Dockerfile.dockerignore"), "secret\n").expect("write");
        std::fs::write(dir.join("other"), "x").expect("write");
        std::fs::write(tmp.path().join("outside"), "x").expect("write");
        // A symlinked ignore file pointing out of the directory stays inside it.
        let linked = tmp.path().join("linked");
        std::fs::create_dir(&linked).expect("mkdir");
        std::os::unix::fs::symlink("../outside", linked.join("Dockerfile.dockerignore"))
            .expect("symlink");

        for path in [
            "app.Dockerfile.dockerignore",
            "/app.Dockerfile.dockerignore",
        ] {
            let p = dockerfile_dir_path(&dir, "app.Dockerfile", path, true).expect(path);
            assert_eq!(std::fs::read(p).expect("read"), b"secret\n");
        }
        let p = dockerfile_dir_path(&dir, "app.Dockerfile", "app.Dockerfile", true).expect("df");
        assert_eq!(p, dir.join("app.Dockerfile"));
        for path in [
            "other",
            ".",
            "",
            "../outside",
            "docker/../other",
            ".dockerignore",
        ] {
            let e = dockerfile_dir_path(&dir, "app.Dockerfile", path, true).expect_err(path);
            assert_eq!(e.kind, ErrorKind::NotFound, "{path}: {e}");
        }
        let p = dockerfile_dir_path(&linked, "Dockerfile", "Dockerfile.dockerignore", true)
            .expect("resolved");
        assert!(p.starts_with(&linked), "{}", p.display());
        assert!(!p.exists(), "{}", p.display());
    }

    fn registry() -> kiln_registry::Registry {
        let docker = tempfile::tempdir().expect("tempdir");
        kiln_registry::Registry::new(kiln_registry::RegistryOptions {
            insecure: Vec::new(),
            docker_config: Some(docker.path().to_owned()),
            hosts: Default::default(),
        })
        .expect("registry client")
    }

    /// The error a real resolve of `reference` gives, as the plugin would see it.
    fn resolve_error(reference: &str) -> PluginError {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = kiln_snapshot::Store::open(tmp.path().join("store")).expect("store");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let image: kiln_registry::ImageRef = match reference.parse() {
            Ok(i) => i,
            Err(e) => return registry_error(&e),
        };
        let err = rt
            .block_on(registry().resolve(&image, &kiln_types::Platform::host(), &store))
            .expect_err(reference);
        registry_error(&err)
    }

    #[test]
    fn registry_failures_keep_their_kind() {
        // Nothing listens on port 1 of loopback: the registry is unreachable, not the image
        // missing.
        let e = resolve_error("127.0.0.1:1/app:1");
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("cannot connect to 127.0.0.1:1"), "{e}");

        let e = resolve_error("Bad//Reference");
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
        assert!(e.message.contains("invalid image reference"), "{e}");

        let e = resolve_error("oci-layout:///nonexistent/kiln-layout:v1");
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

        let e = registry_error(&kiln_registry::Error::Unauthorized {
            op: kiln_registry::Op::Resolve,
            image: "registry.example/private/app:1".to_owned(),
            why: "authentication required".to_owned(),
            config: PathBuf::from("/root/.docker/config.json"),
        });
        assert_eq!(e.kind, ErrorKind::Unauthorized, "{e}");
        assert!(
            e.message.contains("unauthorized: authentication required"),
            "{e}"
        );

        let e = registry_error(&kiln_registry::Error::NotFound {
            op: kiln_registry::Op::Resolve,
            image: "127.0.0.1:5000/nope:1".to_owned(),
            why: "manifest unknown".to_owned(),
        });
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

        let e = registry_error(&kiln_registry::Error::DigestMismatch {
            op: kiln_registry::Op::Resolve,
            image: "127.0.0.1:5000/x:1".to_owned(),
            what: "manifest",
            expected: Digest::of(b"a").to_string(),
            actual: Digest::of(b"b").to_string(),
        });
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{e}");
    }
}
