//! RUN: an exec vertex. The engine prepares the root filesystem (a writable view) and every
//! mount (bind views, persistent cache directories, secrets on a private tmpfs, tmpfs), hands
//! them to the `exec` primitive plugin, and commits what the process changed as a new layer.
//! Secrets never touch the store: they live on a tmpfs for the duration of the step only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph::{CacheSharing, ExecOp, MountKind, Op};
use kiln_plugin_host::{HostServices, PluginRegistry};
use kiln_plugin_sdk::proto::{
    HostEntry, LogLevel, PreparedMount, PreparedMountKind, PrimitiveRequest, Runtime, StepLimits,
    Ulimit,
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
    /// Asked of a provider when a RUN step mounts the secret, and only then: a daemon's
    /// session fetches it from its client, so the daemon never keeps it (as BuildKit's
    /// secrets session).
    Provider(ProvidedSecret),
}

/// Serves secrets on request (a daemon's client, over its session).
pub trait SecretProvider: Send + Sync {
    /// The bytes of secret `id`, or why they cannot be had (the engine's error names `id`).
    fn secret(&self, id: &str) -> Result<Vec<u8>, String>;
}

/// A [`SecretProvider`] as a [`SecretSource`] holds it: clones share the provider, and two are
/// equal when they are the same provider.
#[derive(Clone)]
pub struct ProvidedSecret(pub Arc<dyn SecretProvider>);

impl std::fmt::Debug for ProvidedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The provider's secrets are never printed; nor is there anything else to show.
        f.write_str("ProvidedSecret(..)")
    }
}

impl PartialEq for ProvidedSecret {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ProvidedSecret {}

impl SecretSource {
    /// A source that asks `provider` when a step needs the secret.
    pub fn provider(provider: Arc<dyn SecretProvider>) -> Self {
        SecretSource::Provider(ProvidedSecret(provider))
    }

    fn read(&self, id: &str) -> Result<Vec<u8>, Error> {
        match self {
            SecretSource::Provider(ProvidedSecret(p)) => {
                p.secret(id).map_err(|message| Error::Secret {
                    id: id.to_owned(),
                    message,
                })
            }
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
    /// Private key files (`--ssh ID=KEY[,KEY]`), loaded into an agent kiln runs for the
    /// build.
    Keys(Vec<PathBuf>),
}

/// The per-step options of the build's RUN steps (`--add-host`, `--shm-size`, `--ulimit`, and
/// the cgroup limits `--memory`, `--cpu-quota`, `--pids-limit`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Entries added to every step's `/etc/hosts`.
    pub extra_hosts: Vec<HostEntry>,
    /// Size of `/dev/shm` in bytes (`None`: the exec plugin's default, 64 MiB).
    pub shm_size: Option<u64>,
    /// Resource limits of every step's process.
    pub ulimits: Vec<Ulimit>,
    /// The cgroup limits of every step (memory, CPU quota, pids); none when all are `None`.
    pub limits: StepLimits,
}

impl RunOptions {
    /// Refuses options the exec plugin of `protocol` would silently ignore (`plugin` names it
    /// in the message): a build asking for a limit must get it or fail, never run unlimited.
    fn check_protocol(&self, protocol: u32, plugin: &Path) -> Result<(), Error> {
        let basic = RunOptions {
            limits: StepLimits::default(),
            ..self.clone()
        };
        if protocol < RUN_OPTIONS_PROTOCOL && basic != RunOptions::default() {
            return Err(Error::Unsupported(format!(
                "the exec plugin at {} speaks protocol {protocol}, which has no --add-host, \
                 --shm-size or --ulimit; install the exec plugin of this kiln",
                plugin.display()
            )));
        }
        if protocol < LIMITS_PROTOCOL && self.limits.any() {
            return Err(Error::Unsupported(format!(
                "the exec plugin at {} speaks protocol {protocol}, which has no --memory, \
                 --cpu-quota or --pids-limit (it would run the steps unlimited); install the \
                 exec plugin of this kiln",
                plugin.display()
            )));
        }
        Ok(())
    }
}

/// The exec plugin protocol that understands [`RunOptions`] but its `limits`.
const RUN_OPTIONS_PROTOCOL: u32 = 2;
/// The exec plugin protocol that understands [`RunOptions::limits`].
const LIMITS_PROTOCOL: u32 = 4;

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
/// (a concurrent user gets its own directory, `<sha256 of id>.p<n>`).
///
/// kiln has no daemon: two `kiln build` processes on one store are as concurrent as two steps
/// of one build. So the modes are kept with `flock(2)` on a lock file beside each directory
/// (`<dir>.lock`), not with bookkeeping inside one process. A flock belongs to an open file
/// description and every acquisition opens the lock file anew, so two steps of one build
/// exclude each other exactly as two processes do; the kernel drops the lock of a build that
/// dies, so a killed build never leaves a cache mount locked.
pub(crate) struct CacheMounts {
    root: PathBuf,
    /// The cache mounts of this build's `--cache-from` (remote_cache::mounts): a directory
    /// that is new or empty is filled from them.
    imports: Option<Arc<dyn MountImports>>,
}

/// Contents a cache directory may be restored from.
pub(crate) trait MountImports: Send + Sync {
    /// Whether `id` has contents to restore that this build has not taken yet.
    fn pending(&self, id: &str) -> bool;
    /// Takes the contents of `id`, once per build: a restore that failed is not tried again
    /// by the next step, and a directory the build emptied itself is not refilled.
    fn take(&self, id: &str) -> Option<Restorable>;
    /// Records a warning for the build's summary.
    fn warn(&self, message: String);
}

/// The imported contents of one cache mount.
pub(crate) struct Restorable {
    /// The directory as it was exported (mode, owner).
    pub new_dir: NewCacheDir,
    /// Where it comes from, for messages.
    pub origin: String,
    /// Fills the new directory (checked, unpacked with every check of a pulled layer).
    pub fill: Fill,
}

/// How a [`Restorable`] fills a directory; the error says why it could not.
pub(crate) type Fill = Box<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

/// How a new cache directory is made: `mode`, `uid`, `gid` of the mount options.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NewCacheDir {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Fills a new cache directory before anyone can see it (`from=`, `source=`).
pub(crate) type Seed<'s> = &'s dyn Fn(&Path) -> Result<(), Error>;

/// What a step waiting for a cache mount listens to.
pub(crate) struct Waiting<'w> {
    /// A cancelled build stops waiting.
    pub cancel: &'w CancellationToken,
    /// Told once when the mount is busy, so that a slow step says why it is slow.
    pub log: &'w (dyn Fn(String) + Send + Sync),
}

/// One use of a cache mount directory: its lock is held until the lease is dropped.
pub(crate) struct CacheLease {
    dir: PathBuf,
    /// The flock (shared for `sharing=shared`, exclusive otherwise); closing the file on drop
    /// releases it.
    _lock: std::fs::File,
}

impl CacheLease {
    /// The directory held.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockKind {
    Shared,
    Exclusive,
}

/// How often a step blocked on a cache mount lock looks whether its build was cancelled.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl CacheMounts {
    pub(crate) fn new(root: PathBuf) -> Self {
        CacheMounts {
            root,
            imports: None,
        }
    }

