//! `cargo xtask fixtures`: a busybox base image built without internet from Debian's static
//! `/bin/busybox`, as a reproducible OCI layout in `target/kiln-test/fixtures/busybox-oci/`, and
//! pushed to `$KILN_TEST_REGISTRY` as `busybox:latest` when a test registry is up; then the
//! images of other architectures (`goarch`, see goarch.rs), written by the same code.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::workspace::Workspace;

const BUSYBOX: &str = "/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

pub fn run_standalone() -> Result<ExitCode> {
    let ws = Workspace::load()?;
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install it with `apt-get install busybox-static`");
    }
    let registry = std::env::var("KILN_TEST_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty());
    build(&ws, registry.as_deref())?;
    crate::goarch::build(&ws, registry.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// Where the fixture's OCI layout goes.
pub fn layout_dir(ws: &Workspace) -> PathBuf {
    ws.test_dir().join("fixtures").join("busybox-oci")
}

/// One image of a fixture layout: a root filesystem made beforehand, and its config.
pub struct ImageSpec {
    /// The layout's `org.opencontainers.image.ref.name` of the image.
    pub tag: String,
    /// OCI architecture and variant of the config and the index entry.
    pub architecture: String,
    pub variant: Option<String>,
    pub rootfs: PathBuf,
    /// The top-level entries of `rootfs` the layer holds.
    pub entries: Vec<&'static str>,
    pub cmd: Vec<&'static str>,
    /// The history entry's `created_by`.
    pub history: String,
}

/// Writes an OCI layout at `dir` (atomically: built beside it, then renamed) with one
/// single-layer image per spec, each under its tag, and, with `index_tag`, an image index of
/// all of them under that tag. Reproducible: same input, same bytes, same digests. Returns the
/// manifest digests, in order.
pub fn write_layout(
    work: &Path,
    dir: &Path,
    images: &[ImageSpec],
    index_tag: Option<&str>,
) -> Result<Vec<String>> {
    let name = dir
        .file_name()
        .context("a layout directory has a name")?
        .to_string_lossy();
    let tmp = work.join(format!("{name}.tmp"));
    crate::remove_if_exists(&tmp)?;
    let blobs = tmp.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)
        .with_context(|| format!("cannot create {}", blobs.display()))?;

    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for image in images {
        let (manifest, platform) = add_image(work, &blobs, image)?;
        digests.push(manifest.0.clone());
        entries.push((manifest, platform, image.tag.clone()));
    }
    let descriptor = |(digest, size): &(String, u64), media_type: &str| json!({ "mediaType": media_type, "digest": digest, "size": size });
    let mut manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(manifest, platform, tag)| {
            let mut d = descriptor(manifest, MANIFEST_TYPE);
            d["platform"] = platform.clone();
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
            d
        })
        .collect();
    if let Some(tag) = index_tag {
        let nested = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_TYPE,
            "manifests": entries
                .iter()
                .map(|(manifest, platform, _)| {
                    let mut d = descriptor(manifest, MANIFEST_TYPE);
                    d["platform"] = platform.clone();
                    d
                })
                .collect::<Vec<_>>(),
        });
        let nested = add_json_blob(&blobs, &nested)?;
        let mut d = descriptor(&nested, INDEX_TYPE);
        d["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
        manifests.push(d);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": manifests,
    });
    write_json(&tmp.join("index.json"), &index)?;
    write_json(
        &tmp.join("oci-layout"),
        &json!({ "imageLayoutVersion": "1.0.0" }),
    )?;
    crate::remove_if_exists(dir)?;
    std::fs::rename(&tmp, dir)
        .with_context(|| format!("cannot move the layout to {}", dir.display()))?;
    Ok(digests)
}

/// The layer, config and manifest blobs of one image; returns the manifest's (digest, size)
/// and the platform of its index entry.
fn add_image(
    work: &Path,
    blobs: &Path,
    image: &ImageSpec,
) -> Result<((String, u64), serde_json::Value)> {
    let tar = work.join(format!("layer-{}.tar", image.tag));
    crate::run(
        Command::new("tar")
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--format=gnu",
                "-cf",
            ])
            .arg(&tar)
            .arg("-C")
            .arg(&image.rootfs)
            .args(&image.entries),
    )?;
    let diff_id = sha256(&tar)?;
    let gz = tar.with_extension("tar.gz");
    let gz_file =
        std::fs::File::create(&gz).with_context(|| format!("cannot create {}", gz.display()))?;
    crate::run(
        Command::new("gzip")
            .args(["-n", "-c"])
            .arg(&tar)
            .stdout(gz_file),
    )?;
    let layer = add_blob(blobs, &gz)?;
    for scratch in [&tar, &gz] {
        crate::remove_if_exists(scratch)?;
    }

    let mut platform = json!({ "architecture": image.architecture, "os": "linux" });
    if let Some(v) = &image.variant {
        platform["variant"] = json!(v);
    }
    let mut config = platform.clone();
    config["created"] = json!("1970-01-01T00:00:00Z");
    config["config"] = json!({ "Env": [PATH_ENV], "Cmd": image.cmd });
    config["rootfs"] = json!({ "type": "layers", "diff_ids": [diff_id] });
    config["history"] = json!([{
        "created": "1970-01-01T00:00:00Z",
        "created_by": image.history,
    }]);
    let config = add_json_blob(blobs, &config)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.0,
            "size": config.1,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.0,
            "size": layer.1,
        }],
    });
    Ok((add_json_blob(blobs, &manifest)?, platform))
}

