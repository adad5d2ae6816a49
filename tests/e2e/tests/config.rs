//! kiln.toml: where settings come from (`kiln config show`), and that the settings really
//! apply: the store root, the executor, registry mirrors (Docker Hub served by the loopback
//! test registry, without internet), and a typo's file:line:column.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::*;
use serde_json::Value;

/// Runs kiln with a clean configuration environment: no `KILN_ROOT` (the harness sets one),
/// `XDG_CONFIG_HOME` and `HOME` inside the sandbox, so that only the test's files apply.
fn kiln(k: &Kiln, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(target_dir().join("kiln"));
    cmd.env_remove("KILN_ROOT")
        .env_remove("KILN_EXECUTOR")
        .env_remove("KILN_MAX_PARALLELISM")
        .env("KILN_PLUGIN_PATH", k.plugin_dir())
        .env("XDG_CONFIG_HOME", k.path("xdg"))
        .env("HOME", k.path("home"));
    cmd.envs(env.iter().copied());
    cmd.args(args);
    Run::from(cmd.output().expect("run kiln"))
}

/// Writes the per-user kiln.toml of the sandbox; returns its path.
fn user_config(k: &Kiln, text: &str) -> PathBuf {
    let path = k.path("xdg/kiln/kiln.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn show_json(k: &Kiln, env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["config", "show", "--format", "json"]);
    let r = kiln(k, env, &all).ok();
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn source(doc: &Value, key: &str) -> String {
    doc["values"][key]["source"]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .to_owned()
}

#[test]
fn config_show_names_the_source_of_every_value() {
    let k = Kiln::new(&[]);
    let file = user_config(
        &k,
        "root = \"/srv/from-file\"\n\
         [worker]\nexecutor = \"runc\"\n\
         [registry.\"docker.io\"]\nmirrors = [\"mirror.example.com\"]\n",
    );
    let file_s = file.display().to_string();

    // File values, defaults for the rest.
    let doc = show_json(&k, &[], &[]);
    assert_eq!(doc["values"]["root"]["value"], "/srv/from-file", "{doc}");
    assert_eq!(source(&doc, "root"), file_s);
    assert_eq!(source(&doc, "worker.executor"), file_s);
    assert_eq!(doc["values"]["worker.executor"]["value"], "runc");
    assert_eq!(source(&doc, "worker.max-parallelism"), "default");
    assert_eq!(source(&doc, "plugins.dirs"), "default");
    assert_eq!(
        doc["values"]["registry.\"docker.io\".mirrors"]["value"][0],
        "mirror.example.com"
    );
    assert_eq!(source(&doc, "registry.\"docker.io\".mirrors"), file_s);
    assert_eq!(source(&doc, "registry.\"docker.io\".http"), "default");
    // The system file was looked for too, and is not there.
    assert_eq!(doc["files"][0]["path"], "/etc/kiln/kiln.toml");
    assert_eq!(doc["files"][1]["path"], file_s.as_str());
    assert_eq!(doc["files"][1]["read"], true);

    // The environment overrides the file; a flag overrides the environment.
    let env = [
        ("KILN_ROOT", "/srv/from-env"),
        ("KILN_EXECUTOR", "embedded"),
    ];
    let doc = show_json(&k, &env, &[]);
    assert_eq!(doc["values"]["root"]["value"], "/srv/from-env");
    assert_eq!(source(&doc, "root"), "env KILN_ROOT");
    assert_eq!(source(&doc, "worker.executor"), "env KILN_EXECUTOR");
    let doc = show_json(&k, &env, &["--root", "/srv/from-flag"]);
    assert_eq!(doc["values"]["root"]["value"], "/srv/from-flag");
    assert_eq!(source(&doc, "root"), "--root");

    // `--config FILE` is read instead of the searched files.
    let other = k.path("other.toml");
    std::fs::write(&other, "[worker]\nmax-parallelism = 3\n").unwrap();
    let doc = show_json(&k, &[], &["--config", other.to_str().unwrap()]);
    assert_eq!(doc["values"]["worker.max-parallelism"]["value"], 3);
    assert_eq!(
        source(&doc, "worker.max-parallelism"),
        other.display().to_string()
    );
    assert_eq!(source(&doc, "worker.executor"), "default");
    assert_eq!(doc["files"].as_array().unwrap().len(), 1, "{doc}");

    // The text form: TOML lines with the source as a comment.
    let text = kiln(&k, &[("KILN_ROOT", "/srv/from-env")], &["config", "show"])
        .ok()
        .stdout;
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_owned()
    };
    assert!(line("root").contains("\"/srv/from-env\""), "{text}");
    assert!(line("root").ends_with("# env KILN_ROOT"), "{text}");
    assert!(
        line("worker.executor").ends_with(&format!("# {file_s}")),
        "{text}"
    );
    assert!(
        line("worker.max-parallelism").ends_with("# default"),
        "{text}"
    );
}

#[test]
fn the_store_root_comes_from_the_config() {
    let k = Kiln::new(&[]);
    let store = k.path("configured-store");
    user_config(&k, &format!("root = {:?}\n", store.display().to_string()));
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY a /a\n"),
            ("a", "from the context\n"),
        ],
    );
    let out = k.path("out");
    kiln(
        &k,
        &[],
        &[
            "build",
            "--progress=plain",
            "-o",
            out.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("a")).unwrap(),
        "from the context\n"
    );
    // The store (its cache index) is where the file says, and nowhere else kiln would look.
    assert!(
        store.join("cache.redb").is_file(),
        "no store in {}",
        store.display()
    );
    assert!(!k.path("home/.local/share/kiln").exists());
    assert!(!k.path("store").exists());

    // A relative root is relative to the file that names it.
    user_config(&k, "root = \"relative-store\"\n");
    let doc = show_json(&k, &[], &[]);
    assert_eq!(
        doc["values"]["root"]["value"],
        k.path("xdg/kiln/relative-store").display().to_string()
    );
}

