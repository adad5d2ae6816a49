//! The driver: Dockerfile text → stages, global ARGs, target selection, reachable stages, FROM,
//! and the build context; each instruction is then lowered by [`crate::dispatch`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use dockerfile_parser::instructions::{self as ins, Instruction};
use dockerfile_parser::shell::{Env, Lexer, NoEnv};
use dockerfile_parser::Node;
use kiln_graph::{LocalSource, State};
use kiln_plugin_sdk::base::{ResolvedImage, ResolvedImages};
use kiln_plugin_sdk::proto::{
    Diagnostic, ErrorKind, FrontendRequest, FrontendResponse, Location, PluginError,
};
use kiln_plugin_sdk::{context, request};
use kiln_types::image::{History, ImageConfig};
use kiln_types::Platform;

use crate::call::{self, ArgInfo, Outline};
use crate::error::{Error, Result};
use crate::host::FrontendHost;
use crate::lint::{self, Linter, StageChecks};
use crate::named::NamedContexts;
use crate::suggest;

/// `comment` of every history entry, as BuildKit writes it.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// The PATH BuildKit gives a stage whose image sets none (`system.DefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every instruction this frontend knows, for "did you mean" hints.
pub(crate) const KNOWN_INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// One `FROM` and the instructions under it, as parsed.
struct StageDef<'p> {
    from: ins::From,
    node: &'p Node,
    commands: Vec<(Instruction, &'p Node)>,
}

/// What a stage starts from.
enum Base {
    Scratch,
    Stage(usize),
    Image(String),
    /// A named context (`--build-context NAME=...`), which overrides stages and images of the
    /// same name, as in buildx.
    Named(String),
}

/// The state of one stage while its instructions are dispatched.
pub(crate) struct Stage {
    /// Position in the file.
    pub(crate) index: usize,
    /// Progress label: the `AS` name, `stage-N`, or empty for a single-stage file.
    pub(crate) label: String,
    /// The filesystem so far.
    pub(crate) state: State,
    /// The image config so far.
    pub(crate) config: ImageConfig,
    /// The stage's platform.
    pub(crate) platform: Platform,
    /// ARGs declared in the stage, in order; `None`: declared without any value.
    pub(crate) args: Vec<(String, Option<String>)>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    pub(crate) cmd_set: bool,
    /// Step counter of the progress descriptions (`[label 2/5]`).
    pub(crate) cmd_index: usize,
    /// Steps that make a vertex, counted as BuildKit does.
    pub(crate) cmd_total: usize,
    /// `--no-cache` / `--no-cache-filter` applies.
    pub(crate) ignore_cache: bool,
    /// The build file and line of the instruction being dispatched, recorded on its vertices
    /// so that a failing step can be shown in the file.
    pub(crate) source: Option<(String, u32)>,
    /// An ONBUILD trigger of the base is being dispatched (progress says so, as BuildKit).
    pub(crate) on_build: bool,
    /// `created` of the history entries: `SOURCE_DATE_EPOCH` when given, else unset.
    pub(crate) created: Option<String>,
}

impl Stage {
    /// The variables instructions are expanded with: the config's ENV first (ENV always
    /// overrides an ARG of the same name), then the stage's ARGs.
    /// ENV entries plus ARGs, see [`MAX_VARIABLES`].
    pub(crate) fn variable_count(&self) -> usize {
        self.config.config.env.as_ref().map_or(0, Vec::len) + self.args.len()
    }

    pub(crate) fn scope(&self) -> Scope<'_> {
        Scope {
            env: self.config.config.env.as_deref().unwrap_or_default(),
            args: &self.args,
        }
    }

    /// `str` with the step prefix (`[build 2/5] `), advancing the step counter.
    pub(crate) fn prefix(&mut self, text: &str) -> String {
        if self.cmd_total == 0 {
            return text.to_owned();
        }
        self.cmd_index += 1;
        let width = self.cmd_total.to_string().len();
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!("{} ", self.label)
        };
        let onbuild = if self.on_build { "ONBUILD " } else { "" };
        format!(
            "[{label}{:>width$}/{}] {onbuild}{text}",
            self.cmd_index, self.cmd_total
        )
    }

    /// The working directory RUN and relative paths use.
    pub(crate) fn workdir(&self) -> &str {
        self.config
            .config
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
    }

    /// Records a history entry, BuildKit style.
    pub(crate) fn commit(&mut self, created_by: String, layer: bool) {
        self.config.history.push(History {
            created: self.created.clone(),
            created_by: Some(created_by),
            comment: Some(HISTORY_COMMENT.to_owned()),
            empty_layer: !layer,
        });
    }

    /// A new vertex of this stage, marked to ignore the cache when asked.
    pub(crate) fn finish(&self, state: State) -> State {
        let state = match &self.source {
            Some((file, line)) => state.with_source(file, *line),
            None => state,
        };
        if self.ignore_cache {
            state.ignore_cache(true)
        } else {
            state
        }
    }
}

/// Variable lookup for a stage (see [`Stage::scope`]).
pub(crate) struct Scope<'a> {
    env: &'a [String],
    args: &'a [(String, Option<String>)],
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        let from_env = self.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == name).then_some(v)
        });
        from_env.or_else(|| {
            self.args
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref())
        })
    }
}

