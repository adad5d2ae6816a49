//! Test fixture: a plugin as the first kiln release's SDK built it — protocol version 1, the
//! frozen abi root module — so that tests prove today's kiln still loads and runs it. It is
//! written against `tests/data/plugin-sdk-v1` (a byte-for-byte copy of the SDK at commit
//! 0472188) and uses only what that SDK offered: struct literals of the v1 messages, the v1
//! `export_plugin!`, the v1 host callbacks.
//!
//! - Frontend `v1-greet` (also `# syntax=v1-greet`): a tiny syntax of one instruction per line,
//!   `greet NAME` (writes `/greeting.txt` = `hello NAME\n` on scratch, label `greeted=NAME`) and
//!   `copy PATH` (reads PATH from the main context with the `context.read_file` callback and
//!   writes it to `/copied.txt`); `#` lines and blank lines are skipped; anything else is an
//!   error at `file:line`. With option `call=targets` it answers as protocol 1 frontends did:
//!   an empty graph and the JSON answer in the image label `kiln.call.result`.
//! - Instruction `SALUTE NAME` for Dockerfiles: writes `/salute.txt` = `salute NAME\n` and sets
//!   the label `saluted=NAME`.

use std::collections::BTreeMap;

use kiln_plugin_sdk::graph::{FileAction, FileBuilder, State};
use kiln_plugin_sdk::proto::{
    FrontendRequest, FrontendResponse, InstructionRequest, InstructionResponse, Location,
    PluginError,
};
use kiln_plugin_sdk::types::image::ImageConfig;
use kiln_plugin_sdk::{Frontend, Host, Instruction};

struct Greet;

fn mkfile(base: &State, path: &str, data: String) -> State {
    FileBuilder::new(base)
        .action(FileAction::Mkfile {
            path: path.to_owned(),
            mode: 0o644,
            data,
            owner: None,
        })
        .build(format!("write {path}"))
}

fn label(config: &mut ImageConfig, key: &str, value: &str) {
    config
        .config
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

impl Frontend for Greet {
    fn build(
        &self,
        req: FrontendRequest,
        host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        let mut config = ImageConfig::scratch(&req.platform);
        if let Some(call) = req.options.get("call") {
            if call != "targets" {
                return Err(PluginError::unsupported(format!(
                    "v1-greet answers --call=targets only, not {call}"
                )));
            }
            let answer = serde_json::json!({"targets": [
                {"name": "greeting", "description": "a protocol 1 hello", "default": true}
            ]});
            label(&mut config, "kiln.call.result", &answer.to_string());
            return Ok(FrontendResponse {
                definition: State::definition(&[State::scratch()]),
                config,
                warnings: Vec::new(),
            });
        }
        let mut state = State::scratch();
        for (i, line) in req.source.lines().enumerate() {
            let at = Location {
                file: req.filename.clone(),
                line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(' ') {
                Some(("greet", name)) => {
                    state = mkfile(&state, "/greeting.txt", format!("hello {}\n", name.trim()));
                    label(&mut config, "greeted", name.trim());
                }
                Some(("copy", path)) => {
                    let bytes = host.read_context_file("context", path.trim())?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        PluginError::invalid_input(format!("{} is not text", path.trim()), at)
                    })?;
                    state = mkfile(&state, "/copied.txt", text);
                }
                _ => {
                    return Err(PluginError::invalid_input(
                        format!("unknown v1-greet instruction {line:?} (greet NAME, copy PATH)"),
                        at,
                    ))
                }
            }
        }
        Ok(FrontendResponse {
            definition: State::definition(&[state]),
            config,
            warnings: Vec::new(),
        })
    }
}

struct Salute;

impl Instruction for Salute {
    fn lower(
        &self,
        req: InstructionRequest,
        _host: &Host<'_>,
    ) -> Result<InstructionResponse, PluginError> {
        let name = req.args.trim();
        if name.is_empty() {
            return Err(PluginError::invalid_input(
                "SALUTE needs a name",
                req.location,
            ));
        }
        let base = req
            .state
            .state(req.state.outputs.first().copied().flatten())
            .map_err(|e| PluginError::internal(format!("bad stage graph: {e}")))?;
        let next = mkfile(&base, "/salute.txt", format!("salute {name}\n"));
        let mut config = req.config;
        label(&mut config, "saluted", name);
        Ok(InstructionResponse {
            state: State::definition(&[next]),
            config,
            history: Some(format!("SALUTE {name} # kiln-test-v1-greet")),
        })
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "v1-greet",
    version: env!("CARGO_PKG_VERSION"),
    frontend: Greet => ["v1-greet"],
    instruction: Salute => ["SALUTE"],
}
