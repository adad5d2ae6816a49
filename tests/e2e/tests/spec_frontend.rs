//! The second frontend end to end: a TOML build spec (`frontends/spec`, docs/spec-frontend.md)
//! chosen by its `# syntax=kiln/spec` line or by `--frontend spec`, built on the busybox test
//! base into an image whose files and config are read back with skopeo and umoci; its errors
//! at `build.toml:LINE`; a cache mount kept from one build to the next; the shipped example.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_e2e::*;

const PACKAGE: &str = "kiln-frontend-spec";

/// A sandbox with the spec frontend and the exec primitive.
fn sandbox() -> Kiln {
    let k = Kiln::new(&["kiln-exec"]);
    k.add_plugin(PACKAGE);
    k
}

/// `kiln build` of `-f FILE` in `ctx` on the busybox base (`bb`), to an OCI tarball tagged
/// `spec:1`; returns the run and the tarball.
fn build_image(k: &Kiln, ctx: &Path, file: &str, extra: &[&str]) -> (Run, std::path::PathBuf) {
    let tar = k.path("out/image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let f = ctx.join(file).display().to_string();
    let mut args = vec!["-f", &f, "-t", "spec:1", "--output", &dest];
    args.extend_from_slice(extra);
    (build_bb(k, &[], ctx, &args), tar)
}

const APP: &str = r#"# syntax=kiln/spec
[args]
GREETING = "hello"

[stage.build]
from = "bb"
workdir = "/work"
args = ["GREETING"]
steps = [
  { copy = "src/app.txt", to = "/work/app.txt" },
  { name = "generate", run = "echo \"$GREETING from run\" > generated.txt && cat app.txt >> generated.txt" },
]

[stage.final]
from = "bb"
env = { APP_HOME = "/srv/app" }
steps = [
  { copy = "/work/generated.txt", from = "build", to = "/srv/app/generated.txt" },
  { copy = "src/app.txt", to = "/srv/app/", chown = "1000:1000" },
]

[stage.final.image]
entrypoint = ["/bin/sh", "-c", "cat /srv/app/generated.txt"]
env = { MODE = "production" }
labels = { "org.example.greeting" = "${GREETING}" }
user = "1000"
workdir = "/srv/app"
"#;

#[test]
fn a_build_file_chosen_by_its_syntax_line_gives_an_image_with_its_files_and_config() {
    let k = sandbox();
    let ctx = k.write(
        "ctx",
        &[("build.toml", APP), ("src/app.txt", "from the context\n")],
    );
    let (run, tar) = build_image(&k, &ctx, "build.toml", &["--build-arg", "GREETING=hi"]);
    let run = run.ok();
    assert!(
        run.stderr
            .contains("# syntax=kiln/spec: served by the installed frontend plugin spec"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("with frontend spec"), "{}", run.stderr);
    // Steps are named in the progress as the file names them.
    assert_eq!(
        run.step_state("[build 3/3] generate: RUN"),
        "DONE",
        "{}",
        run.stderr
    );

    // Config, as skopeo reads it.
    let inspect = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", tar.display()),
        ],
    ));
    let c = &inspect["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "cat /srv/app/generated.txt"])
    );
    assert_eq!(c["User"], "1000");
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["Labels"]["org.example.greeting"], "hi");
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"APP_HOME=/srv/app") && env.contains(&"MODE=production"),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("GREETING=")),
        "a build arg leaked into the image's Env: {env:?}"
    );
    // The history names the steps.
    let history: Vec<&str> = inspect["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.contains(
            &"COPY --from=build /work/generated.txt /srv/app/generated.txt # final/step-1"
        ),
        "{history:?}"
    );

    // Files, as umoci unpacks them: the RUN's output (made in another stage) and a file
    // copied from the context.
    let bundle = k.unpack(&tar, "image", "1");
    let rootfs = bundle.join("rootfs");
    let read =
        |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(
        read("srv/app/generated.txt"),
        "hi from run\nfrom the context\n"
    );
    assert_eq!(read("srv/app/app.txt"), "from the context\n");
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(rootfs.join("srv/app/app.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert!(
        rootfs.join("bin/busybox").exists(),
        "built on the busybox base"
    );
    assert!(
        !rootfs.join("work").exists(),
        "the build stage's files leaked"
    );
}

#[test]
fn the_frontend_flag_chooses_it_for_a_file_without_the_line() {
    let k = sandbox();
    let plain = "[stage.only]\nfrom = \"bb\"\nsteps = [ { run = \"echo flagged > /flagged\" } ]\n";
    let ctx = k.write("ctx", &[("plain.toml", plain)]);
    let out = k.path("out");
    let o = out.display().to_string();
    let f = ctx.join("plain.toml").display().to_string();
    // Without the flag it is read as a Dockerfile, and is not one.
    let r = build_bb(&k, &[], &ctx, &["-f", &f, "-o", &o]).fails();
    assert!(r.stderr.contains("plain.toml:1"), "{}", r.stderr);
    build_bb(&k, &[], &ctx, &["--frontend", "spec", "-f", &f, "-o", &o]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("flagged")).unwrap(),
        "flagged\n"
    );
}

