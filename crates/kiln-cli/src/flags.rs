//! Parsers of build flags given as specs (`--secret`, `--ssh`, `--add-host`,
//! `--shm-size`, `--ulimit`), `--progress` with `-q` and its environment defaults, the
//! remote-context check, and `-f -` (the Dockerfile on stdin).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_engine::{HostEntry, RemoteContext, SecretSource, SshSource, Ulimit, UlimitResource};
use kiln_progress::Mode;

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

/// The CONTEXT argument when it is not a local directory, as buildx takes it: a git URL or an
/// http(s) URL (fetched by the engine), or `-` (stdin holds a tar archive or a Dockerfile).
/// `-f -` cannot go with `-`: stdin holds one of them only.
pub fn remote_context(context: &str, file: Option<&Path>) -> Result<Option<RemoteContext>> {
    if context == "-" {
        if file.is_some_and(|f| f.as_os_str() == "-") {
            bail!("invalid argument: can't use stdin for both build context and dockerfile");
        }
        // Reading a terminal would wait for typing that never comes as a tar.
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!(
                "`kiln build -` reads the build context from stdin, which is a terminal: pipe a \
                 tar archive of the context or a Dockerfile into it"
            );
        }
        return Ok(Some(RemoteContext::Stdin(Box::new(std::io::stdin()))));
    }
    Ok(RemoteContext::from_url(context))
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

impl Drop for StdinDockerfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parses buildx's `--ssh`: `default`, `ID` (both the agent at `$SSH_AUTH_SOCK`), `ID=SOCKET`
/// or `ID=KEY[,KEY]` (private key files, which the engine loads into an agent of the build's
/// own). BuildKit's rules: a path is a socket when `stat` (following links) says so, otherwise
/// a key file; one socket at most, and never a socket with keys.
pub fn parse_ssh(spec: &str) -> Result<(String, SshSource)> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, p)) => (id.trim(), Some(p)),
        None => (spec.trim(), None),
    };
    if id.is_empty() {
        bail!("invalid --ssh {spec:?}: missing id (use --ssh default)");
    }
    let paths = paths.filter(|p| !p.trim().is_empty());
    let Some(paths) = paths else {
        let sock = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty());
        let Some(sock) = sock else {
            bail!(
                "invalid --ssh {spec}: invalid empty ssh agent socket: make sure SSH_AUTH_SOCK \
                 is set (start ssh-agent), or pass --ssh {id}=/path/to/agent.sock or \
                 --ssh {id}=/path/to/private_key"
            );
        };
        return Ok((id.to_owned(), SshSource::Agent(PathBuf::from(sock))));
    };
    use std::os::unix::fs::FileTypeExt;
    let mut socket = None;
    let mut keys = Vec::new();
    for path in paths.split(',').map(str::trim) {
        if socket.is_some() {
            bail!("invalid --ssh {spec}: only a single socket is allowed");
        }
        let meta = std::fs::metadata(path)
            .with_context(|| format!("invalid --ssh {spec}: cannot use {path}"))?;
        if meta.file_type().is_socket() {
            socket = Some(PathBuf::from(path));
        } else {
            keys.push(PathBuf::from(path));
        }
    }
    match socket {
        Some(_) if !keys.is_empty() => bail!(
            "invalid --ssh {spec}: invalid combination of keys and sockets (give an agent \
             socket or key files)"
        ),
        Some(sock) => Ok((id.to_owned(), SshSource::Agent(sock))),
        None => Ok((id.to_owned(), SshSource::Keys(keys))),
    }
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
    // `host-gateway` is the address at which a build step reaches the host. dockerd answers
    // with the gateway of its default bridge, from a container's own network namespace; kiln's
    // RUN steps share the host's network namespace, where the host is its own loopback (as
    // with `docker run --network=host`). A `RUN --network=none` step has a loopback of its own
    // and nothing of the host to reach, whatever the entry says.
    let ip = if ip == "host-gateway" {
        "127.0.0.1"
    } else {
        ip
    };
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

/// `--progress` values, buildx's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// tty on a terminal, plain elsewhere (or the environment's choice).
    Auto,
    /// Nothing while building.
    Quiet,
    /// One line per event.
    Plain,
    /// A live view redrawn in place.
    Tty,
    /// JSON lines.
    Rawjson,
}

/// How a build shows itself, from `--progress`, `-q` and the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressChoice {
    /// The renderer's mode; `None` shows nothing (quiet).
    pub mode: Option<Mode>,
    /// `-q` (or `--progress=quiet`): print the image ID on stdout at the end, as buildx does.
    pub print_id: bool,
}

/// The environment variables that choose the mode when `--progress` is `auto`, first wins:
/// kiln's own, then BuildKit's (which buildx honours).
pub const PROGRESS_ENV: [&str; 2] = ["KILN_PROGRESS", "BUILDKIT_PROGRESS"];

