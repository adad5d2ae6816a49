//! RUN: an exec vertex. The engine prepares the root filesystem (a writable view) and every
//! mount (bind views, persistent cache directories, secrets on a private tmpfs, tmpfs), hands
//! them to the `exec` primitive plugin, and commits what the process changed as a new layer.
//! Secrets never touch the store: they live on a tmpfs for the duration of the step only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use kiln_graph::{CacheSharing, ExecOp, MountKind, Op};
use kiln_plugin_host::{HostServices, PluginRegistry};
use kiln_plugin_sdk::proto::{
    HostEntry, LogLevel, PreparedMount, PreparedMountKind, PrimitiveRequest, Runtime, Ulimit,
};
use kiln_snapshot::{ReadView, Snapshot, Store, WriteView};
use kiln_solver::CancellationToken;
use kiln_types::Digest;

use crate::{rootpath, Error};

/// Where a `--secret` comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (`src=`).
    File(PathBuf),
    /// An environment variable of the kiln process (`env=`).
    Env(String),
}

impl SecretSource {
    fn read(&self, id: &str) -> Result<Vec<u8>, Error> {
        match self {
            SecretSource::File(p) => std::fs::read(p).map_err(|e| Error::Secret {
                id: id.to_owned(),
                message: format!("read {}: {e}", p.display()),
            }),
            SecretSource::Env(v) => std::env::var_os(v)
                .map(|s| s.into_encoded_bytes())
                .ok_or_else(|| Error::Secret {
                    id: id.to_owned(),
                    message: format!("environment variable {v} is not set"),
                }),
        }
    }
}

/// Where an `--ssh` id comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshSource {
    /// An ssh-agent socket on the host (`--ssh default`, `--ssh ID=SOCKET`).
    Agent(PathBuf),
}

/// The per-step options of the build's RUN steps (`--add-host`, `--shm-size`, `--ulimit`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Entries added to every step's `/etc/hosts`.
    pub extra_hosts: Vec<HostEntry>,
    /// Size of `/dev/shm` in bytes (`None`: the exec plugin's default, 64 MiB).
    pub shm_size: Option<u64>,
    /// Resource limits of every step's process.
    pub ulimits: Vec<Ulimit>,
}

impl RunOptions {
    fn is_default(&self) -> bool {
        self == &RunOptions::default()
    }
}

/// The exec plugin protocol that understands [`RunOptions`].
const RUN_OPTIONS_PROTOCOL: u32 = 2;

/// Which runtime runs RUN steps (`--executor`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecRuntime {
    /// kiln's own sandbox (the `exec` plugin's embedded runtime).
    #[default]
    Embedded,
    /// runc with an OCI bundle.
    Runc,
}

/// Persistent cache mount directories, `$KILN_ROOT/cache-mounts/<sha256 of id>`, with the
/// sharing modes of BuildKit: shared (concurrent users share), locked (they wait), private
/// (a concurrent user gets its own directory).
pub(crate) struct CacheMounts {
    root: PathBuf,
    in_use: Mutex<HashMap<PathBuf, usize>>,
    freed: Condvar,
}

pub(crate) struct CacheLease<'a> {
    owner: &'a CacheMounts,
    dir: PathBuf,
    /// The directory was made by this lease (empty: a seed may fill it).
    fresh: bool,
}

impl Drop for CacheLease<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.owner.in_use.lock() {
            if let Some(n) = m.get_mut(&self.dir) {
                *n = n.saturating_sub(1);
            }
        }
        self.owner.freed.notify_all();
    }
}

impl CacheMounts {
    pub(crate) fn new(root: PathBuf) -> Self {
        CacheMounts {
            root,
            in_use: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
        }
    }

    fn acquire(
        &self,
        id: &str,
        sharing: CacheSharing,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<CacheLease<'_>, Error> {
        let base = self.root.join(Digest::of(id.as_bytes()).hex());
        let poisoned = || Error::Unsupported("cache mount bookkeeping poisoned".into());
        let mut in_use = self.in_use.lock().map_err(|_| poisoned())?;
        let dir = match sharing {
            CacheSharing::Shared => base,
            CacheSharing::Locked => {
                while in_use.get(&base).copied().unwrap_or(0) > 0 {
                    in_use = self.freed.wait(in_use).map_err(|_| poisoned())?;
                }
                base
            }
            CacheSharing::Private => {
                let mut n = 0;
                loop {
                    let d = if n == 0 {
                        base.clone()
                    } else {
                        base.with_extension(format!("p{n}"))
                    };
                    if in_use.get(&d).copied().unwrap_or(0) == 0 {
                        break d;
                    }
                    n += 1;
                }
            }
        };
        *in_use.entry(dir.clone()).or_insert(0) += 1;
        drop(in_use);
        let fresh = !dir.is_dir();
        let lease = CacheLease {
            owner: self,
            dir,
            fresh,
        };
        if fresh {
            std::fs::create_dir_all(&lease.dir)
                .map_err(|e| Error::io("create cache mount", &lease.dir, e))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&lease.dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("chmod cache mount", &lease.dir, e))?;
            std::os::unix::fs::chown(&lease.dir, Some(uid), Some(gid))
                .map_err(|e| Error::io("chown cache mount", &lease.dir, e))?;
        }
        Ok(lease)
    }
}

