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
        /// `(controller, directory)`: every hierarchy's (its first controller, or `name=…`).
        dirs: Vec<(String, PathBuf)>,
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
    /// Creates the step's cgroup with its limits; `None` when the step has no limits and kiln
    /// cannot make one (rootless on v1, an undelegated v2 subtree): then it runs in kiln's.
    pub fn create(limits: StepLimits) -> Result<Option<StepCgroup>, Error> {
        match Layout::get() {
            Layout::Unified(mount) => StepCgroup::create_v2(&mount, limits),
            Layout::V1 => StepCgroup::create_v1(limits),
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

    /// The step's cgroup in every v1 hierarchy, as runc makes a container's: with the limits
    /// in memory, cpu and pids (those must work), and in the others so that the step's
    /// `/sys/fs/cgroup` shows its own cgroup, never kiln's and the host's around it (best
    /// effort: a hierarchy kiln cannot use is left out, and without limits no cgroup at all
    /// is fine).
    fn create_v1(limits: StepLimits) -> Result<Option<StepCgroup>, Error> {
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
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounts = v1_mounts(&mountinfo);
        for (controller, setting) in &wanted {
            if setting.is_some() && !mounts.iter().any(|m| m.controllers.contains(controller)) {
                let hierarchy = Path::new(ROOT).join(controller);
                return Err(Error::Unsupported(format!(
                    "the step asks for a {controller} limit, but this host has no {controller} \
                     cgroup hierarchy at {}",
                    hierarchy.display()
                )));
            }
        }
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| {
            for m in &mounts {
                sweep_stale(&m.mountpoint.join("kiln"));
            }
        });
        for m in &mounts {
            let setting = wanted
                .iter()
                .find(|(c, _)| m.controllers.contains(c))
                .and_then(|(c, s)| s.as_ref().map(|s| (*c, s)));
            let dir = m.mountpoint.join(rel.trim_start_matches('/'));
            let made = fs::create_dir_all(&dir).and_then(|()| {
                if m.controllers.contains(&"cpuset") {
                    // A new cpuset has no cpus nor mems, and no process may join it: as
                    // runc, copy them from the parent, level by level.
                    let parent = dir.parent().unwrap_or(&m.mountpoint);
                    inherit_cpuset(&m.mountpoint, parent)?;
                    inherit_cpuset(parent, &dir)?;
                }
                Ok(())
            });
            match (made, setting) {
                (Ok(()), _) => {}
                (Err(e), Some(_)) => {
                    return Err(match e.raw_os_error() {
                        // Rootless: on v1 only root creates cgroups, there is no delegation.
                        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                            Error::Unsupported(format!(
                                "resource limits ({}) need root on this host: it has cgroup v1, \
                                 where an ordinary user cannot create cgroups (cannot create \
                                 {}: {e})",
                                flags(&limits),
                                dir.display()
                            ))
                        }
                        _ => Error::io("cannot create the cgroup", &dir, e),
                    });
                }
                (Err(_), None) => {
                    let _ = fs::remove_dir(&dir);
                    continue;
                }
            }
            // Pushed first: a failure below still removes it.
            if let Kind::V1 { dirs, .. } = &mut cg.kind {
                dirs.push((m.key.clone(), dir.clone()));
            }
            if let Some((controller, (file, value))) = setting {
                if controller == "cpu" {
                    // The quota is per 100 ms, as docker's --cpu-quota.
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                }
                write(&dir.join(file), value)?;
            }
        }
        match &cg.kind {
            Kind::V1 { dirs, .. } if dirs.is_empty() => Ok(None),
            _ => Ok(Some(cg)),
        }
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

/// What a step sees at `/sys/fs/cgroup`, as BuildKit mounts a cgroup filesystem there
/// (`withCGroup`) and runc sets it up: tools read their limits in it (the JVM, .NET, Node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFs {
    /// v1: a tmpfs with one bind per hierarchy, of the step's own cgroup in it (runc binds the
    /// container's), and `cpu -> cpu,cpuacct` links for combined hierarchies.
    V1 {
        hierarchies: Vec<Hierarchy>,
        /// `(link name, target)`.
        links: Vec<(String, String)>,
    },
    /// v2: a cgroup namespace rooted at the step's cgroup (BuildKit adds one on v2 hosts) with
    /// cgroup2 mounted; `dir` is that cgroup on kiln's side, bound instead in a user namespace.
    V2 { dir: PathBuf },
}

/// One v1 hierarchy of the step's `/sys/fs/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// As the host names its mountpoint: `memory`, `cpu,cpuacct`, `systemd`.
    pub name: String,
    /// The step's cgroup in it, on kiln's side.
    pub source: PathBuf,
}

