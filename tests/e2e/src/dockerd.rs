//! A private docker daemon for the `--load` tests (Debian's `docker.io`), local or through a
//! builder: its own data root, exec root and socket under a test directory, no bridge and no
//! iptables, stopped with SIGTERM (so that it unmounts its data root) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Dockerd {
    child: Child,
    /// `unix://<dir>/docker.sock`, for `DOCKER_HOST`.
    pub host: String,
    dir: PathBuf,
}

impl Dockerd {
    /// Starts dockerd under `dir` (keep it short: unix socket paths are limited to 108 bytes)
    /// and waits until it answers.
    pub fn start(dir: &Path) -> Dockerd {
        let host = format!("unix://{}", dir.join("docker.sock").display());
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("create dockerd.log");
        let child = Command::new("dockerd")
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .arg(format!("--host={host}"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the dockerd.log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("dockerd is required for this test (Debian package docker.io): {e}")
            });
        let mut d = Dockerd {
            child,
            host,
            dir: dir.to_owned(),
        };
        d.wait_ready();
        d
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("the docker CLI is required for this test: {e}"))
    }

    /// Polls `docker version` until the daemon answers (dockerd has no readiness signal),
    /// failing if it exits or has not answered within 60 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let exited = self.child.try_wait().expect("wait for dockerd");
            if let Some(status) = exited {
                panic!("dockerd exited ({status}):\n{}", self.log());
            }
            if self.docker(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount its data root before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
