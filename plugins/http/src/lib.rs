//! The `http` primitive plugin: downloads one URL into the op's output directory, as BuildKit's
//! HTTP source does for `ADD https://host/path /dest`.
//!
//! Payload (the `Custom` op's JSON): `{"url": "...", "checksum": "sha256:<hex>"?, "filename":
//! "name"?}`. The file is written as `<output>/<filename>` with mode 0600 (BuildKit's default);
//! without `filename` the name comes from `Content-Disposition`, then the URL path, then
//! `__unnamed__`. Its modification time is the `Last-Modified` header when the server sends
//! one. Redirects are followed; a 4xx/5xx answer, a short body or a checksum mismatch fails the
//! step naming the URL. `checksum` accepts `sha256:`, `sha384:` and `sha512:` digests.
//!
//! Timeouts: the network may stay silent for at most 30 s (or `KILN_HTTP_TIMEOUT`, e.g. `2s`,
//! `500ms`, `5m`) in each phase — resolving, connecting, sending the request, receiving the
//! response headers, and between two reads of the body — so a stalled server fails the step
//! naming the URL, while a slow download that keeps moving is never cut off. The transfer runs
//! on a worker thread; the plugin's thread waits for it and asks the host every 100 ms whether
//! the build was cancelled (Ctrl-C, or another step failed), and gives up at once when it was.
//!
//! Cache semantics: with a checksum the payload pins the content, so the op's key is exact.
//! Without one, `primitive.cache_key` revalidates the URL on every build (ETag, else
//! Last-Modified and length, else the digest of the content), as BuildKit does, so a changed
//! file is fetched again and an unchanged one stays cached.
//!
//! Architecture invariant: depends on `kiln-plugin-sdk` and third-party crates only; blocking
//! I/O (ureq), no async runtime.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use kiln_plugin_sdk::graph::Op;
use kiln_plugin_sdk::proto::{ErrorKind, PluginError, PrimitiveRequest, PrimitiveResponse};
pub use kiln_plugin_sdk::Cancel;
use kiln_plugin_sdk::{Host, Primitive};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The op payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `algo:hex` digest the content must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Name of the file in the output; see the crate docs when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Why a download failed; every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A payload this plugin cannot run.
    #[error("{0}")]
    InvalidInput(String),
    /// The server answered with an error status.
    #[error("failed to download {url}: server answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// Status code and reason.
        status: String,
    },
    /// The content does not have the pinned digest.
    #[error("checksum mismatch for {url}: expected {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// What `--checksum` asked for.
        expected: String,
        /// What was downloaded.
        actual: String,
    },
    /// Connecting, or reading the body, failed.
    #[error("failed to download {url}: {reason}")]
    Transfer {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Writing the file failed.
    #[error("downloading {url}: {what} {}: {source}", path.display())]
    Io {
        /// The URL.
        url: String,
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server stayed silent for longer than the timeout.
    #[error(
        "failed to download {url}: timed out after {} {waiting} \
         (set KILN_HTTP_TIMEOUT to wait longer)",
        show_duration(*after)
    )]
    Timeout {
        /// The URL.
        url: String,
        /// What kiln was waiting for.
        waiting: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The build was cancelled during the download.
    #[error("the download of {0} was cancelled")]
    Cancelled(String),
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::InvalidInput(_) | Error::Checksum { .. } => ErrorKind::InvalidInput,
            Error::Status { status, .. } if status.starts_with("404") => ErrorKind::NotFound,
            Error::Cancelled(_) => ErrorKind::Cancelled,
            _ => ErrorKind::Internal,
        };
        PluginError::new(kind, e.to_string())
    }
}

