//! The cache of a multi-platform build (issue 10's gaps): `--cache-to` writes every
//! platform's chain into one cache, as BuildKit exports each platform's result into one cache
//! manifest, so that another store builds every platform from it; and `--explain-cache`
//! keeps a record per platform and explains the steps of every platform that ran.
//!
//! No RUN step runs a program of another architecture: the build stage runs on the build
//! platform, the platforms' final stages only copy.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::{build_bb, explained, step_number, Kiln, Run};

const PLATFORMS: &str = "linux/amd64,linux/arm64,linux/s390x";
const ARCHES: [&str; 3] = ["amd64", "arm64", "s390x"];

/// The build stage reads a context file and runs on the build platform; each platform's final
/// stage copies its own file out of it.
const DOCKERFILE: &str = "\
FROM --platform=$BUILDPLATFORM bb AS build
COPY msg.txt /msg.txt
RUN mkdir /out && for a in amd64 arm64 s390x; do cat /msg.txt > /out/$a; echo $a >> /out/$a; done
FROM scratch
ARG TARGETARCH
COPY --from=build /out/$TARGETARCH /arch.txt
";

fn context(k: &Kiln) -> PathBuf {
    k.write("ctx", &[("Dockerfile", DOCKERFILE), ("msg.txt", "hello\n")])
}

/// `kiln build --progress=plain --platform PLATFORMS` of `ctx`, busybox as `bb`.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    build_bb(k, &[], ctx, &[&["--platform", PLATFORMS], extra].concat())
}

/// Each platform's final step (`[linux/ARCH stage-1 1/1] COPY --from=build ...`).
fn final_copy(arch: &str) -> String {
    format!("[linux/{arch} stage-1 1/1] COPY --from=build /out/{arch}")
}

#[test]
fn a_multi_platform_cache_to_holds_every_platform_chain() {
    let first = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = context(&first);
    let max = first.path("cache-max");
    let min = first.path("cache-min");
    let to_max = format!("type=local,dest={},mode=max", max.display());
    let to_min = format!("type=local,dest={}", min.display());
    let built = build(
        &first,
        &ctx,
        &["--cache-to", &to_max, "--cache-to", &to_min],
    )
    .ok();
    for arch in ARCHES {
        assert_eq!(
            built.step_state(&final_copy(arch)),
            "DONE",
            "{}",
            built.stderr
        );
    }

    // mode=max: another store builds every step of every platform from the cache.
    let second = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx2 = context(&second);
    let from = format!("type=local,src={}", max.display());
    let out = second.path("out");
    let output = format!("type=local,dest={}", out.display());
    let again = build(
        &second,
        &ctx2,
        &["--cache-from", &from, "--output", &output],
    )
    .ok();
    for arch in ARCHES {
        assert_eq!(
            again.step_state(&final_copy(arch)),
            "CACHED",
            "{}",
            again.stderr
        );
        assert_eq!(
            std::fs::read_to_string(out.join(format!("linux_{arch}/arch.txt"))).unwrap(),
            format!("hello\n{arch}\n")
        );
    }
    assert_eq!(
        again.step_state("RUN mkdir /out"),
        "CACHED",
        "{}",
        again.stderr
    );

    // mode=min: each platform's result chain is in the cache, not only the first platform's.
    let third = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx3 = context(&third);
    let from = format!("type=local,src={}", min.display());
    let run = build(&third, &ctx3, &["--cache-from", &from]).ok();
    for arch in ARCHES {
        assert_eq!(
            run.step_state(&final_copy(arch)),
            "CACHED",
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_inline_cache_of_several_platforms_is_refused_before_anything_runs() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = context(&k);
    let run = build(&k, &ctx, &["--cache-to", "type=inline"]).fails();
    assert!(
        run.stderr
            .contains("--cache-to type=inline with several --platform values is not supported"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("RUN mkdir"), "{}", run.stderr);
}

/// The explanations of the steps whose name contains `needle`, after their name.
fn causes_of(lines: &[String], needle: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_once(": "))
        .map(|(_, c)| c.to_owned())
        .collect()
}

#[test]
fn explain_cache_explains_every_platform_of_a_build() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-exec"]);
    let ctx = context(&k);
    let first = build(&k, &ctx, &["--explain-cache"]).ok();
    let lines = explained(&first);
    for arch in ARCHES {
        assert_eq!(
            causes_of(&lines, &final_copy(arch)),
            ["no earlier build"],
            "{lines:#?}\n{}",
            first.stderr
        );
    }

    let again = build(&k, &ctx, &["--explain-cache"]).ok();
    assert!(explained(&again).is_empty(), "{}", again.stderr);

    // The edited file is named once, for the step the platforms share; each platform's step
    // after it names its input.
    std::fs::write(ctx.join("msg.txt"), "bonjour\n").unwrap();
    let edited = build(&k, &ctx, &["--explain-cache"]).ok();
    let lines = explained(&edited);
    assert_eq!(
        causes_of(&lines, "COPY msg.txt"),
        ["file changed: msg.txt"],
        "{lines:#?}\n{}",
        edited.stderr
    );
    let run = step_number(&edited, "RUN mkdir /out");
    for arch in ARCHES {
        assert_eq!(
            causes_of(&lines, &final_copy(arch)),
            [format!("input changed: {run}")],
            "{lines:#?}\n{}",
            edited.stderr
        );
    }

    // A build of one of the platforms alone compares with that platform's record, which the
    // build of several kept.
    std::fs::write(ctx.join("msg.txt"), "salut\n").unwrap();
    let one = build_bb(
        &k,
        &[],
        &ctx,
        &["--explain-cache", "--platform", "linux/arm64"],
    )
    .ok();
    let lines = explained(&one);
    assert_eq!(
        causes_of(&lines, "COPY msg.txt"),
        ["file changed: msg.txt"],
        "{lines:#?}\n{}",
        one.stderr
    );
}
