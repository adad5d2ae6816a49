//! The output flags CI scripts pass: layer compression (`compression=zstd|gzip|uncompressed`,
//! `compression-level`, `force-compression`, `oci-mediatypes`), annotations, `type=tar`,
//! several `--output` at once, `--load` into a docker daemon, and `--pull`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::{target_dir, test_registry, tool, Kiln};
use serde_json::Value;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A context whose image is the test registry's busybox plus one layer of our own.
fn context(k: &Kiln) -> String {
    let registry = test_registry();
    let dockerfile = format!(
        "FROM {registry}/busybox:latest\nCOPY hello.txt /srv/hello.txt\nCMD [\"cat\", \"/srv/hello.txt\"]\n"
    );
    k.write(
        "ctx",
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("hello.txt", "hello from kiln\n"),
        ],
    )
    .display()
    .to_string()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn read_json(path: &Path) -> Value {
    json(&std::fs::read_to_string(path).unwrap())
}

/// The manifest of the single image of OCI layout directory `dir`.
fn layout_manifest(dir: &Path) -> (Value, Value) {
    let index = read_json(&dir.join("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let hex = digest.strip_prefix("sha256:").unwrap();
    (index, read_json(&dir.join("blobs/sha256").join(hex)))
}

fn layer_types(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_owned())
        .collect()
}

fn build(k: &Kiln, ctx: &str, extra: &[&str]) -> kiln_e2e::Run {
    let mut args = vec!["build", "--progress=plain"];
    args.extend_from_slice(extra);
    args.push(ctx);
    k.run(&args)
}

#[test]
fn zstd_layers_are_read_by_skopeo_and_umoci() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let dir = k.path("zstd-dir");
    let tarball = k.path("zstd.tar");
    let oci_dir = format!("type=oci,dest={},tar=false,compression=zstd", dir.display());
    let oci_tar = format!("type=oci,dest={},compression=zstd", tarball.display());
    build(
        &k,
        &ctx,
        &["-t", "zstd:1", "--output", &oci_dir, "--output", &oci_tar],
    )
    .ok();

    // The base layer keeps the gzip blob it was pulled as; the new layer is zstd.
    let (_, manifest) = layout_manifest(&dir);
    assert_eq!(layer_types(&manifest), [GZIP, ZSTD], "{manifest}");
    let zstd_layer = manifest["layers"][1]["digest"].as_str().unwrap();
    let blob = std::fs::read(dir.join("blobs/sha256").join(&zstd_layer[7..])).unwrap();
    assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");

    // skopeo reads the directory and the tarball alike.
    let raw = json(&tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}:1", dir.display())],
    ));
    assert_eq!(layer_types(&raw), [GZIP, ZSTD], "{raw}");
    let raw = json(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:1", tarball.display()),
        ],
    ));
    assert_eq!(layer_types(&raw), [GZIP, ZSTD], "{raw}");

    // umoci unpacks the zstd layers themselves, from the directory and from the tarball (an
    // OCI layout in a tar).
    let untarred = k.path("zstd-untarred");
    std::fs::create_dir_all(&untarred).unwrap();
    tool(
        "tar",
        &[
            "-xf",
            tarball.to_str().unwrap(),
            "-C",
            untarred.to_str().unwrap(),
        ],
    );
    for (layout, name) in [(&dir, "from-dir"), (&untarred, "from-tar")] {
        let bundle = unpack_zstd(&k, layout, "1", name);
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/srv/hello.txt")).unwrap(),
            "hello from kiln\n"
        );
        assert!(bundle.join("rootfs/bin/busybox").is_file());
    }
}

/// Unpacks tag `tag` of the OCI layout `layout` into `<name>-bundle` with a umoci that reads
/// zstd layers. Debian 12's umoci (0.4.7) predates them (0.5 added them): `cargo xtask test`
/// provides a newer one as `KILN_TEST_UMOCI_ZSTD` (Debian unstable's package, unpacked under
/// target/kiln-test/tools).
fn unpack_zstd(k: &Kiln, layout: &Path, tag: &str, name: &str) -> PathBuf {
    let umoci = std::env::var("KILN_TEST_UMOCI_ZSTD").unwrap_or_else(|_| {
        panic!(
            "KILN_TEST_UMOCI_ZSTD is not set: run the tests with `cargo xtask test`, which \
             provides a umoci (0.5 or later) that reads zstd layers"
        )
    });
    let bundle = k.path(&format!("{name}-bundle"));
    tool(
        &umoci,
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle
}

#[test]
fn force_compression_recompresses_base_layers() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let forced = k.path("forced");
    let spec = format!(
        "type=oci,dest={},tar=false,compression=zstd,compression-level=19,force-compression=true",
        forced.display()
    );
    build(&k, &ctx, &["--output", &spec]).ok();
    let (_, manifest) = layout_manifest(&forced);
    assert_eq!(layer_types(&manifest), [ZSTD, ZSTD], "{manifest}");
    let bundle = unpack_zstd(&k, &forced, "latest", "forced");
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    assert!(bundle.join("rootfs/srv/hello.txt").is_file());

    // Uncompressed: new layers are plain tars, the base keeps gzip.
    let plain = k.path("plain");
    let spec = format!(
        "type=oci,dest={},tar=false,compression=uncompressed",
        plain.display()
    );
    build(&k, &ctx, &["--output", &spec]).ok();
    let (_, manifest) = layout_manifest(&plain);
    assert_eq!(layer_types(&manifest), [GZIP, TAR], "{manifest}");
}

