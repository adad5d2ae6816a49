//! A `docker-registry` of a test's own on a free loopback port, for tests that change or stop
//! a registry (tamper with its storage, take it away mid-way) and so cannot share the one
//! `cargo xtask test` starts (`test_registry`).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A registry of a test's own, killed when stopped or dropped.
pub struct OwnRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl OwnRegistry {
    /// Starts one with its storage in a temporary directory; returns when it listens.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary dir for the registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("write the registry's config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is required for this test");
        let r = OwnRegistry {
            addr,
            child: Some(child),
            dir,
        };
        // Ready when it listens; bounded, since a registry that never starts is a failure.
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&r.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within 15 s",
                r.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// The file holding blob `digest` (`sha256:…`) in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("{digest} is not a sha256 digest"));
        let file = self
            .dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        assert!(file.is_file(), "no blob file {}", file.display());
        file
    }

    /// Kills it (a registry that went away).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
