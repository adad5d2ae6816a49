//! Dockerfile syntax end to end: every variable-expansion form and the heredoc forms, asserted
//! on the files of the built image.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

#[test]
fn every_expansion_form_reaches_the_image() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let dockerfile = format!(
        r#"FROM {registry}/busybox:latest
ARG V=hello-world.tar.gz
ARG EMPTY=
ENV A=${{V:-x}} B=${{UNSET-y}} C=${{V:+set}} D=${{UNSET+nope}} E=${{EMPTY:-fallback}} F=${{EMPTY-kept}}
ENV G=${{V#hello-}} H=${{V##*.}} I=${{V%.gz}} J=${{V%%.*}} K=${{V/world/there}} L=${{V//l/L}}
ENV M=$V N="${{V}}-quoted" O='${{V}}-single'
WORKDIR /out/${{J}}
RUN printf '%s\n' "$A" "$B" "$C" "[$D]" "$E" "[$F]" "$G" "$H" "$I" "$J" "$K" "$L" "$M" "$N" "$O" > /out/expanded && pwd > /out/workdir
"#
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.path("out");
    k.run(&["build", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()])
        .ok();
    let got = std::fs::read_to_string(out.join("out/expanded")).unwrap();
    let want = [
        "hello-world.tar.gz",
        "y",
        "set",
        "[]",
        "fallback",
        "[]",
        "world.tar.gz",
        "gz",
        "hello-world.tar",
        "hello-world",
        "hello-there.tar.gz",
        "heLLo-worLd.tar.gz",
        "hello-world.tar.gz",
        "hello-world.tar.gz-quoted",
        "${V}-single",
    ]
    .map(|l| format!("{l}\n"))
    .concat();
    assert_eq!(got, want);
    assert_eq!(
        std::fs::read_to_string(out.join("out/workdir")).unwrap(),
        "/out/hello-world\n"
    );

    // `${V:?message}` fails the build at its line with the message.
    let bad = k.write(
        "bad",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/busybox:latest\nENV X=${{UNSET:?UNSET must be given}}\n"),
        )],
    );
    let r = k.run(&["build", bad.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("UNSET must be given") && r.stderr.contains("Dockerfile:2"),
        "{}",
        r.stderr
    );
}

#[test]
fn heredoc_forms_reach_the_image() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let dockerfile = format!(
        "# syntax=docker/dockerfile:1\n\
         FROM {registry}/busybox:latest\n\
         ENV NAME=kiln\n\
         RUN <<EOF\n\
         echo \"expanded $NAME\" > /unquoted\n\
         EOF\n\
         RUN <<'EOF'\n\
         echo 'literal $NAME' > /quoted\n\
         EOF\n\
         COPY <<-EOT /tabs\n\
         \tindented with tabs\n\
         \tEOT\n\
         COPY <<one.txt <<two.txt /many/\n\
         first ${{NAME}}\n\
         one.txt\n\
         second\n\
         two.txt\n\
         RUN <<EOF sh -e\n\
         echo via-interpreter > /interp\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/awk -f\n\
         BEGIN {{ print \"run by awk\" > \"/shebang\" }}\n\
         EOF\n\
         RUN cat <<A > /from-cat && cat <<B >> /from-cat\n\
         alpha\n\
         A\n\
         beta\n\
         B\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let out = k.path("out");
    k.run(&["build", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()])
        .ok();
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("unquoted"), "expanded kiln\n");
    assert_eq!(read("quoted"), "literal $NAME\n");
    assert_eq!(read("tabs"), "indented with tabs\n");
    assert_eq!(read("many/one.txt"), "first kiln\n");
    assert_eq!(read("many/two.txt"), "second\n");
    assert_eq!(read("interp"), "via-interpreter\n");
    assert_eq!(read("from-cat"), "alpha\nbeta\n");
    // A `#!` heredoc runs its own interpreter (this script is no shell syntax).
    assert_eq!(read("shebang"), "run by awk\n");
}

#[test]
fn a_changed_build_arg_invalidates_from_where_it_is_declared() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let dockerfile = format!(
        "FROM {registry}/busybox:latest\nRUN echo before > /before\nARG V=default\nRUN echo unrelated > /unrelated\nRUN echo \"$V\" > /v\n"
    );
    let ctx = k.write("ctx", &[("Dockerfile", &dockerfile)]);
    let build = |v: &str| {
        let out = k.path(&format!("out-{v}"));
        let arg = format!("V={v}");
        let r = k
            .run(&[
                "build",
                "--progress=plain",
                "--build-arg",
                &arg,
                "-o",
                out.to_str().unwrap(),
                ctx.to_str().unwrap(),
            ])
            .ok();
        (r, out)
    };
    build("one");
    let (second, out) = build("two");
    let state = |needle: &str| second.step_state(needle);
    // Before the ARG: cached. Every RUN after it sees the value in its environment, as in
    // BuildKit, so all of them run again.
    assert_eq!(state("RUN echo before"), "CACHED", "{}", second.stderr);
    assert_eq!(state("RUN echo unrelated"), "DONE", "{}", second.stderr);
    // Progress shows the instruction with its variables expanded, as BuildKit does.
    assert_eq!(state("RUN echo \"two\" > /v"), "DONE", "{}", second.stderr);
    assert_eq!(std::fs::read_to_string(out.join("v")).unwrap(), "two\n");
}

#[test]
fn add_link_and_exclude_flags() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch\nADD --link a.txt /linked/\nADD --exclude=*.md --chmod=0600 docs/ /docs/\n",
            ),
            ("a.txt", "a\n"),
            ("docs/keep.txt", "k\n"),
            ("docs/skip.md", "s\n"),
        ],
    );
    let out = k.path("out");
    k.run(&["build", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("linked/a.txt")).unwrap(),
        "a\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("docs/keep.txt")).unwrap(),
        "k\n"
    );
    assert!(!out.join("docs/skip.md").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("docs/keep.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
}

#[test]
fn proxy_args_reach_run_without_invalidating_it() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM {registry}/busybox:latest\nRUN echo \"$HTTP_PROXY\" > /proxy\n"),
        )],
    );
    let build = |proxy: &str, out: &str| {
        let arg = format!("HTTP_PROXY={proxy}");
        let out = k.path(out);
        let r = k
            .run(&[
                "build",
                "--progress=plain",
                "--build-arg",
                &arg,
                "-o",
                out.to_str().unwrap(),
                ctx.to_str().unwrap(),
            ])
            .ok();
        (r, out)
    };
    let (_, out) = build("http://proxy-a:3128", "a");
    assert_eq!(
        std::fs::read_to_string(out.join("proxy")).unwrap(),
        "http://proxy-a:3128\n"
    );
    // Another proxy gives the same result, so the step stays cached (BuildKit's rule).
    let (second, _) = build("http://proxy-b:3128", "b");
    assert_eq!(second.step_state("RUN echo"), "CACHED", "{}", second.stderr);
}

#[test]
fn a_cache_mount_is_seeded_from_a_stage() {
    let registry = test_registry();
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM {registry}/busybox:latest AS seed\nRUN mkdir -p /deps && echo seeded > /deps/x\n\
                 FROM {registry}/busybox:latest\n\
                 RUN --mount=type=cache,target=/c,from=seed,source=/deps,id=e2e-seeded cat /c/x > /out && echo more > /c/y\n"
            ),
        )],
    );
    let out = k.path("out");
    k.run(&["build", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()])
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("out")).unwrap(),
        "seeded\n"
    );
    assert!(
        !out.join("c").join("x").exists(),
        "the cache mount is not part of the image"
    );
}
