//! The build checks kiln gained from BuildKit v0.32's rule set, each with the Dockerfiles of
//! BuildKit's own tests (frontend/dockerfile/dockerfile_check_test.go): those that trigger the
//! rule, with its name, message and line, and those that must not.

use super::*;

/// A finding as `--call check` reports it: rule, detail, line.
type Found = (String, String, u64);

/// `--call check` on `source` with `build_args`: the findings of `rule`, after asserting that
/// the check itself succeeded and that every finding of the rule carries BuildKit's
/// description and documentation URL.
fn check_rule(source: &str, build_args: &[(&str, &str)], rule: &str) -> Vec<Found> {
    let v = check_json(source, build_args);
    assert_eq!(v["error"], serde_json::Value::Null, "{source:?}: {v:#}");
    of_rule(&v, rule)
}

/// The `--call check` result, whether or not the build would fail.
fn check_json(source: &str, build_args: &[(&str, &str)]) -> serde_json::Value {
    let mut host = FakeHost::default();
    for image in ["busybox", "busybox:latest", "busybox:stable-musl"] {
        host.images
            .insert(image.to_owned(), ImageConfig::scratch(&platform()));
    }
    check_on(&host, source, build_args)
}

/// The `--call check` result against `host`.
fn check_on(host: &FakeHost, source: &str, build_args: &[(&str, &str)]) -> serde_json::Value {
    let mut req = with_call(source, "check");
    for (k, v) in build_args {
        req.build_args.insert((*k).to_owned(), (*v).to_owned());
    }
    call_result(&req, host)
}

/// The findings of `rule` in a `--call check` result, after asserting that each carries
/// BuildKit's description and documentation URL.
fn of_rule(v: &serde_json::Value, rule: &str) -> Vec<Found> {
    let (description, url) = described(rule);
    // A rule without a page has no `url` at all, as BuildKit's `omitempty`.
    let url = if url.is_empty() {
        serde_json::Value::Null
    } else {
        url.into()
    };
    v["warnings"]
        .as_array()
        .expect("a warnings list")
        .iter()
        .filter(|w| w["ruleName"] == rule)
        .map(|w| {
            assert_eq!(w["description"], description, "{w:#}");
            assert_eq!(w["url"], url, "{w:#}");
            assert_eq!(w["location"]["file"], "Dockerfile");
            (
                rule.to_owned(),
                w["detail"].as_str().expect("a detail").to_owned(),
                w["location"]["line"].as_u64().expect("a line"),
            )
        })
        .collect()
}

/// BuildKit's description and URL of a rule (linter/ruleset.go).
fn described(rule: &str) -> (&'static str, &'static str) {
    match rule {
        "InvalidDefaultArgInFrom" => (
            "Default value for global ARG results in an empty or invalid base image name",
            "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
        ),
        "SecretsUsedInArgOrEnv" => (
            "Sensitive data should not be used in the ARG or ENV commands",
            "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
        ),
        "RedundantTargetPlatform" => (
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
            "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
        ),
        "FromPlatformFlagConstDisallowed" => (
            "FROM --platform flag should not use a constant value",
            "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
        ),
        "ExposeProtoCasing" => (
            "Protocol in EXPOSE instruction should be lowercase",
            "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
        ),
        "ExposeInvalidFormat" => (
            "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
            "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
        ),
        "InvalidDefinitionDescription" => (
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
            "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/",
        ),
        "CopyIgnoredFile" => (
            "Attempting to Copy file that is excluded by .dockerignore",
            "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
        ),
        "InvalidBaseImagePlatform" => (
            "Base image platform does not match expected target platform",
            "",
        ),
        other => panic!("no expectation for rule {other}"),
    }
}

fn found(rule: &str, detail: &str, line: u64) -> Found {
    (rule.to_owned(), detail.to_owned(), line)
}

/// Sorted, since BuildKit does not promise an order between findings of one line.
fn sorted(mut v: Vec<Found>) -> Vec<Found> {
    v.sort();
    v
}

