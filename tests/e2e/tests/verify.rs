//! A store whose blobs changed on disk behind kiln's back: `kiln verify` names the blob by its
//! digest (with the layer and cache records that use it) and exits 1; the next export never
//! ships the changed bytes (the blob is rebuilt from its layer, so the image stays the same);
//! `kiln verify --repair` removes it; a push never sends it.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;
use serde_json::Value;

/// `n` bytes that do not compress (a layer blob is as large as its files), from `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A context `FROM scratch` + `COPY data /data` (200 kB of noise) + `COPY note /note`.
fn context(k: &Kiln) -> (PathBuf, Vec<u8>) {
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY data /data\nCOPY note /note\n",
            ),
            ("note", "kept intact\n"),
        ],
    );
    let data = noise(7, 200_000);
    std::fs::write(ctx.join("data"), &data).unwrap();
    (ctx, data)
}

/// `kiln build --output type=oci,dest=TAR CTX [EXTRA...]`, which must succeed.
fn build_oci(k: &Kiln, ctx: &Path, tar: &Path, extra: &[&str]) -> Run {
    let dest = format!("type=oci,dest={}", tar.display());
    let mut args = vec!["build", "--progress=plain", "--output", &dest];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args).ok()
}

/// Extracts OCI tarball `tar` (with `tar`) into a fresh directory beside it.
fn extract(tar: &Path) -> PathBuf {
    let dir = tar.with_extension("extracted");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    dir
}