/// The conversion of one request.
pub(crate) struct Converter<'a> {
    pub(crate) req: &'a FrontendRequest,
    pub(crate) host: &'a dyn FrontendHost,
    pub(crate) lexer: Lexer,
    /// ARGs of the global scope (before the first FROM, plus the predefined ones).
    pub(crate) global_args: Vec<(String, String)>,
    /// Stage names (`AS`), by position.
    names: Vec<Option<String>>,
    /// The first stage of each name: looking names up by scanning `names` was quadratic in
    /// the number of stages.
    first_named: HashMap<String, usize>,
    /// Bytes of image config copied into stages from their bases so far (see
    /// [`MAX_COPIED_CONFIG_BYTES`]).
    copied_config_bytes: usize,
    /// Dispatched stages, by position.
    done: Vec<Option<Stage>>,
    /// The build context source, made on first use.
    context: Option<State>,
    /// Its `.dockerignore` patterns, compiled when the context is made; `None` without
    /// patterns, or when they do not compile (the engine reports that when it reads the
    /// context). The CopyIgnoredFile check reads it.
    pub(crate) ignore_matcher: Option<kiln_ignore::PatternMatcher>,
    /// Build-check findings made while dispatching or starting a stage, which the caller
    /// hands to its [`Linter`] (rule, line, detail).
    pub(crate) lints: Vec<(lint::Rule, usize, String)>,
    images: ResolvedImages,
    /// `--build-context`s, by normalized name.
    named: NamedContexts,
    /// What `--call outline` reports.
    outline: Outline,
    /// What instruction expansions (INCLUDE...) have used of their budget.
    pub(crate) expanded: crate::expansion::Budget,
}

/// Most image-config bytes all stages together may copy from their bases. A stage starts with a
/// copy of its base's config, history included, so a chain of stages (or many stages on one
/// big base) costs memory in the product of stages and history: 2 000 chained one-line stages
/// took 300 MB. Real builds copy a few megabytes at most.
pub(crate) const MAX_COPIED_CONFIG_BYTES: usize = 64 << 20;

/// Most variables (ENV entries plus ARGs) one stage, or the global scope, may hold. Variables
/// live in ordered lists searched on every set and every lookup, so their number multiplies the
/// cost of each `ENV` and each expansion: one `ENV` line of 8 000 pairs took over a second.
/// Real stages hold tens.
pub(crate) const MAX_VARIABLES: usize = 1024;

/// Fails when a scope holds more than [`MAX_VARIABLES`] variables.
pub(crate) fn check_variables(count: usize) -> Result<()> {
    if count > MAX_VARIABLES {
        return Err(Error::invalid(format!(
            "more than {MAX_VARIABLES} variables (ENV and ARG) in one stage"
        )));
    }
    Ok(())
}

/// Most ONBUILD triggers a base may hand to a stage. They run as instructions of the stage, on
/// top of the Dockerfile's own ([`dockerfile_parser::MAX_INSTRUCTIONS`]), lengthening the same
/// chain of states; images carry a handful.
pub(crate) const MAX_ONBUILD_TRIGGERS: usize = 256;

/// An ONBUILD trigger to run at the start of a stage: its text, instruction and node.
type Trigger = (String, Instruction, Node);

/// Per stage: needed or not, and its ONBUILD triggers once known.
type Reach = (Vec<bool>, Vec<Option<Vec<Trigger>>>);

/// What lowering a Dockerfile gave.
pub(crate) struct Lowered {
    /// The target stage, dispatched.
    pub(crate) stage: Stage,
    pub(crate) warnings: Vec<Diagnostic>,
    pub(crate) outline: Outline,
    /// `SOURCE_DATE_EPOCH` as RFC 3339, when given.
    pub(crate) epoch: Option<String>,
}

/// Runs the whole conversion: a build, or the `--call` the request asks for.
pub(crate) fn convert(req: &FrontendRequest, host: &dyn FrontendHost) -> Result<FrontendResponse> {
    let call = req
        .options
        .get("call")
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "build");
    match call.as_deref() {
        None => build_image(req, host),
        Some("targets") => Ok(call::response(req, &call::targets(req)?)),
        Some("outline") => {
            let lowered = lower(req, host, &mut Linter::default(), false)?;
            let outline = lowered.outline.to_json(&req.filename, lowered.stage.index);
            Ok(call::response(req, &outline))
        }
        Some("check") => {
            let mut linter = Linter::default();
            // Without --target, BuildKit checks every stage, not only the last one's.
            let result = lower(req, host, &mut linter, req.target.is_none());
            let error = match result {
                Err(e) => Some(e),
                Ok(_) => linter.error(),
            }
            .map(|e| {
                let e = e.into_plugin_error(&req.filename, &req.source);
                serde_json::json!({
                    "message": e.message,
                    "location": e.location.map(|l| serde_json::json!({"file": l.file, "line": l.line})),
                })
            });
            let result = serde_json::json!({
                "warnings": linter.to_json(&req.filename),
                "error": error,
            });
            Ok(call::response(req, &result))
        }
        Some(other) => {
            let mut message = format!(
                "unknown --call value {other:?}: expected one of build, check, outline, targets"
            );
            if let Some(s) = suggest::closest(other, call::CALLS) {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            Err(Error::invalid(message))
        }
    }
}