    /// The cache mounts of the store at `store_root` (`<root>/cache-mounts`).
    pub(crate) fn of_store(store_root: &Path) -> Self {
        CacheMounts::new(store_root.join("cache-mounts"))
    }

    /// These directories for one build, whose new or empty ones are restored from `imports`.
    pub(crate) fn with_imports(&self, imports: Arc<dyn MountImports>) -> Self {
        CacheMounts {
            root: self.root.clone(),
            imports: Some(imports),
        }
    }

    /// The directory of `id` for `sharing=shared|locked` (the first instance for `private`).
    pub(crate) fn dir_of(&self, id: &str) -> PathBuf {
        self.root.join(Digest::of(id.as_bytes()).hex())
    }

    /// Whether `dir` must be made, or filled from an import, before it is used: it does not
    /// exist, or it is empty and the build imported contents for `id`.
    fn wants_fill(&self, id: &str, dir: &Path) -> bool {
        !dir.is_dir() || (self.imports.as_ref().is_some_and(|i| i.pending(id)) && is_empty_dir(dir))
    }

    /// Makes (or fills) the directory of `id` under its exclusive lock. An imported content
    /// wins over `from=` (the cache it comes from started from that seed too); a local
    /// directory that is not empty wins over the import (it is this store's newer state).
    /// An import that cannot be restored is a warning, and the directory starts as a new one.
    fn fill(
        &self,
        id: &str,
        dir: &Path,
        new_dir: NewCacheDir,
        seed: Option<Seed<'_>>,
        waiting: &Waiting<'_>,
    ) -> Result<(), Error> {
        if !self.wants_fill(id, dir) {
            return Ok(());
        }
        let Some((imports, found)) = self
            .imports
            .as_ref()
            .and_then(|i| i.take(id).map(|r| (i, r)))
        else {
            if !dir.is_dir() {
                create_cache_dir(dir, new_dir, seed)?;
            }
            return Ok(());
        };
        if dir.is_dir() {
            // Empty (wants_fill): replaced by the restored one.
            std::fs::remove_dir(dir).map_err(|e| Error::io("replace empty cache mount", dir, e))?;
        }
        let restore =
            |tmp: &Path| -> Result<(), Error> { (found.fill)(tmp).map_err(Error::Unsupported) };
        match create_cache_dir(dir, found.new_dir, Some(&restore)) {
            Ok(()) => {
                (waiting.log)(format!("restored cache mount {id:?} from {}", found.origin));
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "cache mount {id:?} from {} could not be restored, it starts empty: {e}",
                    found.origin
                );
                (waiting.log)(format!("WARNING: {message}"));
                imports.warn(message);
                create_cache_dir(dir, new_dir, seed)
            }
        }
    }

    /// Holds the lock of `id`'s directory shared, so that a step using it `locked` does not
    /// write while it is read (a `shared` user may: it shares, as in BuildKit). Waits for a
    /// step holding it locked to end. `None` when there is no such directory.
    pub(crate) fn read(&self, id: &str) -> Result<Option<CacheLease>, Error> {
        let dir = self.dir_of(id);
        let mut lock_path = dir.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        if !dir.is_dir() {
            return Ok(None);
        }
        let lock = open_lock(&lock_path)?;
        lock.lock_shared()
            .map_err(|e| Error::io("lock cache mount", &lock_path, e))?;
        Ok(dir.is_dir().then_some(CacheLease { dir, _lock: lock }))
    }

    /// Leases the cache directory of `id`, creating (and seeding) it when it does not exist.
    /// Blocks while another step or build holds it `locked`; a cancelled build stops waiting.
    pub(crate) fn acquire(
        &self,
        id: &str,
        sharing: CacheSharing,
        new_dir: NewCacheDir,
        seed: Option<Seed<'_>>,
        waiting: &Waiting<'_>,
    ) -> Result<CacheLease, Error> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io("create cache mount directory", &self.root, e))?;
        let base = self.dir_of(id);
        let lock_path = |dir: &Path| {
            let mut name = dir.as_os_str().to_owned();
            name.push(".lock");
            PathBuf::from(name)
        };
        let (dir, lock) = match sharing {
            CacheSharing::Shared => {
                let lp = lock_path(&base);
                if self.wants_fill(id, &base) {
                    // Made under the exclusive lock, so that two sharers never both seed it.
                    let _ex = wait_lock(&lp, LockKind::Exclusive, id, waiting)?;
                    self.fill(id, &base, new_dir, seed, waiting)?;
                }
                let lock = wait_lock(&lp, LockKind::Shared, id, waiting)?;
                (base, lock)
            }
            CacheSharing::Locked => {
                let lock = wait_lock(&lock_path(&base), LockKind::Exclusive, id, waiting)?;
                (base, lock)
            }
            // BuildKit: the first instance nobody holds, else a new one; never a wait.
            CacheSharing::Private => {
                let mut n = 0u64;
                loop {
                    let d = if n == 0 {
                        base.clone()
                    } else {
                        let mut name = base.as_os_str().to_owned();
                        name.push(format!(".p{n}"));
                        PathBuf::from(name)
                    };
                    let lp = lock_path(&d);
                    let file = open_lock(&lp)?;
                    match file.try_lock() {
                        Ok(()) => break (d, file),
                        Err(std::fs::TryLockError::WouldBlock) => n += 1,
                        Err(std::fs::TryLockError::Error(e)) => {
                            return Err(Error::io("lock cache mount", &lp, e))
                        }
                    }
                }
            }
        };
        // Under an exclusive lock for locked and private: nobody else creates this directory.
        if sharing != CacheSharing::Shared {
            self.fill(id, &dir, new_dir, seed, waiting)?;
        } else if !dir.is_dir() {
            // Collected between the two locks: made again, as new.
            create_cache_dir(&dir, new_dir, seed)?;
        }
        // The lock file's mtime is the mount's last use, for GC (gc.rs).
        let _ = lock.set_modified(std::time::SystemTime::now());
        Ok(CacheLease { dir, _lock: lock })
    }
}

