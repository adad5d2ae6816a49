//! `cargo xtask fuzz [TARGET...] [--seconds N]`: runs the libFuzzer targets of `fuzz/` with
//! cargo-fuzz on the nightly toolchain, each for N seconds, from corpora seeded with
//! `../shared/conformance` and kiln's own realistic cases. Installs cargo-fuzz when it is missing.
//! A finding fails the task and names the input libFuzzer saved; it then becomes a regression
//! test in the crate it belongs to.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::workspace::Workspace;

/// The targets of `fuzz/Cargo.toml`, in the order they run.
const TARGETS: &[&str] = &[
    "dockerfile_parse",
    "dockerfile_frontend",
    "spec_frontend",
    "shell_expand",
    "dockerignore",
    "image_reference",
    "image_documents",
    "layer_import",
    "add_unpack",
];

const DEFAULT_SECONDS: u64 = 60;

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if let Some(v) = arg.strip_prefix("--seconds=") {
            seconds = parse_seconds(v)?;
        } else if arg == "--seconds" {
            let v = it.next().context("--seconds needs a number")?;
            seconds = parse_seconds(v)?;
        } else if TARGETS.contains(&arg.as_str()) {
            targets.push(arg.as_str());
        } else {
            bail!(
                "unknown fuzz target or flag `{arg}`; targets: {}",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }

    let ws = Workspace::load()?;
    ensure_cargo_fuzz()?;
    let work = ws.target_dir.join("kiln-fuzz");
    let shared = ws.root.join("../shared/conformance");
    if !shared.is_dir() {
        bail!(
            "{} is missing: the corpora are seeded from it",
            shared.display()
        );
    }

    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for target in targets {
        let seeds = work.join("seeds").join(target);
        crate::remove_if_exists(&seeds)?;
        std::fs::create_dir_all(&seeds)?;
        let n = seed(target, &ws.root, &shared, &seeds)
            .with_context(|| format!("seeding the corpus of {target}"))?;
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        // Only this run's findings count: earlier ones became regression tests (or are still
        // in the earlier run's output).
        crate::remove_if_exists(&artifacts)?;
        std::fs::create_dir_all(&artifacts)?;
        let log = work.join(format!("{target}.log"));
        println!("fuzz {target}: {n} seeds, {seconds} s ...");
        let status = fuzz_command(&ws, target, &corpus, &seeds, &artifacts, seconds)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .status()
            .context("could not start cargo fuzz")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let runs = stat(&text, "stat::number_of_executed_units:");
        let (files, bytes) = dir_size(&corpus)?;
        let found: Vec<PathBuf> = std::fs::read_dir(&artifacts)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let verdict = if status.success() && found.is_empty() {
            "nothing found"
        } else {
            failed.push(target);
            "FOUND"
        };
        println!(
            "fuzz {target}: {verdict}: {} executions in {seconds} s, corpus {files} inputs ({} KiB)",
            runs.map_or("?".to_owned(), |r| r.to_string()),
            bytes / 1024
        );
        if verdict != "nothing found" {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                println!("    {line}");
            }
            for f in found {
                println!("    saved input: {}", f.display());
            }
            println!("    full log: {}", log.display());
        }
        rows.push((target, runs, files, bytes));
    }
    println!("\n| target | executions | corpus inputs | corpus KiB |\n|---|---|---|---|");
    for (target, runs, files, bytes) in rows {
        println!(
            "| {target} | {} | {files} | {} |",
            runs.map_or("?".to_owned(), |r| r.to_string()),
            bytes / 1024
        );
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: fuzzing found failures in: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn parse_seconds(v: &str) -> Result<u64> {
    v.parse()
        .ok()
        .filter(|s| *s > 0)
        .with_context(|| format!("--seconds takes a positive number, not `{v}`"))
}

/// cargo-fuzz on the nightly toolchain, installed from crates.io when missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(nightly().args(["--version"])) {
        bail!("the nightly toolchain is needed for fuzzing: rustup toolchain install nightly");
    }
    if !works(nightly().args(["fuzz", "--version"])) {
        println!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
        crate::run(crate::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// `cargo` of the nightly toolchain, without the variables the outer (stable) cargo set.
fn nightly() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn fuzz_command(
    ws: &Workspace,
    target: &str,
    corpus: &Path,
    seeds: &Path,
    artifacts: &Path,
    seconds: u64,
) -> Command {
    let mut cmd = nightly();
    cmd.current_dir(&ws.root)
        .args([
            "fuzz",
            "run",
            "--debug-assertions",
            "--fuzz-dir",
            "fuzz",
            "--target-dir",
        ])
        .arg(ws.target_dir.join("fuzz"))
        .arg(target)
        .arg(corpus)
        .arg(seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // An input that takes more than 10 s, or 2 GiB, is a finding too (a hang, a bomb).
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        .arg("-print_final_stats=1");
    cmd
}

/// A `stat::name: N` line of libFuzzer's final statistics.
fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir)? {
        let md = e?.metadata()?;
        if md.is_file() {
            files += 1;
            bytes += md.len();
        }
    }
    Ok((files, bytes))
}

/// Writes the seed inputs of `target` into `out`; returns how many.
fn seed(target: &str, root: &Path, shared: &Path, out: &Path) -> Result<usize> {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    let buildkit = shared.join("buildkit/frontend/dockerfile");
    match target {
        "dockerfile_parse" | "dockerfile_frontend" => {
            for dir in ["parser/testfiles", "parser/testfiles-negative"] {
                for case in sorted_dir(&buildkit.join(dir))? {
                    if let Ok(b) = std::fs::read(case.join("Dockerfile")) {
                        seeds.push(b);
                    }
                }
            }
            seeds.push(std::fs::read(
                buildkit.join("parser/testfile-line/Dockerfile"),
            )?);
            for case in sorted_dir(&root.join("tests/e2e/realistic"))? {
                if let Ok(b) = std::fs::read(case.join("context/Dockerfile")) {
                    seeds.push(b);
                }
            }
            seeds.push(std::fs::read(root.join("examples/demo/Dockerfile"))?);
        }
        "shell_expand" => {
            let words = |text: String, sep: char| -> Vec<Vec<u8>> {
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.starts_with("ENV "))
                    .filter_map(|l| {
                        // envVarTest: `A|input|expected`; wordsTest: `input | expected`.
                        let fields: Vec<&str> = l.split(sep).collect();
                        let input = if fields.len() >= 3 { fields[1] } else { fields[0] };
                        let input = input.trim();
                        (!input.is_empty()).then(|| [&[0u8][..], input.as_bytes()].concat())
                    })
                    .collect()
            };
            seeds.extend(words(
                std::fs::read_to_string(buildkit.join("shell/envVarTest"))?,
                '|',
            ));
            seeds.extend(words(
                std::fs::read_to_string(buildkit.join("shell/wordsTest"))?,
                '|',
            ));
            for line in std::fs::read_to_string(shared.join("shell-expansion-cases.jsonl"))?.lines()
            {
                let v: Value = serde_json::from_str(line)?;
                if let Some(input) = v["input"].as_str() {
                    seeds.push([&[0u8][..], input.as_bytes()].concat());
                }
            }
        }
        "dockerignore" => {
            for line in std::fs::read_to_string(shared.join("dockerignore-cases.tsv"))?.lines() {
                let cols: Vec<&str> = line.split('\t').collect();
                if line.starts_with('#') || cols.len() < 4 {
                    continue;
                }
                let Ok(Value::Array(patterns)) = serde_json::from_str::<Value>(cols[2]) else {
                    continue;
                };
                let file: Vec<&str> = patterns.iter().filter_map(Value::as_str).collect();
                seeds.push(format!("{}\n\n{}\n", file.join("\n"), cols[3]).into_bytes());
            }
            for case in sorted_dir(&root.join("tests/e2e/realistic"))? {
                if let Ok(b) = std::fs::read(case.join("context/.dockerignore")) {
                    seeds.push(b);
                }
            }
        }
        "image_reference" => {
            for r in [
                "busybox",
                "library/busybox:latest",
                "docker.io/library/busybox:1.36",
                "localhost:5000/team/app:v1",
                "127.0.0.1:5000/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "quay.io/org/img:tag@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "ghcr.io/a/b/c/d:1.2.3-rc.1",
                "[::1]:5000/x:y",
                "docker/dockerfile:1.7-labs",
                "UPPER/case",
            ] {
                seeds.push(r.as_bytes().to_vec());
            }
        }
        "image_documents" => {
            let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
            for doc in [
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":10}}]}}"#
                ),
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":7,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#
                ),
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{d}","size":2}},"layers":[]}}"#
                ),
                format!(
                    r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"],"User":"1000:1000","Labels":{{"a":"b"}},"ExposedPorts":{{"80/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["{d}"]}},"history":[{{"created_by":"x","empty_layer":true}}]}}"#
                ),
            ] {
                seeds.push(doc.into_bytes());
            }
        }
        "layer_import" | "add_unpack" => {
            seeds.extend(sample_tars(out)?);
        }
        "spec_frontend" => {
            seeds.push(std::fs::read(root.join("examples/spec/build.toml"))?);
            let doc = std::fs::read_to_string(root.join("docs/spec-frontend.md"))?;
            for block in doc.split("```toml\n").skip(1) {
                if let Some((toml, _)) = block.split_once("```") {
                    seeds.push(toml.as_bytes().to_vec());
                }
            }
            // The build files of the frontend's own tests: raw strings, and one-line literals.
            let tests = std::fs::read_to_string(root.join("frontends/spec/src/tests.rs"))?;
            for raw in tests.split("r#\"").skip(1) {
                match raw.split_once("\"#") {
                    Some((text, _)) if text.contains("[stage") => {
                        seeds.push(text.as_bytes().to_vec());
                    }
                    _ => {}
                }
            }
            for line in tests.lines() {
                let literal = line.trim().strip_prefix("\"[stage");
                if let Some(rest) = literal.and_then(|r| r.strip_suffix("\",")) {
                    let text = format!("[stage{rest}")
                        .replace("\\n", "\n")
                        .replace("\\\"", "\"");
                    seeds.push(text.into_bytes());
                }
            }
        }
        other => bail!("no seeds for {other}"),
    }
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(out.join(format!("seed-{i:04}")), s)?;
    }
    Ok(seeds.len())
}