/// A build: the graph, the image config and the warnings (lint findings included).
fn build_image(req: &FrontendRequest, host: &dyn FrontendHost) -> Result<FrontendResponse> {
    let mut linter = Linter::default();
    let lowered = lower(req, host, &mut linter, false)?;
    if let Some(e) = linter.error() {
        return Err(e);
    }
    let mut warnings = lowered.warnings;
    warnings.extend(linter.diagnostics(&req.filename));
    let mut config = lowered.stage.config;
    // `--label k=v` reaches the frontend as `label:k` (BuildKit's frontend option), and wins
    // over LABEL in the Dockerfile.
    request::apply_labels(&req.options, &mut config);
    // Without SOURCE_DATE_EPOCH `created` stays unset: kiln's images are reproducible by
    // default, where BuildKit would write the build time.
    config.created = lowered.epoch;
    Ok(FrontendResponse {
        warnings,
        ..FrontendResponse::new(State::definition(&[lowered.stage.state]), config)
    })
}

/// Dockerfile text → the dispatched target stage. `linter` gathers the build checks and keeps
/// them even when lowering fails (`--call check` reports both). `all_stages` dispatches every
/// stage, not only those the target needs.
pub(crate) fn lower(
    req: &FrontendRequest,
    host: &dyn FrontendHost,
    linter: &mut Linter,
    all_stages: bool,
) -> Result<Lowered> {
    if req.source.is_empty() {
        return Err(Error::invalid("the Dockerfile cannot be empty"));
    }
    let parsed = dockerfile_parser::parse(&req.source)?;
    linter.configure(&parsed, &req.build_args)?;
    // The parser's warnings (empty continuation lines) are a build check, NoEmptyContinuation,
    // reported by `check_file` with the other findings.
    lint::check_file(linter, &parsed);
    let mut warnings: Vec<Diagnostic> = Vec::new();

    // Every instruction is parsed before anything is dispatched, as BuildKit does: a typo in an
    // unused stage still fails the build.
    let mut meta_args: Vec<(Vec<ins::Arg>, &Node)> = Vec::new();
    let mut defs: Vec<StageDef<'_>> = Vec::new();
    for node in &parsed.nodes {
        let inst = ins::parse_instruction(node).map_err(Error::from)?;
        match inst {
            Instruction::From(from) => defs.push(StageDef {
                from,
                node,
                commands: Vec::new(),
            }),
            Instruction::Arg(args) if defs.is_empty() => meta_args.push((args, node)),
            other => match defs.last_mut() {
                Some(def) => def.commands.push((other, node)),
                None => {
                    return Err(
                        Error::invalid("no build stage in current context").at(node.start_line)
                    )
                }
            },
        }
    }
    if defs.is_empty() {
        return Err(Error::invalid("dockerfile contains no stages to build"));
    }

    let mut conv = Converter {
        req,
        host,
        lexer: Lexer::new(parsed.escape),
        global_args: Vec::new(),
        names: defs.iter().map(|d| d.from.stage_name.clone()).collect(),
        first_named: HashMap::new(),
        copied_config_bytes: 0,
        done: Vec::new(),
        context: None,
        ignore_matcher: None,
        lints: Vec::new(),
        images: ResolvedImages::default(),
        named: NamedContexts::from_options(&req.options),
        outline: Outline::default(),
        expanded: Default::default(),
    };
    for (i, name) in conv.names.iter().enumerate() {
        if let Some(name) = name {
            conv.first_named.entry(name.clone()).or_insert(i);
        }
    }
    let target = conv.target_index()?;
    conv.global_args = conv.global_args(&meta_args, defs[target].from.stage_name.as_deref())?;
    let epoch = conv.source_date_epoch()?;
    let from_vars = conv.check_from_args(linter, &defs, &meta_args);

    let bases = defs
        .iter()
        .enumerate()
        .map(|(i, d)| conv.base_of(i, d))
        .collect::<Result<Vec<_>>>()?;
    let (reachable, mut triggers) = conv.reachable(&defs, &bases, target, all_stages)?;
    for (i, (def, vars)) in defs.iter().zip(&from_vars).enumerate() {
        let base = match bases.get(i) {
            Some((Base::Stage(j), _)) => Some(*j),
            _ => None,
        };
        let name = def.from.stage_name.as_deref();
        conv.outline.stage(i, name, &def.node.comments, base, vars);
    }

    let mut checks: Vec<StageChecks> = Vec::with_capacity(defs.len());
    for (i, (def, (base, platform))) in defs.iter().zip(bases).enumerate() {
        let mut stage_checks = StageChecks::after(match base {
            Base::Stage(j) => checks.get(j),
            _ => None,
        });
        if !reachable[i] {
            conv.done.push(None);
            checks.push(stage_checks);
            continue;
        }
        let stage_triggers = triggers
            .get_mut(i)
            .and_then(Option::take)
            .unwrap_or_default();
        let started = conv.start_stage(i, def, base, platform, defs.len(), &stage_triggers);
        conv.flush_lints(linter);
        let mut stage = started?;
        stage.created.clone_from(&epoch);
        let from_line = def.node.start_line;
        stage.on_build = true;
        for (expr, inst, node) in &stage_triggers {
            lint::check_instruction(
                linter,
                &mut stage_checks,
                &stage,
                &conv.lexer,
                inst,
                from_line,
            );
            let dispatched = conv.dispatch(&mut stage, inst, node);
            conv.flush_lints(linter);
            dispatched.map_err(|e| e.in_trigger(expr, from_line))?;
            conv.capture_outline(&stage, inst, node);
        }
        stage.on_build = false;
        for (inst, node) in &def.commands {
            stage.source = Some((conv.req.filename.clone(), node.start_line as u32));
            lint::check_instruction(
                linter,
                &mut stage_checks,
                &stage,
                &conv.lexer,
                inst,
                node.start_line,
            );
            let dispatched = conv.dispatch(&mut stage, inst, node);
            conv.flush_lints(linter);
            dispatched.map_err(|e| e.at(node.start_line))?;
            conv.capture_outline(&stage, inst, node);
        }
        checks.push(stage_checks);
        conv.done.push(Some(stage));
    }

    let final_stage = conv
        .done
        .get_mut(target)
        .and_then(Option::take)
        .ok_or_else(|| Error::invalid("internal error: the target stage was not built"))?;
    warnings.extend(conv.named.unused_warnings());
    warnings.sort_by_key(|w| w.location.as_ref().map(|l| l.line));
    Ok(Lowered {
        stage: final_stage,
        warnings,
        outline: conv.outline,
        epoch,
    })
}

