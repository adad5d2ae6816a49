//! Registry access over oci-client: auth, manifests, streamed and verified blob downloads,
//! retries, and the mapping of transport errors to errors a user can act on.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kiln_snapshot::Store;
use kiln_types::image::{Descriptor, ImageConfig};
use kiln_types::{Digest, Platform};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciRef, RegistryOperation};

use crate::auth::DockerConfig;
use crate::reference::is_loopback;
use crate::select::{
    check_layer_count, check_size, parse_config, parse_document, select_platform, Document,
    ACCEPTED, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, MAX_NESTING,
};
use crate::tls::{self, HostTls, DOCKER_CERTS_DIR};
use crate::{Category, Error, HostOptions, Op, Reference, RegistryOptions, ResolvedImage};

mod transfer;

/// Attempts per request, and the first back-off delay (multiplied by 4 each time: 200 ms,
/// 800 ms), so that an unreachable registry fails in about a second.
const ATTEMPTS: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// Layers downloaded at once.
const PARALLEL_BLOBS: usize = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Per read, not per request: a large layer may take long, a stalled one may not.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Remote {
    // Made on first use: a build that only uses plain-http registries (or none) never reads
    // the system's CA certificates.
    http: std::sync::OnceLock<Arc<Client>>,
    /// The client of each host used so far, decided once per host (https hosts with the same
    /// certificate files and verification share one).
    clients: Mutex<HashMap<String, HostClient>>,
    /// The https clients by what makes them differ: verified or not, and the host's files.
    tls_clients: Mutex<HashMap<(bool, HostTls), Arc<Client>>>,
    /// docker's per-registry certificate directory.
    certs_dir: PathBuf,
    insecure: Vec<String>,
    hosts: BTreeMap<String, HostOptions>,
    config: Arc<DockerConfig>,
    credentials: Mutex<HashMap<String, RegistryAuth>>,
    /// Manifests and indexes fetched by this process, verified, by repository and digest: a
    /// build resolves its base (tag, then digest) and pulls it by that digest right after, and
    /// a document named by its digest cannot change, so the second fetch is not needed.
    manifests: Mutex<HashMap<ManifestKey, Arc<[u8]>>>,
}

/// A document's registry, repository and digest.
type ManifestKey = (String, String, Digest);

/// How many documents [`Remote`] keeps (each at most `MAX_MANIFEST_SIZE`; a build names a few).
const KEPT_MANIFESTS: usize = 64;

fn new_client(
    protocol: ClientProtocol,
    tls: Option<rustls::ClientConfig>,
) -> Result<Client, Error> {
    let config = ClientConfig {
        protocol,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        max_concurrent_download: PARALLEL_BLOBS,
        platform_resolver: None,
        // The plain-http client (no `tls`) serves loopback and `--insecure-registry` hosts
        // only: it never verifies anything, so it must not read the system's CA certificates
        // either. https clients get kiln's own TLS configuration (`tls::client_config`).
        accept_invalid_certificates: tls.is_none(),
        rustls_config: tls,
        ..ClientConfig::default()
    };
    // `Client::new` would swallow the error and fall back to a default client.
    Client::try_from(config).map_err(|e| Error::Client(error_chain(&e)))
}

/// An error with its sources, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