#[test]
fn invalid_default_arg_in_from() {
    const RULE: &str = "InvalidDefaultArgInFrom";
    // The value given with --build-arg does not count: the defaults alone must make a name.
    let cases = [
        (
            "\nARG VERSION\nFROM busybox:$VERSION\n",
            ("VERSION", "latest"),
            "busybox:$VERSION",
        ),
        (
            "\nARG IMAGE\nFROM $IMAGE\n",
            ("IMAGE", "busybox:latest"),
            "$IMAGE",
        ),
        (
            "\nARG SFX=\"box:\"\nFROM busy${SFX}\n",
            ("SFX", "box:latest"),
            "busy${SFX}",
        ),
    ];
    for (source, arg, base) in cases {
        assert_eq!(
            check_rule(source, &[arg], RULE),
            [found(
                RULE,
                &format!(
                    "Default value for ARG {base} results in empty or invalid base image name"
                ),
                3
            )],
            "{source:?}"
        );
    }
    // Defaults that make a valid name, or an empty variable in a tag that stays valid.
    for (source, arg) in [
        (
            "\nARG VERSION=\"latest\"\nFROM busybox:${VERSION}\n",
            ("VERSION", "latest"),
        ),
        (
            "\nARG BUSYBOX_VARIANT=\"\"\nFROM busybox:stable${BUSYBOX_VARIANT}\n",
            ("BUSYBOX_VARIANT", "-musl"),
        ),
        (
            "\nARG BUSYBOX_VARIANT\nFROM busybox:stable${BUSYBOX_VARIANT}\n",
            ("BUSYBOX_VARIANT", "-musl"),
        ),
    ] {
        assert_eq!(check_rule(source, &[arg], RULE), [], "{source:?}");
    }
    // A plain build warns too, at the FROM line (kubernetes' `ARG BASEIMAGE` / `FROM
    // $BASEIMAGE` built with --build-arg BASEIMAGE=...).
    let mut host = FakeHost::default();
    host.images.insert(
        "registry.k8s.io/build-image/debian-base:v1".to_owned(),
        ImageConfig::scratch(&platform()),
    );
    let mut req = request("ARG BASEIMAGE\n\nFROM ${BASEIMAGE}\nCOPY a /a\n");
    req.build_args.insert(
        "BASEIMAGE".into(),
        "registry.k8s.io/build-image/debian-base:v1".into(),
    );
    let resp = build(&req, &host).unwrap();
    let warned: Vec<(&str, u32)> = resp
        .warnings
        .iter()
        .map(|w| (w.message.as_str(), w.location.as_ref().unwrap().line))
        .collect();
    assert_eq!(
        warned,
        [(
            "InvalidDefaultArgInFrom: Default value for ARG ${BASEIMAGE} results in empty or invalid base image name (line 3)",
            3
        )]
    );
    // The base quoted, as kubernetes' server images write it: the detail keeps the word as
    // written.
    let source = "ARG BASEIMAGE\nARG BINARY\n\nFROM \"${BASEIMAGE}\"\nCOPY ${BINARY} /usr/local/bin/${BINARY}\n";
    assert_eq!(
        check_rule(
            source,
            &[("BASEIMAGE", "busybox:latest"), ("BINARY", "a")],
            RULE
        ),
        [found(
            RULE,
            "Default value for ARG \"${BASEIMAGE}\" results in empty or invalid base image name",
            4
        )]
    );
    // Stage names, scratch and defaults built from other global ARGs are fine.
    let source =
        "ARG REPO=busybox\nARG IMG=${REPO}:latest\nFROM $IMG AS base\nFROM base\nFROM scratch\n";
    assert_eq!(check_rule(source, &[], RULE), []);
}

