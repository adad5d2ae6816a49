//! Multi-platform builds (`--platform a,b,...`, issue 10): every platform in one solve, the
//! stage on `$BUILDPLATFORM` that does not depend on the target built once, the results
//! written as an OCI image index (tarball, directory, registry) read back per platform by
//! skopeo `--override-arch` and umoci, one directory per platform for `type=local` and
//! `type=tar`, and `type=docker` refused as BuildKit refuses it.
//!
//! The tests whose RUN steps run programs of another architecture (their names contain
//! `emulat`) change or need the kernel's binfmt_misc handlers: `.config/nextest.toml` puts them
//! in the `binfmt` test group, with `emulation.rs`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use kiln_e2e::{
    build_bb, busybox_layout, json, platform_image, registry_json, tool, workspace, Kiln, Run,
};

const ARCHES: [&str; 3] = ["amd64", "arm64", "s390x"];
const PLATFORMS: &str = "linux/amd64,linux/arm64,linux/s390x";

/// The build stage runs on the build platform and does not read the target (one file per
/// architecture); the final stage copies its target's file and labels the image.
const DOCKERFILE: &str = "\
FROM --platform=$BUILDPLATFORM bb AS build
RUN mkdir /out && for a in amd64 arm64 s390x; do echo \"built for $a\" > /out/$a; done
FROM scratch
ARG TARGETARCH TARGETPLATFORM
COPY --from=build /out/$TARGETARCH /arch.txt
LABEL arch=$TARGETARCH platform=$TARGETPLATFORM shared=yes
";

/// The goarch fixture's OCI layout (`cargo xtask fixtures`): the static goarch program for
/// arm64, s390x and amd64, tagged per architecture and `latest` (the index).
fn goarch_layout() -> PathBuf {
    let dir = workspace().join("target/kiln-test/fixtures/goarch-oci");
    assert!(
        dir.join("index.json").is_file(),
        "{} is missing: run `cargo xtask fixtures` (it cross-compiles the goarch program with Go \
         from PyPI)",
        dir.display()
    );
    dir
}

/// `kiln build --progress=plain --platform PLATFORMS` of `ctx` with busybox as `bb`.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    build_bb(k, &[], ctx, &[&["--platform", PLATFORMS], extra].concat())
}

/// The steps whose name contains `needle`, with their final word.
fn steps_named(r: &Run, needle: &str) -> Vec<(String, String)> {
    r.steps()
        .into_iter()
        .filter(|(n, _)| n.contains(needle))
        .collect()
}

/// The platforms of an index document, `os/arch[/variant]`, in order.
fn index_platforms(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect()
}

