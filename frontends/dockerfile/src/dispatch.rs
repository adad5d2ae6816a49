//! One instruction → changes to its stage: config fields, history, and graph vertices, with
//! BuildKit's semantics (`dispatch*` functions of `dockerfile2llb`).

use std::collections::BTreeMap;

use dockerfile_parser::instructions::{
    self as ins, CommandLine, Healthcheck as HealthcheckInst, Instruction, MountType,
};
use dockerfile_parser::shell::{Env, Lexer};
use dockerfile_parser::Node;
use kiln_graph::{
    CacheSharing, Chmod, Chown, CopyAction, ExecBuilder, FileAction, FileBuilder, Mount, MountKind,
    NetworkMode, SecurityMode, State,
};
use kiln_plugin_sdk::paths;
use kiln_plugin_sdk::perms::{self, PermsError};
use kiln_plugin_sdk::proto::{InstructionRequest, PluginError};
use kiln_plugin_sdk::{signal, steps};
use kiln_types::image::{EmptyObject, Healthcheck};

use crate::add::AddFlags;
use crate::convert::{check_variables, location, set_pair, Converter, Stage, KNOWN_INSTRUCTIONS};
use crate::error::{Error, Result};
use crate::expansion::Chain;
use crate::{gofmt, lint, suggest};

