//! `type=local` caches over a remote builder. The cache directory is the client's: it is synced
//! to the daemon as a context is (a mirror, incremental), the daemon reads a `--cache-from`
//! from its mirror and exports a `--cache-to` into a session copy of the mirror (the mirror is
//! a `source.local` cache other sessions may read: never changed in place). What the export
//! changed goes back to the client ([`Delta`]), which applies it as a local export writes a
//! layout ([`CacheWriter`]): new blobs first, `index.json` last by a rename, removals after.
//! The client then lists the directory again and the daemon's mirror takes the new files from
//! the copy ([`update_mirror`]), so the next build sends none of them back.
//!
//! Also here: [`ClientPaths`], which shows the client's paths in what goes back instead of the
//! daemon's mirrors and session directories.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::Error;

/// Where a layout keeps its blobs.
const BLOBS: &str = "blobs/sha256";
/// The files of a layout's top a cache export writes, in the order they are replaced.
const TOP: [&str; 2] = ["oci-layout", "index.json"];

// --- the daemon's side ---------------------------------------------------------------------

/// Makes `dest` a copy of the mirror tree `from` (an empty directory when None): hard links
/// where the filesystem allows (a cache export never writes a file in place, it adds files by
/// rename and unlinks others, so the mirror's files stay as they are), copies otherwise. Only
/// directories and regular files: a layout holds nothing else the export reads.
pub(crate) fn copy_tree(from: Option<&Path>, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let Some(from) = from else { return Ok(()) };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(from.join(&rel))? {
            let e = e?;
            let rel = rel.join(e.file_name());
            let kind = e.file_type()?;
            if kind.is_dir() {
                std::fs::create_dir(dest.join(&rel))?;
                stack.push(rel);
            } else if kind.is_file() {
                let (src, dst) = (from.join(&rel), dest.join(&rel));
                if std::fs::hard_link(&src, &dst).is_err() {
                    std::fs::copy(&src, &dst)?;
                }
            }
        }
    }
    Ok(())
}

/// What a cache export changed in a layout: the files to send (new blobs, then `oci-layout`
/// and `index.json` when they changed) and the blobs it removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    /// Layout paths, in the order the client must write them.
    pub send: Vec<String>,
    /// `blobs/sha256/<name>` paths the client removes last.
    pub remove: Vec<String>,
}

/// The names in `dir`'s blob directory (none when it has none).
fn blob_names(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let entries = match std::fs::read_dir(dir.join(BLOBS)) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            continue;
        }
        if let Ok(name) = e.file_name().into_string() {
            names.insert(name);
        }
    }
    Ok(names)
}

/// The changes from the layout `before` (the client's directory as synced; None: it had
/// none) to `after` (the copy the export wrote).
pub(crate) fn delta(before: Option<&Path>, after: &Path) -> std::io::Result<Delta> {
    let old = match before {
        Some(b) => blob_names(b)?,
        None => BTreeSet::new(),
    };
    let new = blob_names(after)?;
    let mut d = Delta::default();
    for name in new.difference(&old) {
        // A temporary file of a failed export is nobody's blob.
        if !name.starts_with('.') && after.join(BLOBS).join(name).is_file() {
            d.send.push(format!("{BLOBS}/{name}"));
        }
    }
    for top in TOP {
        let Ok(now) = std::fs::read(after.join(top)) else {
            continue;
        };
        let was = before.and_then(|b| std::fs::read(b.join(top)).ok());
        if was.as_deref() != Some(&now[..]) {
            d.send.push(top.to_owned());
        }
    }
    d.remove = old
        .difference(&new)
        .map(|name| format!("{BLOBS}/{name}"))
        .collect();
    Ok(d)
}

/// Brings the mirror at `mirror_dir` to the client's directory as listed after it applied an
/// export (`entries`), taking the files it lacks from the export's `copy` rather than from the
/// client. Returns the files taken.
pub(crate) fn update_mirror(
    mirror_dir: &Path,
    copy: &Path,
    entries: Vec<kiln_contextsync::Entry>,
) -> Result<u64, kiln_contextsync::Error> {
    let mut mirror = kiln_contextsync::Mirror::open(mirror_dir)?;
    let mut plan = mirror.plan(entries)?;
    for path in plan.send().to_vec() {
        // The plan checked the path (relative, no `..`); the copy holds no symlink.
        let full = copy.join(&path);
        let mut file = std::fs::File::open(&full).map_err(|e| kiln_contextsync::Error::Io {
            op: "read",
            path: full.clone(),
            source: e,
        })?;
        mirror.write_file(&mut plan, &path, &mut file)?;
    }
    mirror.finish(plan).map(|s| s.files)
}

