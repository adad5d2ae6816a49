//! The export side of the edit loop (issue 9 items 4 and 6), through the real binary:
//! - a no-op rebuild to the same OCI tarball leaves the file as kiln wrote it (not copied
//!   again), while a tarball changed or replaced since is written again;
//! - layers of random files (stored blocks and coded headers, no deflate over the data) are
//!   valid gzip that `gzip -t`, skopeo and umoci read, and an edit gives the image digest a
//!   build of the same files in a fresh store gives;
//! - a blob changed in the store is never exported, whether the tarball is kept or written.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_e2e::*;
use serde_json::Value;

/// `n` bytes that do not compress, from `seed` (splitmix64).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut x = mix(seed ^ 0x5851_f42d_4c95_7f2d);
    (0..n.div_ceil(8))
        .flat_map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(x).to_le_bytes()
        })
        .take(n)
        .collect()
}

/// A context like the bench's `context` workload, smaller: 500 random files of 1 byte to
/// 8 KB in 10 directories (about 2 MB, several gzip chunks of tar headers between random
/// contents), a text file, and `COPY . /`. (Not `COPY . /app`: the `/app` it creates gets
/// the build's time, which a fresh store's build of the same files does not share.)
fn context(k: &Kiln) -> PathBuf {
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /\n"),
            (
                "notes.txt",
                &"kiln keeps the edit loop short.\n".repeat(2000),
            ),
        ],
    );
    for i in 0..500u64 {
        let dir = ctx.join(format!("d{:02}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        let size = (i as usize * 7919) % 8000 + 1;
        std::fs::write(dir.join(format!("f{i:04}.dat")), noise(i, size)).unwrap();
    }
    ctx
}

/// `kiln build --output type=oci,dest=TAR CTX`, which must succeed. With `SOURCE_DATE_EPOCH`,
/// so that builds at different times (an incremental one, a fresh store's) can give one
/// image digest: the config's `created` times come from it.
fn build_oci(k: &Kiln, ctx: &Path, tar: &Path) -> Run {
    let dest = format!("type=oci,dest={}", tar.display());
    let c = ctx.display().to_string();
    k.run(&[
        "build",
        "--progress=plain",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1700000000",
        "--output",
        &dest,
        &c,
    ])
    .ok()
}

/// The blobs of OCI tarball `tar`, extracted (with `tar`) into a fresh directory beside it.
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

/// The layer digests of the image in OCI tarball `tar`, from its manifest.
fn layers(tar: &Path) -> Vec<String> {
    let dir = extract(tar);
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(dir.join("index.json"));
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = read(dir.join("blobs/sha256").join(&manifest["sha256:".len()..]));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// Every blob of `tar` hashes to its name (with `sha256sum`), and every layer passes `gzip -t`.
fn assert_blobs_are_sound(tar: &Path) {
    let dir = extract(tar);
    let blobs = dir.join("blobs/sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&blobs).unwrap() {
        let path = e.unwrap().path();
        let sum = tool("sha256sum", &[path.to_str().unwrap()]);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            sum.starts_with(name),
            "blob {name} of {} hashes to {sum}",
            tar.display()
        );
        n += 1;
    }
    assert!(n >= 3, "{n} blobs in {}", tar.display());
    for l in layers(tar) {
        tool(
            "gzip",
            &["-t", blobs.join(&l["sha256:".len()..]).to_str().unwrap()],
        );
    }
}

/// skopeo copies the tarball (checking every digest) and umoci unpacks it: the files are the
/// context's.
fn assert_tools_read(k: &Kiln, tar: &Path, name: &str, ctx: &Path, edited: &str) {
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}", tar.display()),
            &format!("oci:{}:latest", k.path(&format!("{name}-copied")).display()),
        ],
    );
    let bundle = k.unpack(tar, name, "latest");
    for rel in ["notes.txt", "d03/f0003.dat", edited] {
        assert!(
            std::fs::read(bundle.join("rootfs").join(rel)).unwrap()
                == std::fs::read(ctx.join(rel)).unwrap(),
            "{rel} differs in the image {name}"
        );
    }
}

