//! Cache mounts that travel (issue 9): `--cache-to ...,cache-mounts=true` carries the contents
//! of `RUN --mount=type=cache` directories by id, and `--cache-from` restores them into a
//! fresh store (another `KILN_ROOT`, standing for a CI runner that starts empty), through a
//! local directory and the loopback registry. Without the option nothing of the mount
//! travels; a tampered or hostile mount blob is a warning and the mount starts empty.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;

const MOUNT_MEDIA_TYPE: &str = "application/vnd.kiln.cache-mount.v0.tar+gzip";

/// The first build: a RUN that fills the cache mount `pkgs` (a file, a subdirectory, a
/// symlink, a file owned by another user) and writes its own marker. The marker in the file
/// is written as `pkg-$((6*7))` so that no copy of the Dockerfile's text reads as it.
const FILL: &str = "RUN --mount=type=cache,target=/cache,id=pkgs,uid=1000,gid=1000,mode=0750 \
    echo pkg-$((6*7)) > /cache/pkg.txt && mkdir -p /cache/sub && echo deep > /cache/sub/deep \
    && ln -s pkg.txt /cache/link && echo mine > /cache/owned && chown 123:45 /cache/owned \
    && echo filled > /filled";

/// A later step that only reads the mount: what it saw goes to `/seen`.
const LOOK: &str = "RUN --mount=type=cache,target=/cache,id=pkgs \
    (cat /cache/pkg.txt /cache/sub/deep; readlink /cache/link; stat -c '%u:%g %a' /cache \
    /cache/owned) > /seen 2>&1 || echo missing > /seen";

fn dockerfile(steps: &[&str]) -> String {
    let mut d = format!("FROM {}/busybox:latest\n", test_registry());
    for s in steps {
        d.push_str(s);
        d.push('\n');
    }
    d
}

/// Builds `steps` in `k`'s store with a local output at `files`, plus `extra` flags.
fn build(k: &Kiln, steps: &[&str], extra: &[&str]) -> Run {
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile(steps))]);
    let _ = std::fs::remove_dir_all(k.path("files"));
    let files = format!("type=local,dest={}", k.path("files").display());
    let mut args = vec!["build", "--progress=plain", "--output", &files];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args)
}

fn seen(k: &Kiln) -> String {
    std::fs::read_to_string(k.path("files/seen")).unwrap()
}

/// What `LOOK` sees in a mount restored from the first build.
const RESTORED: &str = "pkg-42\ndeep\npkg.txt\n1000:1000 750\n123:45 644\n";

fn local(dir: &Path) -> String {
    format!("type=local,src={}", dir.display())
}

/// The descriptors of the cache manifest tagged `latest` in layout `dir`.
fn manifest_of(dir: &Path) -> (PathBuf, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let path = dir.join("blobs/sha256").join(&digest[7..]);
    let manifest = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, manifest)
}

fn mount_descriptors(manifest: &serde_json::Value) -> Vec<serde_json::Value> {
    let list = manifest
        .get("manifests")
        .or_else(|| manifest.get("layers"))
        .and_then(|l| l.as_array())
        .cloned()
        .unwrap_or_default();
    list.into_iter()
        .filter(|d| d["mediaType"] == MOUNT_MEDIA_TYPE)
        .collect()
}

