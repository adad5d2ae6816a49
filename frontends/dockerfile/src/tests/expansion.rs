//! Instructions answered with text to run in their place (`InstructionResponse::expansion`):
//! INCLUDE-like fragments from the context and in-place expansions, their ARG scope, the
//! locations of their errors and steps, cycles and depth.

use std::collections::BTreeMap;

use kiln_graph::{Definition, Op, Vertex};
use kiln_plugin_sdk::proto::{Expansion, InstructionRequest, InstructionResponse, PluginError};

use super::{build, request, FakeHost};

/// A host whose `INCLUDE <path>` answers with the fragment `files[path]` (as the INCLUDE plugin
/// does) and whose `PKG <words>` expands in place to a RUN, as a package-install plugin does.
fn host(files: &[(&str, &str)]) -> FakeHost {
    let files: BTreeMap<String, String> = files
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    FakeHost {
        lower: Some(Box::new(move |req: &InstructionRequest| {
            assert!(req.accepts_expansion, "the frontend runs expansions");
            let expansion = match req.keyword.to_uppercase().as_str() {
                "INCLUDE" => {
                    let path = req.args.trim();
                    Expansion {
                        file: path.to_owned(),
                        source: files.get(path)?.clone(),
                        first_line: 1,
                    }
                }
                "PKG" => Expansion {
                    file: req.location.file.clone(),
                    // `--broken` expands to a RUN with a bad mount, to see its error.
                    source: if req.flags.is_empty() {
                        format!("RUN install {}", req.args)
                    } else {
                        format!("RUN --mount=type=bogus install {}", req.args)
                    },
                    first_line: req.location.line,
                },
                _ => return None,
            };
            Some(InstructionResponse::expand(req.clone(), expansion))
        })),
        ..FakeHost::default()
    }
}

fn fail_with(source: &str, host: &FakeHost) -> PluginError {
    build(&request(source), host).unwrap_err()
}

/// An exec vertex, its args joined, and the file and line it records.
type Run<'a> = (&'a Vertex, String, Option<(String, u32)>);

/// Every exec vertex of `def`, in graph order.
fn runs(def: &Definition) -> Vec<Run<'_>> {
    def.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some((
                v,
                e.args.join(" "),
                v.meta.source.as_ref().map(|s| (s.file.clone(), s.line)),
            )),
            _ => None,
        })
        .collect()
}

fn env_of(v: &Vertex) -> Vec<String> {
    match &v.op {
        Op::Exec(e) => e.env.clone(),
        _ => Vec::new(),
    }
}

#[test]
fn an_included_fragment_runs_in_the_including_stage() {
    let host = host(&[(
        "frag/base.df",
        "# a fragment\nENV GREETING=hello-$A\nARG B=2\nRUN echo \"$GREETING\" > /out\n",
    )]);
    let source = "FROM scratch\nARG A=1\nINCLUDE frag/base.df\nRUN echo $B\n";
    let resp = build(&request(source), &host).unwrap();

    // The fragment sees the stage's ARG, and its ENV lands in the image.
    let env = resp.config.config.env.clone().unwrap_or_default();
    assert!(env.contains(&"GREETING=hello-1".to_owned()), "{env:?}");
    let runs = runs(&resp.definition);
    assert_eq!(runs.len(), 2, "{runs:?}");
    // The fragment's RUN is recorded at the fragment's line, the Dockerfile's at its own.
    let fragment_run = runs
        .iter()
        .find(|(_, args, _)| args.contains("/out"))
        .expect("the fragment's RUN");
    assert_eq!(fragment_run.2, Some(("frag/base.df".to_owned(), 4)));
    let after = runs
        .iter()
        .find(|(_, args, _)| args.ends_with("echo $B"))
        .expect("the Dockerfile's RUN");
    assert_eq!(after.2, Some(("Dockerfile".to_owned(), 4)));
    // The fragment's ARG is declared in the including stage, as textual inclusion would.
    assert!(
        env_of(after.0).contains(&"B=2".to_owned()),
        "{:?}",
        env_of(after.0)
    );
    // No history entry for INCLUDE itself: the fragment's instructions have theirs.
    let history: Vec<&str> = resp
        .config
        .history
        .iter()
        .filter_map(|h| h.created_by.as_deref())
        .collect();
    assert!(
        history.iter().all(|h| !h.contains("INCLUDE")),
        "{history:?}"
    );
    assert!(
        history.iter().any(|h| h.contains("ENV GREETING=hello-1")),
        "{history:?}"
    );
}

