//! Parsing `--output` and printing tables and errors.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_engine::{Call, Export, HostEntry, SecretSource, SshSource, Ulimit, UlimitResource};
use kiln_plugin_host::PluginRegistry;

/// Parses buildx's `--output` syntax: `type=oci,dest=x.tar`, `type=local,dest=dir`, or a bare
/// path (a local directory; `-` is not supported).
pub fn parse_output(spec: &str) -> Result<Export> {
    if !spec.contains('=') {
        if spec == "-" {
            bail!("--output -: writing to stdout is not supported yet");
        }
        return Ok(Export::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut tar = true;
    let mut rewrite_timestamp = false;
    let mut name: Option<String> = None;
    let mut push = false;
    let boolean = |k: &str, v: &str| match v.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(anyhow::anyhow!(
            "invalid --output {spec:?}: {k}={other} is not true or false"
        )),
    };
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --output {spec:?}: {part:?} is not key=value")
        })?;
        match k.trim() {
            "type" => kind = Some(v.trim().to_owned()),
            "dest" => dest = Some(PathBuf::from(v.trim())),
            "tar" => tar = boolean("tar", v)?,
            "rewrite-timestamp" => rewrite_timestamp = boolean("rewrite-timestamp", v)?,
            "name" => name = Some(v.trim().to_owned()),
            "push" => push = boolean("push", v)?,
            // Accepted by buildx exporters; they do not change the result here.
            "oci-mediatypes" | "compression" | "force-compression" => {}
            other => bail!("invalid --output {spec:?}: unknown attribute {other:?}"),
        }
    }
    let Some(kind) = kind else {
        bail!("invalid --output {spec:?}: missing type= (oci or local)");
    };
    let need_dest = |dest: Option<PathBuf>| {
        dest.ok_or_else(|| anyhow::anyhow!("invalid --output {spec:?}: type={kind} needs dest="))
    };
    match kind.as_str() {
        "oci" => Ok(Export::Oci {
            dest: need_dest(dest)?,
            tar,
            rewrite_timestamp,
        }),
        "local" => Ok(Export::Local {
            dest: need_dest(dest)?,
        }),
        // The names come from `name=` or, when absent, from `-t` (filled in by the caller).
        "registry" => Ok(Export::Registry {
            names: name.into_iter().collect(),
        }),
        "image" if push => Ok(Export::Registry {
            names: name.into_iter().collect(),
        }),
        "image" => bail!(
            "--output type=image without push=true is not supported: kiln keeps no image store; \
             use push=true, type=registry, or type=oci"
        ),
        "docker" => Ok(Export::Docker {
            dest: need_dest(dest)?,
        }),
        "tar" | "cacheonly" => {
            bail!("--output type={kind} is not supported yet; use type=oci, type=docker, type=local or type=registry")
        }
        other => bail!("invalid --output {spec:?}: unknown type {other:?} (oci or local)"),
    }
}

/// `kiln plugins ls`.
pub fn plugins_table(registry: &PluginRegistry) {
    println!(
        "{:<20} {:<28} {:<10} {:<4} PATH",
        "NAME", "KINDS", "VERSION", "ABI"
    );
    for p in registry.plugins() {
        let kinds: Vec<String> = p
            .kinds()
            .iter()
            .map(|k| format!("{k:?}").to_lowercase())
            .collect();
        println!(
            "{:<20} {:<28} {:<10} {:<4} {}",
            p.name(),
            kinds.join(","),
            p.version(),
            p.abi_version(),
            p.path().display()
        );
    }
    if !registry.refused().is_empty() {
        println!("\nREFUSED");
        for r in registry.refused() {
            println!("{r}");
        }
    }
}

/// The lines around `line` of the build file, BuildKit style, on stderr.
pub fn show_location(dockerfile: &Path, line: usize) {
    for l in location_lines(dockerfile, line) {
        eprintln!("{l}");
    }
}