/// The `/sys/fs/cgroup` of a step run in `step` (its cgroup, if it has one; else it stays in
/// kiln's). `None` where the host has no cgroup v2 path for kiln.
pub fn cgroupfs(step: Option<&StepCgroup>) -> Option<CgroupFs> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    match Layout::get() {
        Layout::Unified(mount) => {
            if let Some(Kind::V2(s)) = step.map(|s| &s.kind) {
                return Some(CgroupFs::V2 { dir: s.dir.clone() });
            }
            let rel = v2::own_cgroup(&own)?;
            Some(CgroupFs::V2 {
                dir: mount.join(rel.trim_start_matches('/')),
            })
        }
        Layout::V1 => {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let step_dirs: &[(String, PathBuf)] = match step.map(|s| &s.kind) {
                Some(Kind::V1 { dirs, .. }) => dirs,
                _ => &[],
            };
            let (hierarchies, links) = v1_hierarchies(&mountinfo, &own, step_dirs);
            Some(CgroupFs::V1 { hierarchies, links })
        }
    }
}

/// The v1 hierarchies mounted at `/sys/fs/cgroup/<name>` (from `mountinfo`), each with the
/// directory to bind: the step's cgroup in it (`step_dirs`, by controller), else kiln's own
/// (from `proc_self_cgroup`, below the mount's root); and the links for combined hierarchies.
fn v1_hierarchies(
    mountinfo: &str,
    proc_self_cgroup: &str,
    step_dirs: &[(String, PathBuf)],
) -> (Vec<Hierarchy>, Vec<(String, String)>) {
    let mut hierarchies = Vec::new();
    let mut links = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(point), Some(&"cgroup"), Some(options)) =
            (fields.get(3), fields.get(4), after.first(), after.get(2))
        else {
            continue;
        };
        let Some(name) = point
            .strip_prefix(ROOT)
            .and_then(|n| n.strip_prefix('/'))
            .filter(|n| !n.is_empty() && !n.contains('/'))
        else {
            continue;
        };
        let options: Vec<&str> = options.split(',').collect();
        // The `/proc/self/cgroup` line of this hierarchy: its controllers are all among the
        // mount's options (`cpu,cpuacct`, `name=systemd`).
        let path = proc_self_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (!controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c)))
                .then_some(path)
        });
        let mountpoint = Path::new(point);
        let source = step_dirs
            .iter()
            .find(|(c, _)| options.contains(&c.as_str()))
            .map(|(_, d)| d.clone())
            .or_else(|| {
                let rel = path?.strip_prefix(root.trim_end_matches('/'))?;
                let rel = rel.trim_start_matches('/');
                // The mount's root itself: its mountpoint (no trailing slash).
                let dir = (!rel.is_empty()).then(|| mountpoint.join(rel))?;
                dir.is_dir().then_some(dir)
            })
            .unwrap_or_else(|| mountpoint.to_path_buf());
        if name.contains(',') {
            for part in name.split(',') {
                links.push((part.to_owned(), name.to_owned()));
            }
        }
        hierarchies.push(Hierarchy {
            name: name.to_owned(),
            source,
        });
    }
    // A link only where the host has no hierarchy of that name itself.
    links.retain(|(link, _)| !hierarchies.iter().any(|h| h.name == *link));
    links.dedup();
    (hierarchies, links)
}

/// A v1 hierarchy mounted at `/sys/fs/cgroup/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct V1Mount {
    mountpoint: PathBuf,
    /// Its controllers (`cpu`, `cpuacct`; `name=systemd` for a named one).
    controllers: Vec<&'static str>,
    /// How the step's cgroup is keyed: its first controller, or the whole option list.
    key: String,
}

/// The controllers (and named hierarchies) a v1 mount's options may list.
const V1_CONTROLLERS: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "name=systemd",
];

/// The v1 hierarchies of `/proc/self/mountinfo` mounted directly under `/sys/fs/cgroup`.
fn v1_mounts(mountinfo: &str) -> Vec<V1Mount> {
    let mut out: Vec<V1Mount> = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(point), Some(&"cgroup"), Some(options)) =
            (fields.get(4), after.first(), after.get(2))
        else {
            continue;
        };
        let in_root = point
            .strip_prefix(ROOT)
            .and_then(|n| n.strip_prefix('/'))
            .is_some_and(|n| !n.is_empty() && !n.contains('/'));
        if !in_root || out.iter().any(|m| m.mountpoint == Path::new(point)) {
            continue;
        }
        let controllers: Vec<&'static str> = options
            .split(',')
            .filter_map(|o| V1_CONTROLLERS.iter().find(|c| **c == o).copied())
            .collect();
        let Some(first) = controllers.first() else {
            continue;
        };
        out.push(V1Mount {
            mountpoint: PathBuf::from(point),
            key: (*first).to_owned(),
            controllers,
        });
    }
    out
}

