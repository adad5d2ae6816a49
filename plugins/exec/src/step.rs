//! A checked, resolved RUN step: what both runtimes run.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_plugin_sdk::graph::{ExecOp, Mount, MountKind, NetworkMode, Op, SecurityMode};
use kiln_plugin_sdk::proto::{
    HostEntry, PreparedMount, PreparedMountKind, PrimitiveRequest, Ulimit, UlimitResource,
};

use crate::rootfs::{self, StubKind, Stubs};
use crate::user::{self, ExecUser};
use crate::Error;

/// The hostname when the request names none, as BuildKit's.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// `PATH` when the step's environment has none, as BuildKit's.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The size of `/dev/shm` when the request names none: Docker's (and BuildKit's) 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Where the host's DNS configuration is read from when the request brings none.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// A mount of the step, in mount order, with its kind resolved.
#[derive(Clone, Debug)]
pub struct StepMount {
    /// Cleaned absolute destination inside the container.
    pub dest: String,
    /// What goes there.
    pub kind: MountSource,
    /// Read-only.
    pub readonly: bool,
    /// Its destination lies inside an earlier mount of the step (or `/proc`, `/dev`, `/sys`),
    /// so its mountpoint is made inside that mount, not in the rootfs.
    pub nested: bool,
}

/// The source of a [`StepMount`].
#[derive(Clone, Debug)]
pub enum MountSource {
    /// Bind a host path; `dir` tells which kind of mountpoint it needs.
    Bind {
        /// Host path.
        source: PathBuf,
        /// The source is a directory.
        dir: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes.
        size: Option<u64>,
    },
}

/// Mountpoints every step has, made by the runtime itself.
pub const SYSTEM_MOUNTS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// Everything a runtime needs to run one step.
pub struct Step {
    /// The prepared rootfs (canonical host path).
    pub rootfs: PathBuf,
    /// argv.
    pub args: Vec<String>,
    /// The environment, with `PATH` and `HOME` filled in.
    pub env: Vec<String>,
    /// Working directory inside the container (exists).
    pub cwd: String,
    /// The identity of the process.
    pub user: ExecUser,
    /// The container's hostname.
    pub hostname: String,
    /// Network mode.
    pub network: NetworkMode,
    /// Security mode.
    pub security: SecurityMode,
    /// The step's mounts (the engine's prepared mounts, then `/etc/hosts` and
    /// `/etc/resolv.conf`), in mount order.
    pub mounts: Vec<StepMount>,
    /// Size of the `/dev/shm` tmpfs in bytes.
    pub shm_size: u64,
    /// Resource limits, applied in order (see `policy::rlimits`).
    pub rlimits: Vec<Ulimit>,
    /// The limits of the step's cgroup (`cgroup.rs`).
    pub limits: kiln_plugin_sdk::proto::StepLimits,
    /// Host device nodes of the step's CDI devices (bound among `mounts`; runc's device
    /// cgroup must also allow them).
    pub devices: Vec<crate::cdi::Node>,
    /// Holds the generated `/etc/hosts` and `/etc/resolv.conf`; removed on drop.
    _files: crate::scratch::Scratch,
}

impl Step {
    /// Checks and resolves `req`, writes the hosts and resolv.conf files, and creates the
    /// missing mountpoints in the rootfs (recorded in the returned [`Stubs`]).
    pub fn prepare(
        req: PrimitiveRequest,
        injected: crate::cdi::Injected,
    ) -> Result<(Step, Stubs), Error> {
        let Op::Exec(op) = req.op else {
            return Err(Error::Unsupported(format!(
                "the exec primitive runs exec ops, not {} ops",
                req.op.kind()
            )));
        };
        if op.args.is_empty() {
            return Err(Error::InvalidInput("the exec op has no arguments".into()));
        }
        let rootfs = fs::canonicalize(&req.output)
            .map_err(|e| Error::io("cannot open the root filesystem", &req.output, e))?;
        if !rootfs.is_dir() {
            return Err(Error::InvalidInput(format!(
                "the root filesystem {} is not a directory",
                rootfs.display()
            )));
        }
        check_mounts(&op, &req.mounts)?;
        let mut user = user::resolve(&rootfs, &op.user)?;
        user.sgids.extend(&injected.gids);
        let env = with_cdi_env(environment(&op.env, &user), &injected.env);
        let cwd = rootfs::clean(&op.cwd);
        rootfs::mkdir_all(&rootfs, &cwd)?;
        let hostname = req
            .hostname
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOSTNAME.to_owned());

