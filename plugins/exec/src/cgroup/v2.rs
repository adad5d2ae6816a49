//! The step's cgroup on the unified (v2) hierarchy, as runc's fs2 and BuildKit drive it: one
//! directory, `<base>/kiln/<pid>-<n>`. As root, `<base>` is the root of kiln's cgroup namespace
//! (BuildKit's `/buildkit` parent, v1's `/kiln`); rootless, it is the cgroup kiln itself lives
//! in (`0::<own>` in `/proc/self/cgroup`), so that a delegated subtree (a systemd unit with
//! `Delegate=yes`) is enough. The controllers the limits need are enabled in
//! `<base>/cgroup.subtree_control` and `<base>/kiln/cgroup.subtree_control`; v2's "no internal
//! processes" rule refuses the first while `<base>` holds processes (a container's namespace
//! root, kiln's own cgroup), so they are moved into the leaf `<base>/init` first, as BuildKit's
//! image and docker's dind move theirs into `/init` (a kiln already in `…/init` uses its
//! parent). The host's root cgroup is exempt.

use std::fs;
use std::io::{ErrorKind, Read, Seek};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// The leaf kiln's own processes move to when its cgroup must delegate controllers.
pub(super) const INIT: &str = "init";

/// One file of the step's cgroup to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Setting {
    /// The controller that provides the file.
    pub controller: &'static str,
    /// The flag the user set (for errors).
    pub flag: &'static str,
    pub file: &'static str,
    pub value: String,
    /// Written only where the kernel has the file (`memory.swap.max` needs swap accounting).
    pub optional: bool,
}

/// The files for the step's limits: `memory.max`, with `memory.swap.max` equal to it (docker's
/// `--memory` without `--memory-swap` lets the container use as much swap again as memory; v2
/// counts swap apart), `cpu.max` as `QUOTA PERIOD` per 100 ms (docker's `--cpu-quota`), and
/// `pids.max`.
pub(super) fn settings(limits: &kiln_plugin_sdk::proto::StepLimits) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut set = |controller, flag, file, value: String, optional| {
        out.push(Setting {
            controller,
            flag,
            file,
            value,
            optional,
        });
    };
    if let Some(m) = limits.memory {
        set("memory", "--memory", "memory.max", m.to_string(), false);
        set("memory", "--memory", "memory.swap.max", m.to_string(), true);
    }
    if let Some(q) = limits.cpu_quota {
        set(
            "cpu",
            "--cpu-quota",
            "cpu.max",
            format!("{q} 100000"),
            false,
        );
    }
    if let Some(p) = limits.pids {
        set("pids", "--pids-limit", "pids.max", p.to_string(), false);
    }
    out
}

/// The path of the cgroup this process lives in, from `/proc/self/cgroup`'s `0::PATH` line.
pub(super) fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// The cgroup whose subtree kiln uses: its own, or the parent of an `init` leaf it was moved to.
pub(super) fn base_of(own: &str) -> &str {
    match own.strip_suffix(INIT) {
        Some(parent) if parent.ends_with('/') => {
            let parent = parent.trim_end_matches('/');
            if parent.is_empty() {
                "/"
            } else {
                parent
            }
        }
        _ => own,
    }
}

/// A step cgroup on the unified hierarchy; [`Step::remove`] kills what is left and removes it.
#[derive(Debug)]
pub(super) struct Step {
    pub dir: PathBuf,
    /// The path below the mount (`/…/kiln/<pid>-<n>`): runc's `cgroupsPath` base.
    pub rel: String,
}

