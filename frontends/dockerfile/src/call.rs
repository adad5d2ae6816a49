//! `--call targets|outline|check` (BuildKit's frontend subrequests): instead of a graph, the
//! frontend answers with a JSON document, in [`FrontendResponse::call_result`] (protocol 3), with
//! an empty graph; the contract is written down in `docs/dockerfile-support.md`. (Protocol 2
//! frontends put it in the image label `kiln.call.result`, which kiln still reads from them;
//! this frontend no longer sets it.)

use std::collections::{BTreeMap, BTreeSet};

use dockerfile_parser::instructions::{self as ins, Instruction};
use kiln_graph::State;
use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse};
use kiln_types::image::ImageConfig;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The calls this frontend answers, besides `build`.
pub(crate) const CALLS: [&str; 4] = ["build", "check", "outline", "targets"];

/// The response of a call: empty graph, empty config, the result in its own field.
pub(crate) fn response(req: &FrontendRequest, result: &Value) -> FrontendResponse {
    FrontendResponse {
        call_result: Some(result.clone()),
        ..FrontendResponse::new(
            State::definition(&[State::scratch()]),
            ImageConfig::scratch(&req.platform),
        )
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
}

/// A secret or SSH id a RUN mounts: required or not, and where (its first mount in a stage).
type MountInfo = (bool, usize);

/// What one stage contributes to the outline (BuildKit keeps one such capture per stage).
#[derive(Debug, Default, Clone)]
struct StageOutline {
    /// The stage's `AS` name and its description (the `# <name> <text>` comment above FROM).
    name: Option<String>,
    description: String,
    /// ARGs the stage declares; a later declaration replaces an earlier one, as in BuildKit.
    args: BTreeMap<String, ArgInfo>,
    /// Variables its FROM expands and ARGs it declares.
    used: BTreeSet<String>,
    secrets: BTreeMap<String, MountInfo>,
    ssh: BTreeMap<String, MountInfo>,
    /// The stage it is built on (`FROM <stage>`).
    base: Option<usize>,
    /// Stages it reads from (`COPY --from`, `RUN --mount from=`), in order of first use.
    deps: Vec<usize>,
}

/// What `--call outline` reports, captured while the target's stages are dispatched.
#[derive(Debug, Default)]
pub(crate) struct Outline {
    /// The ARGs before the first FROM.
    pub(crate) globals: BTreeMap<String, ArgInfo>,
    /// By stage position.
    stages: Vec<StageOutline>,
}

impl Outline {
    fn stage_mut(&mut self, stage: usize) -> &mut StageOutline {
        if self.stages.len() <= stage {
            self.stages.resize_with(stage + 1, StageOutline::default);
        }
        &mut self.stages[stage]
    }

    /// Records stage `stage`: its name, the comments above its FROM, the stage it is built on
    /// and the global ARGs its FROM line uses.
    pub(crate) fn stage(
        &mut self,
        stage: usize,
        name: Option<&str>,
        comments: &[String],
        base: Option<usize>,
        from_vars: &BTreeSet<String>,
    ) {
        let s = self.stage_mut(stage);
        s.name = name.map(str::to_owned);
        s.description = description(comments, name.unwrap_or_default());
        s.base = base;
        s.used.extend(from_vars.iter().cloned());
    }

    /// Records that stage `stage` reads from stage `dep`.
    pub(crate) fn stage_dep(&mut self, stage: usize, dep: usize) {
        let s = self.stage_mut(stage);
        if !s.deps.contains(&dep) {
            s.deps.push(dep);
        }
    }

    /// Records an ARG of a stage. `info` is `None` for a bare re-declaration of a global ARG
    /// that no build arg sets: that only marks the global one used (BuildKit's `skipArgInfo`).
    pub(crate) fn stage_arg(&mut self, stage: usize, name: &str, info: Option<ArgInfo>) {
        let s = self.stage_mut(stage);
        s.used.insert(name.to_owned());
        if let Some(info) = info {
            s.args.insert(name.to_owned(), info);
        }
    }

    /// Records the secrets and SSH sockets a RUN of stage `stage` mounts. The first mount of
    /// an id in a stage is the one reported, `required` included, as in BuildKit. `expand`
    /// expands a mount's value in the stage: BuildKit names them expanded, as the build does.
    pub(crate) fn run_mounts(
        &mut self,
        stage: usize,
        run: &ins::Run,
        line: usize,
        expand: impl Fn(&str) -> String,
    ) {
        let s = self.stage_mut(stage);
        for m in &run.mounts {
            let required = m.required.unwrap_or(false);
            let ex = |v: &Option<String>| v.as_deref().map(&expand);
            let (map, id) = match m.kind {
                ins::MountType::Secret => (
                    &mut s.secrets,
                    crate::dispatch::secret_id(
                        ex(&m.source).as_deref(),
                        ex(&m.id).as_deref(),
                        ex(&m.target).as_deref(),
                    ),
                ),
                ins::MountType::Ssh => (
                    &mut s.ssh,
                    Some(
                        ex(&m.id)
                            .filter(|i| !i.is_empty())
                            .unwrap_or_else(|| "default".to_owned()),
                    ),
                ),
                _ => continue,
            };
            if let Some(id) = id {
                map.entry(id).or_insert((required, line));
            }
        }
    }

    /// The stages whose captures make the outline of `target`, in BuildKit's precedence: the
    /// target, then (depth first) its base, then the stages it reads from. Where two stages
    /// know the same ARG, secret or SSH id, the earlier one in this order is reported. (BuildKit
    /// walks the stages read from in map order, which varies from run to run; kiln takes them
    /// in order of first use.)
    fn walk(&self, target: usize) -> Vec<usize> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        // An explicit stack instead of recursion: chains of stages can be long.
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            let Some(s) = self.stages.get(i) else {
                continue;
            };
            if !seen.insert(i) {
                continue;
            }
            order.push(i);
            todo.extend(s.deps.iter().rev());
            todo.extend(s.base);
        }
        order
    }

    /// The ARGs stage `s` reports: what it declares or uses, global ARGs included, and the
    /// global ARGs their defaults refer to.
    fn stage_args<'a>(&'a self, s: &'a StageOutline) -> Vec<(&'a String, &'a ArgInfo)> {
        let known = |name: &str| s.args.get(name).or_else(|| self.globals.get(name));
        let mut used = BTreeSet::new();
        let mut todo: Vec<&String> = s.used.iter().collect();
        while let Some(name) = todo.pop() {
            if used.insert(name) {
                if let Some(info) = known(name) {
                    todo.extend(info.deps.iter());
                }
            }
        }
        used.into_iter()
            .filter_map(|name| known(name).map(|info| (name, info)))
            .collect()
    }

    /// The outline of stage `target` as JSON (see docs/dockerfile-support.md).
    pub(crate) fn to_json(&self, file: &str, target: usize) -> Value {
        let order = self.walk(target);
        let stages: Vec<&StageOutline> = order.iter().filter_map(|i| self.stages.get(*i)).collect();
        let mut args: BTreeMap<&String, &ArgInfo> = BTreeMap::new();
        let mut secrets: BTreeMap<&String, &MountInfo> = BTreeMap::new();
        let mut ssh: BTreeMap<&String, &MountInfo> = BTreeMap::new();
        for s in &stages {
            for (name, info) in self.stage_args(s) {
                args.entry(name).or_insert(info);
            }
            for (name, info) in &s.secrets {
                secrets.entry(name).or_insert(info);
            }
            for (name, info) in &s.ssh {
                ssh.entry(name).or_insert(info);
            }
        }
        let mut args: Vec<(&String, &ArgInfo)> = args.into_iter().collect();
        args.sort_by_key(|(name, info)| (info.line, *name));
        let loc = |line: usize| json!({ "file": file, "line": line });
        let ids = |map: BTreeMap<&String, &MountInfo>| {
            let mut v: Vec<(&String, &MountInfo)> = map.into_iter().collect();
            v.sort_by_key(|(name, (_, line))| (*line, *name));
            v.into_iter()
                .map(|(name, (required, line))| {
                    json!({ "name": name, "required": required, "location": loc(*line) })
                })
                .collect::<Vec<_>>()
        };
        let (name, description) = stages
            .first()
            .map_or((None, ""), |s| (s.name.as_deref(), s.description.as_str()));
        json!({
            "name": name,
            "description": description,
            "args": args
                .into_iter()
                .map(|(name, info)| json!({
                    "name": name,
                    "value": info.value,
                    "description": info.description,
                    "location": loc(info.line),
                }))
                .collect::<Vec<_>>(),
            "secrets": ids(secrets),
            "ssh": ids(ssh),
        })
    }
}
