//! Test fixture: an instruction plugin for the Dockerfile instruction `GREET <name>`, used to
//! prove that the Dockerfile frontend hands instructions it does not know to plugins. Depends on
//! kiln-plugin-sdk only.
//!
//! `GREET world` writes `/greeting.txt` (`hello world\n`, mode 0644) on the stage's filesystem
//! and sets the label `greeted=world`. `--loud` upper-cases the greeting. No argument is an
//! error located at the instruction.

use kiln_plugin_sdk::graph::{FileAction, FileBuilder};
use kiln_plugin_sdk::proto::{InstructionRequest, InstructionResponse, PluginError};
use kiln_plugin_sdk::{Host, Instruction};

struct Greet;

impl Instruction for Greet {
    fn lower(
        &self,
        req: InstructionRequest,
        _host: &Host<'_>,
    ) -> Result<InstructionResponse, PluginError> {
        let name = req.args.trim();
        if name.is_empty() {
            return Err(PluginError::invalid_input(
                "GREET needs a name",
                req.location,
            ));
        }
        let loud = req.flags.iter().any(|f| f == "--loud");
        let mut text = format!("hello {name}\n");
        if loud {
            text = text.to_uppercase();
        }
        let base = req
            .state
            .state(req.state.outputs.first().copied().flatten())
            .map_err(|e| PluginError::internal(format!("bad stage graph: {e}")))?;
        let next = FileBuilder::new(&base)
            .action(FileAction::Mkfile {
                path: "/greeting.txt".to_owned(),
                mode: 0o644,
                data: text,
                owner: None,
            })
            .build(format!("GREET {name}"));
        let mut config = req.config;
        config
            .config
            .labels
            .get_or_insert_with(Default::default)
            .insert("greeted".to_owned(), name.to_owned());
        Ok(InstructionResponse {
            state: kiln_plugin_sdk::graph::State::definition(&[next]),
            config,
            history: Some(format!("GREET {name} # kiln-test-greet")),
            expansion: None,
        })
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "greet",
    version: env!("CARGO_PKG_VERSION"),
    instruction: Greet => ["GREET"],
}
