//! Named contexts found by the reference a Dockerfile writes (`--build-context alpine=DIR`
//! serves `FROM docker.io/library/alpine:latest`), the unused-context warning, and which
//! `# syntax=` images kiln serves.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

#[test]
fn a_short_context_name_serves_from_and_copy_from_in_any_spelling() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let alpine = k.write("alpine-dir", &[("etc/os-release", "ID=from-context\n")]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM docker.io/library/alpine:latest AS base\n\
             FROM scratch\n\
             COPY --from=base /etc/os-release /from-stage\n\
             COPY --from=alpine:latest /etc/os-release /from-copy\n",
        )],
    );
    let out = k.path("out");
    let bc = format!("alpine={}", alpine.display());
    // Without the context this would pull alpine from Docker Hub; with it nothing is pulled.
    let r = build_local_with(&k, &ctx, &out, &["--build-context", &bc]).ok();
    for f in ["from-stage", "from-copy"] {
        assert_eq!(
            std::fs::read_to_string(out.join(f)).unwrap(),
            "ID=from-context\n",
            "{f}"
        );
    }
    assert!(!r.stderr.contains("unused build context"), "{}", r.stderr);
}

#[test]
fn a_registry_context_name_serves_from_with_latest_from_an_oci_layout() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    // An image made by kiln itself, as an OCI layout directory tagged `latest`.
    let base = k.write(
        "base",
        &[
            ("Dockerfile", "FROM scratch\nCOPY marker /marker\n"),
            ("marker", "from the layout\n"),
        ],
    );
    let layout = k.path("layout");
    let dest = format!("type=oci,dest={},tar=false", layout.display());
    k.run(&[
        "build",
        "-t",
        "base:latest",
        "--output",
        &dest,
        base.to_str().unwrap(),
    ])
    .ok();

    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM quay.io/org/img:latest\nCOPY extra /extra\n",
            ),
            ("extra", "x\n"),
        ],
    );
    let out = k.path("out");
    let bc = format!("quay.io/org/img=oci-layout://{}:latest", layout.display());
    build_local_with(&k, &ctx, &out, &["--build-context", &bc]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("marker")).unwrap(),
        "from the layout\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("extra")).unwrap(), "x\n");
}

#[test]
fn an_unused_build_context_warns() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let spare = k.write("spare", &[("f", "f\n")]);
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY a /a\n"), ("a", "a\n")],
    );
    let out = k.path("out");
    let bc = format!("alpine:3.19={}", spare.display());
    let r = build_local_with(&k, &ctx, &out, &["--build-context", &bc]).ok();
    assert!(
        r.stderr.contains("unused build context \"alpine:3.19\""),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "a\n");
}

#[test]
fn dockerfile_upstream_syntax_builds_with_the_bundled_frontend_and_says_so() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    for syntax in [
        "docker/dockerfile-upstream:master",
        "docker.io/docker/dockerfile-upstream:master-labs",
        "docker/dockerfile:1-labs",
    ] {
        let ctx = k.write(
            syntax,
            &[
                (
                    "Dockerfile",
                    &format!("# syntax={syntax}\nFROM scratch\nCOPY a /a\n"),
                ),
                ("a", "a\n"),
            ],
        );
        let out = k.path(&format!("{syntax}-out"));
        let r = build_local_with(&k, &ctx, &out, &[]).ok();
        assert_eq!(
            std::fs::read_to_string(out.join("a")).unwrap(),
            "a\n",
            "{syntax}"
        );
        let said = format!("# syntax={syntax}: served by the installed frontend plugin dockerfile");
        assert!(r.stderr.contains(&said), "{syntax}:\n{}", r.stderr);
    }
}

#[test]
fn an_unknown_syntax_image_says_how_to_proceed() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "# syntax=example.com/other/frontend:1\nFROM scratch\n",
        )],
    );
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    let plugin_dir = k.plugin_dir().display().to_string();
    for want in [
        "\"example.com/other/frontend:1\"",
        "--frontend NAME|PATH",
        "install a frontend plugin",
        "`kiln plugins push` by REF@sha256:DIGEST",
        plugin_dir.as_str(),
        "dockerfile (syntax dockerfile, docker/dockerfile)",
    ] {
        assert!(r.stderr.contains(want), "{want:?} missing:\n{}", r.stderr);
    }
    // `--frontend` gets past it.
    k.run(&["build", "--frontend", "dockerfile", ctx.to_str().unwrap()])
        .ok();
    // A path stays refused (issue 7).
    let path = k.write(
        "path",
        &[("Dockerfile", "# syntax=./fe.so\nFROM scratch\n")],
    );
    let r = k.run(&["build", path.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("names a plugin library by path"),
        "{}",
        r.stderr
    );
}