/// Daemon paths (mirrors, session directories) and the client's names for them: what goes
/// back to the client (step names, messages, warnings) shows the client's paths, as a local
/// build shows them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientPaths(Vec<(String, String)>);

impl ClientPaths {
    /// Shows `daemon` as `client`.
    pub(crate) fn add(&mut self, daemon: &Path, client: &str) {
        let daemon = daemon.display().to_string();
        if client.is_empty() || daemon.is_empty() {
            return;
        }
        self.0.push((daemon, client.to_owned()));
        // The longest first: a path that extends another is replaced whole.
        self.0
            .sort_by_key(|(daemon, _)| std::cmp::Reverse(daemon.len()));
    }

    /// `text` with every daemon path replaced by the client's.
    pub(crate) fn show(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (daemon, client) in &self.0 {
            if out.contains(daemon.as_str()) {
                out = out.replace(daemon.as_str(), client);
            }
        }
        out
    }

    /// [`ClientPaths::show`] in place.
    pub(crate) fn fix(&self, text: &mut String) {
        if !self.0.is_empty() {
            *text = self.show(text);
        }
    }
}

// --- the client's side ---------------------------------------------------------------------

/// A layout path the daemon may write: a blob (its name is its sha256) or a file of the top.
fn checked(path: &str) -> Option<Option<String>> {
    if TOP.contains(&path) {
        return Some(None);
    }
    let hex = path.strip_prefix(BLOBS)?.strip_prefix('/')?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| Some(hex.to_owned()))
}

/// A file of the export being received.
struct Receiving {
    path: String,
    /// The blob's expected sha256 (hex); None for a top file.
    blob: Option<String>,
    hash: Sha256,
    tmp: tempfile::NamedTempFile,
}

/// Applies the changes of one cache export to the client's directory `dir`, crash-safely:
/// each blob is written beside its place, checked against its name and renamed in as it
/// completes; `oci-layout` and `index.json` wait for [`CacheWriter::finish`], which renames
/// them in and only then removes the blobs the export dropped. A reader sees the old cache or
/// the new one.
pub(crate) struct CacheWriter {
    dir: PathBuf,
    current: Option<Receiving>,
    staged: Vec<(String, tempfile::NamedTempFile)>,
}

impl CacheWriter {
    /// Writes into `dir` (made when the first file comes).
    pub(crate) fn new(dir: PathBuf) -> CacheWriter {
        CacheWriter {
            dir,
            current: None,
            staged: Vec::new(),
        }
    }

    fn protocol(why: String) -> Error {
        Error::Protocol {
            addr: String::new(),
            why,
        }
    }

    /// One piece of `path`; `eof` ends the file.
    pub(crate) fn write(&mut self, path: &str, data: &[u8], eof: bool) -> Result<(), Error> {
        let mut file = match self.current.take() {
            Some(r) if r.path == path => r,
            Some(r) => {
                return Err(Self::protocol(format!(
                    "cache file {path:?} started before {:?} ended",
                    r.path
                )))
            }
            None => {
                let blob = checked(path).ok_or_else(|| {
                    Self::protocol(format!("{path:?} is not a file of a cache layout"))
                })?;
                let parent = match blob {
                    Some(_) => self.dir.join(BLOBS),
                    None => self.dir.clone(),
                };
                std::fs::create_dir_all(&parent).map_err(|e| Error::io("create", &parent, e))?;
                let tmp = tempfile::Builder::new()
                    .prefix(".kiln-cache-")
                    .tempfile_in(&parent)
                    .map_err(|e| Error::io("create a file in", &parent, e))?;
                Receiving {
                    path: path.to_owned(),
                    blob,
                    hash: Sha256::new(),
                    tmp,
                }
            }
        };
        file.hash.update(data);
        file.tmp
            .write_all(data)
            .map_err(|e| Error::io("write", file.tmp.path(), e))?;
        if !eof {
            self.current = Some(file);
            return Ok(());
        }
        // A temporary file is private (0600); a layout's files are read by whoever reads
        // the directory, as a local export leaves them.
        use std::os::unix::fs::PermissionsExt;
        let f = file.tmp.as_file();
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write", file.tmp.path(), e))?;
        let dest = self.dir.join(&file.path);
        match &file.blob {
            Some(hex) => {
                let got: String = file
                    .hash
                    .finalize()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if got != *hex {
                    return Err(Self::protocol(format!(
                        "cache blob {} arrived with content of digest sha256:{got}",
                        file.path
                    )));
                }
                file.tmp
                    .persist(&dest)
                    .map_err(|e| Error::io("write", &dest, e.error))?;
            }
            None => self.staged.push((file.path, file.tmp)),
        }
        Ok(())
    }