        let files = crate::scratch::Scratch::new("kiln-step-")?;
        check_ulimits(&req.ulimits)?;
        let shm_size = match req.shm_size {
            None => DEFAULT_SHM_SIZE,
            Some(0) => {
                return Err(Error::InvalidInput(
                    "the /dev/shm size must be more than 0 bytes".into(),
                ))
            }
            Some(s) => s,
        };
        let hosts = req
            .etc_hosts
            .unwrap_or_else(|| hosts_file(&hostname, &req.extra_hosts));
        let resolv = match req.resolv_conf {
            Some(r) => r,
            None => host_resolv_conf()?,
        };
        let hosts_path = write_file(files.path(), "hosts", &hosts)?;
        let resolv_path = write_file(files.path(), "resolv.conf", &resolv)?;

        let mut mounts = Vec::new();
        for m in req.mounts {
            let kind = match m.kind {
                PreparedMountKind::Bind { source } => {
                    let meta = fs::metadata(&source)
                        .map_err(|e| Error::io("cannot use the mount source", &source, e))?;
                    MountSource::Bind {
                        source: PathBuf::from(source),
                        dir: meta.is_dir(),
                    }
                }
                PreparedMountKind::Tmpfs { size } => MountSource::Tmpfs { size },
                PreparedMountKind::Unknown => {
                    return Err(Error::Unsupported(format!(
                        "the mount at {} is of a kind this exec plugin does not know; update it",
                        m.dest
                    )))
                }
            };
            mounts.push(StepMount {
                dest: rootfs::clean(&m.dest),
                kind,
                readonly: m.readonly,
                nested: false,
            });
        }
        // CDI edits: the devices' bind mounts, then their nodes, bound from the host's.
        for m in &injected.mounts {
            let meta = fs::metadata(&m.host_path)
                .map_err(|e| Error::io("cannot use the CDI mount source", &m.host_path, e))?;
            mounts.push(StepMount {
                dest: rootfs::clean(&m.container_path),
                kind: MountSource::Bind {
                    source: m.host_path.clone(),
                    dir: meta.is_dir(),
                },
                readonly: m.readonly,
                nested: false,
            });
        }
        for n in &injected.nodes {
            mounts.push(StepMount {
                dest: rootfs::clean(&n.path),
                kind: MountSource::Bind {
                    source: n.host_path.clone(),
                    dir: false,
                },
                readonly: false,
                nested: false,
            });
        }
        for (dest, source) in [
            ("/etc/hosts", hosts_path),
            ("/etc/resolv.conf", resolv_path),
        ] {
            mounts.push(StepMount {
                dest: dest.to_owned(),
                kind: MountSource::Bind { source, dir: false },
                readonly: true,
                nested: false,
            });
        }
        let nested: Vec<bool> = (0..mounts.len())
            .map(|i| {
                let dest = mounts.get(i).map_or("/", |m| m.dest.as_str());
                SYSTEM_MOUNTS
                    .iter()
                    .copied()
                    .chain(mounts.iter().take(i).map(|m| m.dest.as_str()))
                    .any(|earlier| rootfs::is_within(dest, earlier))
            })
            .collect();
        for (m, nested) in mounts.iter_mut().zip(nested) {
            m.nested = nested;
        }