impl Converter<'_> {
    /// Lowers one instruction onto `stage`.
    pub(crate) fn dispatch(
        &mut self,
        stage: &mut Stage,
        inst: &Instruction,
        node: &Node,
    ) -> Result<()> {
        match inst {
            Instruction::Env(pairs) => {
                // All pairs see the environment from before the instruction (`ENV A=1 B=$A`
                // gives B the old A), as in docker.
                let expanded = self.expand_pairs(stage, pairs)?;
                let mut msg = String::from("ENV");
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    stage.config.config.env_set(&k, &v);
                    check_variables(stage.variable_count())?;
                }
                stage.commit(msg, false);
            }
            Instruction::Label(pairs) => {
                let expanded = self.expand_pairs(stage, pairs)?;
                let mut msg = String::from("LABEL");
                let labels = stage.config.config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    labels.insert(k, v);
                }
                stage.commit(msg, false);
            }
            Instruction::Arg(args) => self.dispatch_arg(stage, args)?,
            Instruction::Workdir(path) => self.dispatch_workdir(stage, path, node)?,
            Instruction::User(user) => {
                let user = self.expand(stage, user)?;
                stage.commit(format!("USER {user}"), false);
                stage.config.config.user = Some(user);
            }
            Instruction::Expose(ports) => self.dispatch_expose(stage, ports)?,
            Instruction::Volume(vols) => {
                let mut list = Vec::with_capacity(vols.len());
                for v in vols {
                    let v = self.expand(stage, v)?;
                    if v.is_empty() {
                        return Err(Error::invalid(
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    list.push(v);
                }
                let volumes = stage
                    .config
                    .config
                    .volumes
                    .get_or_insert_with(BTreeMap::new);
                for v in &list {
                    volumes.insert(v.clone(), EmptyObject {});
                }
                stage.commit(format!("VOLUME {}", gofmt::plain_list(&list)), false);
            }
            Instruction::StopSignal(sig) => {
                let sig = self.expand(stage, sig)?;
                check_signal(&sig)?;
                stage.commit(format!("STOPSIGNAL {sig}"), false);
                stage.config.config.stop_signal = Some(sig);
            }
            Instruction::Shell(shell) => {
                stage.config.config.shell = Some(shell.clone());
                stage.commit(format!("SHELL {}", gofmt::plain_list(shell)), false);
            }
            Instruction::Cmd(cmd) => {
                let args = command_args(stage, cmd);
                stage.commit(format!("CMD {}", gofmt::quoted_list(&args)), false);
                stage.config.config.cmd = Some(args);
                stage.config.config.args_escaped = Some(true);
                stage.cmd_set = true;
            }
            Instruction::Entrypoint(cmd) => {
                let args = command_args(stage, cmd);
                stage.commit(format!("ENTRYPOINT {}", gofmt::quoted_list(&args)), false);
                stage.config.config.entrypoint = Some(args);
                // docker drops a CMD inherited from the base when ENTRYPOINT is set.
                if !stage.cmd_set {
                    stage.config.config.cmd = None;
                }
            }
            Instruction::Healthcheck(hc) => dispatch_healthcheck(stage, hc),
            Instruction::Maintainer(who) => {
                stage.config.author = Some(who.clone());
                stage.commit(format!("MAINTAINER {who}"), false);
            }
            Instruction::Onbuild { expression, .. } => {
                // BuildKit records no history entry for ONBUILD.
                stage
                    .config
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(expression.clone());
            }
            Instruction::Copy(c) => self.dispatch_copy(
                stage,
                CopyParams {
                    add: None,
                    sources: &c.sources,
                    contents: &c.source_contents,
                    dest: &c.dest,
                    from: c.from.as_deref(),
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    link: c.link,
                    parents: c.parents,
                    exclude: &c.exclude,
                },
                node,
            )?,
            Instruction::Add(a) => {
                let flags = self.add_flags(stage, a)?;
                self.dispatch_copy(
                    stage,
                    CopyParams {
                        add: Some(flags),
                        sources: &a.sources,
                        contents: &a.source_contents,
                        dest: &a.dest,
                        from: None,
                        chown: a.chown.as_deref(),
                        chmod: a.chmod.as_deref(),
                        link: a.link,
                        parents: false,
                        exclude: &a.exclude,
                    },
                    node,
                )?
            }
            Instruction::Run(run) => self.dispatch_run(stage, run, node)?,
            Instruction::Unknown {
                keyword, args_text, ..
            } => self.dispatch_unknown(stage, keyword, args_text, node, &Chain::default())?,
            Instruction::From(_) => {
                return Err(Error::invalid(
                    "internal error: FROM dispatched as a command",
                ))
            }
        }
        Ok(())
    }

    fn expand(&self, stage: &Stage, word: &str) -> Result<String> {
        Ok(self.lexer.process_word(word, &stage.scope())?)
    }

    fn expand_pairs(
        &self,
        stage: &Stage,
        pairs: &[ins::KeyValue],
    ) -> Result<Vec<(String, String)>> {
        let scope = stage.scope();
        pairs
            .iter()
            .map(|kv| kv.expand(&self.lexer, &scope).map_err(Error::from))
            .collect()
    }

    /// The progress description: the instruction text with variables expanded, keyword
    /// upper-cased, step prefix added.
    fn describe(&self, stage: &mut Stage, node: &Node, lexer: &Lexer, suffix: &str) -> String {
        let original = node.original.trim();
        let text = lexer
            .process_word(original, &stage.scope())
            .unwrap_or_else(|_| original.to_owned());
        let text = match text.split_once(' ') {
            Some((kw, rest)) => format!("{} {rest}", kw.to_uppercase()),
            None => text.to_uppercase(),
        };
        stage.prefix(&format!("{text}{suffix}"))
    }

    fn dispatch_arg(&self, stage: &mut Stage, args: &[ins::Arg]) -> Result<()> {
        let mut shown = Vec::with_capacity(args.len());
        for arg in args {
            let value = if let Some(v) = self.req.build_args.get(&arg.name) {
                Some(v.clone())
            } else if arg.default.is_some() {
                arg.expand(&self.lexer, &stage.scope())?
            } else {
                // Re-declaring a global ARG brings its value into the stage.
                self.global_args
                    .iter()
                    .find(|(k, _)| *k == arg.name)
                    .map(|(_, v)| v.clone())
            };
            shown.push(match &value {
                Some(v) => format!("{}={v}", arg.name),
                None => arg.name.clone(),
            });
            set_pair(&mut stage.args, &arg.name, value);
            check_variables(stage.variable_count())?;
        }
        stage.commit(format!("ARG {}", shown.join(" ")), false);
        Ok(())
    }

    fn dispatch_workdir(&self, stage: &mut Stage, path: &str, node: &Node) -> Result<()> {
        let requested = self.expand(stage, path)?;
        let wd = paths::join(stage.workdir(), &requested);
        stage.config.config.working_dir = Some(wd.clone());
        let layer = wd != "/";
        if layer {
            // The directory belongs to the user in force.
            let desc = self.describe(stage, node, &self.lexer, "");
            let user = stage.config.config.user.as_deref();
            let st = steps::workdir(&stage.state, &wd, user, desc)
                .map_err(|e| Error::invalid(e.to_string()))?;
            stage.state = stage.finish(st);
        }
        stage.commit(format!("WORKDIR {wd}"), layer);
        Ok(())
    }

    fn dispatch_expose(&self, stage: &mut Stage, ports: &[String]) -> Result<()> {
        // BuildKit sorts the words as written, then expands and parses them in that order.
        let mut words: Vec<&String> = ports.iter().collect();
        words.sort();
        let mut list = Vec::new();
        for p in words {
            for word in self.lexer.process_words(p, &stage.scope())? {
                list.extend(parse_port(&word)?);
            }
        }
        let exposed = stage
            .config
            .config
            .exposed_ports
            .get_or_insert_with(BTreeMap::new);
        for p in &list {
            exposed.insert(p.clone(), EmptyObject {});
        }
        // Go prints the list `[53/udp 80/tcp]` (BuildKit v0.25 and later; a map before).
        stage.commit(format!("EXPOSE [{}]", list.join(" ")), false);
        Ok(())
    }

    fn dispatch_copy(&mut self, stage: &mut Stage, c: CopyParams<'_>, node: &Node) -> Result<()> {
        let name = if c.add.is_some() { "ADD" } else { "COPY" };
        let (sources, dest, chown, chmod, exclude, contents) = {
            let scope = stage.scope();
            let ex = |w: &str| self.lexer.process_word(w, &scope).map_err(Error::from);
            let raw = self
                .lexer
                .clone()
                .with_escape('\\')
                .skip_process_quotes(true);
            let sources = c
                .sources
                .iter()
                .map(|s| ex(s))
                .collect::<Result<Vec<_>>>()?;
            let contents = c
                .contents
                .iter()
                .map(|h| {
                    let data = if h.expand {
                        raw.process_word(&h.data, &scope)?
                    } else {
                        h.data.clone()
                    };
                    Ok((h.path.clone(), data))
                })
                .collect::<Result<Vec<_>>>()?;
            (
                sources,
                ex(c.dest)?,
                c.chown.map(ex).transpose()?,
                c.chmod.map(ex).transpose()?,
                c.exclude
                    .iter()
                    .map(|s| ex(s))
                    .collect::<Result<Vec<_>>>()?,
                contents,
            )
        };
        if c.add.is_none() && sources.iter().any(|s| is_remote(s)) {
            return Err(Error::invalid("source can't be a URL for COPY"));
        }
        let owner = chown.as_deref().map(parse_chown).transpose()?;
        let mode = chmod.as_deref().map(parse_chmod).transpose()?;
        let source_state = match c.from {
            Some(f) => self.state_of_from(f, stage)?,
            None if sources.is_empty() => State::scratch(),
            None => self.context()?,
        };
        // Several sources need no directory-looking destination: BuildKit (unlike docker's
        // classic builder) checks nothing here. Its copy decides per source, at solve time,
        // whether the destination is an existing directory to copy into (`COPY go.mod go.sum
        // ..`, `COPY a b /existing-dir`), so the engine's file op does too.
        let dest_path = paths::dest_in_workdir(stage.workdir(), &dest);

        let mut msg = String::from(name);
        if c.parents {
            msg.push_str(" --parents");
        }
        if let Some(o) = &chown {
            msg.push_str(&format!(" --chown={o}"));
        }
        if let Some(m) = &chmod {
            msg.push_str(&format!(" --chmod={m}"));
        }

        // `--link` copies onto an empty filesystem merged over the stage, so that the layer
        // does not depend on what is below it; BuildKit does it only without --chmod.
        let link = c.link && chmod.is_none();
        let base = if link {
            State::scratch()
        } else {
            stage.state.clone()
        };
        let mut fb = FileBuilder::new(&base);
        for src in &sources {
            msg.push_str(&format!(" {src}"));
            if let Some(flags) = &c.add {
                // URLs and git repositories: fetched by a primitive, then copied like the rest.
                if let Some((fetched, mut action)) =
                    self.remote_add_source(stage, src, &dest_path, flags)?
                {
                    action.owner = owner.clone();
                    action.mode = mode.clone();
                    fb = fb.copy(&fetched, action);
                    continue;
                }
            }
            // A source from the context that `.dockerignore` excludes (BuildKit checks COPY
            // without --from and ADD).
            if c.from.is_none() {
                if let Some(detail) = self
                    .ignore_matcher
                    .as_ref()
                    .and_then(|m| lint::copy_ignored_file(m, src, c.add.is_some()))
                {
                    self.lints
                        .push((lint::Rule::CopyIgnoredFile, node.start_line, detail));
                }
            }
            let (src_path, include) = if c.parents {
                // `a/./b/c` copies `b/c` keeping its parents below the pivot `a`.
                let (parent, pattern) = src.split_once("/./").unwrap_or(("/", src.as_str()));
                let pattern = paths::clean_abs(pattern);
                (
                    paths::clean_abs(parent),
                    vec![pattern.trim_start_matches('/').to_owned()],
                )
            } else {
                (paths::clean_abs(src), Vec::new())
            };
            let mut action = CopyAction::new(None, &src_path, &dest_path);
            action.owner = owner.clone();
            action.mode = mode.clone();
            action.include_patterns = include;
            action.exclude_patterns = exclude.clone();
            action.unpack = c.add.as_ref().is_some_and(AddFlags::unpack_local);
            fb = fb.copy(&source_state, action);
        }
        for (file, data) in contents {
            msg.push_str(&format!(" <<{file}"));
            let file_mode = match &mode {
                None => 0o644,
                Some(Chmod::Octal(m)) => *m,
                Some(Chmod::Symbolic(s)) => {
                    return Err(Error::unsupported(format!(
                        "--chmod={s} on a heredoc source is not supported yet: use an octal mode"
                    )))
                }
            };
            let Some(dir) = dest_path.strip_suffix('/') else {
                // Whether the destination is an existing directory (the document goes into it
                // by name) is known only at solve time: copy the document from a scratch file,
                // as BuildKit does, and let the copy decide.
                let doc = format!("/{file}");
                let scratch = FileBuilder::new(&State::scratch())
                    .action(FileAction::Mkfile {
                        path: doc.clone(),
                        mode: file_mode,
                        data,
                        owner: None,
                    })
                    .build("preparing inline document");
                let mut action = CopyAction::new(None, &doc, &dest_path);
                action.owner = owner.clone();
                action.allow_wildcard = false;
                fb = fb.copy(&scratch, action);
                continue;
            };
            let path = format!("{dir}/{file}");
            if let Some((parent, _)) = path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
                // The copy it stands for creates missing parents of the destination.
                fb = fb.action(FileAction::Mkdir {
                    path: parent.to_owned(),
                    mode: 0o755,
                    make_parents: true,
                    owner: None,
                });
            }
            fb = fb.action(FileAction::Mkfile {
                path,
                mode: file_mode,
                data,
                owner: owner.clone(),
            });
        }
        msg.push_str(&format!(" {dest}"));

        let desc = self.describe(stage, node, &self.lexer, "");
        let copied = stage.finish(fb.build(desc.clone()));
        stage.state = if link {
            // Same step number as the copy: BuildKit shows them as one step.
            stage.finish(steps::link(stage.state.clone(), copied, &desc))
        } else {
            copied
        };
        stage.commit(format!("{msg} # buildkit"), true);
        Ok(())
    }

    fn dispatch_run(&mut self, stage: &mut Stage, run: &ins::Run, node: &Node) -> Result<()> {
        let mut extra: Vec<(State, Mount)> = Vec::new();
        let mut suffix = String::new();
        let args = match &run.command {
            CommandLine::Exec(v) => v.clone(),
            CommandLine::Shell(s) => {
                let mut cmd = s.clone();
                let t = s.trim();
                let single = run.heredocs.len() == 1
                    && t.starts_with("<<")
                    && !t.contains(char::is_whitespace);
                if let (true, Some(h)) = (single, run.heredocs.first()) {
                    suffix = format!(" ({})", summarize_heredoc(&h.content));
                    if h.content.starts_with("#!") && stage.platform.os != "windows" {
                        // A script with a shebang runs as a file, mounted read-only.
                        let script = FileBuilder::new(&State::scratch())
                            .action(FileAction::Mkfile {
                                path: format!("/{}", h.name),
                                mode: 0o755,
                                data: h.content.clone(),
                                owner: None,
                            })
                            .build("preparing inline document");
                        extra.push((
                            script,
                            Mount {
                                input: None,
                                selector: "/".to_owned(),
                                dest: "/dev/pipes/".to_owned(),
                                readonly: true,
                                kind: MountKind::Bind,
                            },
                        ));
                        cmd = format!("/dev/pipes/{}", h.name);
                    } else {
                        cmd = h.content.clone();
                    }
                } else {
                    for h in &run.heredocs {
                        cmd.push('\n');
                        cmd.push_str(&h.content);
                        cmd.push_str(&h.name);
                    }
                }
                let mut args = shell_of(stage);
                args.push(cmd);
                args
            }
        };
        for (n, (m, raw)) in run.mounts.iter().zip(&run.mounts_raw).enumerate() {
            extra.push(self.run_mount(stage, m, raw, n)?);
        }

        let mut env = stage.config.config.env.clone().unwrap_or_default();
        for (k, v) in &stage.args {
            if let (Some(v), None) = (v, stage.config.config.env_get(k)) {
                env.push(format!("{k}={v}"));
            }
        }
        // Proxies travel apart: the engine adds them to the environment (unless the step sets
        // them) but keeps them out of the cache key, as BuildKit does.
        let proxy_env = self.proxy_env();
        let raw = self.lexer.clone().raw_quotes(true).skip_unset_env(true);
        let desc = self.describe(stage, node, &raw, &suffix);
        let mut b = ExecBuilder::new(&stage.state, args.clone())
            .env(env)
            .proxy_env(proxy_env)
            .cwd(stage.workdir().to_owned())
            .user(stage.config.config.user.clone().unwrap_or_default())
            .network(match run.network {
                // `kiln build --network` is the default; a RUN's own flag wins.
                None | Some(ins::NetworkMode::Default) => {
                    crate::run_opts::default_network(&self.req.options)?
                }
                Some(ins::NetworkMode::Host) => NetworkMode::Host,
                Some(ins::NetworkMode::None) => NetworkMode::None,
            })
            .security(match run.security {
                Some(ins::Security::Insecure) => SecurityMode::Insecure,
                _ => SecurityMode::Sandbox,
            })
            .devices(crate::run_opts::devices(&run.devices));
        for (state, mount) in &extra {
            b = b.mount(state, mount.clone());
        }
        let history = format!("RUN {} # buildkit", run_command_string(&args, stage));
        stage.state = stage.finish(b.build(desc));
        stage.commit(history, true);
        Ok(())
    }

    /// One `RUN --mount` (`raw` as written) → the filesystem to mount and the mount.
    fn run_mount(
        &mut self,
        stage: &Stage,
        m: &ins::Mount,
        raw: &str,
        n: usize,
    ) -> Result<(State, Mount)> {
        let ex = |v: &Option<String>| -> Result<Option<String>> {
            v.as_deref().map(|w| self.expand(stage, w)).transpose()
        };
        let (target, source, from, id) = (ex(&m.target)?, ex(&m.source)?, ex(&m.from)?, ex(&m.id)?);
        let dest_of = |t: &str| paths::join(stage.workdir(), t);
        // BuildKit mounts a bind, cache or tmpfs mount without a target at the working
        // directory (a relative target is resolved against it), and refuses one over `/`.
        let mount_point = |t: Option<&str>| -> Result<String> {
            let dest = dest_of(t.unwrap_or(""));
            if dest == "/" {
                return Err(Error::invalid(format!(
                    "invalid mount target {dest:?} in --mount={raw}: a mount cannot cover the \
                     root filesystem; set target= to a directory (without target=, the mount \
                     goes at the WORKDIR)",
                )));
            }
            Ok(dest)
        };
        let uid_gid = (m.uid.unwrap_or(0), m.gid.unwrap_or(0));
        let mount = |dest: String, readonly: bool, kind: MountKind| Mount {
            input: None,
            selector: String::new(),
            dest,
            readonly,
            kind,
        };
        Ok(match m.kind {
            MountType::Bind => {
                let dest = mount_point(target.as_deref())?;
                let state = match &from {
                    Some(f) => self.state_of_from(f, stage)?,
                    None => self.context()?,
                };
                let mut mt = mount(dest, m.read_only.unwrap_or(true), MountKind::Bind);
                mt.selector = paths::clean_abs(source.as_deref().unwrap_or("/"));
                (state, mt)
            }
            MountType::Cache => {
                // `from` (and `source` in it) seeds a cache directory when it is first made.
                let seed = match &from {
                    Some(f) => self.state_of_from(f, stage)?,
                    None => State::scratch(),
                };
                let dest = mount_point(target.as_deref())?;
                let kind = MountKind::Cache {
                    // BuildKit defaults the id to `path.Clean` of the target as written, so
                    // `/go/pkg/mod/` and `/go/pkg/mod` share a cache (`.` for no target).
                    id: id.unwrap_or_else(|| paths::clean(target.as_deref().unwrap_or(""))),
                    sharing: match m.sharing {
                        None | Some(ins::CacheSharing::Shared) => CacheSharing::Shared,
                        Some(ins::CacheSharing::Private) => CacheSharing::Private,
                        Some(ins::CacheSharing::Locked) => CacheSharing::Locked,
                    },
                    mode: m.mode.unwrap_or(0o755),
                    uid: uid_gid.0,
                    gid: uid_gid.1,
                };
                let ro = m.read_only.unwrap_or(false);
                let mut mt = mount(dest, ro, kind);
                if from.is_some() {
                    mt.selector = paths::clean_abs(source.as_deref().unwrap_or("/"));
                }
                (seed, mt)
            }
            MountType::Tmpfs => {
                let dest = mount_point(target.as_deref())?;
                let size = m.size.as_deref().map(parse_size).transpose()?;
                let kind = MountKind::Tmpfs { size };
                (State::scratch(), mount(dest, false, kind))
            }
            MountType::Secret => {
                let env_name = ex(&m.env)?;
                let Some(id) = secret_id(source.as_deref(), id.as_deref(), target.as_deref())
                else {
                    return Err(Error::invalid("secret mount requires an id or a target"));
                };
                // BuildKit: with `env=` and no target the secret is an environment variable only.
                let dest = match (target.as_deref(), &env_name) {
                    (Some(t), _) => dest_of(t),
                    (None, Some(_)) => String::new(),
                    (None, None) => format!("/run/secrets/{}", paths::base(&id)),
                };
                let kind = MountKind::Secret {
                    id,
                    required: m.required.unwrap_or(false),
                    mode: m.mode.unwrap_or(0o400),
                    uid: uid_gid.0,
                    gid: uid_gid.1,
                    env: env_name,
                };
                (State::scratch(), mount(dest, true, kind))
            }
            MountType::Ssh => {
                let dest = target
                    .as_deref()
                    .map(dest_of)
                    .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}"));
                let kind = MountKind::Ssh {
                    // BuildKit: an empty id is the default one.
                    id: id
                        .filter(|i| !i.is_empty())
                        .unwrap_or_else(|| "default".to_owned()),
                    required: m.required.unwrap_or(false),
                    mode: m.mode.unwrap_or(kiln_graph::SSH_DEFAULT_MODE),
                    uid: uid_gid.0,
                    gid: uid_gid.1,
                };
                (State::scratch(), mount(dest, true, kind))
            }
        })
    }

    /// An instruction this frontend does not know, at `node` of the file `chain` points at:
    /// an instruction plugin lowers it, or answers with text to run in its place.
    pub(crate) fn dispatch_unknown(
        &mut self,
        stage: &mut Stage,
        keyword: &str,
        args_text: &str,
        node: &Node,
        chain: &Chain,
    ) -> Result<()> {
        let req = InstructionRequest {
            keyword: keyword.to_owned(),
            args: strip_flags(args_text, node.flags.len()).to_owned(),
            flags: node.flags.clone(),
            location: location(chain.file(&self.req.filename), node.start_line),
            state: State::definition(std::slice::from_ref(&stage.state)),
            config: stage.config.clone(),
            build_args: Converter::args_in_scope(stage),
            accepts_expansion: true,
        };
        let Some(resp) = self.host.lower_instruction(&req)? else {
            // A typo of a Dockerfile instruction gets BuildKit's message and a hint; any other
            // word is an instruction no installed plugin provides.
            let message = match suggest::closest(keyword, KNOWN_INSTRUCTIONS) {
                Some(s) => format!("unknown instruction: {keyword} (did you mean {s}?)"),
                None => format!("unknown instruction {keyword} (no plugin provides it)"),
            };
            return Err(Error::invalid(message));
        };
        if let Some(expansion) = resp.expansion {
            return self.run_expansion(stage, expansion, keyword, node, chain);
        }
        let bad = |why: String| {
            Error::from(PluginError::internal(format!(
                "the instruction plugin for {} returned an unusable graph: {why}",
                keyword.to_uppercase()
            )))
        };
        resp.state.validate().map_err(|e| bad(e.to_string()))?;
        let edge = *resp
            .state
            .outputs
            .first()
            .ok_or_else(|| bad("it has no output".to_owned()))?;
        let new_state = resp.state.state(edge).map_err(|e| bad(e.to_string()))?;
        let layer = new_state.edge() != stage.state.edge();
        stage.state = stage.finish(new_state);
        stage.config = resp.config;
        let created_by = resp
            .history
            .unwrap_or_else(|| node.original.trim().to_owned());
        stage.commit(created_by, layer);
        Ok(())
    }
}

