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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_plugin_sdk::graph::Op;
use kiln_plugin_sdk::proto::{ErrorKind, PluginError, PrimitiveRequest, PrimitiveResponse};
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

/// A file name that stays in the output directory, or `None`.
fn safe_name(name: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        None
    } else {
        Some(name.to_owned())
    }
}

/// The last segment of the URL path (query and fragment removed), percent-decoded.
pub fn url_basename(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    safe_name(&percent_decode(last))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `filename` (or `filename*=UTF-8''...`) of a `Content-Disposition` header.
fn disposition_name(h: &str) -> Option<String> {
    let mut plain = None;
    for part in h.split(';').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let v = v.trim().trim_matches('"');
                let v = v.split_once("''").map_or(v, |(_, rest)| rest);
                if let Some(n) = base_of(&percent_decode(v)) {
                    return Some(n);
                }
            }
            "filename" => plain = base_of(v.trim().trim_matches('"')),
            _ => {}
        }
    }
    plain
}

fn base_of(name: &str) -> Option<String> {
    safe_name(name.rsplit(['/', '\\']).next().unwrap_or_default())
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`, the IMF-fixdate of RFC 9110).
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let f: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, zone] = f.as_slice() else {
        return None;
    };
    if *zone != "GMT" {
        return None;
    }
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = months.iter().position(|x| x == mon)? as i64 + 1;
    let d: i64 = day.parse().ok()?;
    let y: i64 = year.parse().ok()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    if !(1..=31).contains(&d) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Something that says whether the build was cancelled (the host, or nothing in tests).
pub trait Cancel {
    /// Whether to stop.
    fn cancelled(&self) -> bool;
}

impl Cancel for Host<'_> {
    fn cancelled(&self) -> bool {
        Host::cancelled(self)
    }
}

/// Downloads `p.url` into `output`; returns the path of the written file.
pub fn download(p: &Payload, output: &Path, cancel: &dyn Cancel) -> Result<PathBuf, Error> {
    let url = p.url.clone();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::InvalidInput(format!(
            "the http primitive fetches http:// and https:// URLs only, not {url}"
        )));
    }
    let pinned = p.checksum.as_deref().map(parse_checksum).transpose()?;
    let named = match &p.filename {
        Some(n) => Some(safe_name(n).ok_or_else(|| {
            Error::InvalidInput(format!("invalid file name {n:?} for the download of {url}"))
        })?),
        None => None,
    };
    let agent = agent();
    let transfer = |reason: String| Error::Transfer {
        url: url.clone(),
        reason,
    };
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| transfer(e.to_string()))?;
    let status = resp.status();
    if status.as_u16() >= 400 {
        return Err(Error::Status {
            url: url.clone(),
            status: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or_default()
            )
            .trim_end()
            .to_owned(),
        });
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let name = named
        .or_else(|| header("content-disposition").and_then(|h| disposition_name(&h)))
        .or_else(|| url_basename(&url))
        .unwrap_or_else(|| "__unnamed__".to_owned());
    let modified = header("last-modified").and_then(|h| parse_http_date(&h));
    let expected_len = header("content-length").and_then(|h| h.parse::<u64>().ok());

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
    let mut body = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(transfer(format!("reading the body: {e}"))),
        };
        let chunk = &buf[..n];
        if let Some(h) = hasher.as_mut() {
            h.update(chunk);
        }
        file.write_all(chunk).map_err(|e| io_err("write", e))?;
        total += n as u64;
        // Ask about cancellation every 4 MiB.
        if total % (4 << 20) < n as u64 && cancel.cancelled() {
            return Err(Error::Cancelled(url.clone()));
        }
    }
    if let Some(len) = expected_len {
        if len != total {
            return Err(transfer(format!(
                "the body has {total} bytes, Content-Length said {len}"
            )));
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

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(10)
        .timeout_connect(Some(Duration::from_secs(30)))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// What the URL's content is now, as far as the server says without sending it: its ETag, or
/// its Last-Modified and length; with neither, the digest of the content itself. `None` when a
/// checksum pins the content (the op's own text then decides). kiln keys the op on it, so a
/// changed remote file is fetched again, as BuildKit revalidates URLs on every build.
pub fn current_version(p: &Payload) -> Result<Option<String>, Error> {
    if p.checksum.is_some() {
        return Ok(None);
    }
    let url = p.url.clone();
    let transfer = |reason: String| Error::Transfer {
        url: url.clone(),
        reason,
    };
    let status_err = |status: ureq::http::StatusCode| Error::Status {
        url: url.clone(),
        status: format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or_default()
        )
        .trim_end()
        .to_owned(),
    };
    let agent = agent();
    let head = agent
        .head(&url)
        .call()
        .map_err(|e| transfer(e.to_string()))?;
    if head.status().as_u16() >= 400 && head.status().as_u16() != 405 {
        return Err(status_err(head.status()));
    }
    let header = |name: &str| {
        head.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if head.status().is_success() {
        if let Some(etag) = header("etag") {
            return Ok(Some(format!("etag:{etag}")));
        }
        if let Some(lm) = header("last-modified") {
            let len = header("content-length").unwrap_or_default();
            return Ok(Some(format!("last-modified:{lm}:{len}")));
        }
    }
    // Nothing to revalidate with: the content itself is the version.
    let mut resp = agent
        .get(&url)
        .call()
        .map_err(|e| transfer(e.to_string()))?;
    if resp.status().as_u16() >= 400 {
        return Err(status_err(resp.status()));
    }
    let mut hasher = sha2::Sha256::new();
    let mut body = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body.read(&mut buf).map_err(|e| transfer(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Some(format!("sha256:{hex}")))
}

/// The payload of a `http` op.
fn payload(op: &Op) -> Result<Payload, Error> {
    let Op::Custom(c) = op else {
        return Err(Error::InvalidInput(format!(
            "the http primitive runs custom ops, not {} ops",
            op.kind()
        )));
    };
    serde_json::from_str(&c.payload)
        .map_err(|e| Error::InvalidInput(format!("invalid http payload: {e}")))
}

/// Runs one `http` op.
pub fn execute(req: &PrimitiveRequest, cancel: &dyn Cancel) -> Result<PrimitiveResponse, Error> {
    let p = payload(&req.op)?;
    download(&p, Path::new(&req.output), cancel)?;
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
        execute(&req, host).map_err(PluginError::from)
    }

    fn cache_key(
        &self,
        req: kiln_plugin_sdk::proto::CacheKeyRequest,
        _host: &Host<'_>,
    ) -> Result<kiln_plugin_sdk::proto::CacheKeyResponse, PluginError> {
        let p = payload(&req.op).map_err(PluginError::from)?;
        Ok(kiln_plugin_sdk::proto::CacheKeyResponse {
            key: current_version(&p).map_err(PluginError::from)?,
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
