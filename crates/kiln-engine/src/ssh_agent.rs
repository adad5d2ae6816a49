//! `--ssh ID=KEYFILE[,KEYFILE]`: the keys are loaded into an OpenSSH agent that kiln runs for
//! the build alone, on a socket in a private (0700) directory, and RUN steps reach that agent as
//! they reach a forwarded one. The agent is killed and its directory removed when the build
//! ends, however it ends (the guard is dropped on success, error and cancellation), and also
//! when kiln itself is killed (SIGKILL runs no destructor): see [`DeathWatch`].
//!
//! BuildKit's client keeps such keys in an in-process keyring; kiln would need a signing stack
//! (ed25519, RSA, ECDSA) for that, so it runs the system's `ssh-agent` instead and checks each
//! key itself first: a passphrase-protected key is refused, as BuildKit refuses it, before any
//! process could prompt for a passphrase.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::collections::BTreeMap;

use kiln_plugin_sdk::death_watch::DeathWatch;
use kiln_types::Digest;

use crate::{Error, SshSource};

/// BuildKit reads at most this much of a key file.
const MAX_KEY_BYTES: u64 = 100 * 1024;

/// A private ssh-agent holding one `--ssh` id's keys; killed, and its socket removed, on drop.
pub struct BuildAgent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    /// Kills the agent should kiln die without dropping this.
    watch: Option<DeathWatch>,
}