#[test]
fn a_no_op_rebuild_keeps_its_tarball_and_an_edit_gives_the_digest_of_a_fresh_build() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let tar = k.path("out/app.tar");
    let first = build_oci(&k, &ctx, &tar);
    assert_blobs_are_sound(&tar);
    let ino = std::fs::metadata(&tar).unwrap().ino();
    let bytes = std::fs::read(&tar).unwrap();

    // No-op: the same image, the tarball kiln wrote is kept as it is (not copied again).
    let noop = build_oci(&k, &ctx, &tar);
    assert_eq!(noop.digest(), first.digest());
    assert_eq!(
        std::fs::metadata(&tar).unwrap().ino(),
        ino,
        "tarball rewritten"
    );
    assert!(std::fs::read(&tar).unwrap() == bytes);

    // A tarball removed, or changed in place, is written again, whole.
    std::fs::remove_file(&tar).unwrap();
    build_oci(&k, &ctx, &tar);
    assert!(
        std::fs::read(&tar).unwrap() == bytes,
        "rewritten differently"
    );
    std::fs::write(&tar, b"not a tarball").unwrap();
    build_oci(&k, &ctx, &tar);
    assert!(std::fs::read(&tar).unwrap() == bytes, "not restored");

    // Edit one file: the new image is written, and a fresh store building the edited context
    // gets the same digest, layer for layer.
    let edited = "d07/f0007.dat";
    std::fs::write(ctx.join(edited), noise(1_000_007, 5000)).unwrap();
    let edit = build_oci(&k, &ctx, &tar);
    assert_ne!(edit.digest(), first.digest());
    assert_blobs_are_sound(&tar);
    let other = Kiln::new(&[]);
    let fresh_tar = other.path("fresh.tar");
    let fresh = build_oci(&other, &ctx, &fresh_tar);
    assert_eq!(fresh.digest(), edit.digest());
    assert_eq!(layers(&fresh_tar), layers(&tar));
    assert!(
        std::fs::read(&fresh_tar).unwrap() == std::fs::read(&tar).unwrap(),
        "the tarballs differ"
    );
    assert_tools_read(&k, &tar, "edited", &ctx, edited);

    // Edit back: the first image again, byte for byte.
    std::fs::write(ctx.join(edited), noise(7, (7 * 7919) % 8000 + 1)).unwrap();
    let back = build_oci(&k, &ctx, &tar);
    assert_eq!(back.digest(), first.digest());
    assert!(std::fs::read(&tar).unwrap() == bytes);
}

#[test]
fn a_changed_store_blob_never_leaves_whether_the_tarball_is_kept_or_written() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let tar = k.path("app.tar");
    let first = build_oci(&k, &ctx, &tar);
    let bytes = std::fs::read(&tar).unwrap();
    let layer = layers(&tar)[0].clone();
    let blob = k.path("store/blobs/sha256").join(&layer["sha256:".len()..]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&blob)
            .unwrap();
        let at = f.metadata().unwrap().len() / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        b[0] ^= 0x20;
        f.write_all_at(&b, at).unwrap();
    }

    // The same tarball again: kept, as it was written (nothing left the store).
    let again = build_oci(&k, &ctx, &tar);
    assert_eq!(again.digest(), first.digest());
    assert!(std::fs::read(&tar).unwrap() == bytes);

    // Another tarball: the changed blob is found as it is copied, rebuilt from its layer, and
    // the image is the same.
    let other = k.path("other.tar");
    let run = build_oci(&k, &ctx, &other);
    assert!(
        run.stderr.contains(&format!("blob {layer}")) && run.stderr.contains("changed on disk"),
        "the export says what it rebuilt:\n{}",
        run.stderr
    );
    assert_eq!(run.digest(), first.digest());
    assert!(std::fs::read(&other).unwrap() == bytes);
    assert_blobs_are_sound(&other);
    assert!(
        !other.with_extension("kiln-tmp").exists(),
        "a temporary tarball is left"
    );
}
