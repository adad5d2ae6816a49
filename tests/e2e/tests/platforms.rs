//! Platform names as containerd and BuildKit understand them (`--platform arm64`,
//! `Linux/AArch64`, `linux/arm64/v8` = `linux/arm64`, `arm` = `linux/arm/v7`), seen in the
//! image config and the predefined ARGs; and the goarch fixture (images of other
//! architectures made by `cargo xtask fixtures`), chosen per platform from its index. No RUN
//! step here runs a foreign program: those tests live in `emulation.rs` (binfmt test group).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::{tool, workspace, Kiln};

/// The image config of the OCI tarball `tar`.
fn config_of(tar: &Path) -> serde_json::Value {
    serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap()
}

/// Builds `ctx` for `platform` into an OCI tarball; returns its config.
fn build_for(k: &Kiln, ctx: &Path, platform: &str, extra: &[&str]) -> serde_json::Value {
    let tar = k.path(&format!("{}.tar", platform.replace('/', "_")));
    let dest = format!("type=oci,dest={}", tar.display());
    let mut args = vec![
        "build",
        "--platform",
        platform,
        "-t",
        "x:1",
        "--output",
        &dest,
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args).ok();
    config_of(&tar)
}

/// `--platform` in any spelling containerd accepts builds the normalized platform: the config's
/// architecture and variant, and BuildKit's values of the predefined ARGs (here read back from
/// labels; the config carries no variant for arm64, v7 for arm).
#[test]
fn platform_flags_are_normalized_as_buildkit_does() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT\n\
                 LABEL tp=$TARGETPLATFORM os=$TARGETOS arch=$TARGETARCH variant=$TARGETVARIANT\n\
                 COPY a /a\n",
            ),
            ("a", "a\n"),
        ],
    );
    for (flag, arch, variant, tp) in [
        ("linux/arm64/v8", "arm64", None, "linux/arm64"),
        ("Linux/AArch64", "arm64", None, "linux/arm64"),
        ("arm64", "arm64", None, "linux/arm64"),
        ("arm", "arm", Some("v7"), "linux/arm/v7"),
        ("linux/armhf", "arm", Some("v7"), "linux/arm/v7"),
        ("linux/armel", "arm", Some("v6"), "linux/arm/v6"),
        ("s390x", "s390x", None, "linux/s390x"),
        ("linux/x86_64/v1", "amd64", None, "linux/amd64"),
        ("linux/amd64/v2", "amd64", Some("v2"), "linux/amd64/v2"),
    ] {
        let cfg = build_for(&k, &ctx, flag, &[]);
        assert_eq!(cfg["architecture"], arch, "--platform {flag}: {cfg}");
        assert_eq!(cfg["os"], "linux", "--platform {flag}: {cfg}");
        assert_eq!(cfg["variant"].as_str(), variant, "--platform {flag}: {cfg}");
        let labels = &cfg["config"]["Labels"];
        assert_eq!(labels["tp"], tp, "--platform {flag}: {labels}");
        assert_eq!(labels["arch"], arch, "--platform {flag}: {labels}");
        assert_eq!(
            labels["variant"],
            variant.unwrap_or(""),
            "--platform {flag}: {labels}"
        );
    }
    let r = k
        .run(&[
            "build",
            "--platform",
            "linux/arm/v7/x",
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("invalid platform \"linux/arm/v7/x\""),
        "{}",
        r.stderr
    );
    let r = k
        .run(&["build", "--platform", "toaster", ctx.to_str().unwrap()])
        .fails();
    assert!(
        r.stderr
            .contains("unknown operating system or architecture"),
        "{}",
        r.stderr
    );
}

/// The goarch fixture's OCI layout (written by `cargo xtask fixtures`).
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

/// ELF `e_machine` of a file: 0xb7 aarch64, 0x16 s390, 0x3e x86-64.
fn elf_machine(path: &Path) -> u16 {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not ELF", path.display());
    let bytes = [elf[18], elf[19]];
    match elf[5] {
        1 => u16::from_le_bytes(bytes),
        _ => u16::from_be_bytes(bytes),
    }
}

/// The goarch index holds one image per architecture: a build for each platform takes its
/// own (config architecture, and the program's ELF machine), whatever the spelling of the
/// platform. Nothing runs: COPY only.
#[test]
fn goarch_fixture_gives_each_platform_its_program() {
    let layout = goarch_layout();
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM base AS src\nFROM scratch\nCOPY --from=src /goarch /goarch\n",
        )],
    );
    let base = format!("base=oci-layout://{}:latest", layout.display());
    for (platform, arch, machine) in [
        ("linux/arm64", "arm64", 0xb7),
        ("aarch64", "arm64", 0xb7),
        ("linux/s390x", "s390x", 0x16),
        ("linux/amd64", "amd64", 0x3e),
    ] {
        let out = k.path(&format!("out-{}", platform.replace('/', "_")));
        let dest = format!("type=local,dest={}", out.display());
        k.run(&[
            "build",
            "--platform",
            platform,
            "--build-context",
            &base,
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ])
        .ok();
        assert_eq!(
            elf_machine(&out.join("goarch")),
            machine,
            "--platform {platform}"
        );
        let cfg = build_for(&k, &ctx, platform, &["--build-context", &base]);
        assert_eq!(cfg["architecture"], arch, "--platform {platform}");
    }
    // A platform the index lacks is an error that lists what it has.
    let r = k
        .run(&[
            "build",
            "--platform",
            "linux/riscv64",
            "--build-context",
            &base,
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("linux/riscv64"), "{}", r.stderr);
    assert!(r.stderr.contains("linux/s390x"), "{}", r.stderr);
}

/// The fixture as pushed to the loopback registry by `cargo xtask test`: `goarch:latest` is an
/// index that skopeo reads per architecture, and `goarch:arm64` a single arm64 image.
#[test]
fn goarch_fixture_is_pushed_as_an_index() {
    let registry = kiln_e2e::test_registry();
    let index: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{registry}/goarch:latest"),
        ],
    ))
    .unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["arm64", "s390x", "amd64"]);
    for arch in ["arm64", "s390x"] {
        let cfg: serde_json::Value = serde_json::from_str(&tool(
            "skopeo",
            &[
                "inspect",
                "--config",
                "--raw",
                "--tls-verify=false",
                "--override-arch",
                arch,
                &format!("docker://{registry}/goarch:latest"),
            ],
        ))
        .unwrap();
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(cfg["config"]["Cmd"][0], "/goarch");
    }
    // kiln pulls the arm64 image for --platform linux/arm64/v8 from the index.
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/goarch:latest\nLABEL from=index\n"),
        )],
    );
    let cfg = build_for(&k, &ctx, "linux/arm64/v8", &[]);
    assert_eq!(cfg["architecture"], "arm64");
    assert_eq!(cfg["config"]["Labels"]["from"], "index");
}
