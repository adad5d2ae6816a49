//! `--explain-cache`: why each step that ran did not come from the cache.
//!
//! After every successful build, kiln keeps a small record per target (context directory,
//! build file, target stage, platform) of what each step's cache key was made of: the step's
//! name and build-file line, the digest of its op, the keys of its inputs, its base image
//! reference, the digests of its environment values, the build arguments, and for a local
//! context the digest of each entry. The next build of the same target compares its steps with
//! that record and names the first difference of each step that ran: a file, a build argument,
//! the base image, the instruction text, an input step, or "no earlier build".
//!
//! The record holds names and digests only, never file contents, environment values or
//! secrets (secrets never enter the graph). Build-argument values are kept, as docker keeps
//! them in the image history: they are not secrets. Records live in `<store>/explain/`, one
//! JSON-lines file per target, at most [`MAX_TARGETS`] of them (least recently built go first),
//! each with at most [`MAX_ENTRIES`] context entries.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_graph::{Definition, FileAction, Op, SourceOp, Vertex};
use kiln_solver::Status;
use kiln_types::{Digest, Platform};
use serde::{Deserialize, Serialize};

/// Targets whose last build is kept.
pub const MAX_TARGETS: usize = 32;
/// Context entries kept per local source; a larger context is explained without file names.
pub const MAX_ENTRIES: usize = 50_000;
/// Longest build-argument value kept (longer ones are kept as a digest).
const MAX_ARG_VALUE: usize = 256;
/// Hex digits kept of each digest: enough to tell a change, small enough to keep many.
const SHORT: usize = 16;
const VERSION: u32 = 1;

/// What the cache-key computation saw, per vertex, during one solve.
#[derive(Default)]
pub(crate) struct Recorder {
    notes: Mutex<HashMap<Digest, Note>>,
}

#[derive(Default, Clone)]
struct Note {
    key: Option<Digest>,
    /// The input digests the key was made of (a COPY source's selection key, not the whole
    /// context's key).
    inputs: Vec<Digest>,
    /// Per-entry digests of a local source.
    entries: Option<Vec<(String, Digest)>>,
}

impl Recorder {
    /// Vertex `v` got cache key `key` from `inputs`.
    pub(crate) fn note_key(&self, v: Digest, key: Digest, inputs: Vec<Digest>) {
        if let Ok(mut notes) = self.notes.lock() {
            let n = notes.entry(v).or_default();
            n.key = Some(key);
            n.inputs = inputs;
        }
    }

    /// Local source `v` holds `entries` (path, digest), in path order.
    pub(crate) fn note_entries(&self, v: Digest, entries: Vec<(String, Digest)>) {
        if let Ok(mut notes) = self.notes.lock() {
            notes.entry(v).or_default().entries = Some(entries);
        }
    }

    fn take(&self) -> HashMap<Digest, Note> {
        self.notes
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default()
    }

    /// The notes of `vertices`, copied into a recorder of their own: a build of several
    /// platforms keeps one record per platform, of that platform's graph (a vertex the
    /// platforms share is in each).
    pub(crate) fn part(&self, vertices: impl IntoIterator<Item = Digest>) -> Recorder {
        let notes = match self.notes.lock() {
            Ok(notes) => vertices
                .into_iter()
                .filter_map(|v| Some((v, notes.get(&v)?.clone())))
                .collect(),
            Err(_) => HashMap::new(),
        };
        Recorder {
            notes: Mutex::new(notes),
        }
    }
}

/// Why a step ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No build of this target was recorded.
    NoEarlierBuild,
    /// The last build had no step like this one.
    NewStep,
    /// The instruction's text changed.
    Instruction {
        /// The text then (without the `[stage n/m]` prefix).
        old: String,
        /// The text now.
        new: String,
    },
    /// The instruction's options changed (its text did not).
    Options,
    /// The base image resolved to another digest.
    BaseImage {
        /// Digest (or reference) then.
        old: String,
        /// Digest (or reference) now.
        new: String,
    },
    /// A build argument the step uses changed.
    BuildArg {
        /// Its name.
        name: String,
        /// Its value then.
        old: ArgState,
        /// Its value now.
        new: ArgState,
    },
    /// An environment variable of the step changed (ENV above it).
    Env {
        /// Its name.
        name: String,
    },
    /// A context file the step reads changed.
    File {
        /// The path in the context.
        path: String,
        /// How.
        change: FileChange,
        /// How many other changed paths the step reads.
        more: usize,
    },
    /// Context files changed; the context is too large for kiln to have kept their names.
    Files,
    /// An input step's result changed.
    Input {
        /// The input vertex.
        vertex: Digest,
        /// Its name.
        name: String,
    },
    /// The cache was not used for it (`--no-cache`, `--no-cache-filter`).
    NoCache,
    /// Nothing changed, but its result was not in the cache (pruned, or never stored).
    NotCached,
    /// Something else in its cache key changed.
    Other,
}