#[test]
fn secrets_used_in_arg_or_env() {
    const RULE: &str = "SecretsUsedInArgOrEnv";
    // BuildKit's test without its per-instruction `# check=` comments, which kiln does not read.
    let source = r#"# check=skip=InvalidDefinitionDescription

FROM scratch
ARG SECRET_PASSPHRASE
ENV SUPER_Secret=foo
ENV password=bar secret=baz
ARG super_duper_secret_token=foo auth=bar
ENV apikey=bar sunflower=foo
ENV git_key=
ENV PUBLIC_KEY=
ARG public_token
ARG SECRET_PASSPHRASE_FILE
ENV password_file=bar secret_File=baz
ARG AUTH_MODULE_VERSION
"#;
    let detail = |inst: &str, key: &str| {
        format!("Do not use ARG or ENV instructions for sensitive data ({inst} \"{key}\")")
    };
    let want = [
        ("ARG", "SECRET_PASSPHRASE", 4),
        ("ENV", "SUPER_Secret", 5),
        ("ENV", "password", 6),
        ("ENV", "secret", 6),
        ("ARG", "auth", 7),
        ("ARG", "super_duper_secret_token", 7),
        ("ENV", "apikey", 8),
        ("ENV", "git_key", 9),
    ]
    .map(|(inst, key, line)| found(RULE, &detail(inst, key), line));
    assert_eq!(sorted(check_rule(source, &[], RULE)), sorted(want.to_vec()));
    // Global ARGs are not dispatched in BuildKit, so not checked; `skip=` silences the rule.
    assert_eq!(
        check_rule("ARG GITHUB_TOKEN\nFROM scratch\n", &[], RULE),
        []
    );
    assert_eq!(
        check_rule(
            "# check=skip=SecretsUsedInArgOrEnv\nFROM scratch\nENV password=bar\n",
            &[],
            RULE
        ),
        []
    );
    // Names that merely contain a token are fine: it has to be a whole `_`-separated part.
    assert_eq!(
        check_rule(
            "FROM scratch\nENV KEYBOARD=1 MONKEY=2 AUTHOR=3 TOKENS=4\n",
            &[],
            RULE
        ),
        []
    );
}

#[test]
fn redundant_target_platform() {
    const RULE: &str = "RedundantTargetPlatform";
    for (source, word) in [
        (
            "\nFROM --platform=$TARGETPLATFORM scratch\n",
            "$TARGETPLATFORM",
        ),
        (
            "\nFROM --platform=${TARGETPLATFORM} scratch\n",
            "${TARGETPLATFORM}",
        ),
    ] {
        assert_eq!(
            check_rule(source, &[], RULE),
            [found(
                RULE,
                &format!("Setting platform to predefined {word} in FROM is redundant as this is the default behavior"),
                2
            )],
            "{source:?}"
        );
        // A variable is not a constant.
        assert_eq!(
            check_rule(source, &[], "FromPlatformFlagConstDisallowed"),
            []
        );
    }
    for source in [
        "# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n",
        "FROM --platform=$BUILDPLATFORM scratch\n",
        "FROM --platform=$TARGETOS/$TARGETARCH scratch\n",
    ] {
        assert_eq!(check_rule(source, &[], RULE), [], "{source:?}");
    }
}

#[test]
fn from_platform_flag_const_disallowed() {
    const RULE: &str = "FromPlatformFlagConstDisallowed";
    assert_eq!(
        check_rule("\nFROM --platform=linux/amd64 scratch\n", &[], RULE),
        [found(
            RULE,
            "FROM --platform flag should not use constant value \"linux/amd64\"",
            2
        )]
    );
    // A stage named after the platform's OS or architecture is meant to be that platform.
    for source in [
        "\nFROM --platform=linux/amd64 scratch AS my_amd64_stage\n",
        "\nFROM --platform=linux/amd64 scratch AS linux\n",
        "\nFROM --platform=$BUILDPLATFORM scratch\n",
    ] {
        assert_eq!(check_rule(source, &[], RULE), [], "{source:?}");
    }
}