#[test]
fn a_fresh_store_gets_the_cache_mount_back_from_a_local_cache() {
    let first = Kiln::new(&[]);
    let (with, without) = (first.path("cache-mounts"), first.path("cache-plain"));
    let built = build(
        &first,
        &[FILL],
        &[
            "--cache-to",
            &format!("type=local,dest={},cache-mounts=true", with.display()),
            "--cache-to",
            &format!("type=local,dest={}", without.display()),
        ],
    )
    .ok();
    assert_eq!(built.step_state("RUN --mount"), "DONE", "{}", built.stderr);

    // The mount is one blob of kiln's media type, named by id, with how it was made.
    let (_, manifest) = manifest_of(&with);
    let mounts = mount_descriptors(&manifest);
    assert_eq!(mounts.len(), 1, "{manifest}");
    let a = &mounts[0]["annotations"];
    assert_eq!(a["dev.kiln.cache-mount.id"], "pkgs", "{manifest}");
    assert_eq!(a["dev.kiln.cache-mount.mode"], "0750", "{manifest}");
    assert_eq!(a["dev.kiln.cache-mount.uid"], "1000", "{manifest}");
    assert_eq!(a["dev.kiln.cache-mount.sharing"], "shared", "{manifest}");
    // The cache config (what BuildKit reads) does not name it.
    let config_blobs = files_containing(&with.join("blobs"), b"\"records\"");
    assert_eq!(config_blobs.len(), 1);
    let config = std::fs::read_to_string(&config_blobs[0]).unwrap();
    let blob = mounts[0]["digest"].as_str().unwrap();
    assert!(!config.contains(blob), "{config}");
    // Without the option, nothing of the mount is in the cache.
    let (_, plain) = manifest_of(&without);
    assert!(mount_descriptors(&plain).is_empty(), "{plain}");
    assert!(with.join("blobs/sha256").join(&blob[7..]).is_file());
    assert!(!without.join("blobs/sha256").join(&blob[7..]).exists());

    // A fresh store: the filling step is a hit (it does not run), a new step sees the files.
    let second = Kiln::new(&[]);
    let run = build(&second, &[FILL, LOOK], &["--cache-from", &local(&with)]).ok();
    assert_eq!(
        run.step_state("RUN --mount=type=cache,target=/cache,id=pkgs,uid"),
        "CACHED"
    );
    assert_eq!(seen(&second), RESTORED, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("restored cache mount \"pkgs\" from cache"),
        "{}",
        run.stderr
    );
    // The store keeps the files once, in the mount's directory: the blob and its unpacked
    // copy that served the restore are gone (LOOK's own layer holds what it saw, `/seen`).
    let store = second.path("store");
    assert_eq!(
        files_containing(&store.join("cache-mounts"), b"pkg-42").len(),
        1
    );
    let elsewhere: Vec<_> = files_containing(&store, b"pkg-42")
        .into_iter()
        .filter(|p| !p.starts_with(store.join("cache-mounts")) && p.ends_with("pkg.txt"))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    assert!(!store.join("blobs/sha256").join(&blob[7..]).exists());

    // Another fresh store where the filling step changed: it runs again, on the restored
    // files.
    let third = Kiln::new(&[]);
    let changed = format!("{LOOK} && echo changed");
    let run = build(&third, &[&changed], &["--cache-from", &local(&with)]).ok();
    assert_eq!(run.step_state("echo changed"), "DONE", "{}", run.stderr);
    assert_eq!(seen(&third), RESTORED, "{}", run.stderr);

    // From the cache without the option: the mount starts empty.
    let fourth = Kiln::new(&[]);
    let run = build(&fourth, &[LOOK], &["--cache-from", &local(&without)]).ok();
    assert_eq!(seen(&fourth), "missing\n", "{}", run.stderr);

    // A job whose steps all hit restores no mount, and passes the imported one on.
    let fifth = Kiln::new(&[]);
    let passed = fifth.path("passed");
    let run = build(
        &fifth,
        &[FILL],
        &[
            "--cache-from",
            &local(&with),
            "--cache-to",
            &format!("type=local,dest={},cache-mounts=true", passed.display()),
        ],
    )
    .ok();
    assert!(
        !run.stderr.contains("restored cache mount"),
        "{}",
        run.stderr
    );
    assert!(!fifth.path("store/cache-mounts").exists());
    let (_, manifest) = manifest_of(&passed);
    assert_eq!(
        mount_descriptors(&manifest)[0]["digest"],
        blob,
        "{manifest}"
    );
    let sixth = Kiln::new(&[]);
    let run = build(&sixth, &[LOOK], &["--cache-from", &local(&passed)]).ok();
    assert_eq!(seen(&sixth), RESTORED, "{}", run.stderr);
}

/// A repository of the test registry no other run has used.
fn fresh_repo(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}/cache-mounts-{what}-{}-{nanos}",
        test_registry(),
        std::process::id()
    )
}

