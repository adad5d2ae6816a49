//! The typed [`Spec`] → build graph and image config, with the Dockerfile frontend's graph
//! constructs: a `run` step is the exec op a `RUN` makes, a `copy` the file op of a `COPY`, a
//! `workdir` the mkdir of a `WORKDIR`, bases the image sources of a `FROM`. So a step that means
//! what a Dockerfile instruction means has the same vertex digest, and the two frontends share
//! cache entries.

use std::collections::{BTreeMap, HashMap};

use dockerfile_parser::shell::{Env, Lexer};
use kiln_graph::{
    Chmod, Chown, CopyAction, ExecBuilder, FileBuilder, LocalSource, Mount, MountKind, NetworkMode,
    SecurityMode, State,
};
use kiln_plugin_sdk::base::{ResolvedImage, ResolvedImages};
use kiln_plugin_sdk::context::{self, key as context_key};
use kiln_plugin_sdk::perms;
use kiln_plugin_sdk::proto::{Diagnostic, FrontendRequest, FrontendResponse};
use kiln_plugin_sdk::{paths, request, steps};
use kiln_types::image::{EmptyObject, History, ImageConfig};
use kiln_types::reference::LAYOUT_SCHEME;
use kiln_types::Platform;

use crate::error::{Error, Result};
use crate::host::SpecHost;
use crate::image::{check_signal, command_args, default_shell, healthcheck, parse_port};
use crate::schema::{
    self, At, Command, CopyStep, ImageSpec, MountSpec, RunStep, Spec, StageSpec, StepKind,
};

/// Most variables (env entries plus `args`) one stage may hold: they are ordered lists searched
/// on every set and lookup, as in the Dockerfile frontend, whose limit this is.
const MAX_VARIABLES: usize = 1024;
/// Most image-config bytes all stages together may copy from their base stages: a stage starts
/// with a copy of its base's config, history included, so a chain of stages costs the product
/// of their number and their history (the Dockerfile frontend's limit).
const MAX_COPIED_CONFIG_BYTES: usize = 64 << 20;

/// `comment` of the history entries this frontend writes.
pub(crate) const HISTORY_COMMENT: &str = "kiln.spec.v0";
/// The PATH a stage gets when its base sets none (BuildKit's `system.DefaultPathEnv`, as the
/// Dockerfile frontend gives it: the same environment keeps RUN steps' digests equal).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Build args that are not the build file's: they steer kiln or RUN's proxies, and are never
/// reported as unused.
const KNOWN_BUILD_ARGS: &[&str] = &[
    "BUILDKIT_SYNTAX",
    "SOURCE_DATE_EPOCH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

/// What a stage, a `copy.from` or a mount's `from` names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ref {
    Scratch,
    Stage(usize),
    /// A `--build-context NAME=...`, which wins over stages and images of that name.
    Named(String),
    Image(String),
}

/// One stage while its steps are lowered.
struct Stage {
    name: String,
    /// The build file's name, recorded on vertices with [`Stage::line`].
    file: String,
    state: State,
    config: ImageConfig,
    platform: Platform,
    /// The build args its steps see in their environment (`args = [...]`), with values.
    env_args: Vec<(String, String)>,
    ignore_cache: bool,
    /// Progress numbering: `[build 2/5]`.
    step_index: usize,
    step_total: usize,
    /// Line of what is being lowered, recorded on its vertices.
    line: u32,
}

/// Variable lookup: the stage's ENV first, then every build arg.
struct Scope<'a> {
    env: &'a [String],
    args: &'a [(String, String)],
}

impl Env for Scope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                (k == name).then_some(v)
            })
            .or_else(|| Env::get(self.args, name))
    }
}

struct Lowering<'a> {
    req: &'a FrontendRequest,
    host: &'a dyn SpecHost,
    spec: &'a Spec,
    lexer: Lexer,
    /// Predefined platform args, then `[args]`, `--build-arg` values winning.
    args: Vec<(String, String)>,
    by_name: HashMap<String, usize>,
    /// Every stage's references (`from`, then each copy/mount `from`) with their lines: the
    /// stage graph, known before anything is lowered.
    refs: Vec<Vec<(u32, Ref)>>,
    done: Vec<Option<Stage>>,
    context: Option<State>,
    images: ResolvedImages,
    /// `--build-context`s by normalized name → value.
    named: BTreeMap<String, String>,
    created: Option<String>,
    /// Config bytes copied from base stages so far (see [`MAX_COPIED_CONFIG_BYTES`]).
    copied_config_bytes: usize,
}