/// A parsed `--checksum`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    Sha256,
    Sha384,
    Sha512,
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(a: Algo) -> Self {
        match a {
            Algo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algo::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha384(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    fn finish(self) -> String {
        let (name, bytes) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha384(h) => ("sha384", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{name}:{hex}")
    }
}

/// `algo:hex` → the algorithm and the normalized digest text.
fn parse_checksum(s: &str) -> Result<(Algo, String), Error> {
    let bad = || {
        Error::InvalidInput(format!(
            "invalid checksum {s:?}: expected sha256:<64 hex digits> (or sha384:, sha512:)"
        ))
    };
    let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
    let (a, len) = match algo {
        "sha256" => (Algo::Sha256, 64),
        "sha384" => (Algo::Sha384, 96),
        "sha512" => (Algo::Sha512, 128),
        _ => return Err(bad()),
    };
    if hex.len() != len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok((a, format!("{algo}:{}", hex.to_ascii_lowercase())))
}

/// The last segment of the URL path (query and fragment removed), percent-decoded (the SDK's
/// [`kiln_plugin_sdk::url::basename`]).
pub fn url_basename(url: &str) -> Option<String> {
    kiln_plugin_sdk::url::basename(url)
}

/// `filename` (or `filename*=UTF-8''...`) of a `Content-Disposition` header.
fn disposition_name(h: &str) -> Option<String> {
    kiln_plugin_sdk::url::content_disposition_filename(h)
}

/// How long the network may stay silent in one phase of a download when `KILN_HTTP_TIMEOUT`
/// does not say otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that sets the timeout (`30s`, `500ms`, `2m`, or plain seconds).
pub const TIMEOUT_VAR: &str = "KILN_HTTP_TIMEOUT";

/// How often a waiting download asks whether the build was cancelled: often enough that Ctrl-C
/// stops a step well within a second, rarely enough to cost nothing.
const POLL: Duration = Duration::from_millis(100);

/// `30s`, `500ms`, `2m` or `30` (seconds) → the duration; `None` for anything else or zero
/// (ureq would time out at once).
pub fn parse_timeout(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

/// The timeout `KILN_HTTP_TIMEOUT` asks for, or [`DEFAULT_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration, Error> {
    match std::env::var(TIMEOUT_VAR) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => parse_timeout(&v).ok_or_else(|| {
            Error::InvalidInput(format!(
                "invalid {TIMEOUT_VAR}={v:?}: expected a duration such as 30s, 500ms or 2m"
            ))
        }),
    }
}

fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What the transfer thread hands the waiting plugin thread, in this order: the response head,
/// body chunks, the end (or a failure at any point).
enum Msg {
    Head(ureq::http::response::Parts),
    Chunk(Vec<u8>),
    End,
    Failed(ureq::Error),
}

/// One HTTP request running on its own thread. ureq's blocking reads cannot be interrupted, so
/// the plugin's thread waits on a channel instead, where it can notice cancellation; the
/// transfer thread is bounded by ureq's timeouts, so once abandoned it ends within one timeout
/// (its next send fails, or its read times out); it may outlive the plugin call because kiln
/// never unloads a plugin library (abi_stable keeps it open for the life of the process). It
/// only touches the network: every file is written by the caller, so nothing lands in the
/// output after the call has returned.
struct Exchange<'a> {
    rx: Receiver<Msg>,
    url: &'a str,
    cancel: &'a dyn Cancel,
    timeout: Duration,
    /// The head has arrived: a silent server is now a stalled body.
    got_head: bool,
    last_check: Instant,
}

impl<'a> Exchange<'a> {
    /// Starts a GET (or a HEAD when `body` is false).
    fn start(
        url: &'a str,
        body: bool,
        cancel: &'a dyn Cancel,
        timeout: Duration,
    ) -> Result<Self, Error> {
        if cancel.cancelled() {
            return Err(Error::Cancelled(url.to_owned()));
        }
        // A few chunks in flight keep the socket busy while the caller writes and hashes.
        let (tx, rx) = mpsc::sync_channel(4);
        let (agent, target) = (agent(timeout), url.to_owned());
        std::thread::Builder::new()
            .name("kiln-http".into())
            .spawn(move || transfer(&agent, &target, body, &tx))
            .map_err(|e| Error::Transfer {
                url: url.to_owned(),
                reason: format!("cannot start the transfer thread: {e}"),
            })?;
        Ok(Exchange {
            rx,
            url,
            cancel,
            timeout,
            got_head: false,
            last_check: Instant::now(),
        })
    }

    /// The next message, failures turned into errors; polls for cancellation while waiting.
    fn next(&mut self) -> Result<Msg, Error> {
        loop {
            if self.last_check.elapsed() >= POLL {
                self.last_check = Instant::now();
                if self.cancel.cancelled() {
                    return Err(Error::Cancelled(self.url.to_owned()));
                }
            }
            match self.rx.recv_timeout(POLL) {
                Ok(Msg::Failed(e)) => return Err(self.failure(e)),
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(self.out_of_order()),
            }
        }
    }

    /// The response's status and headers.
    fn head(&mut self) -> Result<ureq::http::response::Parts, Error> {
        match self.next()? {
            Msg::Head(parts) => {
                self.got_head = true;
                Ok(parts)
            }
            _ => Err(self.out_of_order()),
        }
    }

    /// The next piece of the body; `None` at its end.
    fn chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match self.next()? {
            Msg::Chunk(c) => Ok(Some(c)),
            Msg::End => Ok(None),
            _ => Err(self.out_of_order()),
        }
    }

    fn out_of_order(&self) -> Error {
        Error::Transfer {
            url: self.url.to_owned(),
            reason: "the transfer thread stopped without an answer (internal error)".into(),
        }
    }

    fn failure(&self, e: ureq::Error) -> Error {
        use ureq::Timeout as T;
        let url = self.url.to_owned();
        let waiting = match e {
            ureq::Error::Timeout(T::Resolve) => "resolving the host name",
            ureq::Error::Timeout(T::Connect) => "connecting",
            ureq::Error::Timeout(T::SendRequest | T::SendBody | T::PerWrite) => {
                "sending the request"
            }
            ureq::Error::Timeout(T::RecvResponse) => "waiting for the response headers",
            ureq::Error::Timeout(T::PerRead) if !self.got_head => {
                "waiting for the response headers"
            }
            ureq::Error::Timeout(_) => "waiting for the next bytes of the body",
            e if self.got_head => {
                return Error::Transfer {
                    url,
                    reason: format!("reading the body: {e}"),
                }
            }
            e => {
                return Error::Transfer {
                    url,
                    reason: e.to_string(),
                }
            }
        };
        Error::Timeout {
            url,
            waiting,
            after: self.timeout,
        }
    }
}