impl Remote {
    pub(crate) fn new(opts: RegistryOptions) -> Result<Self, Error> {
        // reqwest is built without a default provider (aws-lc-rs costs minutes of build time);
        // an error only means some provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Remote {
            http: std::sync::OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
            tls_clients: Mutex::new(HashMap::new()),
            certs_dir: PathBuf::from(DOCKER_CERTS_DIR),
            insecure: opts.insecure,
            hosts: opts.hosts,
            config: Arc::new(DockerConfig::load(opts.docker_config.as_deref())?),
            credentials: Mutex::new(HashMap::new()),
            manifests: Mutex::new(HashMap::new()),
        })
    }

    fn client_for(&self, registry: &str) -> Result<HostClient, Error> {
        if let Some(c) = lock(&self.clients).get(registry) {
            return Ok(c.clone());
        }
        let c = self.new_host_client(registry)?;
        lock(&self.clients).insert(registry.to_owned(), c.clone());
        Ok(c)
    }

    fn new_host_client(&self, registry: &str) -> Result<HostClient, Error> {
        let host = self.hosts.get(registry);
        let explicit_http =
            self.insecure.iter().any(|h| h == registry) || host.and_then(|h| h.http) == Some(true);
        if explicit_http {
            return self.http_client();
        }
        let tls = tls::gather(registry, host, &self.certs_dir)?;
        // As BuildKit: `http` decides when given, else loopback hosts are plain http, unless
        // they have certificate files of their own (kiln.toml's `ca`/`keypair`, certs.d):
        // those say the registry speaks https. There is never a fallback from one to the other.
        if host.and_then(|h| h.http).is_none() && is_loopback(registry) && tls.is_empty() {
            return self.http_client();
        }
        let verify = !host.is_some_and(|h| h.insecure);
        let client_cert = !tls.keypairs.is_empty();
        let key = (verify, tls);
        let existing = lock(&self.tls_clients).get(&key).cloned();
        let client = match existing {
            Some(c) => c,
            None => {
                let config = tls::client_config(registry, &key.1, verify)?;
                let c = Arc::new(new_client(ClientProtocol::Https, Some(config))?);
                // A concurrent first use may have made one meanwhile; either is as good.
                Arc::clone(lock(&self.tls_clients).entry(key).or_insert(c))
            }
        };
        Ok(HostClient {
            client,
            client_cert,
        })
    }

    fn http_client(&self) -> Result<HostClient, Error> {
        let client = match self.http.get() {
            Some(c) => Arc::clone(c),
            None => {
                let client = Arc::new(new_client(ClientProtocol::Http, None)?);
                Arc::clone(self.http.get_or_init(|| client))
            }
        };
        Ok(HostClient {
            client,
            client_cert: false,
        })
    }

    async fn credentials(&self, registry: &str) -> Result<RegistryAuth, Error> {
        if let Some(a) = self.lock_credentials().get(registry) {
            return Ok(a.clone());
        }
        let config = Arc::clone(&self.config);
        let reg = registry.to_owned();
        // A credential helper is a process: keep it off the async threads.
        let auth = tokio::task::spawn_blocking(move || config.credentials(&reg))
            .await
            .map_err(|e| Error::CredentialHelper {
                helper: "(credential lookup)".to_owned(),
                registry: registry.to_owned(),
                why: e.to_string(),
            })??;
        self.lock_credentials()
            .insert(registry.to_owned(), auth.clone());
        Ok(auth)
    }

    fn lock_credentials(&self) -> std::sync::MutexGuard<'_, HashMap<String, RegistryAuth>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it inconsistent.
        self.credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connected session for one image: client, credentials, and error context.
    async fn session<'a>(&'a self, r: &'a Reference, op: Op) -> Result<Session<'a>, Error> {
        let operation = match op {
            Op::Push => RegistryOperation::Push,
            _ => RegistryOperation::Pull,
        };
        let host = self.client_for(&r.registry)?;
        let s = Session {
            client: host.client,
            client_cert: host.client_cert,
            auth: self.credentials(&r.registry).await?,
            reference: r,
            image: r.to_string(),
            op,
            config: &self.config,
        };
        // oci-client's lazy token fetch hides its errors: authenticate up front, so that an
        // unreachable registry or refused credentials are reported as such.
        let oref = s.oci_ref(r.digest.as_ref());
        retry(transient, || s.client.auth(&oref, &s.auth, operation))
            .await
            .map_err(|e| s.error(e))?;
        Ok(s)
    }

    /// Uploads `blobs` (missing ones only, streamed from the store) then the manifest under
    /// the reference's digest when it has one (which must be the manifest's), else its tag;
    /// returns the manifest digest.
    pub(crate) async fn push(
        &self,
        r: &Reference,
        blobs: &[(Digest, u64)],
        manifest: &[u8],
        media_type: &str,
        store: &Store,
    ) -> Result<Digest, Error> {
        let s = self.session(r, Op::Push).await?;
        let digest = Digest::of(manifest);
        if let Some(want) = r.digest {
            if want != digest {
                return Err(s.mismatch("manifest", &want, &digest));
            }
        }
        let oref = s.oci_ref(None);
        // Blobs go up several at once (the registry may already hold any of them: those are
        // only asked about); the manifest goes last, once every blob it names is there.
        let (s_ref, oref_ref) = (&s, &oref);
        let uploads: Vec<Result<(), Error>> = futures_util::stream::iter(
            blobs
                .iter()
                .map(|(digest, size)| Self::push_blob(s_ref, oref_ref, digest, *size, store)),
        )
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
        uploads.into_iter().collect::<Result<(), Error>>()?;
        s.upload_manifest(&s.oci_ref(r.digest.as_ref()), manifest, media_type)
            .await?;
        Ok(digest)
    }

    /// Uploads one blob of the store, unless the registry has it already.
    async fn push_blob(
        s: &Session<'_>,
        oref: &OciRef,
        digest: &Digest,
        size: u64,
        store: &Store,
    ) -> Result<(), Error> {
        {
            let d = digest.to_string();
            let exists = retry(transient, || s.client.blob_exists(oref, &d))
                .await
                .map_err(|e| s.error(e))?;
            if exists {
                return Ok(());
            }
            let path = store.blob_path(digest);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| Error::Registry {
                    op: s.op,
                    image: s.image.clone(),
                    why: format!("read blob {digest} from the store: {e}"),
                })?;
            // Streamed in 1 MiB chunks: a layer is never held whole in memory.
            let stream = futures_util::stream::unfold(file, |mut f| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 1 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((
                        Err(OciDistributionError::GenericError(Some(e.to_string()))),
                        f,
                    )),
                }
            });
            s.client
                .push_blob_stream(oref, stream, &d, Some(size))
                .await
                .map_err(|e| s.error(e))?;
        }
        Ok(())
    }

    /// The document `r` names, as it is: size-checked and, when `r` has a digest, verified,
    /// but neither parsed nor narrowed to a platform (build caches are not images). Mirrors
    /// are tried first, as for pulls.
    pub(crate) async fn fetch_manifest(&self, r: &Reference) -> Result<(Digest, Vec<u8>), Error> {
        let mut failures = Vec::new();
        for source in self.pull_sources(r) {
            match self.fetch_manifest_at(&source).await {
                Ok(found) => return Ok(found),
                Err(e) => failures.push(e),
            }
        }
        Err(first_failure(failures))
    }

    async fn fetch_manifest_at(&self, r: &Reference) -> Result<(Digest, Vec<u8>), Error> {
        let s = self.session(r, Op::Resolve).await?;
        let (digest, bytes) = self.manifest(&s, r, r.digest).await?;
        Ok((digest, bytes.to_vec()))
    }

    /// The document of repository `r` named `expected` (or `r`'s tag when `None`): fetched,
    /// size-checked and verified against `expected`, or one this process fetched before by
    /// that digest.
    async fn manifest(
        &self,
        s: &Session<'_>,
        r: &Reference,
        expected: Option<Digest>,
    ) -> Result<(Digest, Arc<[u8]>), Error> {
        let key = |d: Digest| (r.registry.clone(), r.repository.clone(), d);
        if let Some(want) = expected {
            let kept = self
                .manifests
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&key(want))
                .cloned();
            if let Some(bytes) = kept {
                return Ok((want, bytes));
            }
        }
        let oref = s.oci_ref(expected.as_ref());
        let (bytes, _) = retry(transient, || {
            s.client.pull_manifest_raw(&oref, &s.auth, ACCEPTED)
        })
        .await
        .map_err(|e| s.error(e))?;
        // oci-client hands the body over whole (it has no streaming manifest call); check
        // its size before hashing or parsing it.
        check_size(
            &expected.map_or_else(|| "manifest".to_owned(), |d| format!("manifest {d}")),
            bytes.len() as u64,
            MAX_MANIFEST_SIZE,
        )
        .map_err(|why| s.bad_document(why))?;
        let digest = Digest::of(&bytes);
        if let Some(want) = expected {
            if want != digest {
                return Err(s.mismatch("manifest", &want, &digest));
            }
        }
        let bytes: Arc<[u8]> = Arc::from(&bytes[..]);
        let mut kept = self
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() >= KEPT_MANIFESTS {
            kept.clear();
        }
        kept.insert(key(digest), bytes.clone());
        Ok((digest, bytes))
    }

    /// Where a pull of `r` may come from, in the order to try them: the mirrors of its
    /// registry, then the registry itself (BuildKit's resolver hosts).
    fn pull_sources(&self, r: &Reference) -> Vec<Reference> {
        let mut sources = Vec::new();
        for mirror in self.hosts.get(&r.registry).map_or(&[][..], |h| &h.mirrors) {
            let (host, path) = split_mirror(mirror);
            let repository = if path.is_empty() {
                r.repository.clone()
            } else {
                format!("{path}/{}", r.repository)
            };
            sources.push(Reference {
                registry: host.to_owned(),
                repository,
                ..r.clone()
            });
        }
        sources.push(r.clone());
        sources
    }

    /// Resolves `r` from the first of its sources that answers; the result names `r` itself,
    /// whichever mirror served it (the content is the same: it is verified by digest).
    pub(crate) async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
        store: &Store,
    ) -> Result<ResolvedImage, Error> {
        let mut failures = Vec::new();
        for source in self.pull_sources(r) {
            match self.resolve_at(&source, platform, store).await {
                Ok(image) => {
                    return Ok(ResolvedImage {
                        reference: crate::ImageRef::Registry(Reference {
                            digest: Some(image.manifest_digest),
                            ..r.clone()
                        }),
                        ..image
                    })
                }
                Err(e) => failures.push(e),
            }
        }
        Err(first_failure(failures))
    }

    async fn resolve_at(
        &self,
        r: &Reference,
        platform: &Platform,
        store: &Store,
    ) -> Result<ResolvedImage, Error> {
        let s = self.session(r, Op::Resolve).await?;
        let mut expected = r.digest;
        for _ in 0..=MAX_NESTING {
            let (digest, bytes) = self.manifest(&s, r, expected).await?;
            let doc = parse_document(&bytes).map_err(|why| s.bad_document(why))?;
            match doc {
                Document::Index(index) => {
                    let d = select_platform(&index, platform).map_err(|available| {
                        Error::NoMatchingPlatform {
                            image: s.image.clone(),
                            wanted: platform.to_string(),
                            available,
                        }
                    })?;
                    expected = Some(d.digest);
                }
                Document::Manifest(manifest) => {
                    // The download stops at the descriptor's size, so this bounds it.
                    check_size(
                        &format!("image config {}", manifest.config.digest),
                        manifest.config.size,
                        MAX_CONFIG_SIZE,
                    )
                    .map_err(|why| s.bad_document(why))?;
                    if !has_intact_blob(store, &manifest.config.digest) {
                        s.fetch_blob(&manifest.config, store).await?;
                    }
                    let config = read_config(store, &manifest.config.digest)
                        .map_err(|why| s.bad_document(why))?;
                    check_layer_count(&manifest, &config).map_err(|why| s.bad_document(why))?;
                    return Ok(ResolvedImage {
                        reference: crate::ImageRef::Registry(Reference {
                            digest: Some(digest),
                            ..r.clone()
                        }),
                        manifest_digest: digest,
                        config_digest: manifest.config.digest,
                        config,
                        layers: manifest.layers.clone(),
                        manifest,
                    });
                }
            }
        }
        Err(Error::BadDocument {
            op: s.op,
            image: s.image.clone(),
            why: format!("image indexes nested more than {MAX_NESTING} deep"),
        })
    }

    /// Fetches `blobs` from the sources of `r` in order: what one source could not give, the
    /// next one is asked for (every blob is verified by digest, whoever serves it).
    pub(crate) async fn fetch_blobs(
        &self,
        r: &Reference,
        blobs: &[&Descriptor],
        store: &Store,
    ) -> Result<(), Error> {
        let mut failures = Vec::new();
        for source in self.pull_sources(r) {
            let missing: Vec<&Descriptor> = blobs
                .iter()
                .copied()
                .filter(|d| !store.has_blob(&d.digest))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            match self.fetch_blobs_at(&source, &missing, store).await {
                Ok(()) => return Ok(()),
                Err(e) => failures.push(e),
            }
        }
        Err(first_failure(failures))
    }

    async fn fetch_blobs_at(
        &self,
        r: &Reference,
        blobs: &[&Descriptor],
        store: &Store,
    ) -> Result<(), Error> {
        let s = self.session(r, Op::FetchLayers).await?;
        // After a failure, queued downloads are skipped but those in flight run to their end:
        // dropping them would leave their writer tasks to clean up after we return.
        let failed = AtomicBool::new(false);
        let (s, failed) = (&s, &failed);
        let results: Vec<Result<(), Error>> =
            futures_util::stream::iter(blobs.iter().map(|d| async move {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let r = s.fetch_blob(d, store).await;
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            }))
            .buffer_unordered(PARALLEL_BLOBS)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// `host[:port][/path]` of a mirror → (host, path without slashes at its ends).
pub(crate) fn split_mirror(mirror: &str) -> (&str, &str) {
    match mirror.split_once('/') {
        Some((host, path)) => (host, path.trim_matches('/')),
        None => (mirror, ""),
    }
}

/// The error to report when every source failed, as containerd's resolver picks it: the first
/// that is not "not found" (a mirror that lacks the image is normal), else the last one.
fn first_failure(mut failures: Vec<Error>) -> Error {
    match failures
        .iter()
        .position(|e| e.category() != Category::NotFound)
    {
        Some(i) => failures.swap_remove(i),
        None => failures.pop().unwrap_or_else(|| Error::Registry {
            op: Op::Resolve,
            image: String::new(),
            why: "no registry to pull from".to_owned(),
        }),
    }
}

/// Whether blob `digest` is in the store with bytes that match it: a config changed on disk
/// behind kiln's back is fetched again (and overwritten), never read. Configs are small.
pub(crate) fn has_intact_blob(store: &Store, digest: &Digest) -> bool {
    matches!(
        store.check_blob(digest),
        Ok(kiln_snapshot::verify::BlobState::Good { .. })
    )
}

/// Reads and parses a config blob from the store, size-checked before it is read.
pub(crate) fn read_config(store: &Store, digest: &Digest) -> Result<ImageConfig, String> {
    let path = store.blob_path(digest);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("cannot read image config {}: {e}", path.display()))?
        .len();
    check_size(&format!("image config {digest}"), size, MAX_CONFIG_SIZE)?;
    let bytes = store
        .read_blob_verified(digest)
        .map_err(|e| e.to_string())?;
    parse_config(&bytes).map_err(|e| format!("image config {digest}: {e}"))
}