/// Creates `<mount><base>/kiln/<name>` with `settings` written, after delegating their
/// controllers down to it. `flags` names the limits asked for, for the permission error.
pub(super) fn create(
    mount: &Path,
    own: &str,
    name: &str,
    settings: &[Setting],
    flags: &str,
) -> Result<Step, Error> {
    let base_rel = base_of(own);
    let base = mount.join(base_rel.trim_start_matches('/'));
    let mut controllers: Vec<(&'static str, &'static str)> = Vec::new();
    for s in settings {
        if !controllers.iter().any(|(c, _)| *c == s.controller) {
            controllers.push((s.controller, s.flag));
        }
    }
    if !controllers.is_empty() {
        delegate(&base, &controllers, flags)?;
    }
    let parent = base.join("kiln");
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| super::sweep_stale(&parent));
    match fs::create_dir(&parent) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(creation_error(&parent, e, flags)),
    }
    if !controllers.is_empty() {
        delegate(&parent, &controllers, flags)?;
    }
    let dir = parent.join(name);
    fs::create_dir(&dir).map_err(|e| creation_error(&dir, e, flags))?;
    let step = Step {
        rel: format!("{}/kiln/{name}", base_rel.trim_end_matches('/')),
        dir,
    };
    for s in settings {
        let path = step.dir.join(s.file);
        if s.optional && !path.exists() {
            continue;
        }
        if let Err(e) = super::write(&path, &s.value) {
            step.remove();
            return Err(e);
        }
    }
    Ok(step)
}

/// Makes `controllers` available to the children of `cgroup` (its `cgroup.subtree_control`).
fn delegate(
    cgroup: &Path,
    controllers: &[(&'static str, &'static str)],
    flags: &str,
) -> Result<(), Error> {
    let available = read(&cgroup.join("cgroup.controllers"))?;
    if let Some((controller, flag)) = controllers
        .iter()
        .find(|(c, _)| !available.split_whitespace().any(|a| a == *c))
    {
        return Err(Error::Unsupported(format!(
            "the step asks for a {controller} limit ({flag}), but the {controller} cgroup \
             controller is not available to kiln's cgroup {}: its cgroup.controllers lists \
             {}; it must be enabled in the parent's cgroup.subtree_control (with systemd, \
             delegate it: Delegate=yes)",
            cgroup.display(),
            if available.trim().is_empty() {
                "none".to_owned()
            } else {
                format!("only \"{}\"", available.trim())
            },
        )));
    }
    let enabled = read(&cgroup.join("cgroup.subtree_control"))?;
    let wanted: Vec<String> = controllers
        .iter()
        .filter(|(c, _)| !enabled.split_whitespace().any(|e| e == *c))
        .map(|(c, _)| format!("+{c}"))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let control = cgroup.join("cgroup.subtree_control");
    let mut attempts = 0;
    loop {
        match write_raw(&control, &wanted.join(" ")) {
            Ok(()) => return Ok(()),
            // EBUSY: processes live in it (v2 lets only leaves hold processes; the real root
            // is exempt, not a container's namespace root). Only ever kiln's own cgroup: the
            // ones kiln makes hold none. Another step's child may fork into it meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempts < 3 => {
                attempts += 1;
                evacuate(cgroup, flags)?;
            }
            Err(e) if is_permission(&e) => return Err(permission_error(&control, e, flags)),
            Err(e) => {
                return Err(Error::io(
                    "cannot enable cgroup controllers in",
                    &control,
                    e,
                ))
            }
        }
    }
}

/// Moves every process of `cgroup` into its leaf `init`. A process forked meanwhile lands in
/// `cgroup` again: a few rounds until it is empty.
fn evacuate(cgroup: &Path, flags: &str) -> Result<(), Error> {
    let init = cgroup.join(INIT);
    match fs::create_dir(&init) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(creation_error(&init, e, flags)),
    }
    let procs = cgroup.join("cgroup.procs");
    let target = init.join("cgroup.procs");
    for _ in 0..10 {
        let pids = read(&procs)?;
        if pids.trim().is_empty() {
            return Ok(());
        }
        for pid in pids.split_whitespace() {
            match write_raw(&target, pid) {
                Ok(()) => {}
                // It exited meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) if is_permission(&e) => return Err(permission_error(&target, e, flags)),
                Err(e) => return Err(Error::io("cannot move a process into", &target, e)),
            }
        }
    }
    Err(Error::Unsupported(format!(
        "cannot empty the cgroup {} to delegate controllers from it: its processes keep \
         forking; run kiln in a cgroup of its own",
        cgroup.display()
    )))
}

