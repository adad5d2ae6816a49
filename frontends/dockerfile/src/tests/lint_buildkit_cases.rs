//! The build checks BuildKit has had since its first rule set, against the Dockerfiles of
//! BuildKit's own tests (frontend/dockerfile/dockerfile_check_test.go, formerly
//! dockerfile_lint_test.go), one test per BuildKit test function. Each case says what BuildKit
//! expects from `--call check` (every stage: rule, detail) and, where it differs, from a build
//! (only the stages the target needs: rule, detail, line). `lint_rules.rs` covers the rules
//! added later (InvalidDefaultArgInFrom onwards).

use super::*;

/// A finding: rule, detail, line.
type Found = (String, String, u32);

fn found(rule: &str, detail: &str, line: u32) -> Found {
    (rule.to_owned(), detail.to_owned(), line)
}

fn host() -> FakeHost {
    let mut host = FakeHost::default();
    for image in ["alpine", "alpine:latest", "busybox", "busybox:latest"] {
        host.images
            .insert(image.to_owned(), ImageConfig::scratch(&platform()));
    }
    host
}

/// `--call check` on `source`: the findings sorted as BuildKit's test sorts them (line, then
/// detail) and the check's error message, if any.
fn check(source: &str) -> (Vec<Found>, Option<String>) {
    check_with(source, &[])
}

fn check_with(source: &str, build_args: &[(&str, &str)]) -> (Vec<Found>, Option<String>) {
    let mut req = with_call(source, "check");
    for (k, v) in build_args {
        req.build_args.insert((*k).to_owned(), (*v).to_owned());
    }
    let v = call_result(&req, &host());
    let mut got: Vec<Found> = v["warnings"]
        .as_array()
        .expect("a warnings list")
        .iter()
        .map(|w| {
            (
                w["ruleName"].as_str().expect("a rule").to_owned(),
                w["detail"].as_str().expect("a detail").to_owned(),
                w["location"]["line"].as_u64().expect("a line") as u32,
            )
        })
        .collect();
    got.sort_by(|a, b| (a.2, &a.1).cmp(&(b.2, &b.1)));
    let error = v["error"]["message"].as_str().map(str::to_owned);
    (got, error)
}

/// A build of `source`: its lint findings (rule, detail, line) in order, or the error.
fn build_findings(source: &str) -> Result<Vec<Found>, PluginError> {
    let resp = build(&request(source), &host())?;
    Ok(resp
        .warnings
        .iter()
        .filter_map(|w| {
            // "Rule: detail (line N)"; parser warnings and others have no rule prefix.
            let (rule, rest) = w.message.split_once(": ")?;
            if !rule.chars().all(|c| c.is_ascii_alphanumeric()) {
                return None;
            }
            let line = w.location.as_ref().expect("a location").line;
            let detail = rest.strip_suffix(&format!(" (line {line})"))?;
            Some(found(rule, detail, line))
        })
        .collect())
}

/// Asserts that `--call check` gives `want` with no error, and so does a build.
fn clean_and_same(source: &str, want: &[Found]) {
    let (got, error) = check(source);
    assert_eq!(error, None, "{source}");
    assert_eq!(got, want, "--call check of {source}");
    let built = build_findings(source).unwrap_or_else(|e| panic!("{source}: {e:?}"));
    assert_eq!(built, want, "build of {source}");
}