/// Locks a map that is only ever inserted into: a panic elsewhere cannot leave it
/// inconsistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The client for one host, and whether it presents a client certificate.
#[derive(Clone)]
struct HostClient {
    client: Arc<Client>,
    client_cert: bool,
}

struct Session<'a> {
    client: Arc<Client>,
    /// Whether `client` presents a client certificate (for the words of a refusal).
    client_cert: bool,
    auth: RegistryAuth,
    reference: &'a Reference,
    image: String,
    op: Op,
    config: &'a DockerConfig,
}

/// Why one download attempt failed.
enum Attempt {
    Net(OciDistributionError),
    Stream(std::io::Error),
    Final(Error),
}

impl Session<'_> {
    fn oci_ref(&self, digest: Option<&Digest>) -> OciRef {
        let r = self.reference;
        match (digest, &r.tag) {
            (Some(d), _) => {
                OciRef::with_digest(r.registry.clone(), r.repository.clone(), d.to_string())
            }
            (None, Some(t)) => {
                OciRef::with_tag(r.registry.clone(), r.repository.clone(), t.clone())
            }
            (None, None) => OciRef::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                "latest".to_owned(),
            ),
        }
    }

    fn bad_document(&self, why: String) -> Error {
        Error::BadDocument {
            op: self.op,
            image: self.image.clone(),
            why,
        }
    }

    fn mismatch(&self, what: &'static str, expected: &Digest, actual: &Digest) -> Error {
        Error::DigestMismatch {
            op: self.op,
            image: self.image.clone(),
            what,
            expected: expected.to_string(),
            actual: actual.to_string(),
        }
    }

    /// Downloads one blob into the store with retries.
    async fn fetch_blob(&self, desc: &Descriptor, store: &Store) -> Result<(), Error> {
        let oref = self.oci_ref(self.reference.digest.as_ref());
        let transient_attempt = |a: &Attempt| match a {
            Attempt::Net(e) => transient(e),
            Attempt::Stream(e) => digest_error(e).is_none(),
            Attempt::Final(_) => false,
        };
        retry(transient_attempt, || self.download(&oref, desc, store))
            .await
            .map_err(|a| match a {
                Attempt::Net(e) => self.error(e),
                Attempt::Stream(e) => match digest_error(&e) {
                    Some(DigestError::VerificationError { actual, .. }) => Error::DigestMismatch {
                        op: self.op,
                        image: self.image.clone(),
                        what: "blob",
                        expected: desc.digest.to_string(),
                        actual: actual.clone(),
                    },
                    _ => Error::Registry {
                        op: self.op,
                        image: self.image.clone(),
                        why: format!("download of {} interrupted: {e}", desc.digest),
                    },
                },
                Attempt::Final(e) => e,
            })
    }

    /// One attempt: streams the blob through a blocking writer task into the store, so that
    /// a layer is never held in memory and disk writes never block the async threads.
    async fn download(
        &self,
        oref: &OciRef,
        desc: &Descriptor,
        store: &Store,
    ) -> Result<(), Attempt> {
        let digest = desc.digest.to_string();
        let mut stream = self
            .client
            .pull_blob_stream(oref, digest.as_str())
            .await
            .map_err(Attempt::Net)?;
        let store_err = |source| {
            Attempt::Final(Error::Store {
                op: self.op,
                image: self.image.clone(),
                source,
            })
        };
        let writer = store.blob_writer().map_err(store_err)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            let mut written = Ok(());
            while let Some(chunk) = rx.blocking_recv() {
                if let Err(e) = writer.write_all(&chunk) {
                    written = Err(e);
                    break;
                }
            }
            (writer, written)
        });
        let mut received = 0u64;
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if received > desc.size {
                        failure = Some(Attempt::Final(Error::Registry {
                            op: self.op,
                            image: self.image.clone(),
                            why: format!(
                                "blob {} is larger than the {} bytes its descriptor says",
                                desc.digest, desc.size
                            ),
                        }));
                        break;
                    }
                    // A closed channel means the writer failed; its error is reported below.
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(Attempt::Stream(e));
                    break;
                }
            }
        }
        drop(tx);
        let joined = task.await;
        if let Some(f) = failure {
            return Err(f);
        }
        let (writer, written) = joined.map_err(|e| store_err(io_error(e)))?;
        written.map_err(|e| store_err(io_error(e)))?;
        let expected = desc.digest;
        tokio::task::spawn_blocking(move || writer.commit(Some(&expected)))
            .await
            .map_err(|e| store_err(io_error(e)))?
            .map_err(store_err)?;
        Ok(())
    }

    /// Turns an oci-client error into one that says what to do.
    fn error(&self, e: OciDistributionError) -> Error {
        use OciDistributionError as E;
        let op = self.op;
        let image = self.image.clone();
        let unauthorized = |why: String| Error::Unauthorized {
            op,
            image: image.clone(),
            why,
            config: self.config.path().to_owned(),
        };
        let not_found = |why: String| Error::NotFound {
            op,
            image: image.clone(),
            why,
        };
        let other = |why: String| Error::Registry {
            op,
            image: image.clone(),
            why,
        };
        if let Some(problem) = rustls_error(&e)
            .and_then(|t| tls::describe(&self.reference.registry, t, self.client_cert))
        {
            return Error::Certificate {
                op,
                image,
                registry: self.reference.registry.clone(),
                problem,
            };
        }
        match e {
            E::RequestError(re) if re.is_connect() || re.is_timeout() => Error::Connect {
                op,
                image: image.clone(),
                registry: self.reference.registry.clone(),
                why: connect_reason(&re, re.is_timeout()),
            },
            E::UnauthorizedError { .. } => unauthorized("authentication required".to_owned()),
            E::AuthenticationFailure(reason) => {
                let reason = reason.trim();
                unauthorized(if reason.is_empty() {
                    "authentication failed".to_owned()
                } else {
                    format!("authentication failed: {reason}")
                })
            }
            E::RegistryError { envelope, .. } => {
                let msg = envelope
                    .errors
                    .iter()
                    .map(|e| {
                        if e.message.is_empty() {
                            format!("{:?}", e.code)
                        } else {
                            e.message.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let has = |f: fn(&OciErrorCode) -> bool| envelope.errors.iter().any(|e| f(&e.code));
                if has(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                    unauthorized(msg)
                } else if has(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::ManifestBlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found(msg)
                } else {
                    other(msg)
                }
            }
            E::ServerError {
                code: 401 | 403, ..
            } => unauthorized("authentication required".to_owned()),
            E::ServerError { code: 404, url, .. } => not_found(format!("404 from {url}")),
            E::ServerError { code, url, message } => {
                other(format!("HTTP {code} from {url}: {}", message.trim()))
            }
            E::DigestError(DigestError::VerificationError { expected, actual }) => {
                Error::DigestMismatch {
                    op,
                    image: image.clone(),
                    what: "manifest",
                    expected,
                    actual,
                }
            }
            e => other(e.to_string()),
        }
    }
}

fn io_error(e: impl std::error::Error + Send + Sync + 'static) -> kiln_snapshot::Error {
    kiln_snapshot::Error::Io {
        op: "write blob",
        path: std::path::PathBuf::from("(blob store)"),
        source: std::io::Error::other(e),
    }
}

/// Retry on 5xx, timeouts and broken connections; never on 4xx.
fn transient(e: &OciDistributionError) -> bool {
    // A certificate refused now is refused on every attempt.
    if rustls_error(e).is_some() {
        return false;
    }
    match e {
        OciDistributionError::RequestError(re) => {
            re.is_connect() || re.is_timeout() || re.is_body() || re.is_request() || re.is_decode()
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500,
        OciDistributionError::IoError(io) => digest_error(io).is_none(),
        _ => false,
    }
}

/// The TLS error behind `e`, if any. Its io and request variants are `transparent`: their
/// `source()` is their inner error's source, so the inner error itself is looked at first.
fn rustls_error(e: &OciDistributionError) -> Option<&rustls::Error> {
    match e {
        OciDistributionError::IoError(io) => tls::rustls_error(io),
        OciDistributionError::RequestError(re) => tls::rustls_error(re),
        other => tls::rustls_error(other),
    }
}

fn digest_error(e: &std::io::Error) -> Option<&DigestError> {
    e.get_ref()?.downcast_ref::<DigestError>()
}

/// The innermost cause of a connection failure, in words (`connection refused`).
fn connect_reason(e: &(dyn std::error::Error + 'static), timeout: bool) -> String {
    if timeout {
        return "timed out".to_owned();
    }
    let mut cur = Some(e);
    let mut last = e.to_string();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => return "timed out".to_owned(),
                _ => {}
            }
        }
        last = err.to_string();
        cur = err.source();
    }
    last
}

/// Runs `f` up to [`ATTEMPTS`] times while its error is transient, backing off exponentially.
async fn retry<T, E, F, Fut>(transient: impl Fn(&E) -> bool, mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_DELAY;
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < ATTEMPTS && transient(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retry_is_bounded_and_skips_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<(), bool> = retry(
            |t: &bool| *t,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(true)
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), bool> = retry(
            |t: &bool| *t,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(false)
            },
        )
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn server_errors_are_transient_client_errors_not() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert!(transient(&server(503)));
        assert!(!transient(&server(404)));
        assert!(!transient(&server(429)));
        assert!(!transient(&OciDistributionError::UnauthorizedError {
            url: String::new()
        }));
    }

    #[test]
    fn certificate_errors_are_not_retried() {
        let io = |e: std::io::Error| OciDistributionError::IoError(std::io::Error::other(e));
        assert!(transient(&io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(!transient(&io(refused)));
    }
}
