//! A umoci that reads zstd layers, for the tests that unpack kiln's zstd images.
//!
//! Debian 12's umoci (0.4.7) predates zstd layers (umoci 0.5 added them). When the umoci on
//! PATH is older, the newer one is taken from Debian unstable with apt's own client and a
//! private package list (nothing is installed on the system, and the machine's apt sources
//! are left alone): `apt-get download`, then `dpkg-deb -x` into the test directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The Debian suite that carries a zstd-capable umoci (0.6 at the time of writing).
const SUITE: &str = "unstable";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A umoci of version 0.5 or later: the one on PATH when it is recent enough, else one kept
/// under `tools` (fetched there once).
pub fn zstd_capable(tools: &Path) -> Result<PathBuf> {
    if let Some(system) = crate::find_on_path("umoci") {
        if version(&system).is_some_and(reads_zstd) {
            return Ok(system);
        }
    }
    let kept = tools.join("umoci/usr/bin/umoci");
    if kept.is_file() && version(&kept).is_some_and(reads_zstd) {
        return Ok(kept);
    }
    fetch(tools).with_context(|| {
        format!(
            "the tests need umoci 0.5 or later to unpack zstd layers (Debian 12 has 0.4.7); \
             kiln fetches Debian {SUITE}'s package from {MIRROR}: install a newer umoci on \
             PATH instead if this machine cannot reach it"
        )
    })?;
    match version(&kept) {
        Some(v) if reads_zstd(v) => Ok(kept),
        Some(v) => bail!(
            "Debian {SUITE}'s umoci is {}.{}.{}, older than 0.5",
            v.0,
            v.1,
            v.2
        ),
        None => bail!("{} does not run", kept.display()),
    }
}

fn reads_zstd(v: (u32, u32, u32)) -> bool {
    v >= (0, 5, 0)
}

/// `umoci --version` (`umoci version 0.4.7`, first line) as numbers.
fn version(umoci: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(umoci).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    // The first line; newer umoci add lines for the specs and Go after it.
    let word = text.lines().next()?.split_whitespace().last()?;
    let mut parts = word
        .split(['.', '+', '-', '~'])
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// Downloads Debian's umoci package of [`SUITE`] and unpacks it into `tools/umoci`.
fn fetch(tools: &Path) -> Result<()> {
    let apt = tools.join("apt");
    let lists = apt.join("lists");
    std::fs::create_dir_all(lists.join("partial"))
        .with_context(|| format!("cannot create {}", lists.display()))?;
    let sources = apt.join("sources.list");
    std::fs::write(&sources, format!("deb {MIRROR} {SUITE} main\n"))
        .with_context(|| format!("cannot write {}", sources.display()))?;
    let private = |cmd: &mut Command| {
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", sources.display()))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", lists.display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .env("DEBIAN_FRONTEND", "noninteractive");
    };
    println!("xtask: fetching umoci from Debian {SUITE} (Debian 12's cannot read zstd layers)");
    let mut update = Command::new("apt-get");
    private(&mut update);
    crate::run(update.arg("update")).context("apt-get update of the private list failed")?;
    let download_dir = apt.join("debs");
    crate::remove_if_exists(&download_dir)?;
    std::fs::create_dir_all(&download_dir)
        .with_context(|| format!("cannot create {}", download_dir.display()))?;
    let mut download = Command::new("apt-get");
    private(&mut download);
    crate::run(
        download
            .current_dir(&download_dir)
            .args(["download", &format!("umoci/{SUITE}")]),
    )
    .context("apt-get download umoci failed")?;
    let deb = std::fs::read_dir(&download_dir)
        .with_context(|| format!("cannot list {}", download_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let dest = tools.join("umoci");
    crate::remove_if_exists(&dest)?;
    crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dest))
        .context("dpkg-deb -x of the umoci package failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("umoci version 0.4.7\n"), Some((0, 4, 7)));
        assert_eq!(
            parse_version("umoci version 0.6.0+ds-1+b1\nimage spec: 1.1.1\ngo: go1.26.2\n"),
            Some((0, 6, 0))
        );
        assert_eq!(
            parse_version("umoci version 0.4.7+ds-3+b7"),
            Some((0, 4, 7))
        );
        assert_eq!(parse_version("umoci version 1.2"), Some((1, 2, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!(!reads_zstd((0, 4, 7)));
        assert!(reads_zstd((0, 5, 0)));
    }
}