#[test]
fn rule_check_option() {
    let base = "FROM scratch as base\ncopy Dockerfile .\n";
    for directive in [
        "#check=skip=all\n",
        "#check=skip=all;error=true\n",
        "#check=skip=ConsistentInstructionCasing,FromAsCasing\n",
        "#check=skip=ConsistentInstructionCasing,FromAsCasing;error=true\n",
    ] {
        clean_and_same(&format!("{directive}{base}"), &[]);
    }
    let only_from_as = [found(
        "FromAsCasing",
        "'as' and 'FROM' keywords' casing do not match",
        2,
    )];
    clean_and_same(
        &format!("#check=skip=ConsistentInstructionCasing\n{base}"),
        &only_from_as,
    );
    // error=true: the same finding, and the build fails at its line.
    let source = format!("#check=skip=ConsistentInstructionCasing;error=true\n{base}");
    let (got, error) = check(&source);
    assert_eq!(got, only_from_as);
    // BuildKit's message is exactly the first part; kiln adds the first finding after it.
    let error = error.expect("a lint error");
    assert!(
        error.starts_with("lint violation found for rules: FromAsCasing"),
        "{error}"
    );
    let e = build_findings(&source).unwrap_err();
    assert!(e
        .message
        .starts_with("lint violation found for rules: FromAsCasing"));
    assert_eq!(e.location.expect("a location").line, 2);

    // The build argument replaces the directive.
    let source = format!("#check=skip=all\n{base}");
    let (got, error) = check_with(
        &source,
        &[(
            "BUILDKIT_DOCKERFILE_CHECK",
            "skip=ConsistentInstructionCasing;error=true",
        )],
    );
    assert_eq!(got, only_from_as);
    assert!(error
        .expect("a lint error")
        .starts_with("lint violation found for rules: FromAsCasing"));
    let source = format!("#check=error=true\n{base}");
    let (got, error) = check_with(&source, &[("BUILDKIT_DOCKERFILE_CHECK", "skip=all")]);
    assert_eq!((got, error), (vec![], None));
}

#[test]
fn stage_name() {
    clean_and_same(
        "\n# warning: stage name should be lowercase\n#\nFROM scratch AS BadStageName\n\n\
         # warning: 'as' should match 'FROM' cmd casing.\n#\nFROM scratch as base2\n\n\
         FROM scratch AS base3\n",
        &[
            found(
                "StageNameCasing",
                "Stage name 'BadStageName' should be lowercase",
                4,
            ),
            found(
                "FromAsCasing",
                "'as' and 'FROM' keywords' casing do not match",
                8,
            ),
        ],
    );
    clean_and_same(
        "\n# warning: 'AS' should match 'from' cmd casing.\n#\nfrom scratch AS base\n\n\
         from scratch as base2\n",
        &[found(
            "FromAsCasing",
            "'AS' and 'from' keywords' casing do not match",
            4,
        )],
    );
}

#[test]
fn no_empty_continuation() {
    // The finding is reported on the instruction's last line, as BuildKit's parser does.
    clean_and_same(
        "\nFROM scratch\n# warning: empty continuation line\nCOPY Dockerfile \\\n\n.\n\
         COPY Dockerfile \\\n.\n",
        &[found("NoEmptyContinuation", "Empty continuation line", 6)],
    );
    // A rule like the others: skipped by the check directive, an error with error=true.
    clean_and_same(
        "# check=skip=NoEmptyContinuation\nFROM scratch\nCOPY Dockerfile \\\n\n.\n",
        &[],
    );
    let e =
        build_findings("# check=error=true\nFROM scratch\nCOPY Dockerfile \\\n\n.\n").unwrap_err();
    assert!(
        e.message
            .starts_with("lint violation found for rules: NoEmptyContinuation"),
        "{}",
        e.message
    );
    assert_eq!(e.location.expect("a location").line, 5);
}