/// The flags and paths of a COPY or ADD.
struct CopyParams<'a> {
    /// ADD's own flags; `None` for COPY.
    add: Option<AddFlags>,
    sources: &'a [String],
    contents: &'a [ins::SourceContent],
    dest: &'a str,
    from: Option<&'a str>,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    link: bool,
    parents: bool,
    exclude: &'a [String],
}

/// The SHELL in force, `/bin/sh -c` by default.
fn shell_of(stage: &Stage) -> Vec<String> {
    match stage.config.config.shell.as_ref().filter(|s| !s.is_empty()) {
        Some(s) => s.clone(),
        None if stage.platform.os == "windows" => vec!["cmd".into(), "/S".into(), "/C".into()],
        None => vec!["/bin/sh".into(), "-c".into()],
    }
}

/// CMD/ENTRYPOINT/HEALTHCHECK arguments: exec form as is, shell form through the SHELL.
fn command_args(stage: &Stage, cmd: &CommandLine) -> Vec<String> {
    match cmd {
        CommandLine::Exec(v) => v.clone(),
        CommandLine::Shell(s) => {
            let mut args = shell_of(stage);
            args.push(s.clone());
            args
        }
    }
}

fn dispatch_healthcheck(stage: &mut Stage, hc: &HealthcheckInst) {
    let nanos = |d: Option<std::time::Duration>| {
        d.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let (test, durations, retries) = match hc {
        HealthcheckInst::None => (vec!["NONE".to_owned()], [None; 4], 0),
        HealthcheckInst::Cmd {
            command,
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
        } => {
            let test = match command {
                CommandLine::Exec(v) => std::iter::once("CMD".to_owned())
                    .chain(v.iter().cloned())
                    .collect(),
                CommandLine::Shell(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
            };
            (
                test,
                [*interval, *timeout, *start_period, *start_interval],
                retries.unwrap_or(0),
            )
        }
    };
    let [interval, timeout, start_period, start_interval] = durations;
    let shown = |d: Option<std::time::Duration>| gofmt::duration(d.unwrap_or_default());
    // Go's `%+v` of BuildKit's HealthcheckConfig.
    stage.commit(
        format!(
            "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
            gofmt::plain_list(&test),
            shown(interval),
            shown(timeout),
            shown(start_period),
            shown(start_interval),
            retries
        ),
        false,
    );
    stage.config.config.healthcheck = Some(Healthcheck {
        test,
        interval: nanos(interval),
        timeout: nanos(timeout),
        start_period: nanos(start_period),
        start_interval: nanos(start_interval),
        retries: u64::from(retries),
    });
}

/// `RUN` history text: `|N K=V ... ` build args prefix, then the argv (BuildKit's
/// `runCommandString`).
fn run_command_string(args: &[String], stage: &Stage) -> String {
    let scope = stage.scope();
    let mut parts: Vec<String> = stage
        .args
        .iter()
        .map(|(k, v)| {
            let value = scope.get(k).or(v.as_deref()).unwrap_or_default();
            format!("{k}={value}")
        })
        .collect();
    if !parts.is_empty() {
        parts.insert(0, format!("|{}", parts.len()));
    }
    parts.extend(args.iter().cloned());
    parts.join(" ")
}

/// `user[:group]` → owner (the SDK's rule, shared with the other frontends).
pub(crate) fn parse_chown(s: &str) -> Result<Chown> {
    perms::parse_chown(s).map_err(|e| Error::invalid(e.to_string()))
}

/// `--chmod`: octal up to 07777, else a symbolic mode (`u+x,go-w`); BuildKit's messages.
pub(crate) fn parse_chmod(s: &str) -> Result<Chmod> {
    perms::parse_chmod(s).map_err(|e| {
        Error::invalid(match e {
            PermsError::BadOctal(_) | PermsError::NoUser(_) => format!(
                "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
            ),
            PermsError::BadMode(_) => format!(
                "invalid chmod parameter: '{s}'. it should be an octal mode or a symbolic mode such as u+x,go-w"
            ),
        })
    })
}

/// The id of a secret mount from its expanded `source`, `id` and `target`, as BuildKit's
/// `dispatchSecret`: `source` names the secret as `id` does (the parser refuses both), else
/// the target's base name (Go's `path.Base`).
pub(crate) fn secret_id(
    source: Option<&str>,
    id: Option<&str>,
    target: Option<&str>,
) -> Option<String> {
    let given = source.or(id).filter(|s| !s.is_empty());
    given
        .or_else(|| target.filter(|t| !t.is_empty()).map(paths::base))
        .map(str::to_owned)
}

/// An EXPOSE word split as BuildKit's `splitParts` does: `[ip:][hostPort:]containerPort[/proto]`
/// → (ip, host port, container port with its protocol). An IPv6 address may hold `:`s: the last
/// two parts are the ports.
pub(crate) fn split_port(raw: &str) -> (&str, &str, &str) {
    let mut parts = raw.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    match (parts.next(), parts.next()) {
        (None, _) => ("", "", container),
        (Some(host), None) => ("", host, container),
        (Some(host), Some(ip)) => (ip, host, container),
    }
}

/// BuildKit's `splitProtoPort`: `80/TCP` → (`TCP`, `80`); the protocol as written, `tcp` when
/// there is none.
pub(crate) fn split_proto_port(container: &str) -> std::result::Result<(&str, &str), String> {
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err("no port specified".to_owned());
    }
    match proto.to_lowercase().as_str() {
        "" => Ok(("tcp", port)),
        "tcp" | "udp" | "sctp" => Ok((proto, port)),
        _ => Err(format!("invalid proto: {proto}")),
    }
}

/// One EXPOSE word → `port/proto` keys (`80`, `80/tcp`, `53/udp`, `8000-8002/tcp`), as
/// BuildKit's `parsePort`. An address and a host port are accepted (the ExposeInvalidFormat
/// check warns about them) and checked, but only the container port reaches the config.
fn parse_port(raw: &str) -> Result<Vec<String>> {
    let (ip, host_port, container) = split_port(raw);
    let (proto, container) = split_proto_port(container)
        .map_err(|e| Error::invalid(format!("invalid port: {raw:?}: {e}")))?;
    // `[::1]` is an IPv6 address in brackets.
    let address = match ip.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .filter(|a| !a.contains(['[', ']']))
            .ok_or_else(|| {
                Error::invalid(format!("invalid IP address {ip}: missing ']' in address"))
            })?,
        None => ip,
    };
    if !address.is_empty() && address.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::invalid(format!("invalid IP address: {address}")));
    }
    let (start, end) = port_range(container)
        .ok_or_else(|| Error::invalid(format!("invalid containerPort: {container}")))?;
    if !host_port.is_empty() {
        let (host_start, host_end) = port_range(host_port)
            .ok_or_else(|| Error::invalid(format!("invalid hostPort: {host_port}")))?;
        // A host range for a single container port is the range to allocate from.
        if end - start != host_end - host_start && end != start {
            return Err(Error::invalid(format!(
                "invalid ranges specified for container and host Ports: {container} and {host_port}"
            )));
        }
    }
    let proto = proto.to_lowercase();
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// `8000` or `8000-9000` → the first and last port (BuildKit's `parsePortRange`): numbers as
/// Go's `ParseInt` reads them, 0 to 65535.
fn port_range(ports: &str) -> Option<(u32, u32)> {
    let number = |p: &str| p.parse::<i64>().ok().and_then(|n| u16::try_from(n).ok());
    let (start, end) = ports.split_once('-').unwrap_or((ports, ports));
    let first = u32::from(number(start)?);
    if start == end {
        return Some((first, first));
    }
    let last = u32::from(number(end)?);
    (last >= first).then_some((first, last))
}

