//! Cache that travels: `--cache-to type=local` in one store, `--cache-from type=local` in a
//! fresh one (another `KILN_ROOT`, standing for a second machine): no RUN step runs, the files
//! the RUN steps wrote and the image digest are the same; `mode=max` brings back a stage that
//! is only an input of the final one; layers are fetched only when a needed step uses them; a
//! missing source warns and the build goes on.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;

/// A marker only the builder stage's own layer holds (the final stage copies another file).
/// The Dockerfile writes it as `builder-only-$((6*7))`, so that no copy of the Dockerfile's
/// text can be mistaken for the layer.
const BUILDER_ONLY: &str = "builder-only-42";

/// Two stages on the busybox fixture; every RUN writes a timestamp and a random uuid, so a RUN
/// that ran again would show in the files. `extra_final` goes first in the final stage (a change there makes
/// everything after it miss, the builder stage excepted).
fn dockerfile(registry: &str, extra_final: &str) -> String {
    format!(
        r#"FROM {registry}/busybox:latest AS builder
RUN date +%s > /built && cat /proc/sys/kernel/random/uuid >> /built && echo builder-only-$((6*7)) > /junk

FROM {registry}/busybox:latest
{extra_final}
COPY --from=builder /built /built
COPY hello.txt /hello.txt
RUN date +%s > /stamp && cat /proc/sys/kernel/random/uuid >> /stamp && cat /built /hello.txt > /combined
"#
    )
}

fn context(k: &Kiln, extra_final: &str) -> PathBuf {
    k.write(
        "ctx",
        &[
            ("Dockerfile", &dockerfile(&test_registry(), extra_final)),
            ("hello.txt", "hello\n"),
        ],
    )
}

/// `kiln build` with an OCI tarball and a local copy of the result's files, plus `extra`.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    let tar = format!("type=oci,dest={}", k.path("image.tar").display());
    let files = format!("type=local,dest={}", k.path("files").display());
    let mut args = vec![
        "build",
        "--progress=plain",
        "-t",
        "travel:1",
        "--output",
        &tar,
        "--output",
        &files,
    ];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args)
}