/// The lines around `line` of the build file, BuildKit style (none when it cannot be read).
fn location_lines(dockerfile: &Path, line: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dockerfile) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return Vec::new();
    }
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![format!("{name}:{line}"), "--------------------".to_owned()];
    let from = line.saturating_sub(3).max(1);
    let to = (line + 2).min(lines.len());
    for (i, l) in lines.iter().enumerate().take(to).skip(from - 1) {
        let n = i + 1;
        let mark = if n == line { ">>>" } else { "   " };
        out.push(format!("{n:>4} | {mark} {}", shorten_line(l)));
    }
    out.push("--------------------".to_owned());
    out
}

/// Lines longer than this are cut in the error box: a hostile Dockerfile's 30 KB line would
/// only bury the message.
const MAX_SHOWN_LINE: usize = 240;

fn shorten_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_SHOWN_LINE {
        return line.into();
    }
    let mut end = MAX_SHOWN_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &line[..end], line.len() - end).into()
}

/// An error and its causes, without repeating a cause already quoted by its parent.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// Parses buildx's `--secret`: `id=X,src=FILE` (or `source=`), `id=X,env=VAR`, or `id=X`
/// alone (the environment variable X, as buildx does when it is set).
pub fn parse_secret(spec: &str) -> Result<(String, SecretSource)> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid --secret {spec:?}: {part:?} is not key=value")
        })?;
        match k.trim() {
            "id" => id = Some(v.trim().to_owned()),
            "src" | "source" => src = Some(PathBuf::from(v.trim())),
            "env" => env = Some(v.trim().to_owned()),
            "type" if matches!(v.trim(), "file" | "env") => {}
            other => bail!("invalid --secret {spec:?}: unknown attribute {other:?}"),
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        bail!("invalid --secret {spec:?}: missing id=");
    };
    let source = match (src, env) {
        (Some(p), None) => SecretSource::File(p),
        (None, Some(v)) => SecretSource::Env(v),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => bail!("invalid --secret {spec:?}: give src=FILE or env=VAR"),
        (Some(_), Some(_)) => bail!("invalid --secret {spec:?}: src= and env= exclude each other"),
    };
    Ok((id, source))
}

/// Whether the CONTEXT argument names a remote context (a URL or a git remote), as buildx
/// recognizes them.
pub fn is_remote_context(context: &str) -> bool {
    [
        "http://",
        "https://",
        "git://",
        "ssh://",
        "git@",
        "github.com/",
    ]
    .iter()
    .any(|p| context.starts_with(p))
}

/// The Dockerfile read from stdin (`-f -`), in a private directory removed when dropped.
pub struct StdinDockerfile {
    dir: PathBuf,
}

impl StdinDockerfile {
    /// Reads stdin to its end.
    pub fn read() -> Result<Self> {
        use std::io::Read;
        let mut text = Vec::new();
        std::io::stdin()
            .read_to_end(&mut text)
            .context("reading the Dockerfile from stdin (-f -)")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("kiln-stdin-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let me = StdinDockerfile { dir };
        std::fs::write(me.path(), text)
            .with_context(|| format!("writing {}", me.path().display()))?;
        Ok(me)
    }

    /// The file holding it (named `Dockerfile`, as buildx shows it).
    pub fn path(&self) -> PathBuf {
        self.dir.join("Dockerfile")
    }
}

use std::os::unix::fs::DirBuilderExt;

impl Drop for StdinDockerfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses buildx's `--ssh`: `default`, `ID` (both the agent at `$SSH_AUTH_SOCK`) or
/// `ID=SOCKET`. Key files (`ID=KEY[,KEY]`) are refused: kiln forwards agents only.
pub fn parse_ssh(spec: &str) -> Result<(String, SshSource)> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, p)) => (id.trim(), Some(p)),
        None => (spec.trim(), None),
    };
    if id.is_empty() {
        bail!("invalid --ssh {spec:?}: missing id (use --ssh default)");
    }
    let Some(paths) = paths else {
        let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty());
        let Some(sock) = sock else {
            bail!(
                "invalid --ssh {spec}: invalid empty ssh agent socket: make sure SSH_AUTH_SOCK \
                 is set (start ssh-agent), or pass --ssh {id}=/path/to/agent.sock"
            );
        };
        return Ok((id.to_owned(), SshSource::Agent(PathBuf::from(sock))));
    };
    let list: Vec<&str> = paths.split(',').map(str::trim).collect();
    let key_files_refused = || {
        anyhow::anyhow!(
            "--ssh {spec}: key files are not supported yet; load the key into an agent \
             (ssh-add KEY) and pass --ssh {id} or --ssh {id}=/path/to/agent.sock"
        )
    };
    let [path] = list.as_slice() else {
        return Err(key_files_refused());
    };
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("invalid --ssh {spec}: cannot use {path}"))?;
    if !meta.file_type().is_socket() {
        return Err(key_files_refused());
    }
    Ok((id.to_owned(), SshSource::Agent(PathBuf::from(path))))
}

