use std::collections::BTreeMap;

use dockerfile_parser::instructions::{
    parse_instruction, CacheSharing, CommandLine, Instruction, MountType,
};
use kiln_plugin_sdk::graph::State;
use kiln_plugin_sdk::proto::{ErrorKind, InstructionRequest, Location, PluginError};
use kiln_plugin_sdk::types::image::ImageConfig;

use super::{lower, shell_word, Manager};

fn request(args: &str) -> InstructionRequest {
    InstructionRequest {
        keyword: "PACKAGES".into(),
        args: args.into(),
        flags: Vec::new(),
        location: Location {
            file: "build/Dockerfile".into(),
            line: 7,
        },
        state: State::definition(&[State::scratch()]),
        config: ImageConfig::default(),
        build_args: BTreeMap::new(),
        accepts_expansion: true,
    }
}

/// `PACKAGES <args>` expanded and parsed as the Dockerfile frontend parses it: the RUN's
/// shell command and its cache mounts (target, sharing).
fn lowered(args: &str) -> (String, Vec<(String, Option<CacheSharing>)>) {
    let req = request(args);
    let resp = lower(req.clone()).unwrap();
    assert_eq!((&resp.state, &resp.config), (&req.state, &req.config));
    let exp = resp.expansion.expect("an expansion");
    // In place: the PACKAGES line itself, so errors and the step point there.
    assert_eq!((exp.file.as_str(), exp.first_line), ("build/Dockerfile", 7));
    assert_eq!(exp.source.lines().count(), 1, "one line: {}", exp.source);
    let parsed = dockerfile_parser::parse(&exp.source).unwrap();
    assert_eq!(parsed.nodes.len(), 1);
    let Instruction::Run(run) = parse_instruction(&parsed.nodes[0]).unwrap() else {
        panic!("not a RUN: {}", exp.source)
    };
    let CommandLine::Shell(cmd) = run.command else {
        panic!("not shell form: {}", exp.source)
    };
    let caches = run
        .mounts
        .iter()
        .map(|m| {
            assert_eq!(m.kind, MountType::Cache);
            (m.target.clone().unwrap_or_default(), m.sharing)
        })
        .collect();
    (cmd, caches)
}

#[test]
fn apt_keeps_its_downloads_in_locked_cache_mounts() {
    let (cmd, caches) = lowered("apt curl ca-certificates");
    assert_eq!(
        caches,
        [
            ("/var/cache/apt".to_owned(), Some(CacheSharing::Locked)),
            ("/var/lib/apt".to_owned(), Some(CacheSharing::Locked)),
        ]
    );
    assert_eq!(
        cmd,
        "rm -f /etc/apt/apt.conf.d/docker-clean && \
         echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/keep-cache && \
         apt-get update && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates"
    );
    assert_eq!(
        lowered("apt-get curl").0,
        cmd.replace(" ca-certificates", "")
    );
}

#[test]
fn apk_pip_and_npm_use_their_cache_directories() {
    let (cmd, caches) = lowered("apk curl");
    assert_eq!(
        caches,
        [("/var/cache/apk".to_owned(), Some(CacheSharing::Locked))]
    );
    assert_eq!(
        cmd,
        "ln -sfn /var/cache/apk /etc/apk/cache && apk add --update-cache curl"
    );
    let (cmd, caches) = lowered("pip3 \"requests>=2\" flask==3.0 $EXTRA");
    assert_eq!(caches, [("/root/.cache/pip".to_owned(), None)]);
    assert_eq!(cmd, "pip install 'requests>=2' flask==3.0 $EXTRA");
    let (cmd, caches) = lowered("npm typescript@5");
    assert_eq!(caches, [("/root/.npm".to_owned(), None)]);
    assert_eq!(cmd, "npm install --global typescript@5");
}

#[test]
fn words_the_shell_would_interpret_are_quoted() {
    assert_eq!(shell_word("curl"), "curl");
    assert_eq!(shell_word("\"a>=1\""), "'a>=1'");
    assert_eq!(shell_word("'a b'"), "'a b'");
    assert_eq!(shell_word("a;rm"), "'a;rm'");
    assert_eq!(shell_word("it's"), r"'it'\''s'");
    assert_eq!(shell_word("${V}"), "${V}");
    assert_eq!(Manager::from_name("APT"), Some(Manager::Apt));
    assert_eq!(Manager::from_name("yum"), None);
}

#[test]
fn mistakes_are_refused_saying_what_is_expected() {
    let check = |req: InstructionRequest, kind: ErrorKind, needle: &str| {
        let e: PluginError = lower(req).unwrap_err();
        assert_eq!(e.kind, kind, "{e}");
        // No location: the frontend adds the PACKAGES line and quotes it.
        assert_eq!(e.location, None);
        assert!(e.message.contains(needle), "{}", e.message);
    };
    let invalid = ErrorKind::InvalidInput;
    check(
        request(""),
        invalid,
        "needs a package manager (apt, apk, pip, npm)",
    );
    check(
        request("yum curl"),
        invalid,
        "unknown package manager \"yum\"",
    );
    check(
        request("apt"),
        invalid,
        "PACKAGES apt: no package to install",
    );
    let mut flagged = request("apt curl");
    flagged.flags = vec!["--fast".into()];
    check(flagged, invalid, "no flags, got --fast");
    let mut old = request("apt curl");
    old.accepts_expansion = false;
    check(old, ErrorKind::Unsupported, "protocol 3");
}