    /// Every file came: the top files are renamed in, then the dropped blobs removed.
    pub(crate) fn finish(&mut self, remove: &[String]) -> Result<(), Error> {
        if let Some(r) = &self.current {
            return Err(Self::protocol(format!(
                "the cache export ended during {:?}",
                r.path
            )));
        }
        // `oci-layout` before `index.json`, whatever order they came in.
        for top in TOP {
            if let Some(i) = self.staged.iter().position(|(p, _)| p == top) {
                let (path, tmp) = self.staged.remove(i);
                let dest = self.dir.join(path);
                tmp.persist(&dest)
                    .map_err(|e| Error::io("write", &dest, e.error))?;
            }
        }
        for path in remove {
            let name = path
                .strip_prefix(BLOBS)
                .and_then(|n| n.strip_prefix('/'))
                .filter(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains('/'))
                .ok_or_else(|| Self::protocol(format!("{path:?} is not a blob to remove")))?;
            let full = self.dir.join(BLOBS).join(name);
            match std::fs::remove_file(&full) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &full, e)),
            }
        }
        Ok(())
    }
}

/// One `type=local` export of a remote build as the client receives it: its writer, the
/// directory's local context, and with `ignore-error=true` the warning a failure became (the
/// rest of that export is then skipped, and the build goes on, as locally).
pub(crate) struct CacheSink {
    writer: CacheWriter,
    dest: PathBuf,
    /// The directory's local context (name, absolute path), whose listing goes back once the
    /// export is applied.
    pub(crate) context: Option<(String, PathBuf)>,
    ignore_error: bool,
    /// The warning an ignored failure became.
    pub(crate) warning: Option<String>,
}

impl CacheSink {
    /// The export into `dest` (as the client named it).
    pub(crate) fn new(
        dest: PathBuf,
        context: Option<(String, PathBuf)>,
        ignore_error: bool,
    ) -> CacheSink {
        CacheSink {
            writer: CacheWriter::new(dest.clone()),
            dest,
            context,
            ignore_error,
            warning: None,
        }
    }

    fn failed(&mut self, e: Error) -> Result<(), Error> {
        if !self.ignore_error {
            return Err(e);
        }
        // The words of a local export's ignored failure.
        self.warning = Some(format!(
            "exporting cache to {}: {e} (ignored: ignore-error=true)",
            self.dest.display()
        ));
        Ok(())
    }

    /// One piece of file `path` of the export.
    pub(crate) fn data(&mut self, path: &str, data: &[u8], eof: bool) -> Result<(), Error> {
        if self.warning.is_some() {
            return Ok(());
        }
        match self.writer.write(path, data, eof) {
            Ok(()) => Ok(()),
            Err(e) => self.failed(e),
        }
    }