/// Parses `--add-host`: `host:ip` or `host=ip` (an IPv6 address may be in brackets).
pub fn parse_add_host(spec: &str) -> Result<HostEntry> {
    let (host, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| anyhow::anyhow!("invalid --add-host {spec:?}: expected host:ip"))?;
    let host = host.trim();
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        bail!("invalid --add-host {spec:?}: {host:?} is not a host name");
    }
    if ip == "host-gateway" {
        bail!("--add-host {spec}: host-gateway is not supported yet; give the address");
    }
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --add-host {spec:?}: {ip:?} is not an IP address"))?;
    Ok(HostEntry {
        host: host.to_owned(),
        ip: ip.to_string(),
    })
}

/// Parses a size as Docker's `--shm-size` (go-units `RAMInBytes`; the same rules as a
/// Dockerfile's tmpfs `size=`): a decimal number, one optional space, then an optional unit `b`,
/// or `k` `m` `g` `t` `p` (powers of 1024) alone or followed by `b` or `ib`, any case: `64m`,
/// `1.5g`, `512KiB`.
pub fn parse_shm_size(spec: &str) -> Result<u64> {
    let bytes = kiln_types::size::parse_ram_size(spec).ok_or_else(|| {
        anyhow::anyhow!(
            "invalid --shm-size {spec:?}: expected a number with an optional unit b, k, m, g, t \
             or p (e.g. 64m)"
        )
    })?;
    if bytes == 0 {
        bail!("invalid --shm-size {spec:?}: the size must be at least one byte");
    }
    Ok(bytes)
}

/// Parses `--ulimit type=soft[:hard]` (hard defaults to soft; `-1` is unlimited).
pub fn parse_ulimit(spec: &str) -> Result<Ulimit> {
    let (name, values) = spec
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("invalid --ulimit {spec:?}: expected type=soft[:hard]"))?;
    let resource = UlimitResource::from_name(name.trim()).ok_or_else(|| {
        let names: Vec<&str> = UlimitResource::ALL.iter().map(|r| r.name()).collect();
        anyhow::anyhow!(
            "invalid --ulimit {spec:?}: unknown type {name:?} (one of {})",
            names.join(", ")
        )
    })?;
    let value = |v: &str| -> Result<u64> {
        match v.trim() {
            "-1" => Ok(Ulimit::UNLIMITED),
            v => v.parse().map_err(|_| {
                anyhow::anyhow!("invalid --ulimit {spec:?}: {v:?} is not a number or -1")
            }),
        }
    };
    let (soft, hard) = match values.split_once(':') {
        Some((s, h)) => (value(s)?, value(h)?),
        None => (value(values)?, value(values)?),
    };
    if soft > hard {
        bail!("invalid --ulimit {spec:?}: the soft limit {soft} is above the hard limit {hard}");
    }
    Ok(Ulimit {
        resource,
        soft,
        hard,
    })
}