#[test]
fn expose_proto_casing() {
    const RULE: &str = "ExposeProtoCasing";
    let source = "\nFROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n";
    let detail =
        |p: &str| format!("Defined protocol '{p}' in EXPOSE instruction should be lowercase");
    assert_eq!(
        check_rule(source, &[], RULE),
        [
            found(RULE, &detail("80/TcP"), 3),
            found(RULE, &detail("8080/TCP"), 3)
        ]
    );
    // The words are checked once expanded.
    let source = "FROM scratch\nENV P=UDP\nEXPOSE 53/udp 54/$P\n";
    assert_eq!(
        check_rule(source, &[], RULE),
        [found(RULE, &detail("54/UDP"), 3)]
    );
}

#[test]
fn expose_invalid_format() {
    const RULE: &str = "ExposeInvalidFormat";
    let source = "\nFROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n";
    let detail = |p: &str| {
        format!(
            "EXPOSE instruction should not define an IP address or host-port mapping, found '{p}'"
        )
    };
    // The build goes on, as in BuildKit: only the container ports reach the config.
    assert_eq!(
        check_rule(source, &[], RULE),
        [
            found(RULE, &detail("127.0.0.1:80:80"), 3),
            found(RULE, &detail("[::1]:8080:8080"), 3),
            found(RULE, &detail("5000:5000"), 3),
        ]
    );
    assert_eq!(
        check_rule("FROM scratch\nEXPOSE 80 443/tcp 53/udp\n", &[], RULE),
        []
    );
}

#[test]
fn invalid_definition_description_is_experimental() {
    const RULE: &str = "InvalidDefinitionDescription";
    // Comments that describe what follows, or are cut off by a bare `#` or an empty line.
    let fine = "# check=skip=all;experimental=InvalidDefinitionDescription
# foo this is the foo
ARG foo=bar

# base this is the base image
FROM scratch AS base

# version this is the version number
ARG version=latest

# baz this is the baz
ARG foo=baz bar=qux baz=quux
#
ARG bit=bat

# comment for something other than ARG or FROM
COPY Dockerfile .
";
    assert_eq!(check_rule(fine, &[], RULE), []);
    let bad = "# check=experimental=InvalidDefinitionDescription
# bar this is the bar
ARG foo=bar
# BasE this is the BasE image
FROM scratch AS base
# definitely a bad comment
ARG version=latest
# definitely a bad comment
ARG foo=baz bar=qux baz=quux
";
    let detail = |inst: &str, key: &str| {
        format!("Comment for {inst} should follow the format: `# {key} <description>`")
    };
    assert_eq!(
        check_rule(bad, &[], RULE),
        [
            found(RULE, &detail("ARG", "foo"), 3),
            found(RULE, &detail("FROM", "base"), 5),
            found(RULE, &detail("ARG", "version"), 7),
            found(RULE, &detail("ARG", "<arg_key>"), 9),
        ]
    );
    // Experimental: without `experimental=` the rule is off, and `skip=all` does not turn it
    // off once it is on.
    let off = bad.replace("# check=experimental=InvalidDefinitionDescription", "#");
    assert_eq!(check_rule(&off, &[], RULE), []);
    let all = bad.replace(
        "# check=experimental=InvalidDefinitionDescription",
        "# check=skip=all;experimental=all",
    );
    assert_eq!(check_rule(&all, &[], RULE).len(), 4);
}

/// A host serving `.dockerignore` with `ignore`.
fn with_ignore(ignore: &str) -> FakeHost {
    let mut host = FakeHost::default();
    host.files.insert(".dockerignore".into(), ignore.into());
    host.files
        .insert("Dockerfile".into(), "FROM scratch\n".into());
    host
}

/// The findings of `rule` for `source` checked against `host`, the check itself succeeding.
fn check_rule_on(host: &FakeHost, source: &str, rule: &str) -> Vec<Found> {
    let v = check_on(host, source, &[]);
    assert_eq!(v["error"], serde_json::Value::Null, "{source:?}: {v:#}");
    of_rule(&v, rule)
}

