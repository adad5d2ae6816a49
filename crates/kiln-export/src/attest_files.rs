//! Attestations of the filesystem outputs (`type=local`, `type=tar`), as BuildKit's local and
//! tar exporters write them (`exporter/local/fs.go` `CreateFS`): each attestation is one file
//! beside the result's files (`provenance.json`, `sbom.spdx.json`; under each platform's
//! directory for several platforms), holding the whole in-toto statement, indented JSON,
//! mode `0600`. Its subjects are the output's regular files, each by its path and sha256.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use kiln_snapshot::{Snapshot, Store};
use kiln_types::Digest;

use crate::{io_err, Error, Result, TarDest};

/// The file BuildKit names a provenance attestation in a filesystem output.
pub const PROVENANCE_FILE: &str = "provenance.json";
/// The file of an SBOM attestation (BuildKit's scanner writes `sbom.spdx.json`).
pub const SBOM_FILE: &str = "sbom.spdx.json";

/// One attestation written as a file of a filesystem output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestationFile {
    /// Its name, at the top of the output (or of a platform's directory).
    pub name: String,
    /// The in-toto statement.
    pub bytes: Vec<u8>,
}

/// Every regular file under `root`, by its path relative to `root` (`etc/passwd`), with its
/// sha256: the subjects of a filesystem output's statements. Sorted by path; symlinks,
/// directories and special files are not subjects (BuildKit walks regular files only).
pub fn file_subjects(root: &Path) -> Result<Vec<(String, Digest)>> {
    let mut out = Vec::new();
    walk(root, "", &mut out)?;
    Ok(out)
}

fn walk(root: &Path, rel: &str, out: &mut Vec<(String, Digest)>) -> Result<()> {
    let dir = root.join(rel);
    let mut names = fs::read_dir(&dir)
        .and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .map_err(io_err(&dir))?;
    names.sort();
    for name in names {
        let name = name.to_string_lossy();
        let rel_path = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&rel_path);
        let ft = fs::symlink_metadata(&full)
            .map_err(io_err(&full))?
            .file_type();
        if ft.is_dir() {
            walk(root, &rel_path, out)?;
        } else if ft.is_file() {
            out.push((rel_path, digest_file(&full)?));
        }
    }
    Ok(())
}

fn digest_file(path: &Path) -> Result<Digest> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut w = kiln_types::Sha256Writer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(w.finish());
        }
        w.update(&buf[..n]);
    }
}

/// Writes `files` into `dir` as BuildKit does: mode `0600`, modified at `mtime` (the build's
/// time, or `SOURCE_DATE_EPOCH`). Two attestations of one name are refused, as BuildKit
/// refuses them ("duplicate attestation path name").
pub fn write_attestation_files(
    dir: &Path,
    files: &[AttestationFile],
    mtime: SystemTime,
) -> Result<()> {
    for (i, f) in files.iter().enumerate() {
        if files[..i].iter().any(|o| o.name == f.name) {
            return Err(Error::Options(format!(
                "duplicate attestation path name {}",
                f.name
            )));
        }
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    for f in files {
        let path = dir.join(&f.name);
        // A file of the result of that name is replaced, as BuildKit's merged tree shows the
        // attestation.
        let _ = fs::remove_file(&path);
        fs::write(&path, &f.bytes).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io_err(&path))?;
        let file = fs::File::options()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_modified(mtime).map_err(io_err(&path))?;
    }
    Ok(())
}

/// `type=local` with attestations: the result's files, then the attestation files.
pub fn export_local_attested(
    store: &Store,
    snapshot: &Snapshot,
    dest: &Path,
    files: &[AttestationFile],
    mtime: SystemTime,
) -> Result<()> {
    crate::export_local(store, snapshot, dest)?;
    write_attestation_files(dest, files, mtime)
}

/// `type=tar` with attestations: the result's files and the attestation files in one tar,
/// gathered in a private directory of the store first (removed afterwards).
pub fn export_tar_attested(
    store: &Store,
    snapshot: &Snapshot,
    dest: &TarDest,
    files: &[AttestationFile],
    mtime: SystemTime,
) -> Result<()> {
    let scratch = store.temp_dir("attested-tar")?;
    let res = (|| {
        let root = scratch.join("root");
        export_local_attested(store, snapshot, &root, files, mtime)?;
        crate::export_tar_dir(&root, dest)
    })();
    let _ = fs::remove_dir_all(&scratch);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn subjects_are_regular_files_by_relative_path() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc/sub")).unwrap();
        fs::write(d.path().join("etc/sub/f"), "x").unwrap();
        fs::write(d.path().join("a"), "hello").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let got = file_subjects(d.path()).unwrap();
        assert_eq!(
            got,
            [
                ("a".to_owned(), Digest::of(b"hello")),
                ("etc/sub/f".to_owned(), Digest::of(b"x")),
            ]
        );
    }

    #[test]
    fn files_are_private_at_the_given_time_and_names_unique() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(PROVENANCE_FILE), "old").unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let f = |name: &str, b: &str| AttestationFile {
            name: name.to_owned(),
            bytes: b.as_bytes().to_vec(),
        };
        write_attestation_files(d.path(), &[f(PROVENANCE_FILE, "{}"), f(SBOM_FILE, "[]")], t)
            .unwrap();
        let md = fs::metadata(d.path().join(PROVENANCE_FILE)).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(md.mtime(), 1_700_000_000);
        assert_eq!(
            fs::read_to_string(d.path().join(PROVENANCE_FILE)).unwrap(),
            "{}"
        );
        assert_eq!(fs::read_to_string(d.path().join(SBOM_FILE)).unwrap(), "[]");
        let err = write_attestation_files(d.path(), &[f("x", "1"), f("x", "2")], t).unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate attestation path name x"),
            "{err}"
        );
    }
}
