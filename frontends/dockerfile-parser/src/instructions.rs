//! Parsed nodes → typed instructions (BuildKit's `frontend/dockerfile/instructions`).
//!
//! Values are kept as written (quotes, `$VAR`): BuildKit expands them per stage at dispatch
//! time, with the ARG/ENV values known then. [`KeyValue::expand`] and [`Arg::expand`] do that
//! step with a [`Lexer`]. Unknown keywords become [`Instruction::Unknown`], not errors, so the
//! frontend can offer them to instruction plugins.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::parser::{parse_heredoc, Heredoc, Node, Parsed};
use crate::shell::{Env, Lexer};
use crate::Error;

/// A command in shell form (run through the stage's SHELL) or exec form (JSON array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

impl CommandLine {
    fn from_node(node: &Node) -> CommandLine {
        if node.json {
            CommandLine::Exec(node.args.clone())
        } else {
            CommandLine::Shell(node.args.join(" "))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    pub image: String,
    /// `AS name`, lower-cased like BuildKit.
    pub stage_name: Option<String>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    /// The name `type=` takes.
    pub fn name(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// One `--mount=` of RUN, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountType,
    pub target: Option<String>,
    pub source: Option<String>,
    pub from: Option<String>,
    /// `None` when not given: the default depends on the type (bind: read-only).
    pub read_only: Option<bool>,
    pub id: Option<String>,
    pub sharing: Option<CacheSharing>,
    pub required: Option<bool>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<String>,
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    Sandbox,
    Insecure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub command: CommandLine,
    /// The `--mount` values as written, in order.
    pub mounts_raw: Vec<String>,
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    pub security: Option<Security>,
    /// `--device` values (CDI devices), in order.
    pub devices: Vec<Device>,
    /// Heredoc bodies (tab-stripped for `<<-`).
    pub heredocs: Vec<Heredoc>,
}

/// A CDI device of `RUN --device=NAME[,required[=BOOL]]`, as BuildKit's `ParseDevice` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `vendor.com/class=name`, `vendor.com/class` (the first device of the class) or
    /// `vendor.com/class=*` (all of them).
    pub name: String,
    /// Fail when no such device is registered (otherwise the step runs without it).
    pub required: bool,
}

/// Inline file content for COPY/ADD from a heredoc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The heredoc name, used as the file name.
    pub path: String,
    pub data: String,
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub sources: Vec<String>,
    pub source_contents: Vec<SourceContent>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub sources: Vec<String>,
    pub source_contents: Vec<SourceContent>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: Option<bool>,
    pub unpack: Option<bool>,
}

/// One ENV or LABEL pair, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Legacy `ENV key value` form (no `=`).
    pub no_delim: bool,
}

impl KeyValue {
    /// Key and value with variables expanded and quotes removed, as BuildKit dispatches them.
    pub fn expand<E: Env + ?Sized>(
        &self,
        lexer: &Lexer,
        env: &E,
    ) -> Result<(String, String), Error> {
        Ok((
            lexer.process_word(&self.key, env)?,
            lexer.process_word(&self.value, env)?,
        ))
    }
}

/// One `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    pub name: String,
    /// The default as written (quotes kept).
    pub default: Option<String>,
}