fn read(k: &Kiln, file: &str) -> String {
    std::fs::read_to_string(k.path("files").join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

const BUILDER_RUN: &str = "RUN date +%s > /built";
const FINAL_RUN: &str = "RUN date +%s > /stamp";

#[test]
fn a_fresh_store_rebuilds_from_an_exported_directory_without_running() {
    let (first, second) = (Kiln::new(&[]), Kiln::new(&[]));
    let cache = first.path("cache");
    let to = format!("type=local,dest={}", cache.display());
    let ctx = context(&first, "");
    let built = build(&first, &ctx, &["--cache-to", &to]).ok();
    assert_eq!(built.step_state(FINAL_RUN), "DONE", "{}", built.stderr);
    assert!(
        built.stderr.contains("exporting cache to client directory"),
        "{}",
        built.stderr
    );
    // An OCI layout, as BuildKit's local cache exporter writes it.
    let index = std::fs::read_to_string(cache.join("index.json")).unwrap();
    assert!(
        index.contains(r#""org.opencontainers.image.ref.name":"latest""#),
        "{index}"
    );
    assert!(cache.join("oci-layout").is_file());
    let config_blobs = files_containing(&cache.join("blobs"), b"\"records\"");
    assert_eq!(config_blobs.len(), 1, "one cache config: {config_blobs:?}");

    let from = format!("type=local,src={}", cache.display());
    let ctx2 = context(&second, "");
    let again = build(&second, &ctx2, &["--cache-from", &from]).ok();
    let ran: Vec<_> = again
        .steps()
        .into_iter()
        .filter(|(name, state)| name.contains("RUN") && state != "CACHED")
        .collect();
    assert!(ran.is_empty(), "RUN steps ran: {ran:?}\n{}", again.stderr);
    assert_eq!(again.step_state(FINAL_RUN), "CACHED", "{}", again.stderr);
    assert_eq!(again.digest(), built.digest(), "same image");
    for f in ["stamp", "built", "combined"] {
        let (a, b) = (read(&first, f), read(&second, f));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{f}: written by the RUN in the first store");
    }
    // The imported steps are the second store's own now: a third build there needs no cache.
    let third = build(&second, &ctx2, &[]).ok();
    assert_eq!(third.step_state(FINAL_RUN), "CACHED", "{}", third.stderr);
    assert_eq!(third.digest(), built.digest());
}

#[test]
fn mode_max_brings_back_an_input_stage_and_mode_min_does_not_need_it() {
    let first = Kiln::new(&[]);
    let (min, max) = (first.path("cache-min"), first.path("cache-max"));
    let ctx = context(&first, "");
    let built = build(
        &first,
        &ctx,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=min", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    )
    .ok();
    let from = |dir: &Path| format!("type=local,src={}", dir.display());

    // The same build from the min cache: the result's chain is there, the builder stage is
    // not needed and does not run.
    let same = Kiln::new(&[]);
    let run = build(&same, &context(&same, ""), &["--cache-from", &from(&min)]).ok();
    assert_eq!(run.step_state(FINAL_RUN), "CACHED", "{}", run.stderr);
    assert_ne!(run.step_state(BUILDER_RUN), "DONE", "{}", run.stderr);
    assert_eq!(run.digest(), built.digest());

    // A change in the final stage before its COPY --from: the builder's output is needed.
    let changed = "RUN echo v2 > /v2";
    let with_max = Kiln::new(&[]);
    let run = build(
        &with_max,
        &context(&with_max, changed),
        &["--cache-from", &from(&max)],
    )
    .ok();
    assert_eq!(run.step_state(BUILDER_RUN), "CACHED", "{}", run.stderr);
    assert_eq!(run.step_state(FINAL_RUN), "DONE", "{}", run.stderr);
    assert_eq!(
        read(&with_max, "built"),
        read(&first, "built"),
        "the builder's RUN output came from the cache"
    );
    let with_min = Kiln::new(&[]);
    let run = build(
        &with_min,
        &context(&with_min, changed),
        &["--cache-from", &from(&min)],
    )
    .ok();
    assert_eq!(run.step_state(BUILDER_RUN), "DONE", "{}", run.stderr);
}

#[test]
fn only_the_layers_of_needed_steps_are_imported() {
    // Uncompressed layers, so that a marker in a layer can be found in the blobs.
    let first = Kiln::new(&[]);
    let cache = first.path("cache");
    let ctx = context(&first, "");
    build(
        &first,
        &ctx,
        &[
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,compression=uncompressed",
                cache.display()
            ),
        ],
    )
    .ok();
    assert!(
        !files_containing(&cache, BUILDER_ONLY.as_bytes()).is_empty(),
        "the builder stage's layer is in the max cache"
    );
    let second = Kiln::new(&[]);
    let run = build(
        &second,
        &context(&second, ""),
        &[
            "--cache-from",
            &format!("type=local,src={}", cache.display()),
        ],
    )
    .ok();
    assert_eq!(run.step_state(FINAL_RUN), "CACHED", "{}", run.stderr);
    // Reported cached, as BuildKit lists every step of a no-op rebuild...
    assert_eq!(run.step_state(BUILDER_RUN), "CACHED", "{}", run.stderr);
    // ...but its layer, which nothing needed, was never read into the store.
    let leaked = files_containing(&second.path("store"), BUILDER_ONLY.as_bytes());
    assert!(leaked.is_empty(), "builder layer imported: {leaked:?}");
}

#[test]
fn exporting_again_keeps_only_what_the_new_cache_names() {
    let k = Kiln::new(&[]);
    let cache = k.path("cache");
    let to = format!(
        "type=local,dest={},compression=uncompressed",
        cache.display()
    );
    build(&k, &context(&k, ""), &["--cache-to", &to]).ok();
    let first_stamp = read(&k, "stamp");
    build(&k, &context(&k, "RUN echo v2 > /v2"), &["--cache-to", &to]).ok();
    // The first build's final RUN layer (its timestamp) is no longer named: it is gone.
    assert!(
        files_containing(&cache, first_stamp.trim().as_bytes()).is_empty(),
        "a blob of the replaced cache stayed"
    );
    assert!(!files_containing(&cache, read(&k, "stamp").trim().as_bytes()).is_empty());
}

#[test]
fn a_missing_cache_source_warns_and_builds() {
    let k = Kiln::new(&[]);
    let missing = k.path("no-such-cache");
    let from = format!("type=local,src={}", missing.display());
    let run = build(&k, &context(&k, ""), &["--cache-from", &from]).ok();
    assert_eq!(run.step_state(FINAL_RUN), "DONE", "{}", run.stderr);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("WARNING") && l.contains("cache import"))
        .unwrap_or_else(|| panic!("no warning:\n{}", run.stderr));
    assert!(
        warning.contains(&missing.display().to_string()),
        "{warning}"
    );
    // A directory that is not a cache is the same warning, not a failure.
    let not_cache = k.write("not-a-cache", &[("index.json", "{ not json")]);
    let from = format!("type=local,src={}", not_cache.display());
    let run = build(&k, &context(&k, ""), &["--cache-from", &from]).ok();
    assert!(run.stderr.contains("WARNING"), "{}", run.stderr);
}

#[test]
fn a_bad_cache_to_fails_unless_ignore_error() {
    let k = Kiln::new(&[]);
    // A file where the directory should be.
    let blocker = k.path("blocker");
    std::fs::write(&blocker, "a file").unwrap();
    let to = format!("type=local,dest={}", blocker.display());
    let run = build(&k, &context(&k, ""), &["--cache-to", &to]).fails();
    assert!(run.stderr.contains("exporting cache to"), "{}", run.stderr);
    let run = build(
        &k,
        &context(&k, ""),
        &["--cache-to", &format!("{to},ignore-error=true")],
    )
    .ok();
    assert!(run.stderr.contains("WARNING"), "{}", run.stderr);
}

/// A repository of the test registry no other run has used.
fn fresh_repo(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}/cache-travel-{what}-{}-{nanos}",
        test_registry(),
        std::process::id()
    )
}