#[test]
fn errors_in_a_fragment_point_at_the_fragment() {
    let host = host(&[
        ("bad.df", "ENV X=1\nCOPY --bogus a /b\n"),
        ("unknown.df", "\nFOO bar\n"),
        ("from.df", "RUN true\nFROM scratch\n"),
        ("parse.df", "ENV\n"),
        ("outer.df", "ENV Y=1\nINCLUDE bad.df\n"),
    ]);
    let check = |source: &str, file: &str, line: u32, needles: &[&str]| {
        let e = fail_with(source, &host);
        let loc = e.location.clone().expect("located");
        assert_eq!((loc.file.as_str(), loc.line), (file, line), "{e}");
        for needle in needles {
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
    };
    let df = "FROM scratch\nINCLUDE bad.df\n";
    check(
        df,
        "bad.df",
        2,
        &[
            "--bogus",
            "(in `COPY --bogus a /b`)",
            "(from INCLUDE at Dockerfile:2)",
        ],
    );
    check(
        "FROM scratch\nINCLUDE unknown.df\n",
        "unknown.df",
        2,
        &[
            "unknown instruction FOO (no plugin provides it)",
            "`FOO bar`",
        ],
    );
    check(
        "FROM scratch\nINCLUDE from.df\n",
        "from.df",
        2,
        &["FROM cannot be expanded into a stage"],
    );
    check("FROM scratch\nINCLUDE parse.df\n", "parse.df", 1, &["ENV"]);
    // Nested: the innermost file and line, and the whole chain.
    check(
        "FROM scratch\n\nINCLUDE outer.df\n",
        "bad.df",
        2,
        &["(from INCLUDE at outer.df:2, from INCLUDE at Dockerfile:3)"],
    );
}

#[test]
fn instruction_plugins_in_a_fragment_see_the_fragment_location() {
    let host = host(&[("inner.df", "ARG V=3\nINCLUDE missing.df\n")]);
    let e = fail_with("FROM scratch\nINCLUDE inner.df\n", &host);
    // The fake answers None for a missing file: "no plugin" at the fragment's line.
    assert_eq!(e.location.unwrap().file, "inner.df");
    let lowered = host.lowered.borrow();
    let nested = lowered.last().expect("the nested INCLUDE was lowered");
    assert_eq!(nested.args, "missing.df");
    assert_eq!(
        (nested.location.file.as_str(), nested.location.line),
        ("inner.df", 2)
    );
    assert_eq!(
        nested.build_args.get("V").map(String::as_str),
        Some("3"),
        "the fragment's ARG is in scope for what follows it"
    );
}

#[test]
fn include_cycles_and_depth_are_refused() {
    let host = host(&[
        ("a.df", "INCLUDE b.df\n"),
        ("b.df", "ENV B=1\nINCLUDE a.df\n"),
    ]);
    let e = fail_with("FROM scratch\nINCLUDE a.df\n", &host);
    assert!(
        e.message.contains(
            "INCLUDE cycle: a.df is already being included (Dockerfile -> a.df -> b.df -> a.df)"
        ),
        "{}",
        e.message
    );
    let loc = e.location.unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("b.df", 2));

    // The build file itself, by its name.
    let host = self::host(&[("Dockerfile", "FROM scratch\nINCLUDE Dockerfile\n")]);
    let e = fail_with("FROM scratch\nINCLUDE Dockerfile\n", &host);
    assert!(e.message.contains("INCLUDE cycle"), "{}", e.message);

    // A chain of distinct files deeper than the limit.
    let files: Vec<(String, String)> = (0..40)
        .map(|i| (format!("f{i}.df"), format!("INCLUDE f{}.df\n", i + 1)))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let e = fail_with("FROM scratch\nINCLUDE f0.df\n", &self::host(&refs));
    assert!(
        e.message.contains(&format!(
            "more than {} levels deep",
            crate::expansion::MAX_DEPTH
        )),
        "{}",
        e.message
    );
}