        let mut stubs = Stubs::new(&rootfs);
        let made = make_stubs(&mut stubs, &mounts);
        if let Err(e) = made {
            let _ignored = stubs.cleanup();
            return Err(e);
        }
        let step = Step {
            rootfs,
            args: op.args,
            env,
            cwd,
            user,
            hostname,
            network: op.network,
            security: op.security,
            mounts,
            shm_size,
            rlimits: crate::policy::rlimits(&req.ulimits),
            limits: req.limits,
            devices: injected.nodes,
            _files: files,
        };
        Ok((step, stubs))
    }

    /// The `PATH` the executable is looked up in.
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
    }
}

fn make_stubs(stubs: &mut Stubs, mounts: &[StepMount]) -> Result<(), Error> {
    for dest in SYSTEM_MOUNTS {
        stubs.ensure(dest, StubKind::Dir)?;
    }
    for m in mounts.iter().filter(|m| !m.nested) {
        let kind = match m.kind {
            MountSource::Bind { dir: false, .. } => StubKind::File,
            _ => StubKind::Dir,
        };
        stubs.ensure(&m.dest, kind)?;
    }
    Ok(())
}

/// Prepared mounts need absolute destinations other than `/`, and every mount of the graph op
/// that must exist (all but the root and optional secrets or SSH sockets, which BuildKit skips
/// when they are missing) must have been prepared: one the engine forgot would silently be
/// missing from the step.
fn check_mounts(op: &ExecOp, prepared: &[PreparedMount]) -> Result<(), Error> {
    for m in prepared {
        if !m.dest.starts_with('/') {
            return Err(Error::InvalidInput(format!(
                "mount destination {:?} is not an absolute path",
                m.dest
            )));
        }
        if rootfs::clean(&m.dest) == "/" {
            return Err(Error::InvalidInput(
                "a prepared mount cannot replace the root filesystem".into(),
            ));
        }
    }
    let required = |m: &&Mount| match m.kind {
        MountKind::Secret { required, .. } | MountKind::Ssh { required, .. } => required,
        _ => true,
    };
    for m in op
        .mounts
        .iter()
        .filter(|m| rootfs::clean(&m.dest) != "/")
        .filter(required)
    {
        let dest = rootfs::clean(&m.dest);
        if !prepared.iter().any(|p| rootfs::clean(&p.dest) == dest) {
            return Err(Error::InvalidInput(format!(
                "the mount at {dest} was not prepared by the engine"
            )));
        }
    }
    Ok(())
}

/// The step's environment with the CDI devices' variables, which replace the step's own of
/// the same name (CDI's rule).
fn with_cdi_env(mut env: Vec<String>, cdi: &[String]) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_owned();
    for kv in cdi {
        let k = key(kv);
        env.retain(|e| key(e) != k);
        env.push(kv.clone());
    }
    env
}

/// The step's environment with `PATH` (BuildKit's default) and `HOME` (the user's, as runc
/// sets it) added when absent.
fn environment(env: &[String], user: &ExecUser) -> Vec<String> {
    let mut out = env.to_vec();
    let has = |key: &str| {
        env.iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
    };
    if !has("PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has("HOME") {
        out.push(format!("HOME={}", user.home));
    }
    out
}

/// BuildKit's default `/etc/hosts`, then the `--add-host` entries, one line each as BuildKit
/// writes them (`<ip>\t<host>`).
fn hosts_file(hostname: &str, extra: &[HostEntry]) -> String {
    let mut out =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for e in extra {
        out.push_str(&format!("{}\t{}\n", e.ip, e.host));
    }
    out
}

/// Limits this plugin can apply, with soft ≤ hard (setrlimit's rule, checked here so the
/// message names the limit instead of a bare EINVAL from the child).
fn check_ulimits(ulimits: &[Ulimit]) -> Result<(), Error> {
    for u in ulimits {
        if u.resource == UlimitResource::Unknown {
            return Err(Error::Unsupported(
                "a --ulimit names a resource this exec plugin does not know; update it".into(),
            ));
        }
        if u.soft > u.hard {
            return Err(Error::InvalidInput(format!(
                "ulimit {}: the soft limit {} is above the hard limit {}",
                u.resource.name(),
                u.soft,
                u.hard
            )));
        }
    }
    Ok(())
}