/// A `runc` that logs each call, then runs the real one: shows which executor ran a step.
fn logging_runc(k: &Kiln) -> (String, PathBuf) {
    let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("runc not found in PATH: this test needs it (apt-get install runc)")
        });
    let dir = k.path("fake-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let log = k.path("runc.log");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
        log.display(),
        real.display()
    );
    let wrapper = dir.join("runc");
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, log)
}

#[test]
fn the_executor_comes_from_the_config_and_the_flag_overrides_it() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    user_config(
        &k,
        &format!(
            "root = {:?}\n[worker]\nexecutor = \"runc\"\n",
            k.path("store").display().to_string()
        ),
    );
    let (path, log) = logging_runc(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/busybox:latest\nRUN echo ran > /ran\n"),
        )],
    );
    let build = |out: &Path, extra: &[&str]| {
        let mut args = vec!["build", "--progress=plain", "--no-cache", "-o"];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        kiln(&k, &[("PATH", &path)], &args).ok()
    };
    let out = k.path("out-runc");
    build(&out, &[]);
    assert_eq!(std::fs::read_to_string(out.join("ran")).unwrap(), "ran\n");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        calls.lines().any(|l| l.contains("run")),
        "runc was not used for the RUN step; its calls:\n{calls}"
    );

    // `--executor embedded` wins over the file: runc is not called.
    std::fs::remove_file(&log).unwrap();
    let out = k.path("out-embedded");
    build(&out, &["--executor", "embedded"]);
    assert_eq!(std::fs::read_to_string(out.join("ran")).unwrap(), "ran\n");
    assert!(!log.exists(), "runc ran despite --executor embedded");
}

#[test]
fn docker_hub_images_are_pulled_through_a_configured_mirror() {
    let registry = test_registry();
    // A pull-through mirror of Docker Hub stores `library/busybox`: put the fixture there.
    tool(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{registry}/busybox:latest"),
            &format!("docker://{registry}/library/busybox:latest"),
        ],
    );
    let k = Kiln::new(&[]);
    // The first mirror is down: the next one serves the image, as in BuildKit.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    user_config(
        &k,
        &format!(
            "root = {:?}\n[registry.\"docker.io\"]\nmirrors = [{down:?}, {registry:?}]\n",
            k.path("store").display().to_string()
        ),
    );
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM docker.io/library/busybox:latest\nRUN echo mirrored > /m\n",
        )],
    );
    let out = k.path("out");
    kiln(
        &k,
        &[],
        &[
            "build",
            "--progress=plain",
            "-o",
            out.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("m")).unwrap(),
        "mirrored\n"
    );
    // The base is the fixture (Debian's static busybox), not whatever Docker Hub serves.
    assert_eq!(
        std::fs::read(out.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap(),
        "the busybox in the image is not the test fixture"
    );
}

#[test]
fn a_typo_in_kiln_toml_fails_with_its_position() {
    let k = Kiln::new(&[]);
    let file = user_config(&k, "root = \"/srv/x\"\n[worker]\nexecuter = \"runc\"\n");
    let ctx = k.write("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let r = kiln(&k, &[], &["build", ctx.to_str().unwrap()]).fails();
    let want = format!(
        "invalid configuration {}:3:1: unknown field `executer`",
        file.display()
    );
    assert!(r.stderr.contains(&want), "want {want}:\n{}", r.stderr);
    assert!(r.stderr.contains("3 | executer = \"runc\""), "{}", r.stderr);
    let r = kiln(&k, &[], &["config", "show"]).fails();
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    // `kiln version` does not need the configuration.
    kiln(&k, &[], &["version"]).ok();

    // A missing `--config` file is an error; missing searched files are not.
    std::fs::remove_file(&file).unwrap();
    kiln(&k, &[], &["config", "show"]).ok();
    let missing = k.path("nope.toml");
    let r = kiln(
        &k,
        &[],
        &["--config", missing.to_str().unwrap(), "config", "show"],
    )
    .fails();
    assert!(
        r.stderr.contains(&format!(
            "the configuration file {} given by --config does not exist",
            missing.display()
        )),
        "{}",
        r.stderr
    );
}
