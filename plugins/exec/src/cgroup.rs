//! A cgroup per RUN step for its resource limits (memory, CPU quota, pids), as BuildKit gives
//! each step `/buildkit/<id>`: `/kiln/<pid>-<n>` in each v1 hierarchy (memory, cpu, pids) where
//! the host has them. The embedded child joins it before it sets anything else up; runc gets a
//! nested `runc` cgroup in it (the limits hold for everything below). After the step the
//! memory cgroup says whether the OOM killer fired, and the directories are removed.
//! A unified (v2-only) host is refused with a clear error for now.

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_plugin_sdk::proto::StepLimits;

use crate::Error;

const ROOT: &str = "/sys/fs/cgroup";

/// The step's cgroup: one directory per controller, removed on drop.
#[derive(Debug)]
pub struct StepCgroup {
    /// `(controller, directory)`.
    dirs: Vec<(&'static str, PathBuf)>,
    /// The path below each hierarchy's root (`/kiln/<pid>-<n>`).
    rel: String,
    limits: StepLimits,
}

impl StepCgroup {
    /// Creates the step's cgroup with its limits; `None` when the step has no limits.
    pub fn create(limits: StepLimits) -> Result<Option<StepCgroup>, Error> {
        if !limits.any() {
            return Ok(None);
        }
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            return Err(Error::Unsupported(
                "resource limits (--memory, --cpu-quota, --pids-limit) need cgroup v1 \
                 hierarchies under /sys/fs/cgroup; this host has only cgroup v2, which kiln does \
                 not drive yet"
                    .into(),
            ));
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let rel = format!(
            "/kiln/{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cg = StepCgroup {
            dirs: Vec::new(),
            rel,
            limits,
        };
        let wanted: [(&'static str, Option<(&str, String)>); 3] = [
            (
                "memory",
                limits
                    .memory
                    .map(|m| ("memory.limit_in_bytes", m.to_string())),
            ),
            (
                "cpu",
                limits
                    .cpu_quota
                    .map(|q| ("cpu.cfs_quota_us", q.to_string())),
            ),
            ("pids", limits.pids.map(|p| ("pids.max", p.to_string()))),
        ];
        for (controller, setting) in wanted {
            let Some((file, value)) = setting else {
                continue;
            };
            let hierarchy = Path::new(ROOT).join(controller);
            if !hierarchy.join("cgroup.procs").exists() {
                return Err(Error::Unsupported(format!(
                    "the step asks for a {controller} limit, but this host has no {controller} \
                     cgroup hierarchy at {}",
                    hierarchy.display()
                )));
            }
            let dir = hierarchy.join(cg.rel.trim_start_matches('/'));
            fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create the cgroup", &dir, e))?;
            // Pushed first: a failure below still removes it.
            cg.dirs.push((controller, dir.clone()));
            if controller == "cpu" {
                // The quota is per 100 ms, as docker's --cpu-quota.
                write(&dir.join("cpu.cfs_period_us"), "100000")?;
            }
            write(&dir.join(file), &value)?;
        }
        Ok(Some(cg))
    }

    /// The `cgroup.procs` files to join, opened for writing: the embedded child writes `0` to
    /// each (itself) before anything else, so that every process of the step is inside.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, Error> {
        self.dirs
            .iter()
            .map(|(_, d)| {
                let path = d.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| Error::io("cannot open", path, e))
            })
            .collect()
    }

    /// runc's `linux.cgroupsPath`: a cgroup nested in this one (runc creates and removes it).
    pub fn runc_path(&self) -> String {
        format!("{}/runc", self.rel)
    }

    /// Whether the OOM killer killed a process of the step: v1 `memory.oom_control`'s
    /// `oom_kill` of this cgroup (the embedded step's own), or, for runc's nested cgroup whose
    /// counters go with it, a step that ended by SIGKILL (`killed`) after its charges hit
    /// this cgroup's limit (`memory.failcnt`).
    pub fn oom_killed(&self, killed: bool) -> bool {
        let Some((_, dir)) = self.dirs.iter().find(|(c, _)| *c == "memory") else {
            return false;
        };
        let read = |file: &str, key: Option<&str>| {
            let text = fs::read_to_string(dir.join(file)).ok()?;
            match key {
                Some(k) => text
                    .lines()
                    .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok()),
                None => text.trim().parse::<u64>().ok(),
            }
        };
        read("memory.oom_control", Some("oom_kill ")).is_some_and(|n| n > 0)
            || (killed && read("memory.failcnt", None).is_some_and(|n| n > 0))
    }

    /// The error of a step the OOM killer stopped.
    pub fn oom_error(&self) -> Error {
        Error::OutOfMemory {
            limit: self.limits.memory.unwrap_or_default(),
        }
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // runc makes `<rel>/runc` in every hierarchy (and the parents it lacks), and removes
        // only `runc`: every hierarchy is swept, not only the ones with a limit.
        let hierarchies: Vec<PathBuf> = fs::read_dir(ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for h in hierarchies {
            let dir = h.join(self.rel.trim_start_matches('/'));
            let _ignored = fs::remove_dir(dir.join("runc"));
            // The step's processes died with its pid namespace, but their exit may still be
            // in flight: rmdir says EBUSY until the last one is gone. Bounded.
            for _ in 0..200 {
                match fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Error::io("cannot write the cgroup limit", path, e))
}

/// A byte count as the user wrote it, roughly: `64MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limits_no_cgroup() {
        assert!(StepCgroup::create(StepLimits::default()).unwrap().is_none());
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(3 << 30), "3GiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