#[test]
fn the_expansions_of_a_build_share_one_budget() {
    // Breadth: 100 INCLUDEs of 100 instructions each are more than one Dockerfile may hold.
    let wide = "INCLUDE b.df\n".repeat(100);
    let leaf = "ENV X=1\n".repeat(100);
    let host = host(&[("a.df", &wide), ("b.df", &leaf)]);
    let e = fail_with("FROM scratch\nINCLUDE a.df\n", &host);
    assert!(
        e.message.contains(&format!(
            "more than {} instructions",
            crate::expansion::MAX_EXPANDED_INSTRUCTIONS
        )),
        "{}",
        e.message
    );
    // Text: the same big fragment twice is more than one Dockerfile may weigh.
    let big = format!("# {}\nENV X=1\n", "x".repeat(5 << 20));
    let host = self::host(&[("big.df", &big)]);
    build(&request("FROM scratch\nINCLUDE big.df\n"), &host).unwrap();
    let e = fail_with("FROM scratch\nINCLUDE big.df\nINCLUDE big.df\n", &host);
    assert!(e.message.contains("MiB of text"), "{}", e.message);
    assert_eq!(e.location.unwrap().line, 3);
}

#[test]
fn in_place_expansions_keep_the_build_file_lines() {
    let host = host(&[("pkgs.df", "\n\nPKG --broken curl\n")]);
    let resp = build(&request("FROM scratch\nWORKDIR /w\nPKG curl jq\n"), &host).unwrap();
    let runs = runs(&resp.definition);
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.ends_with("install curl jq"), "{}", runs[0].1);
    assert_eq!(runs[0].2, Some(("Dockerfile".to_owned(), 3)));

    // An error in the expanded text is at the instruction's line, quoting the expansion.
    let e = fail_with("FROM scratch\n\nINCLUDE pkgs.df\n", &host);
    let loc = e.location.clone().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("pkgs.df", 3), "{e}");
    assert!(
        e.message
            .contains("(in `RUN --mount=type=bogus install curl`)"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .ends_with("(in `RUN --mount=type=bogus install curl`) (from PKG at pkgs.df:3, from INCLUDE at Dockerfile:3)"),
        "{}",
        e.message
    );
    assert_eq!(e.message.matches("(from ").count(), 1, "{}", e.message);
}

#[test]
fn fragments_are_read_with_the_build_file_escape_token() {
    let host = host(&[
        ("cont.df", "RUN echo a `\n  b\n"),
        ("esc.df", "# escape=\\\nRUN echo a\n"),
    ]);
    let resp = build(
        &request("# escape=`\nFROM scratch\nINCLUDE cont.df\n"),
        &host,
    )
    .unwrap();
    let runs = runs(&resp.definition);
    assert!(runs[0].1.ends_with("echo a   b"), "{}", runs[0].1);

    let e = fail_with("# escape=`\nFROM scratch\nINCLUDE esc.df\n", &host);
    assert!(
        e.message.contains("cannot change the escape token"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().file, "esc.df");
}

#[test]
fn unknown_keywords_name_the_missing_plugin_and_typos_keep_the_hint() {
    let e = fail_with("FROM scratch\nINCLUDE a.df\n", &FakeHost::default());
    assert!(
        e.message
            .starts_with("unknown instruction INCLUDE (no plugin provides it)"),
        "{}",
        e.message
    );
    assert!(e.message.contains("`INCLUDE a.df`"), "{}", e.message);
    assert_eq!(e.location.unwrap().line, 2);
    let e = fail_with("FROM scratch\nRUNN x\n", &FakeHost::default());
    assert!(
        e.message
            .contains("unknown instruction: RUNN (did you mean RUN?)"),
        "{}",
        e.message
    );
}