/// STOPSIGNAL values docker accepts (the SDK's rule), with BuildKit's message.
fn check_signal(sig: &str) -> Result<()> {
    if signal::is_stop_signal(sig) {
        Ok(())
    } else {
        Err(Error::invalid(format!("Invalid signal: {sig}")))
    }
}

/// A tmpfs `size=`, read as BuildKit reads it (go-units `RAMInBytes`; the same rules as
/// `kiln build --shm-size`): a decimal number, one optional space, then an optional unit `b`,
/// or `k` `m` `g` `t` `p` (powers of 1024) alone or followed by `b` or `ib`, any case.
fn parse_size(s: &str) -> Result<u64> {
    kiln_types::size::parse_ram_size(s).ok_or_else(|| {
        Error::invalid(format!(
            "invalid size: {s:?} (a number with an optional unit b, k, m, g, t, p, e.g. 64m)"
        ))
    })
}

/// URLs and Git references, which COPY refuses (ADD fetches them, see [`crate::add`]).
fn is_remote(src: &str) -> bool {
    src.starts_with("http://")
        || src.starts_with("https://")
        || src.starts_with("git@")
        || src.starts_with("git://")
        || src.starts_with("ssh://")
}

/// First line of a heredoc, `...` when there are more (BuildKit's `summarizeHeredoc`).
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let mut lines = doc.lines();
    let first = lines.next().unwrap_or_default();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first.to_owned()
    }
}