#[test]
fn consistent_instruction_casing() {
    let rule = "ConsistentInstructionCasing";
    clean_and_same(
        "\n# warning: 'FROM' should be either lowercased or uppercased\n#\n\
         From scratch as base\nFROM scratch AS base2\n",
        &[found(
            rule,
            "Command 'From' should match the case of the command majority (uppercase)",
            4,
        )],
    );
    clean_and_same(
        "\nFROM scratch\n# warning: 'copy' should match command majority's casing (uppercase)\n\
         copy Dockerfile /foo\nCOPY Dockerfile /bar\n",
        &[found(
            rule,
            "Command 'copy' should match the case of the command majority (uppercase)",
            4,
        )],
    );
    clean_and_same(
        "\n# warning: 'frOM' should be either lowercased or uppercased\n#\n\
         frOM scratch as base\nfrom scratch as base2\n",
        &[found(
            rule,
            "Command 'frOM' should match the case of the command majority (lowercase)",
            4,
        )],
    );
    clean_and_same(
        "\nfrom scratch\n# warning: 'COPY' should match command majority's casing (lowercase)\n\
         COPY Dockerfile /foo\ncopy Dockerfile /bar\n",
        &[found(
            rule,
            "Command 'COPY' should match the case of the command majority (lowercase)",
            4,
        )],
    );
    clean_and_same(
        "\n# warning: 'from' should match command majority's casing (uppercase)\n#\n\
         from scratch\nCOPY Dockerfile /foo\nCOPY Dockerfile /bar\nCOPY Dockerfile /baz\n",
        &[found(
            rule,
            "Command 'from' should match the case of the command majority (uppercase)",
            4,
        )],
    );
    clean_and_same(
        "\n# warning: 'FROM' should match command majority's casing (lowercase)\n#\n\
         FROM scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\ncopy Dockerfile /baz\n",
        &[found(
            rule,
            "Command 'FROM' should match the case of the command majority (lowercase)",
            4,
        )],
    );
    clean_and_same(
        "\nfrom scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\n",
        &[],
    );
    clean_and_same(
        "\nFROM scratch\nCOPY Dockerfile /foo\nCOPY Dockerfile /bar\n",
        &[],
    );
    // A heredoc body is not an instruction, whatever its casing.
    clean_and_same("\nFROM alpine\nRUN <<'EOT'\nenv\nEOT\n", &[]);
}

#[test]
fn duplicate_stage_name() {
    clean_and_same(
        "\nFROM scratch AS b\nFROM scratch AS b\n",
        &[found(
            "DuplicateStageName",
            "Duplicate stage name \"b\", stage names should be unique",
            3,
        )],
    );
    clean_and_same("\nFROM scratch AS b1\nFROM scratch AS b2\n", &[]);
}

#[test]
fn reserved_stage_name() {
    clean_and_same(
        "\nFROM scratch AS scratch\nFROM scratch AS context\n",
        &[
            found(
                "ReservedStageName",
                "Stage name should not use the same name as reserved stage \"scratch\"",
                2,
            ),
            found(
                "ReservedStageName",
                "Stage name should not use the same name as reserved stage \"context\"",
                3,
            ),
        ],
    );
    clean_and_same("\nFROM scratch\nFROM scratch AS a\n", &[]);
}

#[test]
fn json_args_recommended() {
    for inst in ["CMD", "ENTRYPOINT"] {
        clean_and_same(
            &format!("\nFROM scratch\n{inst} mycommand\n"),
            &[found(
                "JSONArgsRecommended",
                &format!(
                    "JSON arguments recommended for {inst} to prevent unintended behavior related to OS signals"
                ),
                3,
            )],
        );
        // A SHELL, in the stage or in its base stage, says the shell form is meant.
        clean_and_same(
            &format!("\nFROM scratch\nSHELL [\"/usr/bin/customshell\"]\n{inst} mycommand\n"),
            &[],
        );
        clean_and_same(
            &format!(
                "\nFROM scratch AS base\nSHELL [\"/usr/bin/customshell\"]\n\nFROM base\n{inst} mycommand\n"
            ),
            &[],
        );
    }
}

