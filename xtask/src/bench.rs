//! `cargo xtask bench`: the workloads of `../shared/bench/workloads` built by a release `kiln`
//! against the busybox fixture in a loopback registry, timed as wall-clock medians and put next
//! to the figures BuildKit reached on this kind of machine (`../shared/bench/README.md`).
//! Each phase also reports the peak RSS of the `kiln` process (its `ru_maxrss`, the largest of
//! the phase's runs). Benchmarks only measure and report; nothing here asserts on time.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::registry::Registry;
use crate::workspace::{self, Workspace};

/// BuildKit v0.32 medians (seconds, with `--output type=oci`) from the shared bench README.
const BUILDKIT: &[(&str, &str, f64)] = &[
    ("steps", "cold", 2.42),
    ("steps", "no-op", 0.077),
    ("parallel", "cold", 1.31),
    ("parallel", "no-op", 0.057),
    // An empty builder importing the registry cache of the same build, every step cached
    // (`--import-cache type=registry`, OCI tarball output).
    ("steps", "cache-from registry", 0.81),
    ("parallel", "cache-from registry", 0.13),
    ("cachemount", "cold", 0.47),
    ("cachemount", "rerun", 0.13),
    ("bigfile", "build+oci.tar.gz", 2.56),
    ("context", "cold", 7.0),
    ("context", "no-op", 0.91),
    ("context", "edit one file", 4.32),
    ("context", "touch one file", 0.89),
];

struct Bench {
    kiln: PathBuf,
    /// The loopback registry (`127.0.0.1:PORT`), which also holds the exported caches.
    registry: String,
    base: String,
    work: PathBuf,
    runs: usize,
    rows: Vec<Row>,
}

/// One phase's result.
struct Row {
    workload: String,
    phase: String,
    /// Median wall-clock seconds.
    median: f64,
    /// The largest peak RSS of the `kiln` process over the runs, in KiB.
    peak_rss_kib: u64,
}

/// One timed run.
struct Run {
    secs: f64,
    peak_rss_kib: u64,
    /// The build's progress output.
    log: String,
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut runs = 5;
    let mut only: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs needs a number")?
            }
            w if !w.starts_with('-') => only.push(w.to_owned()),
            other => bail!(
                "unknown bench option {other}; usage: cargo xtask bench [--runs N] [WORKLOAD...]"
            ),
        }
    }
    let ws = Workspace::load()?;
    crate::run(crate::cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "-p",
        "kiln-cli",
        "-p",
        "kiln-frontend-dockerfile",
        "-p",
        "kiln-exec",
    ]))
    .context("the release build failed")?;
    let release = ws.target_dir.join("release");
    workspace::install_plugins(&ws, &release)?;

    let work = ws.target_dir.join("kiln-bench");
    let registry = Registry::start(&work.join("registry"))?;
    crate::fixtures::build(&ws, Some(&registry.addr))?;
    let workloads = ws.root.join("../shared/bench/workloads");
    if !workloads.is_dir() {
        bail!(
            "{} not found: the bench workloads live in shared/ beside the repository",
            workloads.display()
        );
    }
    let mut b = Bench {
        kiln: release.join("kiln"),
        registry: registry.addr.clone(),
        base: format!("{}/busybox:latest", registry.addr),
        work: work.clone(),
        runs,
        rows: Vec::new(),
    };
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    if want("steps") {
        b.cold_and_noop("steps", &workloads.join("steps"), &workloads.join("steps"))?;
        b.cache_from_registry("steps", &workloads.join("steps"))?;
    }
    if want("parallel") {
        b.cold_and_noop(
            "parallel",
            &workloads.join("parallel"),
            &workloads.join("parallel"),
        )?;
        b.cache_from_registry("parallel", &workloads.join("parallel"))?;
    }
    if want("cachemount") {
        b.cachemount(&workloads.join("cachemount"))?;
    }
    if want("bigfile") {
        b.bigfile(&workloads.join("bigfile"))?;
    }
    if want("context") {
        b.context(&workloads.join("context"))?;
    }
    drop(registry);
    b.report()
}

impl Bench {
    fn root(&self) -> PathBuf {
        self.work.join("root")
    }