/// Asserts what skopeo and umoci read of `image` (a skopeo image name) for each architecture:
/// the config's architecture and labels, and the file the final stage copied.
fn assert_each_platform(k: &Kiln, image: &str, name: &str, extra: &[&str]) {
    for arch in ARCHES {
        // One platform's image copied out of the index, then unpacked by umoci.
        let (cfg, bundle) = platform_image(k, image, name, arch, extra, &[]);
        assert_eq!(cfg["architecture"], arch, "{cfg}");
        assert_eq!(cfg["os"], "linux", "{cfg}");
        let labels = &cfg["config"]["Labels"];
        assert_eq!(labels["arch"], arch, "{cfg}");
        assert_eq!(labels["platform"], format!("linux/{arch}"), "{cfg}");
        assert_eq!(labels["shared"], "yes", "{cfg}");
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/arch.txt")).unwrap(),
            format!("built for {arch}\n")
        );
        let files: Vec<String> = std::fs::read_dir(bundle.join("rootfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(files, ["arch.txt"], "{arch}");
    }
}

/// The first "done when": three platforms from one Dockerfile whose build stage runs
/// on `$BUILDPLATFORM`, into an OCI tarball that is an image index. The shared stage's RUN
/// ran once (one step in the progress, DONE); each platform's COPY is a step of its own, named
/// with its platform. `--metadata-file` has the index digest and no config digest.
#[test]
fn three_platforms_in_one_solve_make_an_oci_index() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let tar = k.path("out.tar");
    let meta = k.path("meta.json");
    let r = build(
        &k,
        &ctx,
        &[
            "-t",
            "app:1",
            "--metadata-file",
            meta.to_str().unwrap(),
            "--annotation",
            "index:org.opencontainers.image.title=multi",
            "--annotation",
            "manifest[linux/arm64]:only.arm=yes",
            "--output",
            &format!("type=oci,dest={}", tar.display()),
        ],
    )
    .ok();
    let runs = steps_named(&r, "RUN mkdir /out");
    assert_eq!(
        runs,
        [("[build 1/1] RUN mkdir /out && for a in amd64 arm64 s390x; do echo \"built for $a\" > /out/$a; done".to_owned(), "DONE".to_owned())],
        "the shared stage must run once:\n{}",
        r.stderr
    );
    for arch in ARCHES {
        let copies = steps_named(&r, &format!("[linux/{arch} stage-1 1/1] COPY"));
        assert_eq!(copies.len(), 1, "{arch}:\n{}", r.stderr);
        assert_eq!(copies[0].1, "DONE", "{arch}:\n{}", r.stderr);
    }

    // The layout names one index, which lists the three platforms.
    let layout = k.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
    );
    let top = json(&std::fs::read_to_string(layout.join("index.json")).unwrap());
    assert_eq!(top["manifests"].as_array().unwrap().len(), 1, "{top}");
    let entry = &top["manifests"][0];
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    let digest = entry["digest"].as_str().unwrap().to_owned();
    let index = json(
        &std::fs::read_to_string(
            layout
                .join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    );
    assert_eq!(
        index_platforms(&index),
        ["linux/amd64", "linux/arm64", "linux/s390x"]
    );
    // `--annotation index:` annotates the index; `manifest[linux/arm64]:` arm64's manifest only.
    assert_eq!(
        index["annotations"]["org.opencontainers.image.title"],
        "multi"
    );
    for (i, arch) in ARCHES.iter().enumerate() {
        let d = index["manifests"][i]["digest"].as_str().unwrap();
        let manifest = json(
            &std::fs::read_to_string(
                layout
                    .join("blobs/sha256")
                    .join(d.strip_prefix("sha256:").unwrap()),
            )
            .unwrap(),
        );
        let want = if *arch == "arm64" {
            serde_json::json!("yes")
        } else {
            serde_json::Value::Null
        };
        assert_eq!(
            manifest["annotations"]["only.arm"], want,
            "{arch}: {manifest}"
        );
    }
    assert_eq!(r.digest(), digest, "the summary line names the index");
    let m = json(&std::fs::read_to_string(&meta).unwrap());
    assert_eq!(m["containerimage.digest"], digest.as_str(), "{m}");
    assert_eq!(
        m["containerimage.descriptor"]["digest"],
        digest.as_str(),
        "{m}"
    );
    assert_eq!(
        m["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(m.get("containerimage.config.digest").is_none(), "{m}");

    assert_each_platform(&k, &format!("oci-archive:{}:1", tar.display()), "tar", &[]);

    // Built again: every step cached, the same index.
    let again = build(
        &k,
        &ctx,
        &[
            "-t",
            "app:1",
            "--output",
            &format!("type=oci,dest={}", k.path("again.tar").display()),
        ],
    )
    .ok();
    assert_eq!(
        steps_named(&again, "RUN mkdir /out")[0].1,
        "CACHED",
        "{}",
        again.stderr
    );
}

/// `type=oci,tar=false` writes the index into a layout directory; `type=local` and `type=tar`
/// write one directory per platform (`linux_amd64`...), as buildx; `type=docker` and `--load`
/// refuse several platforms with BuildKit's message, before anything is built.
#[test]
fn other_outputs_of_several_platforms() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let dir = k.path("oci-dir");
    let local = k.path("local");
    let tar = k.path("fs.tar");
    build(
        &k,
        &ctx,
        &[
            "-t",
            "app:1",
            "--output",
            &format!("type=oci,dest={},tar=false", dir.display()),
            "--output",
            &format!("type=local,dest={}", local.display()),
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    )
    .ok();
    assert_each_platform(&k, &format!("oci:{}:1", dir.display()), "dir", &[]);

    let mut dirs: Vec<String> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["linux_amd64", "linux_arm64", "linux_s390x"]);
    for arch in ARCHES {
        assert_eq!(
            std::fs::read_to_string(local.join(format!("linux_{arch}/arch.txt"))).unwrap(),
            format!("built for {arch}\n")
        );
    }
    let listing = tool("tar", &["-tf", tar.to_str().unwrap()]);
    for arch in ARCHES {
        assert!(
            listing
                .lines()
                .any(|l| l == format!("linux_{arch}/arch.txt")),
            "{listing}"
        );
    }
    let out = k.path("extracted");
    std::fs::create_dir_all(&out).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", out.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("linux_s390x/arch.txt")).unwrap(),
        "built for s390x\n"
    );

    let r = build(
        &k,
        &ctx,
        &[
            "--output",
            &format!("type=docker,dest={}", k.path("d.tar").display()),
        ],
    )
    .fails();
    assert!(
        r.stderr
            .contains("docker exporter does not currently support exporting manifest lists"),
        "{}",
        r.stderr
    );
    assert!(steps_named(&r, "RUN").is_empty(), "{}", r.stderr);
    assert!(!k.path("d.tar").exists());
}

