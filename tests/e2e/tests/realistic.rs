//! Realistic multi-stage Dockerfiles (`tests/e2e/realistic/<case>/`): each builds on the busybox
//! fixture from the loopback registry with the real binary, and its `expect.json` says what the
//! image must hold: files and their contents, absent paths, owners, modes, config fields, and
//! for some a rebuild after an edit with the steps that must stay cached.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_e2e::*;
use serde_json::Value;

fn cases() -> Vec<PathBuf> {
    let root = workspace().join("tests/e2e/realistic");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("expect.json").is_file())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        let dest = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

struct Case<'a> {
    k: &'a Kiln,
    name: String,
    ctx: PathBuf,
    expect: Value,
    registry: String,
    /// Every kiln run of this case, whole (command, exit code, stdout, stderr): a failure
    /// shows them all, since the assertion that fires may come long after the run that
    /// went wrong, and a rare failure must be diagnosable from one occurrence.
    transcript: RefCell<Vec<String>>,
}

impl Case<'_> {
    fn build(&self, tar: &Path) -> Run {
        let mut args: Vec<String> = vec![
            "build".into(),
            "--progress=plain".into(),
            "-t".into(),
            "case:1".into(),
            "--build-arg".into(),
            format!("BASE={}/busybox:latest", self.registry),
            "--output".into(),
            format!("type=oci,dest={}", tar.display()),
        ];
        if let Some(a) = self.expect["args"].as_object() {
            for (k, v) in a {
                args.push("--build-arg".into());
                args.push(format!("{k}={}", v.as_str().unwrap()));
            }
        }
        if let Some(t) = self.expect["target"].as_str() {
            args.push("--target".into());
            args.push(t.into());
        }
        if let Some(s) = self.expect["secrets"].as_object() {
            for (id, content) in s {
                let f = self.k.path(&format!("{}-secret-{id}", self.name));
                std::fs::write(&f, content.as_str().unwrap()).unwrap();
                args.push("--secret".into());
                args.push(format!("id={id},src={}", f.display()));
            }
        }
        args.push(self.ctx.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = self.k.run(&refs);
        self.transcript.borrow_mut().push(format!(
            "$ kiln {}\nexit code {}\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            run.code,
            run.stdout,
            run.stderr
        ));
        run
    }

    fn check(&self) {
        let tar = self.k.path(&format!("{}.tar", self.name));
        let run = self.build(&tar).ok();
        let bundle = self.k.unpack(&tar, &self.name, "1");
        let rootfs = bundle.join("rootfs");
        let e = &self.expect;
        if let Some(files) = e["files"].as_object() {
            for (p, want) in files {
                let got = std::fs::read_to_string(rootfs.join(p.trim_start_matches('/')))
                    .unwrap_or_else(|err| panic!("{p}: {err}"));
                assert_eq!(got, want.as_str().unwrap(), "content of {p}");
            }
        }
        for p in e["exists"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                std::fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).is_ok(),
                "{p} missing"
            );
        }
        for p in e["absent"].as_array().into_iter().flatten() {
            let p = p.as_str().unwrap();
            assert!(
                std::fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).is_err(),
                "{p} must not be in the image"
            );
        }
        if let Some(owners) = e["owners"].as_object() {
            for (p, ids) in owners {
                let md = std::fs::symlink_metadata(rootfs.join(p.trim_start_matches('/'))).unwrap();
                let want = (
                    ids[0].as_u64().unwrap() as u32,
                    ids[1].as_u64().unwrap() as u32,
                );
                assert_eq!((md.uid(), md.gid()), want, "owner of {p}");
            }
        }
        if let Some(modes) = e["modes"].as_object() {
            for (p, m) in modes {
                let md = std::fs::metadata(rootfs.join(p.trim_start_matches('/'))).unwrap();
                assert_eq!(
                    format!("{:o}", md.mode() & 0o7777),
                    m.as_str().unwrap(),
                    "mode of {p}"
                );
            }
        }
        if let Some(cfg) = e["config"].as_object() {
            let inspect: Value = serde_json::from_str(&tool(
                "skopeo",
                // --raw: skopeo's parsed view drops docker's Healthcheck, OnBuild and Shell.
                &[
                    "inspect",
                    "--config",
                    "--raw",
                    &format!("oci-archive:{}", tar.display()),
                ],
            ))
            .unwrap();
            check_config(&inspect["config"], cfg);
        }
        if let Some(secret) = e["secret_never"].as_str() {
            assert!(!run.stderr.contains(secret), "secret in the logs");
            let layout = self.k.path(&format!("{}-layout", self.name));
            assert!(
                files_containing(&layout, secret.as_bytes()).is_empty(),
                "secret in the image"
            );
            assert!(
                files_containing(&self.k.path("store"), secret.as_bytes()).is_empty(),
                "secret in the store"
            );
        }
        if let Some(edit) = e["edit"].as_object() {
            std::fs::write(
                self.ctx.join(edit["file"].as_str().unwrap()),
                edit["content"].as_str().unwrap(),
            )
            .unwrap();
            let again = self
                .build(&self.k.path(&format!("{}-edit.tar", self.name)))
                .ok();
            let steps = again.steps();
            let state = |needle: &str| {
                steps
                    .iter()
                    .find(|(n, _)| n.contains(needle))
                    .map(|(_, s)| s.clone())
                    .unwrap_or_else(|| {
                        panic!("no step {needle:?} after the edit:\n{}", again.stderr)
                    })
            };
            for n in edit["cached"].as_array().into_iter().flatten() {
                assert_eq!(state(n.as_str().unwrap()), "CACHED", "{n} after the edit");
            }
            for n in edit["ran"].as_array().into_iter().flatten() {
                assert_eq!(state(n.as_str().unwrap()), "DONE", "{n} after the edit");
            }
        }
    }
}