impl BuildAgent {
    /// Checks `keys`, starts the agent and loads them.
    pub fn start(id: &str, keys: &[PathBuf]) -> Result<Self, Error> {
        for key in keys {
            check_key(id, key)?;
        }
        let dir = private_dir(id)?;
        let sock = dir.join("agent.sock");
        // The agent's diagnostics go to a file: a pipe nobody reads could block it, and a
        // closed one would kill it with SIGPIPE.
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::io("create ssh-agent log", &log_path, e));
        let log = match log {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // Started before the agent, so that the agent never runs unwatched but for the moment
        // between its start and its pid reaching the watch. Without a watch (no `sh`), the
        // agent only lives as long as kiln ends normally, as before.
        let watch = DeathWatch::start(
            "read -r pid; read -r said; [ \"$said\" = done ] && exit 0; \
             [ -n \"$pid\" ] && kill -KILL \"$pid\"; rm -rf \"$KILN_SSH_AGENT_DIR\"",
            &[("KILN_SSH_AGENT_DIR", dir.as_os_str())],
        )
        .ok();
        // -D: no fork, so that the child kiln holds is the agent itself and can be killed by
        // its id.
        let spawned = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(ssh_error(id, missing_tool("ssh-agent", &e)));
            }
        };
        let mut watch = watch;
        if let Some(w) = &mut watch {
            w.tell(&child.id().to_string());
        }
        let mut agent = BuildAgent {
            child,
            dir,
            sock,
            watch,
        };
        agent.wait_listening(id, &log_path)?;
        agent.add(id, keys)?;
        Ok(agent)
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// In `-D` mode the agent prints `SSH_AUTH_SOCK=...` once its socket listens: that line
    /// is the signal that it is ready (end of file instead means it failed).
    fn wait_listening(&mut self, id: &str, log_path: &Path) -> Result<(), Error> {
        let Some(stdout) = self.child.stdout.take() else {
            return Err(ssh_error(id, "ssh-agent started without its output".into()));
        };
        let mut line = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut line);
        if read.is_ok() && line.starts_with("SSH_AUTH_SOCK=") {
            return Ok(());
        }
        let status = self.child.wait().ok();
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        Err(ssh_error(
            id,
            format!(
                "ssh-agent did not start on {} ({}): {}",
                self.sock.display(),
                status.map_or_else(|| "no status".to_owned(), |s| s.to_string()),
                log.trim()
            ),
        ))
    }

    /// `ssh-add KEY...` against the private agent. It runs in a session of its own, with no
    /// terminal, no standard input and no askpass program, so that nothing can prompt.
    fn add(&self, id: &str, keys: &[PathBuf]) -> Result<(), Error> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("ssh-add");
        cmd.args(keys)
            .env("SSH_AUTH_SOCK", &self.sock)
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env_remove("SSH_ASKPASS")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd
            .output()
            .map_err(|e| ssh_error(id, missing_tool("ssh-add", &e)))?;
        if !out.status.success() {
            return Err(ssh_error(
                id,
                format!(
                    "ssh-add could not load {} into the build's agent ({}): {}",
                    keys.iter()
                        .map(|k| k.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }
}

impl Drop for BuildAgent {
    fn drop(&mut self) {
        // The watch is told first: once the agent is reaped its pid may be another process's.
        drop(self.watch.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The build's `--ssh` sources as RUN steps use them: key files replaced by the socket of an
/// agent started for them. The agents live as long as the returned guards. A remote build's
/// client uses it too: it serves the agent's socket over the relay, so no key leaves it.
pub fn serve(
    sources: &BTreeMap<String, SshSource>,
) -> Result<(BTreeMap<String, SshSource>, Vec<BuildAgent>), Error> {
    let mut agents = Vec::new();
    let mut served = BTreeMap::new();
    for (id, source) in sources {
        let source = match source {
            SshSource::Keys(keys) => {
                let agent = BuildAgent::start(id, keys)?;
                let sock = agent.socket().to_owned();
                agents.push(agent);
                SshSource::Agent(sock)
            }
            other => other.clone(),
        };
        served.insert(id.clone(), source);
    }
    Ok((served, agents))
}

/// The socket a RUN step's SSH mount binds: a listener of its own, with the mount's `mode`,
/// `uid` and `gid` (as BuildKit gives each mount a socket of its own), whose connections are
/// forwarded to the agent, read-only (see [`relay`]). Binding the agent's own socket would leave its owner and mode to
/// whoever started the agent, and a `USER 1000` step could not reach it. Stopped, and its
/// directory removed, when dropped (after the step).
pub(crate) struct StepSocket {
    dir: PathBuf,
    sock: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl StepSocket {
    pub(crate) fn start(
        id: &str,
        agent: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<StepSocket, Error> {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::net::UnixListener;
        let dir = private_dir(id)?;
        let sock = dir.join("agent.sock");
        let made = (|| {
            let listener =
                UnixListener::bind(&sock).map_err(|e| Error::io("listen on", &sock, e))?;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| Error::io("chmod ssh socket", &sock, e))?;
            std::os::unix::fs::chown(&sock, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown ssh socket", &sock, e))?;
            Ok::<_, Error>(listener)
        })();
        let listener = match made {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let agent = agent.to_owned();
        let stopped = stop.clone();
        let accept = std::thread::Builder::new()
            .name("kiln-ssh-socket".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    // A client that cannot be served sees its connection closed, as with an
                    // agent that went away.
                    if let Ok(client) = conn {
                        forward(client, &agent);
                    }
                }
            })
            .map_err(|e| Error::io("start the ssh socket thread for", &sock, e));
        let accept = match accept {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(StepSocket {
            dir,
            sock,
            stop,
            accept: Some(accept),
        })
    }

    /// The socket to bind into the step.
    pub(crate) fn path(&self) -> &Path {
        &self.sock
    }
}

/// The agent protocol's message types a step may send: list the keys, sign with one. As
/// BuildKit's read-only agent, everything else (adding, removing or locking keys,
/// extensions) is answered with a failure and never reaches the agent.
const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
const SSH_AGENT_FAILURE: u8 = 5;

/// OpenSSH's own bound on an agent message.
const MAX_AGENT_MESSAGE: usize = 256 * 1024;

/// Serves one client connection on a thread of its own until either side closes.
fn forward(client: std::os::unix::net::UnixStream, agent: &Path) {
    let agent = agent.to_owned();
    let _ = std::thread::Builder::new()
        .name("kiln-ssh-forward".into())
        .spawn(move || {
            if let Ok(upstream) = std::os::unix::net::UnixStream::connect(&agent) {
                let _ = relay(client, upstream);
            }
        });
}

/// The agent protocol is request/response, one at a time: each request of the client is
/// read whole, checked, and either passed on (and the agent's one answer passed back) or
/// refused.
fn relay(
    mut client: impl std::io::Read + std::io::Write,
    mut agent: impl std::io::Read + std::io::Write,
) -> std::io::Result<()> {
    while let Some(request) = read_message(&mut client)? {
        match request.get(4) {
            Some(&(SSH_AGENTC_REQUEST_IDENTITIES | SSH_AGENTC_SIGN_REQUEST)) => {
                agent.write_all(&request)?;
                let Some(answer) = read_message(&mut agent)? else {
                    return Ok(());
                };
                client.write_all(&answer)?;
            }
            _ => client.write_all(&[0, 0, 0, 1, SSH_AGENT_FAILURE])?,
        }
    }
    Ok(())
}

/// One length-prefixed message, prefix included; `None` at a clean end of stream.
fn read_message(r: &mut impl std::io::Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_AGENT_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "agent message of an invalid length",
        ));
    }
    let mut msg = vec![0u8; 4 + n];
    msg[..4].copy_from_slice(&len);
    r.read_exact(&mut msg[4..])?;
    Ok(Some(msg))
}

impl Drop for StepSocket {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // accept(2) has no timeout: a connection of our own wakes the thread, which then sees
        // the flag. Should that connection fail, the thread is left to end with the process
        // rather than waited for forever.
        let woken = std::os::unix::net::UnixStream::connect(&self.sock).is_ok();
        if let (true, Some(t)) = (woken, self.accept.take()) {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ssh_error(id: &str, message: String) -> Error {
    Error::Ssh {
        id: id.to_owned(),
        message,
    }
}

fn missing_tool(program: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "{program} was not found: --ssh ID=KEYFILE runs OpenSSH's {program} for the build; \
             install it (Debian/Ubuntu: apt-get install openssh-client)"
        )
    } else {
        format!("cannot run {program}: {e}")
    }
}

/// A fresh 0700 directory under the system's temporary directory, for the agent's socket.
fn private_dir(id: &str) -> Result<PathBuf, Error> {
    private_temp_dir("kiln-ssh", id)
}

/// A fresh 0700 directory `PREFIX-HASH` under the system's temporary directory.
pub fn private_temp_dir(prefix: &str, id: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!(
        "{:?}{}.{n}.{id}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    // Short: a socket path must fit in sun_path (108 bytes).
    let dir =
        std::env::temp_dir().join(format!("{prefix}-{}", Digest::of(seed.as_bytes()).short()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("create private directory", &dir, e))?;
    Ok(dir)
}

/// What a key file holds, as far as loading it without a passphrase goes.
#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    /// A private key that loads as it is.
    Plain,
    /// A private key encrypted with a passphrase.
    Encrypted,
    /// Not a private key kiln recognizes.
    Unknown,
}

/// Reads the key file (at most [`MAX_KEY_BYTES`], as BuildKit) and refuses what the agent
/// could not load without asking for a passphrase.
fn check_key(id: &str, path: &Path) -> Result<(), Error> {
    let fail = |why: String| ssh_error(id, format!("failed to parse {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = Vec::new();
    file.take(MAX_KEY_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    match key_kind(&String::from_utf8_lossy(&text)) {
        KeyKind::Plain => Ok(()),
        KeyKind::Encrypted => Err(fail(format!(
            "the private key is passphrase protected, and a build cannot ask for a passphrase; \
             load it into your own agent (ssh-add {}) and pass --ssh {id} (the agent at \
             $SSH_AUTH_SOCK)",
            path.display()
        ))),
        KeyKind::Unknown => Err(fail(
            "not a private key (an OpenSSH, PEM or PKCS#8 private key, or an ssh-agent socket, \
             is expected)"
                .to_owned(),
        )),
    }
}

/// Recognizes the private key formats OpenSSH writes and reads: its own
/// (`openssh-key-v1`, encrypted when its cipher is not `none`), legacy PEM (encrypted with a
/// `Proc-Type: 4,ENCRYPTED` header) and PKCS#8 (`ENCRYPTED PRIVATE KEY` when encrypted).
fn key_kind(text: &str) -> KeyKind {
    const OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    if let Some(start) = text.find(OPENSSH) {
        let body = &text[start + OPENSSH.len()..];
        let body = body.split("-----END").next().unwrap_or_default();
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        use base64::Engine as _;
        let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return KeyKind::Unknown;
        };
        let Some(rest) = blob.strip_prefix(b"openssh-key-v1\0") else {
            return KeyKind::Unknown;
        };
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            return KeyKind::Unknown;
        };
        let len = u32::from_be_bytes(*len) as usize;
        return match rest.get(..len) {
            Some(b"none") => KeyKind::Plain,
            Some(_) => KeyKind::Encrypted,
            None => KeyKind::Unknown,
        };
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return KeyKind::Encrypted;
    }
    let pem = ["RSA ", "EC ", "DSA ", ""]
        .iter()
        .any(|kind| text.contains(&format!("-----BEGIN {kind}PRIVATE KEY-----")));
    if !pem {
        return KeyKind::Unknown;
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        KeyKind::Encrypted
    } else {
        KeyKind::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keygen(dir: &Path, name: &str, passphrase: &str, format: &[&str]) -> PathBuf {
        let key = dir.join(name);
        let mut args = vec!["-q", "-t", "ed25519", "-N", passphrase, "-C", "kiln-unit"];
        args.extend_from_slice(format);
        let st = Command::new("ssh-keygen")
            .args(&args)
            .arg("-f")
            .arg(&key)
            .status()
            .expect("ssh-keygen (Debian's openssh-client) is required for this test");
        assert!(st.success());
        key
    }

    #[test]
    fn key_kinds() {
        let t = tempfile::tempdir().unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let plain = keygen(t.path(), "plain", "", &[]);
        assert_eq!(key_kind(&read(plain)), KeyKind::Plain);
        let enc = keygen(t.path(), "enc", "secret", &[]);
        assert_eq!(key_kind(&read(enc)), KeyKind::Encrypted);
        let p8 = keygen(t.path(), "p8", "", &["-m", "PKCS8"]);
        assert_eq!(key_kind(&read(p8)), KeyKind::Plain);
        let p8e = keygen(t.path(), "p8e", "secret", &["-m", "PKCS8"]);
        assert_eq!(key_kind(&read(p8e)), KeyKind::Encrypted);
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(key_kind(legacy), KeyKind::Encrypted);
        assert_eq!(
            key_kind("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
            KeyKind::Unknown
        );
        assert_eq!(
            key_kind("ssh-ed25519 AAAA... a public key"),
            KeyKind::Unknown
        );
    }

    #[test]
    fn agent_holds_the_keys_and_goes_away() {
        let t = tempfile::tempdir().unwrap();
        let key = keygen(t.path(), "id", "", &[]);
        let agent = BuildAgent::start("default", &[key]).unwrap();
        let sock = agent.socket().to_owned();
        let pid = agent.child.id();
        let out = Command::new("ssh-add")
            .arg("-l")
            .env("SSH_AUTH_SOCK", &sock)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("kiln-unit"),
            "{out:?}"
        );
        drop(agent);
        assert!(!sock.exists());
        assert!(!sock.parent().unwrap().exists());
        // Reaped by the drop: no process of that id remains (not even a zombie).
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    /// kiln dying (here: the watch's pipe closed without `done`, as the kernel closes it when
    /// kiln is killed) takes the agent and its directory with it.
    #[test]
    fn agent_dies_when_kiln_dies() {
        let t = tempfile::tempdir().unwrap();
        let key = keygen(t.path(), "id", "", &[]);
        let mut agent = BuildAgent::start("default", &[key]).unwrap();
        let dir = agent.dir.clone();
        let mut watch = agent.watch.take().expect("a watch runs beside the agent");
        watch.close_without_done();
        watch.wait().unwrap();
        // Bounded: the watch has exited, so the kill was sent; only the reaping is left.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(s) = agent.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent outlived kiln"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!dir.exists(), "{} remains", dir.display());
    }

    /// `[len][type][payload]` as the agent protocol frames it.
    fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        m.push(kind);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn step_socket_has_the_mount_owner_and_mode_and_reaches_the_agent() {
        use std::io::Write as _;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        // A stand-in agent that answers each request with its payload reversed, as type 12.
        let agent_path = t.path().join("agent");
        let agent = std::os::unix::net::UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = agent.accept().unwrap();
            while let Some(req) = read_message(&mut c).unwrap() {
                let mut payload = req[5..].to_vec();
                payload.reverse();
                c.write_all(&message(12, &payload)).unwrap();
            }
        });
        let step = StepSocket::start("default", &agent_path, 0o640, 1000, 1001).unwrap();
        let md = std::fs::metadata(step.path()).unwrap();
        assert_eq!(
            (md.permissions().mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1000, 1001)
        );
        let dir_mode = std::fs::metadata(step.path().parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let mut c = std::os::unix::net::UnixStream::connect(step.path()).unwrap();
        let mut ask = |m: Vec<u8>| {
            c.write_all(&m).unwrap();
            read_message(&mut c).unwrap().unwrap()
        };
        assert_eq!(ask(message(11, b"")), message(12, b""));
        assert_eq!(ask(message(13, b"abc")), message(12, b"cba"));
        // Adding, removing, locking keys and extensions never reach the agent.
        for kind in [17, 18, 19, 22, 25, 27] {
            assert_eq!(ask(message(kind, b"x")), message(5, b""), "type {kind}");
        }
        assert_eq!(ask(message(13, b"xy")), message(12, b"yx"));
        drop(c);
        server.join().unwrap();
        let sock = step.path().to_owned();
        drop(step);
        assert!(!sock.exists() && !sock.parent().unwrap().exists());
    }

    #[test]
    fn passphrase_keys_are_refused_before_anything_starts() {
        let t = tempfile::tempdir().unwrap();
        let key = keygen(t.path(), "enc", "secret", &[]);
        let e = BuildAgent::start("deploy", &[key])
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("ssh deploy: failed to parse"), "{e}");
        assert!(e.contains("passphrase protected"), "{e}");
        let junk = t.path().join("junk");
        std::fs::write(&junk, "hello").unwrap();
        let e = BuildAgent::start("default", &[junk])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a private key"), "{e}");
    }
}