/// One platform keeps today's output: an image (not an index) in the OCI layout. A list whose
/// entries normalize to one platform (`arm64,linux/arm64/v8`) is that one platform: the same
/// image.
#[test]
fn one_platform_still_makes_one_image() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let bb = format!("bb=oci-layout://{}:latest", busybox_layout().display());
    let mut digests = Vec::new();
    for (i, platform) in ["linux/arm64", "arm64,linux/arm64/v8"].iter().enumerate() {
        let tar = k.path(&format!("one-{i}.tar"));
        let r = k
            .run(&[
                "build",
                "--progress=plain",
                "--platform",
                platform,
                "--build-context",
                &bb,
                "-t",
                "app:1",
                "--output",
                &format!("type=oci,dest={}", tar.display()),
                ctx.to_str().unwrap(),
            ])
            .ok();
        let layout = k.path(&format!("one-{i}"));
        std::fs::create_dir_all(&layout).unwrap();
        tool(
            "tar",
            &["-xf", tar.to_str().unwrap(), "-C", layout.to_str().unwrap()],
        );
        let top = json(&std::fs::read_to_string(layout.join("index.json")).unwrap());
        assert_eq!(
            top["manifests"][0]["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{top}"
        );
        assert_eq!(top["manifests"][0]["platform"]["architecture"], "arm64");
        digests.push(r.digest());
    }
    assert_eq!(digests[0], digests[1]);
}

/// The second "done when": the same build pushed to the loopback registry is an index,
/// and `skopeo --override-arch arm64 inspect` gets arm64's config (and each platform its own
/// files, through skopeo copy and umoci).
#[test]
fn pushed_to_a_registry_as_an_index() {
    let registry = kiln_e2e::test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let name = format!("{registry}/multiplatform:1");
    let meta = k.path("meta.json");
    build(
        &k,
        &ctx,
        &[
            "-t",
            &name,
            "--push",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    )
    .ok();
    let image = format!("docker://{name}");
    let raw = tool(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &image],
    );
    let index = json(&raw);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    assert_eq!(
        index_platforms(&index),
        ["linux/amd64", "linux/arm64", "linux/s390x"]
    );
    // The metadata's digest is the index the tag names: the registry serves it by digest.
    let m = json(&std::fs::read_to_string(&meta).unwrap());
    let digest = m["containerimage.digest"].as_str().unwrap();
    let by_digest = registry_json(
        &["inspect", "--raw"],
        &format!("{registry}/multiplatform@{digest}"),
    );
    assert_eq!(by_digest, index);
    let cfg = json(&tool(
        "skopeo",
        &[
            "--override-arch",
            "arm64",
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &image,
        ],
    ));
    assert_eq!(cfg["architecture"], "arm64", "{cfg}");
    assert_each_platform(&k, &image, "pushed", &["--tls-verify=false"]);
}