/// A build argument's value as far as kiln knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgState {
    /// Given with `--build-arg`.
    Value(String),
    /// Not given: the build file's default (`ARG NAME=default`), or empty.
    Default,
    /// Not in the step's environment.
    Unset,
    /// Given, but too long to have been kept.
    Long,
}

impl std::fmt::Display for ArgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgState::Value(v) => write!(f, "{v:?}"),
            ArgState::Default => f.write_str("its default"),
            ArgState::Unset => f.write_str("unset"),
            ArgState::Long => f.write_str("a long value"),
        }
    }
}

/// How a context path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// Content, mode or type.
    Changed,
    /// It is new.
    Added,
    /// It is gone.
    Removed,
}

impl Cause {
    /// The cause as one phrase; `number` gives the progress number of a vertex, if shown.
    pub fn render(&self, number: &dyn Fn(&Digest) -> Option<usize>) -> String {
        match self {
            Cause::NoEarlierBuild => "no earlier build".to_owned(),
            Cause::NewStep => "instruction changed: new step".to_owned(),
            Cause::Instruction { old, new } => {
                format!("instruction changed: {old:?} -> {new:?}")
            }
            Cause::Options => "instruction options changed".to_owned(),
            Cause::BaseImage { old, new } => format!("base image changed: {old} -> {new}"),
            Cause::BuildArg { name, old, new } => {
                format!("build arg {name} changed ({old} -> {new})")
            }
            Cause::Env { name } => format!("environment variable {name} changed"),
            Cause::File { path, change, more } => {
                let what = match change {
                    FileChange::Changed => "file changed",
                    FileChange::Added => "file added",
                    FileChange::Removed => "file removed",
                };
                match more {
                    0 => format!("{what}: {path}"),
                    n => format!("{what}: {path} (and {n} more)"),
                }
            }
            Cause::Files => "context files changed".to_owned(),
            Cause::Input { vertex, name } => match number(vertex) {
                Some(n) => format!("input changed: #{n}"),
                None => format!("input changed: {name}"),
            },
            Cause::NoCache => "cache disabled for this step (--no-cache)".to_owned(),
            Cause::NotCached => "unchanged, but not in the cache (pruned?)".to_owned(),
            Cause::Other => "cache key changed".to_owned(),
        }
    }
}

/// One step that ran, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Miss {
    /// The vertex.
    pub vertex: Digest,
    /// Its progress name.
    pub name: String,
    /// The first difference found.
    pub cause: Cause,
}

/// What identifies a target between builds.
pub(crate) struct Target<'a> {
    pub context: &'a Path,
    pub dockerfile: &'a Path,
    pub target: Option<&'a str>,
    pub platform: &'a Platform,
}

impl Target<'_> {
    fn id(&self) -> String {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        format!(
            "{}\0{}\0{}\0{}",
            canon(self.context).display(),
            canon(self.dockerfile).display(),
            self.target.unwrap_or(""),
            self.platform
        )
    }
}

/// First line of a record file.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Header {
    version: u32,
    /// Digest of every step key: equal means nothing to write.
    keys: String,
    #[serde(default)]
    build_args: BTreeMap<String, ArgValue>,
}

/// A build argument's value, or its digest when too long to keep.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum ArgValue {
    #[serde(rename = "v")]
    Value(String),
    #[serde(rename = "d")]
    Digest(String),
}

impl ArgValue {
    fn of(v: &str) -> Self {
        if v.len() <= MAX_ARG_VALUE {
            ArgValue::Value(v.to_owned())
        } else {
            ArgValue::Digest(short(&Digest::of(v.as_bytes())))
        }
    }

    fn state(value: Option<&Self>, in_env: bool) -> ArgState {
        match value {
            Some(ArgValue::Value(v)) => ArgState::Value(v.clone()),
            Some(ArgValue::Digest(_)) => ArgState::Long,
            None if in_env => ArgState::Default,
            None => ArgState::Unset,
        }
    }

    fn shown(&self) -> Option<String> {
        match self {
            ArgValue::Value(v) => Some(v.clone()),
            ArgValue::Digest(_) => None,
        }
    }
}

/// One step of a record (a line of the file after the header).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Step {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line: Option<(String, u32)>,
    kind: String,
    key: String,
    op: String,
    inputs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// Exec environment: name → value digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    env: Vec<(String, String)>,
    /// Local source entries: path → digest, in path order (`None`: too many, or not a source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<(String, String)>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

struct Record {
    header: Header,
    steps: Vec<Step>,
}

fn short(d: &Digest) -> String {
    d.hex()[..SHORT].to_owned()
}

/// The name without the progress counter (`[build 3/4] COPY . /app` → `[build] COPY . /app`),
/// so that inserting a step does not make every later one look new, and without pinned
/// digests (`FROM busybox:1@sha256:…` → `FROM busybox:1`), so that a base image that moved is
/// the same step with another image. (The frontend gives FROM no build-file line to match by.)
fn identity(name: &str) -> String {
    let name = unpinned(name);
    let Some(rest) = name.strip_prefix('[') else {
        return name;
    };
    let Some((inside, after)) = rest.split_once(']') else {
        return name;
    };
    let counter = |w: &str| {
        w.split_once('/').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    };
    let words: Vec<&str> = inside.split(' ').filter(|w| !counter(w)).collect();
    format!("[{}]{after}", words.join(" "))
}