#[test]
fn an_error_names_the_build_file_line_and_exits_1() {
    let k = sandbox();
    let bad = "# syntax=kiln/spec\n[stage.build]\nfrom = \"bb\"\n\n[stage.final]\nfrom = \"bb\"\nsteps = [\n  { copy = \"/x\", from = \"biuld\", to = \"/x\" },\n]\n";
    let ctx = k.write("ctx", &[("build.toml", bad)]);
    let f = ctx.join("build.toml").display().to_string();
    let r = build_bb(&k, &[], &ctx, &["-f", &f]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("build.toml:8: unknown stage \"biuld\" (did you mean build?)"),
        "{}",
        r.stderr
    );
    // The failing line is shown from the file, as for a Dockerfile.
    assert!(r.stderr.contains(">>>   { copy = \"/x\""), "{}", r.stderr);

    // A step that fails when it runs is located at its line too.
    let failing = "# syntax=kiln/spec\n[stage.a]\nfrom = \"bb\"\nsteps = [\n  { run = \"true\" },\n  { run = \"exit 3\" },\n]\n";
    let ctx = k.write("ctx2", &[("build.toml", failing)]);
    let f = ctx.join("build.toml").display().to_string();
    let r = build_bb(&k, &[], &ctx, &["-f", &f]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("build.toml:6"), "{}", r.stderr);
}

#[test]
fn a_cache_mount_persists_between_two_builds() {
    let k = sandbox();
    let spec = "# syntax=kiln/spec\n[args]\nN = \"0\"\n[stage.a]\nfrom = \"bb\"\nargs = [\"N\"]\nsteps = [\n  { run = \"echo run-$N >> /cache/runs && cp /cache/runs /runs\", cache = [\"/cache\"] },\n]\n";
    let ctx = k.write("ctx", &[("build.toml", spec)]);
    let f = ctx.join("build.toml").display().to_string();
    for n in ["1", "2"] {
        let out = k.path(&format!("out-{n}"));
        let o = out.display().to_string();
        let arg = format!("N={n}");
        build_bb(&k, &[], &ctx, &["-f", &f, "--build-arg", &arg, "-o", &o]).ok();
    }
    // The second run (a new key: N changed) saw what the first left in the cache.
    assert_eq!(
        std::fs::read_to_string(k.path("out-2/runs")).unwrap(),
        "run-1\nrun-2\n"
    );
}

/// examples/spec is a real multi-stage build: built here so that it never rots.
#[test]
fn the_shipped_example_builds() {
    let k = sandbox();
    let example = workspace().join("examples/spec");
    let f = example.join("build.toml").display().to_string();
    let out = k.path("out");
    let o = out.display().to_string();
    let run = build_bb(
        &k,
        &[],
        &example,
        &[
            "-f",
            &f,
            "--build-arg",
            "BASE=bb",
            "--build-arg",
            "SITE_VERSION=2.0",
            "-o",
            &o,
        ],
    )
    .ok();
    assert!(run.stderr.contains("with frontend spec"), "{}", run.stderr);
    let page = std::fs::read_to_string(out.join("www/welcome.html")).unwrap();
    assert!(
        page.contains("Welcome to the kiln spec example.") && page.contains("site version 2.0"),
        "{page}"
    );
    let index = std::fs::read_to_string(out.join("www/index.html")).unwrap();
    assert!(
        index.contains("<a href=\"about.html\">about</a>"),
        "{index}"
    );
    assert!(out.join("bin/httpd").exists() || out.join("bin/busybox").exists());
}

#[test]
fn call_targets_and_check_print_as_for_a_dockerfile() {
    let k = sandbox();
    let spec = "# syntax=kiln/spec\n[stage.build]\nfrom = \"bb\"\ndescription = \"compiles the app\"\n[stage.final]\nfrom = \"scratch\"\nsteps = [\n  { copy = \"/x\", from = \"build\", to = \"/x\", chmod = \"9\" },\n]\n";
    let ctx = k.write("ctx", &[("build.toml", spec)]);
    let f = ctx.join("build.toml").display().to_string();
    let c = ctx.display().to_string();
    let r = k.run(&["build", "--call", "targets", "-f", &f, &c]).ok();
    assert!(
        r.stdout.contains("build           compiles the app")
            && r.stdout.contains("final (default)"),
        "{}",
        r.stdout
    );
    // check lowers everything and reports the error at its line, building nothing.
    // (The base is the local busybox: check resolves images as a build does.)
    let r = build_bb(&k, &[], &ctx, &["--call", "check", "-f", &f]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("ERROR: invalid chmod \"9\"") && r.stderr.contains("build.toml:8"),
        "{}",
        r.stderr
    );
}
