//! A cgroup per RUN step for its resource limits (memory, CPU quota, pids), as BuildKit gives
//! each step `/buildkit/<id>`. The host's layout is detected once:
//!
//! - cgroup v1 (or hybrid, as this machine: its unified mount has no controllers): a step with
//!   limits gets `/kiln/<pid>-<n>` in each v1 hierarchy (memory, cpu, pids) it needs; a step
//!   without limits gets none.
//! - cgroup v2 (unified at `/sys/fs/cgroup`, the default of current distributions; or the mount
//!   `KILN_CGROUP2_ROOT` names): every step gets `<own>/kiln/<pid>-<n>` below the cgroup kiln
//!   lives in (`v2.rs` says how the controllers are delegated to it), best effort when it asks
//!   for no limits (kiln may run where it cannot create cgroups; the step then runs in kiln's).
//!
//! The embedded child joins it before it sets anything else up; runc gets a nested `runc`
//! cgroup in it (the limits hold for everything below). After the step the memory cgroup says
//! whether the OOM killer fired, and the directories are removed.

mod v2;

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use kiln_plugin_sdk::proto::StepLimits;

use crate::Error;

const ROOT: &str = "/sys/fs/cgroup";

/// The step's cgroup, removed on drop.
#[derive(Debug)]
pub struct StepCgroup {
    kind: Kind,
    limits: StepLimits,
}

#[derive(Debug)]
enum Kind {
    V1 {
        /// `(controller, directory)`.
        dirs: Vec<(&'static str, PathBuf)>,
        /// The path below each hierarchy's root (`/kiln/<pid>-<n>`).
        rel: String,
    },
    V2(v2::Step),
}

/// Which cgroup hierarchies the step's cgroup goes in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// Per-controller v1 hierarchies under `/sys/fs/cgroup`.
    V1,
    /// The unified hierarchy mounted there.
    Unified(PathBuf),
}

impl Layout {
    /// `KILN_CGROUP2_ROOT` (a cgroup2 mount to drive, such as a hybrid host's
    /// `/sys/fs/cgroup/unified`), or what the host has, looked at once.
    fn get() -> Layout {
        if let Some(root) = std::env::var_os("KILN_CGROUP2_ROOT").filter(|r| !r.is_empty()) {
            return Layout::Unified(root.into());
        }
        static HOST: OnceLock<Layout> = OnceLock::new();
        HOST.get_or_init(|| Layout::detect(Path::new(ROOT))).clone()
    }

    /// Only cgroup2 has `cgroup.controllers` at its root; a v1 or hybrid host has a tmpfs of
    /// hierarchies there.
    fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::Unified(root.to_path_buf())
        } else {
            Layout::V1
        }
    }
}

/// The flags behind the limits asked for, for errors: `--memory, --pids-limit`.
fn flags(limits: &StepLimits) -> String {
    [
        (limits.memory.is_some(), "--memory"),
        (limits.cpu_quota.is_some(), "--cpu-quota"),
        (limits.pids.is_some(), "--pids-limit"),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, f)| *f)
    .collect::<Vec<_>>()
    .join(", ")
}