#[test]
fn a_fresh_store_rebuilds_from_a_registry_cache() {
    let first = Kiln::new(&[]);
    let repo = fresh_repo("registry");
    let ctx = context(&first, "");
    // The default index form, and an image manifest (for registries that refuse an index of
    // layers), both pushed by one build.
    let built = build(
        &first,
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={repo}:index,mode=max"),
            "--cache-to",
            &format!("type=registry,ref={repo}:manifest,image-manifest=true"),
        ],
    )
    .ok();
    assert!(
        built
            .stderr
            .contains(&format!("exporting cache to registry {repo}:index")),
        "{}",
        built.stderr
    );
    for (tag, from) in [
        ("index", format!("type=registry,ref={repo}:index")),
        // buildx's bare form: a registry reference.
        ("manifest", format!("{repo}:manifest")),
    ] {
        let second = Kiln::new(&[]);
        let again = build(&second, &context(&second, ""), &["--cache-from", &from]).ok();
        let ran: Vec<_> = again
            .steps()
            .into_iter()
            .filter(|(name, state)| name.contains("RUN") && state != "CACHED")
            .collect();
        assert!(
            ran.is_empty(),
            "{tag}: RUN steps ran: {ran:?}\n{}",
            again.stderr
        );
        assert_eq!(again.digest(), built.digest(), "{tag}");
        for f in ["stamp", "built"] {
            assert_eq!(read(&first, f), read(&second, f), "{tag}: {f}");
        }
    }
    // Exported again: every blob is already there, and the cache still reads.
    let again = build(
        &first,
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={repo}:index,mode=max"),
        ],
    )
    .ok();
    assert_eq!(again.step_state(FINAL_RUN), "CACHED", "{}", again.stderr);
}

#[test]
fn a_missing_registry_cache_warns_and_builds() {
    let k = Kiln::new(&[]);
    let from = format!("type=registry,ref={}:nothing", fresh_repo("missing"));
    let run = build(&k, &context(&k, ""), &["--cache-from", &from]).ok();
    assert_eq!(run.step_state(FINAL_RUN), "DONE", "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("WARNING") && l.contains("failed to import cache from registry")),
        "{}",
        run.stderr
    );
}

