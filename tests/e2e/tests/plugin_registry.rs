//! Plugins delivered through registries (issue 12, item 1): `kiln plugins push` publishes a
//! plugin library as an OCI artifact; `# syntax=REF@sha256:…` and `--plugin REF@sha256:…` pull
//! it, verified, into the store, from where later builds load it without the network; an
//! unpinned reference is refused with the line to pin it, unless an allowlist admits it; a
//! tampered blob is refused and nothing is kept.
//!
//! Each test runs a registry of its own (Debian's `docker-registry`): the tests stop it and
//! rewrite blobs in its storage. The publisher and the builder have separate stores, as two
//! machines would.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::registry::OwnRegistry;
use kiln_e2e::*;

/// `kiln plugins push` of package `package`'s library to `reference`, from a store of its
/// own; returns the pinned reference it prints.
fn push(package: &str, reference: &str) -> String {
    let publisher = Kiln::new(&[]);
    let lib = plugin_lib(package);
    let r = publisher
        .run(&["plugins", "push", lib.to_str().unwrap(), reference])
        .ok();
    let pinned = r.stdout.trim().to_owned();
    let digest = pinned
        .strip_prefix(&format!("{reference}@sha256:"))
        .unwrap_or_else(|| panic!("push printed {pinned:?}, not {reference}@sha256:…"));
    assert_eq!(digest.len(), 64, "{pinned}");
    pinned
}

/// `sha256:<hex>` of a file.
fn sha256_of(file: &Path) -> String {
    let out = tool("sha256sum", &[file.to_str().unwrap()]);
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

/// The pulled plugins kept in `k`'s store.
fn kept(k: &Kiln) -> Vec<String> {
    match std::fs::read_dir(k.path("store/plugins")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn copy_context(k: &Kiln, syntax: &str) -> PathBuf {
    k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                &format!("# syntax={syntax}\nFROM scratch\nCOPY a.txt /a.txt\n"),
            ),
            ("a.txt", "from a pulled frontend\n"),
        ],
    )
}

fn build_to(k: &Kiln, ctx: &Path, out: &str, extra: &[&str]) -> Run {
    let dest = format!("type=local,dest={}", k.path(out).display());
    let mut args = vec!["build", "--progress=plain", "--output", &dest];
    args.extend_from_slice(extra);
    let c = ctx.to_str().unwrap().to_owned();
    args.push(&c);
    k.run(&args)
}