/// Parses `--call NAME[,format=json]`; `build` (the default) is `None`.
pub fn parse_call(spec: &str) -> Result<Option<(Call, bool)>> {
    let mut parts = spec.split(',');
    let name = parts.next().unwrap_or_default().trim();
    let mut json = false;
    for p in parts {
        match p.trim().split_once('=') {
            Some(("format", "json")) => json = true,
            Some(("format", "text")) => json = false,
            _ => bail!("invalid --call {spec:?}: unknown option {p:?} (format=json|text)"),
        }
    }
    let call = match name {
        "build" => return Ok(None),
        "targets" => Call::Targets,
        "outline" => Call::Outline,
        "check" | "lint" => Call::Check,
        other => bail!("invalid --call {other:?}: expected build, check, outline or targets"),
    };
    Ok(Some((call, json)))
}

/// Prints the frontend's answer to a `--call` on stdout, as buildx does: JSON when `raw`,
/// otherwise text for people. A check with findings exits 1.
pub fn print_call(call: Call, json: &str, raw: bool, dockerfile: &Path) -> Result<ExitCode> {
    let value: serde_json::Value = serde_json::from_str(json)
        .with_context(|| format!("the frontend's --call={} result is not JSON", call.name()))?;
    let failed = call == Call::Check && check_failed(&value);
    let text = if raw {
        serde_json::to_string_pretty(&value).context("printing the --call result")?
    } else {
        match call {
            Call::Targets => targets_text(&value),
            Call::Outline => outline_text(&value),
            Call::Check => check_text(&value, dockerfile),
        }
    };
    println!("{}", text.trim_end());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

use std::process::ExitCode;

fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or_default()
}

fn list_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    v.get(key)
        .and_then(|x| x.as_array())
        .map_or(&[], |a| a.as_slice())
}

/// Columns separated by at least two spaces, as Go's tabwriter in buildx.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let w = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `TARGET  DESCRIPTION`, the default target marked as buildx marks it.
fn targets_text(v: &serde_json::Value) -> String {
    let mut rows = vec![vec!["TARGET".to_owned(), "DESCRIPTION".to_owned()]];
    for t in list_of(v, "targets") {
        let name = str_of(t, "name");
        let default = t.get("default").and_then(|d| d.as_bool()).unwrap_or(false);
        let name = match (name.is_empty(), default) {
            (true, true) => "(default)".to_owned(),
            (false, true) => format!("{name} (default)"),
            _ => name.to_owned(),
        };
        rows.push(vec![name, str_of(t, "description").to_owned()]);
    }
    table(&rows)
}

/// The target, then its build arguments, secrets and SSH mounts.
fn outline_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let name = str_of(v, "name");
    if !name.is_empty() {
        out.push_str(&format!("TARGET:      {name}\n"));
    }
    let description = str_of(v, "description");
    if !description.is_empty() {
        out.push_str(&format!("DESCRIPTION: {description}\n"));
    }
    let args = list_of(v, "args");
    if !args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_owned(),
            "VALUE".to_owned(),
            "DESCRIPTION".to_owned(),
        ]];
        for a in args {
            rows.push(vec![
                str_of(a, "name").to_owned(),
                str_of(a, "value").to_owned(),
                str_of(a, "description").to_owned(),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    for (key, title) in [("secrets", "SECRET"), ("ssh", "SSH")] {
        let items = list_of(v, key);
        if items.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_owned(), "REQUIRED".to_owned()]];
        for s in items {
            let required = s.get("required").and_then(|r| r.as_bool()).unwrap_or(false);
            rows.push(vec![
                str_of(s, "name").to_owned(),
                if required { "true" } else { "" }.to_owned(),
            ]);
        }
        out.push('\n');
        out.push_str(&table(&rows));
    }
    out
}

fn check_failed(v: &serde_json::Value) -> bool {
    !list_of(v, "warnings").is_empty() || v.get("error").is_some_and(|e| !e.is_null())
}

