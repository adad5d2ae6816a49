//! The runc runtime: the step as an OCI bundle (`config.json` from oci-spec) run by
//! `runc run`, for those who want the standard runtime. Same policy, mounts and results as the
//! embedded sandbox.
//!
//! runc keeps its state in a private `--root` directory per step, removed afterwards, so steps
//! never see each other's containers and nothing outlives the call — not even kiln: when kiln
//! is killed (SIGKILL runs no destructor), `runc run` gets the parent-death signal and a
//! [`DeathWatch`] deletes the container by its state directory. `runc run` (not detached)
//! passes its stdio to the container's process and exits with its exit code (128 + n for a
//! signal); when runc itself fails, it says so at level `error` in its JSON log, which is how
//! the two are told apart.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_plugin_sdk::death_watch::DeathWatch;
use kiln_plugin_sdk::graph::{NetworkMode, SecurityMode};
use kiln_plugin_sdk::proto::UlimitResource;
use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, UserBuilder,
};

use crate::output::{self, Process};
use crate::policy;
use crate::step::{MountSource, Step};
use crate::{Error, Sink};

/// The runc binary, looked up in `PATH`.
const RUNC: &str = "runc";

/// Runs `step` with runc; returns the process's exit code.
pub fn run(step: &Step, sink: &dyn Sink) -> Result<i32, Error> {
    let bundle = tempfile::Builder::new()
        .prefix("kiln-runc-bundle-")
        .tempdir()
        .map_err(|e| {
            Error::io(
                "cannot create a bundle directory in",
                std::env::temp_dir(),
                e,
            )
        })?;
    let state = tempfile::Builder::new()
        .prefix("kiln-runc-state-")
        .tempdir()
        .map_err(|e| {
            Error::io(
                "cannot create a state directory in",
                std::env::temp_dir(),
                e,
            )
        })?;
    let cgroup = crate::cgroup::StepCgroup::create(step.limits)?;
    let mut spec = spec(step)?;
    if let (Some(cg), Some(linux)) = (&cgroup, spec.linux_mut().as_mut()) {
        // Nested in the step's cgroup, whose limits hold for it; runc removes it.
        linux.set_cgroups_path(Some(PathBuf::from(cg.runc_path())));
    }
    cgroupfs_mounts(&mut spec, cgroup.as_ref(), step)?;
    let config = bundle.path().join("config.json");
    spec.save(&config)
        .map_err(|e| Error::io("cannot write", &config, io::Error::other(e)))?;
    let log = bundle.path().join("runc.log");
    let id = container_id();

    // Started before runc, so that runc never runs unwatched but for the moment between its
    // start and its pid reaching the watch. Without a watch (no `sh`), the container only
    // dies with kiln when kiln ends normally, as before.
    let mut watch = DeathWatch::start(
        WATCH_RUNC,
        &[
            ("KILN_RUNC_ROOT", state.path().as_os_str()),
            ("KILN_RUNC_BUNDLE", bundle.path().as_os_str()),
            ("KILN_RUNC_ID", std::ffi::OsStr::new(&id)),
        ],
    )
    .ok();

    let mut cmd = Command::new(RUNC);
    cmd.arg("--root")
        .arg(state.path())
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .arg("run")
        .arg("--bundle")
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(
                "runc is not installed (not found in PATH); use the embedded runtime".into(),
            )
        } else {
            Error::Runc(format!("cannot start runc: {e}"))
        }
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        let _ignored = child.kill();
        let _ignored = child.wait();
        return Err(Error::Runc("runc's output pipes are missing".into()));
    };
    if let Some(w) = &mut watch {
        w.tell(&child.id().to_string());
    }
    let pidfd = libc::pid_t::try_from(child.id())
        .ok()
        .and_then(output::pidfd_open);
    let mut proc = Runc {
        child,
        pidfd,
        state: state.path().to_path_buf(),
        id: id.clone(),
    };
    let ended = output::pump(
        &mut proc,
        OwnedFd::from(stdout),
        OwnedFd::from(stderr),
        None,
        sink,
    );
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            proc.kill();
            let _ignored = proc.child.wait();
            delete(state.path(), &id);
            return Err(Error::Runc(format!("cannot read the process output: {e}")));
        }
    };
    // `runc run` deletes its container when the process exits; after a kill that may not have
    // happened yet, and nothing must be left running.
    delete(state.path(), &id);
    drop(watch);
    if ended.cancelled {
        return Err(Error::Cancelled);
    }
    let code = output::exit_code(ended.status);
    if let Some(cg) = cgroup
        .as_ref()
        .filter(|cg| cg.oom_killed(code == 128 + libc::SIGKILL))
    {
        return Err(cg.oom_error());
    }
    if code != 0 {
        if let Some(message) = runc_errors(&log) {
            return Err(if message.contains("executable file not found") {
                Error::NotFound(message)
            } else if let Some(hint) = rootless_hint(&message) {
                Error::Runc(format!("{message}; {hint}"))
            } else {
                Error::Runc(message)
            });
        }
    }
    Ok(code)
}

