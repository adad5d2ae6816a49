//! Test fixture: a tiny, deterministic frontend for the build syntax `echo`, used to test plugin
//! loading, host callbacks and `# syntax=` switching. Depends on kiln-plugin-sdk only.
//!
//! The result filesystem is built on scratch:
//! - `/echo` holds the whole build file text;
//! - `/echo.txt` holds the context's `echo.txt` when the context has one (`context.stat` and
//!   `context.read_file` callbacks);
//! - a line `!KEYWORD args` is handed to kiln's instruction plugins (`instruction.lower`
//!   callback); an unhandled keyword is an error located at that line.
//!
//! The image config is `scratch` for the requested platform with the labels
//! `kiln.echo.filename` and `kiln.echo.lines`, and `kiln.echo.arg.<name>` per build arg.
//! The frontend option `echo.tamper=1` corrupts a vertex digest of the returned graph, so that
//! tests can check that kiln refuses tampered graphs.

use std::collections::BTreeMap;

use kiln_plugin_sdk::graph::{FileAction, FileBuilder, State};
use kiln_plugin_sdk::proto::{
    FileKind, FrontendRequest, FrontendResponse, InstructionRequest, Location, LogLevel,
    PluginError,
};
use kiln_plugin_sdk::types::image::ImageConfig;
use kiln_plugin_sdk::types::Digest;
use kiln_plugin_sdk::{Frontend, Host};

struct Echo;

fn mkfile(state: &State, path: &str, data: String, description: &str) -> State {
    FileBuilder::new(state)
        .action(FileAction::Mkfile {
            path: path.to_owned(),
            mode: 0o644,
            data,
            owner: None,
        })
        .build(description)
}

impl Frontend for Echo {
    fn build(
        &self,
        req: FrontendRequest,
        host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        host.log(LogLevel::Info, &format!("echo: {} bytes", req.source.len()));

        let mut state = mkfile(&State::scratch(), "/echo", req.source.clone(), "echo /echo");
        if let Some(info) = host.stat("context", "echo.txt")? {
            if info.kind == FileKind::File {
                let bytes = host.read_context_file("context", "echo.txt")?;
                let text = String::from_utf8_lossy(&bytes).into_owned();
                state = mkfile(&state, "/echo.txt", text, "echo /echo.txt");
            }
        }

        let mut config = ImageConfig::scratch(&req.platform);
        let mut labels = BTreeMap::new();
        labels.insert("kiln.echo.filename".to_owned(), req.filename.clone());
        labels.insert(
            "kiln.echo.lines".to_owned(),
            req.source.lines().count().to_string(),
        );
        for (k, v) in &req.build_args {
            labels.insert(format!("kiln.echo.arg.{k}"), v.clone());
        }
        config.config.labels = Some(labels);

        for (index, line) in req.source.lines().enumerate() {
            let Some(rest) = line.strip_prefix('!') else {
                continue;
            };
            let (keyword, args) = rest.split_once(' ').unwrap_or((rest, ""));
            let location = Location {
                file: req.filename.clone(),
                line: index as u32 + 1,
            };
            let lowered = host.lower_instruction(&InstructionRequest {
                keyword: keyword.to_owned(),
                args: args.to_owned(),
                flags: Vec::new(),
                location: location.clone(),
                state: State::definition(std::slice::from_ref(&state)),
                config: config.clone(),
                build_args: req.build_args.clone(),
                accepts_expansion: false,
            })?;
            let Some(resp) = lowered else {
                return Err(PluginError::invalid_input(
                    format!("unknown instruction {keyword}: no instruction plugin handles it"),
                    location,
                ));
            };
            let out = resp.state.outputs.first().copied().flatten();
            state = resp.state.state(out).map_err(|e| {
                PluginError::internal(format!("instruction {keyword} returned a bad graph: {e}"))
                    .at(location.clone())
            })?;
            config = resp.config;
        }

        let mut definition = State::definition(&[state]);
        if req.options.get("echo.tamper").map(String::as_str) == Some("1") {
            if let Some(v) = definition.vertices.first_mut() {
                v.digest = Digest::of(b"tampered");
            }
        }
        Ok(FrontendResponse::new(definition, config))
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "echo",
    version: env!("CARGO_PKG_VERSION"),
    frontend: Echo => ["echo", "kiln/echo"],
}