/// The host's resolv.conf, or public resolvers (BuildKit's fallback) when it has none.
fn host_resolv_conf() -> Result<String, Error> {
    match fs::read_to_string(HOST_RESOLV_CONF) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok("nameserver 8.8.8.8\nnameserver 8.8.4.4\n".to_owned())
        }
        Err(e) => Err(Error::io("cannot read", HOST_RESOLV_CONF, e)),
    }
}

fn write_file(dir: &Path, name: &str, content: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    let mut f = fs::File::create(&path).map_err(|e| Error::io("cannot write", &path, e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io("cannot write", &path, e))?;
    // Readable by any user the step runs as.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("cannot chmod", &path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_defaults() {
        let u = ExecUser {
            uid: 0,
            gid: 0,
            sgids: vec![],
            home: "/root".into(),
        };
        assert_eq!(
            environment(&["A=1".into()], &u),
            vec![
                "A=1".to_owned(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/root".into()
            ]
        );
        assert_eq!(
            environment(&["PATH=/x".into(), "HOME=/h".into()], &u),
            vec!["PATH=/x".to_owned(), "HOME=/h".into()]
        );
    }

    #[test]
    fn hosts_file_appends_extra_hosts() {
        let extra = [
            HostEntry {
                host: "myhost".into(),
                ip: "10.1.2.3".into(),
            },
            HostEntry {
                host: "v6".into(),
                ip: "fd00::1".into(),
            },
        ];
        let text = hosts_file("box", &extra);
        assert!(text.starts_with("127.0.0.1\tlocalhost box\n"));
        assert!(text.ends_with("10.1.2.3\tmyhost\nfd00::1\tv6\n"));
    }

    #[test]
    fn ulimits_are_checked_and_replace_defaults() {
        let u = |resource, soft, hard| Ulimit {
            resource,
            soft,
            hard,
        };
        assert!(check_ulimits(&[u(UlimitResource::Nofile, 1024, 2048)]).is_ok());
        assert!(check_ulimits(&[u(UlimitResource::Nofile, 4096, 2048)]).is_err());
        assert!(check_ulimits(&[u(UlimitResource::Unknown, 1, 1)]).is_err());
        let got = crate::policy::rlimits(&[
            u(UlimitResource::Nproc, 10, 20),
            u(UlimitResource::Nofile, 1024, 2048),
        ]);
        assert_eq!(
            got,
            vec![
                u(UlimitResource::Nproc, 10, 20),
                u(UlimitResource::Nofile, 1024, 2048)
            ]
        );
        assert_eq!(crate::policy::rlimits(&[]).len(), 1);
    }

    #[test]
    fn graph_mounts_must_be_prepared_unless_optional() {
        let mount = |dest: &str, kind| Mount {
            input: None,
            selector: String::new(),
            dest: dest.into(),
            readonly: false,
            kind,
        };
        let secret = |required| MountKind::Secret {
            id: "s".into(),
            required,
            mode: 0o400,
            uid: 0,
            gid: 0,
            env: None,
        };
        let op = |mounts| ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: NetworkMode::Default,
            security: SecurityMode::Sandbox,
            mounts,
            proxy_env: Vec::new(),
            devices: Vec::new(),
        };
        let tmpfs = PreparedMount {
            dest: "/tmp/".into(),
            kind: PreparedMountKind::Tmpfs { size: None },
            readonly: false,
        };
        let graph = op(vec![
            mount("/", MountKind::Bind),
            mount("/tmp", MountKind::Tmpfs { size: None }),
            mount("/run/secrets/s", secret(false)),
        ]);
        assert!(check_mounts(&graph, std::slice::from_ref(&tmpfs)).is_ok());
        assert!(check_mounts(&graph, &[]).is_err());
        let graph = op(vec![mount("/run/secrets/s", secret(true))]);
        assert!(check_mounts(&graph, &[]).is_err());
    }
}
