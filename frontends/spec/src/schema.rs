//! The build file's TOML → the typed [`Spec`], every value with its line.
//!
//! The file is read with `toml`'s spanned document (`DeTable`) rather than serde derives, so
//! that every message can say which key, where, and what was expected: an unknown key names the
//! closest known one, a wrong type names the type found. Nothing is expanded or resolved here.

use std::ops::Range;

use kiln_graph::{CacheSharing, NetworkMode, SecurityMode};
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::error::{Error, Result};

/// A value and the 1-based line it is written on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) line: u32,
}

/// A whole build file.
#[derive(Debug)]
pub(crate) struct Spec {
    /// `[args]`: build args and their defaults, in file order.
    pub(crate) args: Vec<(At<String>, String)>,
    /// `[stage.NAME]` tables, in file order.
    pub(crate) stages: Vec<StageSpec>,
}

/// One `[stage.NAME]`.
#[derive(Debug)]
pub(crate) struct StageSpec {
    pub(crate) name: At<String>,
    /// What `--call targets` shows.
    pub(crate) description: Option<String>,
    pub(crate) from: At<String>,
    pub(crate) platform: Option<At<String>>,
    /// Build args the steps see in their environment (a Dockerfile's `ARG NAME` in a stage).
    pub(crate) args: Vec<At<String>>,
    pub(crate) shell: Option<At<Vec<String>>>,
    pub(crate) env: Vec<(At<String>, At<String>)>,
    pub(crate) workdir: Option<At<String>>,
    pub(crate) user: Option<At<String>>,
    pub(crate) steps: Vec<Step>,
    pub(crate) image: ImageSpec,
}

/// One entry of `steps`.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) line: u32,
    /// `name = "..."`: shown in the progress and the image history.
    pub(crate) name: Option<String>,
    pub(crate) kind: StepKind,
}

#[derive(Debug)]
pub(crate) enum StepKind {
    Run(RunStep),
    Copy(CopyStep),
    Env(Vec<(At<String>, At<String>)>),
    Workdir(At<String>),
    User(At<String>),
}

/// A command: a string runs through the stage's shell, a list is the argv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug)]
pub(crate) struct RunStep {
    pub(crate) command: Command,
    pub(crate) mounts: Vec<At<MountSpec>>,
    pub(crate) network: Option<NetworkMode>,
    pub(crate) security: Option<SecurityMode>,
}

