//! The driver: Dockerfile text → stages, global ARGs, target selection, reachable stages, FROM,
//! and the build context; each instruction is then lowered by [`crate::dispatch`].

use std::collections::{BTreeMap, HashMap};

use dockerfile_parser::instructions::{self as ins, Instruction};
use dockerfile_parser::shell::{Env, Lexer, NoEnv};
use dockerfile_parser::Node;
use kiln_graph::{ImageSource, LocalSource, State};
use kiln_plugin_sdk::proto::{Diagnostic, FrontendRequest, FrontendResponse, Location};
use kiln_types::image::{History, ImageConfig};
use kiln_types::Platform;

use crate::error::{Error, Result};
use crate::host::FrontendHost;
use crate::{reference, suggest};

/// `comment` of every history entry, as BuildKit writes it.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// The PATH BuildKit gives a stage whose image sets none (`system.DefaultPathEnv`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The main local context.
pub(crate) const CONTEXT: &str = "context";

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
}

impl Stage {
    /// The variables instructions are expanded with: the config's ENV first (ENV always
    /// overrides an ARG of the same name), then the stage's ARGs.
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
        format!(
            "[{label}{:>width$}/{}] {text}",
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
            created: None,
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

/// A resolved base image: pinned reference and config.
#[derive(Clone)]
struct ResolvedImage {
    pinned: String,
    config: ImageConfig,
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
    /// Dispatched stages, by position.
    done: Vec<Option<Stage>>,
    /// The build context source, made on first use.
    context: Option<State>,
    /// Its `.dockerignore` patterns.
    pub(crate) ignore_patterns: Vec<String>,
    images: HashMap<(String, Platform), ResolvedImage>,
    pub(crate) warnings: Vec<Diagnostic>,
}

/// Runs the whole conversion.
pub(crate) fn convert(req: &FrontendRequest, host: &dyn FrontendHost) -> Result<FrontendResponse> {
    if req.source.is_empty() {
        return Err(Error::invalid("the Dockerfile cannot be empty"));
    }
    let parsed = dockerfile_parser::parse(&req.source)?;
    let mut warnings: Vec<Diagnostic> = parsed
        .warnings
        .iter()
        .map(|w| Diagnostic {
            message: if w.detail.is_empty() {
                w.message.clone()
            } else {
                format!("{}: {}", w.message, w.detail)
            },
            location: Some(location(&req.filename, w.start_line)),
        })
        .collect();
    for w in &warnings {
        host.warn(&w.message);
    }

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
        done: Vec::new(),
        context: None,
        ignore_patterns: Vec::new(),
        images: HashMap::new(),
        warnings: Vec::new(),
    };
    let target = conv.target_index()?;
    conv.global_args = conv.global_args(&meta_args, defs[target].from.stage_name.as_deref())?;

    let bases = defs
        .iter()
        .enumerate()
        .map(|(i, d)| conv.base_of(i, d))
        .collect::<Result<Vec<_>>>()?;
    let reachable = conv.reachable(&defs, &bases, target)?;

    for (i, (def, (base, platform))) in defs.iter().zip(bases).enumerate() {
        if !reachable[i] {
            conv.done.push(None);
            continue;
        }
        let mut stage = conv.start_stage(i, def, base, platform, defs.len())?;
        for (inst, node) in &def.commands {
            stage.source = Some((conv.req.filename.clone(), node.start_line as u32));
            conv.dispatch(&mut stage, inst, node)
                .map_err(|e| e.at(node.start_line))?;
        }
        conv.done.push(Some(stage));
    }

    let final_stage = conv
        .done
        .get_mut(target)
        .and_then(Option::take)
        .ok_or_else(|| Error::invalid("internal error: the target stage was not built"))?;
    warnings.append(&mut conv.warnings);
    Ok(FrontendResponse {
        definition: State::definition(&[final_stage.state]),
        config: final_stage.config,
        warnings,
    })
}

pub(crate) fn location(file: &str, line: usize) -> Location {
    Location {
        file: file.to_owned(),
        line: u32::try_from(line).unwrap_or(u32::MAX),
    }
}

impl Converter<'_> {
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
        &self,
        meta: &[(Vec<ins::Arg>, &Node)],
        target_name: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let target = &self.req.platform;
        // The build runs where this plugin runs, so the host is the build platform.
        let build = Platform::host();
        let mut args: Vec<(String, String)> = [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETARCH", target.architecture.clone()),
            ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
            ("TARGETSTAGE", target_name.unwrap_or_default().to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| {
            let v = self.req.build_args.get(k).cloned().unwrap_or(v);
            (k.to_owned(), v)
        })
        .collect();
        for (list, node) in meta {
            for arg in list {
                let value = match self.req.build_args.get(&arg.name) {
                    Some(v) => Some(v.clone()),
                    None => arg
                        .expand(&self.lexer, &args)
                        .map_err(|e| Error::from(e).at(node.start_line))?,
                };
                if let Some(v) = value {
                    set_pair(&mut args, &arg.name, v);
                }
            }
        }
        Ok(args)
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
                let value = self
                    .lexer
                    .process_word(expr, &self.global_args)
                    .map_err(|e| Error::from(e).at(line))?;
                if value.is_empty() {
                    return Err(Error::invalid(format!(
                        "empty platform value from expression {expr}"
                    ))
                    .at(line));
                }
                Some(value.parse::<Platform>().map_err(|e| {
                    Error::invalid(format!("failed to parse platform {expr}: {e}")).at(line)
                })?)
            }
        };
        let earlier = self.names.get(..i).unwrap_or_default();
        let base = if self.named_context(&name).is_some() {
            Base::Named(name)
        } else if name == "scratch" {
            Base::Scratch
        } else if let Some(j) = earlier.iter().position(|n| n.as_deref() == Some(&name)) {
            Base::Stage(j)
        } else if let Some(j) = name.parse::<usize>().ok().filter(|j| *j < i) {
            Base::Stage(j)
        } else {
            Base::Image(name)
        };
        let platform = platform.unwrap_or_else(|| self.req.platform.clone());
        Ok((base, platform))
    }

    /// Which stages the target needs: its base chain, `COPY --from` and `RUN --mount from=`.
    fn reachable(
        &self,
        defs: &[StageDef<'_>],
        bases: &[(Base, Platform)],
        target: usize,
    ) -> Result<Vec<bool>> {
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(defs.len());
        for (def, (base, _)) in defs.iter().zip(bases) {
            let mut d = Vec::new();
            if let Base::Stage(j) = base {
                d.push(*j);
            }
            for (inst, node) in &def.commands {
                let froms: Vec<&str> = match inst {
                    Instruction::Copy(c) => c.from.as_deref().into_iter().collect(),
                    Instruction::Run(r) => {
                        r.mounts.iter().filter_map(|m| m.from.as_deref()).collect()
                    }
                    _ => Vec::new(),
                };
                for f in froms {
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

    /// The value of named context `name` (`--build-context name=value`), if the build has one.
    pub(crate) fn named_context(&self, name: &str) -> Option<&str> {
        self.req
            .options
            .get(&format!("context:{name}"))
            .map(String::as_str)
    }

    /// The filesystem and config of named context `name`: an image (`docker-image://`,
    /// `oci-layout://`) or a local directory the host serves under that name.
    fn named_state(
        &mut self,
        name: &str,
        platform: &Platform,
        description: String,
    ) -> Result<(State, ImageConfig)> {
        let value = self.named_context(name).unwrap_or_default().to_owned();
        let image = value
            .strip_prefix("docker-image://")
            .map(str::to_owned)
            .or_else(|| value.starts_with("oci-layout://").then(|| value.clone()));
        match image {
            Some(reference) => {
                let img = self.resolve_image(&reference, platform)?;
                let desc = if description.is_empty() {
                    format!("[context {name}] FROM {}", img.pinned)
                } else {
                    description
                };
                Ok((image_state(&img, platform, desc), img.config))
            }
            None => Ok((
                State::local(
                    LocalSource {
                        name: name.to_owned(),
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
        let wanted = from.to_lowercase();
        Ok(self
            .names
            .iter()
            .position(|n| n.as_deref() == Some(&wanted)))
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
                Ok(image_state(
                    &img,
                    &current.platform,
                    format!("FROM {}", img.pinned),
                ))
            }
        }
    }

    /// The resolved config of image `reference` (asked once per reference and platform).
    fn resolve_image(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        let key = (reference.to_owned(), platform.clone());
        if let Some(r) = self.images.get(&key) {
            return Ok(r.clone());
        }
        let resp = self
            .host
            .resolve_image_config(reference, platform)
            .map_err(|mut e| {
                // BuildKit prefixes the failure with the name as written.
                e.message = format!("{reference}: {}", e.message);
                Error::from(e)
            })?;
        let mut config = resp.config;
        config.created = None;
        let resolved = ResolvedImage {
            pinned: reference::pinned(reference, &resp.digest.to_string()),
            config,
        };
        self.images.insert(key, resolved.clone());
        Ok(resolved)
    }

    /// The stage's initial state, from its FROM.
    fn start_stage(
        &mut self,
        index: usize,
        def: &StageDef<'_>,
        base: Base,
        platform: Platform,
        count: usize,
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
            .count();
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
        };
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
                if let Some(triggers) = stage.config.config.on_build.take() {
                    let msg = format!(
                        "base image {reference} has {} ONBUILD trigger(s); running them is not \
                         supported yet, they were ignored",
                        triggers.len()
                    );
                    self.host.warn(&msg);
                    self.warnings.push(Diagnostic {
                        message: msg,
                        location: Some(location(&self.req.filename, line)),
                    });
                }
                let desc = stage.prefix(&format!("FROM {}", img.pinned));
                stage.state = image_state(&img, &platform, desc);
            }
            Base::Named(name) => {
                let (state, config) = self
                    .named_state(&name, &platform, String::new())
                    .map_err(|e| e.at(line))?;
                stage.state = state;
                stage.config = config;
            }
        }
        if stage.config.config.env_get("PATH").is_none() && stage.platform.os != "windows" {
            stage.config.config.env_set("PATH", DEFAULT_PATH);
        }
        Ok(stage)
    }

    /// The build context, `.dockerignore` patterns excluded; read on first use.
    pub(crate) fn context(&mut self) -> Result<State> {
        if let Some(s) = &self.context {
            return Ok(s.clone());
        }
        let exclude_patterns = self.read_ignore_patterns()?;
        self.ignore_patterns.clone_from(&exclude_patterns);
        let state = State::local(
            LocalSource {
                name: CONTEXT.to_owned(),
                include_patterns: Vec::new(),
                exclude_patterns,
            },
            "[internal] load build context",
        );
        self.context = Some(state.clone());
        Ok(state)
    }

    /// `<Dockerfile>.dockerignore` when present, else `.dockerignore`, as BuildKit reads them.
    fn read_ignore_patterns(&self) -> Result<Vec<String>> {
        let name = self.req.filename.trim_start_matches("./");
        // An absolute Dockerfile path is outside the context: its ignore file can only be named
        // after its base name.
        let name = if name.starts_with('/') {
            name.rsplit('/').next().unwrap_or(name)
        } else {
            name
        };
        let mut candidates = Vec::new();
        if !name.is_empty() {
            candidates.push(format!("{name}.dockerignore"));
        }
        candidates.push(".dockerignore".to_owned());
        for path in candidates {
            if let Some(bytes) = self.host.read_context_file(CONTEXT, &path)? {
                return Ok(kiln_ignore::read_ignore_file(&String::from_utf8_lossy(
                    &bytes,
                )));
            }
        }
        Ok(Vec::new())
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

/// The state of a resolved image: scratch when it has no layers, as BuildKit does.
fn image_state(img: &ResolvedImage, platform: &Platform, description: String) -> State {
    let no_layers =
        img.config.rootfs.diff_ids.is_empty() && img.config.history.iter().all(|h| h.empty_layer);
    if no_layers {
        return State::scratch();
    }
    State::image(
        ImageSource {
            reference: img.pinned.clone(),
            platform: platform.clone(),
        },
        description,
    )
}

/// Sets `key` in an ordered list of pairs, replacing in place.
pub(crate) fn set_pair<V>(pairs: &mut Vec<(String, V)>, key: &str, value: V) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => pairs.push((key.to_owned(), value)),
    }
}