/// Builds the layout, checks it with skopeo when installed, and pushes it to `registry` if given.
pub fn build(ws: &Workspace, registry: Option<&str>) -> Result<()> {
    let work = ws.test_dir().join("fixtures");
    let rootfs = work.join("busybox-rootfs");
    let applets = make_rootfs(&rootfs)?;
    let (arch, variant) = oci_arch();
    let dir = layout_dir(ws);
    let digests = write_layout(
        &work,
        &dir,
        &[ImageSpec {
            tag: "latest".to_owned(),
            architecture: arch.to_owned(),
            variant: variant.map(ToOwned::to_owned),
            rootfs,
            entries: vec!["bin", "etc", "root", "tmp"],
            cmd: vec!["sh"],
            history: "cargo xtask fixtures: /bin/busybox from Debian busybox-static".to_owned(),
        }],
        None,
    )?;
    println!(
        "xtask: busybox fixture ({applets} applets, manifest {}) in {}",
        digests[0],
        dir.display()
    );

    let oci_ref = format!("oci:{}:latest", dir.display());
    if crate::find_on_path("skopeo").is_some() {
        crate::output(Command::new("skopeo").args(["inspect", &oci_ref]))
            .context("skopeo refuses the busybox fixture")?;
        if let Some(registry) = registry {
            push(&oci_ref, &format!("{registry}/busybox:latest"))
                .context("cannot push the busybox fixture to the test registry")?;
            println!("xtask: pushed it as {registry}/busybox:latest");
        }
    } else if registry.is_some() {
        bail!("skopeo is needed to push the busybox fixture: `apt-get install skopeo`");
    } else {
        println!("xtask: skopeo is not installed; the fixture was not checked");
    }
    Ok(())
}

/// Copies the layout image `oci_ref` (`oci:DIR:TAG`) to the plain-http registry reference
/// `dest` with skopeo; an index goes with every image it lists.
pub fn push(oci_ref: &str, dest: &str) -> Result<()> {
    crate::run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--insecure-policy",
        "--dest-tls-verify=false",
        oci_ref,
        &format!("docker://{dest}"),
    ]))
}

/// `bin/busybox` and one symlink per applet, `etc/passwd`, `etc/group`, `root`, `tmp` (1777).
/// Returns how many applets it linked.
fn make_rootfs(rootfs: &Path) -> Result<usize> {
    if !is_static(Path::new(BUSYBOX))? {
        bail!(
            "{BUSYBOX} is dynamically linked and would not run in a scratch image: install the \
             static one with `apt-get install busybox-static`"
        );
    }
    crate::remove_if_exists(rootfs)?;
    for (dir, mode) in [
        ("", 0o755),
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
    ] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        set_mode(&path, mode)?;
    }
    let bin = rootfs.join("bin");
    let busybox = bin.join("busybox");
    std::fs::copy(BUSYBOX, &busybox)
        .with_context(|| format!("cannot copy {BUSYBOX} to {}", busybox.display()))?;
    set_mode(&busybox, 0o755)?;

    let list = crate::output(Command::new(BUSYBOX).arg("--list"))?;
    let mut applets = 0;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        if applet.contains('/') {
            bail!("`busybox --list` printed a path, not an applet name: {applet}");
        }
        let link = bin.join(applet);
        symlink("busybox", &link).with_context(|| format!("cannot create {}", link.display()))?;
        applets += 1;
    }

    write_etc(&rootfs.join("etc"))?;
    Ok(applets)
}

/// `passwd` and `group` with root and nobody, in the directory `etc`.
pub fn write_etc(etc: &Path) -> Result<()> {
    for (name, text) in [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n"),
    ] {
        let path = etc.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        set_mode(&path, 0o644)?;
    }
    Ok(())
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))
}

/// Whether an ELF file has no program interpreter (PT_INTERP), i.e. runs without a libc beside it.
fn is_static(path: &Path) -> Result<bool> {
    let elf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a 64-bit little-endian ELF file", path.display());
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(bad());
    }
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = elf
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)?;
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The host's architecture (and variant) in OCI/Go spelling.
fn oci_arch() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "x86" => ("386", None),
        "powerpc64" => ("ppc64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

/// `sha256:<hex>` of a file, by `sha256sum`.
fn sha256(path: &Path) -> Result<String> {
    let out = crate::output(Command::new("sha256sum").arg(path))?;
    match out.split_whitespace().next() {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("sha256:{hex}"))
        }
        _ => bail!("unexpected `sha256sum` output: {out}"),
    }
}

/// Moves `file` into `blobs` under its digest; returns (digest, size).
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64)> {
    let digest = sha256(file)?;
    let hex = digest.trim_start_matches("sha256:");
    let size = file
        .metadata()
        .with_context(|| format!("cannot stat {}", file.display()))?
        .len();
    let dest = blobs.join(hex);
    std::fs::copy(file, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok((digest, size))
}

fn add_json_blob(blobs: &Path, value: &serde_json::Value) -> Result<(String, u64)> {
    let tmp = blobs.join("new.json");
    write_json(&tmp, value)?;
    let blob = add_blob(blobs, &tmp)?;
    crate::remove_if_exists(&tmp)?;
    Ok(blob)
}

/// Compact JSON with sorted keys (serde_json's default map), so digests are reproducible.
fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let bytes = serde_json::to_vec(value).context("cannot encode JSON")?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binaries_are_classified() {
        // The test binary itself is a dynamically linked ELF on every supported host.
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static(&me).expect("an ELF file"));
    }
}
