//! Main build contexts that are not a local directory, as buildx and BuildKit's dockerui take
//! them: a git URL (`kiln build https://host/org/repo.git#ref:subdir`), an http(s) URL (a tar
//! archive, maybe compressed, or a plain Dockerfile), and `kiln build -` (the same two, read
//! from stdin).
//!
//! Each is fetched before the build, through the `git` and `http` primitive plugins (the only
//! code that reaches the network), into a scratch directory of the store, and then built as a
//! local context: `-f` names a file inside it, its `.dockerignore` applies. An archive is
//! extracted by ADD's extraction code, with the same refusals of hostile entries. A body that is
//! no archive is the Dockerfile, with an empty context (BuildKit's `DetectHTTPContext`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_graph::{CustomOp, Op};
use kiln_plugin_host::HostServices;
use kiln_plugin_sdk::proto::{LogLevel, PrimitiveRequest};
use kiln_solver::{CancellationToken, Event, ProgressSink};
use kiln_types::Digest;

use crate::{Engine, Error};

/// Most bytes `kiln build -` reads from stdin: a context archive that large is a mistake (or
/// hostile), and everything read is written to the store's disk first.
pub const MAX_STDIN_CONTEXT_BYTES: u64 = 4 << 30;

/// A main build context that must be fetched or read before the build.
pub enum RemoteContext {
    /// A git repository (`https://host/repo.git#ref:subdir`, `git@host:repo.git#ref`,
    /// `git://`, `ssh://`, with BuildKit's query string).
    Git(String),
    /// An http(s) URL that is not a git repository: a tar archive or a Dockerfile.
    Http(String),
    /// `kiln build -`: a tar archive or a Dockerfile, read from the stream to its end.
    Stdin(Box<dyn Read + Send>),
}

impl std::fmt::Debug for RemoteContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RemoteContext::Git(u) => write!(f, "Git({u:?})"),
            RemoteContext::Http(u) => write!(f, "Http({u:?})"),
            RemoteContext::Stdin(_) => f.write_str("Stdin"),
        }
    }
}

impl RemoteContext {
    /// The context argument `arg` as a remote context, as buildx's `IsRemoteURL` decides: a git
    /// URL, or any other `http://`/`https://` URL. `None` for a local path (and for `-`, which
    /// the caller turns into [`RemoteContext::Stdin`] with its stream).
    pub fn from_url(arg: &str) -> Option<RemoteContext> {
        if kiln_types::git_url::parse(arg).is_some() {
            Some(RemoteContext::Git(arg.to_owned()))
        } else if is_http_url(arg) {
            Some(RemoteContext::Http(arg.to_owned()))
        } else {
            None
        }
    }

    /// How the context is named in messages.
    fn shown(&self) -> String {
        match self {
            RemoteContext::Git(u) | RemoteContext::Http(u) => u.clone(),
            RemoteContext::Stdin(_) => "stdin".to_owned(),
        }
    }
}

fn is_http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Whether `value` is a URL buildx passes to BuildKit as a remote context (a git URL, or an
/// http(s) URL): the frontend fetches such named contexts itself.
pub(crate) fn is_remote_url(value: &str) -> bool {
    is_http_url(value) || kiln_types::git_url::parse(value).is_some()
}

/// A fetched context: its directory and the build file, in a scratch directory of the store
/// that is removed when this is dropped. Keep it until the build (and the printing of its
/// errors, which show Dockerfile lines) is over.
#[derive(Debug)]
pub struct PreparedContext {
    context: PathBuf,
    dockerfile: PathBuf,
    scratch: PathBuf,
}

impl PreparedContext {
    /// The context directory.
    pub fn context(&self) -> &Path {
        &self.context
    }

    /// The build file.
    pub fn dockerfile(&self) -> &Path {
        &self.dockerfile
    }
}

impl Drop for PreparedContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// What a primitive plugin may ask while it fetches the context: whether the build was
/// cancelled, and to show a line of progress.
struct FetchServices<'a> {
    cancel: &'a CancellationToken,
    progress: &'a dyn ProgressSink<Digest>,
    id: Digest,
    name: &'a str,
}

