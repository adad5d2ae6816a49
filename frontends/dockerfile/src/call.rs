//! `--call targets|outline|check` (BuildKit's frontend subrequests): instead of a graph, the
//! frontend answers with a JSON document. The SDK's response has no field for it, so it travels
//! in the label [`RESULT_LABEL`] of an otherwise empty image config, with an empty graph; the
//! contract is written down in `docs/dockerfile-support.md`.

use std::collections::{BTreeMap, BTreeSet};

use dockerfile_parser::instructions::{self as ins, Instruction};
use kiln_graph::State;
use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse};
use kiln_types::image::ImageConfig;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The label carrying a call's JSON result.
pub(crate) const RESULT_LABEL: &str = "kiln.call.result";

/// The calls this frontend answers, besides `build`.
pub(crate) const CALLS: [&str; 4] = ["build", "check", "outline", "targets"];

/// The response of a call: empty graph, result in [`RESULT_LABEL`].
pub(crate) fn response(req: &FrontendRequest, result: &Value) -> FrontendResponse {
    let mut config = ImageConfig::scratch(&req.platform);
    config.config.labels = Some(BTreeMap::from([(
        RESULT_LABEL.to_owned(),
        result.to_string(),
    )]));
    FrontendResponse {
        definition: State::definition(&[State::scratch()]),
        config,
        warnings: Vec::new(),
    }
}

/// The comment above an instruction that describes `name`: BuildKit takes the first comment
/// line of the form `# <name> <description>`.
pub(crate) fn description(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_owned()
}

/// `--call targets`: every stage, from the text alone (nothing resolved, nothing expanded).
pub(crate) fn targets(req: &FrontendRequest) -> Result<Value> {
    if req.source.is_empty() {
        return Err(Error::invalid("the Dockerfile cannot be empty"));
    }
    let parsed = dockerfile_parser::parse(&req.source)?;
    let mut stages = Vec::new();
    for node in parsed.nodes.iter().filter(|n| n.command == "from") {
        let Instruction::From(from) = ins::parse_instruction(node)? else {
            continue;
        };
        let name = from.stage_name.clone().unwrap_or_default();
        stages.push(json!({
            "name": from.stage_name,
            "description": description(&node.comments, &name),
            "base": from.image,
            "platform": from.platform,
            "default": false,
            "location": { "file": req.filename, "line": node.start_line },
        }));
    }
    if let Some(last) = stages.last_mut() {
        last["default"] = json!(true);
    }
    Ok(json!({ "targets": stages }))
}

/// One build ARG known to the outline.
#[derive(Debug, Clone)]
pub(crate) struct ArgInfo {
    pub(crate) value: Option<String>,
    pub(crate) description: String,
    pub(crate) line: usize,
    /// Other global ARGs its default used: used too when it is.
    pub(crate) deps: BTreeSet<String>,
    /// Declared before the first FROM.
    pub(crate) global: bool,
}

/// What `--call outline` reports, captured while the target's stages are dispatched.
#[derive(Debug, Default)]
pub(crate) struct Outline {
    pub(crate) args: BTreeMap<String, ArgInfo>,
    pub(crate) used: BTreeSet<String>,
    /// Secret id → (required, first line).
    pub(crate) secrets: BTreeMap<String, (bool, usize)>,
    /// SSH id → (required, first line).
    pub(crate) ssh: BTreeMap<String, (bool, usize)>,
}

impl Outline {
    /// Records an ARG of a stage (BuildKit keeps the first stage-level definition; a bare
    /// re-declaration of a global ARG only marks the global one used).
    pub(crate) fn stage_arg(&mut self, name: &str, info: Option<ArgInfo>) {
        self.used.insert(name.to_owned());
        if let Some(info) = info {
            match self.args.get(name) {
                Some(existing) if !existing.global => {}
                _ => {
                    self.args.insert(name.to_owned(), info);
                }
            }
        }
    }

    /// Records the secrets and SSH sockets a RUN mounts.
    pub(crate) fn run_mounts(&mut self, run: &ins::Run, line: usize) {
        for m in &run.mounts {
            let required = m.required.unwrap_or(false);
            let (map, id) = match m.kind {
                ins::MountType::Secret => {
                    let id = m.id.clone().or_else(|| {
                        m.target
                            .as_deref()
                            .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
                    });
                    (&mut self.secrets, id)
                }
                ins::MountType::Ssh => (
                    &mut self.ssh,
                    Some(m.id.clone().unwrap_or_else(|| "default".to_owned())),
                ),
                _ => continue,
            };
            if let Some(id) = id {
                let slot = map.entry(id).or_insert((required, line));
                slot.0 |= required;
            }
        }
    }

    pub(crate) fn to_json(&self, file: &str) -> Value {
        // A used ARG makes the ARGs its default refers to used as well.
        let mut used = BTreeSet::new();
        let mut todo: Vec<&String> = self.used.iter().collect();
        while let Some(name) = todo.pop() {
            if used.insert(name.clone()) {
                if let Some(info) = self.args.get(name) {
                    todo.extend(info.deps.iter());
                }
            }
        }
        let mut args: Vec<(&String, &ArgInfo)> = self
            .args
            .iter()
            .filter(|(name, _)| used.contains(*name))
            .collect();
        args.sort_by_key(|(name, info)| (info.line, (*name).clone()));
        let loc = |line: usize| json!({ "file": file, "line": line });
        let ids = |map: &BTreeMap<String, (bool, usize)>| {
            let mut v: Vec<(&String, &(bool, usize))> = map.iter().collect();
            v.sort_by_key(|(name, (_, line))| (*line, (*name).clone()));
            v.into_iter()
                .map(|(name, (required, line))| {
                    json!({ "name": name, "required": required, "location": loc(*line) })
                })
                .collect::<Vec<_>>()
        };
        json!({
            "args": args
                .into_iter()
                .map(|(name, info)| json!({
                    "name": name,
                    "value": info.value,
                    "description": info.description,
                    "location": loc(info.line),
                }))
                .collect::<Vec<_>>(),
            "secrets": ids(&self.secrets),
            "ssh": ids(&self.ssh),
        })
    }
}
