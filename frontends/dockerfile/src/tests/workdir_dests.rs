//! Paths that default to or resolve against the working directory as in BuildKit: `RUN --mount`
//! without a target, and COPY destinations such as `.` and `..` with several sources.

use kiln_graph::{ExecOp, MountKind, Op};

use super::{copy_action, fail, output, run, FakeHost};
use crate::build;

fn exec(source: &str) -> ExecOp {
    match &output(&run(source).definition).op {
        Op::Exec(e) => e.clone(),
        other => panic!("expected an exec, got {other:?}"),
    }
}

#[test]
fn mounts_without_target_go_at_the_workdir() {
    // buildx's, docker/cli's and moby's Dockerfiles: `RUN --mount=from=binaries cp buildx* /out`.
    let e = exec(
        "FROM scratch AS binaries\nCOPY x /x\n\
         FROM scratch\nWORKDIR /work\n\
         RUN --mount=from=binaries --mount=type=cache --mount=type=tmpfs,target=tmp \
         --mount=type=bind,source=sub,rw cp x /out/\n",
    );
    // After the root filesystem, the four mounts in order.
    assert_eq!(e.mounts[0].dest, "/");
    let m = &e.mounts[1..];
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!((m[0].dest.as_str(), m[0].selector.as_str()), ("/work", "/"));
    assert!(m[0].readonly && matches!(m[0].kind, MountKind::Bind));
    assert!(m[0].input.is_some(), "the stage is mounted: {m:?}");
    assert_eq!(m[1].dest, "/work");
    // BuildKit's cache id for no target is `path.Clean("")`.
    assert!(
        matches!(&m[1].kind, MountKind::Cache { id, .. } if id == "."),
        "{:?}",
        m[1].kind
    );
    assert!(!m[1].readonly);
    assert_eq!(m[2].dest, "/work/tmp");
    assert!(matches!(m[2].kind, MountKind::Tmpfs { .. }));
    // The build context, a sub-directory of it, read-write.
    assert_eq!(
        (m[3].dest.as_str(), m[3].selector.as_str()),
        ("/work", "/sub")
    );
    assert!(!m[3].readonly);
    assert_eq!(e.cwd, "/work");
}

#[test]
fn a_mount_over_the_root_is_refused_with_its_line() {
    // No WORKDIR: the working directory is `/`, which BuildKit refuses as a mount target.
    for src in [
        "FROM scratch\nRUN --mount=type=bind,source=x true\n",
        "FROM scratch\nWORKDIR /w\nRUN --mount=type=cache,target=/ true\n",
        "FROM scratch\nWORKDIR /w\nRUN --mount=type=tmpfs,target=.. true\n",
    ] {
        let e = fail(src);
        let line = u32::try_from(src.lines().count()).unwrap();
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(line), "{e}");
        assert!(
            e.message.contains("invalid mount target \"/\""),
            "{}",
            e.message
        );
    }
}

#[test]
fn several_sources_into_dot_and_dotdot() {
    // `COPY go.mod go.sum .`, the most common line of Go Dockerfiles.
    let resp = run("FROM scratch\nWORKDIR /src\nCOPY go.mod go.sum .\n");
    let v = output(&resp.definition);
    for i in 0..2 {
        assert_eq!(copy_action(v, i).dest, "/src/");
    }
    assert_eq!(copy_action(v, 1).src, "/go.sum");
    // `..` and `x/..` are no directory to the frontend; the copy finds the existing
    // directory at solve time, as BuildKit's does.
    for (dest, want) in [
        ("..", "/src"),
        ("sub/..", "/src/app"),
        ("sub/.", "/src/app/sub/"),
    ] {
        let resp = run(&format!(
            "FROM scratch\nWORKDIR /src/app\nCOPY a b {dest}\n"
        ));
        assert_eq!(
            copy_action(output(&resp.definition), 1).dest,
            want,
            "{dest}"
        );
    }
}

#[test]
fn several_sources_need_no_trailing_slash() {
    // BuildKit has no such check: a destination without `/` is a directory when it exists at
    // copy time (`COPY a b /existing-dir`), and the engine decides.
    let mut host = FakeHost::default();
    for f in ["src/a.txt", "src/b.txt", "go.mod", "go.sum"] {
        host.files.insert(f.into(), String::new());
    }
    for src in [
        "FROM scratch\nCOPY a b dest\n",
        "FROM scratch\nCOPY src/*.txt /out\n",
        "FROM scratch\nWORKDIR /src\nCOPY go.* .\n",
        "FROM scratch\nCOPY <<A <<B /etc\na\nA\nb\nB\n",
    ] {
        let resp = build(&super::request(src), &host).unwrap_or_else(|e| panic!("{src}: {e}"));
        assert!(!resp.definition.vertices.is_empty());
    }
    let resp = build(
        &super::request("FROM scratch\nCOPY src/*.txt /out\n"),
        &host,
    )
    .unwrap();
    let c = copy_action(output(&resp.definition), 0);
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/src/*.txt", "/out"));
}

/// (id, mount point) of each secret or cache mount of a RUN, after its root filesystem.
fn ids_and_dests(source: &str) -> Vec<(String, String)> {
    exec(source).mounts[1..]
        .iter()
        .map(|m| match &m.kind {
            MountKind::Secret { id, .. } | MountKind::Cache { id, .. } => {
                (id.clone(), m.dest.clone())
            }
            other => panic!("not a secret or cache: {other:?}"),
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_secret_source_names_the_secret() {
    // `--mount=type=secret,source=npmrc,target=/root/.npmrc`: BuildKit reads `source` as the id
    // (the file name of the target is only the default).
    let got = ids_and_dests(
        "FROM scratch\nWORKDIR /app\n\
         RUN --mount=type=secret,source=npmrc,target=/root/.npmrc \
         --mount=type=secret,source=dir/token true\n",
    );
    let want = [
        ("npmrc", "/root/.npmrc"),
        ("dir/token", "/run/secrets/token"),
    ];
    assert_eq!(got, pairs(&want));
}

#[test]
fn cache_ids_default_to_the_cleaned_target() {
    let got = ids_and_dests(
        "FROM scratch\nWORKDIR /w\n\
         RUN --mount=type=cache,target=/go/pkg/mod/ --mount=type=cache,target=./build/../cache true\n",
    );
    let want = [("/go/pkg/mod", "/go/pkg/mod"), ("cache", "/w/cache")];
    assert_eq!(got, pairs(&want));
}