/// The build stage's base is the same image for the same (build) platform in each platform's
/// frontend call: its config is resolved once for the build, not once per platform.
#[test]
fn a_base_shared_by_every_platform_is_resolved_once() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    let r = build(&k, &ctx, &[]).ok();
    let resolves: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("resolve image config for"))
        .collect();
    assert_eq!(resolves.len(), 1, "{}", r.stderr);
}

/// The test registry's storage: `KILN_TEST_REGISTRY_STORAGE` when set (a registry started by
/// hand), else where `cargo xtask test` keeps it (xtask/src/registry.rs).
fn registry_storage() -> PathBuf {
    let dir = std::env::var_os("KILN_TEST_REGISTRY_STORAGE").map_or_else(
        || kiln_e2e::target_dir().join("../kiln-test/registry/storage"),
        PathBuf::from,
    );
    assert!(
        dir.join("docker/registry/v2").is_dir(),
        "the test registry's storage is not at {} (set KILN_TEST_REGISTRY_STORAGE to the \
         docker-registry's rootdirectory)",
        dir.display()
    );
    dir
}

/// A multi-platform push puts each platform's manifest by digest and only the index under the
/// tag, as BuildKit does: the tag never names one platform's image, not even for a moment.
/// docker-registry keeps every digest a tag has named (`_manifests/tags/T/index/`): there is
/// one, the index's. The repository's only tag is `1`, and each platform's manifest is served
/// by its digest.
#[test]
fn a_pushed_index_is_the_only_manifest_its_tag_ever_named() {
    let registry = kiln_e2e::test_registry();
    let storage = registry_storage();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write("ctx", &[("Dockerfile", DOCKERFILE)]);
    // A repository of its own: the registry outlives test runs.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let repo = format!("by-digest-{}-{nonce}", std::process::id());
    let name = format!("{registry}/{repo}:1");
    let meta = k.path("meta.json");
    build(
        &k,
        &ctx,
        &[
            "-t",
            &name,
            "--push",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    )
    .ok();
    let index_digest = json(&std::fs::read_to_string(&meta).unwrap())["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let tags = registry_json(&["list-tags"], &format!("{registry}/{repo}"));
    assert_eq!(tags["Tags"], serde_json::json!(["1"]), "{tags}");
    let history = storage.join(format!(
        "docker/registry/v2/repositories/{repo}/_manifests/tags/1/index/sha256"
    ));
    let mut named: Vec<String> = std::fs::read_dir(&history)
        .unwrap_or_else(|e| panic!("{}: {e}", history.display()))
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    named.sort();
    assert_eq!(named, [index_digest], "the tag named more than the index");
    let index = registry_json(&["inspect", "--raw"], &name);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3, "{index}");
    for (m, arch) in manifests.iter().zip(ARCHES) {
        let digest = m["digest"].as_str().unwrap();
        let manifest = registry_json(
            &["inspect", "--raw"],
            &format!("{registry}/{repo}@{digest}"),
        );
        assert_eq!(
            manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
            "{arch}: {manifest}"
        );
        let cfg = registry_json(
            &["inspect", "--config", "--raw"],
            &format!("{registry}/{repo}@{digest}"),
        );
        assert_eq!(cfg["architecture"], arch, "{cfg}");
    }
}

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// The ELF header bytes of an aarch64 executable as binfmt_misc lists them (`magic` line).
const AARCH64_MAGIC: &str = "magic 7f454c460201010000000000000000000200b700";

/// Serializes this file's emulation tests under `cargo test` (threads of one process); nextest
/// keeps them apart from `emulation.rs` with the `binfmt` test group.
fn binfmt_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_root_and_qemu() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap()
        .to_owned();
    assert_eq!(
        uid, "0",
        "registering binfmt_misc handlers needs root: run the e2e tests as root"
    );
    assert_ne!(
        std::env::consts::ARCH,
        "aarch64",
        "this test proves emulation of arm64 and needs a host of another architecture"
    );
    for q in ["qemu-aarch64-static", "qemu-s390x-static"] {
        assert!(
            Path::new("/usr/bin").join(q).is_file(),
            "{q} is missing: install the qemu-user-static package (cargo xtask test does)"
        );
    }
}

