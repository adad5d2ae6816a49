//! The docker-archive tarball (`docker save` format, what `docker load` reads): one directory
//! per layer holding its uncompressed `layer.tar`, the config as `<hex>.json`, and a
//! `manifest.json` naming them with the image's tags; written to a file, or streamed into
//! `docker load` (`--load`).

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_snapshot::Store;
use kiln_types::reference::Reference;

use crate::{io_err, Error, Image, Result};

/// Writes `image` as a docker-archive tarball at `dest`, tagged with `names` (from `-t`).
pub fn export_docker(store: &Store, image: &Image, names: &[String], dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let repo_tags = repo_tags(names)?;
    let tmp = dest.with_extension("kiln-tmp");
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let res = with_scratch(store, |scratch| {
        let mut w = write(
            store,
            image,
            &repo_tags,
            dest,
            scratch,
            io::BufWriter::new(file),
        )?;
        w.flush().map_err(io_err(dest))
    });
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).map_err(io_err(dest))
}

/// `--load`: streams `image` as a docker-archive into `docker load` (the `docker` CLI, so
/// `DOCKER_HOST` and docker's contexts apply), tagged with `names`. The daemon is asked first,
/// so that a missing one gives one clear error rather than a broken pipe.
pub fn load_docker(store: &Store, image: &Image, names: &[String]) -> Result<()> {
    let repo_tags = repo_tags(names)?;
    docker_daemon_answers()?;
    let dest = Path::new("docker load");
    docker_load(|stdin| {
        with_scratch(store, |scratch| {
            let mut w = write(
                store,
                image,
                &repo_tags,
                dest,
                scratch,
                io::BufWriter::new(stdin),
            )?;
            w.flush().map_err(io_err(dest))
        })
    })
}

/// `--load` through a remote builder: streams a docker-archive tarball the daemon wrote (and
/// the client received) into `docker load`, as [`load_docker`] streams one it writes.
pub fn load_docker_tarball(tarball: &Path) -> Result<()> {
    docker_daemon_answers()?;
    let mut file = fs::File::open(tarball).map_err(io_err(tarball))?;
    docker_load(|stdin| {
        let mut stdin = io::BufWriter::new(stdin);
        io::copy(&mut file, &mut stdin).map_err(io_err(Path::new("docker load")))?;
        stdin.flush().map_err(io_err(Path::new("docker load")))
    })
}

/// Runs `docker load`, `feed` writing the archive into its stdin, and checks that it loaded.
fn docker_load(feed: impl FnOnce(std::process::ChildStdin) -> Result<()>) -> Result<()> {
    let load_err = |why: String| Error::Load(why);
    let mut child = Command::new("docker")
        .arg("load")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| load_err(format!("cannot run `docker load`: {e}")))?;
    let stdin = child.stdin.take().expect("stdin was piped");
    // Read docker's answers while writing, so that a full pipe never stalls either side.
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let written = feed(stdin);
    let status = child
        .wait()
        .map_err(|e| load_err(format!("waiting for `docker load`: {e}")))?;
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(load_err(format!(
            "`docker load` failed ({status}): {}",
            err.trim()
        )));
    }
    written?;
    if !out.contains("Loaded image") {
        return Err(load_err(format!(
            "`docker load` loaded nothing: {}{}",
            out.trim(),
            err.trim()
        )));
    }
    Ok(())
}