/// Lowers the build file of `req`.
pub(crate) fn lower(req: &FrontendRequest, host: &dyn SpecHost) -> Result<FrontendResponse> {
    let spec = schema::parse(&req.source)?;
    let mut warnings = Vec::new();
    let mut l = Lowering {
        req,
        host,
        spec: &spec,
        // Quotes are plain characters in TOML values (TOML has its own); `$` and `\$` keep
        // the Dockerfile's meaning.
        lexer: Lexer::new('\\').skip_process_quotes(true),
        args: Vec::new(),
        by_name: spec
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.value.clone(), i))
            .collect(),
        refs: Vec::new(),
        done: Vec::new(),
        context: None,
        images: ResolvedImages::default(),
        named: named_contexts(&req.options),
        created: None,
        copied_config_bytes: 0,
    };
    let target = l.target()?;
    l.args = l.build_args(&spec.stages[target].name.value, &mut warnings)?;
    l.created = l.source_date_epoch()?;
    l.refs = spec
        .stages
        .iter()
        .map(|s| l.stage_refs(s))
        .collect::<Result<_>>()?;
    l.check_cycles()?;
    l.done = (0..spec.stages.len()).map(|_| None).collect();
    l.lower_stage(target)?;
    let stage = l
        .done
        .get_mut(target)
        .and_then(Option::take)
        .ok_or_else(|| Error::invalid("internal error: the target stage was not built"))?;
    let mut config = stage.config;
    // `--label k=v` reaches frontends as `label:k` and wins over the file's labels.
    request::apply_labels(&req.options, &mut config);
    config.created = l.created.clone();
    let mut response = FrontendResponse::new(State::definition(&[stage.state]), config);
    response.warnings = warnings;
    Ok(response)
}