/// `text` without the `@sha256:<64 hex>` digests it holds.
fn unpinned(text: &str) -> String {
    const PIN: &str = "@sha256:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PIN) {
        out.push_str(&rest[..at]);
        let hex = &rest[at + PIN.len()..];
        let len = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
        if len == 64 {
            rest = &hex[len..];
        } else {
            out.push_str(PIN);
            rest = hex;
        }
    }
    out.push_str(rest);
    out
}

/// The instruction text alone: `[build 3/4] COPY . /app` → `COPY . /app`.
fn instruction(name: &str) -> &str {
    match name.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((_, text)) => text,
        None => name,
    }
}

/// When input `i` of `v` is a local source read only by COPY, the paths the copies select.
fn copy_selectors(def: &Definition, v: &Vertex, i: usize) -> Option<Vec<String>> {
    let Op::File(f) = &v.op else { return None };
    let input = def.vertex(&v.inputs.get(i)?.vertex)?;
    if !matches!(input.op, Op::Source(SourceOp::Local(_))) || f.base == Some(i as u32) {
        return None;
    }
    Some(
        f.actions
            .iter()
            .filter_map(|a| match a {
                FileAction::Copy(c) if c.source == Some(i as u32) => Some(c.src.clone()),
                _ => None,
            })
            .collect(),
    )
}

/// The steps of this build, in graph order, with their vertices.
fn steps_of(def: &Definition, notes: &HashMap<Digest, Note>) -> Vec<(Digest, Step)> {
    def.vertices
        .iter()
        .filter_map(|v| {
            let note = notes.get(&v.digest)?;
            let key = note.key?;
            let mut keyed = v.op.clone();
            if let Op::Exec(e) = &mut keyed {
                e.proxy_env.clear();
            }
            let op = serde_json::to_vec(&keyed).map(|b| Digest::of(&b)).ok()?;
            let env = match &v.op {
                Op::Exec(e) => e
                    .env
                    .iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, val)) => (k.to_owned(), short(&Digest::of(val.as_bytes()))),
                        None => (kv.clone(), String::new()),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let (entries, truncated) = match &note.entries {
                Some(e) if e.len() > MAX_ENTRIES => (None, true),
                Some(e) => (
                    Some(e.iter().map(|(p, d)| (p.clone(), short(d))).collect()),
                    false,
                ),
                None => (None, false),
            };
            Some((
                v.digest,
                Step {
                    name: v.meta.description.clone(),
                    line: v.meta.source.as_ref().map(|s| (s.file.clone(), s.line)),
                    kind: v.op.kind().to_owned(),
                    key: key.hex(),
                    op: short(&op),
                    inputs: note.inputs.iter().map(short).collect(),
                    image: match &v.op {
                        Op::Source(SourceOp::Image(i)) => Some(i.reference.clone()),
                        _ => None,
                    },
                    env,
                    entries,
                    truncated,
                },
            ))
        })
        .collect()
}

/// For each new step, the index of the old step it continues, if any: same name (without the
/// counter) and same rank among equal names first, then the same build-file line and op kind.
fn match_steps(old: &[Step], new: &[Step]) -> Vec<Option<usize>> {
    let mut by_identity: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, s) in old.iter().enumerate() {
        by_identity.entry(identity(&s.name)).or_default().push(i);
    }
    let mut taken = vec![false; old.len()];
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Option<usize>> = new
        .iter()
        .map(|s| {
            let id = identity(&s.name);
            let rank = seen.entry(id.clone()).or_default();
            let found = by_identity.get(&id).and_then(|v| v.get(*rank)).copied();
            *rank += 1;
            if let Some(o) = found {
                taken[o] = true;
            }
            found
        })
        .collect();
    for (i, s) in new.iter().enumerate() {
        if out[i].is_some() || s.line.is_none() {
            continue;
        }
        let found = old
            .iter()
            .enumerate()
            .find(|(o, os)| !taken[*o] && os.line == s.line && os.kind == s.kind)
            .map(|(o, _)| o);
        if let Some(o) = found {
            taken[o] = true;
            out[i] = Some(o);
        }
    }
    out
}

/// The changed paths between two sorted entry lists that `pick` accepts: the first and how
/// many more.
fn changed_entries(
    old: &[(String, String)],
    new: &[(String, String)],
    pick: &dyn Fn(&str) -> bool,
) -> Option<(String, FileChange, usize)> {
    let (mut i, mut j) = (0, 0);
    let mut first = None;
    let mut count = 0usize;
    let mut note = |path: &str, change| {
        if pick(path) {
            if first.is_none() {
                first = Some((path.to_owned(), change));
            }
            count += 1;
        }
    };
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    note(&n.0, FileChange::Changed);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                note(&o.0, FileChange::Removed);
                i += 1;
            }
            (Some(o), None) => {
                note(&o.0, FileChange::Removed);
                i += 1;
            }
            (_, Some(n)) => {
                note(&n.0, FileChange::Added);
                j += 1;
            }
            (None, None) => break,
        }
    }
    first.map(|(p, c)| (p, c, count - 1))
}