/// A private tmpfs holding one step's secrets, unmounted and removed when dropped.
struct SecretDir {
    dir: PathBuf,
    mounted: bool,
}

impl SecretDir {
    fn new() -> Result<Self, Error> {
        let dir = std::env::temp_dir().join(format!(
            "kiln-secrets-{}",
            Digest::of(
                format!("{:?}{}", std::time::SystemTime::now(), std::process::id()).as_bytes()
            )
            .short()
        ));
        std::fs::create_dir(&dir).map_err(|e| Error::io("create secret dir", &dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        // A tmpfs keeps secret bytes off every disk; without the privilege to mount one the
        // directory is still private to root and outside the store.
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700,size=4m"),
        )
        .is_ok();
        Ok(SecretDir { dir, mounted })
    }

    fn write(
        &self,
        id: &str,
        bytes: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<PathBuf, Error> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join(Digest::of(id.as_bytes()).short());
        std::fs::write(&p, bytes).map_err(|e| Error::io("write secret", &p, e))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod secret", &p, e))?;
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown secret", &p, e))?;
        Ok(p)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the exec primitive may ask of the host during a step.
struct StepServices<'a> {
    log: &'a (dyn Fn(String) + Send + Sync),
    cancel: &'a CancellationToken,
}

impl HostServices for StepServices<'_> {
    fn log(&self, level: LogLevel, message: &str) {
        let _ = level;
        (self.log)(message.to_owned());
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Everything a RUN step needs from the build.
pub(crate) struct ExecEnv<'a> {
    pub store: &'a Store,
    pub plugins: &'a PluginRegistry,
    pub cache_mounts: &'a CacheMounts,
    pub secrets: &'a BTreeMap<String, SecretSource>,
    pub ssh: &'a BTreeMap<String, SshSource>,
    pub options: &'a RunOptions,
    pub runtime: ExecRuntime,
    pub cancel: &'a CancellationToken,
    pub log: &'a (dyn Fn(String) + Send + Sync),
}

/// What a step holds while it runs: released (views unmounted, leases returned, secrets
/// wiped) when dropped, on every path out.
#[derive(Default)]
struct Held<'a> {
    reads: Vec<ReadView>,
    writes: Vec<WriteView>,
    leases: Vec<CacheLease<'a>>,
    secrets: Vec<SecretDir>,
}

/// The exec op as the plugin sees it: secret environment variables added, and secret mounts
/// that are environment-only (no destination) left out, since nothing is mounted for them.
fn plugin_op(op: &ExecOp, secret_env: Vec<String>) -> ExecOp {
    let mut op = op.clone();
    op.env.extend(secret_env);
    // Proxy variables the step does not set itself (they are kept out of the cache key).
    for kv in std::mem::take(&mut op.proxy_env) {
        let key = kv
            .split_once('=')
            .map_or(kv.as_str(), |(k, _)| k)
            .to_owned();
        if !op
            .env
            .iter()
            .any(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key)
        {
            op.env.push(kv);
        }
    }
    op.mounts
        .retain(|m| !(matches!(m.kind, MountKind::Secret { .. }) && m.dest.is_empty()));
    op
}

pub(crate) fn run_exec(
    env: &ExecEnv<'_>,
    op: &ExecOp,
    inputs: &[Snapshot],
) -> Result<Snapshot, Error> {
    let snap = |i: Option<u32>| {
        i.and_then(|i| inputs.get(i as usize))
            .cloned()
            .unwrap_or_default()
    };
    let root_snap = snap(
        op.mounts
            .iter()
            .find(|m| m.dest == "/")
            .and_then(|m| m.input),
    );
    let root = WriteView::new(env.store, &root_snap)?;
    let mut held = Held::default();
    let mut prepared = Vec::new();
    let mut secret_env: Vec<String> = Vec::new();
    for m in op.mounts.iter().filter(|m| m.dest != "/") {
        let kind = match &m.kind {
            MountKind::Bind => {
                let s = snap(m.input);
                let base: PathBuf = if m.readonly {
                    let v = ReadView::new(env.store, &s)?;
                    let p = v.path().to_owned();
                    held.reads.push(v);
                    p
                } else {
                    // A writable bind mount's changes are thrown away, as in BuildKit.
                    let w = WriteView::new(env.store, &s)?;
                    let p = w.path().to_owned();
                    held.writes.push(w);
                    p
                };
                let source = rootpath::resolve(&base, &m.selector, true)
                    .map_err(|e| Error::io("resolve mount source", Path::new(&m.selector), e))?;
                PreparedMountKind::Bind {
                    source: source.display().to_string(),
                }
            }
            MountKind::Cache {
                id,
                sharing,
                mode,
                uid,
                gid,
            } => {
                let lease = env.cache_mounts.acquire(id, *sharing, *mode, *uid, *gid)?;
                if lease.fresh && m.input.is_some() {
                    // `from=`: a new cache directory starts as a copy of that filesystem.
                    let view = ReadView::new(env.store, &snap(m.input))?;
                    let mut copy = kiln_graph::CopyAction::new(Some(0), &m.selector, "/");
                    copy.allow_wildcard = false;
                    crate::fileop::apply(
                        &lease.dir,
                        &[kiln_graph::FileAction::Copy(copy)],
                        &[view.path().to_owned()],
                    )
                    .map_err(|e| Error::Unsupported(format!("seeding cache mount {id}: {e}")))?;
                }
                let source = lease.dir.display().to_string();
                held.leases.push(lease);
                PreparedMountKind::Bind { source }
            }
            MountKind::Tmpfs { size } => PreparedMountKind::Tmpfs { size: *size },
            MountKind::Secret {
                id,
                required,
                mode,
                uid,
                gid,
                env: as_env,
            } => match env.secrets.get(id) {
                Some(src) => {
                    let bytes = src.read(id)?;
                    if let Some(name) = as_env {
                        // Only the process sees it: the graph (and so the cache key) never does.
                        secret_env.push(format!("{name}={}", String::from_utf8_lossy(&bytes)));
                    }
                    if m.dest.is_empty() {
                        continue;
                    }
                    let dir = SecretDir::new()?;
                    let p = dir.write(id, &bytes, *mode, *uid, *gid)?;
                    held.secrets.push(dir);
                    PreparedMountKind::Bind {
                        source: p.display().to_string(),
                    }
                }
                None if *required => {
                    return Err(Error::Secret {
                        id: id.clone(),
                        message: format!(
                            "secret {id} not provided: pass --secret id={id},src=FILE"
                        ),
                    })
                }
                None => continue,
            },
            // The agent's socket itself is bound at the target: the process talks to the real
            // agent, and no key ever enters the container (BuildKit proxies it instead; a
            // bind gives the same protocol without a forwarding thread per step).
            MountKind::Ssh { id, required } => match env.ssh.get(id) {
                Some(SshSource::Agent(sock)) => {
                    check_socket(id, sock)?;
                    PreparedMountKind::Bind {
                        source: sock.display().to_string(),
                    }
                }
                None if *required => {
                    return Err(Error::Ssh {
                        id: id.clone(),
                        message: format!(
                            "no SSH key {id:?} forwarded from the client: pass --ssh {id} \
                             (the agent at $SSH_AUTH_SOCK) or --ssh {id}=/path/to/agent.sock"
                        ),
                    })
                }
                None => continue,
            },
        };
        prepared.push(PreparedMount {
            dest: m.dest.clone(),
            kind,
            // connect(2) needs write access to a socket, so an agent mount stays writable.
            readonly: match m.kind {
                MountKind::Secret { .. } => true,
                MountKind::Ssh { .. } => false,
                _ => m.readonly,
            },
        });
    }
    let plugin = env.plugins.primitive("exec")?;
    let protocol = plugin.manifest().protocol_version;
    if protocol < RUN_OPTIONS_PROTOCOL && !env.options.is_default() {
        return Err(Error::Unsupported(format!(
            "the exec plugin at {} speaks protocol {protocol}, which has no --add-host, \
             --shm-size or --ulimit; install the exec plugin of this kiln",
            plugin.path().display()
        )));
    }
    let mut op = op.clone();
    ssh_auth_sock(&mut op);
    let req = PrimitiveRequest {
        op: Op::Exec(plugin_op(&op, secret_env)),
        inputs: Vec::new(),
        output: root.path().display().to_string(),
        mounts: prepared,
        runtime: match env.runtime {
            ExecRuntime::Embedded => Runtime::Embedded,
            ExecRuntime::Runc => Runtime::Runc,
        },
        hostname: None,
        etc_hosts: None,
        resolv_conf: None,
        extra_hosts: env.options.extra_hosts.clone(),
        shm_size: env.options.shm_size,
        ulimits: env.options.ulimits.clone(),
    };
    let services = StepServices {
        log: env.log,
        cancel: env.cancel,
    };
    let resp = plugin.primitive_execute(&req, &services)?;
    drop(held);
    if let Some(code) = resp.exit_code.filter(|c| *c != 0) {
        return Err(Error::Process {
            command: op.args.join(" "),
            code,
        });
    }
    let layer = root.commit()?;
    let mut layers = root_snap.layers;
    layers.push(layer);
    Ok(Snapshot { layers })
}

/// BuildKit's rule (llb `ExecState`): a step with SSH mounts gets `SSH_AUTH_SOCK` pointing at
/// the first one, unless its environment already sets it.
fn ssh_auth_sock(op: &mut ExecOp) {
    let first = op.mounts.iter().find_map(|m| match m.kind {
        MountKind::Ssh { .. } => Some(m.dest.clone()),
        _ => None,
    });
    let set = op.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="));
    if let (Some(dest), false) = (first, set) {
        op.env.push(format!("SSH_AUTH_SOCK={dest}"));
    }
}

/// The agent socket of `--ssh id=PATH` must be one, now: a key file or a stale path would
/// otherwise surface as a confusing failure inside the step.
fn check_socket(id: &str, sock: &Path) -> Result<(), Error> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(sock) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(Error::Ssh {
            id: id.to_owned(),
            message: format!("{} is not an ssh-agent socket", sock.display()),
        }),
        Err(e) => Err(Error::Ssh {
            id: id.to_owned(),
            message: format!(
                "ssh-agent socket {}: {e} (is the agent still running?)",
                sock.display()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn ssh_auth_sock_points_at_the_first_ssh_mount() {
        let mount = |dest: &str, kind| kiln_graph::Mount {
            input: None,
            selector: String::new(),
            dest: dest.into(),
            readonly: true,
            kind,
        };
        let ssh = |id: &str| MountKind::Ssh {
            id: id.into(),
            required: false,
        };
        let mut op = ExecOp {
            args: vec!["true".into()],
            env: vec!["A=1".into()],
            cwd: "/".into(),
            user: String::new(),
            network: Default::default(),
            security: Default::default(),
            mounts: vec![
                mount("/", MountKind::Bind),
                mount("/run/buildkit/ssh_agent.1", ssh("default")),
                mount("/other", ssh("other")),
            ],
            proxy_env: vec![],
        };
        ssh_auth_sock(&mut op);
        assert_eq!(
            op.env,
            vec!["A=1", "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.1"]
        );
        // Already set (by ENV or a second pass): left alone.
        ssh_auth_sock(&mut op);
        assert_eq!(op.env.len(), 2);
        op.mounts.truncate(1);
        op.env.truncate(1);
        ssh_auth_sock(&mut op);
        assert_eq!(op.env, vec!["A=1"]);
    }

    #[test]
    fn ssh_source_must_be_a_socket() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("id_ed25519");
        std::fs::write(&key, "not a socket").unwrap();
        let e = check_socket("default", &key).unwrap_err().to_string();
        assert!(e.contains("not an ssh-agent socket"), "{e}");
        let sock = t.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(check_socket("default", &sock).is_ok());
        assert!(check_socket("default", &t.path().join("gone")).is_err());
    }

    #[test]
    fn cache_mount_sharing_modes() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        // shared: concurrent users get the same directory.
        let a = cm.acquire("go", CacheSharing::Shared, 0o755, 0, 0).unwrap();
        let b = cm.acquire("go", CacheSharing::Shared, 0o755, 0, 0).unwrap();
        assert_eq!(a.dir, b.dir);
        drop((a, b));
        // private: a second concurrent user gets its own directory; the first one is reused later.
        let p1 = cm
            .acquire("apt", CacheSharing::Private, 0o700, 0, 0)
            .unwrap();
        let p2 = cm
            .acquire("apt", CacheSharing::Private, 0o700, 0, 0)
            .unwrap();
        assert_ne!(p1.dir, p2.dir);
        let first = p1.dir.clone();
        drop((p1, p2));
        assert_eq!(
            cm.acquire("apt", CacheSharing::Private, 0o700, 0, 0)
                .unwrap()
                .dir,
            first
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&first).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        // locked: the second user waits until the first is done.
        let held = cm
            .acquire("npm", CacheSharing::Locked, 0o755, 0, 0)
            .unwrap();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let l = cm
                    .acquire("npm", CacheSharing::Locked, 0o755, 0, 0)
                    .unwrap();
                assert!(
                    released.load(Ordering::SeqCst),
                    "got the lock while it was held"
                );
                l.dir.clone()
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            released.store(true, Ordering::SeqCst);
            drop(held);
            assert!(waiter.join().unwrap().ends_with(Digest::of(b"npm").hex()));
        });
    }
}