impl Arg {
    /// The default with variables expanded and quotes removed.
    pub fn expand<E: Env + ?Sized>(&self, lexer: &Lexer, env: &E) -> Result<Option<String>, Error> {
        self.default
            .as_deref()
            .map(|d| lexer.process_word(d, env))
            .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Cmd {
        command: CommandLine,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From(From),
    Run(Run),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    /// SHELL, always exec form.
    Shell(Vec<String>),
    Copy(Copy),
    Add(Add),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Arg(Vec<Arg>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Onbuild {
        /// The trigger's text (BuildKit stores and re-parses this in child builds).
        expression: String,
        trigger: Box<Instruction>,
    },
    Maintainer(String),
    /// A keyword this crate does not know; left to instruction plugins.
    Unknown {
        keyword: String,
        /// Everything after the keyword on the (joined) line, flags included.
        args_text: String,
        node: Box<Node>,
    },
}

/// Every node of a parsed file, in order; stops at the first malformed instruction.
pub fn parse_instructions(parsed: &Parsed) -> Result<Vec<Instruction>, Error> {
    parsed.nodes.iter().map(parse_instruction).collect()
}

/// One node → its typed instruction. Errors carry the node's first line.
pub fn parse_instruction(node: &Node) -> Result<Instruction, Error> {
    parse_inner(node).map_err(|message| Error::Instruction {
        line: node.start_line,
        text: node
            .source
            .lines()
            .next()
            .unwrap_or(node.original.as_str())
            .to_string(),
        message: crate::short_message(message),
    })
}

type R<T> = Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Str,
    /// May be repeated; each value kept.
    Strings,
}

/// Flag values of one instruction, validated like BuildKit's `bflag`.
struct Flags {
    values: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    fn parse(node: &Node, allowed: &[(&'static str, Kind)]) -> R<Flags> {
        let mut values: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for raw in &node.flags {
            let Some(body) = raw.strip_prefix("--") else {
                return Err(format!("arg should start with -- : {raw}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, kind)) = allowed.iter().find(|(n, _)| *n == name) else {
                if let Some(near) = crate::suggest::closest(name, allowed.iter().map(|(n, _)| *n)) {
                    return Err(format!("unknown flag: --{name} (did you mean --{near}?)"));
                }
                let known: Vec<String> = allowed.iter().map(|(n, _)| format!("--{n}")).collect();
                let hint = if known.is_empty() {
                    format!("{} takes no flags", node.keyword.to_uppercase())
                } else {
                    format!(
                        "{} accepts {}",
                        node.keyword.to_uppercase(),
                        known.join(", ")
                    )
                };
                return Err(format!("unknown flag: --{name} ({hint})"));
            };
            let slot = values.entry(key).or_default();
            if !slot.is_empty() && kind != Kind::Strings {
                return Err(format!("duplicate flag specified: --{name}"));
            }
            let v = match (kind, value) {
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Bool, Some("")) | (Kind::Str | Kind::Strings, None) => {
                    return Err(format!("missing a value on flag: --{name}"))
                }
                (Kind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => "true".to_string(),
                    "false" => "false".to_string(),
                    _ => {
                        return Err(format!(
                            "expecting boolean value for flag --{name}, not: {v}"
                        ))
                    }
                },
                (_, Some(v)) => v.to_string(),
            };
            slot.push(v);
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v == "true")
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

fn exactly_one(node: &Node, name: &str) -> R<String> {
    match node.args.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("{name} requires exactly one argument")),
    }
}

fn at_least_one(node: &Node, name: &str) -> R<()> {
    if node.args.is_empty() {
        Err(format!("{name} requires at least one argument"))
    } else {
        Ok(())
    }
}

fn no_flags(node: &Node) -> R<()> {
    Flags::parse(node, &[]).map(|_| ())
}

fn parse_inner(node: &Node) -> R<Instruction> {
    let name = node.command.to_uppercase();
    Ok(match node.command.as_str() {
        "from" => {
            let flags = Flags::parse(node, &[("platform", Kind::Str)])?;
            let stage_name = match node.args.as_slice() {
                [_] => None,
                [_, as_kw, stage] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = stage.to_lowercase();
                    if !valid_stage_name(&lower) {
                        return Err(format!(
                            "invalid name for build stage: {}, name can't start with a number or contain symbols",
                            crate::go_quote(stage)
                        ));
                    }
                    Some(lower)
                }
                _ => return Err("FROM requires either one or three arguments".to_string()),
            };
            Instruction::From(From {
                image: node.args.first().cloned().unwrap_or_default(),
                stage_name,
                platform: flags.string("platform"),
            })
        }
        "run" => {
            let flags = Flags::parse(
                node,
                &[
                    ("mount", Kind::Strings),
                    ("network", Kind::Str),
                    ("security", Kind::Str),
                    ("device", Kind::Strings),
                ],
            )?;
            if node.args.is_empty() && !node.json {
                return Err("RUN requires at least one argument".to_string());
            }
            let mounts_raw = flags.strings("mount");
            let mounts = mounts_raw
                .iter()
                .map(|m| parse_mount(m))
                .collect::<R<Vec<_>>>()?;
            let network = flags
                .string("network")
                .map(|n| match n.as_str() {
                    "default" => Ok(NetworkMode::Default),
                    "none" => Ok(NetworkMode::None),
                    "host" => Ok(NetworkMode::Host),
                    _ => Err(format!("unsupported network mode {n:?}")),
                })
                .transpose()?;
            let security = flags
                .string("security")
                .map(|s| match s.as_str() {
                    "sandbox" => Ok(Security::Sandbox),
                    "insecure" => Ok(Security::Insecure),
                    _ => Err(format!("unsupported security mode {s:?}")),
                })
                .transpose()?;
            let devices = flags
                .strings("device")
                .iter()
                .map(|d| parse_device(d))
                .collect::<R<Vec<_>>>()?;
            Instruction::Run(Run {
                command: CommandLine::from_node(node),
                mounts_raw,
                mounts,
                network,
                security,
                devices,
                heredocs: chomped(&node.heredocs),
            })
        }
        "cmd" | "entrypoint" => {
            no_flags(node)?;
            let cmd = CommandLine::from_node(node);
            if node.command == "cmd" {
                Instruction::Cmd(cmd)
            } else {
                Instruction::Entrypoint(cmd)
            }
        }
        "shell" => {
            no_flags(node)?;
            at_least_one(node, "SHELL")?;
            if !node.json {
                return Err("SHELL requires the arguments to be in JSON form".to_string());
            }
            Instruction::Shell(node.args.clone())
        }
        "copy" => {
            let flags = Flags::parse(
                node,
                &[
                    ("from", Kind::Str),
                    ("chown", Kind::Str),
                    ("chmod", Kind::Str),
                    ("link", Kind::Bool),
                    ("parents", Kind::Bool),
                    ("exclude", Kind::Strings),
                ],
            )?;
            let (sources, source_contents, dest) = sources_and_dest(node, "COPY")?;
            Instruction::Copy(Copy {
                sources,
                source_contents,
                dest,
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                parents: flags.bool("parents").unwrap_or(false),
                exclude: flags.strings("exclude"),
            })
        }
        "add" => {
            let flags = Flags::parse(
                node,
                &[
                    ("chown", Kind::Str),
                    ("chmod", Kind::Str),
                    ("link", Kind::Bool),
                    ("exclude", Kind::Strings),
                    ("checksum", Kind::Str),
                    ("keep-git-dir", Kind::Bool),
                    ("unpack", Kind::Bool),
                ],
            )?;
            let (sources, source_contents, dest) = sources_and_dest(node, "ADD")?;
            Instruction::Add(Add {
                sources,
                source_contents,
                dest,
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.bool("link").unwrap_or(false),
                exclude: flags.strings("exclude"),
                checksum: flags.string("checksum"),
                keep_git_dir: flags.bool("keep-git-dir"),
                unpack: flags.bool("unpack"),
            })
        }
        "env" | "label" => {
            no_flags(node)?;
            let pairs = key_values(node, &name)?;
            if node.command == "env" {
                Instruction::Env(pairs)
            } else {
                Instruction::Label(pairs)
            }
        }
        "arg" => {
            no_flags(node)?;
            at_least_one(node, "ARG")?;
            let args = node
                .args
                .iter()
                .map(|a| match a.split_once('=') {
                    Some(("", _)) => Err("ARG names can not be blank".to_string()),
                    Some((n, d)) => Ok(Arg {
                        name: n.to_string(),
                        default: Some(d.to_string()),
                    }),
                    None => Ok(Arg {
                        name: a.clone(),
                        default: None,
                    }),
                })
                .collect::<R<Vec<_>>>()?;
            Instruction::Arg(args)
        }
        "workdir" => {
            no_flags(node)?;
            Instruction::Workdir(exactly_one(node, "WORKDIR")?)
        }
        "user" => {
            no_flags(node)?;
            Instruction::User(exactly_one(node, "USER")?)
        }
        "stopsignal" => {
            no_flags(node)?;
            Instruction::StopSignal(exactly_one(node, "STOPSIGNAL")?)
        }
        "maintainer" => {
            no_flags(node)?;
            Instruction::Maintainer(exactly_one(node, "MAINTAINER")?)
        }
        "expose" => {
            no_flags(node)?;
            at_least_one(node, "EXPOSE")?;
            Instruction::Expose(node.args.clone())
        }
        "volume" => {
            no_flags(node)?;
            at_least_one(node, "VOLUME")?;
            let mut vols = Vec::with_capacity(node.args.len());
            for v in &node.args {
                let v = v.trim();
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".to_string());
                }
                vols.push(v.to_string());
            }
            Instruction::Volume(vols)
        }
        "healthcheck" => Instruction::Healthcheck(healthcheck(node)?),
        "onbuild" => {
            no_flags(node)?;
            let Some(nested) = node.nested.as_deref() else {
                return Err("ONBUILD requires at least one argument".to_string());
            };
            match nested.command.as_str() {
                "onbuild" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string())
                }
                "maintainer" | "from" => {
                    return Err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        nested.command.to_uppercase()
                    ))
                }
                _ => {}
            }
            Instruction::Onbuild {
                expression: after_keyword(&node.original, &node.keyword).to_string(),
                // The parser attaches heredoc bodies to the ONBUILD node; the trigger owns them.
                trigger: Box::new(parse_inner(&Node {
                    heredocs: node.heredocs.clone(),
                    ..nested.clone()
                })?),
            }
        }
        _ => Instruction::Unknown {
            keyword: node.keyword.clone(),
            args_text: after_keyword(&node.original, &node.keyword).to_string(),
            node: Box::new(node.clone()),
        },
    })
}

