//! `cargo xtask bench`: the workloads of `../shared/bench/workloads` built by a release `kiln`
//! against the busybox fixture in a loopback registry, timed as wall-clock medians and put next
//! to the figures BuildKit reached on this kind of machine (`../shared/bench/README.md`).
//! Each phase also reports, over its runs, the peak RSS of the `kiln` process itself (its
//! `VmHWM`, read while it runs) and the peak of the whole process tree (`wait4`'s `ru_maxrss`,
//! which counts reaped descendants too: a RUN's `apt-get` weighs there, not in kiln).
//! `cargo xtask bench debian` (run only when named: it needs debootstrap and the Debian
//! mirror) builds `RUN apt-get install hello` FROM a debootstrap base kept under
//! `target/kiln-bench/debian/`. Benchmarks only measure and report; nothing here asserts on
//! time.

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
    // The README's figure in parentheses (no output).
    ("context", "edit one file, no output", 2.52),
    ("multiplatform", "cold", 0.57),
    // Three exec-form RUN steps of a static arm64 program under QEMU, cold.
    ("multiplatform", "emulated", 0.61),
];

struct Bench {
    kiln: PathBuf,
    /// Where each timed build's store is made, one never-used directory per run (see
    /// [`Bench::fresh_root`]); removed after the report.
    roots: PathBuf,
    /// The number of the store directory in use under `roots`.
    run_no: std::cell::Cell<u32>,
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
    /// The largest peak RSS of any process of the build's tree (kiln, RUN children), in KiB.
    tree_rss_kib: u64,
}

/// One timed run.
struct Run {
    secs: f64,
    peak_rss_kib: u64,
    tree_rss_kib: u64,
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
    // kiln and every bundled plugin: `install_plugins` refuses a bundled plugin left unbuilt
    // (the bench failed so once plugins/include, plugins/packages and frontends/spec came).
    let mut build = crate::cargo();
    build
        .current_dir(&ws.root)
        .args(["build", "--release", "-p", "kiln-cli"]);
    let mut plugins: Vec<String> = workspace::bundled_plugins(&ws)
        .into_iter()
        .map(|(pkg, _)| pkg)
        .collect();
    plugins.dedup();
    for pkg in &plugins {
        build.args(["-p", pkg]);
    }
    crate::run(&mut build).context("the release build failed")?;
    let release = ws.target_dir.join("release");
    workspace::install_plugins(&ws, &release)?;

    let work = ws.target_dir.join("kiln-bench");
    let registry = Registry::start(&work.join("registry"))?;
    crate::fixtures::build(&ws, Some(&registry.addr))?;
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    if want("multiplatform") {
        // The emulated phase's arm64 program (Go from PyPI, cached under target/kiln-test/).
        crate::goarch::build(&ws, Some(&registry.addr))?;
    }
    let workloads = ws.root.join("../shared/bench/workloads");
    if !workloads.is_dir() {
        bail!(
            "{} not found: the bench workloads live in shared/ beside the repository",
            workloads.display()
        );
    }
    // The stores of an interrupted invocation (and of the older single `root/`) are moved
    // aside now and deleted after the report, not before the timed runs (see `fresh_root`).
    let mut stale = StaleRoots(Vec::new());
    for old in ["roots", "root"] {
        let path = work.join(old);
        if path.symlink_metadata().is_ok() {
            let aside = work.join(format!("{old}.stale-{}", std::process::id()));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            stale.0.push(aside);
        }
    }
    let roots = work.join("roots");
    std::fs::create_dir_all(&roots)
        .with_context(|| format!("cannot create {}", roots.display()))?;
    stale.0.push(roots.clone());
    let mut b = Bench {
        kiln: release.join("kiln"),
        roots,
        run_no: std::cell::Cell::new(0),
        registry: registry.addr.clone(),
        base: format!("{}/busybox:latest", registry.addr),
        work: work.clone(),
        runs,
        rows: Vec::new(),
    };
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
    if want("multiplatform") {
        b.multiplatform(&workloads.join("multiplatform"))?;
    }
    // Not in the default set: it needs debootstrap, root and the Debian mirror.
    if only.iter().any(|o| o == "debian") {
        b.debian()?;
    }
    drop(registry);
    let report = b.report();
    drop(stale);
    report
}

/// Store directories deleted when the bench ends, whether it succeeded or not.
struct StaleRoots(Vec<PathBuf>);

impl Drop for StaleRoots {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Err(e) = crate::remove_if_exists(dir) {
                eprintln!("xtask bench: {e:#}");
            }
        }
    }
}

impl Bench {
    fn root(&self) -> PathBuf {
        self.roots.join(self.run_no.get().to_string())
    }