/// A mount of a `run` step, fields as written (expanded later).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountSpec {
    Cache {
        target: String,
        id: Option<String>,
        sharing: CacheSharing,
        from: Option<String>,
        source: Option<String>,
        readonly: bool,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Secret {
        id: String,
        target: Option<String>,
        env: Option<String>,
        required: bool,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    Bind {
        target: String,
        from: Option<String>,
        source: Option<String>,
        readonly: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    Ssh {
        id: Option<String>,
        target: Option<String>,
        required: bool,
    },
}

#[derive(Debug)]
pub(crate) struct CopyStep {
    pub(crate) sources: Vec<String>,
    pub(crate) to: At<String>,
    pub(crate) from: Option<At<String>>,
    pub(crate) chown: Option<String>,
    pub(crate) chmod: Option<String>,
    pub(crate) exclude: Vec<String>,
    pub(crate) link: bool,
}

/// `[stage.NAME.image]`: the image config of the stage's result (not what its steps run with).
#[derive(Debug, Default)]
pub(crate) struct ImageSpec {
    pub(crate) entrypoint: Option<At<Command>>,
    pub(crate) cmd: Option<At<Command>>,
    pub(crate) env: Vec<(At<String>, At<String>)>,
    pub(crate) user: Option<At<String>>,
    pub(crate) workdir: Option<At<String>>,
    pub(crate) labels: Vec<(At<String>, At<String>)>,
    pub(crate) expose: Vec<At<String>>,
    pub(crate) volumes: Vec<At<String>>,
    pub(crate) stopsignal: Option<At<String>>,
    pub(crate) healthcheck: Option<At<HealthSpec>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HealthSpec {
    /// `None`: `cmd = "none"` disables the base image's check.
    pub(crate) cmd: Option<Command>,
    pub(crate) interval: Option<u64>,
    pub(crate) timeout: Option<u64>,
    pub(crate) start_period: Option<u64>,
    pub(crate) start_interval: Option<u64>,
    pub(crate) retries: Option<u64>,
}

const TOP_KEYS: &[&str] = &["args", "stage"];
const STAGE_KEYS: &[&str] = &[
    "from",
    "description",
    "platform",
    "args",
    "shell",
    "env",
    "workdir",
    "user",
    "steps",
    "image",
];
const STEP_KINDS: &[&str] = &["run", "copy", "env", "workdir", "user"];
const RUN_KEYS: &[&str] = &[
    "run", "name", "mounts", "cache", "secrets", "network", "security",
];
const COPY_KEYS: &[&str] = &[
    "copy", "name", "to", "from", "chown", "chmod", "exclude", "link",
];
const IMAGE_KEYS: &[&str] = &[
    "entrypoint",
    "cmd",
    "env",
    "user",
    "workdir",
    "labels",
    "expose",
    "volumes",
    "stopsignal",
    "healthcheck",
];
const HEALTH_KEYS: &[&str] = &[
    "cmd",
    "interval",
    "timeout",
    "start_period",
    "start_interval",
    "retries",
];
const MOUNT_TYPES: &[&str] = &["cache", "secret", "bind", "tmpfs", "ssh"];

/// Most stages, and most steps in one build file (a Dockerfile's instruction limit): a build
/// file is written by hand; the caps keep a hostile one from costing more than a real one could.
pub(crate) const MAX_STAGES: usize = 256;
pub(crate) const MAX_STEPS: usize = 4096;

type Entry<'a, 'i> = (&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>);

/// Reads a build file.
pub(crate) fn parse(source: &str) -> Result<Spec> {
    let r = Reader::new(source);
    let doc = DeTable::parse(source).map_err(|e| {
        let line = e.span().map_or(1, |s| r.line(s));
        Error::at(line, format!("invalid TOML: {}", e.message().trim_end()))
    })?;
    let top = doc.get_ref();
    r.known_keys(top, "the top level", TOP_KEYS)?;
    let mut args = Vec::new();
    if let Some((_, v)) = lookup(top, "args") {
        for (k, val) in entries(r.table(v, "args")?) {
            let name = r.key(k);
            check_arg_name(&name)?;
            let value = r.scalar(val, &format!("args.{}", name.value))?;
            args.push((name, value.value));
        }
    }
    let mut stages = Vec::new();
    if let Some((_, v)) = lookup(top, "stage") {
        for (k, val) in entries(r.table(v, "stage")?) {
            stages.push(r.stage(k, val)?);
            if stages.len() > MAX_STAGES {
                return Err(Error::at(
                    r.line(k.span()),
                    format!("more than {MAX_STAGES} stages in one build file"),
                ));
            }
        }
    }
    if let Some(step) = stages.iter().flat_map(|s| &s.steps).nth(MAX_STEPS) {
        return Err(Error::at(
            step.line,
            format!("more than {MAX_STEPS} steps in one build file"),
        ));
    }
    if stages.is_empty() {
        return Err(Error::invalid(
            "the build file has no stage: add a [stage.NAME] table with at least `from = \"...\"`",
        ));
    }
    Ok(Spec { args, stages })
}

/// The entries of `t` in the order they are written (the map itself is sorted by key).
fn entries<'a, 'i>(t: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
    let mut all: Vec<Entry<'a, 'i>> = t.iter().collect();
    all.sort_by_key(|(k, _)| k.span().start);
    all
}

fn lookup<'a, 'i>(t: &'a DeTable<'i>, key: &str) -> Option<Entry<'a, 'i>> {
    t.iter().find(|(k, _)| k.get_ref().as_ref() == key)
}

/// `NAME` of an arg or variable: what a `$NAME` reference can name.
fn check_arg_name(name: &At<String>) -> Result<()> {
    let ok = name
        .value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::at(
            name.line,
            format!(
                "invalid arg name {:?}: use letters, digits and _ (not starting with a digit), so \
                 that ${{{}}} can name it",
                name.value, name.value
            ),
        ))
    }
}

/// A stage name: lower case, as Dockerfile stage names are matched.
fn check_stage_name(name: &At<String>) -> Result<()> {
    let v = &name.value;
    let ok = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !ok {
        return Err(Error::at(
            name.line,
            format!(
                "invalid stage name {v:?}: use lower-case letters, digits, '-', '_' and '.', \
                 starting with a letter or digit"
            ),
        ));
    }
    if v == "scratch" {
        return Err(Error::at(
            name.line,
            "a stage cannot be named \"scratch\": that name means the empty filesystem",
        ));
    }
    Ok(())
}

/// Offsets → lines, and the typed accessors.
struct Reader<'s> {
    line_starts: Vec<usize>,
    _source: std::marker::PhantomData<&'s str>,
}