fn after_keyword<'a>(original: &'a str, keyword: &str) -> &'a str {
    let t = original.trim();
    t.strip_prefix(keyword).unwrap_or(t).trim_start()
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn chomped(heredocs: &[Heredoc]) -> Vec<Heredoc> {
    heredocs
        .iter()
        .map(|h| Heredoc {
            content: h.body(),
            ..h.clone()
        })
        .collect()
}

type SourcesAndDest = (Vec<String>, Vec<SourceContent>, String);

fn sources_and_dest(node: &Node, name: &str) -> R<SourcesAndDest> {
    let [srcs @ .., dest] = node.args.as_slice() else {
        return Err(format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined."));
    };
    if srcs.is_empty() {
        return Err(format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined."));
    }
    // JSON-form arguments are plain paths: `<<` there is not a heredoc.
    let heredoc_of = |s: &str| {
        if node.json {
            None
        } else {
            parse_heredoc(s).ok().flatten()
        }
    };
    if heredoc_of(dest).is_some() {
        return Err(format!("{name} cannot accept a heredoc as a destination"));
    }
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    for src in srcs {
        match heredoc_of(src) {
            Some(h) => {
                let body = node
                    .heredocs
                    .iter()
                    .find(|b| b.name == h.name)
                    .map(Heredoc::body)
                    .unwrap_or_default();
                contents.push(SourceContent {
                    path: h.name,
                    data: body,
                    expand: h.expand,
                });
            }
            None => sources.push(src.clone()),
        }
    }
    Ok((sources, contents, dest.clone()))
}

fn key_values(node: &Node, name: &str) -> R<Vec<KeyValue>> {
    if node.args.is_empty() {
        return Err(format!("{name} requires at least one argument"));
    }
    if !node.args.len().is_multiple_of(3) {
        return Err(format!("Bad input to {name}, too many arguments"));
    }
    node.args
        .chunks_exact(3)
        .map(|c| match c {
            [k, _, _] if k.is_empty() => Err(format!("{name} names can not be blank")),
            [k, v, sep] => Ok(KeyValue {
                key: k.clone(),
                value: v.clone(),
                no_delim: sep.is_empty(),
            }),
            _ => Err(format!("Bad input to {name}")),
        })
        .collect()
}

fn healthcheck(node: &Node) -> R<Healthcheck> {
    let Some(kind) = node.args.first() else {
        return Err("HEALTHCHECK requires at least one argument".to_string());
    };
    let rest = node.args.get(1..).unwrap_or_default();
    match kind.to_uppercase().as_str() {
        "NONE" => {
            no_flags(node)?;
            if !rest.is_empty() {
                return Err("HEALTHCHECK NONE takes no arguments".to_string());
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            let flags = Flags::parse(
                node,
                &[
                    ("interval", Kind::Str),
                    ("timeout", Kind::Str),
                    ("start-period", Kind::Str),
                    ("start-interval", Kind::Str),
                    ("retries", Kind::Str),
                ],
            )?;
            if rest.is_empty() {
                return Err("Missing command after HEALTHCHECK CMD".to_string());
            }
            let command = if node.json {
                CommandLine::Exec(rest.to_vec())
            } else {
                CommandLine::Shell(rest.join(" "))
            };
            let interval = |flag: &str| -> R<Option<Duration>> {
                match flags.string(flag) {
                    None => Ok(None),
                    Some(v) if v.is_empty() => Ok(None),
                    Some(v) => {
                        let d = parse_go_duration(&v).map_err(|e| format!("--{flag}: {e}"))?;
                        if !d.is_zero() && d < Duration::from_millis(1) {
                            return Err(format!("Interval {flag} cannot be less than 1ms"));
                        }
                        Ok(Some(d))
                    }
                }
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if n < 0 => return Err(format!("--retries cannot be negative ({n})")),
                    Ok(n) => {
                        Some(u32::try_from(n).map_err(|_| format!("--retries out of range: {v}"))?)
                    }
                    Err(_) => return Err(format!("invalid --retries value: {v:?}")),
                },
            };
            Ok(Healthcheck::Cmd {
                command,
                interval: interval("interval")?,
                timeout: interval("timeout")?,
                start_period: interval("start-period")?,
                start_interval: interval("start-interval")?,
                retries,
            })
        }
        other => Err(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)")),
    }
}

/// Go's `time.ParseDuration`, restricted to non-negative values.
fn parse_go_duration(s: &str) -> R<Duration> {
    let bad = || format!("time: invalid duration {}", crate::go_quote(s));
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        if body
            .trim_start_matches('-')
            .trim_start_matches(['0', '.'])
            .is_empty()
        {
            return Ok(Duration::ZERO);
        }
        return Err(format!("duration cannot be negative: {s}"));
    }
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = body;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(bad());
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let nanos_per = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    crate::go_quote(s)
                ))
            }
            _ => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    crate::go_quote(unit),
                    crate::go_quote(s)
                ))
            }
        };
        total += value * nanos_per;
        rest = next;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("time: invalid duration {}", crate::go_quote(s)));
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Every key `--mount` knows, for "did you mean" hints.
const MOUNT_KEYS: [&str; 19] = [
    "type",
    "readonly",
    "ro",
    "readwrite",
    "rw",
    "required",
    "target",
    "dst",
    "destination",
    "source",
    "src",
    "from",
    "id",
    "sharing",
    "mode",
    "uid",
    "gid",
    "size",
    "env",
];