    /// Starts the next run on an empty store, as a CI job has: a directory never used, not the
    /// last run's store deleted. On this machine's ext4 without a journal, the kernel will not
    /// reuse an inode freed in the last 60 s (`recently_deleted()` in `find_inode_bit()`), and
    /// scans past each such one for every file it creates: right after the context phase
    /// deleted its store (60,000 inodes), two thirds of a `multiplatform` build's CPU time
    /// went to that scan (perf: `find_inode_bit` 67 %, `recently_deleted` 64 %), a cost no
    /// user's fresh store pays (BuildKit's figures were taken with a pause after deletes).
    /// The stores are deleted after the report. `sync` flushes the last run's writes first.
    fn fresh_root(&self) -> Result<()> {
        self.run_no.set(self.run_no.get() + 1);
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
        let Peak {
            status,
            own_kib: peak_rss_kib,
            tree_kib: tree_rss_kib,
        } = wait_with_peaks(child.id())
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
            tree_rss_kib,
            log: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }

    fn record(&mut self, workload: &str, phase: &str, runs: Vec<Run>) {
        let peak_rss_kib = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let tree_rss_kib = runs.iter().map(|r| r.tree_rss_kib).max().unwrap_or(0);
        let mut times: Vec<f64> = runs.iter().map(|r| r.secs).collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "xtask bench: {workload} {phase}: median {median:.3}s of {times:.3?}, peak RSS {:.1} MiB (with children {:.1} MiB)",
            peak_rss_kib as f64 / 1024.0,
            tree_rss_kib as f64 / 1024.0
        );
        self.rows.push(Row {
            workload: workload.to_owned(),
            phase: phase.to_owned(),
            median,
            peak_rss_kib,
            tree_rss_kib,
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
        // With an OCI tarball output, as the BuildKit figures were taken (issue 9 item 4).
        let out = [format!(
            "--output=type=oci,dest={}",
            self.work.join("context-out.tar").display()
        )];
        let (mut cold, mut noop, mut edit, mut touch, mut bare_edit) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Edits never repeat a content built before: the context stays between invocations,
        // and a run's cold build starts from the last invocation's final edit, which an edit
        // of the same text would find cached.
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for i in 0..self.runs {
            self.fresh_root()?;
            // A pause before the cold run, as BuildKit's figure was taken (the shared README).
            std::thread::sleep(std::time::Duration::from_secs(2));
            cold.push(self.build(dir, &ctx, &out)?);
            noop.push(self.build(dir, &ctx, &out)?);
            std::fs::write(&edited, format!("edit {nonce} {i}\n"))
                .context("edit a context file")?;
            edit.push(self.build(dir, &ctx, &out)?);
            let t = std::time::SystemTime::now() + std::time::Duration::from_secs(i as u64 + 1);
            std::fs::File::options()
                .write(true)
                .open(&edited)
                .and_then(|f| f.set_modified(t))
                .context("touch a context file")?;
            touch.push(self.build(dir, &ctx, &out)?);
            // The same edit with no output: the build alone.
            std::fs::write(&edited, format!("bare edit {nonce} {i}\n"))
                .context("edit a context file")?;
            bare_edit.push(self.build(dir, &ctx, &[])?);
        }
        self.record("context", "cold", cold);
        self.record("context", "no-op", noop);
        self.record("context", "edit one file", edit);
        self.record("context", "touch one file", touch);
        self.record("context", "edit one file, no output", bare_edit);
        Ok(())
    }

    /// Three platforms from one build (cold, OCI tarball, as BuildKit's figure), then the
    /// emulated phase: three exec-form RUN steps of the goarch fixture's static arm64 program
    /// under QEMU (`--platform linux/arm64`, cold). The RUN steps of the workload itself are
    /// all on `$BUILDPLATFORM`: riscv64 needs no emulator.
    fn multiplatform(&mut self, dir: &Path) -> Result<()> {
        let out = self.work.join("multiplatform.tar");
        let platforms = [
            "--platform".to_owned(),
            "linux/amd64,linux/arm64,linux/riscv64".to_owned(),
            "--output".to_owned(),
            format!("type=oci,dest={}", out.display()),
        ];
        let mut cold = Vec::new();
        for _ in 0..self.runs {
            self.fresh_root()?;
            cold.push(self.build(dir, dir, &platforms)?);
        }
        self.record("multiplatform", "cold", cold);

        let ctx = self.work.join("emulated");
        std::fs::create_dir_all(&ctx).context("create the emulated workload's context")?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "ARG BASE\nFROM ${BASE}\nRUN [\"/goarch\", \"/out/1\"]\n\
             RUN [\"/goarch\", \"/out/2\"]\nRUN [\"/goarch\", \"/out/3\"]\n",
        )
        .context("write the emulated workload's Dockerfile")?;
        let out = self.work.join("emulated.tar");
        let args = [
            "--platform".to_owned(),
            "linux/arm64".to_owned(),
            "--output".to_owned(),
            format!("type=oci,dest={}", out.display()),
        ];
        let busybox = std::mem::replace(&mut self.base, format!("{}/goarch:latest", self.registry));
        let mut emulated = Vec::new();
        let mut failed = None;
        for _ in 0..self.runs {
            match self
                .fresh_root()
                .and_then(|()| self.build(&ctx, &ctx, &args))
            {
                // The program prints its GOARCH: proof that the step ran, under emulation.
                Ok(run) if run.log.matches(" arm64\n").count() < 3 => {
                    failed = Some(anyhow::anyhow!(
                        "the emulated build did not run the arm64 program three times:\n{}",
                        run.log
                    ));
                    break;
                }
                Ok(run) => emulated.push(run),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.base = busybox;
        if let Some(e) = failed {
            return Err(e);
        }
        self.record("multiplatform", "emulated", emulated);
        Ok(())
    }

    /// A build FROM a debootstrap base (one ~60 MB gzip layer, made once and kept under
    /// `target/kiln-bench/debian/`) with `RUN apt-get install hello`, for the peak RSS of a
    /// large layer's import and a RUN's export; the base goes through the loopback registry.
    fn debian(&mut self) -> Result<()> {
        let dir = self.work.join("debian");
        let layout = dir.join("layout");
        if !layout.join("index.json").is_file() {
            make_debian_layout(&dir, &layout)?;
        }
        let base = format!("{}/debian-minbase:bookworm", self.registry);
        crate::run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", layout.display()),
            &format!("docker://{base}"),
        ]))
        .context("skopeo could not push the debootstrap base to the loopback registry")?;
        let ctx = dir.join("context");
        std::fs::create_dir_all(&ctx).context("create the debian workload's context")?;
        std::fs::write(
            ctx.join("Dockerfile"),
            "ARG BASE\nFROM ${BASE}\nRUN apt-get update && apt-get install -y --no-install-recommends hello && hello\n",
        )
        .context("write the debian workload's Dockerfile")?;
        let out = self.work.join("debian.tar");
        let mut runs = Vec::new();
        let busybox = std::mem::replace(&mut self.base, base);
        for _ in 0..self.runs {
            let run = self.fresh_root().and_then(|()| {
                self.build(
                    &ctx,
                    &ctx,
                    &[
                        "--output".into(),
                        format!("type=oci,dest={}", out.display()),
                    ],
                )
            });
            match run {
                Ok(run) => runs.push(run),
                Err(e) => {
                    self.base = busybox;
                    return Err(e);
                }
            }
        }
        self.base = busybox;
        self.record("debian", "apt-get install + oci.tar", runs);
        Ok(())
    }

    fn report(&self) -> Result<ExitCode> {
        let mut md = String::from(
            "| workload | phase | kiln (s, median) | BuildKit v0.32 (s) | BuildKit / kiln | kiln peak RSS (MiB) | with RUN children (MiB) |\n|---|---|---|---|---|---|---|\n",
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
            let tree = row.tree_rss_kib as f64 / 1024.0;
            md.push_str(&format!(
                "| {w} | {p} | {t:.3} | {bk_s} | {ratio} | {rss:.1} | {tree:.1} |\n"
            ));
            if w == "steps" && p == "cold" {
                md.push_str(&format!(
                    "| steps | per step (cold / 30) | {:.4} | 0.07 | | | |\n",
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

/// debootstraps Debian bookworm (minbase, no .deb files left) into `dir/rootfs` and packs it
/// as one gzip layer in the OCI layout `layout`.
fn make_debian_layout(dir: &Path, layout: &Path) -> Result<()> {
    let Some(debootstrap) = crate::find_on_path("debootstrap") else {
        bail!("the debian workload needs debootstrap: `apt-get install debootstrap`");
    };
    let rootfs = dir.join("rootfs");
    crate::remove_if_exists(&rootfs)?;
    crate::remove_if_exists(layout)?;
    crate::run(
        Command::new(debootstrap)
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg(debian_mirror()),
    )
    .context("debootstrap failed (it needs root and the Debian mirror)")?;
    let archives = rootfs.join("var/cache/apt/archives");
    for e in std::fs::read_dir(&archives).context("read the base's apt archives")? {
        let path = e.context("read the base's apt archives")?.path();
        if path.extension().is_some_and(|x| x == "deb") {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).context("create the debian layout")?;
    let tar = dir.join("layer.tar");
    crate::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    )?;
    let diff_id = sha256_of(&tar)?;
    crate::run(Command::new("gzip").args(["-f", "-6"]).arg(&tar))?;
    let gz = dir.join("layer.tar.gz");
    let layer = sha256_of(&gz)?;
    let layer_size = std::fs::metadata(&gz).context("stat the layer")?.len();
    std::fs::rename(&gz, blobs.join(&layer)).context("move the layer into the layout")?;
    let put = |value: serde_json::Value| -> Result<(String, usize)> {
        let bytes = serde_json::to_vec(&value)?;
        let path = dir.join("blob.json");
        std::fs::write(&path, &bytes).context("write a layout blob")?;
        let digest = sha256_of(&path)?;
        std::fs::rename(&path, blobs.join(&digest)).context("move a blob into the layout")?;
        Ok((digest, bytes.len()))
    };
    let (config, config_size) = put(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
    }))?;
    let (manifest, manifest_size) = put(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{layer}"), "size": layer_size}],
    }))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .context("write oci-layout")?;
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest}"), "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
        }))?,
    )
    .context("write index.json")?;
    Ok(())
}