fn open_lock(path: &Path) -> Result<std::fs::File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("open cache mount lock", path, e))
}

/// Takes a flock on `path`, waiting as long as another holder keeps it, unless the build is
/// cancelled first.
fn wait_lock(
    path: &Path,
    kind: LockKind,
    id: &str,
    waiting: &Waiting<'_>,
) -> Result<std::fs::File, Error> {
    let file = open_lock(path)?;
    let tried = match kind {
        LockKind::Shared => file.try_lock_shared(),
        LockKind::Exclusive => file.try_lock(),
    };
    match tried {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock cache mount", path, e)),
    }
    (waiting.log)(format!(
        "waiting for cache mount {id:?}: another step or build holds it"
    ));
    // flock(2) cannot be interrupted by a cancellation token: a thread of its own waits, and
    // this one watches the token. A thread whose waiter gave up drops the file once it gets
    // the lock, which releases it.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kiln-cache-lock".into())
        .spawn(move || {
            let r = match kind {
                LockKind::Shared => file.lock_shared(),
                LockKind::Exclusive => file.lock(),
            }
            .map(|()| file);
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io("start a thread to wait for cache mount lock", path, e))?;
    loop {
        match rx.recv_timeout(CANCEL_POLL) {
            Ok(r) => return r.map_err(|e| Error::io("lock cache mount", path, e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if waiting.cancel.is_cancelled() {
                    return Err(Error::io(
                        "wait for cache mount lock",
                        path,
                        std::io::Error::new(std::io::ErrorKind::Interrupted, "build cancelled"),
                    ));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::io(
                    "wait for cache mount lock",
                    path,
                    std::io::Error::other("the waiting thread ended without an answer"),
                ))
            }
        }
    }
}

/// Makes a cache directory beside its final place (mode, owner, seed) and renames it in, so
/// that a build killed half-way never leaves a half-seeded directory that looks complete.
/// The caller holds the directory's exclusive lock.
fn create_cache_dir(dir: &Path, new_dir: NewCacheDir, seed: Option<Seed<'_>>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let mut name = std::ffi::OsString::from(".");
    name.push(dir.file_name().unwrap_or_default());
    name.push(format!(".new-{}", std::process::id()));
    let tmp = dir.with_file_name(name);
    // A leftover of a killed build with the same pid.
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::io("remove stale cache mount", &tmp, e))?;
    }
    let made = (|| {
        std::fs::create_dir(&tmp).map_err(|e| Error::io("create cache mount", &tmp, e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(new_dir.mode))
            .map_err(|e| Error::io("chmod cache mount", &tmp, e))?;
        std::os::unix::fs::chown(&tmp, Some(new_dir.uid), Some(new_dir.gid))
            .map_err(|e| Error::io("chown cache mount", &tmp, e))?;
        if let Some(seed) = seed {
            seed(&tmp)?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| Error::io("create cache mount", dir, e))
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

/// A private tmpfs holding one step's secrets, unmounted and removed when dropped.
struct SecretDir {
    dir: PathBuf,
}

/// Mounts the private tmpfs that holds a step's secrets at `dir`.
fn mount_secret_tmpfs(dir: &Path) -> nix::Result<()> {
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700,size=4m"),
    )
}

impl SecretDir {
    fn new(id: &str) -> Result<Self, Error> {
        Self::new_in(&std::env::temp_dir(), id)
    }

    /// A secret directory under `base` (the system's temporary directory outside tests).
    fn new_in(base: &Path, id: &str) -> Result<Self, Error> {
        use std::os::unix::fs::DirBuilderExt;
        // Unique among the steps of this process (the counter) and other processes (the pid).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!(
            "kiln-secrets-{}",
            Digest::of(
                format!(
                    "{:?}{}.{n}",
                    std::time::SystemTime::now(),
                    std::process::id()
                )
                .as_bytes()
            )
            .short()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io("create secret dir", &dir, e))?;
        // Secrets live in memory only, as documented: without a tmpfs they would land on the
        // disk under the temporary directory, so the step fails instead.
        if let Err(e) = mount_secret_tmpfs(&dir) {
            let _ = std::fs::remove_dir(&dir);
            return Err(Error::Secret {
                id: id.to_owned(),
                message: format!(
                    "cannot mount a private tmpfs at {} to hold it in memory ({e}); kiln never \
                     writes secrets to disk, so the step stops here: run kiln as root with \
                     CAP_SYS_ADMIN, where it can mount a tmpfs",
                    dir.display()
                ),
            });
        }
        Ok(SecretDir { dir })
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
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
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
struct Held {
    reads: Vec<ReadView>,
    writes: Vec<WriteView>,
    leases: Vec<CacheLease>,
    secrets: Vec<SecretDir>,
    ssh: Vec<crate::ssh_agent::StepSocket>,
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
    let cache_dirs = lease_cache_mounts(env, op, &snap, &mut held)?;
    for (i, m) in op.mounts.iter().enumerate().filter(|(_, m)| m.dest != "/") {
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
            MountKind::Cache { .. } => PreparedMountKind::Bind {
                source: cache_dirs
                    .get(&i)
                    .expect("every cache mount was leased above")
                    .display()
                    .to_string(),
            },
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
                    let dir = SecretDir::new(id)?;
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
            // A socket of the step's own, with the mount's mode and owner, forwards to the
            // agent (as BuildKit's per-mount socket): no key ever enters the container.
            MountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => match env.ssh.get(id) {
                Some(SshSource::Agent(sock)) => {
                    check_socket(id, sock)?;
                    let step_sock =
                        crate::ssh_agent::StepSocket::start(id, sock, *mode, *uid, *gid)?;
                    let source = step_sock.path().display().to_string();
                    held.ssh.push(step_sock);
                    PreparedMountKind::Bind { source }
                }
                // The build replaces key files with its own agent before anything runs.
                Some(SshSource::Keys(_)) => {
                    return Err(Error::Ssh {
                        id: id.clone(),
                        message: "its key files were not loaded into an agent".to_owned(),
                    })
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
    env.options.check_protocol(protocol, plugin.path())?;
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
        limits: env.options.limits,
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

/// The cache mounts of `op` (mount index, mount, directory) in the order their locks are
/// taken: by directory, so that every step and every build takes them in one order.
fn in_lock_order<'m>(
    op: &'m ExecOp,
    cache_mounts: &CacheMounts,
) -> Vec<(usize, &'m kiln_graph::Mount, PathBuf)> {
    let mut caches: Vec<_> = op
        .mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.dest != "/")
        .filter_map(|(i, m)| match &m.kind {
            MountKind::Cache { id, .. } => Some((i, m, cache_mounts.dir_of(id))),
            _ => None,
        })
        .collect();
    caches.sort_by(|a, b| a.2.cmp(&b.2));
    caches
}

/// Leases the step's cache mounts, by mount index. They are taken in the order of their
/// directories, the same in every step and every build, so that two steps locking the same
/// two caches never each hold one and wait for the other.
fn lease_cache_mounts(
    env: &ExecEnv<'_>,
    op: &ExecOp,
    snap: &dyn Fn(Option<u32>) -> Snapshot,
    held: &mut Held,
) -> Result<BTreeMap<usize, PathBuf>, Error> {
    let mut dirs = BTreeMap::new();
    for (i, m, base) in in_lock_order(op, env.cache_mounts) {
        let MountKind::Cache {
            id,
            sharing,
            mode,
            uid,
            gid,
        } = &m.kind
        else {
            continue;
        };
        let dir = match held.leases.iter().find(|l| l.dir == base) {
            // The same id mounted twice in one step: one lease, or the second mount would
            // wait for the first forever.
            Some(lease) if *sharing != CacheSharing::Private => lease.dir.clone(),
            _ => {
                // `from=`: a new cache directory starts as a copy of that filesystem.
                let seed = |dir: &Path| -> Result<(), Error> {
                    let view = ReadView::new(env.store, &snap(m.input))?;
                    let mut copy = kiln_graph::CopyAction::new(Some(0), &m.selector, "/");
                    copy.allow_wildcard = false;
                    crate::fileop::apply(
                        dir,
                        &[kiln_graph::FileAction::Copy(copy)],
                        &[view.path().to_owned()],
                    )
                    .map_err(|e| Error::Unsupported(format!("seeding cache mount {id}: {e}")))
                };
                let lease = env.cache_mounts.acquire(
                    id,
                    *sharing,
                    NewCacheDir {
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    },
                    m.input.is_some().then_some(&seed as Seed<'_>),
                    &Waiting {
                        cancel: env.cancel,
                        log: env.log,
                    },
                )?;
                let dir = lease.dir.clone();
                held.leases.push(lease);
                dir
            }
        };
        dirs.insert(i, dir);
    }
    Ok(dirs)
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
    use std::sync::Mutex;

    #[test]
    fn limits_are_refused_by_an_exec_plugin_that_would_ignore_them() {
        let plugin = Path::new("/plugins/exec");
        let limited = RunOptions {
            limits: StepLimits {
                memory: Some(32 << 20),
                ..StepLimits::default()
            },
            ..RunOptions::default()
        };
        let err = limited.check_protocol(3, plugin).unwrap_err().to_string();
        assert!(
            err.contains("/plugins/exec") && err.contains("protocol 3") && err.contains("--memory"),
            "{err}"
        );
        assert!(limited.check_protocol(4, plugin).is_ok());
        // Without limits a protocol-2 plugin is still fine, a protocol-1 one only by default.
        let shm = RunOptions {
            shm_size: Some(1 << 20),
            ..RunOptions::default()
        };
        assert!(shm.check_protocol(2, plugin).is_ok());
        assert!(shm.check_protocol(1, plugin).is_err());
        assert!(RunOptions::default().check_protocol(1, plugin).is_ok());
        // Limits alone do not trip the protocol-2 message.
        let err = limited.check_protocol(1, plugin).unwrap_err().to_string();
        assert!(err.contains("--memory"), "{err}");
    }

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
            mode: kiln_graph::SSH_DEFAULT_MODE,
            uid: 0,
            gid: 0,
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
            devices: Vec::new(),
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

    /// A [`Waiting`] whose log lines go to `tx` (the test's synchronization point: a waiter
    /// logs once, right before it blocks).
    fn waiting<'w>(
        cancel: &'w CancellationToken,
        log: &'w (dyn Fn(String) + Send + Sync),
    ) -> Waiting<'w> {
        Waiting { cancel, log }
    }

    const DIR: NewCacheDir = NewCacheDir {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };

    #[test]
    fn cache_mount_sharing_modes() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let quiet = |_: String| {};
        let w = waiting(&cancel, &quiet);
        // shared: concurrent users get the same directory.
        let a = cm
            .acquire("go", CacheSharing::Shared, DIR, None, &w)
            .unwrap();
        let b = cm
            .acquire("go", CacheSharing::Shared, DIR, None, &w)
            .unwrap();
        assert_eq!(a.dir, b.dir);
        drop((a, b));
        // private: a second concurrent user gets its own directory; the first one is reused later.
        let private = NewCacheDir { mode: 0o700, ..DIR };
        let p1 = cm
            .acquire("apt", CacheSharing::Private, private, None, &w)
            .unwrap();
        let p2 = cm
            .acquire("apt", CacheSharing::Private, private, None, &w)
            .unwrap();
        assert_ne!(p1.dir, p2.dir);
        let first = p1.dir.clone();
        drop((p1, p2));
        assert_eq!(
            cm.acquire("apt", CacheSharing::Private, private, None, &w)
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
            .acquire("npm", CacheSharing::Locked, DIR, None, &w)
            .unwrap();
        let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
        let log_tx = Mutex::new(log_tx);
        let log = move |line: String| {
            let _ = log_tx.lock().unwrap().send(line);
        };
        let (got_tx, got_rx) = std::sync::mpsc::channel::<PathBuf>();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let l = cm
                    .acquire(
                        "npm",
                        CacheSharing::Locked,
                        DIR,
                        None,
                        &waiting(&cancel, &log),
                    )
                    .unwrap();
                assert!(
                    released.load(Ordering::SeqCst),
                    "got the lock while it was held"
                );
                got_tx.send(l.dir.clone()).unwrap();
            });
            // The waiter says it waits right before it blocks, and it cannot get the lock
            // while `held` lives.
            let line = log_rx.recv().unwrap();
            assert!(line.contains("waiting for cache mount \"npm\""), "{line}");
            assert!(got_rx.try_recv().is_err(), "got the lock while it was held");
            released.store(true, Ordering::SeqCst);
            drop(held);
            let dir = got_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the waiter gets the lock once it is released");
            assert!(dir.ends_with(Digest::of(b"npm").hex()));
        });
    }

    /// Another process holding the lock file (a flock taken on a file opened on its own, as
    /// a second `kiln build` does) makes `locked` wait and `private` take a new directory.
    #[test]
    fn cache_mount_locks_hold_across_processes() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let quiet = |_: String| {};
        let w = waiting(&cancel, &quiet);
        // Made once, so the lock file exists where another process would find it.
        let dir = cm
            .acquire("cargo", CacheSharing::Locked, DIR, None, &w)
            .unwrap()
            .dir;
        let lock_file = t
            .path()
            .join("cache-mounts")
            .join(format!("{}.lock", Digest::of(b"cargo").hex()));
        let other = std::fs::File::open(&lock_file).unwrap();
        other.lock().unwrap();
        let p = cm
            .acquire("cargo", CacheSharing::Private, DIR, None, &w)
            .unwrap();
        assert_ne!(p.dir, dir, "private took the directory another build holds");
        drop(p);
        let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
        let log_tx = Mutex::new(log_tx);
        let log = move |line: String| {
            let _ = log_tx.lock().unwrap().send(line);
        };
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                cm.acquire(
                    "cargo",
                    CacheSharing::Locked,
                    DIR,
                    None,
                    &waiting(&cancel, &log),
                )
                .map(|l| l.dir.clone())
            });
            let line = log_rx.recv().unwrap();
            assert!(line.contains("another step or build holds it"), "{line}");
            other.unlock().unwrap();
            assert_eq!(waiter.join().unwrap().unwrap(), dir);
        });
        // shared takes a shared lock, so that a build holding it locked excludes it too.
        let s1 = cm
            .acquire("cargo", CacheSharing::Shared, DIR, None, &w)
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        assert!(other.try_lock_shared().is_ok());
        drop(s1);
    }

    #[test]
    fn cache_mounts_are_locked_in_one_order_whatever_the_step_says() {
        let cm = CacheMounts::new(PathBuf::from("/store/cache-mounts"));
        let mount = |dest: &str, kind| kiln_graph::Mount {
            input: None,
            selector: String::new(),
            dest: dest.into(),
            readonly: false,
            kind,
        };
        let cache = |id: &str| MountKind::Cache {
            id: id.into(),
            sharing: CacheSharing::Locked,
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let op = |ids: &[&str]| ExecOp {
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            network: Default::default(),
            security: Default::default(),
            mounts: std::iter::once(mount("/", MountKind::Bind))
                .chain(std::iter::once(mount(
                    "/tmp",
                    MountKind::Tmpfs { size: None },
                )))
                .chain(ids.iter().map(|id| mount(&format!("/{id}"), cache(id))))
                .collect(),
            proxy_env: vec![],
            devices: Vec::new(),
        };
        let order = |op: &ExecOp| -> Vec<String> {
            in_lock_order(op, &cm)
                .into_iter()
                .map(|(i, m, dir)| {
                    assert_eq!(op.mounts[i].dest, m.dest);
                    assert!(dir.starts_with("/store/cache-mounts"));
                    m.dest.clone()
                })
                .collect()
        };
        // Two steps naming the same caches in opposite orders lock them in one order: neither
        // can hold one while waiting for the other's.
        let ab = order(&op(&["apt", "go", "npm"]));
        let ba = order(&op(&["npm", "go", "apt"]));
        assert_eq!(ab, ba);
        assert_eq!(ab.len(), 3);
    }

    #[test]
    fn a_cancelled_build_stops_waiting_for_a_cache_mount() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let quiet = |_: String| {};
        let held = cm
            .acquire(
                "m",
                CacheSharing::Locked,
                DIR,
                None,
                &waiting(&cancel, &quiet),
            )
            .unwrap();
        let (log_tx, log_rx) = std::sync::mpsc::channel::<String>();
        let log_tx = Mutex::new(log_tx);
        let log = move |line: String| {
            let _ = log_tx.lock().unwrap().send(line);
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = cm
                    .acquire(
                        "m",
                        CacheSharing::Locked,
                        DIR,
                        None,
                        &waiting(&cancel, &log),
                    )
                    .map(|_| ());
                done_tx.send(r).unwrap();
            });
            log_rx.recv().unwrap();
            cancel.cancel();
            // Hanging is the bug: a generous bound, far above the poll interval.
            let r = done_rx
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the waiter stops once the build is cancelled");
            let e = r.unwrap_err().to_string();
            assert!(e.contains("cancelled"), "{e}");
        });
        drop(held);
    }

    #[test]
    fn a_new_cache_directory_is_seeded_once_before_use() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let quiet = |_: String| {};
        let w = waiting(&cancel, &quiet);
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let seed = |dir: &Path| -> Result<(), Error> {
            calls.fetch_add(1, Ordering::SeqCst);
            std::fs::write(dir.join("seeded"), "yes").unwrap();
            Ok(())
        };
        for sharing in [
            CacheSharing::Shared,
            CacheSharing::Locked,
            CacheSharing::Private,
        ] {
            let l = cm.acquire("s", sharing, DIR, Some(&seed), &w).unwrap();
            assert_eq!(
                std::fs::read_to_string(l.dir.join("seeded")).unwrap(),
                "yes"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "seeded only when made");
        // A failed seed leaves nothing that looks like a cache directory.
        let failing = |_: &Path| -> Result<(), Error> { Err(Error::Unsupported("no".into())) };
        assert!(cm
            .acquire("f", CacheSharing::Locked, DIR, Some(&failing), &w)
            .is_err());
        let names: Vec<String> = std::fs::read_dir(t.path().join("cache-mounts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(names, vec![Digest::of(b"s").hex()]);
    }

    /// Imported contents for `ids`: the fill writes `restored` (or fails for `bad`).
    struct FakeImports {
        ids: Vec<&'static str>,
        taken: Mutex<Vec<String>>,
        warnings: Mutex<Vec<String>>,
    }

    impl MountImports for FakeImports {
        fn pending(&self, id: &str) -> bool {
            self.ids.contains(&id) && !self.taken.lock().unwrap().iter().any(|t| t == id)
        }
        fn take(&self, id: &str) -> Option<Restorable> {
            if !self.pending(id) {
                return None;
            }
            self.taken.lock().unwrap().push(id.to_owned());
            let bad = id == "bad";
            Some(Restorable {
                new_dir: NewCacheDir {
                    mode: 0o1777,
                    uid: 0,
                    gid: 0,
                },
                origin: "cache /c".into(),
                fill: Box::new(move |dir: &Path| {
                    std::fs::write(dir.join("restored"), "yes").unwrap();
                    if bad {
                        Err("blob does not match its digest".into())
                    } else {
                        Ok(())
                    }
                }),
            })
        }
        fn warn(&self, message: String) {
            self.warnings.lock().unwrap().push(message);
        }
    }

    #[test]
    fn imported_cache_mounts_fill_new_or_empty_directories_once() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let local = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let lines = Mutex::new(Vec::<String>::new());
        let log = |l: String| lines.lock().unwrap().push(l);
        let w = waiting(&cancel, &log);
        // Before the import: `kept` has files here, `empty` is an empty directory.
        let kept = local
            .acquire("kept", CacheSharing::Locked, DIR, None, &w)
            .unwrap();
        std::fs::write(kept.dir.join("local"), "mine").unwrap();
        drop(kept);
        drop(
            local
                .acquire("empty", CacheSharing::Shared, DIR, None, &w)
                .unwrap(),
        );
        let imports = Arc::new(FakeImports {
            ids: vec!["new", "kept", "empty", "bad", "private"],
            taken: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
        });
        let cm = local.with_imports(imports.clone());
        let seeded = |dir: &Path| -> Result<(), Error> {
            std::fs::write(dir.join("seeded"), "yes").unwrap();
            Ok(())
        };
        let restored = |id: &str, sharing| {
            let l = cm.acquire(id, sharing, DIR, Some(&seeded), &w).unwrap();
            let md = std::fs::metadata(&l.dir).unwrap();
            let files: Vec<String> = std::fs::read_dir(&l.dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            (files, md.permissions().mode() & 0o7777, l)
        };

        // A new directory: the import wins over `from=`, made as it was exported.
        let (files, mode, l) = restored("new", CacheSharing::Shared);
        assert_eq!((files, mode), (vec!["restored".to_owned()], 0o1777));
        // Emptied by a step: not refilled in the same build.
        std::fs::remove_file(l.dir.join("restored")).unwrap();
        drop(l);
        assert!(restored("new", CacheSharing::Shared).0.is_empty());
        // A local directory with files wins; an empty one is filled.
        assert_eq!(restored("kept", CacheSharing::Locked).0, vec!["local"]);
        assert_eq!(restored("empty", CacheSharing::Shared).0, vec!["restored"]);
        assert_eq!(
            restored("private", CacheSharing::Private).0,
            vec!["restored"]
        );
        // A fill that fails: a warning, and the directory starts as a new one (seeded).
        let (files, mode, _) = restored("bad", CacheSharing::Locked);
        assert_eq!((files, mode), (vec!["seeded".to_owned()], 0o755));
        let warnings = imports.warnings.lock().unwrap().clone();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("\"bad\" from cache /c could not be restored")
                && warnings[0].contains("does not match its digest"),
            "{warnings:?}"
        );
        let lines = lines.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("WARNING: cache mount \"bad\"")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l == "restored cache mount \"new\" from cache /c"),
            "{lines:?}"
        );
        // Nothing half-made is left beside the directories.
        let names: Vec<String> = std::fs::read_dir(t.path().join("cache-mounts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    /// A read of a cache mount waits for a step holding it locked, and takes the lock shared.
    #[test]
    fn reading_a_cache_mount_takes_its_lock_shared() {
        let t = tempfile::tempdir().unwrap();
        let cm = CacheMounts::new(t.path().join("cache-mounts"));
        let cancel = CancellationToken::new();
        let quiet = |_: String| {};
        let w = waiting(&cancel, &quiet);
        assert!(cm.read("none").unwrap().is_none());
        let held = cm
            .acquire("pkgs", CacheSharing::Locked, DIR, None, &w)
            .unwrap();
        let released = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let l = cm.read("pkgs").unwrap().unwrap();
                assert!(released.load(Ordering::SeqCst), "read while held locked");
                l.dir().to_owned()
            });
            let dir = held.dir.clone();
            released.store(true, Ordering::SeqCst);
            drop(held);
            assert_eq!(reader.join().unwrap(), dir);
        });
        // Shared with a shared user.
        let a = cm
            .acquire("pkgs", CacheSharing::Shared, DIR, None, &w)
            .unwrap();
        let b = cm.read("pkgs").unwrap().unwrap();
        assert_eq!(a.dir, b.dir);
    }

    /// Drops CAP_SYS_ADMIN from the calling thread's effective set (capabilities are per
    /// thread on Linux), so that mount(2) fails in it as it does for an unprivileged kiln.
    fn drop_sys_admin_in_this_thread() {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const CAP_V3: u32 = 0x2008_0522;
        const CAP_SYS_ADMIN: u32 = 21;
        let mut header = Header {
            version: CAP_V3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget/capset with a v3 header and the two data words v3 expects.
        unsafe {
            assert_eq!(
                nix::libc::syscall(nix::libc::SYS_capget, &mut header, data.as_mut_ptr()),
                0
            );
            data[0].effective &= !(1 << CAP_SYS_ADMIN);
            assert_eq!(
                nix::libc::syscall(nix::libc::SYS_capset, &mut header, data.as_ptr()),
                0
            );
        }
    }

    #[test]
    fn secrets_never_go_to_disk_when_no_tmpfs_can_be_mounted() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().to_owned();
        let e = std::thread::spawn(move || {
            drop_sys_admin_in_this_thread();
            match SecretDir::new_in(&base, "token") {
                Ok(d) => {
                    let p = d.write("token", b"s3cret", 0o400, 0, 0).unwrap();
                    panic!("the secret went to {} without a tmpfs", p.display());
                }
                Err(e) => e.to_string(),
            }
        })
        .join()
        .unwrap();
        assert!(e.starts_with("secret token: "), "{e}");
        assert!(e.contains("tmpfs") && e.contains("CAP_SYS_ADMIN"), "{e}");
        // Nothing is left behind, not even the empty directory.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn secrets_live_on_a_tmpfs_removed_after_the_step() {
        let t = tempfile::tempdir().unwrap();
        let d = SecretDir::new_in(t.path(), "token").unwrap();
        let p = d.write("token", b"s3cret", 0o400, 0, 0).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"s3cret");
        let dir = d.dir.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(dir.as_str()))
            .unwrap_or_else(|| panic!("{dir} is not a mount point"));
        assert!(line.contains(" - tmpfs "), "{line}");
        drop(d);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&dir));
    }
}