/// Small real archives made with the system `tar` (plain, gzip, with symlinks, hardlinks,
/// whiteouts and long names), to start the tar fuzzers from well-formed input.
fn sample_tars(scratch: &Path) -> Result<Vec<Vec<u8>>> {
    let src = scratch.join(".src");
    std::fs::create_dir_all(src.join("dir/sub"))?;
    std::fs::write(src.join("dir/file.txt"), "hello\n")?;
    std::fs::write(src.join("dir/sub/.wh.gone"), "")?;
    std::fs::write(src.join("dir/sub/.wh..wh..opq"), "")?;
    std::fs::write(src.join(format!("dir/{}", "n".repeat(150))), "long\n")?;
    std::os::unix::fs::symlink("file.txt", src.join("dir/link"))?;
    std::fs::hard_link(src.join("dir/file.txt"), src.join("dir/hard"))?;
    let mut out = Vec::new();
    for flags in [&["-cf"][..], &["-czf"][..], &["--format=pax", "-cf"][..]] {
        let file = scratch.join(".sample.tar");
        crate::run(
            Command::new("tar")
                .args(flags)
                .arg(&file)
                .arg("-C")
                .arg(&src)
                .arg("dir"),
        )?;
        out.push(std::fs::read(&file)?);
        std::fs::remove_file(&file)?;
    }
    crate::remove_if_exists(&src)?;
    Ok(out)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}
