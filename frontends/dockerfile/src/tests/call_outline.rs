//! `--call targets|outline` against BuildKit's rules: which comment describes a stage or an
//! ARG, and which declaration of an ARG (or mount of a secret) the outline reports.

use serde_json::{json, Value};

use super::{call_result, with_call, FakeHost};

fn loc(line: u32) -> Value {
    json!({"file": "Dockerfile", "line": line})
}

fn targets(source: &str) -> Vec<(Value, Value)> {
    let v = call_result(&with_call(source, "targets"), &FakeHost::default());
    v["targets"]
        .as_array()
        .expect("a list of targets")
        .iter()
        .map(|t| (t["name"].clone(), t["description"].clone()))
        .collect()
}

fn outline(source: &str) -> Value {
    call_result(&with_call(source, "outline"), &FakeHost::default())
}

#[test]
fn a_bare_hash_ends_the_description_block() {
    let source = "\
# build compiles the app
#
FROM scratch AS build

  # release indented, so not a description
# release the final image

FROM scratch AS release
# Tools has the wrong case
# tools the stage name is lowercase
FROM scratch AS Tools
";
    assert_eq!(
        targets(source),
        [
            (json!("build"), json!("")),
            (json!("release"), json!("the final image")),
            (json!("tools"), json!("the stage name is lowercase")),
        ]
    );
}

#[test]
fn a_parser_directive_describes_nothing() {
    // `# check = ...` is a directive at the top of the file, not a comment of the stage.
    assert_eq!(
        targets("# check = skip=all\nFROM scratch AS check\n"),
        [(json!("check"), json!(""))]
    );
    // The same line below an instruction is an ordinary comment.
    assert_eq!(
        targets("FROM scratch\n# check = skip=all\nFROM scratch AS check\n"),
        [
            (json!(null), json!("")),
            (json!("check"), json!("= skip=all"))
        ]
    );
}

#[test]
fn the_targets_own_arg_declaration_wins() {
    let source = "\
ARG GO=1.20
FROM scratch AS build
# GO the build stage's Go
ARG GO=1.21
RUN echo $GO
FROM scratch AS final
# GO the Go of the image
ARG GO=1.22
COPY --from=build /a /a
";
    let v = outline(source);
    assert_eq!(
        v["args"],
        json!([{"name": "GO", "value": "1.22", "description": "the Go of the image", "location": loc(8)}])
    );
    assert_eq!(
        (&v["name"], &v["description"]),
        (&json!("final"), &json!(""))
    );
    // A stage built alone reports its own.
    let mut req = with_call(source, "outline");
    req.target = Some("build".into());
    let v = call_result(&req, &FakeHost::default());
    assert_eq!(
        v["args"],
        json!([{"name": "GO", "value": "1.21", "description": "the build stage's Go", "location": loc(4)}])
    );
}

#[test]
fn a_later_declaration_in_a_stage_replaces_an_earlier_one() {
    let v = outline("FROM scratch\nARG V=1\nRUN echo $V\n# V second\nARG V=2\n");
    assert_eq!(
        v["args"],
        json!([{"name": "V", "value": "2", "description": "second", "location": loc(5)}])
    );
}

#[test]
fn base_stage_args_come_after_the_targets_and_its_sources_after_both() {
    let source = "\
FROM scratch AS base
ARG X=base
ARG Y=base
FROM scratch AS src
ARG X=src
ARG Y=src
ARG Z=src
# final the image
FROM base AS final
ARG X=final
COPY --from=src /a /a
";
    let v = outline(source);
    assert_eq!(
        v["args"],
        json!([
            {"name": "Y", "value": "base", "description": "", "location": loc(3)},
            {"name": "Z", "value": "src", "description": "", "location": loc(7)},
            {"name": "X", "value": "final", "description": "", "location": loc(10)},
        ])
    );
    assert_eq!(
        (&v["name"], &v["description"]),
        (&json!("final"), &json!("the image"))
    );
}

#[test]
fn a_stages_first_mount_of_a_secret_is_the_one_reported() {
    let source = "\
FROM scratch AS dep
RUN --mount=type=secret,id=npm,required=true --mount=type=ssh,required=true x
FROM scratch
COPY --from=dep /a /a
RUN --mount=type=secret,id=npm --mount=type=secret,id=tok x
RUN --mount=type=secret,id=tok,required=true --mount=type=ssh y
";
    let v = outline(source);
    assert_eq!(
        v["secrets"],
        json!([
            {"name": "npm", "required": false, "location": loc(5)},
            {"name": "tok", "required": false, "location": loc(5)},
        ])
    );
    assert_eq!(
        v["ssh"],
        json!([{"name": "default", "required": false, "location": loc(6)}])
    );
    assert_eq!((&v["name"], &v["description"]), (&json!(null), &json!("")));
}

#[test]
fn a_secrets_name_comes_from_source_then_the_targets_base_name() {
    // BuildKit's `dispatchSecret`: `source=` names the secret as `id=` does; without either,
    // the target's `path.Base` (a trailing slash ignored); values are expanded first.
    let source = "\
FROM scratch
ARG TOKEN_NAME=gh
RUN --mount=type=secret,source=npmrc,target=/root/.npmrc a
RUN --mount=type=secret,target=/run/keys/signing/ b
RUN --mount=type=secret,id=$TOKEN_NAME c
RUN --mount=type=ssh,id= d
";
    let v = outline(source);
    assert_eq!(
        v["secrets"],
        json!([
            {"name": "npmrc", "required": false, "location": loc(3)},
            {"name": "signing", "required": false, "location": loc(4)},
            {"name": "gh", "required": false, "location": loc(5)},
        ])
    );
    // An empty SSH id is the default one.
    assert_eq!(
        v["ssh"],
        json!([{"name": "default", "required": false, "location": loc(6)}])
    );
}