/// A file cause from two local source steps, keeping only the paths `pick` accepts.
fn file_cause(old: &Step, new: &Step, pick: &dyn Fn(&str) -> bool) -> Option<Cause> {
    match (&old.entries, &new.entries) {
        (Some(o), Some(n)) => changed_entries(o, n, pick).map(|(path, change, more)| Cause::File {
            path,
            change,
            more,
        }),
        _ if old.truncated || new.truncated => Some(Cause::Files),
        _ => None,
    }
}

struct Build<'a> {
    def: &'a Definition,
    ids: Vec<Digest>,
    steps: Vec<Step>,
    args: BTreeMap<String, ArgValue>,
}

/// Why step `i` of `new` ran.
fn cause(old: &Record, new: &Build<'_>, matched: &[Option<usize>], i: usize) -> Cause {
    let s = &new.steps[i];
    let Some(o) = matched[i].map(|o| &old.steps[o]) else {
        return Cause::NewStep;
    };
    let vertex = new.def.vertex(&new.ids[i]);
    if s.key == o.key {
        return if vertex.is_some_and(|v| v.meta.ignore_cache) {
            Cause::NoCache
        } else {
            Cause::NotCached
        };
    }
    if s.image != o.image {
        let digest = |r: &Option<String>| {
            let r = r.clone().unwrap_or_default();
            r.split_once('@').map_or(r.clone(), |(_, d)| d.to_owned())
        };
        return Cause::BaseImage {
            old: digest(&o.image),
            new: digest(&s.image),
        };
    }
    let old_args = &old.header.build_args;
    // A step's environment holds the build arguments declared above it; one that was not
    // given has the build file's default.
    let in_env = |step: &Step, name: &str| step.env.iter().any(|(k, _)| k == name);
    let arg_cause = |name: &str| Cause::BuildArg {
        name: name.to_owned(),
        old: ArgValue::state(old_args.get(name), in_env(o, name)),
        new: ArgValue::state(new.args.get(name), in_env(s, name)),
    };
    if s.env != o.env {
        let old_env: BTreeMap<&String, &String> = o.env.iter().map(|(k, v)| (k, v)).collect();
        let new_env: BTreeMap<&String, &String> = s.env.iter().map(|(k, v)| (k, v)).collect();
        let changed = new_env
            .iter()
            .find(|(k, v)| old_env.get(*k) != Some(*v))
            .map(|(k, _)| (*k).clone())
            .or_else(|| {
                old_env
                    .keys()
                    .find(|k| !new_env.contains_key(*k))
                    .map(|k| (*k).clone())
            });
        if let Some(name) = changed {
            let is_arg = new.args.contains_key(&name) || old_args.contains_key(&name);
            return if is_arg {
                arg_cause(&name)
            } else {
                Cause::Env { name }
            };
        }
    }
    let (old_text, new_text) = (instruction(&o.name), instruction(&s.name));
    if old_text != new_text {
        // The name shows variables expanded: a build argument whose value is all that differs
        // changed, not the instruction.
        let by_arg = new.args.iter().find(|(name, now)| {
            let then = old_args.get(*name);
            match (then.and_then(ArgValue::shown), now.shown()) {
                (Some(a), Some(b)) if a != b && !a.is_empty() => {
                    old_text.replace(&a, &b) == new_text
                }
                _ => false,
            }
        });
        return match by_arg {
            Some((name, _)) => arg_cause(name),
            None => Cause::Instruction {
                old: old_text.to_owned(),
                new: new_text.to_owned(),
            },
        };
    }
    if s.op != o.op || s.inputs.len() != o.inputs.len() {
        return Cause::Options;
    }
    if let Some(c) = file_cause(o, s, &|_| true) {
        return c;
    }
    let Some(v) = vertex else {
        return Cause::Other;
    };
    let step_of = |d: &Digest| new.ids.iter().position(|id| id == d);
    // A COPY's own files first, then the steps it builds on.
    for (n, edge) in v.inputs.iter().enumerate() {
        if s.inputs[n] == o.inputs[n] {
            continue;
        }
        let Some(selectors) = copy_selectors(new.def, v, n) else {
            continue;
        };
        let Some(src) = step_of(&edge.vertex) else {
            continue;
        };
        let Some(old_src) = matched[src].map(|m| &old.steps[m]) else {
            continue;
        };
        let pick = crate::local::selection_matcher(&selectors);
        if let Some(c) = file_cause(old_src, &new.steps[src], &pick) {
            return c;
        }
    }
    for (n, edge) in v.inputs.iter().enumerate() {
        if s.inputs[n] != o.inputs[n] {
            let name = step_of(&edge.vertex)
                .map(|x| new.steps[x].name.clone())
                .unwrap_or_default();
            return Cause::Input {
                vertex: edge.vertex,
                name,
            };
        }
    }
    Cause::Other
}