/// A name no other step of any kiln process uses at the same time.
fn step_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl StepCgroup {
    /// Creates the step's cgroup with its limits; `None` when the step has no limits and the
    /// host is v1 (or kiln cannot make one there).
    pub fn create(limits: StepLimits) -> Result<Option<StepCgroup>, Error> {
        match Layout::get() {
            Layout::Unified(mount) => StepCgroup::create_v2(&mount, limits),
            Layout::V1 if limits.any() => StepCgroup::create_v1(limits).map(Some),
            Layout::V1 => Ok(None),
        }
    }

    fn create_v2(mount: &Path, limits: StepLimits) -> Result<Option<StepCgroup>, Error> {
        let created = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::io("cannot read", "/proc/self/cgroup", e))
            .and_then(|text| {
                // Where step cgroups go. As root: below the root of kiln's cgroup namespace,
                // as BuildKit's `/buildkit` and v1's `/kiln` — never inside the login session
                // or service that started kiln, whose other processes would have to move out
                // of the way. Rootless: below kiln's own cgroup, the only subtree an ordinary
                // user can be delegated.
                if !crate::userns::running_in_user_ns() {
                    return v2::create(
                        mount,
                        "/",
                        &step_name(),
                        &v2::settings(&limits),
                        &flags(&limits),
                    );
                }
                let own = v2::own_cgroup(&text).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "resource limits ({}) need kiln's cgroup v2 path, but /proc/self/cgroup \
                         has no \"0::/…\" line",
                        flags(&limits)
                    ))
                })?;
                v2::create(
                    mount,
                    own,
                    &step_name(),
                    &v2::settings(&limits),
                    &flags(&limits),
                )
            });
        match created {
            Ok(step) => Ok(Some(StepCgroup {
                kind: Kind::V2(step),
                limits,
            })),
            // Nothing was asked for: the step runs in kiln's cgroup, as on v1.
            Err(_) if !limits.any() => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn create_v1(limits: StepLimits) -> Result<StepCgroup, Error> {
        let rel = format!("/kiln/{}", step_name());
        let mut cg = StepCgroup {
            kind: Kind::V1 {
                dirs: Vec::new(),
                rel: rel.clone(),
            },
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
            let dir = hierarchy.join(rel.trim_start_matches('/'));
            fs::create_dir_all(&dir).map_err(|e| match e.raw_os_error() {
                // Rootless: on v1 only root creates cgroups, there is no delegation.
                Some(libc::EACCES | libc::EPERM | libc::EROFS) => Error::Unsupported(format!(
                    "resource limits ({}) need root on this host: it has cgroup v1, where \
                     an ordinary user cannot create cgroups (cannot create {}: {e})",
                    flags(&limits),
                    dir.display()
                )),
                _ => Error::io("cannot create the cgroup", &dir, e),
            })?;
            // Pushed first: a failure below still removes it.
            if let Kind::V1 { dirs, .. } = &mut cg.kind {
                dirs.push((controller, dir.clone()));
            }
            if controller == "cpu" {
                // The quota is per 100 ms, as docker's --cpu-quota.
                write(&dir.join("cpu.cfs_period_us"), "100000")?;
            }
            write(&dir.join(file), &value)?;
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files to join, opened for writing: the embedded child writes `0` to
    /// each (itself) before anything else, so that every process of the step is inside.
    pub fn procs_files(&self) -> Result<Vec<OwnedFd>, Error> {
        let paths: Vec<PathBuf> = match &self.kind {
            Kind::V1 { dirs, .. } => dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect(),
            Kind::V2(step) => vec![step.procs()],
        };
        paths
            .into_iter()
            .map(|path| {
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
        match &self.kind {
            Kind::V1 { rel, .. } => format!("{rel}/runc"),
            Kind::V2(step) => format!("{}/runc", step.rel),
        }
    }

    /// Whether the OOM killer killed a process of the step under its memory limit. v2:
    /// `memory.events`' `oom_kill`, hierarchical, so exact for both runtimes. v1: the
    /// `oom_kill` of `memory.oom_control` of this cgroup (the embedded step's own), or, for
    /// runc's nested cgroup whose counters go with it, a step that ended by SIGKILL (`killed`)
    /// after its charges hit this cgroup's limit (`memory.failcnt`).
    pub fn oom_killed(&self, killed: bool) -> bool {
        if self.limits.memory.is_none() {
            return false;
        }
        let dirs = match &self.kind {
            Kind::V1 { dirs, .. } => dirs,
            Kind::V2(step) => return step.oom_kills() > 0,
        };
        let Some((_, dir)) = dirs.iter().find(|(c, _)| *c == "memory") else {
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
        let rel = match &self.kind {
            Kind::V2(step) => return step.remove(),
            Kind::V1 { rel, .. } => rel,
        };
        // runc makes `<rel>/runc` in every hierarchy (and the parents it lacks), and removes
        // only `runc`: every hierarchy is swept, not only the ones with a limit.
        let hierarchies: Vec<PathBuf> = fs::read_dir(ROOT)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for h in hierarchies {
            let dir = h.join(rel.trim_start_matches('/'));
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
    fn no_limits_no_cgroup_but_on_v2() {
        let cg = StepCgroup::create(StepLimits::default()).unwrap();
        match Layout::get() {
            Layout::V1 => assert!(cg.is_none(), "{cg:?}"),
            // As root (these tests): every step has one on v2.
            Layout::Unified(_) => assert!(cg.is_some()),
        }
    }

    #[test]
    fn the_layout_is_told_by_cgroup_controllers_at_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Layout::detect(tmp.path()), Layout::V1);
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert_eq!(
            Layout::detect(tmp.path()),
            Layout::Unified(tmp.path().to_path_buf())
        );
        // The host's own mounts (this machine: v1 hierarchies on a tmpfs at /sys/fs/cgroup, a
        // cgroup2 at its `unified`), against the mount table.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        for dir in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
            let Some(fstype) = mounts.lines().find_map(|l| {
                let mut f = l.split_whitespace().skip(1);
                (f.next() == Some(dir)).then(|| f.next()).flatten()
            }) else {
                continue;
            };
            let want = if fstype == "cgroup2" {
                Layout::Unified(dir.into())
            } else {
                Layout::V1
            };
            assert_eq!(Layout::detect(Path::new(dir)), want, "{dir} is {fstype}");
        }
    }

    #[test]
    fn an_ordinary_user_on_v1_is_told_it_needs_root() {
        let limits = StepLimits {
            memory: Some(32 << 20),
            ..StepLimits::default()
        };
        let err = v2::tests::as_nobody(|| StepCgroup::create_v1(limits)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Unsupported(_)), "{text}");
        assert!(
            text.starts_with(
                "resource limits (--memory) need root on this host: it has cgroup v1, where an \
                 ordinary user cannot create cgroups (cannot create /sys/fs/cgroup/memory/kiln"
            ),
            "{text}"
        );
    }

    #[test]
    fn errors_name_the_flags_asked_for() {
        let limits = StepLimits {
            memory: Some(1),
            cpu_quota: None,
            pids: Some(2),
        };
        assert_eq!(flags(&limits), "--memory, --pids-limit");
    }

    #[test]
    fn sizes_read_as_written() {
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(3 << 30), "3GiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
