//! The Dockerfile-specific ignore file is read beside the Dockerfile (BuildKit's `dockerfile`
//! local), the context's `.dockerignore` otherwise.

use super::*;

use kiln_plugin_sdk::context::BUILD_FILE as DOCKERFILE_CONTEXT;

const SOURCE: &str = "FROM scratch\nCOPY . /src/\n";

fn app_request() -> FrontendRequest {
    let mut req = request(SOURCE);
    req.filename = "app.Dockerfile".into();
    req
}

#[test]
fn beside_ignore_file_errors_name_it() {
    let mut host = FakeHost::default();
    host.files.insert(".dockerignore".into(), "ok\n".into());
    let long = format!("keep\n{}\n", "x".repeat(kiln_ignore::MAX_PATTERN_BYTES + 1));
    host.beside
        .insert("app.Dockerfile.dockerignore".into(), long);
    let e = build(&app_request(), &host).unwrap_err();
    let loc = e.location.clone().expect("located");
    assert_eq!(
        (loc.file.as_str(), loc.line),
        ("app.Dockerfile.dockerignore", 2),
        "{e}"
    );
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(
        e.message
            .starts_with("failed to read app.Dockerfile.dockerignore: line 2:"),
        "{}",
        e.message
    );
}

/// A host that serves no Dockerfile directory (an older engine): "not found" for it.
struct NoBeside(FakeHost);

impl FrontendHost for NoBeside {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        if context == DOCKERFILE_CONTEXT {
            return Err(PluginError::not_found(format!(
                "no build context named {context:?}"
            )));
        }
        self.0.read_context_file(context, path)
    }

    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<String>, PluginError> {
        self.0.read_dir(context, path)
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        self.0.resolve_image_config(reference, platform)
    }

    fn lower_instruction(
        &self,
        req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        self.0.lower_instruction(req)
    }

    fn warn(&self, message: &str) {
        self.0.warn(message)
    }
}

#[test]
fn a_host_without_the_dockerfile_directory_falls_back_to_dockerignore() {
    let mut host = FakeHost::default();
    host.files.insert(".dockerignore".into(), "*.log\n".into());
    host.files
        .insert("app.Dockerfile.dockerignore".into(), "stray\n".into());
    let resp = build(&app_request(), &NoBeside(host)).unwrap();
    assert_eq!(local_source(&resp.definition).exclude_patterns, ["*.log"]);
}