#[test]
fn copy_ignored_file() {
    const RULE: &str = "CopyIgnoredFile";
    let ignored = |verb: &str, file: &str, line| {
        let detail =
            format!("Attempting to {verb} file {file:?} that is excluded by .dockerignore");
        found(RULE, &detail, line)
    };
    // BuildKit's testCopyIgnoredFiles.
    let host = with_ignore("\nDockerfile\n");
    let source = "\nFROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n";
    assert_eq!(
        check_rule_on(&host, source, RULE),
        [
            ignored("Copy", "Dockerfile", 3),
            ignored("Add", "Dockerfile", 4),
        ]
    );
    let skipped =
        "# check=skip=CopyIgnoredFile\n\nFROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n";
    assert_eq!(check_rule_on(&host, skipped, RULE), []);
    // COPY --from reads a stage, not the context.
    let host = with_ignore("\nfoobar\n");
    let source = "\nFROM scratch AS base\nCOPY Dockerfile /foobar\nADD Dockerfile /windy\n\nFROM base\nCOPY --from=base /foobar /Dockerfile\n";
    assert_eq!(check_rule_on(&host, source, RULE), []);
    // Patterns with a `!` say nothing: a re-included file cannot be told apart.
    let host = with_ignore("\n**\n!Dockerfile\n");
    for source in [
        "\nFROM scratch\nCOPY ./Dockerfile .\n",
        "\nFROM scratch\nCOPY . .\n",
    ] {
        assert_eq!(check_rule_on(&host, source, RULE), [], "{source:?}");
    }
    // Sources are checked expanded and cleaned, a parent directory's pattern counts.
    let host = with_ignore("build\n*.key\n");
    let source = "FROM scratch\nARG KEY=signing.key\nCOPY ./build/out/../app.bin $KEY /\n";
    assert_eq!(
        check_rule_on(&host, source, RULE),
        [
            ignored("Copy", "build/app.bin", 3),
            ignored("Copy", "signing.key", 3),
        ]
    );
    // A plain build warns too, at the line.
    let resp = build(
        &request("FROM scratch\nCOPY secret.key /\n"),
        &with_ignore("*.key\n"),
    )
    .unwrap();
    let warned: Vec<(&str, u32)> = resp
        .warnings
        .iter()
        .map(|w| (w.message.as_str(), w.location.as_ref().unwrap().line))
        .collect();
    assert_eq!(
        warned,
        [(
            "CopyIgnoredFile: Attempting to Copy file \"secret.key\" that is excluded by .dockerignore (line 2)",
            2
        )]
    );
}

#[test]
fn copy_ignored_file_context_root() {
    const RULE: &str = "CopyIgnoredFile";
    // BuildKit's testCopyIgnoredFileContextRoot: the root counts only for a pattern that
    // excludes every top-level entry.
    let source = "\nFROM scratch\nCOPY . .\n";
    assert_eq!(check_rule_on(&with_ignore("\n.*\n"), source, RULE), []);
    assert_eq!(
        check_rule_on(&with_ignore("\n*\n"), source, RULE),
        [found(
            RULE,
            "Attempting to Copy file \".\" that is excluded by .dockerignore",
            3
        )]
    );
    // No .dockerignore, no check.
    assert_eq!(check_rule_on(&FakeHost::default(), source, RULE), []);
}

/// An image config for `platform` with one layer (an image without layers is scratch, which
/// BuildKit does not check).
fn layered(platform: &str) -> ImageConfig {
    let mut config = ImageConfig::scratch(&platform.parse().unwrap());
    config.rootfs.diff_ids.push(Digest::of(b"layer"));
    config
}