#[test]
fn maintainer_deprecated() {
    clean_and_same(
        "\nFROM scratch\nMAINTAINER me@example.org\n",
        &[found(
            "MaintainerDeprecated",
            "Maintainer instruction is deprecated in favor of using label",
            3,
        )],
    );
    clean_and_same(
        "\nFROM scratch\nLABEL org.opencontainers.image.authors=\"me@example.org\"\n",
        &[],
    );
    // A `# check=` comment right above an instruction configures the checks of that
    // instruction (BuildKit's WithMergedConfigFromComments).
    clean_and_same(
        "\nFROM scratch\n# check=skip=JSONArgsRecommended\nCMD mycommand\n",
        &[],
    );
    clean_and_same(
        "\nFROM scratch\n# check=skip=JSONArgsRecommended\nENTRYPOINT mycommand\n",
        &[],
    );
    clean_and_same(
        "\nFROM scratch\n# check=skip=MaintainerDeprecated\nMAINTAINER me@example.org\n",
        &[],
    );
    // `error=` in such a comment is not merged: the finding stays a warning.
    clean_and_same(
        "FROM scratch\n# check=error=true\nMAINTAINER me@example.org\n",
        &[found(
            "MaintainerDeprecated",
            "Maintainer instruction is deprecated in favor of using label",
            3,
        )],
    );
    // File-wide rules run with the file's configuration only: such a comment does not turn
    // them off (BuildKit checks casing, stage names and empty continuations before it looks at
    // an instruction's comments).
    clean_and_same(
        "FROM scratch\nCOPY a /a\n# check=skip=ConsistentInstructionCasing,NoEmptyContinuation\ncopy b \\\n\n/b\n",
        &[
            found(
                "ConsistentInstructionCasing",
                "Command 'copy' should match the case of the command majority (uppercase)",
                4,
            ),
            found("NoEmptyContinuation", "Empty continuation line", 6),
        ],
    );
    clean_and_same(
        "FROM scratch AS a\n# check=skip=DuplicateStageName\nFROM scratch AS a\n",
        &[found(
            "DuplicateStageName",
            "Duplicate stage name \"a\", stage names should be unique",
            3,
        )],
    );
}

#[test]
fn warnings_before_error() {
    let source = "\nFROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n";
    let (got, error) = check(source);
    assert_eq!(
        got,
        [
            found(
                "StageNameCasing",
                "Stage name 'BadStageName' should be lowercase",
                2
            ),
            found(
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label",
                3
            ),
        ]
    );
    let error = error.expect("the unknown instruction fails the check");
    assert!(error.contains("BADCMD"), "{error}");
}

#[test]
fn undeclared_arg() {
    for source in [
        "\nARG base=scratch\nFROM $base\nCOPY Dockerfile .\n",
        "\nARG BUILDPLATFORM=linux/amd64\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n",
        "\nFROM --platform=$BUILDPLATFORM scratch\nCOPY Dockerfile .\n",
        "\nARG DEBUG\nFROM scratch${DEBUG}\nCOPY Dockerfile .\n",
        "\nARG DEBUG\nFROM scra${DEBUG:-tch}\nCOPY Dockerfile .\n",
        "\nARG DEBUG=\"\"\nFROM scratch${DEBUG-@bogus}\nCOPY Dockerfile .\n",
    ] {
        clean_and_same(source, &[]);
    }

    // A misspelt platform ARG: the finding, with a hint, and the build fails on the empty
    // platform.
    let source = "\nFROM --platform=$BULIDPLATFORM scratch\nCOPY Dockerfile .\n";
    let want = [found(
        "UndefinedArgInFrom",
        "FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?)",
        2,
    )];
    let (got, error) = check(source);
    assert_eq!(got, want);
    let error = error.expect("an empty platform fails");
    assert!(
        error.contains("BULIDPLATFORM") && error.contains("did you mean BUILDPLATFORM?"),
        "{error}"
    );
    let e = build_findings(source).unwrap_err();
    assert_eq!(e.location.expect("a location").line, 2);

    let source = "\nARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} busybox\nCOPY Dockerfile .\n\t";
    let (got, error) = check(source);
    assert_eq!(
        got,
        [found(
            "UndefinedArgInFrom",
            "FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?)",
            4,
        )]
    );
    let error = error.expect("an invalid platform fails");
    assert!(error.contains("did you mean MY_ARCH?"), "{error}");

    clean_and_same(
        "\nARG tag=latest\nFROM busybox:${tag}${version} AS b\nCOPY Dockerfile .\n",
        &[found(
            "UndefinedArgInFrom",
            "FROM argument 'version' is not declared",
            3,
        )],
    );
}

#[test]
fn workdir_relative_path() {
    clean_and_same(
        "\nFROM scratch\nWORKDIR app/\n",
        &[found(
            "WorkdirRelativePath",
            "Relative workdir \"app/\" can have unexpected results if the base image changes",
            3,
        )],
    );
    clean_and_same(
        "\nFROM scratch AS a\nWORKDIR /app\n\nFROM a AS b\nWORKDIR subdir/\n",
        &[],
    );
    clean_and_same(
        "\nFROM scratch\n# check=skip=WorkdirRelativePath\nWORKDIR app/\n",
        &[],
    );
}