impl Lowering<'_> {
    /// `--target`, else the last stage in the file.
    fn target(&self) -> Result<usize> {
        let Some(target) = self.req.target.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(self.spec.stages.len() - 1);
        };
        if let Some(&i) = self.by_name.get(target) {
            return Ok(i);
        }
        let names = || self.spec.stages.iter().map(|s| s.name.value.as_str());
        let mut message = format!("target stage {target:?} could not be found");
        if let Some(s) = dockerfile_parser::suggest::closest(target, names()) {
            message.push_str(&format!(" (did you mean {s}?)"));
        }
        message.push_str(&format!(
            "; the stages are: {}",
            names().collect::<Vec<_>>().join(", ")
        ));
        Err(Error::invalid(message))
    }

    /// The predefined platform args, then `[args]` (defaults expanded with what comes before),
    /// `--build-arg` values overriding both. Build args no `[args]` entry declares are
    /// reported, as BuildKit reports unconsumed ones.
    fn build_args(
        &self,
        target_name: &str,
        warnings: &mut Vec<Diagnostic>,
    ) -> Result<Vec<(String, String)>> {
        let given = &self.req.build_args;
        let mut args: Vec<(String, String)> =
            kiln_types::platform::build_args(&Platform::host(), &self.req.platform)
                .into_iter()
                .chain([("TARGETSTAGE", target_name.to_owned())])
                .map(|(k, v)| (k.to_owned(), given.get(k).cloned().unwrap_or(v)))
                .collect();
        let predefined = args.len();
        for (name, default) in &self.spec.args {
            let value = match given.get(&name.value) {
                Some(v) => v.clone(),
                None => self.expand(default, &[], &args, name.line)?,
            };
            set_pair(&mut args, &name.value, value);
        }
        let unused: Vec<&str> = given
            .keys()
            .map(String::as_str)
            .filter(|k| !args.iter().any(|(a, _)| a == k))
            .filter(|k| !KNOWN_BUILD_ARGS.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .collect();
        if !unused.is_empty() {
            let declared: Vec<&str> = args[predefined..].iter().map(|(k, _)| k.as_str()).collect();
            let mut message = format!(
                "build args not declared in [args], so not used: {}",
                unused.join(", ")
            );
            if let Some(s) = unused
                .iter()
                .find_map(|u| dockerfile_parser::suggest::closest(u, declared.iter().copied()))
            {
                message.push_str(&format!(" (did you mean {s}?)"));
            }
            warnings.push(Diagnostic {
                message,
                location: None,
            });
        }
        Ok(args)
    }

    /// `SOURCE_DATE_EPOCH` (a build arg or an `[args]` value) as an RFC 3339 UTC time.
    fn source_date_epoch(&self) -> Result<Option<String>> {
        let value = Env::get(&self.args, "SOURCE_DATE_EPOCH").unwrap_or_default();
        request::source_date_epoch(value).map_err(|e| Error::invalid(e.to_string()))
    }

    /// `word` with `$VAR`/`${VAR...}` expanded in `env` then the build args.
    fn expand(
        &self,
        word: &str,
        env: &[String],
        args: &[(String, String)],
        line: u32,
    ) -> Result<String> {
        self.lexer
            .process_word(word, &Scope { env, args })
            .map_err(|e| Error::at(line, e.to_string()))
    }

    fn expand_in(&self, stage: &Stage, word: &At<String>) -> Result<String> {
        let env = stage.config.config.env.as_deref().unwrap_or_default();
        self.expand(&word.value, env, &self.args, word.line)
    }

    fn expand_str(&self, stage: &Stage, word: &str) -> Result<String> {
        let env = stage.config.config.env.as_deref().unwrap_or_default();
        self.expand(word, env, &self.args, stage.line)
    }

    fn expand_opt(
        &self,
        stage: &Stage,
        word: &Option<String>,
        line: u32,
    ) -> Result<Option<String>> {
        word.as_deref()
            .map(|v| self.expand_str(stage, v).map_err(|e| e.or_at(line)))
            .transpose()
    }

    /// What a `from` value (expanded with the build args only, so that the stage graph is
    /// known before anything is lowered) refers to.
    fn resolve_ref(&self, word: &At<String>) -> Result<Ref> {
        let name = self.expand(&word.value, &[], &self.args, word.line)?;
        if name.is_empty() {
            return Err(Error::at(
                word.line,
                format!("`from` is empty (written {:?})", word.value),
            ));
        }
        if self.named.contains_key(&context_key(&name)) {
            return Ok(Ref::Named(name));
        }
        if name == "scratch" {
            return Ok(Ref::Scratch);
        }
        if let Some(&i) = self.by_name.get(&name) {
            return Ok(Ref::Stage(i));
        }
        // A bare word one typo away from a stage is a misspelt stage far more often than an
        // image of that name; an image can still be named with its tag.
        let bare = !name.contains(['/', ':', '@']);
        let stages = self.spec.stages.iter().map(|s| s.name.value.as_str());
        if let (true, Some(s)) = (bare, dockerfile_parser::suggest::closest(&name, stages)) {
            return Err(Error::at(
                word.line,
                format!(
                    "unknown stage {name:?} (did you mean {s}?); to use the image {name:?}, write \
                     it with its tag: \"{name}:latest\""
                ),
            ));
        }
        Ok(Ref::Image(name))
    }

    /// Every reference a stage makes, by line: its `from`, then each step's.
    fn stage_refs(&self, s: &StageSpec) -> Result<Vec<(u32, Ref)>> {
        let mut refs = vec![(s.from.line, self.resolve_ref(&s.from)?)];
        for step in &s.steps {
            match &step.kind {
                StepKind::Copy(c) => {
                    if let Some(f) = &c.from {
                        refs.push((f.line, self.resolve_ref(f)?));
                    }
                }
                StepKind::Run(r) => {
                    for m in &r.mounts {
                        let from = match &m.value {
                            MountSpec::Cache { from, .. } | MountSpec::Bind { from, .. } => from,
                            _ => &None,
                        };
                        if let Some(f) = from {
                            refs.push((m.line, self.resolve_ref(&at(f, m.line))?));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(refs)
    }

    /// Fails on a stage that needs itself, naming the chain and the line that closes it.
    fn check_cycles(&self) -> Result<()> {
        // 0: not visited, 1: on the current path, 2: done.
        let mut mark = vec![0u8; self.spec.stages.len()];
        for start in 0..self.spec.stages.len() {
            if mark[start] != 0 {
                continue;
            }
            // Iterative DFS: (stage, next reference to look at).
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = 1;
            while let Some((i, next)) = path.last().copied() {
                let refs = &self.refs[i];
                let Some((line, r)) = refs.get(next) else {
                    mark[i] = 2;
                    path.pop();
                    continue;
                };
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                let Ref::Stage(j) = *r else { continue };
                match mark[j] {
                    0 => {
                        mark[j] = 1;
                        path.push((j, 0));
                    }
                    1 => {
                        let from = path.iter().position(|(s, _)| *s == j).unwrap_or(0);
                        let mut chain: Vec<&str> = path[from..]
                            .iter()
                            .map(|(s, _)| self.spec.stages[*s].name.value.as_str())
                            .collect();
                        chain.push(&self.spec.stages[j].name.value);
                        return Err(Error::at(
                            *line,
                            format!(
                                "stage cycle: {} (a stage cannot need itself)",
                                chain.join(" → ")
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Lowers stage `i` after the stages it needs.
    fn lower_stage(&mut self, i: usize) -> Result<()> {
        if self.done[i].is_some() {
            return Ok(());
        }
        let deps: Vec<usize> = self.refs[i]
            .iter()
            .filter_map(|(_, r)| match r {
                Ref::Stage(j) => Some(*j),
                _ => None,
            })
            .collect();
        for j in deps {
            self.lower_stage(j)?;
        }
        let spec = self.spec;
        let s = &spec.stages[i];
        let mut stage = self.start_stage(i, s)?;
        self.stage_settings(&mut stage, s)?;
        for (n, step) in s.steps.iter().enumerate() {
            stage.line = step.line;
            let label = format!(
                "{}/{}",
                s.name.value,
                step.name
                    .clone()
                    .unwrap_or_else(|| format!("step-{}", n + 1))
            );
            let named = |text: String| match &step.name {
                Some(name) => format!("{name}: {text}"),
                None => text,
            };
            let lowered = match &step.kind {
                StepKind::Run(run) => self.run(&mut stage, run, &label, named),
                StepKind::Copy(copy) => self.copy(&mut stage, copy, &label, named),
                StepKind::Env(pairs) => self.env(&mut stage, pairs, &label),
                StepKind::Workdir(w) => self.workdir(&mut stage, w, &label, named),
                StepKind::User(u) => self.user(&mut stage, u, &label),
            };
            // A failure without a more precise line (a bad chown, an unreadable ignore file)
            // is the step's.
            lowered.map_err(|e| e.or_at(step.line))?;
        }
        self.image_config(&mut stage, &s.image)?;
        self.done[i] = Some(stage);
        Ok(())
    }

    /// The stage's base: its filesystem, config and platform.
    fn start_stage(&mut self, i: usize, s: &StageSpec) -> Result<Stage> {
        let platform =
            match &s.platform {
                None => None,
                Some(p) => {
                    let value = self.expand(&p.value, &[], &self.args, p.line)?;
                    Some(value.parse::<Platform>().map_err(|e| {
                        Error::at(p.line, format!("invalid platform {value:?}: {e}"))
                    })?)
                }
            };
        let vertex_steps = s
            .steps
            .iter()
            .filter(|st| {
                matches!(
                    st.kind,
                    StepKind::Run(_) | StepKind::Copy(_) | StepKind::Workdir(_)
                )
            })
            .count()
            + usize::from(s.workdir.is_some());
        let name = s.name.value.clone();
        let ignore_cache = self.req.no_cache
            || self
                .req
                .no_cache_filter
                .iter()
                .any(|f| f.eq_ignore_ascii_case(&name));
        let base = self
            .refs
            .get(i)
            .and_then(|r| r.first())
            .map(|(_, r)| r.clone())
            .ok_or_else(|| Error::invalid("internal error: a stage without its base"))?;
        let platform_or_target = platform
            .clone()
            .unwrap_or_else(|| self.req.platform.clone());
        let mut stage = Stage {
            name,
            file: self.req.filename.clone(),
            state: State::scratch(),
            config: ImageConfig::scratch(&platform_or_target),
            platform: platform_or_target.clone(),
            env_args: Vec::new(),
            ignore_cache,
            step_index: 0,
            step_total: vertex_steps,
            line: s.from.line,
        };
        match base {
            Ref::Scratch => {}
            Ref::Stage(j) => {
                let parent = self.done[j]
                    .as_ref()
                    .ok_or_else(|| Error::invalid("internal error: base stage was not built"))?;
                let bytes = serde_json::to_vec(&parent.config).map_or(0, |v| v.len());
                self.copied_config_bytes = self.copied_config_bytes.saturating_add(bytes);
                if self.copied_config_bytes > MAX_COPIED_CONFIG_BYTES {
                    return Err(Error::at(
                        s.from.line,
                        format!(
                            "stages copy more than {} MiB of image config (history, env, labels) \
                             from their base stages: build fewer stages on top of one another",
                            MAX_COPIED_CONFIG_BYTES >> 20
                        ),
                    ));
                }
                stage.state = parent.state.clone();
                stage.config = parent.config.clone();
                stage.platform = platform.unwrap_or_else(|| parent.platform.clone());
                stage.env_args = parent.env_args.clone();
            }
            Ref::Image(reference) => {
                let img = self
                    .resolve_image(&reference, &platform_or_target)
                    .map_err(|e| e.or_at(s.from.line))?;
                stage.step_total += 1;
                stage.config = img.config.clone();
                let desc = stage.prefix(&format!("FROM {}", img.pinned));
                stage.state = img.state(&platform_or_target, desc);
            }
            Ref::Named(name) => {
                let (state, config) = self
                    .named_state(&name, &platform_or_target)
                    .map_err(|e| e.or_at(s.from.line))?;
                stage.state = state;
                stage.config = config;
            }
        }
        // ONBUILD triggers are a Dockerfile notion: a spec stage runs none, and passes none on.
        stage.config.config.on_build = None;
        if stage.config.config.env_get("PATH").is_none() && stage.platform.os != "windows" {
            stage.config.config.env_set("PATH", DEFAULT_PATH);
        }
        Ok(stage)
    }

    /// The stage-level `args`, `shell`, `env`, `workdir` and `user`, in that order (as a
    /// Dockerfile's `ARG`, `SHELL`, `ENV`, `WORKDIR`, `USER` at the top of a stage).
    fn stage_settings(&mut self, stage: &mut Stage, s: &StageSpec) -> Result<()> {
        let label = format!("{}/stage", s.name.value);
        for name in &s.args {
            let Some(value) = Env::get(&self.args, &name.value) else {
                let known = self.args.iter().map(|(k, _)| k.as_str());
                let mut message = format!(
                    "unknown arg {:?} in `args`: declare it in [args] first",
                    name.value
                );
                if let Some(hint) = dockerfile_parser::suggest::closest(&name.value, known) {
                    message = format!("{message} (did you mean {hint}?)");
                }
                return Err(Error::at(name.line, message));
            };
            set_pair(&mut stage.env_args, &name.value, value.to_owned());
            check_variables(stage, name.line)?;
        }
        if let Some(shell) = &s.shell {
            stage.config.config.shell = Some(shell.value.clone());
        }
        if !s.env.is_empty() {
            self.env(stage, &s.env, &label)?;
        }
        if let Some(w) = &s.workdir {
            stage.line = w.line;
            self.workdir(stage, w, &label, |t| t)?;
        }
        if let Some(u) = &s.user {
            self.user(stage, u, &label)?;
        }
        Ok(())
    }

    fn env(
        &self,
        stage: &mut Stage,
        pairs: &[(At<String>, At<String>)],
        label: &str,
    ) -> Result<()> {
        // Every value sees the environment from before the step, as `ENV A=1 B=$A` does.
        let expanded = pairs
            .iter()
            .map(|(k, v)| Ok((k.value.clone(), self.expand_in(stage, v)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut text = String::from("ENV");
        for ((k, v), (key, _)) in expanded.iter().zip(pairs) {
            text.push_str(&format!(" {k}={v}"));
            stage.config.config.env_set(k, v);
            check_variables(stage, key.line)?;
        }
        self.commit(stage, text, label, false);
        Ok(())
    }

    fn user(&self, stage: &mut Stage, user: &At<String>, label: &str) -> Result<()> {
        let user = self.expand_in(stage, user)?;
        self.commit(stage, format!("USER {user}"), label, false);
        stage.config.config.user = Some(user);
        Ok(())
    }

    fn workdir(
        &self,
        stage: &mut Stage,
        w: &At<String>,
        label: &str,
        named: impl Fn(String) -> String,
    ) -> Result<()> {
        let requested = self.expand_in(stage, w)?;
        let wd = paths::join(stage.workdir(), &requested);
        stage.config.config.working_dir = Some(wd.clone());
        let layer = wd != "/";
        if layer {
            // The directory belongs to the user in force, as WORKDIR makes it.
            let desc = stage.prefix(&named(format!("WORKDIR {wd}")));
            let user = stage.config.config.user.as_deref();
            let st = steps::workdir(&stage.state, &wd, user, desc)
                .map_err(|e| Error::at(w.line, e.to_string()))?;
            stage.state = stage.finish(st);
        }
        self.commit(stage, format!("WORKDIR {wd}"), label, layer);
        Ok(())
    }

    fn run(
        &mut self,
        stage: &mut Stage,
        run: &RunStep,
        label: &str,
        named: impl Fn(String) -> String,
    ) -> Result<()> {
        let (args, shown) = match &run.command {
            Command::Shell(s) => {
                let mut args = shell_of(stage);
                args.push(s.clone());
                (args, s.clone())
            }
            Command::Exec(v) => (v.clone(), json_list(v)),
        };
        let mut env = stage.config.config.env.clone().unwrap_or_default();
        for (k, v) in &stage.env_args {
            if stage.config.config.env_get(k).is_none() {
                env.push(format!("{k}={v}"));
            }
        }
        let network = match run.network {
            Some(n) => n,
            None => default_network(&self.req.options)?,
        };
        let mut mounts = Vec::with_capacity(run.mounts.len());
        for (n, m) in run.mounts.iter().enumerate() {
            mounts.push(self.mount(stage, m, n)?);
        }
        let desc = stage.prefix(&named(format!("RUN {shown}")));
        let mut b = ExecBuilder::new(&stage.state, args.clone())
            .env(env)
            .proxy_env(self.proxy_env())
            .cwd(stage.workdir().to_owned())
            .user(stage.config.config.user.clone().unwrap_or_default())
            .network(network)
            .security(run.security.unwrap_or(SecurityMode::Sandbox));
        for (state, mount) in &mounts {
            b = b.mount(state, mount.clone());
        }
        stage.state = stage.finish(b.build(desc));
        self.commit(stage, format!("RUN {}", args.join(" ")), label, true);
        Ok(())
    }

    /// One mount of a `run` step → the filesystem to mount and the mount, as `RUN --mount`
    /// lowers the same options.
    fn mount(&mut self, stage: &Stage, m: &At<MountSpec>, n: usize) -> Result<(State, Mount)> {
        let line = m.line;
        let dest_of = |t: &str| paths::join(stage.workdir(), t);
        let mount_point = |t: &str| -> Result<String> {
            let dest = dest_of(t);
            if dest == "/" {
                return Err(Error::at(
                    line,
                    format!("invalid mount target {t:?}: a mount cannot cover the root filesystem"),
                ));
            }
            Ok(dest)
        };
        let mount = |dest: String, readonly: bool, kind: MountKind| Mount {
            input: None,
            selector: String::new(),
            dest,
            readonly,
            kind,
        };
        Ok(match &m.value {
            MountSpec::Cache {
                target,
                id,
                sharing,
                from,
                source,
                readonly,
                mode,
                uid,
                gid,
            } => {
                let target = self.expand_str(stage, target).map_err(|e| e.or_at(line))?;
                let seed = match from {
                    Some(f) => self.state_of_from(stage, &at(f, line))?,
                    None => State::scratch(),
                };
                let kind = MountKind::Cache {
                    // The id `RUN --mount=type=cache,target=T` gets: T cleaned, so both
                    // frontends share the directory.
                    id: self
                        .expand_opt(stage, id, line)?
                        .unwrap_or_else(|| paths::clean(&target)),
                    sharing: *sharing,
                    mode: mode.unwrap_or(0o755),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                };
                let mut mt = mount(mount_point(&target)?, *readonly, kind);
                if from.is_some() {
                    mt.selector = paths::clean_abs(
                        self.expand_opt(stage, source, line)?
                            .as_deref()
                            .unwrap_or("/"),
                    );
                }
                (seed, mt)
            }
            MountSpec::Secret {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            } => {
                let id = self.expand_str(stage, id).map_err(|e| e.or_at(line))?;
                let target = self.expand_opt(stage, target, line)?;
                let env = self.expand_opt(stage, env, line)?;
                // With `env` and no target the secret is an environment variable only.
                let dest = match (&target, &env) {
                    (Some(t), _) => dest_of(t),
                    (None, Some(_)) => String::new(),
                    (None, None) => format!("/run/secrets/{}", paths::base(&id)),
                };
                let kind = MountKind::Secret {
                    id,
                    required: *required,
                    mode: mode.unwrap_or(0o400),
                    uid: uid.unwrap_or(0),
                    gid: gid.unwrap_or(0),
                    env,
                };
                (State::scratch(), mount(dest, true, kind))
            }
            MountSpec::Bind {
                target,
                from,
                source,
                readonly,
            } => {
                let target = self.expand_str(stage, target).map_err(|e| e.or_at(line))?;
                let state = match from {
                    Some(f) => self.state_of_from(stage, &at(f, line))?,
                    None => self.context()?,
                };
                let mut mt = mount(mount_point(&target)?, *readonly, MountKind::Bind);
                mt.selector = paths::clean_abs(
                    self.expand_opt(stage, source, line)?
                        .as_deref()
                        .unwrap_or("/"),
                );
                (state, mt)
            }
            MountSpec::Tmpfs { target, size } => {
                let target = self.expand_str(stage, target).map_err(|e| e.or_at(line))?;
                let kind = MountKind::Tmpfs { size: *size };
                (State::scratch(), mount(mount_point(&target)?, false, kind))
            }
            MountSpec::Ssh {
                id,
                target,
                required,
            } => {
                let dest = self
                    .expand_opt(stage, target, line)?
                    .map(|t| dest_of(&t))
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
                let kind = MountKind::Ssh {
                    id: self
                        .expand_opt(stage, id, line)?
                        .filter(|i| !i.is_empty())
                        .unwrap_or_else(|| "default".to_owned()),
                    required: *required,
                    mode: kiln_graph::SSH_DEFAULT_MODE,
                    uid: 0,
                    gid: 0,
                };
                (State::scratch(), mount(dest, true, kind))
            }
        })
    }

    fn copy(
        &mut self,
        stage: &mut Stage,
        c: &CopyStep,
        label: &str,
        named: impl Fn(String) -> String,
    ) -> Result<()> {
        let line = stage.line;
        let sources = c
            .sources
            .iter()
            .map(|s| self.expand_str(stage, s))
            .collect::<Result<Vec<_>>>()?;
        if let Some(url) = sources.iter().find(|s| is_remote(s)) {
            return Err(Error::unsupported(
                Some(line),
                format!("copy cannot fetch {url:?}: copy takes paths of the context or of `from`"),
            ));
        }
        let dest = self.expand_in(stage, &c.to)?;
        let chown = c
            .chown
            .as_deref()
            .map(|w| self.expand_str(stage, w))
            .transpose()?;
        let chmod = c
            .chmod
            .as_deref()
            .map(|w| self.expand_str(stage, w))
            .transpose()?;
        let exclude = c
            .exclude
            .iter()
            .map(|s| self.expand_str(stage, s))
            .collect::<Result<Vec<_>>>()?;
        let owner = chown.as_deref().map(parse_chown).transpose()?;
        let mode = chmod.as_deref().map(parse_chmod).transpose()?;
        let source_state = match &c.from {
            Some(f) => self.state_of_from(stage, f)?,
            None => self.context()?,
        };
        let dest_path = paths::dest_in_workdir(stage.workdir(), &dest);
        // `link` copies onto an empty filesystem merged over the stage, as COPY --link (only
        // without a mode, as BuildKit).
        let link = c.link && chmod.is_none();
        let base = if link {
            State::scratch()
        } else {
            stage.state.clone()
        };
        let mut fb = FileBuilder::new(&base);
        for src in &sources {
            let mut action = CopyAction::new(None, &paths::clean_abs(src), &dest_path);
            action.owner = owner.clone();
            action.mode = mode.clone();
            action.exclude_patterns = exclude.clone();
            fb = fb.copy(&source_state, action);
        }
        let mut text = String::from("COPY");
        if let Some(f) = &c.from {
            text.push_str(&format!(" --from={}", f.value));
        }
        if let Some(o) = &chown {
            text.push_str(&format!(" --chown={o}"));
        }
        if let Some(m) = &chmod {
            text.push_str(&format!(" --chmod={m}"));
        }
        text.push_str(&format!(" {} {dest}", sources.join(" ")));
        let desc = stage.prefix(&named(text.clone()));
        let copied = stage.finish(fb.build(desc.clone()));
        stage.state = if link {
            stage.finish(steps::link(stage.state.clone(), copied, &desc))
        } else {
            copied
        };
        self.commit(stage, text, label, true);
        Ok(())
    }

    /// `[stage.NAME.image]`: the result's config, after the steps (none of them sees it).
    fn image_config(&self, stage: &mut Stage, image: &ImageSpec) -> Result<()> {
        let cfg = &mut stage.config.config;
        if let Some(e) = &image.entrypoint {
            cfg.entrypoint = Some(command_args(
                cfg.shell.as_deref(),
                &stage.platform,
                &e.value,
            ));
            // docker drops a CMD inherited from the base when ENTRYPOINT is set.
            if image.cmd.is_none() {
                cfg.cmd = None;
            }
        }
        if let Some(c) = &image.cmd {
            cfg.cmd = Some(command_args(
                cfg.shell.as_deref(),
                &stage.platform,
                &c.value,
            ));
        }
        let env = cfg.env.clone().unwrap_or_default();
        let ex = |w: &At<String>| self.expand(&w.value, &env, &self.args, w.line);
        let mut env_set = Vec::new();
        for (k, v) in &image.env {
            env_set.push((k.value.clone(), ex(v)?));
        }
        for (k, v) in env_set {
            cfg.env_set(&k, &v);
        }
        if let Some((key, _)) = image.env.last() {
            check_variables(stage, key.line)?;
        }
        let cfg = &mut stage.config.config;
        if let Some(u) = &image.user {
            cfg.user = Some(ex(u)?);
        }
        if let Some(w) = &image.workdir {
            let current = cfg.working_dir.clone().filter(|w| !w.is_empty());
            cfg.working_dir = Some(paths::join(current.as_deref().unwrap_or("/"), &ex(w)?));
        }
        for (k, v) in &image.labels {
            let value = ex(v)?;
            cfg.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.value.clone(), value);
        }
        for p in &image.expose {
            for port in parse_port(&ex(p)?).map_err(|e| e.or_at(p.line))? {
                cfg.exposed_ports
                    .get_or_insert_with(BTreeMap::new)
                    .insert(port, EmptyObject {});
            }
        }
        for v in &image.volumes {
            let path = ex(v)?;
            if path.is_empty() {
                return Err(Error::at(v.line, "a volume cannot be an empty path"));
            }
            cfg.volumes
                .get_or_insert_with(BTreeMap::new)
                .insert(path, EmptyObject {});
        }
        if let Some(s) = &image.stopsignal {
            let sig = ex(s)?;
            check_signal(&sig).map_err(|e| e.or_at(s.line))?;
            cfg.stop_signal = Some(sig);
        }
        if let Some(h) = &image.healthcheck {
            cfg.healthcheck = Some(healthcheck(&h.value));
        }
        Ok(())
    }

    /// The filesystem a `from` of a step of `stage` names.
    fn state_of_from(&mut self, stage: &Stage, word: &At<String>) -> Result<State> {
        let line = word.line;
        let r = self.resolve_ref(word)?;
        match r {
            Ref::Scratch => Ok(State::scratch()),
            Ref::Stage(j) => self.done[j]
                .as_ref()
                .map(|s| s.state.clone())
                .ok_or_else(|| Error::at(line, "internal error: a needed stage was not built")),
            Ref::Named(name) => Ok(self
                .named_state(&name, &stage.platform)
                .map_err(|e| e.or_at(line))?
                .0),
            Ref::Image(reference) => {
                let img = self
                    .resolve_image(&reference, &stage.platform)
                    .map_err(|e| e.or_at(line))?;
                Ok(img.state(&stage.platform, format!("FROM {}", img.pinned)))
            }
        }
    }

    /// The config of image `reference` for `platform`, asked once per pair.
    fn resolve_image(&mut self, reference: &str, platform: &Platform) -> Result<ResolvedImage> {
        let host = self.host;
        Ok(self
            .images
            .get_or_resolve(reference, platform, |r, p| host.resolve_image_config(r, p))?)
    }

    /// A `--build-context`: an image (`docker-image://`, `oci-layout://`) or a directory the
    /// host serves under a name (`local:NAME`).
    fn named_state(&mut self, name: &str, platform: &Platform) -> Result<(State, ImageConfig)> {
        let value = self
            .named
            .get(&context_key(name))
            .cloned()
            .unwrap_or_default();
        let image = value
            .strip_prefix("docker-image://")
            .map(str::to_owned)
            .or_else(|| value.starts_with(LAYOUT_SCHEME).then(|| value.clone()));
        if let Some(reference) = image {
            let img = self.resolve_image(&reference, platform)?;
            let desc = format!("[context {name}] FROM {}", img.pinned);
            return Ok((img.state(platform, desc), img.config));
        }
        let Some(local) = value.strip_prefix("local:") else {
            return Err(Error::unsupported(
                None,
                format!(
                    "the build context {name:?} ({value}) is not supported by the spec frontend: \
                     use a directory, docker-image:// or oci-layout://"
                ),
            ));
        };
        let state = State::local(
            LocalSource {
                name: local.to_owned(),
                include_patterns: Vec::new(),
                exclude_patterns: Vec::new(),
            },
            format!("[context {name}] load from client"),
        );
        Ok((state, ImageConfig::scratch(platform)))
    }

    /// The build context with its ignore file applied; made on first use.
    fn context(&mut self) -> Result<State> {
        if let Some(s) = &self.context {
            return Ok(s.clone());
        }
        let state = State::local(
            LocalSource {
                name: context::MAIN.to_owned(),
                include_patterns: Vec::new(),
                exclude_patterns: self.read_ignore_patterns()?,
            },
            "[internal] load build context",
        );
        self.context = Some(state.clone());
        Ok(state)
    }

    /// The patterns of the build file's ignore file ([`context::ignore_file`]): the Dockerfile
    /// frontend's rule, so a context is the same source (and the same cache key) for both.
    fn read_ignore_patterns(&self) -> Result<Vec<String>> {
        let read = |context: &str, path: &str| self.host.read_context_file(context, path);
        match context::ignore_file(&self.req.filename, read)? {
            None => Ok(Vec::new()),
            Some(file) => kiln_ignore::read_ignore_file(&file.text)
                .map_err(|e| Error::invalid(format!("failed to read {}: {e}", file.path))),
        }
    }

    /// Proxy settings given as build args, which RUN sees without being keyed on them.
    fn proxy_env(&self) -> Vec<String> {
        request::proxy_env(&self.req.build_args)
    }

    /// A history entry naming the step (`label`: `stage/step`).
    fn commit(&self, stage: &mut Stage, text: String, label: &str, layer: bool) {
        stage.config.history.push(History {
            created: self.created.clone(),
            created_by: Some(format!("{text} # {label}")),
            comment: Some(HISTORY_COMMENT.to_owned()),
            empty_layer: !layer,
        });
    }
}

impl Stage {
    /// `text` with the step prefix (`[build 2/5] `), advancing the counter.
    fn prefix(&mut self, text: &str) -> String {
        self.step_index += 1;
        let width = self.step_total.to_string().len();
        format!(
            "[{} {:>width$}/{}] {text}",
            self.name, self.step_index, self.step_total
        )
    }

    fn workdir(&self) -> &str {
        self.config
            .config
            .working_dir
            .as_deref()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
    }

    /// A new vertex of this stage: its line, and the cache bypass when asked.
    fn finish(&self, state: State) -> State {
        let state = state.with_source(&self.file, self.line);
        if self.ignore_cache {
            state.ignore_cache(true)
        } else {
            state
        }
    }
}

/// The `--build-context` options (`context:NAME`) by normalized name.
fn named_contexts(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    context::named(options)
        .map(|(name, value)| (context_key(name), value.to_owned()))
        .collect()
}

/// Fails at `line` when the stage holds more than [`MAX_VARIABLES`] variables.
fn check_variables(stage: &Stage, line: u32) -> Result<()> {
    let count = stage.config.config.env.as_ref().map_or(0, Vec::len) + stage.env_args.len();
    if count > MAX_VARIABLES {
        return Err(Error::at(
            line,
            format!("more than {MAX_VARIABLES} variables (env and args) in one stage"),
        ));
    }
    Ok(())
}

fn at(value: &str, line: u32) -> At<String> {
    At {
        value: value.to_owned(),
        line,
    }
}

/// Sets `key` in ordered pairs, replacing in place.
fn set_pair(pairs: &mut Vec<(String, String)>, key: &str, value: String) {
    match pairs.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => pairs.push((key.to_owned(), value)),
    }
}

/// The stage's shell, `/bin/sh -c` by default.
fn shell_of(stage: &Stage) -> Vec<String> {
    default_shell(stage.config.config.shell.as_deref(), &stage.platform)
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| v.join(" "))
}

/// The network of a run step without its own: the build's `--network`
/// (`force-network-mode`), else the default.
fn default_network(options: &BTreeMap<String, String>) -> Result<NetworkMode> {
    match options.get("force-network-mode").map(|v| v.trim()) {
        None | Some("") | Some("sandbox") | Some("default") => Ok(NetworkMode::Default),
        Some("none") => Ok(NetworkMode::None),
        Some("host") => Ok(NetworkMode::Host),
        Some(other) => Err(Error::invalid(format!(
            "invalid --network {other:?}: expected default, none or host"
        ))),
    }
}

/// `user[:group]` → owner (see [`perms::parse_chown`]).
fn parse_chown(s: &str) -> Result<Chown> {
    perms::parse_chown(s).map_err(|e| Error::invalid(e.to_string()))
}

/// `chmod`: octal up to 7777, else a symbolic mode (see [`perms::parse_chmod`]).
fn parse_chmod(s: &str) -> Result<Chmod> {
    perms::parse_chmod(s).map_err(|e| Error::invalid(e.to_string()))
}

/// URLs and git references, which `copy` refuses.
fn is_remote(src: &str) -> bool {
    ["http://", "https://", "git@", "git://", "ssh://"]
        .iter()
        .any(|p| src.starts_with(p))
}