/// Resolves the display as buildx does: `-q` means `--progress=quiet` and refuses another
/// explicit mode; only `auto` defers to [`PROGRESS_ENV`] (a quiet mode chosen there shows
/// nothing but prints no ID, as in buildx, whose ID printing follows the flags alone).
pub fn resolve_progress(
    flag: Progress,
    quiet: bool,
    env: impl Fn(&str) -> Option<String>,
    is_terminal: bool,
) -> Result<ProgressChoice> {
    let flag = match (flag, quiet) {
        (Progress::Auto | Progress::Quiet, true) => Progress::Quiet,
        (other, true) => {
            let name = clap::ValueEnum::to_possible_value(&other)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            bail!("--progress={name} and --quiet cannot be used together")
        }
        (flag, false) => flag,
    };
    let print_id = flag == Progress::Quiet;
    let mut chosen = flag;
    if flag == Progress::Auto {
        for var in PROGRESS_ENV {
            let Some(value) = env(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            chosen = <Progress as clap::ValueEnum>::from_str(&value, true).map_err(|_| {
                anyhow::anyhow!(
                    "invalid {var}={value:?}: expected auto, quiet, plain, tty or rawjson"
                )
            })?;
            break;
        }
    }
    let mode = match chosen {
        Progress::Auto => Some(Mode::auto(is_terminal)),
        Progress::Quiet => None,
        Progress::Plain => Some(Mode::Plain),
        Progress::Tty => Some(Mode::Tty),
        Progress::Rawjson => Some(Mode::RawJson),
    };
    Ok(ProgressChoice { mode, print_id })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let h = parse_add_host("host.docker.internal:host-gateway").unwrap();
        assert_eq!(
            (h.host.as_str(), h.ip.as_str()),
            ("host.docker.internal", "127.0.0.1")
        );
        assert_eq!(parse_add_host("gw=host-gateway").unwrap().ip, "127.0.0.1");
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
        let key2 = t.join("id_rsa");
        std::fs::write(&key2, "key").unwrap();
        // Files that are not sockets are key files, one or several (the engine reads them).
        assert_eq!(
            parse_ssh(&format!("deploy={}", key.display())).unwrap(),
            ("deploy".to_owned(), SshSource::Keys(vec![key.clone()]))
        );
        assert_eq!(
            parse_ssh(&format!("deploy={},{}", key.display(), key2.display())).unwrap(),
            (
                "deploy".to_owned(),
                SshSource::Keys(vec![key.clone(), key2.clone()])
            )
        );
        let mixed = parse_ssh(&format!("x={},{}", key.display(), sock.display()))
            .unwrap_err()
            .to_string();
        assert!(
            mixed.contains("invalid combination of keys and sockets"),
            "{mixed}"
        );
        let two = parse_ssh(&format!("x={},{}", sock.display(), sock.display()))
            .unwrap_err()
            .to_string();
        assert!(two.contains("only a single socket"), "{two}");
        let gone = parse_ssh(&format!("x={}", t.join("gone").display()))
            .unwrap_err()
            .to_string();
        assert!(gone.contains("cannot use"), "{gone}");
        assert!(parse_ssh("=x").is_err());
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn remote_contexts() {
        let remote = |c: &str| remote_context(c, None).unwrap();
        for c in [
            "https://github.com/moby/buildkit.git#master:frontend",
            "git@github.com:moby/buildkit.git",
            "git://127.0.0.1/r.git?ref=v1",
        ] {
            assert!(matches!(remote(c), Some(RemoteContext::Git(_))), "{c}");
        }
        assert!(matches!(
            remote("http://example.com/ctx.tar.gz"),
            Some(RemoteContext::Http(_))
        ));
        // buildx's IsRemoteURL: a bare host path is a local path.
        for c in ["./https", ".", "github.com/moby/buildkit"] {
            assert!(remote(c).is_none(), "{c}");
        }
        let e = remote_context("-", Some(Path::new("-")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("can't use stdin for both"), "{e}");
    }

    #[test]
    fn progress_quiet_and_environment() {
        let none = |_: &str| None;
        let plain = ProgressChoice {
            mode: Some(Mode::Plain),
            print_id: false,
        };
        assert_eq!(
            resolve_progress(Progress::Auto, false, none, false).unwrap(),
            plain
        );
        let quiet = ProgressChoice {
            mode: None,
            print_id: true,
        };
        assert_eq!(
            resolve_progress(Progress::Auto, true, none, true).unwrap(),
            quiet
        );
        assert_eq!(
            resolve_progress(Progress::Quiet, false, none, true).unwrap(),
            quiet
        );
        let e = resolve_progress(Progress::Plain, true, none, false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--progress=plain and --quiet cannot be used together");

        // The environment is asked only when the flag is auto; kiln's variable first.
        let env = |var: &str| match var {
            "KILN_PROGRESS" => Some("rawjson".to_owned()),
            "BUILDKIT_PROGRESS" => Some("plain".to_owned()),
            _ => None,
        };
        assert_eq!(
            resolve_progress(Progress::Auto, false, env, true)
                .unwrap()
                .mode,
            Some(Mode::RawJson)
        );
        assert_eq!(
            resolve_progress(Progress::Tty, false, env, false)
                .unwrap()
                .mode,
            Some(Mode::Tty)
        );
        let buildkit = |var: &str| (var == "BUILDKIT_PROGRESS").then(|| "plain".to_owned());
        assert_eq!(
            resolve_progress(Progress::Auto, false, buildkit, true)
                .unwrap()
                .mode,
            Some(Mode::Plain)
        );
        // -q wins over the environment; a quiet environment prints no ID.
        assert_eq!(
            resolve_progress(Progress::Auto, true, buildkit, true).unwrap(),
            quiet
        );
        let env_quiet = |var: &str| (var == "BUILDKIT_PROGRESS").then(|| "quiet".to_owned());
        assert_eq!(
            resolve_progress(Progress::Auto, false, env_quiet, true).unwrap(),
            ProgressChoice {
                mode: None,
                print_id: false
            }
        );
        let empty = |_: &str| Some(String::new());
        assert_eq!(
            resolve_progress(Progress::Auto, false, empty, false).unwrap(),
            plain
        );
        let bad = |var: &str| (var == "BUILDKIT_PROGRESS").then(|| "fancy".to_owned());
        let e = resolve_progress(Progress::Auto, false, bad, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid BUILDKIT_PROGRESS=\"fancy\""), "{e}");
    }
}