/// The transfer thread: the request, then the body in chunks, until done or nobody listens.
fn transfer(agent: &ureq::Agent, url: &str, body: bool, tx: &SyncSender<Msg>) {
    let resp = if body {
        agent.get(url).call()
    } else {
        agent.head(url).call()
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Msg::Failed(e));
            return;
        }
    };
    let (parts, content) = resp.into_parts();
    let failed = parts.status.as_u16() >= 400;
    if tx.send(Msg::Head(parts)).is_err() || !body || failed {
        return;
    }
    let mut reader = content.into_reader();
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let msg = match reader.read(&mut buf) {
            Ok(0) => Msg::End,
            Ok(n) => {
                buf.truncate(n);
                Msg::Chunk(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Msg::Failed(ureq::Error::from(e)),
        };
        let last = !matches!(msg, Msg::Chunk(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

fn status_error(url: &str, status: ureq::http::StatusCode) -> Error {
    Error::Status {
        url: url.to_owned(),
        status: format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        )
        .trim_end()
        .to_owned(),
    }
}

fn header(parts: &ureq::http::response::Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Downloads `p.url` into `output`, failing when the server stays silent for `timeout`;
/// returns the path of the written file.
pub fn download(
    p: &Payload,
    output: &Path,
    cancel: &dyn Cancel,
    timeout: Duration,
) -> Result<PathBuf, Error> {
    let url = p.url.clone();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::InvalidInput(format!(
            "the http primitive fetches http:// and https:// URLs only, not {url}"
        )));
    }
    let pinned = p.checksum.as_deref().map(parse_checksum).transpose()?;
    let named = match &p.filename {
        Some(n) => Some(kiln_plugin_sdk::url::safe_file_name(n).ok_or_else(|| {
            Error::InvalidInput(format!("invalid file name {n:?} for the download of {url}"))
        })?),
        None => None,
    };
    let mut exchange = Exchange::start(&url, true, cancel, timeout)?;
    let head = exchange.head()?;
    if head.status.as_u16() >= 400 {
        return Err(status_error(&url, head.status));
    }
    let name = named
        .or_else(|| header(&head, "content-disposition").and_then(|h| disposition_name(&h)))
        .or_else(|| url_basename(&url))
        .unwrap_or_else(|| "__unnamed__".to_owned());
    let modified = header(&head, "last-modified").and_then(|h| httpdate::parse_http_date(&h).ok());
    let expected_len = header(&head, "content-length").and_then(|h| h.parse::<u64>().ok());

    let path = output.join(&name);
    let io_err = |what: &'static str, e: io::Error| Error::Io {
        url: url.clone(),
        what,
        path: path.clone(),
        source: e,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err("create", e))?;
    let mut hasher = pinned.as_ref().map(|(a, _)| Hasher::new(*a));
    let mut total: u64 = 0;
    while let Some(chunk) = exchange.chunk()? {
        if let Some(h) = hasher.as_mut() {
            h.update(&chunk);
        }
        file.write_all(&chunk).map_err(|e| io_err("write", e))?;
        total += chunk.len() as u64;
    }
    if let Some(len) = expected_len {
        if len != total {
            return Err(Error::Transfer {
                url,
                reason: format!("the body has {total} bytes, Content-Length said {len}"),
            });
        }
    }
    file.sync_all().map_err(|e| io_err("sync", e))?;
    if let (Some(h), Some((_, expected))) = (hasher, pinned) {
        let actual = h.finish();
        if actual != expected {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(Error::Checksum {
                url,
                expected,
                actual,
            });
        }
    }
    if let Some(t) = modified {
        file.set_modified(t).map_err(|e| io_err("set mtime", e))?;
    }
    Ok(path)
}

/// An agent whose every network phase is bounded by `timeout`. There is no deadline for the
/// whole body: a large download may take as long as it needs while bytes keep arriving.
fn agent(timeout: Duration) -> ureq::Agent {
    let t = Some(timeout);
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(10)
        .timeout_resolve(t)
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_recv_response(t)
        .timeout_per_read(t)
        .timeout_per_write(t)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// What the URL's content is now, as far as the server says without sending it: its ETag, or
/// its Last-Modified and length; with neither, the digest of the content itself. `None` when a
/// checksum pins the content (the op's own text then decides). kiln keys the op on it, so a
/// changed remote file is fetched again, as BuildKit revalidates URLs on every build.
pub fn current_version(
    p: &Payload,
    cancel: &dyn Cancel,
    timeout: Duration,
) -> Result<Option<String>, Error> {
    if p.checksum.is_some() {
        return Ok(None);
    }
    let url = p.url.as_str();
    let head = Exchange::start(url, false, cancel, timeout)?.head()?;
    if head.status.as_u16() >= 400 && head.status.as_u16() != 405 {
        return Err(status_error(url, head.status));
    }
    if head.status.is_success() {
        if let Some(etag) = header(&head, "etag") {
            return Ok(Some(format!("etag:{etag}")));
        }
        if let Some(lm) = header(&head, "last-modified") {
            let len = header(&head, "content-length").unwrap_or_default();
            return Ok(Some(format!("last-modified:{lm}:{len}")));
        }
    }
    // Nothing to revalidate with: the content itself is the version.
    let mut exchange = Exchange::start(url, true, cancel, timeout)?;
    let resp = exchange.head()?;
    if resp.status.as_u16() >= 400 {
        return Err(status_error(url, resp.status));
    }
    let mut hasher = Hasher::new(Algo::Sha256);
    while let Some(chunk) = exchange.chunk()? {
        hasher.update(&chunk);
    }
    Ok(Some(hasher.finish()))
}

/// The payload of a `http` op.
fn payload(op: &Op) -> Result<Payload, Error> {
    kiln_plugin_sdk::payload::custom(op, "http").map_err(|e| Error::InvalidInput(e.to_string()))
}

/// Runs one `http` op.
pub fn execute(
    req: &PrimitiveRequest,
    cancel: &dyn Cancel,
    timeout: Duration,
) -> Result<PrimitiveResponse, Error> {
    let p = payload(&req.op)?;
    download(&p, Path::new(&req.output), cancel, timeout)?;
    Ok(PrimitiveResponse { exit_code: None })
}

/// The plugin's primitive: `http` ops.
#[derive(Debug, Default)]
pub struct Http;

impl Primitive for Http {
    fn execute(
        &self,
        req: PrimitiveRequest,
        host: &Host<'_>,
    ) -> Result<PrimitiveResponse, PluginError> {
        let timeout = timeout_from_env()?;
        execute(&req, host, timeout).map_err(PluginError::from)
    }

    fn cache_key(
        &self,
        req: kiln_plugin_sdk::proto::CacheKeyRequest,
        host: &Host<'_>,
    ) -> Result<kiln_plugin_sdk::proto::CacheKeyResponse, PluginError> {
        let p = payload(&req.op)?;
        let timeout = timeout_from_env()?;
        Ok(kiln_plugin_sdk::proto::CacheKeyResponse {
            key: current_version(&p, host, timeout)?,
        })
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "http",
    version: env!("CARGO_PKG_VERSION"),
    primitive: Http => ["http"],
}

#[cfg(test)]
mod tests;