impl Step {
    /// The step's `cgroup.procs`.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How many times the OOM killer killed a process in it or below (`memory.events` is
    /// hierarchical: runc's nested cgroup counts here too).
    pub fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| event_count(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// Kills every process left in it and below (`cgroup.kill`, Linux 5.14: an embedded step's
    /// died with its pid namespace already, but runc's may linger), and waits until the kernel
    /// says it is empty (`populated 0` in `cgroup.events`).
    pub fn kill(&self) {
        let _ignored = write_raw(&self.dir.join("cgroup.kill"), "1");
        wait_unpopulated(&self.dir, Duration::from_secs(10));
    }

    /// [`Step::kill`], then removes it with runc's nested one (runc removes that itself when
    /// its container ends normally). The shared `kiln` parent stays, as on v1.
    pub fn remove(&self) {
        self.kill();
        let _ignored = fs::remove_dir(self.dir.join("runc"));
        let _ignored = fs::remove_dir(&self.dir);
    }
}

/// Waits until `cgroup.events` says `populated 0`: the kernel signals each change of the file
/// as POLLPRI. Bounded by `limit` (a process stuck in D state must not hang the build).
fn wait_unpopulated(dir: &Path, limit: Duration) {
    let Ok(mut events) = fs::File::open(dir.join("cgroup.events")) else {
        return;
    };
    let start = Instant::now();
    loop {
        let mut text = String::new();
        if events.rewind().is_err() || events.read_to_string(&mut text).is_err() {
            return;
        }
        if event_count(&text, "populated") != Some(1) || start.elapsed() > limit {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call. The timeout only bounds a
        // missed notification; the loop re-reads the file either way.
        unsafe { libc::poll(&mut pfd, 1, 100) };
    }
}

/// `key N` in a flat-keyed cgroup file (`memory.events`, `cgroup.events`).
pub(super) fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))
}