/// BuildKit's `ParseDevice`: CSV fields; the first bare field (or `name=`) is the device,
/// `required` alone means `required=true`. The name must be a qualified CDI name
/// (`vendor.com/class[=name]`).
fn parse_device(raw: &str) -> R<Device> {
    let mut d = Device {
        name: String::new(),
        required: false,
    };
    for field in raw.split(',').filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("required", None) => d.required = true,
            ("required", Some(v)) => {
                d.required = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "t" => true,
                    "false" | "0" | "f" => false,
                    _ => return Err(format!("invalid value for {key}: {v}")),
                }
            }
            ("name", Some(v)) => {
                if !d.name.is_empty() {
                    return Err(format!("device name already set to {}", d.name));
                }
                d.name = v.to_owned();
            }
            // A CDI name has an `=` of its own (`vendor.com/class=name`): the first field
            // that is no option is the name, whole.
            _ if d.name.is_empty() => d.name = field.to_owned(),
            (_, None) => {
                return Err(format!("invalid field '{field}' must be a key=value pair"));
            }
            _ => {
                let mut message = format!("unexpected key '{key}' in '{field}'");
                if let Some(near) = crate::suggest::closest(&key, ["name", "required"]) {
                    message.push_str(&format!(" (did you mean {near}?)"));
                }
                return Err(message);
            }
        }
    }
    let kind = d.name.split_once('=').map_or(d.name.as_str(), |(k, _)| k);
    match kind.split_once('/') {
        Some((vendor, class)) if !vendor.is_empty() && !class.is_empty() => Ok(d),
        _ => Err(format!(
            "invalid device name {0}: unqualified device {0:?}, missing vendor",
            d.name
        )),
    }
}

