//! `--ssh ID=KEYFILE[,KEYFILE]`: the keys are loaded into an OpenSSH agent that kiln runs for
//! the build alone, on a socket in a private (0700) directory, and RUN steps reach that agent as
//! they reach a forwarded one. The agent is killed and its directory removed when the build
//! ends, however it ends (the guard is dropped on success, error and cancellation).
//!
//! BuildKit's client keeps such keys in an in-process keyring; kiln would need a signing stack
//! (ed25519, RSA, ECDSA) for that, so it runs the system's `ssh-agent` instead and checks each
//! key itself first: a passphrase-protected key is refused, as BuildKit refuses it, before any
//! process could prompt for a passphrase.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::collections::BTreeMap;

use kiln_types::Digest;

use crate::{Error, SshSource};

/// BuildKit reads at most this much of a key file.
const MAX_KEY_BYTES: u64 = 100 * 1024;

/// A private ssh-agent holding one `--ssh` id's keys; killed, and its socket removed, on drop.
pub(crate) struct BuildAgent {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl BuildAgent {
    /// Checks `keys`, starts the agent and loads them.
    pub(crate) fn start(id: &str, keys: &[PathBuf]) -> Result<Self, Error> {
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
        let mut agent = BuildAgent { child, dir, sock };
        agent.wait_listening(id, &log_path)?;
        agent.add(id, keys)?;
        Ok(agent)
    }

    /// The agent's socket.
    pub(crate) fn socket(&self) -> &Path {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The build's `--ssh` sources as RUN steps use them: key files replaced by the socket of an
/// agent started for them. The agents live as long as the returned guards.
pub(crate) fn serve(
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
        std::env::temp_dir().join(format!("kiln-ssh-{}", Digest::of(seed.as_bytes()).short()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::io("create ssh-agent directory", &dir, e))?;
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

    #[test]
    fn passphrase_keys_are_refused_before_anything_starts() {
        let t = tempfile::tempdir().unwrap();
        let key = keygen(t.path(), "enc", "secret", &[]);
        let e = BuildAgent::start("deploy", &[key.clone()])
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