/// Removes the step cgroups in `parent` (`<pid>-<n>`, and runc's `runc` in them) of kiln
/// processes that are gone: a kiln killed with SIGKILL cannot remove its own, and without a
/// daemon nobody else would. Empty ones only (rmdir refuses the others); once per process.
pub(crate) fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, n)| n.parse::<u64>().ok().and(pid.parse::<u32>().ok()))
        else {
            continue;
        };
        if pid == me || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let _ = fs::remove_dir(e.path().join("runc"));
        let _ = fs::remove_dir(e.path());
    }
}

/// Gives the cpuset `child` the cpus and mems of `parent` where it has none.
fn inherit_cpuset(parent: &Path, child: &Path) -> std::io::Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let have = fs::read_to_string(child.join(file))?;
        if have.trim().is_empty() {
            let from = fs::read_to_string(parent.join(file))?;
            fs::write(child.join(file), from.trim())?;
        }
    }
    Ok(())
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
    fn step_cgroups_of_dead_kilns_are_swept_and_others_kept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that cannot be alive (above pid_max's ceiling), ours, and not a step name.
        for n in [
            "4194999-0",
            &format!("{}-7", std::process::id()),
            "keep",
            "1-x",
        ] {
            fs::create_dir_all(d.path().join(n)).unwrap();
        }
        fs::create_dir_all(d.path().join("4194999-1/runc")).unwrap();
        sweep_stale(d.path());
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![
            "1-x".to_owned(),
            format!("{}-7", std::process::id()),
            "keep".to_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
    }

    /// As root (these tests) every step has a cgroup, limits or not; on v1 one in every
    /// hierarchy (cpuset with its parent's cpus and mems, so that a process may join), as runc
    /// makes a container's, all removed after the step.
    #[test]
    fn every_step_has_a_cgroup_and_on_v1_in_every_hierarchy() {
        let cg = StepCgroup::create(StepLimits::default())
            .unwrap()
            .expect("a cgroup as root");
        if let Kind::V1 { dirs, .. } = &cg.kind {
            let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
            let mounts = v1_mounts(&mountinfo);
            assert!(mounts.iter().any(|m| m.key == "memory"), "{mounts:?}");
            assert_eq!(dirs.len(), mounts.len(), "{dirs:?} vs {mounts:?}");
            for (_, dir) in dirs {
                assert!(dir.is_dir(), "{}", dir.display());
            }
            // A process can join each, cpuset included.
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            for (key, dir) in dirs {
                let joined = fs::write(dir.join("cgroup.procs"), child.id().to_string());
                assert!(joined.is_ok(), "{key}: {joined:?}");
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let left: Vec<PathBuf> = dirs.iter().map(|(_, d)| d.clone()).collect();
            drop(cg);
            for d in left {
                assert!(!d.exists(), "{} is left", d.display());
            }
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
    fn v1_hierarchies_bind_the_steps_cgroup_else_kilns_with_links_for_combined_ones() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 /outer /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:39 / /mnt/elsewhere rw,relatime - cgroup cgroup rw,freezer
";
        // Paths that do not exist on this machine: the mountpoint itself is bound.
        let cgroup = "4:memory:/a\n3:pids:/outer/b\n2:cpu,cpuacct:/c\n1:name=systemd:/\n0::/\n";
        let step = [(
            "memory".to_owned(),
            PathBuf::from("/sys/fs/cgroup/memory/kiln/1-0"),
        )];
        let (h, links) = v1_hierarchies(mountinfo, cgroup, &step);
        let got: Vec<(&str, &str)> = h
            .iter()
            .map(|h| (h.name.as_str(), h.source.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"),
                ("memory", "/sys/fs/cgroup/memory/kiln/1-0"),
                ("pids", "/sys/fs/cgroup/pids"),
                ("systemd", "/sys/fs/cgroup/systemd"),
            ]
        );
        assert_eq!(
            links,
            [
                ("cpu".to_owned(), "cpu,cpuacct".to_owned()),
                ("cpuacct".to_owned(), "cpu,cpuacct".to_owned())
            ]
        );
    }

    /// On this host: kiln's own memory cgroup (this test process's), below the mount's root.
    #[test]
    fn v1_hierarchies_of_this_host_bind_kilns_own_cgroup() {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let cgroup = fs::read_to_string("/proc/self/cgroup").unwrap();
        let (h, _) = v1_hierarchies(&mountinfo, &cgroup, &[]);
        let Some(memory) = h.iter().find(|h| h.name == "memory") else {
            return assert!(!mountinfo.contains("/sys/fs/cgroup/memory "), "{h:?}");
        };
        let own = cgroup
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p))
            .unwrap();
        assert_eq!(
            memory.source,
            Path::new("/sys/fs/cgroup/memory").join(own.trim_start_matches('/'))
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