#[test]
fn a_pushed_frontend_pinned_by_syntax_builds_and_stays_in_the_store() {
    let mut registry = OwnRegistry::start();
    let reference = format!("{}/kiln/dockerfile:1", registry.addr);
    let pinned = push("kiln-frontend-dockerfile", &reference);
    let index_digest = pinned.rsplit_once('@').unwrap().1.to_owned();

    // What push wrote: an index of kiln's artifact type, a manifest for this platform whose
    // config is the plugin's manifest JSON and whose one layer is the library.
    let index = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            // skopeo takes a tag or a digest, not both.
            &format!("docker://{}/kiln/dockerfile@{index_digest}", registry.addr),
        ],
    ));
    assert_eq!(
        index["artifactType"], "application/vnd.kiln.plugin.v1",
        "{index}"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
    assert_eq!(index["manifests"][0]["platform"]["os"], "linux", "{index}");
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!(
                "docker://{}/kiln/dockerfile@{manifest_digest}",
                registry.addr
            ),
        ],
    ));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.plugin.config.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.kiln.plugin.library.v1"
    );
    assert_eq!(
        manifest["layers"][0]["digest"],
        sha256_of(&plugin_lib("kiln-frontend-dockerfile")).as_str()
    );
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(registry.blob_file(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["name"], "dockerfile", "{config}");

    // A build pinned to it pulls it, says so, and builds with it.
    let k = Kiln::new(&[]);
    let ctx = copy_context(&k, &pinned);
    let r = build_to(&k, &ctx, "out", &[]).ok();
    assert_eq!(
        std::fs::read_to_string(k.path("out/a.txt")).unwrap(),
        "from a pulled frontend\n"
    );
    let said = format!(
        "# syntax={pinned}: frontend dockerfile 0.1.0 from {}/kiln/dockerfile@{index_digest} \
         (pulled now, kept in the store)",
        registry.addr
    );
    assert!(r.stderr.contains(&said), "{said:?} missing:\n{}", r.stderr);
    assert_eq!(kept(&k), [index_digest.strip_prefix("sha256:").unwrap()]);

    // `kiln plugins ls` lists it with its source.
    let ls = k.run(&["plugins", "ls"]).ok();
    let row = ls
        .stdout
        .lines()
        .find(|l| l.contains(&format!("{}/kiln/dockerfile@{index_digest}", registry.addr)))
        .unwrap_or_else(|| panic!("no pulled row:\n{}", ls.stdout));
    assert!(
        row.starts_with("dockerfile ") && row.contains("frontend"),
        "{row}"
    );
    assert!(
        ls.stdout.lines().next().unwrap().contains("SOURCE"),
        "{}",
        ls.stdout
    );

    // `--frontend` and `BUILDKIT_SYNTAX` name it the same way (found in the store now).
    let plain = k.write(
        "plain",
        &[
            ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
            ("a.txt", "plain\n"),
        ],
    );
    let r = build_to(&k, &plain, "out-fe", &["--frontend", &pinned]).ok();
    assert!(
        r.stderr.contains(&format!(
            "--frontend {pinned}: frontend dockerfile 0.1.0 from"
        )),
        "{}",
        r.stderr
    );
    let arg = format!("BUILDKIT_SYNTAX={pinned}");
    let r = build_to(&k, &plain, "out-arg", &["--build-arg", &arg]).ok();
    assert!(
        r.stderr.contains(&format!(
            "BUILDKIT_SYNTAX={pinned}: frontend dockerfile 0.1.0 from"
        )),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(k.path("out-arg/a.txt")).unwrap(),
        "plain\n"
    );

    // With the registry gone, the next build loads it from the store.
    registry.stop();
    let r = build_to(&k, &ctx, "out2", &["--no-cache"]).ok();
    assert!(
        r.stderr.contains("(kept in the store)"),
        "not loaded from the store:\n{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(k.path("out2/a.txt")).unwrap(),
        "from a pulled frontend\n"
    );
}

#[test]
fn an_unpinned_reference_is_refused_with_the_line_to_pin_it_unless_allowed() {
    let registry = OwnRegistry::start();
    let reference = format!("{}/kiln/dockerfile:1", registry.addr);
    let pinned = push("kiln-frontend-dockerfile", &reference);
    let digest = pinned.rsplit_once('@').unwrap().1.to_owned();
    let k = Kiln::new(&[]);
    let ctx = copy_context(&k, &reference);

    let r = build_to(&k, &ctx, "out", &[]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        format!("# syntax= \"{reference}\" is a plugin reference without a digest"),
        format!("`# syntax={pinned}`"),
        "--allow-plugin PATTERN".to_owned(),
    ] {
        assert!(r.stderr.contains(&want), "{want:?} missing:\n{}", r.stderr);
    }
    assert!(kept(&k).is_empty(), "{:?}", kept(&k));

    // `--allow-plugin` admits it: the tag is resolved now and the log shows the digest.
    let pattern = format!("{}/kiln/*", registry.addr);
    let r = build_to(&k, &ctx, "out", &["--allow-plugin", &pattern]).ok();
    let said = format!("{reference} resolved now to {digest}; unpinned, allowed by the pattern");
    assert!(r.stderr.contains(&said), "{said:?} missing:\n{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(k.path("out/a.txt")).unwrap(),
        "from a pulled frontend\n"
    );

    // So does kiln.toml's `[plugins] allow`.
    let fresh = Kiln::new(&[]);
    let config = fresh.path("xdg-config/kiln/kiln.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, format!("[plugins]\nallow = [\"{pattern}\"]\n")).unwrap();
    let ctx = copy_context(&fresh, &reference);
    let r = build_to(&fresh, &ctx, "out", &[]).ok();
    assert!(r.stderr.contains(&said), "{}", r.stderr);
}