/// Removes every handler that takes aarch64 executables, whatever its name.
fn unregister_aarch64() {
    let Ok(entries) = std::fs::read_dir(BINFMT) else {
        return; // not mounted: nothing is registered
    };
    for entry in entries {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.lines().any(|l| l == AARCH64_MAGIC) {
            std::fs::write(entry.path(), "-1").unwrap();
        }
    }
}

/// The emulated test: with no arm64 handler registered and qemu-user-static
/// installed, a build for `linux/arm64` whose exec-form RUN runs the arm64 goarch program
/// registers the handler itself (before the build runs anything) and writes `arm64` into the
/// image. With the emulator missing, the build fails before any step with the platform and
/// the package to install. Then two foreign platforms in one solve: each platform's RUN runs
/// its own program under QEMU.
#[test]
fn an_emulated_run_registers_its_handler_and_runs_per_platform() {
    let _lock = binfmt_lock();
    require_root_and_qemu();
    let layout = goarch_layout();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM goarch\nRUN [\"/goarch\", \"/out\"]\nFROM scratch\nCOPY --from=0 /out /arch\n",
        )],
    );
    let base = format!("goarch=oci-layout://{}:latest", layout.display());
    let run = |platform: &str, env: &[(&str, &str)], out: &Path| {
        k.run_env(
            env,
            &[
                "build",
                "--progress=plain",
                "--no-cache",
                "--platform",
                platform,
                "--build-context",
                &base,
                "--output",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        )
    };

    // The emulator missing: the error names the platform and the package; nothing ran.
    unregister_aarch64();
    let empty = k.path("no-qemu");
    std::fs::create_dir_all(&empty).unwrap();
    let r = run(
        "linux/arm64",
        &[("KILN_QEMU_DIR", empty.to_str().unwrap())],
        &k.path("none"),
    )
    .fails();
    assert!(r.stderr.contains("linux/arm64"), "{}", r.stderr);
    assert!(r.stderr.contains("qemu-user-static"), "{}", r.stderr);
    assert!(steps_named(&r, "RUN").is_empty(), "{}", r.stderr);
    assert!(
        !Path::new(BINFMT).join("qemu-aarch64").exists(),
        "registered although the emulator was missing"
    );

    // No handler, the emulator installed: the build registers it and the RUN runs.
    let out = k.path("arm64");
    let r = run("linux/arm64", &[], &out).ok();
    assert!(
        r.stderr
            .contains("registered the QEMU binfmt_misc handler for linux/arm64"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("arch")).unwrap(),
        "arm64\n"
    );
    let handler = std::fs::read_to_string(Path::new(BINFMT).join("qemu-aarch64")).unwrap();
    assert!(handler.starts_with("enabled\n"), "{handler}");

    // Two foreign platforms in one solve: one RUN per platform, each under its emulator.
    let out = k.path("both");
    let r = run("linux/arm64,linux/s390x", &[], &out).ok();
    for arch in ["arm64", "s390x"] {
        assert_eq!(
            std::fs::read_to_string(out.join(format!("linux_{arch}/arch"))).unwrap(),
            format!("{arch}\n"),
            "{}",
            r.stderr
        );
        assert_eq!(
            steps_named(&r, &format!("[linux/{arch} stage-0 1/1] RUN"))
                .first()
                .map(|s| s.1.as_str()),
            Some("DONE"),
            "{}",
            r.stderr
        );
    }
}