impl<'s> Reader<'s> {
    fn new(source: &'s str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            line_starts,
            _source: std::marker::PhantomData,
        }
    }

    fn line(&self, span: Range<usize>) -> u32 {
        let n = self.line_starts.partition_point(|&s| s <= span.start);
        u32::try_from(n.max(1)).unwrap_or(u32::MAX)
    }

    fn key(&self, k: &Spanned<DeString<'_>>) -> At<String> {
        At {
            value: k.get_ref().as_ref().to_owned(),
            line: self.line(k.span()),
        }
    }

    fn wrong_type(&self, v: &Spanned<DeValue<'_>>, path: &str, expected: &str) -> Error {
        Error::at(
            self.line(v.span()),
            format!(
                "`{path}` must be {expected}, not {} {}",
                article(v.get_ref().type_str()),
                v.get_ref().type_str()
            ),
        )
    }

    fn known_keys(&self, t: &DeTable<'_>, place: &str, allowed: &[&str]) -> Result<()> {
        for (k, _) in entries(t) {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) {
                continue;
            }
            let mut message = format!("unknown key `{key}` in {place}");
            if let Some(s) = dockerfile_parser::suggest::closest(key, allowed.iter().copied()) {
                message.push_str(&format!(" (did you mean `{s}`?)"));
            }
            message.push_str(&format!("; the keys there are: {}", allowed.join(", ")));
            return Err(Error::at(self.line(k.span()), message));
        }
        Ok(())
    }

    fn table<'a, 'i>(&self, v: &'a Spanned<DeValue<'i>>, path: &str) -> Result<&'a DeTable<'i>> {
        v.get_ref()
            .as_table()
            .ok_or_else(|| self.wrong_type(v, path, "a table"))
    }

    fn string(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<At<String>> {
        match v.get_ref().as_str() {
            Some(s) => Ok(At {
                value: s.to_owned(),
                line: self.line(v.span()),
            }),
            None => Err(self.wrong_type(v, path, "a string")),
        }
    }

    /// A string, number or boolean, as text (`CGO_ENABLED = 0` is as good as `"0"`).
    fn scalar(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<At<String>> {
        let value = match v.get_ref() {
            DeValue::String(s) => s.as_ref().to_owned(),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => n.to_string(),
                Err(_) => return Err(Error::at(self.line(v.span()), "integer out of range")),
            },
            DeValue::Float(f) => f.as_str().to_owned(),
            DeValue::Boolean(b) => b.to_string(),
            _ => return Err(self.wrong_type(v, path, "a string, number or boolean")),
        };
        Ok(At {
            value,
            line: self.line(v.span()),
        })
    }

    fn boolean(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<bool> {
        v.get_ref()
            .as_bool()
            .ok_or_else(|| self.wrong_type(v, path, "true or false"))
    }

    fn integer(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<u64> {
        let i = v
            .get_ref()
            .as_integer()
            .ok_or_else(|| self.wrong_type(v, path, "an integer"))?;
        u64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
            Error::at(
                self.line(v.span()),
                format!("`{path}` must be a non-negative integer that fits 64 bits"),
            )
        })
    }

    fn small_integer(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<u32> {
        u32::try_from(self.integer(v, path)?).map_err(|_| {
            Error::at(
                self.line(v.span()),
                format!("`{path}` is too large (at most {})", u32::MAX),
            )
        })
    }

    /// A file mode: an integer (write `0o755` in TOML) or a string of octal digits (`"0755"`).
    fn mode(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<u32> {
        let bad = || {
            Error::at(
                self.line(v.span()),
                format!("`{path}` must be a mode between 0 and 0o7777 (0o755 or \"0755\")"),
            )
        };
        let mode = match v.get_ref() {
            DeValue::Integer(_) => self.small_integer(v, path)?,
            DeValue::String(s) => u32::from_str_radix(s, 8).map_err(|_| bad())?,
            _ => return Err(self.wrong_type(v, path, "a mode (0o755 or \"0755\")")),
        };
        if mode > 0o7777 {
            return Err(bad());
        }
        Ok(mode)
    }

    /// A list of strings; a single string counts as a list of one.
    fn strings(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<Vec<At<String>>> {
        if v.get_ref().is_str() {
            return Ok(vec![self.string(v, path)?]);
        }
        let a = v
            .get_ref()
            .as_array()
            .ok_or_else(|| self.wrong_type(v, path, "a string or a list of strings"))?;
        a.iter()
            .enumerate()
            .map(|(i, e)| self.string(e, &format!("{path}[{i}]")))
            .collect()
    }

    /// A command: a string (run by the shell) or a list of strings (the argv).
    fn command(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<At<Command>> {
        let line = self.line(v.span());
        if let Some(s) = v.get_ref().as_str() {
            return Ok(At {
                value: Command::Shell(s.to_owned()),
                line,
            });
        }
        if v.get_ref().is_array() {
            let argv: Vec<String> = self
                .strings(v, path)?
                .into_iter()
                .map(|a| a.value)
                .collect();
            if argv.is_empty() {
                return Err(Error::at(line, format!("`{path}` cannot be an empty list")));
            }
            return Ok(At {
                value: Command::Exec(argv),
                line,
            });
        }
        Err(self.wrong_type(
            v,
            path,
            "a string (run by the shell) or a list of strings (the argv)",
        ))
    }

    /// A table of names to strings (env, labels), in file order.
    fn pairs(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<Vec<(At<String>, At<String>)>> {
        entries(self.table(v, path)?)
            .into_iter()
            .map(|(k, val)| {
                let key = self.key(k);
                let value = self.scalar(val, &format!("{path}.{}", key.value))?;
                Ok((key, value))
            })
            .collect()
    }

    fn stage(&self, k: &Spanned<DeString<'_>>, v: &Spanned<DeValue<'_>>) -> Result<StageSpec> {
        let name = self.key(k);
        check_stage_name(&name)?;
        let path = format!("stage.{}", name.value);
        let t = self.table(v, &path)?;
        self.known_keys(t, &format!("[{path}]"), STAGE_KEYS)?;
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let from = match get("from") {
            Some(v) => self.string(v, &sub("from"))?,
            None => {
                return Err(Error::at(
                    name.line,
                    format!(
                        "[{path}] has no `from`: say what it starts from, an image (from = \
                         \"alpine:3.20\"), another stage, or \"scratch\""
                    ),
                ))
            }
        };
        let opt_string = |key: &str| get(key).map(|v| self.string(v, &sub(key))).transpose();
        let shell = match get("shell") {
            None => None,
            Some(v) => {
                let list = self.strings(v, &sub("shell"))?;
                if !v.get_ref().is_array() || list.is_empty() {
                    return Err(self.wrong_type(
                        v,
                        &sub("shell"),
                        "a non-empty list such as [\"/bin/bash\", \"-c\"]",
                    ));
                }
                Some(At {
                    value: list.into_iter().map(|a| a.value).collect(),
                    line: self.line(v.span()),
                })
            }
        };
        let args = match get("args") {
            None => Vec::new(),
            Some(v) => self.strings(v, &sub("args"))?,
        };
        let mut steps = Vec::new();
        if let Some(v) = get("steps") {
            let list = v
                .get_ref()
                .as_array()
                .ok_or_else(|| self.wrong_type(v, &sub("steps"), "a list of step tables"))?;
            for (i, s) in list.iter().enumerate() {
                if i >= MAX_STEPS {
                    return Err(Error::at(
                        self.line(s.span()),
                        format!("more than {MAX_STEPS} steps in one build file"),
                    ));
                }
                steps.push(self.step(s, &format!("{path}.steps[{i}]"))?);
            }
        }
        let image = match get("image") {
            None => ImageSpec::default(),
            Some(v) => self.image(v, &sub("image"))?,
        };
        Ok(StageSpec {
            description: opt_string("description")?.map(|d| d.value),
            from,
            platform: opt_string("platform")?,
            args,
            shell,
            env: match get("env") {
                Some(v) => self.pairs(v, &sub("env"))?,
                None => Vec::new(),
            },
            workdir: opt_string("workdir")?,
            user: opt_string("user")?,
            steps,
            image,
            name,
        })
    }

    fn step(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<Step> {
        let line = self.line(v.span());
        if let Some(text) = v.get_ref().as_str() {
            // A bare command is the likely intent: say how to write it.
            return Err(Error::at(
                line,
                format!(
                    "`{path}` must be a table, not a string: write {{ run = {} }}",
                    serde_json::to_string(text).unwrap_or_default()
                ),
            ));
        }
        let t = self.table(v, path)?;
        let kinds: Vec<&str> = STEP_KINDS
            .iter()
            .copied()
            .filter(|k| lookup(t, k).is_some())
            .collect();
        let kind = match kinds.as_slice() {
            [one] => *one,
            [] => {
                // A misspelt kind (`rn = "make"`) is the usual cause: point at that key.
                let hint = entries(t).into_iter().find_map(|(k, _)| {
                    let key = k.get_ref().as_ref();
                    dockerfile_parser::suggest::closest(key, STEP_KINDS.iter().copied()).map(|s| {
                        (
                            self.line(k.span()),
                            format!(" (did you mean `{s}` for `{key}`?)"),
                        )
                    })
                });
                let (at, hint) = hint.unwrap_or((line, String::new()));
                return Err(Error::at(
                    at,
                    format!(
                        "`{path}` does nothing: a step needs one of {}{hint}",
                        STEP_KINDS.join(", ")
                    ),
                ));
            }
            many => {
                return Err(Error::at(
                    line,
                    format!(
                        "`{path}` has both `{}`: write one step per table",
                        many.join("` and `")
                    ),
                ))
            }
        };
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let step_kind = match kind {
            "run" => {
                self.known_keys(t, &format!("the run step `{path}`"), RUN_KEYS)?;
                self.run(t, path)?
            }
            "copy" => {
                self.known_keys(t, &format!("the copy step `{path}`"), COPY_KEYS)?;
                self.copy(t, path, line)?
            }
            other => {
                // `env`, `workdir` and `user` steps hold that key and an optional name.
                self.known_keys(t, &format!("the {other} step `{path}`"), &[other, "name"])?;
                let v =
                    get(other).ok_or_else(|| Error::at(line, "internal: step kind vanished"))?;
                match other {
                    "env" => StepKind::Env(self.pairs(v, &sub("env"))?),
                    "workdir" => StepKind::Workdir(self.string(v, &sub("workdir"))?),
                    _ => StepKind::User(self.string(v, &sub("user"))?),
                }
            }
        };
        Ok(Step {
            line,
            name: get("name")
                .map(|v| self.string(v, &sub("name")))
                .transpose()?
                .map(|n| n.value),
            kind: step_kind,
        })
    }

    fn run(&self, t: &DeTable<'_>, path: &str) -> Result<StepKind> {
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let command = match get("run") {
            Some(v) => self.command(v, &sub("run"))?.value,
            None => return Err(Error::invalid("internal: run step without run")),
        };
        let mut mounts = Vec::new();
        // Shorthands first: `cache = ["/root/.cache"]`, `secrets = ["token"]`.
        if let Some(v) = get("cache") {
            for target in self.strings(v, &sub("cache"))? {
                mounts.push(At {
                    line: target.line,
                    value: MountSpec::Cache {
                        target: target.value,
                        id: None,
                        sharing: CacheSharing::Shared,
                        from: None,
                        source: None,
                        readonly: false,
                        mode: None,
                        uid: None,
                        gid: None,
                    },
                });
            }
        }
        if let Some(v) = get("secrets") {
            for id in self.strings(v, &sub("secrets"))? {
                mounts.push(At {
                    line: id.line,
                    value: MountSpec::Secret {
                        id: id.value,
                        target: None,
                        env: None,
                        required: false,
                        mode: None,
                        uid: None,
                        gid: None,
                    },
                });
            }
        }
        if let Some(v) = get("mounts") {
            let list = v
                .get_ref()
                .as_array()
                .ok_or_else(|| self.wrong_type(v, &sub("mounts"), "a list of mount tables"))?;
            for (i, m) in list.iter().enumerate() {
                mounts.push(self.mount(m, &format!("{path}.mounts[{i}]"))?);
            }
        }
        let network = match get("network") {
            None => None,
            Some(v) => Some(match self.string(v, &sub("network"))?.value.as_str() {
                "default" => NetworkMode::Default,
                "none" => NetworkMode::None,
                "host" => NetworkMode::Host,
                other => {
                    return Err(Error::at(
                        self.line(v.span()),
                        format!("invalid network {other:?}: expected default, none or host"),
                    ))
                }
            }),
        };
        let security = match get("security") {
            None => None,
            Some(v) => Some(match self.string(v, &sub("security"))?.value.as_str() {
                "sandbox" => SecurityMode::Sandbox,
                "insecure" => SecurityMode::Insecure,
                other => {
                    return Err(Error::at(
                        self.line(v.span()),
                        format!("invalid security {other:?}: expected sandbox or insecure"),
                    ))
                }
            }),
        };
        Ok(StepKind::Run(RunStep {
            command,
            mounts,
            network,
            security,
        }))
    }

    fn mount(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<At<MountSpec>> {
        let line = self.line(v.span());
        let t = self.table(v, path)?;
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let kind = match get("type") {
            Some(v) => self.string(v, &sub("type"))?,
            None => {
                return Err(Error::at(
                    line,
                    format!("`{path}` has no `type`: one of {}", MOUNT_TYPES.join(", ")),
                ))
            }
        };
        let keys: &[&str] = match kind.value.as_str() {
            "cache" => &[
                "type", "target", "id", "sharing", "from", "source", "readonly", "mode", "uid",
                "gid",
            ],
            "secret" => &[
                "type", "id", "target", "env", "required", "mode", "uid", "gid",
            ],
            "bind" => &["type", "target", "from", "source", "readonly"],
            "tmpfs" => &["type", "target", "size"],
            "ssh" => &["type", "id", "target", "required"],
            other => {
                let mut message = format!("unknown mount type {other:?}");
                if let Some(s) =
                    dockerfile_parser::suggest::closest(other, MOUNT_TYPES.iter().copied())
                {
                    message.push_str(&format!(" (did you mean {s}?)"));
                }
                message.push_str(&format!("; the types are: {}", MOUNT_TYPES.join(", ")));
                return Err(Error::at(kind.line, message));
            }
        };
        self.known_keys(t, &format!("the {} mount `{path}`", kind.value), keys)?;
        let opt = |key: &str| -> Result<Option<String>> {
            get(key)
                .map(|v| self.string(v, &sub(key)).map(|a| a.value))
                .transpose()
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            get(key).map_or(Ok(default), |v| self.boolean(v, &sub(key)))
        };
        let id_num = |key: &str| -> Result<Option<u32>> {
            get(key)
                .map(|v| self.small_integer(v, &sub(key)))
                .transpose()
        };
        let mode = get("mode")
            .map(|v| self.mode(v, &sub("mode")))
            .transpose()?;
        let target = |required: bool| -> Result<Option<String>> {
            let t = opt("target")?;
            if required && t.is_none() {
                return Err(Error::at(
                    line,
                    format!("the {} mount `{path}` needs a `target`", kind.value),
                ));
            }
            Ok(t)
        };
        let value = match kind.value.as_str() {
            "cache" => MountSpec::Cache {
                target: target(true)?.unwrap_or_default(),
                id: opt("id")?,
                sharing: match get("sharing") {
                    None => CacheSharing::Shared,
                    Some(v) => match self.string(v, &sub("sharing"))?.value.as_str() {
                        "shared" => CacheSharing::Shared,
                        "private" => CacheSharing::Private,
                        "locked" => CacheSharing::Locked,
                        other => {
                            return Err(Error::at(
                                self.line(v.span()),
                                format!(
                                    "invalid sharing {other:?}: expected shared, private or locked"
                                ),
                            ))
                        }
                    },
                },
                from: opt("from")?,
                source: opt("source")?,
                readonly: flag("readonly", false)?,
                mode,
                uid: id_num("uid")?,
                gid: id_num("gid")?,
            },
            "secret" => MountSpec::Secret {
                id: match opt("id")? {
                    Some(id) if !id.is_empty() => id,
                    _ => {
                        return Err(Error::at(
                            line,
                            format!("the secret mount `{path}` needs an `id`"),
                        ))
                    }
                },
                target: target(false)?,
                env: opt("env")?,
                required: flag("required", false)?,
                mode,
                uid: id_num("uid")?,
                gid: id_num("gid")?,
            },
            "bind" => MountSpec::Bind {
                target: target(true)?.unwrap_or_default(),
                from: opt("from")?,
                source: opt("source")?,
                readonly: flag("readonly", true)?,
            },
            "tmpfs" => MountSpec::Tmpfs {
                target: target(true)?.unwrap_or_default(),
                size: get("size")
                    .map(|v| self.size(v, &sub("size")))
                    .transpose()?,
            },
            _ => MountSpec::Ssh {
                id: opt("id")?,
                target: target(false)?,
                required: flag("required", false)?,
            },
        };
        Ok(At { value, line })
    }

    /// A size in bytes: an integer, or a string with a unit (`"64m"`, as `RUN --mount` reads it).
    fn size(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<u64> {
        if v.get_ref().is_integer() {
            return self.integer(v, path);
        }
        let s = self.string(v, path)?;
        kiln_types::size::parse_ram_size(&s.value).ok_or_else(|| {
            Error::at(
                s.line,
                format!(
                    "invalid size {:?}: a number with an optional unit b, k, m, g, t, p, e.g. 64m",
                    s.value
                ),
            )
        })
    }

    fn copy(&self, t: &DeTable<'_>, path: &str, line: u32) -> Result<StepKind> {
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let sources: Vec<String> = match get("copy") {
            Some(v) => self
                .strings(v, &sub("copy"))?
                .into_iter()
                .map(|a| a.value)
                .collect(),
            None => Vec::new(),
        };
        if sources.is_empty() {
            return Err(Error::at(line, format!("`{path}` copies nothing")));
        }
        let to = match get("to") {
            Some(v) => self.string(v, &sub("to"))?,
            None => {
                return Err(Error::at(
                    line,
                    format!("the copy step `{path}` needs `to`, the destination"),
                ))
            }
        };
        let opt = |key: &str| get(key).map(|v| self.string(v, &sub(key))).transpose();
        Ok(StepKind::Copy(CopyStep {
            sources,
            to,
            from: opt("from")?,
            chown: opt("chown")?.map(|a| a.value),
            chmod: match get("chmod") {
                None => None,
                Some(v) if v.get_ref().is_integer() => {
                    Some(format!("{:o}", self.mode(v, &sub("chmod"))?))
                }
                Some(v) => Some(self.string(v, &sub("chmod"))?.value),
            },
            exclude: match get("exclude") {
                None => Vec::new(),
                Some(v) => self
                    .strings(v, &sub("exclude"))?
                    .into_iter()
                    .map(|a| a.value)
                    .collect(),
            },
            link: get("link").map_or(Ok(false), |v| self.boolean(v, &sub("link")))?,
        }))
    }

    fn image(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<ImageSpec> {
        let t = self.table(v, path)?;
        self.known_keys(t, &format!("[{path}]"), IMAGE_KEYS)?;
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let opt = |key: &str| get(key).map(|v| self.string(v, &sub(key))).transpose();
        let list = |key: &str| get(key).map_or(Ok(Vec::new()), |v| self.strings(v, &sub(key)));
        let pairs = |key: &str| get(key).map_or(Ok(Vec::new()), |v| self.pairs(v, &sub(key)));
        Ok(ImageSpec {
            entrypoint: get("entrypoint")
                .map(|v| self.command(v, &sub("entrypoint")))
                .transpose()?,
            cmd: get("cmd")
                .map(|v| self.command(v, &sub("cmd")))
                .transpose()?,
            env: pairs("env")?,
            user: opt("user")?,
            workdir: opt("workdir")?,
            labels: pairs("labels")?,
            expose: match get("expose") {
                // `expose = [8080]` is natural in TOML: numbers are ports too.
                Some(v) if v.get_ref().is_array() => v
                    .get_ref()
                    .as_array()
                    .into_iter()
                    .flat_map(|a| a.iter())
                    .enumerate()
                    .map(|(i, e)| self.scalar(e, &format!("{}[{i}]", sub("expose"))))
                    .collect::<Result<_>>()?,
                Some(v) => vec![self.scalar(v, &sub("expose"))?],
                None => Vec::new(),
            },
            volumes: list("volumes")?,
            stopsignal: match get("stopsignal") {
                Some(v) => Some(self.scalar(v, &sub("stopsignal"))?),
                None => None,
            },
            healthcheck: get("healthcheck")
                .map(|v| self.healthcheck(v, &sub("healthcheck")))
                .transpose()?,
        })
    }

    fn healthcheck(&self, v: &Spanned<DeValue<'_>>, path: &str) -> Result<At<HealthSpec>> {
        let line = self.line(v.span());
        let t = self.table(v, path)?;
        self.known_keys(t, &format!("`{path}`"), HEALTH_KEYS)?;
        let get = |key: &str| lookup(t, key).map(|(_, v)| v);
        let sub = |key: &str| format!("{path}.{key}");
        let cmd = match get("cmd") {
            None => {
                return Err(Error::at(
                    line,
                    format!("`{path}` needs `cmd` (or cmd = \"none\" to disable the base's check)"),
                ))
            }
            Some(v) => match self.command(v, &sub("cmd"))?.value {
                Command::Shell(s) if s.eq_ignore_ascii_case("none") => None,
                c => Some(c),
            },
        };
        let duration = |key: &str| -> Result<Option<u64>> {
            let Some(v) = get(key) else { return Ok(None) };
            let s = self.string(v, &sub(key))?;
            parse_duration(&s.value).map(Some).ok_or_else(|| {
                Error::at(
                    s.line,
                    format!(
                        "invalid duration {:?} for `{}`: a number and a unit, e.g. 30s, 1m30s, \
                         500ms",
                        s.value,
                        sub(key)
                    ),
                )
            })
        };
        Ok(At {
            value: HealthSpec {
                cmd,
                interval: duration("interval")?,
                timeout: duration("timeout")?,
                start_period: duration("start_period")?,
                start_interval: duration("start_interval")?,
                retries: get("retries")
                    .map(|v| self.integer(v, &sub("retries")))
                    .transpose()?,
            },
            line,
        })
    }
}

fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// A Go duration (`1m30s`, `500ms`, `2h`) in nanoseconds; `None` when it is not one.
pub(crate) fn parse_duration(s: &str) -> Option<u64> {
    const UNITS: [(&str, u64); 7] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let mut rest = s.trim();
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest.get(..digits)?.parse().ok()?;
        rest = rest.get(digits..)?;
        // The longest unit that matches (`ms` before `m`).
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())?;
        rest = rest.get(unit.len()..)?;
        let nanos = number * (*scale as f64);
        if !nanos.is_finite() || nanos >= u64::MAX as f64 {
            return None;
        }
        total = total.checked_add(nanos as u64)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> (Option<u32>, String) {
        match parse(src) {
            Ok(_) => panic!("parsed:\n{src}"),
            Err(Error::Input { message, line, .. }) => (line, message),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn reads_a_whole_file_in_order() {
        let src = r#"# syntax=kiln/spec
[args]
VERSION = "1.0"
JOBS = 4

[stage.build]
from = "busybox"
platform = "$BUILDPLATFORM"
args = ["VERSION"]
workdir = "/src"
env = { CGO_ENABLED = 0, B = "x" }
steps = [
  { copy = ".", to = "/src", exclude = ["*.md"] },
  { run = "make", cache = ["/root/.cache"], secrets = ["token"], name = "compile" },
  { run = ["/bin/echo", "hi"], mounts = [
      { type = "tmpfs", target = "/tmp", size = "64m" },
      { type = "cache", target = "/c", id = "cc", sharing = "locked", mode = 0o700 },
  ] },
]

[stage.final]
from = "scratch"
steps = [ { copy = "/src/app", from = "build", to = "/app", chmod = 0o755 } ]
[stage.final.image]
entrypoint = ["/app"]
labels = { "org.opencontainers.image.source" = "https://example.invalid" }
expose = ["8080/tcp", 9090]
healthcheck = { cmd = "true", interval = "1m30s" }
"#;
        let spec = parse(src).unwrap();
        assert_eq!(spec.args.len(), 2);
        assert_eq!(spec.args[1].0.value, "JOBS");
        assert_eq!(spec.args[1].1, "4");
        let names: Vec<&str> = spec.stages.iter().map(|s| s.name.value.as_str()).collect();
        assert_eq!(names, ["build", "final"], "file order, not key order");
        let build = &spec.stages[0];
        assert_eq!(build.from.line, 7);
        assert_eq!(build.env[0].0.value, "CGO_ENABLED");
        assert_eq!(build.env[0].1.value, "0");
        assert_eq!(build.steps.len(), 3);
        assert_eq!(build.steps[1].line, 14);
        assert_eq!(build.steps[1].name.as_deref(), Some("compile"));
        let StepKind::Run(run) = &build.steps[1].kind else {
            panic!("run")
        };
        assert_eq!(run.command, Command::Shell("make".into()));
        assert_eq!(run.mounts.len(), 2);
        let StepKind::Run(run) = &build.steps[2].kind else {
            panic!("run")
        };
        assert_eq!(
            run.command,
            Command::Exec(vec!["/bin/echo".into(), "hi".into()])
        );
        assert_eq!(
            run.mounts[0].value,
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size: Some(64 << 20)
            }
        );
        assert!(matches!(
            run.mounts[1].value,
            MountSpec::Cache {
                sharing: CacheSharing::Locked,
                mode: Some(0o700),
                ..
            }
        ));
        assert_eq!(run.mounts[1].line, 17);
        let fin = &spec.stages[1];
        let StepKind::Copy(c) = &fin.steps[0].kind else {
            panic!("copy")
        };
        assert_eq!(c.chmod.as_deref(), Some("755"));
        assert_eq!(c.from.as_ref().map(|f| f.value.as_str()), Some("build"));
        assert_eq!(fin.image.expose.len(), 2);
        assert_eq!(fin.image.expose[1].value, "9090");
        let hc = fin.image.healthcheck.as_ref().unwrap();
        assert_eq!(hc.value.interval, Some(90_000_000_000));
    }

    #[test]
    fn every_error_names_its_line() {
        let cases: &[(&str, u32, &str)] = &[
            ("[stage.a]\nfrom = \"x\"\nfrm = 1\n", 3, "unknown key `frm` in [stage.a] (did you mean `from`?)"),
            ("[stage.a]\nfrom = 1\n", 2, "`stage.a.from` must be a string, not an integer"),
            ("[stage.a]\nworkdir = \"/\"\n", 1, "[stage.a] has no `from`"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [\n  { rn = \"make\" },\n]\n", 4, "did you mean `run` for `rn`?"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [{ run = \"a\", copy = \"b\" }]\n", 3, "has both `run` and `copy`"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [{ run = \"a\", cahce = [\"/c\"] }]\n", 3, "unknown key `cahce` in the run step `stage.a.steps[0]` (did you mean `cache`?)"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [{ copy = \".\" }]\n", 3, "needs `to`"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [\n{ run = \"a\", mounts = [{ type = \"cahce\", target = \"/c\" }] }]\n", 4, "unknown mount type \"cahce\" (did you mean cache?)"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [\n{ run = \"a\", mounts = [{ type = \"secret\" }] }]\n", 4, "needs an `id`"),
            ("[stage.a]\nfrom = \"x\"\n[stage.a.image]\nentrypoint = 3\n", 4, "`stage.a.image.entrypoint` must be a string (run by the shell) or a list of strings (the argv), not an integer"),
            ("[stage.a]\nfrom = \"x\"\n[stage.a.image]\nhealthcheck = { cmd = \"x\", interval = \"soon\" }\n", 4, "invalid duration \"soon\""),
            ("[stage.A]\nfrom = \"x\"\n", 1, "invalid stage name \"A\""),
            ("[stage.scratch]\nfrom = \"x\"\n", 1, "cannot be named \"scratch\""),
            ("[args]\n1X = \"a\"\n[stage.a]\nfrom = \"x\"\n", 2, "invalid arg name \"1X\""),
            ("[stage.a]\nfrom = \"x\"\nsteps = [{ run = \"a\", network = \"bridge\" }]\n", 3, "invalid network \"bridge\""),
            ("[stage.a]\nfrom = \"x\"\n\nwhat = \n", 4, "invalid TOML"),
            ("stages = 1\n", 1, "unknown key `stages` in the top level (did you mean `stage`?)"),
            ("[stage.a]\nfrom = \"x\"\nsteps = [\n  \"make\",\n]\n", 4, "must be a table, not a string: write { run = \"make\" }"),
        ];
        for (src, line, needle) in cases {
            let (got_line, message) = err(src);
            assert_eq!(got_line, Some(*line), "{message}\n{src}");
            assert!(
                message.contains(needle),
                "{message:?} lacks {needle:?}\n{src}"
            );
        }
        let (line, message) = err("# syntax=kiln/spec\n");
        assert_eq!(line, None);
        assert!(message.contains("no stage"), "{message}");
    }

    #[test]
    fn steps_as_arrays_of_tables() {
        let src = "[stage.a]\nfrom = \"x\"\n\n[[stage.a.steps]]\nrun = \"one\"\n\n[[stage.a.steps]]\nname = \"second\"\ncopy = \"f\"\nto = \"/f\"\n";
        let spec = parse(src).unwrap();
        let steps = &spec.stages[0].steps;
        assert_eq!(steps.len(), 2);
        assert!(matches!(steps[0].kind, StepKind::Run(_)));
        assert_eq!(steps[1].name.as_deref(), Some("second"));
        assert_eq!((steps[0].line, steps[1].line), (4, 7));
    }

    #[test]
    fn durations_like_go() {
        assert_eq!(parse_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
    }
}