/// Asks the docker daemon the `docker` CLI reaches (`DOCKER_HOST`, docker's context) for its
/// version: an error names where it looked when none answers.
pub fn docker_daemon_answers() -> Result<()> {
    let probe = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Load(format!("cannot run the docker CLI ({e}): install docker")))?;
    if !probe.status.success() {
        return Err(Error::Load(format!(
            "no docker daemon answers{}: {}",
            std::env::var("DOCKER_HOST")
                .map(|h| format!(" at DOCKER_HOST={h}"))
                .unwrap_or_default(),
            String::from_utf8_lossy(&probe.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `f` with a scratch directory of the store, removed afterwards.
fn with_scratch<T>(store: &Store, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let scratch = store.temp_dir("docker-export")?;
    let result = f(&scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// Writes the archive into `out`. Each layer is unpacked to a file in `scratch` first: a tar
/// entry needs its size up front.
fn write<W: Write>(
    store: &Store,
    image: &Image,
    repo_tags: &[String],
    dest: &Path,
    scratch: &Path,
    out: W,
) -> Result<W> {
    let mut b = tar::Builder::new(out);
    {
        let mut layer_paths = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(&image.config.rootfs.diff_ids) {
            let path = format!("{}/layer.tar", diff_id.hex());
            if layer_paths.contains(&path) {
                continue;
            }
            let unpacked = scratch.join(diff_id.hex());
            let out = fs::File::create(&unpacked).map_err(io_err(&unpacked))?;
            let mut tar_stream = store.open_layer_tar(&layer.digest, &layer.media_type)?;
            // What is shipped is the uncompressed tar: it must hash to the layer's diff id.
            let mut out = HashingWriter {
                out,
                hash: kiln_types::Sha256Writer::default(),
            };
            let copied = io::copy(&mut tar_stream, &mut out);
            if copied.is_err() || out.hash.clone().finish() != *diff_id {
                // A blob changed on disk is the likely cause (a broken gzip stream, other
                // content): say so by its digest, so that the caller can rebuild it.
                if let kiln_snapshot::verify::BlobState::Changed(m) =
                    store.check_blob(&layer.digest)?
                {
                    return Err(kiln_snapshot::Error::BlobChanged(m).into());
                }
                copied.map_err(io_err(&unpacked))?;
                return Err(Error::Layer {
                    layer: layer.digest,
                    why: format!(
                        "unpacks to {}, not to its diff id {diff_id}",
                        out.hash.finish()
                    ),
                });
            }
            let mut out = out.out;
            out.flush().map_err(io_err(&unpacked))?;
            let f = fs::File::open(&unpacked).map_err(io_err(&unpacked))?;
            let size = f.metadata().map_err(io_err(&unpacked))?.len();
            append(&mut b, &path, size, f).map_err(io_err(dest))?;
            fs::remove_file(&unpacked).map_err(io_err(&unpacked))?;
            layer_paths.push(path);
        }
        let config_name = format!("{}.json", image.manifest_doc.config.digest.hex());
        let config = store.read_blob_verified(&image.manifest_doc.config.digest)?;
        append(&mut b, &config_name, config.len() as u64, config.as_slice())
            .map_err(io_err(dest))?;
        let manifest = serde_json::json!([{
            "Config": config_name,
            "RepoTags": repo_tags,
            "Layers": image
                .config
                .rootfs
                .diff_ids
                .iter()
                .map(|d| format!("{}/layer.tar", d.hex()))
                .collect::<Vec<_>>(),
        }]);
        let bytes = serde_json::to_vec(&manifest).expect("a JSON value always serializes");
        append(
            &mut b,
            "manifest.json",
            bytes.len() as u64,
            bytes.as_slice(),
        )
        .map_err(io_err(dest))?;
    }
    b.into_inner().map_err(io_err(dest))
}

/// Writes through to `out`, hashing what it writes.
struct HashingWriter {
    out: fs::File,
    hash: kiln_types::Sha256Writer,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl io::Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    b.append_data(&mut h, path, data)
}

/// The `RepoTags` of `names`, as `docker save` writes them: familiar names with a tag
/// (`latest` when none: docker's tags always carry one). A name pinned by digest alone has no
/// tag, and `docker load` refuses a digest there, so it is left out.
fn repo_tags(names: &[String]) -> Result<Vec<String>> {
    let mut tags = Vec::new();
    for name in names {
        let r = Reference::parse_normalized(name)?;
        if r.tag.is_some() || r.digest.is_none() {
            tags.push(r.familiar_tagged());
        }
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tags_are_familiar_and_tagged() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let pinned = format!("app@{}", kiln_types::Digest::of(b"x"));
        assert_eq!(
            repo_tags(&names(&[
                "app:7",
                "app",
                "docker.io/library/app:1",
                "localhost:5000/x/app",
                &pinned,
            ]))
            .unwrap(),
            [
                "app:7",
                "app:latest",
                "app:1",
                "localhost:5000/x/app:latest"
            ]
        );
        let err = repo_tags(&names(&["App"])).unwrap_err().to_string();
        assert!(err.contains("must be lowercase"), "{err}");
    }
}
