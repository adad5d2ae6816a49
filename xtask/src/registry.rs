//! A throwaway OCI distribution registry on loopback for the tests: Debian's `docker-registry`
//! with its own config and storage under `target/kiln-test/registry/`, killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Registry {
    /// `127.0.0.1:<port>`, the value of `KILN_TEST_REGISTRY`.
    pub addr: String,
    child: Child,
}

impl Registry {
    /// Starts `docker-registry serve` with a fresh storage in `dir` and waits until `/v2/` answers.
    pub fn start(dir: &Path) -> Result<Registry> {
        crate::remove_if_exists(dir)?;
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage)
            .with_context(|| format!("cannot create {}", storage.display()))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(&config, config_yaml(&storage, &addr)?)
            .with_context(|| format!("cannot write {}", config.display()))?;
        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("cannot reopen {}", log_path.display()))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .context("cannot start `docker-registry` (Debian package docker-registry)")?;
        let mut registry = Registry { addr, child };
        registry.wait_ready(&log_path)?;
        println!(
            "xtask: registry on {} (log: {})",
            registry.addr,
            log_path.display()
        );
        Ok(registry)
    }

    fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot wait for docker-registry")?
            {
                bail!(
                    "docker-registry exited ({status}) before it answered:\n{}",
                    tail(log)
                );
            }
            match probe(&self.addr) {
                Ok(true) => return Ok(()),
                Ok(false) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(false) => bail!(
                    "docker-registry on {} answers /v2/ with an error after 15 s:\n{}",
                    self.addr,
                    tail(log)
                ),
                Err(e) => bail!(
                    "docker-registry did not answer on {} within 15 s ({e}):\n{}",
                    self.addr,
                    tail(log)
                ),
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Best effort: the registry may have died already; nothing useful to report then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_yaml(storage: &Path, addr: &str) -> Result<String> {
    let storage: PathBuf = std::path::absolute(storage)
        .with_context(|| format!("cannot make {} absolute", storage.display()))?;
    let storage = storage
        .to_str()
        .with_context(|| format!("{} is not UTF-8", storage.display()))?;
    // JSON strings are valid YAML scalars, and quote whatever the path holds.
    let storage = serde_json::to_string(storage).context("cannot quote the storage path")?;
    Ok(format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         http:\n  addr: {addr}\n"
    ))
}

/// A port that was free a moment ago: bind port 0, read it, release it.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener
        .local_addr()
        .context("cannot read the bound port")?
        .port())
}

/// `GET /v2/` by hand: `Ok(true)` on a 200, `Ok(false)` on another status, `Err` when nothing
/// answers yet.
fn probe(addr: &str) -> Result<bool> {
    let sock: SocketAddr = addr.parse().context("bad registry address")?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head)?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    if !status_line.starts_with("HTTP/") {
        bail!("not an HTTP answer");
    }
    Ok(status_line.split_whitespace().nth(1) == Some("200"))
}

fn tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_is_killed_on_drop() {
        if crate::find_on_path("docker-registry").is_none() {
            eprintln!(
                "skipped: docker-registry is not installed (apt-get install docker-registry)"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-registry-test-{}", std::process::id()));
        let registry = Registry::start(&dir).expect("the registry starts");
        let addr = registry.addr.clone();
        assert!(probe(&addr).expect("it answers"), "GET /v2/ is 200");
        drop(registry);
        assert!(probe(&addr).is_err(), "nothing listens after drop");
        crate::remove_if_exists(&dir).expect("cleanup");
    }
}
