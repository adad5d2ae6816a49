//! `type=tar`: the result's filesystem as one tar stream, as BuildKit's tar exporter writes it
//! (paths relative to the root, directories before their contents, the files' own modes,
//! owners and times; no image metadata).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use kiln_snapshot::{ReadView, Snapshot, Store};

use crate::{io_err, Result};

/// Where `type=tar` writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TarDest {
    /// `dest=FILE`: written beside it, then renamed.
    File(std::path::PathBuf),
    /// `dest=-`: standard output.
    Stdout,
}

/// Writes the filesystem of `snapshot` as a tar to `dest`.
pub fn export_tar(store: &Store, snapshot: &Snapshot, dest: &TarDest) -> Result<()> {
    let view = ReadView::new(store, snapshot)?;
    export_tar_dir(view.path(), dest)
}

/// Writes the directory `root` as a tar to `dest` (a multi-platform result gathered into one
/// tree, `linux_amd64/...`, as BuildKit's tar exporter writes it).
pub fn export_tar_dir(root: &Path, dest: &TarDest) -> Result<()> {
    match dest {
        TarDest::Stdout => {
            let stdout = io::stdout().lock();
            let mut w =
                write_tree(root, io::BufWriter::new(stdout)).map_err(io_err(Path::new("-")))?;
            w.flush().map_err(io_err(Path::new("-")))
        }
        TarDest::File(path) => {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            let tmp = path.with_extension("kiln-tmp");
            let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            let res = write_tree(root, io::BufWriter::new(file)).and_then(|mut w| {
                w.flush()?;
                w.get_ref().sync_all()
            });
            if let Err(e) = res {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(path)(e));
            }
            fs::rename(&tmp, path).map_err(io_err(path))
        }
    }
}

/// The tar of everything under `root`, entries sorted by name (each directory before its
/// contents) so that the same tree gives the same bytes.
fn write_tree<W: Write>(root: &Path, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    append_dir(&mut b, root, "")?;
    b.into_inner()
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, root: &Path, rel: &str) -> io::Result<()> {
    let mut names = fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort();
    for name in names {
        let name = name.to_string_lossy();
        let rel_path = if rel.is_empty() {
            name.into_owned()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&rel_path);
        b.append_path_with_name(&full, &rel_path)?;
        if fs::symlink_metadata(&full)?.is_dir() {
            append_dir(b, root, &rel_path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_is_sorted_with_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("b/c")).unwrap();
        fs::write(d.path().join("b/c/f"), "x").unwrap();
        fs::write(d.path().join("a"), "hello").unwrap();
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let bytes = write_tree(d.path(), Vec::new()).unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32, Option<String>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "b", "b/c", "b/c/f", "l"]);
        assert_eq!(entries[0].1 & 0o7777, 0o750);
        assert_eq!(entries[4].2.as_deref(), Some("a"));
    }
}