fn blob_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_cache_passed_from_job_to_job_stays_whole() {
    // CI: each job starts empty, imports the cache and exports it again to the same place.
    let first = Kiln::new(&[]);
    let cache = first.path("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    let from = format!("type=local,src={}", cache.display());
    build(&first, &context(&first, ""), &["--cache-to", &to]).ok();
    let blobs = blob_names(&cache);

    let second = Kiln::new(&[]);
    let run = build(
        &second,
        &context(&second, ""),
        &["--cache-from", &from, "--cache-to", &to],
    )
    .ok();
    assert_eq!(run.step_state(FINAL_RUN), "CACHED", "{}", run.stderr);
    // The steps below the hit were not needed, yet they stay in the cache.
    assert_eq!(blob_names(&cache), blobs);

    let third = Kiln::new(&[]);
    let run = build(
        &third,
        &context(&third, "RUN echo v2 > /v2"),
        &["--cache-from", &from],
    )
    .ok();
    assert_eq!(run.step_state(BUILDER_RUN), "CACHED", "{}", run.stderr);
}

#[test]
fn a_tampered_cache_blob_is_a_miss_with_a_warning() {
    let first = Kiln::new(&[]);
    let cache = first.path("cache");
    let to = format!(
        "type=local,dest={},compression=uncompressed",
        cache.display()
    );
    build(&first, &context(&first, ""), &["--cache-to", &to]).ok();
    // The final RUN's layer: the one blob holding the stamp it wrote. One byte changes.
    let stamp = read(&first, "stamp");
    let hits = files_containing(&cache.join("blobs"), stamp.trim().as_bytes());
    assert_eq!(hits.len(), 1, "{hits:?}");
    let mut bytes = std::fs::read(&hits[0]).unwrap();
    let at = bytes
        .windows(stamp.trim().len())
        .position(|w| w == stamp.trim().as_bytes())
        .unwrap();
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(&hits[0], &bytes).unwrap();

    let second = Kiln::new(&[]);
    let from = format!("type=local,src={}", cache.display());
    let run = build(&second, &context(&second, ""), &["--cache-from", &from]).ok();
    assert_eq!(run.step_state(FINAL_RUN), "DONE", "{}", run.stderr);
    assert_eq!(run.step_state("COPY hello.txt"), "CACHED", "{}", run.stderr);
    let warning = run
        .stderr
        .lines()
        .find(|l| l.starts_with("WARNING") && l.contains("not used"))
        .unwrap_or_else(|| panic!("no warning:\n{}", run.stderr));
    let name = hits[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(warning.contains(&name), "{warning}");
    assert_ne!(read(&second, "stamp"), stamp, "the RUN ran again");
}

#[test]
fn an_inline_cache_travels_inside_the_pushed_image() {
    let first = Kiln::new(&[]);
    let image = format!("{}:inline", fresh_repo("inline"));
    let pushed = build(
        &first,
        &context(&first, ""),
        &[
            "--output",
            &format!("type=registry,name={image}"),
            "--cache-to",
            "type=inline",
        ],
    )
    .ok();
    let config = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &format!("docker://{image}"),
        ],
    );
    assert!(config.contains("\"moby.buildkit.cache.v0\""), "{config}");

    // A fresh store: the image's cache, read as a registry cache, runs no RUN step; with the
    // same inline cache asked for, the image is the same.
    let second = Kiln::new(&[]);
    let again = build(
        &second,
        &context(&second, ""),
        &["--cache-from", &image, "--cache-to", "type=inline"],
    )
    .ok();
    assert_eq!(again.step_state(FINAL_RUN), "CACHED", "{}", again.stderr);
    assert_ne!(again.step_state(BUILDER_RUN), "DONE", "{}", again.stderr);
    assert_eq!(again.digest(), pushed.digest());
    assert_eq!(read(&second, "stamp"), read(&first, "stamp"));

    // An image without an inline cache is a warning.
    let third = Kiln::new(&[]);
    let plain = format!("{}:plain", fresh_repo("inline"));
    build(
        &third,
        &context(&third, ""),
        &["--output", &format!("type=registry,name={plain}")],
    )
    .ok();
    let run = build(&third, &context(&third, ""), &["--cache-from", &plain]).ok();
    assert!(
        run.stderr.contains("the image has no inline cache"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_zstd_cache_gives_the_same_image() {
    let first = Kiln::new(&[]);
    let cache = first.path("cache");
    let to = format!("type=local,dest={},compression=zstd", cache.display());
    let built = build(&first, &context(&first, ""), &["--cache-to", &to]).ok();
    // This build's layers are zstd; the base image's keeps the blob it was pulled as.
    let manifests: Vec<_> = files_containing(&cache.join("blobs"), b"\"manifests\"");
    assert_eq!(manifests.len(), 1, "one cache manifest: {manifests:?}");
    let manifest = std::fs::read_to_string(&manifests[0]).unwrap();
    assert!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{manifest}"
    );
    assert!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
        "{manifest}"
    );

    let second = Kiln::new(&[]);
    let from = format!("type=local,src={}", cache.display());
    let again = build(&second, &context(&second, ""), &["--cache-from", &from]).ok();
    assert_eq!(again.step_state(FINAL_RUN), "CACHED", "{}", again.stderr);
    assert_eq!(again.digest(), built.digest());
}

#[test]
fn a_cache_hits_when_the_same_base_image_is_reached_by_another_name() {
    // The fixture under another repository name: the same manifest, byte for byte.
    let alias = fresh_repo("alias");
    tool(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &format!("docker://{}/busybox:latest", test_registry()),
            &format!("docker://{alias}:latest"),
        ],
    );
    let (first, second) = (Kiln::new(&[]), Kiln::new(&[]));
    let cache = first.path("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    let ctx = context(&first, "");
    build(&first, &ctx, &["--cache-to", &to]).ok();
    let stamp = read(&first, "stamp");

    // The second machine names the base by the other name (a mirror, a copy in its own
    // registry): the image is the same, so no step runs.
    let text = dockerfile(&test_registry(), "").replace(
        &format!("{}/busybox:latest", test_registry()),
        &format!("{alias}:latest"),
    );
    let ctx2 = second.write("ctx", &[("Dockerfile", &text), ("hello.txt", "hello\n")]);
    let from = format!("type=local,src={}", cache.display());
    let again = build(&second, &ctx2, &["--cache-from", &from]).ok();
    assert_eq!(again.step_state(BUILDER_RUN), "CACHED", "{}", again.stderr);
    assert_eq!(again.step_state(FINAL_RUN), "CACHED", "{}", again.stderr);
    assert_eq!(read(&second, "stamp"), stamp);
}