    fn fresh_root(&self) -> Result<()> {
        crate::remove_if_exists(&self.root())?;
        // Flush the deletes so that the next timed run does not pay for them.
        let _ = Command::new("sync").status();
        Ok(())
    }

    /// One timed `kiln build`, with the peak RSS of the `kiln` process; fails loudly when the
    /// build fails.
    fn build(&self, dockerfile_dir: &Path, context: &Path, extra: &[String]) -> Result<Run> {
        let mut cmd = Command::new(&self.kiln);
        cmd.env("KILN_ROOT", self.root())
            .arg("build")
            .arg("--progress=plain")
            .arg("-f")
            .arg(dockerfile_dir.join("Dockerfile"))
            .arg("--build-arg")
            .arg(format!("BASE={}", self.base))
            .args(extra)
            .arg(context)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.kiln.display()))?;
        let mut stderr = child
            .stderr
            .take()
            .context("kiln's stderr pipe is missing")?;
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            text
        });
        let (status, peak_rss_kib) = wait_with_rusage(child.id())
            .with_context(|| format!("cannot wait for {}", self.kiln.display()))?;
        let secs = start.elapsed().as_secs_f64();
        let stderr = reader.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "kiln build of {} failed ({status}):\n{}",
                dockerfile_dir.display(),
                String::from_utf8_lossy(&stderr)
            );
        }
        Ok(Run {
            secs,
            peak_rss_kib,
            log: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    fn record(&mut self, workload: &str, phase: &str, runs: Vec<Run>) {
        let peak_rss_kib = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let mut times: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "xtask bench: {workload} {phase}: median {median:.3}s of {times:.3?}, peak RSS {:.1} MiB",
            peak_rss_kib as f64 / 1024.0
        );
        self.rows.push(Row {
            workload: workload.to_owned(),
            phase: phase.to_owned(),
            median,
            peak_rss_kib,
        });
    }

    /// A CI run: the build's cache is in the registry (exported once, `mode=max`), and each
    /// timed build starts from an empty store with `--cache-from type=registry` and an OCI
    /// tarball output, as BuildKit's figure was taken.
    fn cache_from_registry(&mut self, name: &str, dir: &Path) -> Result<()> {
        let cache = format!(
            "type=registry,ref={}/kiln-bench-cache/{name}:latest",
            self.registry
        );
        self.fresh_root()?;
        self.build(
            dir,
            dir,
            &["--cache-to".into(), format!("{cache},mode=max")],
        )?;
        let out = self.work.join(format!("{name}-cache.tar"));
        let mut runs = Vec::new();
        for _ in 0..self.runs {
            self.fresh_root()?;
            let run = self.build(
                dir,
                dir,
                &[
                    "--cache-from".into(),
                    cache.clone(),
                    "--output".into(),
                    format!("type=oci,dest={}", out.display()),
                ],
            )?;
            // A step that ran makes the figure another phase's: say so rather than report it.
            if !all_cached(&run.log) {
                bail!(
                    "{name}: a build from the registry cache ran steps, the import missed:\n{}",
                    run.log
                );
            }
            runs.push(run);
        }
        self.record(name, "cache-from registry", runs);
        Ok(())
    }

    fn cold_and_noop(&mut self, name: &str, dir: &Path, ctx: &Path) -> Result<()> {
        let mut cold = Vec::new();
        let mut noop = Vec::new();
        for _ in 0..self.runs {
            self.fresh_root()?;
            cold.push(self.build(dir, ctx, &[])?);
            noop.push(self.build(dir, ctx, &[])?);
        }
        self.record(name, "cold", cold);
        self.record(name, "no-op", noop);
        Ok(())
    }

    fn cachemount(&mut self, dir: &Path) -> Result<()> {
        let mut cold = Vec::new();
        let mut rerun = Vec::new();
        for i in 0..self.runs {
            self.fresh_root()?;
            cold.push(self.build(dir, dir, &["--build-arg".into(), "BUST=0".into()])?);
            rerun.push(self.build(dir, dir, &["--build-arg".into(), format!("BUST={}", i + 1)])?);
        }
        self.record("cachemount", "cold", cold);
        self.record("cachemount", "rerun", rerun);
        Ok(())
    }

    fn bigfile(&mut self, dir: &Path) -> Result<()> {
        let mut times = Vec::new();
        let out = self.work.join("bigfile.tar");
        for _ in 0..self.runs {
            self.fresh_root()?;
            times.push(self.build(
                dir,
                dir,
                &[
                    "--output".into(),
                    format!("type=oci,dest={}", out.display()),
                ],
            )?);
        }
        self.record("bigfile", "build+oci.tar.gz", times);
        Ok(())
    }

    fn context(&mut self, dir: &Path) -> Result<()> {
        let ctx = self.work.join("context");
        if !ctx.join("d000").is_dir() {
            crate::run(
                Command::new("python3")
                    .arg(dir.join("gen-context.py"))
                    .arg(&ctx),
            )?;
        }
        let edited = ctx.join("d007/f00007.dat");
        let (mut cold, mut noop, mut edit, mut touch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..self.runs {
            self.fresh_root()?;
            // The shared README warns that creating many files right after deletes is slow here.
            std::thread::sleep(std::time::Duration::from_secs(2));
            cold.push(self.build(dir, &ctx, &[])?);
            noop.push(self.build(dir, &ctx, &[])?);
            std::fs::write(&edited, format!("edit {i}\n")).context("edit a context file")?;
            edit.push(self.build(dir, &ctx, &[])?);
            let t = std::time::SystemTime::now() + std::time::Duration::from_secs(i as u64 + 1);
            std::fs::File::options()
                .write(true)
                .open(&edited)
                .and_then(|f| f.set_modified(t))
                .context("touch a context file")?;
            touch.push(self.build(dir, &ctx, &[])?);
        }
        self.record("context", "cold", cold);
        self.record("context", "no-op", noop);
        self.record("context", "edit one file", edit);
        self.record("context", "touch one file", touch);
        Ok(())
    }

    fn report(&self) -> Result<ExitCode> {
        let mut md = String::from(
            "| workload | phase | kiln (s, median) | BuildKit v0.32 (s) | BuildKit / kiln | kiln peak RSS (MiB) |\n|---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let (w, p, t) = (&row.workload, &row.phase, row.median);
            let bk = BUILDKIT
                .iter()
                .find(|(bw, bp, _)| bw == w && bp == p)
                .map(|(_, _, v)| *v);
            let (bk_s, ratio) = match bk {
                Some(v) => (format!("{v:.3}"), format!("{:.1}×", v / t)),
                None => ("–".into(), "–".into()),
            };
            let rss = row.peak_rss_kib as f64 / 1024.0;
            md.push_str(&format!(
                "| {w} | {p} | {t:.3} | {bk_s} | {ratio} | {rss:.1} |\n"
            ));
            if w == "steps" && p == "cold" {
                md.push_str(&format!(
                    "| steps | per step (cold / 30) | {:.4} | 0.07 | | |\n",
                    t / 30.0
                ));
            }
        }
        let out = self.work.join("results.md");
        std::fs::write(&out, &md).with_context(|| format!("cannot write {}", out.display()))?;
        println!(
            "\n{md}\n(written to {}; {} run(s) per phase)",
            out.display(),
            self.runs
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Whether kiln's closing line (`built … (N steps, M cached) …`) says every step was cached.
fn all_cached(log: &str) -> bool {
    log.lines().rev().find_map(|l| {
        let counts = l
            .strip_prefix("built ")?
            .split_once(" (")?
            .1
            .split_once(')')?
            .0;
        let (steps, cached) = counts.split_once(" steps, ")?;
        let cached = cached.strip_suffix(" cached")?;
        Some(steps == cached)
    }) == Some(true)
}

/// Waits for the child `pid` and returns its exit status with its peak RSS in KiB
/// (`wait4`'s `ru_maxrss`: the child's own, not its children's).
fn wait_with_rusage(pid: u32) -> std::io::Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid status and rusage pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            let kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
            return Ok((ExitStatus::from_raw(status), kib));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closing_line_tells_whether_every_step_was_cached() {
        let hit =
            "#11 DONE 0.0s\n\nbuilt sha256:906e (9 steps, 9 cached) with frontend dockerfile\n";
        assert!(all_cached(hit));
        let miss = "built sha256:906e (9 steps, 7 cached) with frontend dockerfile\n";
        assert!(!all_cached(miss));
        assert!(!all_cached("no summary"));
    }
}