#[test]
fn a_fresh_store_gets_the_cache_mount_back_from_a_registry_cache() {
    let first = Kiln::new(&[]);
    let repo = fresh_repo("registry");
    build(
        &first,
        &[FILL],
        &[
            "--cache-to",
            &format!("type=registry,ref={repo}:index,cache-mounts=true"),
            "--cache-to",
            &format!("type=registry,ref={repo}:manifest,image-manifest=true,cache-mounts=true"),
        ],
    )
    .ok();
    for tag in ["index", "manifest"] {
        let k = Kiln::new(&[]);
        let from = format!("type=registry,ref={repo}:{tag}");
        let run = build(&k, &[LOOK], &["--cache-from", &from]).ok();
        assert_eq!(seen(&k), RESTORED, "{tag}: {}", run.stderr);
        // A job that needed the mount again passes it on: exported from this store.
        let again = fresh_repo("again");
        build(
            &k,
            &[LOOK, "RUN echo next > /next"],
            &[
                "--cache-to",
                &format!("type=registry,ref={again},cache-mounts=true"),
            ],
        )
        .ok();
        let next = Kiln::new(&[]);
        let run = build(
            &next,
            &[LOOK],
            &["--cache-from", &format!("type=registry,ref={again}")],
        )
        .ok();
        assert_eq!(seen(&next), RESTORED, "{tag}, passed on: {}", run.stderr);
    }
}

/// Writes `bytes` as a blob of layout `dir` and points the mount descriptor of its manifest at
/// it (the manifest and index rewritten to match), so that only the blob's content is wrong.
fn replace_mount_blob(dir: &Path, bytes: &[u8]) {
    let blob = dir.join("new-blob");
    std::fs::write(&blob, bytes).unwrap();
    let sha = |p: &Path| -> String {
        tool("sha256sum", &[p.to_str().unwrap()])
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    };
    let hex = sha(&blob);
    std::fs::rename(&blob, dir.join("blobs/sha256").join(&hex)).unwrap();
    let (_, mut manifest) = manifest_of(dir);
    for d in manifest["manifests"].as_array_mut().unwrap() {
        if d["mediaType"] == MOUNT_MEDIA_TYPE {
            d["digest"] = format!("sha256:{hex}").into();
            d["size"] = bytes.len().into();
            d["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("containerd.io/uncompressed");
        }
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let path = dir.join("m.json");
    std::fs::write(&path, &bytes).unwrap();
    let mhex = sha(&path);
    std::fs::rename(&path, dir.join("blobs/sha256").join(&mhex)).unwrap();
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"] = format!("sha256:{mhex}").into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_tampered_or_hostile_mount_blob_is_a_warning_and_an_empty_mount() {
    let first = Kiln::new(&[]);
    let cache = first.path("cache");
    build(
        &first,
        &[FILL],
        &[
            "--cache-to",
            &format!("type=local,dest={},cache-mounts=true", cache.display()),
        ],
    )
    .ok();
    let warned = |run: &Run, why: &str| {
        run.stderr.lines().any(|l| {
            l.starts_with("WARNING")
                && l.contains("cache mount \"pkgs\"")
                && l.contains("could not be restored")
                && l.contains(why)
        })
    };

    // Tampered: the blob's bytes no longer match its digest.
    let (_, manifest) = manifest_of(&cache);
    let digest = mount_descriptors(&manifest)[0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = cache.join("blobs/sha256").join(&digest[7..]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let k = Kiln::new(&[]);
    let run = build(&k, &[LOOK], &["--cache-from", &local(&cache)]).ok();
    assert!(warned(&run, "expected sha256:"), "{}", run.stderr);
    assert_eq!(seen(&k), "missing\n", "{}", run.stderr);

    // Hostile: a well-formed blob (its digest right) whose tar climbs out of the directory.
    let escape = format!("../../../escape-{}", std::process::id());
    let tar = k.path("hostile.tar");
    std::fs::write(&tar, tar_with_raw_name(escape.as_bytes())).unwrap();
    tool("gzip", &["-n", tar.to_str().unwrap()]);
    replace_mount_blob(&cache, &std::fs::read(k.path("hostile.tar.gz")).unwrap());
    let h = Kiln::new(&[]);
    let run = build(&h, &[LOOK], &["--cache-from", &local(&cache)]).ok();
    assert!(warned(&run, "climbs above"), "{}", run.stderr);
    assert_eq!(seen(&h), "missing\n", "{}", run.stderr);
    // Nowhere in the sandbox (the store included), nor beside it.
    let name = escape.trim_start_matches("../../../");
    let escaped = files_containing(h.dir.path(), b"x\n")
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect::<Vec<_>>();
    assert!(escaped.is_empty(), "{escaped:?}");
    for above in h.dir.path().ancestors().skip(1) {
        assert!(!above.join(name).exists(), "{}", above.display());
    }
}