/// The argument text after the first `count` flag words (quotes respected).
fn strip_flags(text: &str, count: usize) -> &str {
    let mut rest = text.trim_start();
    for _ in 0..count {
        if !rest.starts_with("--") {
            break;
        }
        let mut quote: Option<char> = None;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'') => quote = Some(c),
                (None, c) if c.is_whitespace() => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        rest = rest.get(end..).unwrap_or_default().trim_start();
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::UserRef;

    #[test]
    fn small_parsers() {
        assert_eq!(
            parse_chown("1000:50").unwrap(),
            Chown {
                user: UserRef::Id(1000),
                group: Some(UserRef::Id(50))
            }
        );
        assert_eq!(
            parse_chown("app").unwrap(),
            Chown {
                user: UserRef::Name("app".into()),
                group: None
            }
        );
        assert!(parse_chown(":1").is_err());
        assert_eq!(parse_chmod("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(
            parse_chmod("u+x,go-w").unwrap(),
            Chmod::Symbolic("u+x,go-w".into())
        );
        assert!(parse_chmod("789").is_err());
        assert!(parse_chmod("17777").is_err());
        assert!(parse_chmod("bogus").is_err());
        assert_eq!(parse_port("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_port("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(parse_port("1-2").unwrap(), vec!["1/tcp", "2/tcp"]);
        assert!(parse_port("x").is_err() && parse_port("80/foo").is_err());
        assert!(check_signal("SIGKILL").is_ok() && check_signal("9").is_ok());
        assert!(check_signal("SIGNOPE").is_err() && check_signal("0").is_err());
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(strip_flags("--a=1 --b=\"x y\" rest of it", 2), "rest of it");
        assert_eq!(strip_flags("plain", 0), "plain");
        assert_eq!(summarize_heredoc("a\nb\n"), "a...");
    }
    #[test]
    fn bad_sizes_are_named() {
        // The rules are kiln_types::size's (tested there); here only the message.
        for text in ["10bb", "2ki", "1e3", ""] {
            let e = parse_size(text).unwrap_err();
            assert!(e.to_string().contains("invalid size"), "{text:?}: {e}");
        }
    }
}