#[test]
fn a_tampered_layer_or_index_is_refused_and_nothing_is_kept() {
    let registry = OwnRegistry::start();
    let reference = format!("{}/kiln/dockerfile:1", registry.addr);
    let pinned = push("kiln-frontend-dockerfile", &reference);
    let library = sha256_of(&plugin_lib("kiln-frontend-dockerfile"));

    // The library's bytes changed in the registry's storage.
    let blob = registry.blob_file(&library);
    let original = std::fs::read(&blob).unwrap();
    let mut bytes = original.clone();
    bytes[1000] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let k = Kiln::new(&[]);
    let ctx = copy_context(&k, &pinned);
    let r = build_to(&k, &ctx, "out", &[]).fails();
    let said = format!("blob {library} has the wrong content");
    assert!(r.stderr.contains(&said), "{said:?} missing:\n{}", r.stderr);
    assert!(
        r.stderr.contains("refused, nothing was kept"),
        "{}",
        r.stderr
    );
    assert!(kept(&k).is_empty(), "{:?}", kept(&k));
    assert!(!k.path("out/a.txt").exists());

    // The index changed to point elsewhere: its digest no longer matches the pin.
    std::fs::write(&blob, &original).unwrap();
    let index_digest = pinned.rsplit_once('@').unwrap().1;
    let index_file = registry.blob_file(index_digest);
    let text = std::fs::read_to_string(&index_file).unwrap();
    std::fs::write(&index_file, text.replace("\"linux\"", "\"linux\" ")).unwrap();
    let r = build_to(&k, &ctx, "out", &[]).fails();
    let said = format!("manifest {index_digest} has the wrong content");
    assert!(r.stderr.contains(&said), "{said:?} missing:\n{}", r.stderr);
    assert!(kept(&k).is_empty(), "{:?}", kept(&k));
}