#[test]
fn unmatched_vars() {
    clean_and_same("\nFROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n", &[]);
    clean_and_same(
        "\nFROM alpine AS base\nARG foo=Dockerfile\n\nFROM base\nCOPY $foo .\n",
        &[],
    );
    clean_and_same("\nFROM alpine\nRUN echo $PATH\n", &[]);
    clean_and_same(
        "\nFROM alpine\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n",
        &[found(
            "UndefinedVar",
            "Usage of undefined variable '$foo'",
            3,
        )],
    );
    clean_and_same(
        "\nFROM alpine\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\n\
         COPY $DIR_ASSET .\n\t",
        &[found(
            "UndefinedVar",
            "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)",
            6,
        )],
    );
    clean_and_same(
        "\nFROM alpine\nENV PATH=$PAHT:/tmp/bin\n\t\t",
        &[found(
            "UndefinedVar",
            "Usage of undefined variable '$PAHT' (did you mean $PATH?)",
            3,
        )],
    );
}

#[test]
fn multiple_instructions_disallowed() {
    let multiple = |inst: &str, line: u32| {
        found(
            "MultipleInstructionsDisallowed",
            &format!(
                "Multiple {inst} instructions should not be used in the same stage because only the last one will be used"
            ),
            line,
        )
    };
    clean_and_same(
        "\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myapp\"]\n\
         CMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n",
        &[
            multiple("ENTRYPOINT", 3),
            multiple("CMD", 5),
            multiple("HEALTHCHECK", 7),
        ],
    );
    // Another instruction between them changes nothing.
    clean_and_same(
        "\nFROM scratch\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\n\
         COPY <<EOF /a.txt\nHello, World!\nEOF\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\n\
         HEALTHCHECK CMD [\"/myotherapp\"]\n",
        &[
            multiple("ENTRYPOINT", 3),
            multiple("CMD", 4),
            multiple("HEALTHCHECK", 5),
        ],
    );
    // One of each per stage, even when a stage builds on another.
    clean_and_same(
        "\nFROM scratch AS a\nENTRYPOINT [\"/myapp\"]\nCMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\n\n\
         FROM a AS b\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n",
        &[],
    );
}

#[test]
fn legacy_key_value_format() {
    let env = found(
        "LegacyKeyValueFormat",
        "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
        3,
    );
    let label = found(
        "LegacyKeyValueFormat",
        "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format",
        4,
    );
    clean_and_same(
        "\nFROM scratch\nENV testkey value\nLABEL key value\n",
        &[env.clone(), label.clone()],
    );
    clean_and_same("\nFROM scratch\nENV testkey=value\nLABEL key=value\n", &[]);

    // In a stage the target does not need, only `--call check` sees them (BuildKit's test
    // leaves the lines out of this comparison).
    let source =
        "\nFROM scratch AS a\n\nFROM a AS b\nENV testkey value\nLABEL key value\n\nFROM a AS c\n";
    let (got, error) = check(source);
    assert_eq!(error, None);
    let details: Vec<&str> = got.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(details, [env.1.as_str(), label.1.as_str()]);
    assert_eq!(build_findings(source).expect("builds"), []);

    clean_and_same(
        "\nFROM scratch\n# check=skip=LegacyKeyValueFormat\nENV testkey value\n\
         # check=skip=LegacyKeyValueFormat\nLABEL key value\n",
        &[],
    );
}

#[test]
fn all_target_unmarshal() {
    let source = "\nFROM scratch AS first\nCOPY $foo .\n\nFROM scratch AS second\nCOPY $bar .\n";
    let (got, error) = check(source);
    assert_eq!(error, None);
    assert_eq!(
        got,
        [
            found("UndefinedVar", "Usage of undefined variable '$foo'", 3),
            found("UndefinedVar", "Usage of undefined variable '$bar'", 6),
        ]
    );
    assert_eq!(
        build_findings(source).expect("builds"),
        [found(
            "UndefinedVar",
            "Usage of undefined variable '$bar'",
            6
        )]
    );
}