/// The misses of this build against the `old` record (`None`: no earlier build).
fn explain(old: Option<&Record>, new: &Build<'_>, ran: &[Digest]) -> Vec<Miss> {
    let matched = old.map(|o| match_steps(&o.steps, &new.steps));
    (0..new.steps.len())
        .filter(|&i| ran.contains(&new.ids[i]))
        .map(|i| Miss {
            vertex: new.ids[i],
            name: new.steps[i].name.clone(),
            cause: match (old, &matched) {
                (Some(old), Some(m)) => cause(old, new, m, i),
                _ => Cause::NoEarlierBuild,
            },
        })
        .collect()
}

fn read_header(path: &Path) -> Option<Header> {
    let file = std::fs::File::open(path).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(file).read_line(&mut line).ok()?;
    serde_json::from_str::<Header>(&line)
        .ok()
        .filter(|h| h.version == VERSION)
}

/// A record, or `None` when there is none or it cannot be read (then as after no build).
fn read_record(path: &Path) -> Option<Record> {
    let file = std::fs::File::open(path).ok()?;
    let mut lines = std::io::BufReader::new(file).lines();
    let header: Header = serde_json::from_str(&lines.next()?.ok()?).ok()?;
    if header.version != VERSION {
        return None;
    }
    let steps = lines
        .map(|l| serde_json::from_str::<Step>(&l.ok()?).ok())
        .collect::<Option<Vec<_>>>()?;
    Some(Record { header, steps })
}

fn write_record(path: &Path, header: &Header, steps: &[Step]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        crate::temp_suffix()
    ));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        serde_json::to_writer(&mut out, header)?;
        out.write_all(b"\n")?;
        for s in steps {
            serde_json::to_writer(&mut out, s)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        // Readers see the old record or the new one, never half of one.
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps the [`MAX_TARGETS`] most recently built targets' records, and drops temporaries
/// left by a killed build.
fn prune(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let now = std::time::SystemTime::now();
    let mut records = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let modified = e.metadata().and_then(|m| m.modified()).unwrap_or(now);
        if name.ends_with(".tmp") {
            // Another build's may be in flight: only old ones are leftovers.
            let age = now.duration_since(modified).unwrap_or_default();
            if age > std::time::Duration::from_secs(3600) {
                let _ = std::fs::remove_file(e.path());
            }
        } else if name.ends_with(".jsonl") {
            records.push((modified, e.path()));
        }
    }
    records.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, path) in records.into_iter().skip(MAX_TARGETS) {
        let _ = std::fs::remove_file(path);
    }
}

/// The record file of `target` under store root `root`.
fn record_path(root: &Path, target: &Target<'_>) -> PathBuf {
    let id = Digest::of(target.id().as_bytes());
    root.join("explain")
        .join(format!("{}.jsonl", &id.hex()[..32]))
}