fn parse_mount(raw: &str) -> R<Mount> {
    let mut m = Mount {
        kind: MountType::Bind,
        target: None,
        source: None,
        from: None,
        read_only: None,
        id: None,
        sharing: None,
        required: None,
        mode: None,
        uid: None,
        gid: None,
        size: None,
        env: None,
    };
    let fields: Vec<&str> = raw.split(',').filter(|f| !f.trim().is_empty()).collect();
    // The type decides what the other keys mean, so read it first.
    for field in &fields {
        if let Some(("type", v)) = field.split_once('=') {
            m.kind = match v.to_ascii_lowercase().as_str() {
                "bind" => MountType::Bind,
                "cache" => MountType::Cache,
                "tmpfs" => MountType::Tmpfs,
                "secret" => MountType::Secret,
                "ssh" => MountType::Ssh,
                _ => return Err(format!("unsupported mount type {v:?}")),
            };
        }
    }
    let flag_bool = |key: &str, v: Option<&str>| -> R<bool> {
        match v.map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(format!("invalid value for {key}: {other}")),
        }
    };
    let number = |key: &str, v: Option<&str>, radix: u32| -> R<u32> {
        v.and_then(|s| u32::from_str_radix(s, radix).ok())
            .ok_or_else(|| format!("invalid value for {key}: {}", v.unwrap_or("")))
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| -> R<String> {
            v.map(str::to_string)
                .ok_or_else(|| format!("invalid field '{field}' must be a key=value pair"))
        };
        match key.as_str() {
            "type" => {}
            "readonly" | "ro" => m.read_only = Some(flag_bool(&key, value)?),
            "readwrite" | "rw" => m.read_only = Some(!flag_bool(&key, value)?),
            "required" if matches!(m.kind, MountType::Secret | MountType::Ssh) => {
                m.required = Some(flag_bool(&key, value)?)
            }
            "required" => {
                return Err(format!(
                    "unexpected key 'required' for mount type '{}'",
                    m.kind.name()
                ))
            }
            "target" | "dst" | "destination" => m.target = Some(need(value)?),
            "source" | "src" => m.source = Some(need(value)?),
            "from" => m.from = Some(need(value)?),
            "id" => m.id = Some(need(value)?),
            "sharing" => {
                m.sharing = Some(match need(value)?.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    other => return Err(format!("unsupported sharing value {other:?}")),
                })
            }
            "mode" => m.mode = Some(number(&key, value, 8)?),
            "uid" => m.uid = Some(number(&key, value, 10)?),
            "gid" => m.gid = Some(number(&key, value, 10)?),
            "size" if m.kind == MountType::Tmpfs => m.size = Some(need(value)?),
            "env" if m.kind == MountType::Secret => m.env = Some(need(value)?),
            _ => {
                let mut message = format!("unexpected key '{key}' in '{field}'");
                if let Some(near) = crate::suggest::closest(&key, MOUNT_KEYS) {
                    message.push_str(&format!(" (did you mean {near}?)"));
                }
                return Err(message);
            }
        }
    }
    // No `target` is fine for every type: BuildKit mounts bind, cache and tmpfs mounts at the
    // working directory, and secret and ssh mounts have their own defaults.
    validate_mount(&m)?;
    Ok(m)
}