#[test]
fn docker_media_types_and_their_conflicts() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let dir = k.path("docker-types");
    let spec = format!(
        "type=oci,dest={},tar=false,oci-mediatypes=false",
        dir.display()
    );
    build(&k, &ctx, &["--output", &spec]).ok();
    let (_, manifest) = layout_manifest(&dir);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        layer_types(&manifest),
        [
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ]
    );
    // As BuildKit: zstd exists only in OCI media types.
    let bad = format!(
        "type=oci,dest={},compression=zstd,oci-mediatypes=false",
        k.path("bad.tar").display()
    );
    let run = build(&k, &ctx, &["--output", &bad]).fails();
    assert!(
        run.stderr
            .contains("\"compression=zstd\" conflicts with \"oci-mediatypes=false\""),
        "{}",
        run.stderr
    );
}

#[test]
fn annotations_are_written_where_buildkit_writes_them() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let dir = k.path("annotated");
    let meta = k.path("meta.json");
    let spec = format!(
        "type=oci,dest={},tar=false,annotation.com.example.opt=from-output,annotation-manifest-descriptor.com.example.desc-opt=d2",
        dir.display()
    );
    let platform = format!("manifest[{}]:com.example.platform=p", host_platform());
    build(
        &k,
        &ctx,
        &[
            "-t",
            "annotated:1",
            "--output",
            &spec,
            "--metadata-file",
            meta.to_str().unwrap(),
            "--annotation",
            "org.opencontainers.image.title=demo",
            "--annotation",
            "manifest:com.example.m=1",
            "--annotation",
            "manifest-descriptor:com.example.d=2",
            "--annotation",
            &platform,
        ],
    )
    .ok();
    let (index, manifest) = layout_manifest(&dir);
    let m = &manifest["annotations"];
    assert_eq!(m["org.opencontainers.image.title"], "demo", "{manifest}");
    assert_eq!(m["com.example.m"], "1", "{manifest}");
    assert_eq!(m["com.example.opt"], "from-output", "{manifest}");
    assert_eq!(m["com.example.platform"], "p", "{manifest}");
    assert!(m.get("com.example.d").is_none(), "{manifest}");
    let d = &index["manifests"][0]["annotations"];
    assert_eq!(d["com.example.d"], "2", "{index}");
    assert_eq!(d["com.example.desc-opt"], "d2", "{index}");
    assert_eq!(d["org.opencontainers.image.ref.name"], "1", "{index}");
    assert!(d.get("org.opencontainers.image.title").is_none(), "{index}");
    // The reported descriptor carries them too, as BuildKit's.
    let doc = read_json(&meta);
    assert_eq!(
        doc["containerimage.descriptor"]["annotations"]["com.example.d"], "2",
        "{doc}"
    );
    assert_eq!(
        doc["containerimage.digest"], index["manifests"][0]["digest"],
        "{doc}"
    );

    // One image without attestations has no index: BuildKit refuses index annotations there.
    let out = format!("type=oci,dest={}", k.path("i.tar").display());
    let run = build(&k, &ctx, &["--output", &out, "--annotation", "index:k=v"]).fails();
    assert!(
        run.stderr.contains("index annotations not supported"),
        "{}",
        run.stderr
    );
    let run = build(
        &k,
        &ctx,
        &["--output", &out, "--annotation", "manifest[plan9/386]:k=v"],
    )
    .fails();
    assert!(
        run.stderr.contains("no platform plan9/386"),
        "{}",
        run.stderr
    );
}

fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64",
        "aarch64" => "linux/arm64",
        other => panic!("no test platform for {other}"),
    }
}

/// The entries of tar `bytes`, by path, with the contents of regular files.
fn tar_entries(bytes: &[u8]) -> Vec<(String, Option<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("x.tar");
    std::fs::write(&t, bytes).unwrap();
    tool("tar", &["-tf", t.to_str().unwrap()])
        .lines()
        .map(|p| {
            let content = if p == "srv/hello.txt" {
                Some(tool("tar", &["-xOf", t.to_str().unwrap(), "srv/hello.txt"]))
            } else {
                None
            };
            (p.to_owned(), content)
        })
        .collect()
}