struct Runc {
    child: Child,
    /// `runc run`'s pidfd, readable once it has exited.
    pidfd: Option<OwnedFd>,
    state: PathBuf,
    id: String,
}

impl Process for Runc {
    fn kill(&mut self) {
        // SIGKILL to `runc run` would orphan the container: ask runc to kill its init (the pid
        // namespace goes down with it). Before the container exists this fails; the pump calls
        // again on the next tick.
        let _ignored = Command::new(RUNC)
            .arg("--root")
            .arg(&self.state)
            .args(["kill", &self.id, "KILL"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn try_wait(&mut self) -> io::Result<Option<i32>> {
        use std::os::unix::process::ExitStatusExt;
        Ok(self.child.try_wait()?.map(|s| s.into_raw()))
    }

    fn exit_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.pidfd.as_ref().map(AsRawFd::as_raw_fd)
    }
}

/// `runc run` gets SIGKILL when the thread that starts it ends. That thread waits for it
/// (the output pump) and so outlives it, unless kiln dies: then runc goes too, and cannot go
/// on creating a container that the [`DeathWatch`] has already looked for.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid before the fork; prctl and getppid in the child are async-signal-safe
    // and touch no memory of the parent.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nothing would signal us.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The watch's script: told `runc run`'s pid, then `done`; without `done` (kiln died), it
/// waits (bounded) for `runc run` to be gone (it got SIGKILL with kiln, and a zombie counts as
/// gone), deletes the container by its state directory (`--force` kills its init, and the
/// rest of its pid namespace goes with it), and removes the step's directories.
const WATCH_RUNC: &str = r#"read -r pid; read -r said; [ "$said" = done ] && exit 0
n=0
while [ -n "$pid" ] && [ "$n" -lt 100 ] && read -r _ _ s _ < "/proc/$pid/stat" && [ "$s" != Z ]; do
  sleep 0.05; n=$((n + 1))
done
runc --root "$KILN_RUNC_ROOT" delete --force "$KILN_RUNC_ID"
rm -rf "$KILN_RUNC_ROOT" "$KILN_RUNC_BUNDLE""#;

fn delete(state: &Path, id: &str) {
    let _ignored = Command::new(RUNC)
        .arg("--root")
        .arg(state)
        .args(["delete", "--force", id])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A container id unique in this process (state dirs are private, so that is enough).
fn container_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "kiln-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `error`-level messages of runc's JSON log, joined; `None` when it logged none (the
/// container's process ran and exited non-zero by itself).
fn runc_errors(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let messages: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("level").and_then(|l| l.as_str()) == Some("error"))
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_owned))
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// The mount options that repeat the flags of the mount `source` lies on which a user
/// namespace locks (nosuid, nodev, noexec, the atime mode): runc's read-only remount of a bind
/// sets every flag anew, and the kernel refuses (EPERM) one that would clear a locked flag.
/// (The embedded runtime retries with them itself; runc 1.1 does not.)
fn locked_options(source: &Path) -> Result<Vec<String>, Error> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(source.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("{} contains a NUL byte", source.display())))?;
    // SAFETY: statvfs on a NUL-terminated path, writing the struct passed.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut fs) } != 0 {
        return Err(Error::io(
            "cannot read the mount flags of",
            source,
            io::Error::last_os_error(),
        ));
    }
    const OPTIONS: [(u64, &str); 6] = [
        (libc::ST_NOSUID, "nosuid"),
        (libc::ST_NODEV, "nodev"),
        (libc::ST_NOEXEC, "noexec"),
        (libc::ST_NOATIME, "noatime"),
        (libc::ST_NODIRATIME, "nodiratime"),
        (libc::ST_RELATIME, "relatime"),
    ];
    Ok(OPTIONS
        .iter()
        .filter(|(flag, _)| fs.f_flag & flag != 0)
        .map(|(_, o)| (*o).to_owned())
        .collect())
}

