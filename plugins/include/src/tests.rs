use std::collections::BTreeMap;

use kiln_plugin_sdk::graph::State;
use kiln_plugin_sdk::proto::{ErrorKind, Expansion, InstructionRequest, Location, PluginError};
use kiln_plugin_sdk::types::image::ImageConfig;

use super::{fragment_path, lower, Files, Scope};

struct Context(BTreeMap<&'static str, &'static [u8]>);

impl Files for Context {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(self.0.get(path).map(|b| b.to_vec()))
    }
}

fn context() -> Context {
    Context(BTreeMap::from([
        ("frag/base.df", &b"ENV A=1\nRUN true\n"[..]),
        ("latin1.df", &b"RUN echo \xe9\n"[..]),
    ]))
}

fn request(args: &str) -> InstructionRequest {
    InstructionRequest {
        keyword: "INCLUDE".into(),
        args: args.into(),
        flags: Vec::new(),
        location: Location {
            file: "Dockerfile".into(),
            line: 3,
        },
        state: State::definition(&[State::scratch()]),
        config: ImageConfig::default(),
        build_args: BTreeMap::new(),
        accepts_expansion: true,
    }
}

fn error(req: InstructionRequest) -> PluginError {
    lower(req, &context()).unwrap_err()
}

#[test]
fn include_answers_with_the_fragment_and_the_unchanged_stage() {
    for args in [
        "frag/base.df",
        "./frag//base.df",
        "/frag/base.df",
        "\"frag/base.df\"",
    ] {
        let req = request(args);
        let resp = lower(req.clone(), &context()).unwrap();
        assert_eq!(
            resp.expansion,
            Some(Expansion {
                file: "frag/base.df".into(),
                source: "ENV A=1\nRUN true\n".into(),
                first_line: 1,
            }),
            "{args}"
        );
        assert_eq!((resp.state, resp.config), (req.state, req.config));
    }
}

fn path(args: &str) -> Result<String, PluginError> {
    let env = ["DIR=frag".to_owned(), "SHADOWED=from-env".to_owned()];
    let args_in_scope = BTreeMap::from([
        ("VARIANT".to_owned(), "slim".to_owned()),
        ("SHADOWED".to_owned(), "from-arg".to_owned()),
    ]);
    fragment_path(
        args,
        &Scope {
            env: &env,
            args: &args_in_scope,
        },
    )
}

#[test]
fn paths_expand_the_stage_variables_as_copy_sources_do() {
    assert_eq!(path("$DIR/${VARIANT}.df").unwrap(), "frag/slim.df");
    assert_eq!(path("${SHADOWED}.df").unwrap(), "from-env.df");
    assert_eq!(path("\"$DIR/a b.df\"").unwrap(), "frag/a b.df");
    assert_eq!(path("${UNSET:-x}.df").unwrap(), "x.df");
}

#[test]
fn bad_paths_are_refused_naming_them() {
    let check = |args: &str, needle: &str| {
        let e = path(args).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(e.message.contains(needle), "{args}: {}", e.message);
    };
    check("", "needs the path");
    check("../outside.df", "`..` is not allowed");
    check("a/../../b", "`..` is not allowed");
    check("a.df b.df", "takes one path");
    check("$NOTHING", "needs the path");
    check("${A:?is required}", "is required");
    check("/", "context root");
}

#[test]
fn missing_and_unreadable_fragments_name_the_path() {
    let e = error(request("nope.df"));
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message
            .contains("INCLUDE nope.df: no such file in the build context"),
        "{}",
        e.message
    );
    // No location: the frontend adds the INCLUDE's own, and quotes the line.
    assert_eq!(e.location, None);
    let e = error(request("latin1.df"));
    assert!(e.message.contains("not UTF-8"), "{}", e.message);
}

#[test]
fn an_old_frontend_or_a_flag_is_refused() {
    let mut req = request("frag/base.df");
    req.accepts_expansion = false;
    let e = error(req);
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("protocol 3"), "{}", e.message);
    let mut req = request("frag/base.df");
    req.flags = vec!["--from=other".into()];
    assert!(error(req).message.contains("no flags, got --from=other"));
}