/// The 1-based line of a check finding (`location.ranges[0].start.line`).
fn finding_line(w: &serde_json::Value) -> Option<usize> {
    let loc = w.get("location")?;
    let line = loc
        .get("ranges")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("start"))
        .and_then(|s| s.get("line"))
        .or_else(|| loc.get("line"))?;
    usize::try_from(line.as_u64()?).ok()
}

/// Each finding as buildx prints it, then the summary line.
fn check_text(v: &serde_json::Value, dockerfile: &Path) -> String {
    let mut out = String::new();
    let warnings = list_of(v, "warnings");
    for w in warnings {
        let rule = str_of(w, "ruleName");
        let url = str_of(w, "url");
        out.push_str(&format!("WARNING: {rule}"));
        if !url.is_empty() {
            out.push_str(&format!(" - {url}"));
        }
        out.push('\n');
        let detail = match str_of(w, "detail") {
            "" => str_of(w, "description"),
            d => d,
        };
        out.push_str(&format!("{detail}\n"));
        if let Some(line) = finding_line(w) {
            for l in location_lines(dockerfile, line) {
                out.push_str(&format!("{l}\n"));
            }
        }
        out.push('\n');
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        out.push_str(&format!("ERROR: {}\n", str_of(e, "message")));
        if let Some(line) = finding_line(e) {
            for l in location_lines(dockerfile, line) {
                out.push_str(&format!("{l}\n"));
            }
        }
        out.push('\n');
    }
    match warnings.len() {
        0 if v.get("error").is_some_and(|e| !e.is_null()) => {
            out.push_str("Check complete, an error was found!\n")
        }
        0 => out.push_str("Check complete, no warnings found.\n"),
        1 => out.push_str("Check complete, 1 warning has been found!\n"),
        n => out.push_str(&format!("Check complete, {n} warnings have been found!\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_box_cuts_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        let long = format!("LABEL a={}", "é".repeat(15_000));
        std::fs::write(&df, format!("FROM scratch\n{long}\nCOPY a /\n")).unwrap();
        let lines = location_lines(&df, 2);
        assert_eq!(lines[0], "Dockerfile:2");
        let shown = lines.iter().find(|l| l.contains(">>>")).unwrap();
        assert!(
            shown.len() < 300 && shown.contains("more bytes)"),
            "{shown}"
        );
        assert!(lines.iter().any(|l| l.ends_with("COPY a /")), "{lines:?}");
    }

    #[test]
    fn output_rewrite_timestamp() {
        assert_eq!(
            parse_output("type=oci,dest=a.tar,rewrite-timestamp=true").unwrap(),
            Export::Oci {
                dest: "a.tar".into(),
                tar: true,
                rewrite_timestamp: true
            }
        );
        assert!(parse_output("type=oci,dest=a.tar,rewrite-timestamp=maybe").is_err());
    }

    #[test]
    fn add_hosts() {
        let h = parse_add_host("myhost:10.0.0.7").unwrap();
        assert_eq!((h.host.as_str(), h.ip.as_str()), ("myhost", "10.0.0.7"));
        let h = parse_add_host("v6=[fd00::1]").unwrap();
        assert_eq!((h.host.as_str(), h.ip.as_str()), ("v6", "fd00::1"));
        let h = parse_add_host("v6:::1").unwrap();
        assert_eq!(h.ip, "::1");
        assert!(parse_add_host("nohost").is_err());
        assert!(parse_add_host("a:not-an-ip").is_err());
        assert!(parse_add_host("a:host-gateway")
            .unwrap_err()
            .to_string()
            .contains("not supported yet"));
    }

    #[test]
    fn shm_sizes() {
        assert_eq!(parse_shm_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_shm_size("128m").unwrap(), 128 << 20);
        assert_eq!(parse_shm_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_shm_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_shm_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_shm_size("10kb").unwrap(), 10 << 10);
        assert!(parse_shm_size("0").is_err());
        assert!(parse_shm_size("12x").is_err());
        assert!(parse_shm_size("m").is_err());
        // The same rules as a Dockerfile's tmpfs size (go-units RAMInBytes).
        assert_eq!(parse_shm_size("1p").unwrap(), 1 << 50);
        assert_eq!(parse_shm_size("32 KiB").unwrap(), 32 << 10);
        for bad in ["10bb", "1  k", "2ki", "1e", "1_000", "1e3", "-1", " 1k"] {
            assert!(parse_shm_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ulimits() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!(
            (u.resource, u.soft, u.hard),
            (UlimitResource::Nofile, 1024, 2048)
        );
        let u = parse_ulimit("core=-1").unwrap();
        assert_eq!((u.soft, u.hard), (Ulimit::UNLIMITED, Ulimit::UNLIMITED));
        assert!(parse_ulimit("nofile=4096:1024").is_err());
        assert!(parse_ulimit("files=1").is_err());
        assert!(parse_ulimit("nofile").is_err());
    }

    #[test]
    fn ssh_specs() {
        let t = std::env::temp_dir().join(format!("kiln-cli-ssh-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        let sock = t.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let spec = format!("default={}", sock.display());
        assert_eq!(
            parse_ssh(&spec).unwrap(),
            ("default".to_owned(), SshSource::Agent(sock.clone()))
        );
        let key = t.join("id_ed25519");
        std::fs::write(&key, "key").unwrap();
        let e = parse_ssh(&format!("deploy={}", key.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key files are not supported yet"), "{e}");
        assert!(parse_ssh(&format!("x={},{}", key.display(), key.display())).is_err());
        assert!(parse_ssh("=x").is_err());
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn remote_contexts() {
        for c in [
            "https://github.com/moby/buildkit.git",
            "git@github.com:moby/buildkit.git",
            "github.com/moby/buildkit",
            "http://example.com/ctx.tar.gz",
        ] {
            assert!(is_remote_context(c), "{c}");
        }
        assert!(!is_remote_context("./https"));
        assert!(!is_remote_context("."));
    }

    #[test]
    fn calls() {
        assert_eq!(parse_call("build").unwrap(), None);
        assert_eq!(parse_call("targets").unwrap(), Some((Call::Targets, false)));
        assert_eq!(
            parse_call("outline,format=json").unwrap(),
            Some((Call::Outline, true))
        );
        assert!(parse_call("nope").is_err());
        assert!(parse_call("check,color=1").is_err());
    }

    #[test]
    fn call_texts() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"targets":[{"name":"build","description":"compile it"},
                {"name":"release","default":true,"description":"the image"}]}"#,
        )
        .unwrap();
        assert_eq!(
            targets_text(&v),
            "TARGET             DESCRIPTION\nbuild              compile it\nrelease (default)  the image\n"
        );
        let v: serde_json::Value = serde_json::from_str(
            r#"{"name":"app","args":[{"name":"VERSION","value":"1.0","description":"the version"}],
                "secrets":[{"name":"token","required":true}]}"#,
        )
        .unwrap();
        let text = outline_text(&v);
        assert!(text.starts_with("TARGET:      app\n"), "{text}");
        assert!(text.contains("VERSION    1.0    the version"), "{text}");
        assert!(text.contains("token   true"), "{text}");
        let v: serde_json::Value = serde_json::from_str(
            r#"{"warnings":[{"ruleName":"StageNameCasing","url":"https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
                "detail":"Stage name 'Build' should be lowercase",
                "location":{"ranges":[{"start":{"line":1}}]}}]}"#,
        )
        .unwrap();
        assert!(check_failed(&v));
        let text = check_text(&v, Path::new("/nonexistent/Dockerfile"));
        assert!(
            text.starts_with("WARNING: StageNameCasing - https://"),
            "{text}"
        );
        assert!(
            text.ends_with("Check complete, 1 warning has been found!\n"),
            "{text}"
        );
        let clean: serde_json::Value = serde_json::from_str(r#"{"warnings":[]}"#).unwrap();
        assert!(!check_failed(&clean));
        assert!(check_text(&clean, Path::new("x")).contains("no warnings found"));
    }
}