/// Why runc failed, when the cause is kiln's user namespace (see `userns::hint`): a refused
/// mount of proc or sysfs, or a hard rlimit it may not raise.
fn rootless_hint(message: &str) -> Option<&'static str> {
    if !message.contains("operation not permitted") {
        return None;
    }
    let what = if message.contains("rlimit") {
        crate::userns::Hint::Rlimit
    } else if message.contains("mounting \"proc\"") {
        crate::userns::Hint::Proc
    } else if message.contains("mounting \"sysfs\"") || message.contains("to rootfs at \"/sys\"") {
        crate::userns::Hint::Sys
    } else {
        return None;
    };
    crate::userns::hint(libc::EPERM, what)
}

fn oci_error(e: oci_spec::OciSpecError) -> Error {
    Error::Runc(format!("cannot build the OCI config: {e}"))
}

/// The bundle's `config.json`: runc's defaults (oci-spec's `Spec::default()`) with the step's
/// process, rootfs, mounts and policy.
fn spec(step: &Step) -> Result<Spec, Error> {
    let mut spec = Spec::default();
    let insecure = step.security == SecurityMode::Insecure;

    let caps: Vec<Capability> = policy::capabilities(step.security)
        .iter()
        .filter_map(|c| serde_json::from_value(serde_json::Value::String(c.to_string())).ok())
        .collect();
    let set: oci_spec::runtime::Capabilities = caps.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(oci_spec::runtime::Capabilities::new())
        .ambient(oci_spec::runtime::Capabilities::new())
        .build()
        .map_err(oci_error)?;
    let user = UserBuilder::default()
        .uid(step.user.uid)
        .gid(step.user.gid)
        .additional_gids(step.user.sgids.clone())
        .build()
        .map_err(oci_error)?;
    let rlimits = step
        .rlimits
        .iter()
        .map(|u| {
            PosixRlimitBuilder::default()
                .typ(rlimit_type(u.resource)?)
                .soft(u.soft)
                .hard(u.hard)
                .build()
                .map_err(oci_error)
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(step.args.clone())
        .env(step.env.clone())
        .cwd(step.cwd.clone())
        .user(user)
        .capabilities(capabilities)
        .rlimits(rlimits)
        // BuildKit runs RUN steps with new privileges allowed (oci.WithNewPrivileges).
        .no_new_privileges(false)
        .build()
        .map_err(oci_error)?;
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(step.rootfs.clone())
            .readonly(false)
            .build()
            .map_err(oci_error)?,
    ));
    spec.set_hostname(Some(step.hostname.clone()));

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    // runc's default /dev/shm is 64 MiB, as ours: give it the step's size.
    for m in mounts
        .iter_mut()
        .filter(|m| m.destination() == Path::new("/dev/shm"))
    {
        let options = m
            .options()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|o| !o.starts_with("size="))
            .chain([format!("size={}", step.shm_size)])
            .collect();
        m.set_options(Some(options));
    }
    if crate::userns::running_in_user_ns() && step.network != NetworkMode::None {
        // Rootless with the host's network: sysfs may be mounted only by the owner of the
        // network namespace, so the host's /sys is bound instead, with all below it (the
        // cgroup hierarchies too), as `runc spec --rootless` has it.
        mounts.retain(|m| !m.destination().starts_with("/sys"));
        let mut options: Vec<String> = ["rbind", "nosuid", "noexec", "nodev"]
            .map(String::from)
            .to_vec();
        if !insecure {
            options.push("ro".to_owned());
        }
        mounts.push(
            MountBuilder::default()
                .destination("/sys")
                .typ("none")
                .source("/sys")
                .options(options)
                .build()
                .map_err(oci_error)?,
        );
    }
    if insecure {
        for m in &mut mounts {
            if let Some(options) = m.options().clone() {
                let rw: Vec<String> = options.into_iter().filter(|o| o != "ro").collect();
                m.set_options(Some(rw));
            }
        }
    }
    for m in &step.mounts {
        let mut options = Vec::new();
        let builder = MountBuilder::default().destination(&m.dest);
        let builder = match &m.kind {
            MountSource::Bind { source, .. } => {
                options.push("rbind".to_owned());
                if m.readonly && crate::userns::running_in_user_ns() {
                    options.extend(locked_options(source)?);
                }
                builder.typ("bind").source(source)
            }
            MountSource::Tmpfs { size } => {
                options.extend(["nosuid", "nodev", "strictatime", "mode=1777"].map(String::from));
                if let Some(size) = size {
                    options.push(format!("size={size}"));
                }
                builder.typ("tmpfs").source("tmpfs")
            }
        };
        if m.readonly {
            options.push("ro".to_owned());
        }
        mounts.push(builder.options(options).build().map_err(oci_error)?);
    }
    spec.set_mounts(Some(mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    if let Some(namespaces) = linux.namespaces().clone() {
        let keep_net = step.network == NetworkMode::None;
        let mut namespaces: Vec<_> = namespaces
            .into_iter()
            .filter(|n| keep_net || n.typ() != LinuxNamespaceType::Network)
            .collect();
        // As BuildKit (`cgroupV2NamespaceSupported`): a cgroup namespace only on a v2 host; on
        // v1 one fails where a hierarchy is not a standard one (moby/buildkit#4108), and the
        // step's `/sys/fs/cgroup` binds full paths (`cgroupfs_mounts`).
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Cgroup);
        if Path::new("/proc/self/ns/cgroup").exists()
            && Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists()
        {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Cgroup)
                    .build()
                    .map_err(oci_error)?,
            );
        }
        linux.set_namespaces(Some(namespaces));
    }
    // CDI device nodes are bound from the host (see `step`); runc's device cgroup must let
    // the process use them.
    if !step.devices.is_empty() {
        let mut resources = linux.resources().clone().unwrap_or_default();
        let mut rules = resources.devices().clone().unwrap_or_default();
        for d in &step.devices {
            let rule = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(if d.kind == 'b' {
                    LinuxDeviceType::B
                } else {
                    LinuxDeviceType::C
                })
                .major(i64::try_from(d.major).unwrap_or(i64::MAX))
                .minor(i64::try_from(d.minor).unwrap_or(i64::MAX))
                .access("rwm")
                .build()
                .map_err(oci_error)?;
            rules.push(rule);
        }
        resources.set_devices(Some(rules));
        linux.set_resources(Some(resources));
    }
    linux.set_masked_paths(Some(policy::masked_paths(step.security)));
    linux.set_readonly_paths(Some(policy::readonly_paths(step.security)));
    if let Some(profile) = policy::seccomp(step.security) {
        linux.set_seccomp(Some(profile.oci()?));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The step's `/sys/fs/cgroup`, as BuildKit's `withCGroup` (a cgroup filesystem there,
/// read-only unless insecure: `oci.WithWriteableCgroupfs`), placed right after `/sys`.
///
/// v1: runc's own cgroup mount would bind the container's cgroup, the nested `runc` one, which
/// has no limits (they are set on the step's, whose `memory.failcnt` tells an OOM kill; v1
/// counts events per cgroup): the step gets the embedded runtime's binds instead, a tmpfs with
/// the step's cgroup of each hierarchy, a combined one also bound under each of its names.
/// v2: runc's cgroup2 mount in the cgroup namespace (`spec`), rooted at the nested cgroup,
/// which gets the limits too (v2's `memory.events` are hierarchical).
fn cgroupfs_mounts(
    spec: &mut Spec,
    cgroup: Option<&crate::cgroup::StepCgroup>,
    step: &Step,
) -> Result<(), Error> {
    use crate::cgroup::CgroupFs;
    let insecure = step.security == SecurityMode::Insecure;
    let hardened = ["nosuid", "noexec", "nodev"].map(String::from);
    let mut added = Vec::new();
    match crate::cgroup::cgroupfs(cgroup) {
        Some(CgroupFs::V1 { hierarchies, links }) => {
            // runc mounts a tmpfs read-write and makes it read-only once all is mounted.
            let mut options = hardened.to_vec();
            options.push("mode=755".to_owned());
            if !insecure {
                options.push("ro".to_owned());
            }
            added.push(
                MountBuilder::default()
                    .destination("/sys/fs/cgroup")
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()
                    .map_err(oci_error)?,
            );
            let binds =
                hierarchies
                    .iter()
                    .map(|h| (&h.name, &h.source))
                    .chain(links.iter().filter_map(|(link, target)| {
                        hierarchies
                            .iter()
                            .find(|h| h.name == *target)
                            .map(|h| (link, &h.source))
                    }));
            for (name, source) in binds {
                let mut options = vec!["bind".to_owned()];
                options.extend(hardened.iter().cloned());
                if !insecure {
                    options.push("ro".to_owned());
                    if crate::userns::running_in_user_ns() {
                        options.extend(locked_options(source)?);
                    }
                }
                added.push(
                    MountBuilder::default()
                        .destination(Path::new("/sys/fs/cgroup").join(name))
                        .typ("bind")
                        .source(source)
                        .options(options)
                        .build()
                        .map_err(oci_error)?,
                );
            }
        }
        Some(CgroupFs::V2 { .. }) | None => {
            let mut options = hardened.to_vec();
            if !insecure {
                options.push("ro".to_owned());
            }
            added.push(
                MountBuilder::default()
                    .destination("/sys/fs/cgroup")
                    .typ("cgroup")
                    .source("cgroup")
                    .options(options)
                    .build()
                    .map_err(oci_error)?,
            );
            if cgroup.is_some() && step.limits.any() {
                if let Some(linux) = spec.linux_mut().as_mut() {
                    let mut resources = linux.resources().clone().unwrap_or_default();
                    let limits = step.limits;
                    if let Some(m) = limits.memory.and_then(|m| i64::try_from(m).ok()) {
                        // OCI's swap is memory plus swap: as the step cgroup's swap.max = m.
                        resources.set_memory(Some(
                            LinuxMemoryBuilder::default()
                                .limit(m)
                                .swap(m.saturating_mul(2))
                                .build()
                                .map_err(oci_error)?,
                        ));
                    }
                    if let Some(q) = limits.cpu_quota.and_then(|q| i64::try_from(q).ok()) {
                        resources.set_cpu(Some(
                            LinuxCpuBuilder::default()
                                .quota(q)
                                .period(100_000u64)
                                .build()
                                .map_err(oci_error)?,
                        ));
                    }
                    if let Some(p) = limits.pids.and_then(|p| i64::try_from(p).ok()) {
                        resources.set_pids(Some(
                            LinuxPidsBuilder::default()
                                .limit(p)
                                .build()
                                .map_err(oci_error)?,
                        ));
                    }
                    linux.set_resources(Some(resources));
                }
            }
        }
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    // runc's default spec has a cgroup mount there already (with a cgroup namespace on v1).
    mounts.retain(|m| !m.destination().starts_with("/sys/fs/cgroup"));
    let at = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/sys"))
        .map_or(mounts.len(), |i| i + 1);
    mounts.splice(at..at, added);
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The OCI name of a resource limit.
fn rlimit_type(r: UlimitResource) -> Result<PosixRlimitType, Error> {
    Ok(match r {
        UlimitResource::Core => PosixRlimitType::RlimitCore,
        UlimitResource::Cpu => PosixRlimitType::RlimitCpu,
        UlimitResource::Data => PosixRlimitType::RlimitData,
        UlimitResource::Fsize => PosixRlimitType::RlimitFsize,
        UlimitResource::Locks => PosixRlimitType::RlimitLocks,
        UlimitResource::Memlock => PosixRlimitType::RlimitMemlock,
        UlimitResource::Msgqueue => PosixRlimitType::RlimitMsgqueue,
        UlimitResource::Nice => PosixRlimitType::RlimitNice,
        UlimitResource::Nofile => PosixRlimitType::RlimitNofile,
        UlimitResource::Nproc => PosixRlimitType::RlimitNproc,
        UlimitResource::Rss => PosixRlimitType::RlimitRss,
        UlimitResource::Rtprio => PosixRlimitType::RlimitRtprio,
        UlimitResource::Rttime => PosixRlimitType::RlimitRttime,
        UlimitResource::Sigpending => PosixRlimitType::RlimitSigpending,
        UlimitResource::Stack => PosixRlimitType::RlimitStack,
        UlimitResource::Unknown => {
            return Err(Error::Unsupported(
                "a --ulimit names a resource this exec plugin does not know; update it".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watch with a stand-in `runc` that records its arguments in `calls`; returns it with
    /// the state and bundle directories it was given.
    fn watch(t: &Path) -> (DeathWatch, PathBuf, PathBuf, PathBuf) {
        let bin = t.join("bin");
        let (root, bundle) = (t.join("state"), t.join("bundle"));
        for d in [&bin, &root, &bundle] {
            std::fs::create_dir_all(d).unwrap();
        }
        let calls = t.join("calls");
        let runc = bin.join("runc");
        std::fs::write(
            &runc,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let w = DeathWatch::start(
            WATCH_RUNC,
            &[
                ("PATH", std::ffi::OsStr::new(&path)),
                ("KILN_RUNC_ROOT", root.as_os_str()),
                ("KILN_RUNC_BUNDLE", bundle.as_os_str()),
                ("KILN_RUNC_ID", std::ffi::OsStr::new("kiln-1-0")),
            ],
        )
        .unwrap();
        (w, calls, root, bundle)
    }

    /// kiln dying (its end of the pipe closed without `done`, as the kernel closes it on a
    /// SIGKILL): once `runc run` is gone, the container is deleted by its state directory and
    /// the step's directories are removed.
    #[test]
    fn watch_deletes_the_container_when_kiln_dies() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, calls, root, bundle) = watch(t.path());
        // A stand-in for `runc run`, which the parent-death signal ends with kiln.
        let mut runc_run = Command::new("sleep").arg("600").spawn().unwrap();
        w.tell(&runc_run.id().to_string());
        w.close_without_done();
        runc_run.kill().unwrap();
        runc_run.wait().unwrap();
        w.wait().unwrap();
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            format!("--root {} delete --force kiln-1-0\n", root.display())
        );
        assert!(!root.exists() && !bundle.exists());
    }

    /// A step that ended normally: the watch is told `done` and touches nothing.
    #[test]
    fn watch_does_nothing_after_done() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, calls, root, bundle) = watch(t.path());
        w.tell("1");
        drop(w);
        assert!(!calls.exists());
        assert!(root.exists() && bundle.exists());
    }

    /// `runc run` started with the parent-death signal: it dies with the thread that started
    /// it (here a thread that ends; in kiln the whole process when it is killed).
    #[test]
    fn runc_run_gets_the_parent_death_signal() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let mut child = child;
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }
}