fn write_raw(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

fn is_permission(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

fn creation_error(path: &Path, e: std::io::Error, flags: &str) -> Error {
    if is_permission(&e) {
        permission_error(path, e, flags)
    } else {
        Error::io("cannot create the cgroup", path, e)
    }
}

/// The rootless case: an ordinary user may only change a cgroup v2 subtree delegated to it.
fn permission_error(path: &Path, e: std::io::Error, flags: &str) -> Error {
    Error::Unsupported(format!(
        "resource limits ({flags}) need root or a delegated cgroup v2 subtree (no permission \
         on {}: {e}); with systemd, run kiln in a delegated scope: systemd-run --user --scope \
         -p Delegate=yes kiln build …",
        path.display()
    ))
}

#[cfg(test)]
pub(super) mod tests {
    //! The formats on plain data, and the cgroup operations on the host's real cgroup2 mount.
    //! On this v1-hybrid machine that is `/sys/fs/cgroup/unified`, which has no controllers
    //! but `hugetlb` (free because no v1 hierarchy holds it): creating, joining, killing and
    //! removing are real there, the missing-controller error is real, and so is delegating a
    //! controller past a cgroup that holds processes, with `hugetlb` standing in for memory.

    use super::*;
    use kiln_plugin_sdk::proto::StepLimits;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    /// The real-mount tests change the hierarchy's shared parts (`/kiln`, the root's
    /// `cgroup.subtree_control`): one at a time.
    static REAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// The host's cgroup2 mount: the hybrid `unified` one, or `/sys/fs/cgroup` on a v2 host.
    fn mount() -> PathBuf {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(PathBuf::from)
            .find(|m| m.join("cgroup.controllers").exists())
            .expect("these tests need a cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup")
    }

    fn own() -> String {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        own_cgroup(&text).unwrap().to_owned()
    }

    fn sleeper() -> Child {
        Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("sleep (coreutils) is needed")
    }

    fn cgroup_of(pid: u32) -> String {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        own_cgroup(&text).unwrap().to_owned()
    }

    fn name(test: &str) -> String {
        format!("{}-test-{test}", std::process::id())
    }

    #[test]
    fn limits_become_the_v2_files_as_docker_writes_them() {
        let limits = StepLimits {
            memory: Some(64 << 20),
            cpu_quota: Some(50_000),
            pids: Some(100),
        };
        let files: Vec<(&str, &str, String, bool)> = settings(&limits)
            .into_iter()
            .map(|s| (s.controller, s.file, s.value, s.optional))
            .collect();
        assert_eq!(
            files,
            [
                ("memory", "memory.max", "67108864".to_owned(), false),
                ("memory", "memory.swap.max", "67108864".to_owned(), true),
                ("cpu", "cpu.max", "50000 100000".to_owned(), false),
                ("pids", "pids.max", "100".to_owned(), false),
            ]
        );
        assert!(settings(&StepLimits::default()).is_empty());
        let only_pids = settings(&StepLimits {
            pids: Some(7),
            ..StepLimits::default()
        });
        assert_eq!(only_pids.len(), 1);
        assert_eq!(
            (only_pids[0].flag, only_pids[0].value.as_str()),
            ("--pids-limit", "7")
        );
    }

    #[test]
    fn own_cgroup_and_its_base() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/user.slice/a.scope\n";
        assert_eq!(own_cgroup(hybrid), Some("/user.slice/a.scope"));
        assert_eq!(own_cgroup("0::/\n"), Some("/"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
        assert_eq!(base_of("/"), "/");
        assert_eq!(base_of("/init"), "/");
        assert_eq!(base_of("/svc/init"), "/svc");
        assert_eq!(base_of("/svc/a"), "/svc/a");
        assert_eq!(base_of("/svc/notinit"), "/svc/notinit");
    }

    #[test]
    fn events_files_are_read_by_exact_key() {
        let memory_events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(event_count(memory_events, "oom_kill"), Some(1));
        assert_eq!(event_count(memory_events, "oom"), Some(2));
        assert_eq!(event_count("oom_group_kill 3\n", "oom_kill"), None);
        assert_eq!(event_count("populated 0\nfrozen 0\n", "populated"), Some(0));
    }

    #[test]
    fn a_step_cgroup_on_the_real_mount_is_joined_killed_and_removed() {
        let _one = REAL.lock().unwrap_or_else(|e| e.into_inner());
        let mount = mount();
        let own = own();
        let step = create(&mount, &own, &name("life"), &[], "").unwrap();
        assert!(step.dir.is_dir());
        assert_eq!(
            step.rel,
            format!(
                "{}/kiln/{}",
                base_of(&own).trim_end_matches('/'),
                name("life")
            )
        );

        let mut child = sleeper();
        write_raw(&step.procs(), &child.id().to_string()).unwrap();
        let procs = fs::read_to_string(step.procs()).unwrap();
        assert_eq!(procs.trim(), child.id().to_string());
        assert_eq!(cgroup_of(child.id()), step.rel);
        let events = fs::read_to_string(step.dir.join("cgroup.events")).unwrap();
        assert_eq!(event_count(&events, "populated"), Some(1), "{events}");

        step.kill();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        let events = fs::read_to_string(step.dir.join("cgroup.events")).unwrap();
        assert_eq!(event_count(&events, "populated"), Some(0), "{events}");

        step.remove();
        assert!(!step.dir.exists(), "{} is left", step.dir.display());
    }

    #[test]
    fn a_controller_the_mount_lacks_is_named_with_its_flag() {
        let _one = REAL.lock().unwrap_or_else(|e| e.into_inner());
        let mount = mount();
        let own = own();
        let base = mount.join(base_of(&own).trim_start_matches('/'));
        let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap();
        assert!(
            !available.split_whitespace().any(|c| c == "memory"),
            "this test needs a cgroup2 mount without the memory controller (a v1-hybrid host); \
             {} has {available}",
            base.display()
        );
        let limits = StepLimits {
            memory: Some(32 << 20),
            ..StepLimits::default()
        };
        let err = create(&mount, &own, &name("nomem"), &settings(&limits), "--memory").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Unsupported(_)), "{text}");
        assert!(
            text.contains("memory limit (--memory)")
                && text.contains("the memory cgroup controller is not available")
                && text.contains(&base.display().to_string()),
            "{text}"
        );
        assert!(!base.join("kiln").join(name("nomem")).exists());
    }

    /// Runs `f` with this thread's filesystem uid set to `nobody`: an ordinary user to every
    /// permission check (fsuid is per thread, and leaving 0 drops the DAC capabilities).
    pub(crate) fn as_nobody<T>(f: impl FnOnce() -> T) -> T {
        struct Back;
        impl Drop for Back {
            fn drop(&mut self) {
                unsafe { libc::setfsuid(0) };
            }
        }
        unsafe { libc::setfsuid(65534) };
        let _back = Back;
        f()
    }

    #[test]
    fn an_ordinary_user_is_told_to_get_a_delegated_subtree() {
        let _one = REAL.lock().unwrap_or_else(|e| e.into_inner());
        let mount = mount();
        let own = own();
        // Without a controller to enable: creating the step's directory is refused.
        let err =
            as_nobody(|| create(&mount, &own, &name("nobody"), &[], "--pids-limit")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Unsupported(_)), "{text}");
        assert!(
            text.starts_with(
                "resource limits (--pids-limit) need root or a delegated cgroup v2 subtree \
                 (no permission on "
            ) && text.contains("Delegate=yes"),
            "{text}"
        );
        let base = mount.join(base_of(&own).trim_start_matches('/'));
        assert!(!base.join("kiln").join(name("nobody")).exists());
    }

    /// Puts the hierarchy's root `cgroup.subtree_control` back as it was.
    struct RootControl {
        file: PathBuf,
        added: bool,
    }

    impl Drop for RootControl {
        fn drop(&mut self) {
            if self.added {
                let _ = write_raw(&self.file, "-hugetlb");
            }
        }
    }

    #[test]
    fn controllers_are_delegated_past_a_cgroup_that_holds_processes() {
        let _one = REAL.lock().unwrap_or_else(|e| e.into_inner());
        let mount = mount();
        let root_controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap();
        assert!(
            root_controllers.split_whitespace().any(|c| c == "hugetlb"),
            "this test needs the hugetlb controller free for cgroup2 at {} (it has \
             {root_controllers})",
            mount.display()
        );
        let control = mount.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&control).unwrap();
        // hugetlb in the root's subtree_control makes it available below; nothing is limited.
        let _restore = RootControl {
            added: !enabled.split_whitespace().any(|c| c == "hugetlb"),
            file: control.clone(),
        };
        write_raw(&control, "+hugetlb").unwrap();

        // A cgroup with a process in it stands for kiln's own.
        let own = format!("/kiln-{}", name("deleg"));
        let base = mount.join(own.trim_start_matches('/'));
        fs::create_dir(&base).unwrap();
        let mut resident = sleeper();
        write_raw(&base.join("cgroup.procs"), &resident.id().to_string()).unwrap();

        let hugetlb = Setting {
            controller: "hugetlb",
            flag: "--hugetlb",
            file: "hugetlb.2MB.max",
            value: "0".to_owned(),
            optional: false,
        };
        let created = create(&mount, &own, "step", &[hugetlb], "--hugetlb");
        let moved_to = cgroup_of(resident.id());
        let base_control = fs::read_to_string(base.join("cgroup.subtree_control"));
        let kiln_control = fs::read_to_string(base.join("kiln/cgroup.subtree_control"));
        let limit = fs::read_to_string(base.join("kiln/step/hugetlb.2MB.max"));

        if let Ok(step) = &created {
            step.remove();
        }
        resident.kill().unwrap();
        resident.wait().unwrap();
        for d in ["kiln/step", "kiln", INIT, ""] {
            let _ = fs::remove_dir(base.join(d));
        }

        let step = created.unwrap();
        assert_eq!(step.rel, format!("{own}/kiln/step"));
        assert_eq!(moved_to, format!("{own}/init"));
        assert_eq!(base_control.unwrap().trim(), "hugetlb");
        assert_eq!(kiln_control.unwrap().trim(), "hugetlb");
        assert_eq!(limit.unwrap().trim(), "0");
        assert!(!base.exists(), "{} is left", base.display());
    }
}