/// After a successful solve: explains the steps that ran (when `explain` is set) against the
/// last build of `target`, then records this build as the last one.
pub(crate) fn finish(
    root: &Path,
    target: &Target<'_>,
    build_args: &BTreeMap<String, String>,
    def: &Definition,
    statuses: &[(Digest, Status)],
    recorder: &Recorder,
    explain_misses: bool,
) -> std::io::Result<Vec<Miss>> {
    let notes = recorder.take();
    let args: BTreeMap<String, ArgValue> = build_args
        .iter()
        .map(|(k, v)| (k.clone(), ArgValue::of(v)))
        .collect();
    // Every key (in graph order) and the arguments: equal means the same record.
    let mut all = kiln_types::Sha256Writer::default();
    for key in def
        .vertices
        .iter()
        .filter_map(|v| notes.get(&v.digest)?.key)
    {
        all.update(key.hex().as_bytes());
    }
    for (k, v) in &args {
        all.update(format!("\0{k}\0{v:?}").as_bytes());
    }
    let header = Header {
        version: VERSION,
        keys: all.finish().hex(),
        build_args: args,
    };
    let path = record_path(root, target);
    let ran: Vec<Digest> = statuses
        .iter()
        .filter(|(_, s)| matches!(s, Status::Executed { .. }))
        .map(|(id, _)| *id)
        .collect();
    let unchanged = read_header(&path).as_ref() == Some(&header);
    let touch = || {
        // The record stays; it is marked as recently built, for pruning.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    };
    // A no-op rebuild stops here, before the steps (and a large context's entries) are made.
    if unchanged && (!explain_misses || ran.is_empty()) {
        touch();
        return Ok(Vec::new());
    }
    let (ids, steps): (Vec<Digest>, Vec<Step>) = steps_of(def, &notes).into_iter().unzip();
    let build = Build {
        def,
        ids,
        steps,
        args: header.build_args.clone(),
    };
    let misses = if explain_misses && !ran.is_empty() {
        explain(read_record(&path).as_ref(), &build, &ran)
    } else {
        Vec::new()
    };
    if unchanged {
        touch();
    } else {
        write_record(&path, &header, &build.steps)?;
        if let Some(dir) = path.parent() {
            prune(dir);
        }
    }
    Ok(misses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use kiln_graph::{CopyAction, ExecBuilder, FileBuilder, ImageSource, LocalSource, State};

    fn local() -> State {
        State::local(
            LocalSource {
                name: "context".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
            },
            "[internal] load build context",
        )
    }

    /// The digest the base image `name` resolves to.
    fn pin(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    /// FROM image; COPY src /app; RUN echo $V — with `v` as the RUN's env. As the Dockerfile
    /// frontend makes it: the FROM has no build-file line.
    fn graph(image: &str, v: &str, copy: &str) -> Definition {
        let base = State::image(
            ImageSource {
                reference: format!("busybox:1@{}", pin(image)),
                platform: Platform::host(),
            },
            format!("[1/3] FROM busybox:1@{}", pin(image)),
        );
        let ctx = local();
        let copied = FileBuilder::new(&base)
            .copy(&ctx, CopyAction::new(None, copy, "/app"))
            .build(format!("[2/3] COPY {copy} /app"))
            .with_source("Dockerfile", 2);
        let run = ExecBuilder::new(&copied, vec!["sh".into(), "-c".into(), "echo $V".into()])
            .env(vec![format!("V={v}")])
            .build(format!("[3/3] RUN echo {v}"))
            .with_source("Dockerfile", 4);
        State::definition(&[run])
    }

    /// Notes keys as the executor would: each vertex's key from its op and inputs' keys, the
    /// context's from its `files`, a COPY's context input from the files it selects.
    fn solve(def: &Definition, files: &[(&str, &str)]) -> (Recorder, Vec<(Digest, Status)>) {
        solve_cached(def, files, &mut HashSet::new())
    }

    /// [`solve`] with a cache: a vertex whose key is in `cache` was cached, the others ran.
    fn solve_cached(
        def: &Definition,
        files: &[(&str, &str)],
        cache: &mut HashSet<Digest>,
    ) -> (Recorder, Vec<(Digest, Status)>) {
        let rec = Recorder::default();
        let mut entries: Vec<(String, Digest)> = files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), Digest::of(c.as_bytes())))
            .collect();
        entries.sort();
        let mut keys: HashMap<Digest, Digest> = HashMap::new();
        for v in &def.vertices {
            let mut h = kiln_types::Sha256Writer::default();
            h.update(&serde_json::to_vec(&v.op).unwrap());
            let mut inputs = Vec::new();
            for (i, e) in v.inputs.iter().enumerate() {
                let k = match copy_selectors(def, v, i) {
                    Some(sel) => {
                        let pick = crate::local::selection_matcher(&sel);
                        let mut s = kiln_types::Sha256Writer::default();
                        for (p, d) in entries.iter().filter(|(p, _)| pick(p)) {
                            s.update(p.as_bytes());
                            s.update(d.as_bytes());
                        }
                        s.finish()
                    }
                    None => keys[&e.vertex],
                };
                h.update(k.as_bytes());
                inputs.push(k);
            }
            if matches!(v.op, Op::Source(SourceOp::Local(_))) {
                for (p, d) in &entries {
                    h.update(p.as_bytes());
                    h.update(d.as_bytes());
                }
                rec.note_entries(v.digest, entries.clone());
            }
            let key = h.finish();
            keys.insert(v.digest, key);
            rec.note_key(v.digest, key, inputs);
        }
        let statuses = def
            .vertices
            .iter()
            .map(|v| {
                let status = if cache.insert(keys[&v.digest]) {
                    Status::Executed {
                        duration: std::time::Duration::ZERO,
                    }
                } else {
                    Status::Cached
                };
                (v.digest, status)
            })
            .collect();
        (rec, statuses)
    }

    struct Fixture {
        root: tempfile::TempDir,
        ctx: PathBuf,
        platform: Platform,
        cache: std::cell::RefCell<HashSet<Digest>>,
    }

    impl Fixture {
        fn new() -> Self {
            let root = tempfile::tempdir().unwrap();
            let ctx = root.path().join("ctx");
            std::fs::create_dir_all(&ctx).unwrap();
            Fixture {
                root,
                ctx,
                platform: Platform::host(),
                cache: Default::default(),
            }
        }

        /// Records a build and returns each miss as `name: cause`, inputs by name.
        fn build(
            &self,
            def: &Definition,
            files: &[(&str, &str)],
            args: &[(&str, &str)],
        ) -> Vec<String> {
            self.build_ran(def, files, args, None)
        }

        fn build_ran(
            &self,
            def: &Definition,
            files: &[(&str, &str)],
            args: &[(&str, &str)],
            ran: Option<&[usize]>,
        ) -> Vec<String> {
            let (rec, mut statuses) = solve_cached(def, files, &mut self.cache.borrow_mut());
            if let Some(ran) = ran {
                for (i, s) in statuses.iter_mut().enumerate() {
                    s.1 = if ran.contains(&i) {
                        Status::Executed {
                            duration: std::time::Duration::ZERO,
                        }
                    } else {
                        Status::Cached
                    };
                }
            }
            let target = Target {
                context: &self.ctx,
                dockerfile: &self.ctx.join("Dockerfile"),
                target: None,
                platform: &self.platform,
            };
            let args = args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            finish(self.root.path(), &target, &args, def, &statuses, &rec, true)
                .unwrap()
                .into_iter()
                .map(|m| format!("{}: {}", m.name, m.cause.render(&|_| None)))
                .collect()
        }
    }

    #[test]
    fn names_the_file_the_arg_the_image_and_the_instruction() {
        let f = Fixture::new();
        let files = [("src", "d"), ("src/main.rs", "fn main"), ("README", "hi")];
        let first = f.build(&graph("aaa", "1", "src"), &files, &[("V", "1")]);
        assert_eq!(first.len(), 4, "{first:?}");
        assert!(
            first.iter().all(|m| m.ends_with(": no earlier build")),
            "{first:?}"
        );

        let edited = [
            ("src", "d"),
            ("src/main.rs", "fn main() {}"),
            ("README", "hi"),
        ];
        let out = f.build(&graph("aaa", "1", "src"), &edited, &[("V", "1")]);
        assert_eq!(
            out,
            [
                "[internal] load build context: file changed: src/main.rs",
                "[2/3] COPY src /app: file changed: src/main.rs",
                "[3/3] RUN echo 1: input changed: [2/3] COPY src /app",
            ]
        );

        let out = f.build(&graph("aaa", "2", "src"), &edited, &[("V", "2")]);
        assert_eq!(
            out,
            [r#"[3/3] RUN echo 2: build arg V changed ("1" -> "2")"#]
        );

        let out = f.build(&graph("bbb", "2", "src"), &edited, &[("V", "2")]);
        let (aaa, bbb) = (pin("aaa"), pin("bbb"));
        assert_eq!(
            out,
            [
                format!("[1/3] FROM busybox:1@{bbb}: base image changed: {aaa} -> {bbb}"),
                format!("[2/3] COPY src /app: input changed: [1/3] FROM busybox:1@{bbb}"),
                "[3/3] RUN echo 2: input changed: [2/3] COPY src /app".to_owned(),
            ]
        );

        let out = f.build(&graph("bbb", "2", "README"), &edited, &[("V", "2")]);
        assert_eq!(
            out,
            [
                r#"[2/3] COPY README /app: instruction changed: "COPY src /app" -> "COPY README /app""#,
                "[3/3] RUN echo 2: input changed: [2/3] COPY README /app",
            ]
        );
    }

    #[test]
    fn a_file_the_copy_does_not_read_is_not_its_cause() {
        let f = Fixture::new();
        let files = [("src", "d"), ("src/main.rs", "x"), ("README", "hi")];
        f.build(&graph("aaa", "1", "src"), &files, &[]);
        // README changed and src/lib.rs appeared: the COPY of src names only the latter.
        let edited = [
            ("README", "changed"),
            ("src", "d"),
            ("src/lib.rs", "new"),
            ("src/main.rs", "x"),
        ];
        let out = f.build(&graph("aaa", "1", "src"), &edited, &[]);
        assert_eq!(
            out[0],
            "[internal] load build context: file changed: README (and 1 more)"
        );
        assert_eq!(out[1], "[2/3] COPY src /app: file added: src/lib.rs");
    }

    #[test]
    fn unchanged_steps_that_ran_say_why_and_cached_ones_say_nothing() {
        let f = Fixture::new();
        let files = [("a", "1")];
        let def = graph("aaa", "1", "a");
        f.build(&def, &files, &[]);
        // Same keys, only the RUN ran (its record was pruned): it says so.
        let out = f.build_ran(&def, &files, &[], Some(&[3]));
        assert_eq!(
            out,
            ["[3/3] RUN echo 1: unchanged, but not in the cache (pruned?)"]
        );
        assert!(f.build_ran(&def, &files, &[], Some(&[])).is_empty());
    }

    #[test]
    fn a_new_target_is_a_first_build_and_records_are_bounded() {
        let f = Fixture::new();
        let def = graph("aaa", "1", "a");
        f.build(&def, &[("a", "1")], &[]);
        let dir = f.root.path().join("explain");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // Another target in the same store starts from no earlier build.
        let target = Target {
            context: &f.ctx,
            dockerfile: &f.ctx.join("Dockerfile"),
            target: Some("other"),
            platform: &f.platform,
        };
        let (rec, statuses) = solve(&def, &[("a", "1")]);
        let misses = finish(
            f.root.path(),
            &target,
            &BTreeMap::new(),
            &def,
            &statuses,
            &rec,
            true,
        )
        .unwrap();
        assert!(misses.iter().all(|m| m.cause == Cause::NoEarlierBuild));
        for n in 0..MAX_TARGETS + 5 {
            let name = format!("t{n}");
            let target = Target {
                target: Some(&name),
                ..target
            };
            let (rec, statuses) = solve(&def, &[("a", "1")]);
            finish(
                f.root.path(),
                &target,
                &BTreeMap::new(),
                &def,
                &statuses,
                &rec,
                false,
            )
            .unwrap();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), MAX_TARGETS);
    }

    #[test]
    fn a_build_arg_not_given_reads_as_its_default() {
        let f = Fixture::new();
        let files = [("a", "1")];
        f.build(&graph("aaa", "0", "a"), &files, &[]);
        let out = f.build(&graph("aaa", "3", "a"), &files, &[("V", "3")]);
        assert_eq!(
            out,
            [r#"[3/3] RUN echo 3: build arg V changed (its default -> "3")"#]
        );
        let long = "x".repeat(MAX_ARG_VALUE + 1);
        let out = f.build(&graph("aaa", &long, "a"), &files, &[("V", &long)]);
        assert_eq!(
            out,
            [format!(
                r#"[3/3] RUN echo {long}: build arg V changed ("3" -> a long value)"#
            )]
        );
    }

    #[test]
    fn an_inserted_step_is_new_and_the_steps_after_it_name_it() {
        let f = Fixture::new();
        let files = [("a", "1")];
        let base = || {
            State::image(
                ImageSource {
                    reference: format!("busybox:1@{}", pin("aaa")),
                    platform: Platform::host(),
                },
                format!("[1/3] FROM busybox:1@{}", pin("aaa")),
            )
        };
        let run = |root: &State, cmd: &str, env: &str, name: &str, line: u32| {
            ExecBuilder::new(root, vec!["sh".into(), "-c".into(), cmd.into()])
                .env(vec![env.to_owned()])
                .build(name)
                .with_source("Dockerfile", line)
        };
        let before = {
            let one = run(&base(), "make", "HOME=/root", "[2/3] RUN make", 2);
            run(&one, "make test", "HOME=/root", "[3/3] RUN make test", 3)
        };
        f.build(&State::definition(&[before]), &files, &[]);
        let after = {
            let one = run(&base(), "make", "HOME=/root", "[2/4] RUN make", 2);
            let new = run(&one, "make lint", "HOME=/root", "[3/4] RUN make lint", 3);
            run(&new, "make test", "HOME=/root", "[4/4] RUN make test", 4)
        };
        let out = f.build(
            &State::definition(std::slice::from_ref(&after)),
            &files,
            &[],
        );
        assert_eq!(
            out,
            [
                "[3/4] RUN make lint: instruction changed: new step",
                "[4/4] RUN make test: input changed: [3/4] RUN make lint",
            ]
        );
        // An ENV above a step changes its environment.
        let env = {
            let one = run(&base(), "make", "HOME=/home", "[2/4] RUN make", 2);
            let new = run(&one, "make lint", "HOME=/root", "[3/4] RUN make lint", 3);
            run(&new, "make test", "HOME=/root", "[4/4] RUN make test", 4)
        };
        let out = f.build(&State::definition(&[env]), &files, &[]);
        assert_eq!(out[0], "[2/4] RUN make: environment variable HOME changed");
        // --no-cache: the same keys, run anyway.
        let def = State::definition(&[after.ignore_cache(true)]);
        f.build(&def, &files, &[]);
        let out = f.build_ran(&def, &files, &[], Some(&[3]));
        assert_eq!(
            out,
            ["[4/4] RUN make test: cache disabled for this step (--no-cache)"]
        );
    }

    #[test]
    fn identity_drops_the_counter_only() {
        assert_eq!(identity("[build 3/4] COPY . /app"), "[build] COPY . /app");
        assert_eq!(identity("[2/3] RUN x"), "[] RUN x");
        assert_eq!(
            identity("[internal] load build context"),
            "[internal] load build context"
        );
        assert_eq!(instruction("[build 3/4] COPY . /app"), "COPY . /app");
        let pinned = format!("[1/2] FROM busybox:1@{}", Digest::of(b"x"));
        assert_eq!(identity(&pinned), "[] FROM busybox:1");
        assert_eq!(unpinned("a@sha256:12 b"), "a@sha256:12 b");
    }

    /// One daemon runs builds of the same target at once: each keeps its record through a
    /// temporary file of its own, so none fails and the record is whole.
    #[test]
    fn builds_of_one_target_at_once_in_one_process_each_keep_their_record() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("explain").join("target.jsonl");
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..4)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || {
                        for n in 0..50 {
                            let header = Header {
                                version: VERSION,
                                keys: format!("{i}-{n}"),
                                build_args: BTreeMap::new(),
                            };
                            write_record(path, &header, &[]).unwrap();
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
        });
        assert!(read_header(&path).is_some(), "the record is not whole");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("target.jsonl")]);
        assert_ne!(crate::temp_suffix(), crate::temp_suffix());
    }
}
