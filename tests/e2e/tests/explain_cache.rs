//! `kiln build --explain-cache`: each step that ran says what changed since the last build of
//! the same target — the edited file, the changed build argument, the base image, or that there
//! was no earlier build — and cached steps say nothing. The record it compares with never holds
//! a secret.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use kiln_e2e::*;

const SECRET: &str = "explain-s3cr3t-51d0c2e7-never-recorded";

/// The explanation of the step whose name contains `needle`, after its name.
fn cause_of(lines: &[String], needle: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .and_then(|l| l.split_once(": "))
        .map(|(_, c)| c.to_owned())
        .unwrap_or_else(|| panic!("no explanation for {needle:?} in {lines:#?}"))
}

fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    let secret = k.path("secret.txt");
    std::fs::write(&secret, SECRET).unwrap();
    let sec = format!("id=tok,src={}", secret.display());
    let mut args = vec![
        "build",
        "--progress=plain",
        "--explain-cache",
        "--secret",
        &sec,
    ];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args).ok()
}

#[test]
fn explain_cache_names_the_edited_file_and_the_changed_build_arg() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let dockerfile = format!(
        "FROM {registry}/busybox:latest\n\
         ARG VERSION=0\n\
         WORKDIR /app\n\
         COPY README /app/\n\
         COPY src/ /app/src/\n\
         RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /app/toklen\n\
         RUN echo \"v$VERSION\" > /app/version && ls /app/src > /app/list\n"
    );
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", dockerfile.as_str()),
            ("src/main.rs", "fn main() {}\n"),
            ("src/lib.rs", "pub fn lib() {}\n"),
            ("README", "hello\n"),
        ],
    );

    // A first build has nothing to compare with: every step that ran says so.
    let first = build(&k, &ctx, &["--build-arg", "VERSION=1"]);
    let lines = explained(&first);
    assert!(lines.len() >= 4, "{lines:#?}\n{}", first.stderr);
    for l in &lines {
        assert!(l.ends_with(": no earlier build"), "{l}\n{}", first.stderr);
    }
    assert_eq!(cause_of(&lines, "COPY src/"), "no earlier build");

    // Nothing changed: every step is cached and none is explained.
    let again = build(&k, &ctx, &["--build-arg", "VERSION=1"]);
    assert_eq!(again.step_state("COPY src/"), "CACHED", "{}", again.stderr);
    assert!(explained(&again).is_empty(), "{}", again.stderr);

    // One file edited: the COPY that reads it names it, the steps after it name their input,
    // and the COPY of README before it (not edited) stays cached and silent.
    std::fs::write(ctx.join("src/main.rs"), "fn main() { println!(\"hi\"); }\n").unwrap();
    let edited = build(&k, &ctx, &["--build-arg", "VERSION=1"]);
    let lines = explained(&edited);
    assert_eq!(
        cause_of(&lines, "COPY src/"),
        "file changed: src/main.rs",
        "{}",
        edited.stderr
    );
    assert_eq!(
        edited.step_state("COPY README"),
        "CACHED",
        "{}",
        edited.stderr
    );
    assert!(
        !lines.iter().any(|l| l.contains("COPY README")),
        "{lines:#?}"
    );
    let copy = step_number(&edited, "COPY src/");
    assert_eq!(
        cause_of(&lines, "RUN --mount=type=secret"),
        format!("input changed: {copy}"),
        "{}",
        edited.stderr
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("{copy} "))),
        "the COPY's line carries its progress number {copy}: {lines:#?}"
    );
    let secret_run = step_number(&edited, "RUN --mount=type=secret");
    assert_eq!(
        cause_of(&lines, "RUN echo"),
        format!("input changed: {secret_run}")
    );

    // A changed --build-arg: the RUN steps, whose environment holds it since the ARG line (as
    // in BuildKit), name it with both values; the COPY steps stay cached and silent.
    let arg = build(&k, &ctx, &["--build-arg", "VERSION=2"]);
    let lines = explained(&arg);
    assert_eq!(lines.len(), 2, "{lines:#?}\n{}", arg.stderr);
    for run in ["RUN echo", "RUN --mount=type=secret"] {
        assert_eq!(
            cause_of(&lines, run),
            r#"build arg VERSION changed ("1" -> "2")"#,
            "{}",
            arg.stderr
        );
    }

    // The records hold names and digests, never the secret the build read.
    let records = k.path("store/explain");
    assert!(
        std::fs::read_dir(&records).unwrap().count() > 0,
        "no record under {}",
        records.display()
    );
    assert_eq!(
        files_containing(&records, SECRET.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_containing(&records, b"fn main"),
        Vec::<std::path::PathBuf>::new(),
        "file contents are kept as digests only"
    );
}

#[test]
fn explain_cache_names_a_changed_base_image() {
    let registry = test_registry();
    let k = Kiln::new(&[]);
    let base_ref = format!("{registry}/explain-base-{}:1", std::process::id());
    let push_base = |content: &str| -> String {
        let ctx = k.write(
            "base",
            &[(
                "Dockerfile",
                format!("FROM {registry}/busybox:latest\nRUN echo {content} > /base\n").as_str(),
            )],
        );
        let run = k
            .run(&[
                "build",
                "--progress=plain",
                "-t",
                &base_ref,
                "--push",
                ctx.to_str().unwrap(),
            ])
            .ok();
        run.stderr
            .lines()
            .find_map(|l| l.split_once(&format!("pushed {base_ref}@")).map(|(_, d)| d))
            .unwrap_or_else(|| panic!("no pushed digest in:\n{}", run.stderr))
            .trim()
            .to_owned()
    };
    let old = push_base("one");
    let ctx = k.write(
        "app",
        &[(
            "Dockerfile",
            format!("FROM {base_ref}\nRUN cat /base > /copy\n").as_str(),
        )],
    );
    build(&k, &ctx, &[]);
    let new = push_base("two");
    assert_ne!(old, new);

    let rebuilt = build(&k, &ctx, &[]);
    let lines = explained(&rebuilt);
    assert_eq!(
        cause_of(&lines, "FROM"),
        format!("base image changed: {old} -> {new}"),
        "{}",
        rebuilt.stderr
    );
    let from = step_number(&rebuilt, "FROM");
    assert_eq!(
        cause_of(&lines, "RUN cat"),
        format!("input changed: {from}"),
        "{}",
        rebuilt.stderr
    );
}