fn check_config(c: &Value, want: &serde_json::Map<String, Value>) {
    let env: Vec<&str> = c["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (k, w) in want {
        match k.as_str() {
            "Env~" => {
                for e in w.as_array().unwrap() {
                    assert!(env.contains(&e.as_str().unwrap()), "Env {env:?} lacks {e}");
                }
            }
            "EnvPrefix" => {
                let p = w.as_str().unwrap();
                assert!(
                    env.iter().any(|e| e.starts_with(p)),
                    "no Env entry starts with {p}: {env:?}"
                );
            }
            "ExposedPorts~" | "Volumes~" => {
                let field = k.trim_end_matches('~');
                for key in w.as_array().unwrap() {
                    assert!(
                        c[field].get(key.as_str().unwrap()).is_some(),
                        "{field} lacks {key}: {}",
                        c[field]
                    );
                }
            }
            "Labels" => {
                for (lk, lv) in w.as_object().unwrap() {
                    assert_eq!(&c["Labels"][lk], lv, "label {lk}");
                }
            }
            "HealthcheckRetries" => assert_eq!(&c["Healthcheck"]["Retries"], w),
            field => assert_eq!(&c[field], w, "config field {field}"),
        }
    }
}

/// A failed case: its name, what failed, and every kiln run it made, whole.
fn failure_report(name: &str, msg: &str, transcript: &[String]) -> String {
    let mut r = format!("=== realistic case {name} FAILED: {msg}\n");
    if transcript.is_empty() {
        r.push_str("(no kiln run was made)\n");
    }
    for (i, t) in transcript.iter().enumerate() {
        r.push_str(&format!("--- kiln run {} of {name}\n{t}\n", i + 1));
    }
    r.push_str(&format!("=== end of {name}"));
    r
}

/// Writes `report` under `target/kiln-test/realistic-failures/` (the test's own directory is
/// deleted when it ends); returns the file's path, or why it could not be written.
fn keep_report(name: &str, report: &str) -> String {
    let dir = target_dir()
        .parent()
        .map(|t| t.join("kiln-test/realistic-failures"))
        .unwrap_or_else(|| std::env::temp_dir().join("kiln-realistic-failures"));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let file = dir.join(format!("{name}.{stamp}.{}.log", std::process::id()));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, report)) {
        Ok(()) => file.display().to_string(),
        Err(e) => format!("not kept: cannot write {}: {e}", file.display()),
    }
}

#[test]
fn realistic_dockerfiles_build_as_expected() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let all = cases();
    assert!(
        all.len() >= 61,
        "expected at least 61 cases, found {}",
        all.len()
    );
    // Each case's panic is caught and reported below with the case's whole transcript; the
    // default hook would print every one again with a backtrace. Only the place is kept.
    let panicked_at = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let default_hook = std::panic::take_hook();
    let at = panicked_at.clone();
    std::panic::set_hook(Box::new(move |info| {
        if let (Ok(mut at), Some(l)) = (at.lock(), info.location()) {
            *at = l.to_string();
        }
    }));
    for dir in &all {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx = k.path(&format!("{name}-ctx"));
        copy_dir(&dir.join("context"), &ctx);
        let expect: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expect.json")).unwrap())
                .unwrap();
        let case = Case {
            k: &k,
            name: name.clone(),
            ctx,
            expect,
            registry: registry.clone(),
            transcript: RefCell::new(Vec::new()),
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case.check()));
        if let Err(p) = outcome {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "(a panic without a message)".to_owned());
            let msg = format!("{msg}\n(panicked at {})", panicked_at.lock().unwrap());
            let report = failure_report(&name, &msg, &case.transcript.borrow());
            // Printed as it happens (not only in the summary, which a runner may cut) and
            // kept in a file that outlives the test's temporary directory.
            eprintln!("{report}");
            let kept = keep_report(&name, &report);
            failures.insert(name, format!("{msg}\n(full report: {kept})"));
        }
    }
    std::panic::set_hook(default_hook);
    println!(
        "realistic Dockerfiles: {} passed, {} failed",
        all.len() - failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures
            .iter()
            .map(|(n, m)| format!("--- {n}\n{m}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