#[test]
fn an_instruction_plugin_given_by_plugin_flag_lowers_its_instruction() {
    let registry = OwnRegistry::start();
    let reference = format!("{}/kiln/greet:1", registry.addr);
    let pinned = push("kiln-test-greet", &reference);
    let k = Kiln::new(&[]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch AS base\nCOPY a.txt /a.txt\nGREET --loud world\nCOPY a.txt /b.txt\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    // Not installed: GREET is unknown.
    let r = build_to(&k, &ctx, "out", &[]).fails();
    assert!(
        r.stderr.to_lowercase().contains("unknown instruction"),
        "{}",
        r.stderr
    );
    let r = build_to(&k, &ctx, "out", &["--plugin", &pinned]).ok();
    assert_eq!(
        std::fs::read_to_string(k.path("out/greeting.txt")).unwrap(),
        "HELLO WORLD\n"
    );
    assert!(
        r.stderr.contains("plugin greet 0.1.0 (instruction) from"),
        "{}",
        r.stderr
    );
    let ls = k.run(&["plugins", "ls"]).ok();
    assert!(
        ls.stdout.lines().any(|l| l.starts_with("greet ")
            && l.contains(&format!("{}/kiln/greet@sha256:", registry.addr))),
        "{}",
        ls.stdout
    );

    // Unpinned, `--plugin` is refused with its own pinned form.
    let r = build_to(&k, &ctx, "out", &["--plugin", &reference]).fails();
    assert!(
        r.stderr.contains(&format!("`--plugin {pinned}`")),
        "{}",
        r.stderr
    );
    // An instruction plugin is no frontend.
    let ctx = copy_context(&k, &pinned);
    let r = build_to(&k, &ctx, "out", &[]).fails();
    assert!(r.stderr.contains("is not a frontend"), "{}", r.stderr);
}

#[test]
fn push_probes_the_library_and_refuses_a_broken_plugin() {
    let registry = OwnRegistry::start();
    let k = Kiln::new(&[]);
    let lib = plugin_lib("kiln-test-not-plugin");
    let reference = format!("{}/kiln/not:1", registry.addr);
    let r = k
        .run(&["plugins", "push", lib.to_str().unwrap(), &reference])
        .fails();
    assert!(r.stderr.contains("refusing to push"), "{}", r.stderr);
    assert!(r.stderr.contains("not a kiln plugin"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // Nothing was pushed.
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo is required for this test");
    assert!(!out.status.success());
}

/// Over `--builder`, the daemon pulls a frontend pinned in the build file itself (the file
/// travels), and `--plugin` / `--allow-plugin` travel in the request: the daemon pulls the
/// plugin into its own store and applies both to that build only.
#[test]
fn a_daemon_pulls_the_pinned_frontend_and_the_plugin_flags_of_one_build() {
    let registry = OwnRegistry::start();
    let reference = format!("{}/kiln/dockerfile:1", registry.addr);
    let pinned = push("kiln-frontend-dockerfile", &reference);
    let k = Kiln::new(&[]);
    let daemon = kiln_e2e::serve::Daemon::unix(&k, "run/kiln.sock", "daemon-root", &[]);
    let ctx = copy_context(&k, &pinned);
    build_to(&k, &ctx, "out", &["--builder", &daemon.addr]).ok();
    assert_eq!(
        std::fs::read_to_string(k.path("out/a.txt")).unwrap(),
        "from a pulled frontend\n"
    );
    let hex = pinned.rsplit_once("@sha256:").unwrap().1;
    assert!(
        daemon
            .root
            .join("plugins")
            .join(hex)
            .join("plugin.so")
            .is_file(),
        "the daemon's store does not keep the pulled frontend"
    );
    assert!(kept(&k).is_empty(), "the client pulled it: {:?}", kept(&k));

    // `--plugin` of an instruction plugin: the daemon pulls it (into its store, not the
    // client's) and the build lowers GREET with it.
    let greet_ref = format!("{}/kiln/greet:1", registry.addr);
    let greet = push("kiln-test-greet", &greet_ref);
    let ctx = k.write(
        "greet-ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch AS base\nCOPY a.txt /a.txt\nGREET --loud world\nCOPY a.txt /b.txt\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    build_to(
        &k,
        &ctx,
        "greet-out",
        &["--builder", &daemon.addr, "--plugin", &greet],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(k.path("greet-out/greeting.txt")).unwrap(),
        "HELLO WORLD\n"
    );
    let greet_hex = greet.rsplit_once("@sha256:").unwrap().1;
    assert!(
        daemon
            .root
            .join("plugins")
            .join(greet_hex)
            .join("plugin.so")
            .is_file(),
        "the daemon's store does not keep the pulled plugin"
    );
    assert!(kept(&k).is_empty(), "the client pulled it: {:?}", kept(&k));

    // That build's plugin is not the daemon's: the next build without `--plugin` does not
    // know GREET.
    let r = build_to(&k, &ctx, "greet-out2", &["--builder", &daemon.addr]).fails();
    assert!(
        r.stderr.to_lowercase().contains("unknown instruction"),
        "{}",
        r.stderr
    );

    // Unpinned, refused with its pinned form; admitted by this build's `--allow-plugin`, and
    // by that build only.
    let r = build_to(
        &k,
        &ctx,
        "greet-out3",
        &["--builder", &daemon.addr, "--plugin", &greet_ref],
    )
    .fails();
    assert!(
        r.stderr.contains(&format!("`--plugin {greet}`")),
        "{}",
        r.stderr
    );
    let pattern = format!("{}/kiln/*", registry.addr);
    build_to(
        &k,
        &ctx,
        "greet-out4",
        &[
            "--builder",
            &daemon.addr,
            "--plugin",
            &greet_ref,
            "--allow-plugin",
            &pattern,
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(k.path("greet-out4/greeting.txt")).unwrap(),
        "HELLO WORLD\n"
    );
    let r = build_to(
        &k,
        &ctx,
        "greet-out5",
        &["--builder", &daemon.addr, "--plugin", &greet_ref],
    )
    .fails();
    assert!(
        r.stderr.contains(&format!("`--plugin {greet}`")),
        "another build was admitted by an earlier build's --allow-plugin:\n{}",
        r.stderr
    );
}