#[test]
fn tar_output_to_a_file_and_to_stdout() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let file = k.path("fs.tar");
    let spec = format!("type=tar,dest={}", file.display());
    build(&k, &ctx, &["--output", &spec]).ok();
    let entries = tar_entries(&std::fs::read(&file).unwrap());
    let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert!(paths.contains(&"bin/busybox"), "{paths:?}");
    assert!(paths.contains(&"srv/hello.txt"), "{paths:?}");
    // A filesystem, not an image: no layout files.
    assert!(!paths.contains(&"index.json"), "{paths:?}");
    let hello = entries.iter().find(|(p, _)| p == "srv/hello.txt").unwrap();
    assert_eq!(hello.1.as_deref(), Some("hello from kiln\n"));

    // `-o -` and `type=tar,dest=-` write it to standard output, the progress to stderr; with
    // `-q`, no image ID is appended to the tar.
    for args in [
        ["--progress=plain", "--output", "-"],
        ["--progress=plain", "--output", "type=tar,dest=-"],
        ["-q", "--output", "-"],
    ] {
        let out = Command::new(target_dir().join("kiln"))
            .env("KILN_ROOT", k.path("store"))
            .env("KILN_PLUGIN_PATH", k.plugin_dir())
            .arg("build")
            .args(args)
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.stdout,
            std::fs::read(&file).unwrap(),
            "{args:?}: the same tar as dest=FILE"
        );
    }
}

#[test]
fn several_outputs_come_from_one_build() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    let tarball = k.path("img.tar");
    let local = k.path("files");
    let fs_tar = k.path("fs.tar");
    let meta = k.path("meta.json");
    build(
        &k,
        &ctx,
        &[
            "-t",
            "multi:1",
            "--metadata-file",
            meta.to_str().unwrap(),
            "--output",
            &format!("type=oci,dest={}", tarball.display()),
            "--output",
            &format!("type=local,dest={}", local.display()),
            "--output",
            &format!("type=tar,dest={}", fs_tar.display()),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(local.join("srv/hello.txt")).unwrap(),
        "hello from kiln\n"
    );
    assert!(fs_tar.is_file());
    let bundle = k.unpack(&tarball, "multi", "1");
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/srv/hello.txt")).unwrap(),
        "hello from kiln\n"
    );
    // The metadata names the image in the tarball.
    let index = {
        let l = k.path("multi-layout");
        read_json(&l.join("index.json"))
    };
    assert_eq!(
        read_json(&meta)["containerimage.digest"],
        index["manifests"][0]["digest"]
    );
}

#[test]
fn pull_resolves_the_tag_again() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let base = format!("{registry}/e2e/pull-base:{}", std::process::id());
    let push_base = |text: &str, name: &str| {
        let c = k.write(
            name,
            &[
                ("Dockerfile", "FROM scratch\nCOPY version /version\n"),
                ("version", text),
            ],
        );
        k.run(&[
            "build",
            "--progress=plain",
            "-t",
            &base,
            "--push",
            c.to_str().unwrap(),
        ])
        .ok();
    };
    let app = k.write(
        "app",
        &[("Dockerfile", &format!("FROM {base}\nCOPY . /app\n"))],
    );
    let out = k.path("out");
    let build_app = |extra: &[&str]| {
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "--progress=plain", "--output", &dest];
        args.extend_from_slice(extra);
        let a = app.to_str().unwrap();
        args.push(a);
        k.run(&args).ok();
        std::fs::read_to_string(out.join("version")).unwrap()
    };
    push_base("one\n", "base1");
    assert_eq!(build_app(&[]), "one\n");
    // The tag moves: kiln keeps no tag-to-digest cache, so the next build sees the new base
    // with --pull and without it.
    push_base("two\n", "base2");
    assert_eq!(build_app(&["--pull"]), "two\n");
    push_base("three\n", "base3");
    assert_eq!(build_app(&[]), "three\n");
}

/// A private dockerd under a temporary directory (Debian's `docker.io`), stopped on drop.
#[test]
fn load_streams_the_image_into_docker() {
    let k = Kiln::new(&[]);
    let ctx = context(&k);
    // A short path: unix socket paths are limited to 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("kd")
        .tempdir_in("/tmp")
        .unwrap();
    let daemon = kiln_e2e::dockerd::Dockerd::start(dir.path());
    let env = [("DOCKER_HOST", daemon.host.as_str())];
    k.run_env(
        &env,
        &["build", "--progress=plain", "--load", "-t", "t:1", &ctx],
    )
    .ok();
    let out = daemon.docker(&["run", "--rm", "--network", "none", "t:1"]);
    assert!(
        out.status.success(),
        "docker run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from kiln\n");

    // `--output type=docker` without dest is the same load.
    k.run_env(
        &env,
        &[
            "build",
            "--progress=plain",
            "--output",
            "type=docker",
            "-t",
            "t:2",
            &ctx,
        ],
    )
    .ok();
    let out = daemon.docker(&["image", "inspect", "t:2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);

    // No daemon answers: one clear error, naming where kiln looked.
    let gone = format!("unix://{}/nothing.sock", dir.path().display());
    let run = k
        .run_env(
            &[("DOCKER_HOST", gone.as_str())],
            &["build", "--progress=plain", "--load", "-t", "t:3", &ctx],
        )
        .fails();
    assert!(
        run.stderr.contains("--load: no docker daemon answers"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&gone), "{}", run.stderr);
    // Before the build, not after it.
    assert!(!run.stderr.contains("exporting to image"), "{}", run.stderr);
}