/// The combinations of keys BuildKit's `validateMount` (and its secret and ssh conversions)
/// refuse, with its messages.
fn validate_mount(m: &Mount) -> R<()> {
    let kind = m.kind.name();
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        for (key, set) in [
            ("mode", m.mode.is_some()),
            ("uid", m.uid.is_some()),
            ("gid", m.gid.is_some()),
        ] {
            if set {
                return Err(format!("{key} not allowed for {kind:?} type mounts"));
            }
        }
    }
    match m.kind {
        MountType::Secret => {
            if m.from.is_some() {
                return Err("secret mount should not have a from".into());
            }
            if m.sharing.is_some() {
                return Err("secret mount should not define sharing".into());
            }
            if m.source.is_none() && m.target.is_none() && m.id.is_none() {
                return Err("invalid secret mount. one of source, target required".into());
            }
            if m.source.is_some() && m.id.is_some() {
                return Err("both source and id can't be set".into());
            }
        }
        MountType::Ssh if m.source.is_some() => {
            return Err("ssh does not support source".into());
        }
        MountType::Cache => {}
        _ if m.sharing.is_some() => {
            return Err(format!("invalid cache sharing set for {kind} mount"));
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn one(src: &str) -> Result<Instruction, Error> {
        let p = parse(src).expect("parses");
        parse_instruction(&p.nodes[0])
    }

    fn msg(src: &str) -> String {
        one(src).expect_err("should fail").to_string()
    }

    #[test]
    fn from() {
        assert_eq!(
            one("FROM --platform=linux/arm64 alpine:3 AS Build").unwrap(),
            Instruction::From(From {
                image: "alpine:3".into(),
                stage_name: Some("build".into()),
                platform: Some("linux/arm64".into()),
            })
        );
        assert!(msg("FROM a b").contains("FROM requires either one or three arguments"));
        assert!(msg("FROM a AS 1x").contains("invalid name for build stage"));
        assert!(msg("FROM --foo a").contains("unknown flag: --foo"));
        assert!(msg("FROM --platfrom=x a")
            .contains("unknown flag: --platfrom (did you mean --platform?)"));
    }

    /// BuildKit's `TestParseDevice` cases, and the flag on RUN.
    #[test]
    fn run_devices() {
        let dev = |name: &str, required| Device {
            name: name.into(),
            required,
        };
        for (raw, want) in [
            (
                "vendor1.com/device=foo",
                dev("vendor1.com/device=foo", false),
            ),
            (
                "vendor1.com/device=foo,required",
                dev("vendor1.com/device=foo", true),
            ),
            (
                "vendor1.com/device=foo,required=true",
                dev("vendor1.com/device=foo", true),
            ),
            (
                "vendor1.com/device=foo,required=false",
                dev("vendor1.com/device=foo", false),
            ),
            (
                "name=vendor1.com/device=foo",
                dev("vendor1.com/device=foo", false),
            ),
            (
                "name=vendor1.com/device=foo,required",
                dev("vendor1.com/device=foo", true),
            ),
            ("vendor1.com/device", dev("vendor1.com/device", false)),
        ] {
            assert_eq!(parse_device(raw).unwrap(), want, "{raw}");
        }
        for (raw, err) in [
            (
                "vendor1.com/device=foo,name=vendor2.com/device=bar",
                "device name already set to vendor1.com/device=foo",
            ),
            (
                "invalid-device-name",
                "invalid device name invalid-device-name: unqualified device \"invalid-device-name\", missing vendor",
            ),
            (
                "name=invalid-device-name",
                "invalid device name invalid-device-name: unqualified device \"invalid-device-name\", missing vendor",
            ),
            ("vendor1.com/device=foo,required=maybe", "invalid value for required: maybe"),
            ("vendor1.com/device=foo,bar", "invalid field 'bar' must be a key=value pair"),
            (
                "vendor1.com/device=foo,requird=true",
                "unexpected key 'requird' in 'requird=true' (did you mean required?)",
            ),
        ] {
            assert_eq!(parse_device(raw).unwrap_err(), err, "{raw}");
        }
        let Instruction::Run(r) =
            one("RUN --device=vendor1.com/device=foo --device=x.com/gpu=*,required a").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            r.devices,
            [
                dev("vendor1.com/device=foo", false),
                dev("x.com/gpu=*", true)
            ]
        );
        assert!(msg("RUN --device=nope a").contains("missing vendor"));
    }

    #[test]
    fn run() {
        let Instruction::Run(r) = one(
            "RUN --mount=type=cache,target=/root/.cache,sharing=locked --mount=type=secret,id=tok --network=none echo hi",
        )
        .unwrap() else {
            panic!("not RUN")
        };
        assert_eq!(r.command, CommandLine::Shell("echo hi".into()));
        assert_eq!(r.mounts_raw.len(), 2);
        assert_eq!(r.mounts[0].kind, MountType::Cache);
        assert_eq!(r.mounts[0].sharing, Some(CacheSharing::Locked));
        assert_eq!(r.mounts[1].id.as_deref(), Some("tok"));
        assert_eq!(r.network, Some(NetworkMode::None));
        let Instruction::Run(r) = one("RUN [\"a\", \"b c\"]").unwrap() else {
            panic!()
        };
        assert_eq!(r.command, CommandLine::Exec(vec!["a".into(), "b c".into()]));
        let Instruction::Run(r) = one("RUN <<-EOF\n\techo hi\n\tEOF\n").unwrap() else {
            panic!()
        };
        assert_eq!(r.heredocs[0].content, "echo hi\n");
        assert!(msg("RUN --network=x a").contains("unsupported network mode"));
        assert!(msg("RUN --mount=type=bind,bogus=1 a").contains("unexpected key 'bogus'"));
        assert!(msg("RUN --mount=type=bind,targt=/x a")
            .contains("unexpected key 'targt' in 'targt=/x' (did you mean target?)"));
        assert!(
            msg("RUN --netwrk=host a").contains("unknown flag: --netwrk (did you mean --network?)")
        );
        assert!(msg("RUN --network=host --network=none a").contains("duplicate flag"));
    }

    #[test]
    fn mounts_without_target_parse() {
        // buildx's `RUN --mount=from=binaries cp buildx* /out`: a bind mount (the default type)
        // with no target, which the frontend mounts at the working directory.
        for (flag, kind) in [
            ("--mount=from=binaries", MountType::Bind),
            ("--mount=type=bind,source=dist", MountType::Bind),
            ("--mount=type=cache", MountType::Cache),
            ("--mount=type=tmpfs,size=1m", MountType::Tmpfs),
        ] {
            let Instruction::Run(r) = one(&format!("RUN {flag} cp a /out")).unwrap() else {
                panic!("not RUN")
            };
            assert_eq!(
                (r.mounts[0].kind, r.mounts[0].target.as_deref()),
                (kind, None)
            );
        }
    }

    #[test]
    fn mount_combinations_buildkit_refuses() {
        for (flag, want) in [
            (
                "type=bind,mode=0644",
                "mode not allowed for \"bind\" type mounts",
            ),
            (
                "type=tmpfs,uid=1",
                "uid not allowed for \"tmpfs\" type mounts",
            ),
            ("gid=1", "gid not allowed for \"bind\" type mounts"),
            (
                "type=bind,required",
                "unexpected key 'required' for mount type 'bind'",
            ),
            (
                "type=secret,id=a,from=b",
                "secret mount should not have a from",
            ),
            (
                "type=secret,id=a,sharing=locked",
                "secret mount should not define sharing",
            ),
            (
                "type=secret",
                "invalid secret mount. one of source, target required",
            ),
            (
                "type=secret,id=a,source=b",
                "both source and id can't be set",
            ),
            ("type=ssh,source=x", "ssh does not support source"),
            (
                "type=tmpfs,sharing=private",
                "invalid cache sharing set for tmpfs mount",
            ),
        ] {
            let m = msg(&format!("RUN --mount={flag} true"));
            assert!(m.contains(want), "{flag}: {m}");
        }
        // What they allow.
        for flag in [
            "type=cache,mode=0700,uid=1,gid=2,sharing=locked",
            "type=secret,source=npmrc,target=/root/.npmrc,mode=0444,required",
            "type=ssh,id=gh,uid=1000,required=false",
        ] {
            one(&format!("RUN --mount={flag} true")).unwrap_or_else(|e| panic!("{flag}: {e}"));
        }
    }

    #[test]
    fn cmd_entrypoint_shell() {
        assert_eq!(
            one("CMD echo hi").unwrap(),
            Instruction::Cmd(CommandLine::Shell("echo hi".into()))
        );
        assert_eq!(
            one("ENTRYPOINT [\"/bin/app\"]").unwrap(),
            Instruction::Entrypoint(CommandLine::Exec(vec!["/bin/app".into()]))
        );
        assert_eq!(
            one("SHELL [\"/bin/sh\", \"-c\"]").unwrap(),
            Instruction::Shell(vec!["/bin/sh".into(), "-c".into()])
        );
        assert!(msg("SHELL /bin/sh -c").contains("SHELL requires the arguments to be in JSON form"));
    }

    #[test]
    fn copy_and_add() {
        let Instruction::Copy(c) =
            one("COPY --from=build --chown=1:2 --chmod=755 --link --parents --exclude=*.md --exclude=x a b /dst/").unwrap()
        else {
            panic!()
        };
        assert_eq!(c.sources, vec!["a", "b"]);
        assert_eq!(c.dest, "/dst/");
        assert_eq!(c.from.as_deref(), Some("build"));
        assert!(c.link && c.parents);
        assert_eq!(c.exclude, vec!["*.md", "x"]);
        let Instruction::Copy(c) = one("COPY [\"a b\", \"/d\"]").unwrap() else {
            panic!()
        };
        assert_eq!(c.sources, vec!["a b"]);
        let Instruction::Copy(c) = one("COPY <<EOF /etc/x\nhello $X\nEOF\n").unwrap() else {
            panic!()
        };
        assert_eq!(c.source_contents[0].data, "hello $X\n");
        assert!(c.source_contents[0].expand && c.sources.is_empty());
        assert!(msg("COPY a").contains("COPY requires at least two arguments"));
        assert!(msg("COPY --foo a b").contains("unknown flag: --foo (COPY accepts --from,"));
        assert!(msg("COPY --form=x a b").contains("unknown flag: --form (did you mean --from?)"));
        assert!(msg("COPY --chmdo=1 a b").contains("did you mean --chmod?"));
        assert!(msg("ADD --checksun=x a b").contains("did you mean --checksum?"));
        assert!(msg("HEALTHCHECK --intervl=1s CMD x").contains("did you mean --interval?"));
        assert!(msg("ENV --x=1 a=b").contains("unknown flag: --x (ENV takes no flags)"));
        assert!(msg("COPY --link=maybe a b").contains("expecting boolean value"));
        assert!(msg("COPY --from a b").contains("missing a value on flag: --from"));

        let Instruction::Add(a) =
            one("ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false https://x/y.tar /d")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
        assert_eq!((a.keep_git_dir, a.unpack), (Some(true), Some(false)));
        assert!(msg("ADD --from=x a b").contains("unknown flag: --from"));
    }

    #[test]
    fn env_label_arg() {
        let Instruction::Env(kv) = one("ENV a=\"x y\" b=$a\\ z").unwrap() else {
            panic!()
        };
        let lexer = Lexer::new('\\');
        let env = vec![("a", "x y")];
        assert_eq!(
            kv[0].expand(&lexer, &env).unwrap(),
            ("a".into(), "x y".into())
        );
        assert_eq!(
            kv[1].expand(&lexer, &env).unwrap(),
            ("b".into(), "x y z".into())
        );
        let Instruction::Env(kv) = one("ENV a b c").unwrap() else {
            panic!()
        };
        assert!(kv[0].no_delim && kv[0].value == "b c");
        let Instruction::Label(kv) = one("LABEL \"k\"='v 1'").unwrap() else {
            panic!()
        };
        assert_eq!(
            kv[0].expand(&lexer, &env).unwrap(),
            ("k".into(), "v 1".into())
        );
        assert!(msg("ENV =x").contains("ENV names can not be blank"));
        assert!(msg("ENV").contains("ENV requires at least one argument"));
        let Instruction::Arg(args) = one("ARG a b=\"1 2\"").unwrap() else {
            panic!()
        };
        assert_eq!(
            args[0],
            Arg {
                name: "a".into(),
                default: None
            }
        );
        assert_eq!(
            args[1].expand(&lexer, &env).unwrap().as_deref(),
            Some("1 2")
        );
        assert!(msg("ARG =x").contains("ARG names can not be blank"));
        assert!(msg("ARG").contains("ARG requires at least one argument"));
    }

    #[test]
    fn simple_ones() {
        assert_eq!(
            one("WORKDIR /a b").unwrap(),
            Instruction::Workdir("/a b".into())
        );
        assert_eq!(
            one("USER me:grp").unwrap(),
            Instruction::User("me:grp".into())
        );
        assert_eq!(
            one("STOPSIGNAL SIGKILL").unwrap(),
            Instruction::StopSignal("SIGKILL".into())
        );
        assert_eq!(
            one("MAINTAINER me").unwrap(),
            Instruction::Maintainer("me".into())
        );
        assert_eq!(
            one("EXPOSE 80 443/udp").unwrap(),
            Instruction::Expose(vec!["80".into(), "443/udp".into()])
        );
        assert_eq!(
            one("VOLUME [\"/a\", \"/b\"]").unwrap(),
            Instruction::Volume(vec!["/a".into(), "/b".into()])
        );
        assert_eq!(
            one("VOLUME /a /b").unwrap(),
            Instruction::Volume(vec!["/a".into(), "/b".into()])
        );
        assert!(msg("WORKDIR").contains("WORKDIR requires exactly one argument"));
        assert!(msg("EXPOSE").contains("EXPOSE requires at least one argument"));
        assert!(msg("VOLUME [\"\"]").contains("VOLUME specified can not be an empty string"));
        assert!(msg("USER --x a").contains("unknown flag: --x"));
    }

    #[test]
    fn healthcheck() {
        assert_eq!(
            one("HEALTHCHECK NONE").unwrap(),
            Instruction::Healthcheck(Healthcheck::None)
        );
        let Instruction::Healthcheck(Healthcheck::Cmd { command, interval, timeout, start_period, retries, .. }) =
            one("HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=0s --retries=3 CMD curl -f x").unwrap()
        else {
            panic!()
        };
        assert_eq!(command, CommandLine::Shell("curl -f x".into()));
        assert_eq!(interval, Some(Duration::from_secs(90)));
        assert_eq!(timeout, Some(Duration::from_millis(500)));
        assert_eq!(start_period, Some(Duration::ZERO));
        assert_eq!(retries, Some(3));
        assert!(msg("HEALTHCHECK NONE x").contains("HEALTHCHECK NONE takes no arguments"));
        assert!(msg("HEALTHCHECK CMD").contains("Missing command after HEALTHCHECK CMD"));
        assert!(msg("HEALTHCHECK CONNECT x").contains("Unknown type"));
        assert!(msg("HEALTHCHECK --interval=5 CMD x").contains("missing unit"));
        assert!(msg("HEALTHCHECK --retries=-1 CMD x").contains("cannot be negative"));
        assert!(msg("HEALTHCHECK").contains("HEALTHCHECK requires at least one argument"));
    }

    #[test]
    fn onbuild_and_unknown() {
        let Instruction::Onbuild {
            expression,
            trigger,
        } = one("ONBUILD RUN echo hi").unwrap()
        else {
            panic!()
        };
        assert_eq!(expression, "RUN echo hi");
        assert_eq!(
            *trigger,
            Instruction::Run(Run {
                command: CommandLine::Shell("echo hi".into()),
                mounts_raw: vec![],
                mounts: vec![],
                devices: vec![],
                network: None,
                security: None,
                heredocs: vec![],
            })
        );
        let Instruction::Onbuild { trigger, .. } = one("ONBUILD COPY <<EOF /x\nhi\nEOF\n").unwrap()
        else {
            panic!()
        };
        let Instruction::Copy(c) = *trigger else {
            panic!()
        };
        assert_eq!(c.source_contents[0].data, "hi\n");
        assert!(msg("ONBUILD ONBUILD RUN x").contains("Chaining ONBUILD"));
        assert!(msg("ONBUILD FROM x").contains("FROM isn't allowed as an ONBUILD trigger"));
        assert!(msg("ONBUILD MAINTAINER x").contains("MAINTAINER isn't allowed"));
        let Instruction::Unknown {
            keyword,
            args_text,
            node,
        } = one("Include --x=1 a b").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (keyword.as_str(), args_text.as_str()),
            ("Include", "--x=1 a b")
        );
        assert_eq!(node.flags, vec!["--x=1"]);
    }

    #[test]
    fn errors_carry_the_line() {
        let p = parse("FROM a\n\nCOPY --nope \\\n  a b\n").unwrap();
        let e = parse_instructions(&p).unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert!(e.to_string().contains("COPY --nope"), "{e}");
    }
}