    /// The export's end: what it dropped is removed.
    pub(crate) fn done(&mut self, remove: &[String]) -> Result<(), Error> {
        if self.warning.is_some() {
            return Ok(());
        }
        match self.writer.finish(remove) {
            Ok(()) => Ok(()),
            Err(e) => self.failed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn write(dir: &Path, rel: &str, content: &[u8]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn an_export_into_a_copy_leaves_the_mirror_alone_and_its_delta_rebuilds_the_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let (mirror, copy, client) = (
            tmp.path().join("mirror"),
            tmp.path().join("copy"),
            tmp.path().join("client"),
        );
        let (a, b, c) = (hex(b"a"), hex(b"b"), hex(b"c"));
        for dir in [&mirror, &client] {
            write(dir, &format!("blobs/sha256/{a}"), b"a");
            write(dir, &format!("blobs/sha256/{b}"), b"b");
            write(dir, "index.json", b"{\"old\":1}");
            write(dir, "oci-layout", b"{}");
            write(dir, "README", b"not the layout's");
        }
        copy_tree(Some(&mirror), &copy).unwrap();
        // What an export does: a new blob and index by rename, a dropped blob unlinked.
        write(&copy, &format!("blobs/sha256/{c}"), b"c");
        write(&copy, "blobs/sha256/.x.tmp", b"half");
        let new_index = copy.join(".index.tmp");
        std::fs::write(&new_index, b"{\"new\":2}").unwrap();
        std::fs::rename(&new_index, copy.join("index.json")).unwrap();
        std::fs::remove_file(copy.join(format!("blobs/sha256/{a}"))).unwrap();

        assert_eq!(
            std::fs::read(mirror.join("index.json")).unwrap(),
            b"{\"old\":1}"
        );
        assert!(mirror.join(format!("blobs/sha256/{a}")).is_file());
        let d = delta(Some(&mirror), &copy).unwrap();
        assert_eq!(
            d,
            Delta {
                send: vec![format!("blobs/sha256/{c}"), "index.json".to_owned()],
                remove: vec![format!("blobs/sha256/{a}")],
            }
        );

        let mut w = CacheWriter::new(client.clone());
        for path in &d.send {
            let content = std::fs::read(copy.join(path)).unwrap();
            let (one, two) = content.split_at(content.len() / 2);
            w.write(path, one, false).unwrap();
            w.write(path, two, true).unwrap();
        }
        // The index waits for the end: a reader still sees the old cache.
        assert_eq!(
            std::fs::read(client.join("index.json")).unwrap(),
            b"{\"old\":1}"
        );
        w.finish(&d.remove).unwrap();
        assert_eq!(
            std::fs::read(client.join("index.json")).unwrap(),
            b"{\"new\":2}"
        );
        let names = blob_names(&client).unwrap();
        assert_eq!(names, [b.clone(), c.clone()].into_iter().collect());
        assert!(client.join("README").is_file());
        // Nothing left behind.
        assert_eq!(std::fs::read_dir(&client).unwrap().count(), 4);
    }

    #[test]
    fn a_first_export_sends_everything_and_the_client_refuses_what_is_not_a_layout_file() {
        let tmp = tempfile::tempdir().unwrap();
        let copy = tmp.path().join("copy");
        copy_tree(None, &copy).unwrap();
        let a = hex(b"a");
        write(&copy, &format!("blobs/sha256/{a}"), b"a");
        write(&copy, "index.json", b"{}");
        write(&copy, "oci-layout", b"{}");
        let d = delta(None, &copy).unwrap();
        assert_eq!(
            d.send,
            vec![
                format!("blobs/sha256/{a}"),
                "oci-layout".to_owned(),
                "index.json".to_owned()
            ]
        );
        assert!(d.remove.is_empty());

        let client = tmp.path().join("client");
        let mut w = CacheWriter::new(client.clone());
        for bad in [
            "../x",
            "blobs/sha256/../../x",
            "blobs/sha256/ABC",
            "other.json",
        ] {
            assert!(w.write(bad, b"x", true).is_err(), "{bad}");
        }
        // A blob whose bytes are not its name's never lands.
        let e = w
            .write(&format!("blobs/sha256/{a}"), b"not a", true)
            .unwrap_err();
        assert!(e.to_string().contains("digest"), "{e}");
        assert!(!client.join(format!("blobs/sha256/{a}")).exists());
        let mut w = CacheWriter::new(client.clone());
        assert!(w.finish(&["blobs/sha256/../../etc".to_owned()]).is_err());
    }

    #[test]
    fn client_paths_replace_daemon_paths_longest_first() {
        let mut p = ClientPaths::default();
        p.add(Path::new("/d/sessions/s1/cache-1.d"), "./one");
        p.add(Path::new("/d/sessions/s1/cache-10.d"), "./ten");
        p.add(Path::new("/d/contexts/ab/tree"), "/home/me/layout");
        assert_eq!(
            p.show("FROM oci-layout:///d/contexts/ab/tree@sha256:00 and /d/sessions/s1/cache-10.d/index.json"),
            "FROM oci-layout:///home/me/layout@sha256:00 and ./ten/index.json"
        );
    }
}