impl HostServices for FetchServices<'_> {
    fn log(&self, level: LogLevel, message: &str) {
        let _ = level;
        self.progress.send(Event::Log {
            id: self.id,
            name: self.name.to_owned(),
            line: message.to_owned(),
        });
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

fn context_error(url: &str, message: impl Into<String>) -> Error {
    Error::RemoteContext {
        url: url.to_owned(),
        message: message.into(),
    }
}

/// Copies `reader` into `dest` (a new file), failing once more than `limit` bytes come.
fn copy_bounded(reader: &mut dyn Read, dest: &Path, limit: u64) -> Result<u64, Error> {
    let mut file = std::fs::File::create(dest).map_err(|e| Error::io("create", dest, e))?;
    let copied = std::io::copy(&mut reader.take(limit + 1), &mut file)
        .map_err(|e| context_error("stdin", format!("reading the build context: {e}")))?;
    if copied > limit {
        return Err(context_error(
            "stdin",
            format!(
                "the build context on stdin is larger than {} MiB, the most kiln reads; pass a \
                 directory or a URL instead",
                limit >> 20
            ),
        ));
    }
    file.flush().map_err(|e| Error::io("write", dest, e))?;
    Ok(copied)
}

/// The build file of a fetched context: `file` as given when absolute (a local file, as
/// buildx reads an absolute `-f` on the client), otherwise resolved inside `context` as the
/// kernel would inside a chroot (a symlinked Dockerfile cannot point out of the context).
fn dockerfile_in(context: &Path, file: Option<&Path>, shown: &str) -> Result<PathBuf, Error> {
    let name = match file {
        Some(f) if f.is_absolute() => return Ok(f.to_owned()),
        Some(f) => f.to_string_lossy().into_owned(),
        None => "Dockerfile".to_owned(),
    };
    let path = crate::rootpath::resolve(context, &name, true)
        .map_err(|e| context_error(shown, format!("finding {name}: {e}")))?;
    if !path.is_file() {
        return Err(context_error(
            shown,
            format!("it holds no file {name:?} to build (name another with -f, relative to the context)"),
        ));
    }
    Ok(path)
}

impl Engine {
    /// Fetches (or reads) `remote` into a scratch directory of the store and returns the local
    /// context to build, with its build file: `file` (`-f`) names it inside the context
    /// (default `Dockerfile`); an absolute `file` is a local file. `build_args` may say
    /// `BUILDKIT_CONTEXT_KEEP_GIT_DIR=1` to keep `.git` in a git context, as in BuildKit.
    pub async fn prepare_context(
        &self,
        remote: RemoteContext,
        file: Option<&Path>,
        build_args: &BTreeMap<String, String>,
        progress: Arc<dyn ProgressSink<Digest>>,
        cancel: CancellationToken,
    ) -> Result<PreparedContext, Error> {
        let shown = remote.shown();
        let name = match &remote {
            RemoteContext::Git(u) => format!("[internal] load git source {u}"),
            RemoteContext::Http(u) => format!("[internal] load remote build context {u}"),
            RemoteContext::Stdin(_) => "[internal] load build context from stdin".to_owned(),
        };
        let id = Digest::of(format!("internal:remote-context:{shown}").as_bytes());
        progress.send(Event::Started {
            id,
            name: name.clone(),
        });
        let started = std::time::Instant::now();
        let scratch = self.store.temp_dir("remote-context")?;
        // Owned by `prepared` from here on, so that every failure below removes it.
        let mut prepared = PreparedContext {
            context: scratch.join("context"),
            dockerfile: PathBuf::new(),
            scratch,
        };
        let keep_git_dir = build_args
            .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
        let plugins = self.plugins.clone();
        let (task_progress, task_cancel, task_name) =
            (progress.clone(), cancel.clone(), name.clone());
        let file = file.map(Path::to_owned);
        let (context, scratch) = (prepared.context.clone(), prepared.scratch.clone());
        let fetched = tokio::task::spawn_blocking(move || {
            let services = FetchServices {
                cancel: &task_cancel,
                progress: task_progress.as_ref(),
                id,
                name: &task_name,
            };
            fetch(
                &plugins,
                remote,
                &context,
                &scratch,
                file.as_deref(),
                keep_git_dir,
                &services,
            )
        })
        .await
        .map_err(|e| Error::Unsupported(format!("context task failed: {e}")))?;
        match fetched {
            Ok(dockerfile) => {
                prepared.dockerfile = dockerfile;
                progress.send(Event::Done {
                    id,
                    name,
                    duration: started.elapsed(),
                });
                Ok(prepared)
            }
            Err(_) if cancel.is_cancelled() => {
                progress.send(Event::Cancelled { id, name });
                Err(Error::Cancelled)
            }
            Err(e) => {
                progress.send(Event::Error {
                    id,
                    name,
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }
}

/// Runs primitive `primitive` with `payload`, writing into `output`.
fn run_primitive(
    plugins: &kiln_plugin_host::PluginRegistry,
    primitive: &str,
    payload: String,
    output: &Path,
    services: &FetchServices<'_>,
) -> Result<(), Error> {
    let plugin = plugins.primitive(primitive)?;
    std::fs::create_dir_all(output).map_err(|e| Error::io("create", output, e))?;
    let req = PrimitiveRequest::new(
        Op::Custom(CustomOp {
            primitive: primitive.to_owned(),
            payload,
        }),
        Vec::new(),
        output.display().to_string(),
    );
    plugin.primitive_execute(&req, services)?;
    Ok(())
}

/// Fetches `remote` into `context` (using `scratch` for downloads); returns the build file.
fn fetch(
    plugins: &kiln_plugin_host::PluginRegistry,
    remote: RemoteContext,
    context: &Path,
    scratch: &Path,
    file: Option<&Path>,
    keep_git_dir: bool,
    services: &FetchServices<'_>,
) -> Result<PathBuf, Error> {
    let shown = remote.shown();
    let download = scratch.join("download");
    let body = match remote {
        RemoteContext::Git(url) => {
            let git = match kiln_types::git_url::parse(&url) {
                Some(Ok(git)) => git,
                Some(Err(e)) => return Err(context_error(&url, e.to_string())),
                None => return Err(context_error(&url, "not a git URL")),
            };
            let keep = git.keep_git_dir.unwrap_or(keep_git_dir);
            let payload = git
                .payload(keep, git.checksum.as_deref())
                .map_err(|e| context_error(&url, e.to_string()))?;
            let payload = serde_json::to_string(&payload)
                .map_err(|e| context_error(&url, format!("internal error: git payload: {e}")))?;
            // The plugin places the subdir's content at the top of its output: the context.
            run_primitive(plugins, "git", payload, context, services)
                .map_err(|e| context_error(&url, e.to_string()))?;
            return dockerfile_in(context, file, &url);
        }
        RemoteContext::Http(url) => {
            // BuildKit downloads the context as a file named `context`.
            let payload = serde_json::json!({ "url": url, "filename": "context" }).to_string();
            run_primitive(plugins, "http", payload, &download, services)
                .map_err(|e| context_error(&url, e.to_string()))?;
            download.join("context")
        }
        RemoteContext::Stdin(mut reader) => read_stdin(&mut reader, &download)?,
    };
    unpack_body(&body, context, scratch, file, &shown)
}

/// Copies stdin into `download/context`; refuses an empty stdin.
fn read_stdin(reader: &mut dyn Read, download: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(download).map_err(|e| Error::io("create", download, e))?;
    let body = download.join("context");
    if copy_bounded(reader, &body, MAX_STDIN_CONTEXT_BYTES)? == 0 {
        return Err(context_error(
            "stdin",
            "stdin is empty: pipe a tar archive of the context or a Dockerfile into `kiln build -`",
        ));
    }
    Ok(body)
}

impl PreparedContext {
    /// `kiln build -` on the client of a remote builder: stdin (a tar archive or a Dockerfile,
    /// as [`Engine::prepare_context`] takes it) kept in a private (0700) directory of the
    /// system's temporary directory, removed on drop. The client syncs its context as a local
    /// one; no store is needed for that.
    pub fn from_stdin(reader: &mut dyn Read, file: Option<&Path>) -> Result<Self, Error> {
        let scratch = crate::ssh_agent::private_temp_dir("kiln-stdin", "context")?;
        let mut prepared = PreparedContext {
            context: scratch.join("context"),
            dockerfile: PathBuf::new(),
            scratch,
        };
        let body = read_stdin(reader, &prepared.scratch.join("download"))?;
        prepared.dockerfile =
            unpack_body(&body, &prepared.context, &prepared.scratch, file, "stdin")?;
        Ok(prepared)
    }
}

/// Makes the fetched `body` the context: an archive extracted into `context`, anything else
/// the Dockerfile of an empty context. Returns the build file.
fn unpack_body(
    body: &Path,
    context: &Path,
    scratch: &Path,
    file: Option<&Path>,
    shown: &str,
) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(context).map_err(|e| Error::io("create", context, e))?;
    let is_archive = crate::fileop::extract_archive_file(body, context, shown)
        .map_err(|e| context_error(shown, e.to_string()))?;
    if is_archive {
        return dockerfile_in(context, file, shown);
    }
    // Not an archive: the body is the Dockerfile and the context is empty. From stdin, a `-f`
    // would name a second Dockerfile (buildx refuses that too); over http, BuildKit ignores it.
    if shown == "stdin" && file.is_some() {
        return Err(context_error(
            "stdin",
            "ambiguous Dockerfile source: stdin holds a Dockerfile (not a tar archive) and -f names another",
        ));
    }
    let dir = scratch.join("dockerfile");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    let dockerfile = dir.join("Dockerfile");
    std::fs::rename(body, &dockerfile).map_err(|e| Error::io("rename", body, e))?;
    Ok(dockerfile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified_as_buildx_does() {
        for (arg, git) in [
            ("https://h/o/r.git#main:sub", true),
            ("git@github.com:o/r.git", true),
            ("git://127.0.0.1/r.git", true),
            ("ssh://git@h/r.git", true),
            ("https://h/r.git?ref=v1&subdir=a", true),
            ("https://h/ctx.tar.gz", false),
            ("http://127.0.0.1:8080/Dockerfile", false),
        ] {
            match RemoteContext::from_url(arg) {
                Some(RemoteContext::Git(u)) => assert!(git, "{arg} is not git: {u}"),
                Some(RemoteContext::Http(u)) => assert!(!git, "{arg} is git: {u}"),
                other => panic!("{arg}: {other:?}"),
            }
            assert!(is_remote_url(arg), "{arg}");
        }
        for local in [".", "./https", "dir/x.git", "-", "docker-image://alpine"] {
            assert!(RemoteContext::from_url(local).is_none(), "{local}");
            assert!(!is_remote_url(local), "{local}");
        }
    }

    #[test]
    fn stdin_is_read_within_a_bound() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("body");
        let n = copy_bounded(&mut &b"FROM scratch\n"[..], &dest, 64).unwrap();
        assert_eq!(n, 13);
        let big = [b'x'; 65];
        let e = copy_bounded(&mut &big[..], &dest, 64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        assert!(e.contains("stdin"), "{e}");
    }

    fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn fetch_stdin(
        bytes: Vec<u8>,
        file: Option<&Path>,
    ) -> (tempfile::TempDir, Result<PathBuf, Error>) {
        let dir = tempfile::tempdir().unwrap();
        let registry = kiln_plugin_host::PluginRegistry::discover(
            &kiln_plugin_host::SearchPath::new(Vec::new()),
        );
        let cancel = CancellationToken::new();
        let sink = kiln_solver::NoProgress;
        let services = FetchServices {
            cancel: &cancel,
            progress: &sink,
            id: Digest::of(b"t"),
            name: "t",
        };
        let context = dir.path().join("context");
        let r = fetch(
            &registry,
            RemoteContext::Stdin(Box::new(std::io::Cursor::new(bytes))),
            &context,
            dir.path(),
            file,
            false,
            &services,
        );
        (dir, r)
    }

    #[test]
    fn stdin_holds_an_archive_or_a_dockerfile() {
        let (dir, r) = fetch_stdin(
            tar_of(&[("Dockerfile", "FROM scratch\n"), ("sub/a.txt", "a")]),
            None,
        );
        let df = r.unwrap();
        assert_eq!(df, dir.path().join("context/Dockerfile"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("context/sub/a.txt")).unwrap(),
            "a"
        );
        // -f names a file inside the archive.
        let (dir, r) = fetch_stdin(
            tar_of(&[("build/Containerfile", "FROM scratch\n")]),
            Some(Path::new("build/Containerfile")),
        );
        assert_eq!(r.unwrap(), dir.path().join("context/build/Containerfile"));
        let (_dir, r) = fetch_stdin(tar_of(&[("a", "a")]), None);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no file \"Dockerfile\""), "{e}");

        // Text: the Dockerfile, with an empty context.
        let (dir, r) = fetch_stdin(b"FROM scratch\nCOPY . /\n".to_vec(), None);
        let df = r.unwrap();
        assert_eq!(
            std::fs::read_to_string(&df).unwrap(),
            "FROM scratch\nCOPY . /\n"
        );
        assert!(!df.starts_with(dir.path().join("context")));
        assert_eq!(
            std::fs::read_dir(dir.path().join("context"))
                .unwrap()
                .count(),
            0
        );
        let (_dir, r) = fetch_stdin(b"FROM scratch\n".to_vec(), Some(Path::new("Dockerfile")));
        assert!(r
            .unwrap_err()
            .to_string()
            .contains("ambiguous Dockerfile source"));
        let (_dir, r) = fetch_stdin(Vec::new(), None);
        assert!(r.unwrap_err().to_string().contains("stdin is empty"));
    }

    #[test]
    fn hostile_stdin_archives_are_refused_as_add_refuses_them() {
        // A name that climbs out of the context, written raw (the tar crate's builder refuses
        // to write one).
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        bytes.resize(512 * 2, 0);
        bytes.extend_from_slice(&[0; 1024]);
        let (dir, r) = fetch_stdin(bytes, None);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("../escape"), "{e}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn dockerfile_stays_inside_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink("../secret", ctx.join("Dockerfile")).unwrap();
        // The link resolves inside the context, where there is no `secret`.
        let e = dockerfile_in(&ctx, None, "u").unwrap_err().to_string();
        assert!(e.contains("holds no file"), "{e}");
        std::fs::write(ctx.join("secret"), "FROM scratch").unwrap();
        assert_eq!(dockerfile_in(&ctx, None, "u").unwrap(), ctx.join("secret"));
    }

    #[test]
    fn stdin_without_a_store_keeps_a_dockerfile_in_a_private_dir_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let mut input = std::io::Cursor::new(b"FROM scratch\n".to_vec());
        let prepared = PreparedContext::from_stdin(&mut input, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(prepared.dockerfile()).unwrap(),
            "FROM scratch\n"
        );
        assert_eq!(std::fs::read_dir(prepared.context()).unwrap().count(), 0);
        let scratch = prepared.scratch.clone();
        let mode = std::fs::metadata(&scratch).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(prepared);
        assert!(!scratch.exists());

        let e = PreparedContext::from_stdin(&mut std::io::empty(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stdin is empty"), "{e}");
        let mut input = std::io::Cursor::new(b"FROM scratch\n".to_vec());
        let e = PreparedContext::from_stdin(&mut input, Some(Path::new("Other.df")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ambiguous Dockerfile source"), "{e}");
    }
}