#[test]
fn invalid_base_image_platform() {
    const RULE: &str = "InvalidBaseImagePlatform";
    // BuildKit's testInvalidBaseImagePlatform: an image pushed for another platform than
    // the build's (linux/amd64 here).
    let mut host = FakeHost::default();
    host.images
        .insert("registry.test/base:arm".into(), layered("linux/arm64"));
    host.images
        .insert("registry.test/base:armv7".into(), layered("linux/arm/v7"));
    host.images
        .insert("registry.test/base:amd".into(), layered("linux/amd64"));
    host.images.insert(
        "registry.test/empty:arm".into(),
        ImageConfig::scratch(&"linux/arm64".parse().unwrap()),
    );
    let source = "\nFROM registry.test/base:arm\nENV foo=bar\n";
    assert_eq!(
        check_rule_on(&host, source, RULE),
        [found(
            RULE,
            "Base image registry.test/base:arm was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build",
            2
        )]
    );
    // The name as the FROM gives it, expanded; the variant shown.
    let source = "ARG BASE=registry.test/base:armv7\nFROM ${BASE}\n";
    assert_eq!(
        check_rule_on(&host, source, RULE),
        [found(
            RULE,
            "Base image registry.test/base:armv7 was pulled with platform \"linux/arm/v7\", expected \"linux/amd64\" for current build",
            2
        )]
    );
    // The platform asked for, the image's own, an empty image: nothing.
    for source in [
        "FROM --platform=linux/arm64 registry.test/base:arm AS arm64\n",
        "FROM registry.test/base:amd\n",
        "FROM registry.test/empty:arm\n",
    ] {
        assert_eq!(check_rule_on(&host, source, RULE), [], "{source:?}");
    }
    // A build warns too; a stage the target does not need is not pulled, so not checked.
    let source = "FROM registry.test/base:arm AS unused\nFROM registry.test/base:amd\n";
    let resp = build(&request(source), &host).unwrap();
    assert!(
        resp.warnings.iter().all(|w| !w.message.contains(RULE)),
        "{:?}",
        resp.warnings
    );
    let resp = build(&request("FROM registry.test/base:arm\n"), &host).unwrap();
    let warned: Vec<&str> = resp.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(
        warned,
        ["InvalidBaseImagePlatform: Base image registry.test/base:arm was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build (line 1)"]
    );
}

#[test]
fn expose_with_an_address_builds_as_buildkit() {
    // BuildKit accepts an address and a host port (ExposeInvalidFormat warns) and keeps the
    // container port; the words are sorted as written, then expanded.
    let resp = run("FROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080/udp 5000:5000 8000 ::1:9000:9000 7000-7001:7000-7001\n");
    let ports: Vec<&String> = resp
        .config
        .config
        .exposed_ports
        .as_ref()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        ports,
        ["5000/tcp", "7000/tcp", "7001/tcp", "80/tcp", "8000/tcp", "8080/udp", "9000/tcp"]
    );
    let history = resp.config.history.last().unwrap();
    assert_eq!(
        history.created_by.as_deref(),
        Some("EXPOSE [80/tcp 5000/tcp 7000/tcp 7001/tcp 8000/tcp 9000/tcp 8080/udp]")
    );
    // A host port range for one container port is allowed; bad parts are refused with
    // BuildKit's messages, at the line.
    run("FROM scratch\nEXPOSE 8000-8010:80\n");
    // An empty host port is no host port.
    run("FROM scratch\nEXPOSE 1.2.3.4::80\n");
    for (word, message) in [
        ("1.2.3:80:80", "invalid IP address: 1.2.3"),
        (
            "[::1:80:80",
            "invalid IP address [::1: missing ']' in address",
        ),
        ("x:80", "invalid hostPort: x"),
        ("70000", "invalid containerPort: 70000"),
        ("90-80", "invalid containerPort: 90-80"),
        (
            "80-81:90-95",
            "invalid ranges specified for container and host Ports: 90-95 and 80-81",
        ),
        ("80/foo", "invalid port: \"80/foo\": invalid proto: foo"),
    ] {
        let e = fail(&format!("FROM scratch\nEXPOSE {word}\n"));
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(2), "{word}");
        assert_eq!(
            e.message,
            format!("{message} (in `EXPOSE {word}`)"),
            "{word}"
        );
    }
}