pub(crate) fn location(file: &str, line: usize) -> Location {
    Location {
        file: file.to_owned(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
    }
}

impl Converter<'_> {
    /// Hands the findings made since the last call to `linter` (also when the step failed:
    /// `--call check` reports both).
    fn flush_lints(&mut self, linter: &mut Linter) {
        for (rule, line, detail) in self.lints.drain(..) {
            linter.report(rule, line, detail);
        }
    }

    /// The stage `--target` names, else the last one.
    fn target_index(&self) -> Result<usize> {
        let Some(target) = self.req.target.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(self.names.len().saturating_sub(1));
        };
        let wanted = target.to_lowercase();
        if let Some(i) = self
            .names
            .iter()
            .position(|n| n.as_deref() == Some(&wanted))
        {
            return Ok(i);
        }
        let mut message = format!("target stage {target:?} could not be found");
        if let Some(s) = suggest::closest(&wanted, self.names.iter().flatten().map(String::as_str))
        {
            message.push_str(&format!(" (did you mean {s}?)"));
        }
        Err(Error::invalid(message))
    }

    /// The predefined platform ARGs, then the ARGs before the first FROM, `--build-arg`
    /// values overriding both.
    fn global_args(
        &mut self,
        meta: &[(Vec<ins::Arg>, &Node)],
        target_name: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        // The build runs where this plugin runs, so the host is the build platform. BuildKit's
        // values (kiln-types has the one definition); an unnamed target stage is `default`.
        let build = Platform::host();
        let mut args: Vec<(String, String)> =
            kiln_types::platform::build_args(&build, &self.req.platform)
                .into_iter()
                .chain([("TARGETSTAGE", target_name.unwrap_or("default").to_owned())])
                .map(|(k, v)| {
                    let v = self.req.build_args.get(k).cloned().unwrap_or(v);
                    (k.to_owned(), v)
                })
                .collect();
        for (list, node) in meta {
            for arg in list {
                let mut deps = BTreeSet::new();
                let value = match self.req.build_args.get(&arg.name) {
                    Some(v) => Some(v.clone()),
                    None => match &arg.default {
                        None => None,
                        Some(d) => {
                            let (v, matched, _) = self
                                .lexer
                                .process_word_with_matches(d, &args)
                                .map_err(|e| Error::from(e).at(node.start_line))?;
                            deps = matched;
                            deps.remove(&arg.name);
                            Some(v)
                        }
                    },
                };
                self.outline.globals.insert(
                    arg.name.clone(),
                    ArgInfo {
                        value: value.clone(),
                        description: call::description(&node.comments, &arg.name),
                        line: node.start_line,
                        deps,
                    },
                );
                if let Some(v) = value {
                    set_pair(&mut args, &arg.name, v);
                    check_variables(args.len()).map_err(|e| e.at(node.start_line))?;
                }
            }
        }
        Ok(args)
    }

    /// `SOURCE_DATE_EPOCH` (a build arg, or a global ARG with a value) as an RFC 3339 UTC time.
    fn source_date_epoch(&self) -> Result<Option<String>> {
        const KEY: &str = "SOURCE_DATE_EPOCH";
        let value = match self.req.build_args.get(KEY) {
            Some(v) => v.as_str(),
            None => match self.global_args.iter().find(|(k, _)| k == KEY) {
                Some((_, v)) if !v.is_empty() => v.as_str(),
                _ => return Ok(None),
            },
        };
        request::source_date_epoch(value).map_err(|e| Error::invalid(e.to_string()))
    }

    /// UndefinedArgInFrom for every stage (used or not, as BuildKit); returns the variables
    /// each FROM used, for the outline.
    fn check_from_args(
        &self,
        linter: &mut Linter,
        defs: &[StageDef<'_>],
        meta: &[(Vec<ins::Arg>, &Node)],
    ) -> Vec<BTreeSet<String>> {
        let known: BTreeSet<String> = self
            .global_args
            .iter()
            .map(|(k, _)| k.clone())
            .chain(
                meta.iter()
                    .flat_map(|(l, _)| l.iter().map(|a| a.name.clone())),
            )
            .collect();
        defs.iter()
            .map(|def| {
                let mut used = BTreeSet::new();
                let words = std::iter::once(&def.from.image).chain(def.from.platform.as_ref());
                for word in words {
                    // Expansion errors are reported by the build itself.
                    if let Ok((_, matched, unmatched)) = self
                        .lexer
                        .process_word_with_matches(word, &self.global_args)
                    {
                        lint::check_from_args(linter, def.node.start_line, &unmatched, &known);
                        used.extend(matched);
                    }
                }
                used
            })
            .collect()
    }

    /// Proxy settings given as build args (`HTTP_PROXY`...), which RUN sees without any ARG,
    /// as in BuildKit; they stay out of the history since no ARG declares them.
    pub(crate) fn proxy_env(&self) -> Vec<String> {
        request::proxy_env(&self.req.build_args)
    }

    /// Outline bookkeeping after an instruction: its ARGs and its RUN secrets and SSH ids.
    fn capture_outline(&mut self, stage: &Stage, inst: &Instruction, node: &Node) {
        match inst {
            Instruction::Arg(args) => {
                for arg in args {
                    let given = self.req.build_args.contains_key(&arg.name);
                    let inherited = self.global_args.iter().any(|(k, _)| *k == arg.name);
                    // A bare re-declaration of a global ARG shows the global one.
                    let info = (arg.default.is_some() || given || !inherited).then(|| ArgInfo {
                        value: stage
                            .args
                            .iter()
                            .rev()
                            .find(|(k, _)| *k == arg.name)
                            .and_then(|(_, v)| v.clone()),
                        description: call::description(&node.comments, &arg.name),
                        line: node.start_line,
                        deps: BTreeSet::new(),
                    });
                    self.outline.stage_arg(stage.index, &arg.name, info);
                }
            }
            Instruction::Run(run) => {
                let (lexer, scope) = (&self.lexer, stage.scope());
                let expand = |w: &str| {
                    lexer
                        .process_word(w, &scope)
                        .unwrap_or_else(|_| w.to_owned())
                };
                self.outline
                    .run_mounts(stage.index, run, node.start_line, expand);
            }
            _ => {}
        }
        for from in froms_of(inst) {
            // A bad reference fails the build elsewhere; an image is no stage.
            if let Ok(Some(j)) = self.stage_ref(from) {
                self.outline.stage_dep(stage.index, j);
            }
        }
    }

    /// The expanded FROM of stage `i`: what it starts from and its platform.
    fn base_of(&self, i: usize, def: &StageDef<'_>) -> Result<(Base, Platform)> {
        let line = def.node.start_line;
        let name = self
            .lexer
            .process_word(&def.from.image, &self.global_args)
            .map_err(|e| Error::from(e).at(line))?;
        if name.is_empty() {
            return Err(Error::invalid(format!(
                "base name ({}) should not be blank",
                def.from.image
            ))
            .at(line));
        }
        let platform = match &def.from.platform {
            None => None,
            Some(expr) => {
                let (value, _, unmatched) = self
                    .lexer
                    .process_word_with_matches(expr, &self.global_args)
                    .map_err(|e| Error::from(e).at(line))?;
                // A misspelt ARG is the usual cause: name the closest one, as BuildKit does.
                let hint = unmatched
                    .iter()
                    .find_map(|v| {
                        suggest::closest(v, self.global_args.iter().map(|(k, _)| k.as_str()))
                    })
                    .map(|s| format!(" (did you mean {s}?)"))
                    .unwrap_or_default();
                if value.is_empty() {
                    return Err(Error::invalid(format!(
                        "empty platform value from expression {expr}{hint}"
                    ))
                    .at(line));
                }
                let p = value.parse::<Platform>().map_err(|e| {
                    Error::invalid(format!("failed to parse platform {expr}: {e}{hint}")).at(line)
                })?;
                Some(p)
            }
        };
        let base = if self.named_context(&name).is_some() {
            Base::Named(name)
        } else if name == "scratch" {
            Base::Scratch
        } else if let Some(&j) = self.first_named.get(&name).filter(|j| **j < i) {
            Base::Stage(j)
        } else if let Some(j) = name.parse::<usize>().ok().filter(|j| *j < i) {
            Base::Stage(j)
        } else {
            Base::Image(name)
        };
        let platform = platform.unwrap_or_else(|| self.req.platform.clone());
        Ok((base, platform))
    }

    /// Which stages the target needs (every stage with `all`): its base chain, `COPY --from`
    /// and `RUN --mount from=`, including those of ONBUILD triggers; and the triggers of each
    /// needed stage. Triggers come from base images, so this resolves them, and repeats until
    /// the triggers bring in no new stage (as BuildKit's `resolveStages`).
    fn reachable(
        &mut self,
        defs: &[StageDef<'_>],
        bases: &[(Base, Platform)],
        target: usize,
        all: bool,
    ) -> Result<Reach> {
        let mut triggers: Vec<Option<Vec<Trigger>>> = vec![None; defs.len()];
        loop {
            let reach = self.reachable_once(defs, bases, target, all, &triggers)?;
            let mut more = false;
            for (i, r) in reach.iter().enumerate() {
                if !*r || triggers.get(i).is_some_and(Option::is_some) {
                    continue;
                }
                let (Some(def), Some((base, platform))) = (defs.get(i), bases.get(i)) else {
                    continue;
                };
                let line = def.node.start_line;
                let found = self
                    .triggers_of(defs, base, platform, line)
                    .map_err(|e| e.at(line))?;
                more |= found.iter().any(|(_, inst, _)| !froms_of(inst).is_empty());
                if let Some(slot) = triggers.get_mut(i) {
                    *slot = Some(found);
                }
            }
            if !more {
                return Ok((reach, triggers));
            }
        }
    }

    /// The ONBUILD triggers a stage runs first: those of its base image's config, or the
    /// ONBUILD instructions of its base stage (BuildKit does both), each parsed as if it
    /// stood on the FROM line.
    fn triggers_of(
        &mut self,
        defs: &[StageDef<'_>],
        base: &Base,
        platform: &Platform,
        line: usize,
    ) -> Result<Vec<Trigger>> {
        let exprs: Vec<String> = match base {
            Base::Scratch => Vec::new(),
            Base::Stage(j) => defs
                .get(*j)
                .map(|d| {
                    d.commands
                        .iter()
                        .filter_map(|(inst, _)| match inst {
                            Instruction::Onbuild { expression, .. } => Some(expression.clone()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Base::Image(reference) => self
                .resolve_image(reference, platform)?
                .config
                .config
                .on_build
                .unwrap_or_default(),
            Base::Named(name) => {
                let value = self.named_context(name).unwrap_or_default().to_owned();
                let image = value
                    .strip_prefix("docker-image://")
                    .map(str::to_owned)
                    .or_else(|| value.starts_with("oci-layout://").then(|| value.clone()));
                match image {
                    Some(r) => self
                        .resolve_image(&r, platform)?
                        .config
                        .config
                        .on_build
                        .unwrap_or_default(),
                    None => Vec::new(),
                }
            }
        };
        if exprs.len() > MAX_ONBUILD_TRIGGERS {
            return Err(Error::invalid(format!(
                "the base has {} ONBUILD triggers, more than the limit of {MAX_ONBUILD_TRIGGERS}",
                exprs.len(),
            ))
            .at(line));
        }
        exprs.into_iter().map(|e| parse_trigger(e, line)).collect()
    }

    fn reachable_once(
        &self,
        defs: &[StageDef<'_>],
        bases: &[(Base, Platform)],
        target: usize,
        all: bool,
        triggers: &[Option<Vec<Trigger>>],
    ) -> Result<Vec<bool>> {
        if all {
            return Ok(vec![true; defs.len()]);
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(defs.len());
        for (i, (def, (base, _))) in defs.iter().zip(bases).enumerate() {
            let mut d = Vec::new();
            if let Base::Stage(j) = base {
                d.push(*j);
            }
            let line = def.node.start_line;
            for (_, inst, _) in triggers
                .get(i)
                .and_then(Option::as_ref)
                .into_iter()
                .flatten()
            {
                for f in froms_of(inst) {
                    if let Some(j) = self.stage_ref(f).map_err(|e| e.at(line))? {
                        d.push(j);
                    }
                }
            }
            for (inst, node) in &def.commands {
                for f in froms_of(inst) {
                    if let Some(j) = self.stage_ref(f).map_err(|e| e.at(node.start_line))? {
                        d.push(j);
                    }
                }
            }
            deps.push(d);
        }
        let mut seen = vec![false; defs.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if let Some(s) = seen.get_mut(i) {
                if !*s {
                    *s = true;
                    todo.extend(deps.get(i).into_iter().flatten().copied());
                }
            }
        }
        Ok(seen)
    }

    /// The value of the named context `name` refers to (`--build-context name=value`, names
    /// compared as normalized references), if the build has one.
    pub(crate) fn named_context(&self, name: &str) -> Option<&str> {
        self.named.get(name).map(|c| c.value.as_str())
    }

    /// The filesystem and config of named context `name`: an image (`docker-image://`,
    /// `oci-layout://`), a git or http(s) URL, or a local directory the host serves under that
    /// name.
    fn named_state(
        &mut self,
        name: &str,
        platform: &Platform,
        description: String,
    ) -> Result<(State, ImageConfig)> {
        self.named.mark_used(name);
        let value = self.named_context(name).unwrap_or_default().to_owned();
        let image = value
            .strip_prefix("docker-image://")
            .map(str::to_owned)
            .or_else(|| value.starts_with("oci-layout://").then(|| value.clone()));
        // A directory is served under the name it was given, which may be another spelling
        // of the reference written here (`alpine` for `FROM docker.io/library/alpine`).
        let local = value.strip_prefix("local:").unwrap_or(name).to_owned();
        if let Some(remote) = crate::add::named_remote_context(name, &value) {
            return Ok((remote?, ImageConfig::scratch(platform)));
        }
        match image {
            Some(reference) => {
                let img = self.resolve_image(&reference, platform)?;
                let desc = if description.is_empty() {
                    format!("[context {name}] FROM {}", img.pinned)
                } else {
                    description
                };
                Ok((img.state(platform, desc), img.config))
            }
            None => Ok((
                State::local(
                    LocalSource {
                        name: local,
                        include_patterns: Vec::new(),
                        exclude_patterns: Vec::new(),
                    },
                    format!("[context {name}] load from client"),
                ),
                ImageConfig::scratch(platform),
            )),
        }
    }

    /// `--from` value → the stage it names (by name or index), or `None` for an image or a
    /// named context.
    pub(crate) fn stage_ref(&self, from: &str) -> Result<Option<usize>> {
        if self.named_context(from).is_some() {
            return Ok(None);
        }
        if let Ok(n) = from.parse::<i64>() {
            return match usize::try_from(n).ok().filter(|n| *n < self.names.len()) {
                Some(n) => Ok(Some(n)),
                None => Err(Error::invalid(format!("invalid stage index {n}"))),
            };
        }
        Ok(self.first_named.get(&from.to_lowercase()).copied())
    }

    /// The filesystem of `--from=<stage|index|image>` for an instruction of stage `current`.
    pub(crate) fn state_of_from(&mut self, from: &str, current: &Stage) -> Result<State> {
        if self.lexer.process_word(from, &NoEnv).ok().as_deref() != Some(from) {
            return Err(Error::invalid(
                "variable expansion is not supported for --from, define a new stage with FROM \
                 using ARG from global scope as a workaround",
            ));
        }
        match self.stage_ref(from)? {
            Some(j) if j >= current.index => Err(Error::invalid(format!(
                "cannot copy from stage {from:?}, it needs to be defined before current stage {:?}",
                current.label
            ))),
            Some(j) => self
                .done
                .get(j)
                .and_then(Option::as_ref)
                .map(|s| s.state.clone())
                .ok_or_else(|| Error::invalid(format!("stage {from:?} was not built"))),
            None if self.named_context(from).is_some() => {
                Ok(self.named_state(from, &current.platform, String::new())?.0)
            }
            None => {
                let img = self.resolve_image(from, &current.platform)?;
                Ok(img.state(&current.platform, format!("FROM {}", img.pinned)))
            }
        }
    }

    /// The resolved config of image `reference` (asked once per reference and platform).
    fn resolve_image(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        let host = self.host;
        Ok(self
            .images
            .get_or_resolve(reference, platform, |r, p| host.resolve_image_config(r, p))?)
    }

    /// The stage's initial state, from its FROM.
    fn start_stage(
        &mut self,
        index: usize,
        def: &StageDef<'_>,
        base: Base,
        platform: Platform,
        count: usize,
        triggers: &[Trigger],
    ) -> Result<Stage> {
        let line = def.node.start_line;
        let vertex_steps = def
            .commands
            .iter()
            .filter(|(i, _)| {
                matches!(
                    i,
                    Instruction::Copy(_)
                        | Instruction::Add(_)
                        | Instruction::Run(_)
                        | Instruction::Workdir(_)
                )
            })
            .count()
            // BuildKit counts every trigger as a step.
            + triggers.len();
        let name = def.from.stage_name.clone();
        let label = if count == 1 {
            String::new()
        } else {
            name.clone().unwrap_or_else(|| format!("stage-{index}"))
        };
        let ignore_cache = self.req.no_cache
            || name.as_ref().is_some_and(|n| {
                self.req
                    .no_cache_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(n))
            });
        let mut stage = Stage {
            index,
            label,
            state: State::scratch(),
            config: ImageConfig::scratch(&platform),
            platform: platform.clone(),
            args: Vec::new(),
            cmd_set: false,
            cmd_index: 0,
            cmd_total: vertex_steps,
            ignore_cache,
            source: Some((self.req.filename.clone(), line as u32)),
            on_build: false,
            created: None,
        };
        let copies_config = !matches!(base, Base::Scratch);
        match base {
            Base::Scratch => {}
            Base::Stage(j) => {
                let parent = self
                    .done
                    .get(j)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| Error::invalid("base stage was not built").at(line))?;
                stage.state = parent.state.clone();
                stage.config = parent.config.clone();
                // ONBUILD triggers do not carry over from a base stage.
                stage.config.config.on_build = None;
                stage.platform = parent.platform.clone();
                // A stage built on another inherits its ARGs too (BuildKit's `init`).
                stage.args = parent.args.clone();
            }
            Base::Image(reference) => {
                let img = self
                    .resolve_image(&reference, &platform)
                    .map_err(|e| e.at(line))?;
                stage.cmd_total += 1;
                stage.config = img.config.clone();
                // The triggers run in this stage (see `reachable`) and are not inherited
                // further.
                stage.config.config.on_build = None;
                let desc = stage.prefix(&format!("FROM {}", img.pinned));
                stage.state = img.state(&platform, desc);
                // BuildKit checks the platform of images it pulls, not of empty ones (which
                // become scratch).
                if !img.has_no_layers() {
                    if let Some(detail) =
                        lint::base_image_platform(&reference, &platform, &img.config)
                    {
                        self.lints
                            .push((lint::Rule::InvalidBaseImagePlatform, line, detail));
                    }
                }
            }
            Base::Named(name) => {
                let (state, config) = self
                    .named_state(&name, &platform, String::new())
                    .map_err(|e| e.at(line))?;
                stage.state = state;
                stage.config = config;
                stage.config.config.on_build = None;
            }
        }
        if copies_config {
            self.count_config_copy(&stage.config)
                .map_err(|e| e.at(line))?;
        }
        if stage.config.config.env_get("PATH").is_none() && stage.platform.os != "windows" {
            stage.config.config.env_set("PATH", DEFAULT_PATH);
        }
        // A base image's env counts too: it is searched like the stage's own.
        check_variables(stage.variable_count()).map_err(|e| e.at(line))?;
        Ok(stage)
    }

    /// Counts a config copied into a new stage against [`MAX_COPIED_CONFIG_BYTES`].
    fn count_config_copy(&mut self, config: &ImageConfig) -> Result<()> {
        // An estimate of the memory the copy holds: the container config (env, labels...) at
        // its serialized size, history and layers by their strings plus a fixed overhead.
        let opt_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let history: usize = config
            .history
            .iter()
            .map(|h| 64 + opt_len(&h.created) + opt_len(&h.created_by) + opt_len(&h.comment))
            .sum();
        let bytes = serde_json::to_vec(&config.config).map_or(0, |v| v.len())
            + history
            + 96 * config.rootfs.diff_ids.len();
        self.copied_config_bytes = self.copied_config_bytes.saturating_add(bytes);
        if self.copied_config_bytes > MAX_COPIED_CONFIG_BYTES {
            return Err(Error::invalid(format!(
                "stages copy more than {} MiB of image config (history, env, labels) from their \
                 bases: build fewer stages on top of one another or on one large base",
                MAX_COPIED_CONFIG_BYTES >> 20
            )));
        }
        Ok(())
    }

    /// The build context, `.dockerignore` patterns excluded; read on first use.
    pub(crate) fn context(&mut self) -> Result<State> {
        if let Some(s) = &self.context {
            return Ok(s.clone());
        }
        let exclude_patterns = self.read_ignore_patterns()?;
        if !exclude_patterns.is_empty() {
            self.ignore_matcher = kiln_ignore::PatternMatcher::new(&exclude_patterns).ok();
        }
        let state = State::local(
            LocalSource {
                name: context::MAIN.to_owned(),
                include_patterns: Vec::new(),
                exclude_patterns,
            },
            "[internal] load build context",
        );
        self.context = Some(state.clone());
        Ok(state)
    }

    /// The patterns of the ignore file that applies: `<Dockerfile>.dockerignore` beside the
    /// Dockerfile when present, else the context's `.dockerignore`, as BuildKit reads them
    /// ([`context::ignore_file`]).
    fn read_ignore_patterns(&self) -> Result<Vec<String>> {
        let read = |context: &str, path: &str| self.host.read_context_file(context, path);
        let Some(file) = context::ignore_file(&self.req.filename, read)? else {
            return Ok(Vec::new());
        };
        kiln_ignore::read_ignore_file(&file.text).map_err(|e| {
            // The limits name a line of the ignore file, not of the Dockerfile.
            let line = match &e {
                kiln_ignore::Error::TooManyPatterns { line, .. }
                | kiln_ignore::Error::PatternTooLong { line, .. } => *line,
                _ => None,
            };
            let mut error = PluginError::new(
                ErrorKind::InvalidInput,
                format!("failed to read {}: {e}", file.path),
            );
            error.location = line.map(|l| location(&file.path, l));
            Error::from(error)
        })
    }

    /// Build args in scope of a stage, for instruction plugins.
    pub(crate) fn args_in_scope(stage: &Stage) -> BTreeMap<String, String> {
        stage
            .args
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect()
    }
}

/// Sets `key` in an ordered list of pairs, replacing in place.
pub(crate) fn set_pair<V>(pairs: &mut Vec<(String, V)>, key: &str, value: V) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => pairs.push((key.to_owned(), value)),
    }
}

/// The stages (or images) an instruction reads from: `COPY --from`, `RUN --mount from=`.
fn froms_of(inst: &Instruction) -> Vec<&str> {
    match inst {
        Instruction::Copy(c) => c.from.as_deref().into_iter().collect(),
        Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
        _ => Vec::new(),
    }
}

/// One ONBUILD trigger's text → its instruction, placed on the FROM `line`. Errors name the
/// trigger.
fn parse_trigger(expr: String, line: usize) -> Result<Trigger> {
    let fail = |e: Error| e.in_trigger(&expr, line);
    let parsed = dockerfile_parser::parse(&expr).map_err(|e| fail(e.into()))?;
    let [node] = parsed.nodes.as_slice() else {
        return Err(fail(Error::invalid(
            "onbuild trigger should be a single expression",
        )));
    };
    match node.command.as_str() {
        "onbuild" => {
            return Err(fail(Error::invalid(
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            )))
        }
        "from" | "maintainer" => {
            return Err(fail(Error::invalid(format!(
                "{} isn't allowed as an ONBUILD trigger",
                node.command.to_uppercase()
            ))))
        }
        _ => {}
    }
    let inst = ins::parse_instruction(node).map_err(|e| fail(e.into()))?;
    // The trigger stands on the FROM line: progress, plugins and errors point there.
    let mut node = node.clone();
    node.start_line = line;
    node.end_line = line;
    Ok((expr, inst, node))
}