/// The first `URIs:` of the system's deb822 sources, else deb.debian.org.
fn debian_mirror() -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("URIs:"))
                .and_then(|u| u.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// `sha256sum FILE`'s hex digest.
fn sha256_of(path: &Path) -> Result<String> {
    let out = crate::output(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum printed nothing for {}", path.display()))
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

/// How a child ended, and how much memory it and its tree held at most.
struct Peak {
    status: ExitStatus,
    /// The child's own peak RSS (`VmHWM`), in KiB.
    own_kib: u64,
    /// The peak RSS of the child or any descendant it reaped (`wait4`'s `ru_maxrss`), in KiB.
    tree_kib: u64,
}

/// Waits for the child `pid`. `ru_maxrss` alone would charge kiln with the memory of the
/// programs its RUN steps start (the kernel folds reaped descendants into it), so the child's
/// own peak is read from `/proc/PID/status` while it runs: `VmHWM` only grows, and the last
/// reading before the exit is the peak but for the final few milliseconds. The child is
/// left a zombie until the reader stops (`WNOWAIT`), so that its pid cannot name another
/// process meanwhile.
fn wait_with_peaks(pid: u32) -> std::io::Result<Peak> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pid_t = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    let status_file = PathBuf::from(format!("/proc/{pid}/status"));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut own = 0;
            loop {
                // Read before checking `stop`: the reading after the exit finds no `VmHWM`.
                if let Some(kib) = std::fs::read_to_string(&status_file)
                    .ok()
                    .as_deref()
                    .and_then(vm_hwm_kib)
                {
                    own = kib;
                }
                if stop.load(Ordering::Relaxed) {
                    return own;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let exited = wait_exited(pid_t);
    stop.store(true, Ordering::Relaxed);
    let own_kib = reader
        .join()
        .map_err(|_| std::io::Error::other("the RSS reader thread panicked"))?;
    exited?;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid status and rusage pointers.
        let r = unsafe { libc::wait4(pid_t, &mut status, 0, &mut usage) };
        if r == pid_t {
            let tree_kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
            return Ok(Peak {
                status: ExitStatus::from_raw(status),
                own_kib,
                tree_kib,
            });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Blocks until child `pid` has exited, without reaping it.
fn wait_exited(pid: libc::pid_t) -> std::io::Result<()> {
    let id = libc::id_t::try_from(pid).map_err(std::io::Error::other)?;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child with a valid siginfo pointer.
        let r = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The `VmHWM:` line of a `/proc/PID/status` (`VmHWM:\t  24260 kB`), in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
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

    #[test]
    fn vm_hwm_is_read_from_proc_status() {
        let status = "Name:\tkiln\nVmPeak:\t  900000 kB\nVmHWM:\t   24260 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(24260));
        assert_eq!(vm_hwm_kib("Name:\tzombie\nState:\tZ (zombie)\n"), None);
    }

    /// A child whose own child holds 64 MiB: `ru_maxrss` (the tree) sees those 64 MiB, the
    /// child's own peak does not. Before, the bench reported the tree's figure as kiln's.
    #[test]
    fn the_own_peak_leaves_out_what_a_grandchild_held() {
        // `; true` keeps sh from exec'ing dd in its place; dd's 64 MiB block is touched by the
        // reads from /dev/zero.
        // Reaped by wait_with_peaks, which clippy cannot see.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh")
            .args([
                "-c",
                "dd if=/dev/zero of=/dev/null bs=64M count=2 2>/dev/null; true",
            ])
            .spawn()
            .expect("sh runs");
        let peak = wait_with_peaks(child.id()).expect("waiting for sh");
        assert!(peak.status.success());
        assert!(
            peak.tree_kib >= 60 * 1024,
            "the tree's peak ({} KiB) should hold dd's 64 MiB block",
            peak.tree_kib
        );
        assert!(
            peak.own_kib > 0 && peak.own_kib < 16 * 1024,
            "sh's own peak ({} KiB) should be sh's, not dd's",
            peak.own_kib
        );
    }
}