/// Every blob of OCI tarball `tar`, by name (hex), with its bytes.
fn tar_blobs(tar: &Path) -> Vec<(String, Vec<u8>)> {
    let blobs = extract(tar).join("blobs/sha256");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// sha256 of `bytes`, in hex, as `sha256sum` computes it.
fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b");
    std::fs::write(&f, bytes).unwrap();
    tool("sha256sum", &[f.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The layer digests (`sha256:...`) of the single image of OCI tarball `tar`.
fn layer_digests(tar: &Path) -> Vec<String> {
    let dir = extract(tar);
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(dir.join("index.json"));
    let manifest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = read(
        dir.join("blobs/sha256")
            .join(manifest.strip_prefix("sha256:").unwrap()),
    );
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Flips one bit in the middle of `path`, keeping its size, as a bad disk would.
fn flip_byte(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, at).unwrap();
}

/// Flips a byte in the store's blob of each of `layers`; returns their changed bytes.
fn flip_layers(k: &Kiln, layers: &[String]) -> Vec<Vec<u8>> {
    layers
        .iter()
        .map(|d| {
            flip_byte(&store_blob(k, d));
            std::fs::read(store_blob(k, d)).unwrap()
        })
        .collect()
}

fn store_blob(k: &Kiln, digest: &str) -> PathBuf {
    k.path("store/blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// Every blob of the tarball hashes to its name, and none is `bad`'s changed bytes.
fn assert_blobs_match(tar: &Path, changed: &[u8]) {
    let blobs = tar_blobs(tar);
    assert_eq!(blobs.len(), 4, "two layers, config, manifest");
    for (hex, bytes) in &blobs {
        assert_eq!(
            &sha256_hex(bytes),
            hex,
            "a blob of {} does not match its name",
            tar.display()
        );
        assert_ne!(bytes.as_slice(), changed, "the changed bytes were exported");
    }
}

/// The files of the image in OCI tarball `tar`, unpacked by umoci, are the context's.
fn assert_image_is_correct(k: &Kiln, tar: &Path, name: &str, data: &[u8]) {
    let bundle = k.unpack(tar, name, "latest");
    assert_eq!(std::fs::read(bundle.join("rootfs/data")).unwrap(), data);
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/note")).unwrap(),
        "kept intact\n"
    );
}

#[test]
fn verify_names_a_changed_layer_blob_and_the_next_export_does_not_ship_it() {
    let k = Kiln::new(&[]);
    let (ctx, data) = context(&k);
    let first_tar = k.path("first.tar");
    let first = build_oci(&k, &ctx, &first_tar, &[]);
    let ok = k.run(&["verify"]).ok();
    assert!(ok.stdout.contains("no problem"), "{}", ok.stdout);

    // The layer holding `data`: the larger one.
    let layers = layer_digests(&first_tar);
    assert_eq!(layers.len(), 2);
    let big = layers
        .iter()
        .max_by_key(|d| std::fs::metadata(store_blob(&k, d)).unwrap().len())
        .unwrap()
        .clone();
    let blob = store_blob(&k, &big);
    flip_byte(&blob);
    let changed = std::fs::read(&blob).unwrap();

    let bad = k.run(&["verify"]);
    assert_eq!(
        bad.code, 1,
        "verify must fail:\n{}\n{}",
        bad.stdout, bad.stderr
    );
    let line = bad
        .stdout
        .lines()
        .find(|l| l.starts_with(&big))
        .unwrap_or_else(|| panic!("{big} is not named:\n{}", bad.stdout));
    assert!(line.contains("changed on disk"), "{line}");
    assert!(bad.stdout.contains("used by layer"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("used by cache record") && bad.stdout.contains("COPY data /data"),
        "the cache record of the step is named:\n{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("1 problem"), "{}", bad.stdout);

    // The next export: the blob is rebuilt from its layer, the image is the same.
    let second_tar = k.path("second.tar");
    let second = build_oci(&k, &ctx, &second_tar, &[]);
    assert!(
        second.stderr.contains(&format!("blob {big}")) && second.stderr.contains("changed on disk"),
        "the export says what it rebuilt:\n{}",
        second.stderr
    );
    assert_eq!(second.digest(), first.digest());
    assert_blobs_match(&second_tar, &changed);
    assert_eq!(layer_digests(&second_tar), layers);
    assert_image_is_correct(&k, &second_tar, "second", &data);
    // skopeo reads it back, checking every digest.
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", second_tar.display()),
            &format!("oci:{}:latest", k.path("copied").display()),
        ],
    );
    // And the store is whole again.
    let again = k.run(&["verify"]).ok();
    assert!(again.stdout.contains("no problem"), "{}", again.stdout);
}

#[test]
fn verify_repair_removes_the_changed_blob_and_the_next_build_rebuilds_it() {
    let k = Kiln::new(&[]);
    let (ctx, data) = context(&k);
    let first_tar = k.path("first.tar");
    let first = build_oci(&k, &ctx, &first_tar, &[]);
    let layers = layer_digests(&first_tar);
    let changed = flip_layers(&k, &layers);

    let repair = k.run(&["verify", "--repair"]).ok();
    for d in &layers {
        assert!(
            repair
                .stdout
                .contains(&format!("repaired: removed blob {d}")),
            "{}",
            repair.stdout
        );
        assert!(!store_blob(&k, d).exists(), "{d} is still in the store");
    }
    assert!(repair.stdout.contains("2 problems"), "{}", repair.stdout);
    let clean = k.run(&["verify"]).ok();
    assert!(clean.stdout.contains("no problem"), "{}", clean.stdout);

    // Every step is still cached (the layers are whole); the export makes the same blobs.
    let tar = k.path("after.tar");
    let after = build_oci(&k, &ctx, &tar, &[]);
    assert_eq!(after.digest(), first.digest());
    for c in &changed {
        assert_blobs_match(&tar, c);
    }
    assert_image_is_correct(&k, &tar, "after", &data);
}

#[test]
fn a_push_never_sends_a_changed_blob() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let (ctx, data) = context(&k);
    let first_tar = k.path("first.tar");
    let first = build_oci(&k, &ctx, &first_tar, &[]);
    let layers = layer_digests(&first_tar);
    let changed = flip_layers(&k, &layers);
    // A name of this test's own: the registry holds nothing of it yet.
    let name = format!("{registry}/e2e/verify:{}", std::process::id());
    let c = ctx.display().to_string();
    let pushed = k
        .run(&["build", "--progress=plain", "-t", &name, "--push", &c])
        .ok();
    assert_eq!(pushed.digest(), first.digest());
    assert!(
        pushed.stderr.contains("changed on disk"),
        "{}",
        pushed.stderr
    );

    // What the registry holds: skopeo fetches it (checking every digest) into a layout.
    let layout = k.path("pulled");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci:{}:latest", layout.display()),
        ],
    );
    for d in &layers {
        let bytes = std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(sha256_hex(&bytes), d[7..]);
        assert!(
            !changed.contains(&bytes),
            "the registry holds changed bytes of {d}"
        );
    }
    let bundle = k.path("pulled-bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(bundle.join("rootfs/data")).unwrap(), data);
}

/// The `rootfs.diff_ids` of the image in OCI tarball `tar`.
fn diff_ids(tar: &Path) -> Value {
    let dir = extract(tar);
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(dir.join("index.json"));
    let hex = |d: &Value| {
        d.as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap()
            .to_owned()
    };
    let manifest = read(
        dir.join("blobs/sha256")
            .join(hex(&index["manifests"][0]["digest"])),
    );
    let config = read(
        dir.join("blobs/sha256")
            .join(hex(&manifest["config"]["digest"])),
    );
    config["rootfs"]["diff_ids"].clone()
}

#[test]
fn a_changed_base_layer_is_fetched_again_by_a_pull_and_never_exported() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let dockerfile = format!("FROM {registry}/busybox:latest\nCOPY note /note\n");
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("note", "kept intact\n"),
        ],
    );
    let first_tar = k.path("first.tar");
    let first = build_oci(&k, &ctx, &first_tar, &[]);
    let layers = layer_digests(&first_tar);
    let base = layers[0].clone();
    // Every blob matches its name, none is the changed bytes, and umoci unpacks the files.
    let check_image = |tar: &Path, name: &str, changed: &[u8]| {
        for (hex, bytes) in tar_blobs(tar) {
            assert_eq!(
                sha256_hex(&bytes),
                hex,
                "a blob of {name} does not match its name"
            );
            assert_ne!(bytes.as_slice(), changed, "the changed bytes were exported");
        }
        let bundle = k.unpack(tar, name, "latest");
        assert!(bundle.join("rootfs/bin/busybox").is_file());
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/note")).unwrap(),
            "kept intact\n"
        );
    };

    // A build that pulls finds the base layer changed and fetches it again: the same image.
    flip_byte(&store_blob(&k, &base));
    let changed = std::fs::read(store_blob(&k, &base)).unwrap();
    let bad = k.run(&["verify"]);
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    assert!(
        bad.stdout.lines().any(|l| l.starts_with(&base)),
        "{base} is not named:\n{}",
        bad.stdout
    );
    let pulled_tar = k.path("pulled.tar");
    let pulled = build_oci(&k, &ctx, &pulled_tar, &["--no-cache"]);
    assert_eq!(pulled.digest(), first.digest());
    check_image(&pulled_tar, "pulled", &changed);
    assert!(k.run(&["verify"]).ok().stdout.contains("no problem"));

    // A build whose steps are all cached pulls nothing: the export rebuilds the layer's blob
    // from its files (the same layer, kiln's compression of it).
    flip_byte(&store_blob(&k, &base));
    let changed = std::fs::read(store_blob(&k, &base)).unwrap();
    let cached_tar = k.path("cached.tar");
    let cached = build_oci(&k, &ctx, &cached_tar, &[]);
    assert!(
        cached.stderr.contains(&format!("blob {base}")),
        "{}",
        cached.stderr
    );
    check_image(&cached_tar, "cached", &changed);
    let rebuilt = diff_ids(&cached_tar);
    assert_ne!(
        rebuilt[0],
        diff_ids(&first_tar)[0],
        "kiln's tar of the same files"
    );
    assert_eq!(
        rebuilt[1],
        diff_ids(&first_tar)[1],
        "the COPY layer is the same"
    );
    assert!(k.run(&["verify"]).ok().stdout.contains("no problem"));

    // The next pull brings the registry's blob back as the layer's form: the first image.
    let again_tar = k.path("again.tar");
    let again = build_oci(&k, &ctx, &again_tar, &["--no-cache"]);
    assert_eq!(again.digest(), first.digest());
    check_image(&again_tar, "again", &changed);
}

#[test]
fn a_cache_export_never_ships_a_changed_blob() {
    let k = Kiln::new(&[]);
    let (ctx, data) = context(&k);
    let first_tar = k.path("first.tar");
    build_oci(&k, &ctx, &first_tar, &[]);
    let layers = layer_digests(&first_tar);
    let changed = flip_layers(&k, &layers);

    // `--cache-to` alone (no image export that would rebuild the blobs first), nothing to
    // run: the cache is made of the store's blobs, two of them changed.
    let cache = k.path("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    k.run(&[
        "build",
        "--progress=plain",
        "--cache-to",
        &to,
        ctx.to_str().unwrap(),
    ])
    .ok();
    let blobs = cache.join("blobs/sha256");
    let mut names = Vec::new();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            name,
            "a cache blob does not match its name"
        );
        assert!(
            !changed.iter().any(|c| c == &bytes),
            "the changed bytes went into the cache"
        );
        names.push(name);
    }
    // The layers are there, rebuilt from their directories (kiln's own: the same digests).
    for d in &layers {
        assert!(
            names.iter().any(|n| d.ends_with(n.as_str())),
            "{d} missing from the cache: {names:?}"
        );
    }

    // And a fresh store that imports it builds the same image without running anything.
    let other = Kiln::new(&[]);
    let from = format!("type=local,src={}", cache.display());
    let third_tar = other.path("third.tar");
    build_oci(&other, &ctx, &third_tar, &["--cache-from", &from]);
    assert_image_is_correct(&other, &third_tar, "third", &data);
}
