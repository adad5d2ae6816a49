//! In-process tests of the conversion, against a fake host serving context files, image configs
//! and instruction plugins from memory.

use std::cell::RefCell;
use std::collections::BTreeMap;

use kiln_graph::{
    Chmod, Chown, CopyAction, Definition, FileAction, FileBuilder, MountKind, NetworkMode, Op,
    SourceOp, State, UserRef, Vertex,
};
use kiln_plugin_sdk::proto::{
    ErrorKind, FrontendRequest, FrontendResponse, InstructionRequest, InstructionResponse,
    PluginError, ResolveImageConfigResponse,
};
use kiln_types::image::{History, ImageConfig, RootFs};
use kiln_types::{Digest, Platform};

use crate::{build, FrontendHost};

type Lower = Box<dyn Fn(&InstructionRequest) -> Option<InstructionResponse>>;

#[derive(Default)]
struct FakeHost {
    files: BTreeMap<String, String>,
    images: BTreeMap<String, ImageConfig>,
    lower: Option<Lower>,
    lowered: RefCell<Vec<InstructionRequest>>,
    resolved: RefCell<Vec<String>>,
}

impl FrontendHost for FakeHost {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        assert_eq!(context, "context");
        Ok(self.files.get(path).map(|s| s.as_bytes().to_vec()))
    }

    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<String>, PluginError> {
        assert_eq!(context, "context");
        let prefix = if path == "." {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(self
            .files
            .keys()
            .filter_map(|f| f.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        self.resolved.borrow_mut().push(reference.to_owned());
        match self.images.get(reference) {
            Some(config) => Ok(ResolveImageConfigResponse {
                digest: Digest::of(reference.as_bytes()),
                config: config.clone(),
            }),
            None => Err(PluginError::not_found(format!(
                "failed to resolve source metadata for {reference}: not found"
            ))),
        }
    }

    fn lower_instruction(
        &self,
        req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        self.lowered.borrow_mut().push(req.clone());
        Ok(self.lower.as_ref().and_then(|f| f(req)))
    }

    fn warn(&self, _message: &str) {}
}

fn platform() -> Platform {
    "linux/amd64".parse().unwrap()
}

fn request(source: &str) -> FrontendRequest {
    FrontendRequest {
        source: source.to_owned(),
        filename: "Dockerfile".to_owned(),
        build_args: BTreeMap::new(),
        target: None,
        platform: platform(),
        no_cache: false,
        no_cache_filter: Vec::new(),
        contexts: vec!["context".to_owned()],
        options: BTreeMap::new(),
    }
}

fn run(source: &str) -> FrontendResponse {
    build(&request(source), &FakeHost::default()).unwrap()
}

fn fail(source: &str) -> PluginError {
    build(&request(source), &FakeHost::default()).unwrap_err()
}

/// The vertex a definition outputs.
fn output(def: &Definition) -> &Vertex {
    let edge = def.outputs[0].expect("non-scratch output");
    def.vertex(&edge.vertex).expect("output vertex in graph")
}

fn input(def: &Definition, v: &Vertex, i: usize) -> Vertex {
    def.vertex(&v.inputs[i].vertex).unwrap().clone()
}

fn file_op(v: &Vertex) -> &kiln_graph::FileOp {
    match &v.op {
        Op::File(f) => f,
        other => panic!("expected a file op, got {other:?}"),
    }
}

fn copy_action(v: &Vertex, i: usize) -> &CopyAction {
    match &file_op(v).actions[i] {
        FileAction::Copy(c) => c,
        other => panic!("expected a copy, got {other:?}"),
    }
}

fn local_source(def: &Definition) -> kiln_graph::LocalSource {
    def.vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Local(l)) => Some(l.clone()),
            _ => None,
        })
        .expect("a local source")
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MULTI: &str = r#"ARG BASE_DIR=/app
FROM scratch AS build
COPY src /src
FROM scratch
ARG BASE_DIR
ENV A=1 B="two words"
WORKDIR ${BASE_DIR}
COPY --from=build --chown=1000:1000 /src ./src/
LABEL org.example.name=app "with space"=yes
EXPOSE 80 53/udp
USER 1000
CMD ["/app/run", "--serve"]
"#;

#[test]
fn multi_stage_scratch_gives_config_and_graph() {
    let resp = run(MULTI);
    let c = &resp.config.config;
    assert_eq!(
        c.env.as_deref().unwrap(),
        [DEFAULT_PATH, "A=1", "B=two words"]
    );
    assert_eq!(c.cmd.as_deref().unwrap(), ["/app/run", "--serve"]);
    assert_eq!(c.working_dir.as_deref(), Some("/app"));
    assert_eq!(c.user.as_deref(), Some("1000"));
    let labels = c.labels.as_ref().unwrap();
    assert_eq!(labels["org.example.name"], "app");
    assert_eq!(labels["with space"], "yes");
    let ports: Vec<&String> = c.exposed_ports.as_ref().unwrap().keys().collect();
    assert_eq!(ports, ["53/udp", "80/tcp"]);
    assert_eq!(
        (resp.config.os.as_str(), resp.config.architecture.as_str()),
        ("linux", "amd64")
    );

    let created: Vec<&str> = resp
        .config
        .history
        .iter()
        .map(|h| h.created_by.as_deref().unwrap())
        .collect();
    assert_eq!(
        created,
        [
            "ARG BASE_DIR=/app",
            "ENV A=1 B=two words",
            "WORKDIR /app",
            "COPY --chown=1000:1000 /src ./src/ # buildkit",
            "LABEL org.example.name=app with space=yes",
            "EXPOSE map[53/udp:{} 80/tcp:{}]",
            "USER 1000",
            r#"CMD ["/app/run" "--serve"]"#,
        ]
    );
    let empty: Vec<bool> = resp.config.history.iter().map(|h| h.empty_layer).collect();
    assert_eq!(empty, [true, true, false, false, true, true, true, true]);
    assert!(resp
        .config
        .history
        .iter()
        .all(|h| h.comment.as_deref() == Some("buildkit.dockerfile.v0")));

    // Final chain: COPY --from=build onto WORKDIR's mkdir, on scratch.
    let def = &resp.definition;
    def.validate().unwrap();
    let copy = output(def);
    assert_eq!(
        copy.meta.description,
        "[stage-1 2/2] COPY --from=build --chown=1000:1000 /src ./src/"
    );
    let action = copy_action(copy, 0);
    assert_eq!(
        (action.src.as_str(), action.dest.as_str()),
        ("/src", "/app/src/")
    );
    assert_eq!(
        action.owner,
        Some(Chown {
            user: UserRef::Id(1000),
            group: Some(UserRef::Id(1000))
        })
    );
    let mkdir = input(def, copy, 0);
    assert_eq!(
        mkdir.meta.description,
        "[stage-1 1/2] WORKDIR ${BASE_DIR}".replace("${BASE_DIR}", "/app")
    );
    assert_eq!(
        file_op(&mkdir).actions,
        [FileAction::Mkdir {
            path: "/app".into(),
            mode: 0o755,
            make_parents: true,
            owner: None
        }]
    );
    assert_eq!(file_op(&mkdir).base, None);
    // The copied-from stage: a copy of the context's `src` onto scratch.
    let build_copy = input(def, copy, 1);
    assert_eq!(build_copy.meta.description, "[build 1/1] COPY src /src");
    assert_eq!(file_op(&build_copy).base, None);
    let from_ctx = copy_action(&build_copy, 0);
    assert_eq!(
        (from_ctx.src.as_str(), from_ctx.dest.as_str()),
        ("/src", "/src")
    );
    let ctx = input(def, &build_copy, 0);
    assert_eq!(ctx.meta.description, "[internal] load build context");
    assert_eq!(def.vertices.len(), 4);
}

#[test]
fn target_picks_a_stage_and_drops_the_others() {
    let source = "FROM scratch AS build\nCOPY a /a\nFROM not-resolvable:1 AS other\nRUN x\nFROM scratch\nWORKDIR /w\nCOPY --from=build /a /b\n";
    let host = FakeHost::default();
    let mut req = request(source);
    req.target = Some("BUILD".into());
    let resp = build(&req, &host).unwrap();
    // The unused image stage was never resolved.
    assert!(host.resolved.borrow().is_empty());
    let def = &resp.definition;
    assert_eq!(def.vertices.len(), 2, "{def:#?}");
    assert!(def
        .vertices
        .iter()
        .all(|v| !matches!(&v.op, Op::File(f) if f.actions.iter().any(|a| matches!(a, FileAction::Mkdir { .. })))));
    assert_eq!(copy_action(output(def), 0).dest, "/a");
    assert_eq!(resp.config.history.len(), 1);

    // Default target: the last stage, which needs `build` but not `other`.
    let resp = build(&request(source), &host).unwrap();
    assert!(host.resolved.borrow().is_empty());
    assert_eq!(resp.definition.vertices.len(), 4);

    let mut req = request(source);
    req.target = Some("nope".into());
    let e = build(&req, &host).unwrap_err();
    assert_eq!(e.message, "target stage \"nope\" could not be found");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
}

#[test]
fn build_arg_overrides_default_and_changes_digest() {
    let source = "ARG V=1\nFROM scratch\nARG V\nCOPY a /dir$V/\nRUN echo $V\n";
    let host = FakeHost::default();
    let default = build(&request(source), &host).unwrap();
    let mut req = request(source);
    req.build_args.insert("V".into(), "2".into());
    let overridden = build(&req, &host).unwrap();

    let copy_dest = |r: &FrontendResponse| {
        let run = output(&r.definition);
        copy_action(&input(&r.definition, run, 0), 0).dest.clone()
    };
    assert_eq!(copy_dest(&default), "/dir1/");
    assert_eq!(copy_dest(&overridden), "/dir2/");
    assert_ne!(
        default.definition.outputs[0].unwrap().vertex,
        overridden.definition.outputs[0].unwrap().vertex
    );
    // ARG values reach RUN's environment and its history, not the image config.
    let Op::Exec(exec) = &output(&overridden.definition).op else {
        panic!("not an exec")
    };
    assert!(exec.env.contains(&"V=2".to_owned()), "{:?}", exec.env);
    assert_eq!(exec.args, ["/bin/sh", "-c", "echo $V"]);
    assert_eq!(
        overridden
            .config
            .history
            .last()
            .unwrap()
            .created_by
            .as_deref(),
        Some("RUN |1 V=2 /bin/sh -c echo $V # buildkit")
    );
    assert_eq!(
        overridden.config.config.env.as_deref().unwrap(),
        [DEFAULT_PATH]
    );
}

#[test]
fn global_arg_needs_redeclaring_and_platform_args_exist() {
    let source =
        "ARG G=g\nFROM scratch\nCOPY a /$G-x/\nARG G\nARG TARGETARCH\nCOPY a /$G-$TARGETARCH/\n";
    let resp = run(source);
    let def = &resp.definition;
    let second = output(def);
    let first = input(def, second, 0);
    assert_eq!(copy_action(&first, 0).dest, "/-x/");
    assert_eq!(copy_action(second, 0).dest, "/g-amd64/");
}

#[test]
fn dockerignore_patterns_become_excludes() {
    let source = "FROM scratch\nCOPY . /src/\n";
    let mut host = FakeHost::default();
    host.files.insert(
        ".dockerignore".into(),
        "# comment\n*.log\n!keep.log\n".into(),
    );
    let resp = build(&request(source), &host).unwrap();
    assert_eq!(
        local_source(&resp.definition).exclude_patterns,
        ["*.log", "!keep.log"]
    );
    assert_eq!(local_source(&resp.definition).name, "context");

    // A Dockerfile-specific ignore file wins.
    host.files
        .insert("app.Dockerfile.dockerignore".into(), "target\n".into());
    let mut req = request(source);
    req.filename = "app.Dockerfile".into();
    let resp = build(&req, &host).unwrap();
    assert_eq!(local_source(&resp.definition).exclude_patterns, ["target"]);

    // None at all is fine.
    let resp = run(source);
    assert!(local_source(&resp.definition).exclude_patterns.is_empty());
}

#[test]
fn copy_from_stage_index() {
    let source = "FROM scratch\nCOPY a /a\nFROM scratch\nCOPY --from=0 /a /b\n";
    let resp = run(source);
    let def = &resp.definition;
    let copy = output(def);
    assert_eq!(file_op(copy).base, None);
    let action = copy_action(copy, 0);
    assert_eq!((action.src.as_str(), action.dest.as_str()), ("/a", "/b"));
    let src = input(def, copy, 0);
    assert_eq!(src.meta.description, "[stage-0 1/1] COPY a /a");

    let mut req = request("FROM scratch AS first\nCOPY --from=1 /a /b\nFROM scratch AS later\n");
    req.target = Some("first".into());
    let e = build(&req, &FakeHost::default()).unwrap_err();
    assert_eq!(e.location.unwrap().line, 2);
    assert!(
        e.message
            .contains("needs to be defined before current stage"),
        "{}",
        e.message
    );
    let e = fail("FROM scratch\nCOPY --from=7 /a /b\n");
    assert!(
        e.message.starts_with("invalid stage index 7"),
        "{}",
        e.message
    );
}

#[test]
fn errors_carry_file_line_and_text() {
    let check = |source: &str, line: u32, needle: &str| {
        let e = fail(source);
        let loc = e.location.clone().expect("located");
        assert_eq!((loc.file.as_str(), loc.line), ("Dockerfile", line), "{e}");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
        e
    };
    let e = check(
        "FROM scratch\nCOPPY a b\n",
        2,
        "unknown instruction: COPPY (did you mean COPY?)",
    );
    assert!(e.message.contains("`COPPY a b`"), "{}", e.message);
    check("FROM scratch\nFOO bar\n", 2, "unknown instruction: FOO");
    assert!(!fail("FROM scratch\nFOO bar\n")
        .message
        .contains("did you mean"));
    let e = check(
        "FROM scratch\n\nCOPY --fro=x a b\n",
        3,
        "unknown flag: --fro",
    );
    assert_eq!(
        e.to_string().lines().next().unwrap().split(": ").next(),
        Some("Dockerfile:3")
    );
    check("COPY a b\n", 1, "no build stage in current context");
    check(
        "FROM scratch\nCOPY a b dest\n",
        2,
        "When using COPY with more than one source file, the destination must be a directory and end with a /",
    );
    check(
        "FROM scratch\nCOPY --chmod=999 a /b\n",
        2,
        "invalid chmod parameter",
    );
    check("FROM scratch\nEXPOSE 80/foo\n", 2, "invalid proto: foo");
    check("FROM scratch\nSTOPSIGNAL NOPE\n", 2, "Invalid signal: NOPE");
    check(
        "FROM scratch\nCOPY http://x/y /z\n",
        2,
        "source can't be a URL for COPY",
    );
    let e = fail("FROM scratch\nADD https://x/y /z\n");
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert_eq!(e.location.unwrap().line, 2);

    let e = fail("ARG ONLY=1\n");
    assert_eq!(e.message, "dockerfile contains no stages to build");
    let e = fail("");
    assert!(e.message.contains("cannot be empty"));
}

#[test]
fn base_image_config_and_run() {
    let mut base = ImageConfig::scratch(&platform());
    base.config.env = Some(vec!["PATH=/bin".into(), "HOME=/root".into()]);
    base.config.cmd = Some(vec!["sh".into()]);
    base.config.working_dir = Some("/srv".into());
    base.rootfs = RootFs {
        kind: "layers".into(),
        diff_ids: vec![Digest::of(b"layer")],
    };
    base.history = vec![History {
        created_by: Some("base".into()),
        ..History::default()
    }];
    let mut host = FakeHost::default();
    host.images.insert("busybox:1".into(), base);

    let source = "FROM busybox:1\nARG X=1\nENV HOME=/home/me\nUSER 1000:1000\nRUN --network=none echo $HOME\nENTRYPOINT [\"/bin/app\"]\n";
    let resp = build(&request(source), &host).unwrap();
    let c = &resp.config.config;
    assert_eq!(c.env.as_deref().unwrap(), ["PATH=/bin", "HOME=/home/me"]);
    // ENTRYPOINT drops the CMD inherited from the base image.
    assert_eq!(c.cmd, None);
    assert_eq!(c.entrypoint.as_deref().unwrap(), ["/bin/app"]);
    assert_eq!(resp.config.history.len(), 6);
    assert_eq!(resp.config.history[0].created_by.as_deref(), Some("base"));

    let def = &resp.definition;
    let exec_v = output(def);
    // Progress shows the command with known variables expanded, as BuildKit does.
    assert_eq!(
        exec_v.meta.description,
        "[2/2] RUN --network=none echo /home/me"
    );
    let Op::Exec(exec) = &exec_v.op else { panic!() };
    assert_eq!(exec.args, ["/bin/sh", "-c", "echo $HOME"]);
    assert_eq!(exec.env, ["PATH=/bin", "HOME=/home/me", "X=1"]);
    assert_eq!(exec.cwd, "/srv");
    assert_eq!(exec.user, "1000:1000");
    assert_eq!(exec.network, NetworkMode::None);
    let image = input(def, exec_v, 0);
    let Op::Source(SourceOp::Image(src)) = &image.op else {
        panic!()
    };
    let pinned = format!("docker.io/library/busybox:1@{}", Digest::of(b"busybox:1"));
    assert_eq!(src.reference, pinned);
    assert_eq!(image.meta.description, format!("[1/2] FROM {pinned}"));
    assert_eq!(
        resp.config.history[4].created_by.as_deref(),
        Some("RUN |1 X=1 /bin/sh -c echo $HOME # buildkit")
    );

    // A base that cannot be resolved fails at its FROM line, keeping the host's kind.
    let e = build(&request("FROM scratch\n\nFROM missing:2\n"), &host).unwrap_err();
    assert_eq!(e.location.unwrap().line, 3);
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.starts_with("missing:2: "), "{}", e.message);
}

#[test]
fn config_instructions_follow_buildkit() {
    let source = r#"FROM scratch
SHELL ["/bin/bash", "-c"]
CMD echo hi
HEALTHCHECK --interval=1m30s --retries=3 CMD curl -f http://localhost/
STOPSIGNAL SIGTERM
VOLUME /data /cache
MAINTAINER someone
ONBUILD RUN make
"#;
    let resp = run(source);
    let c = &resp.config.config;
    assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/bash", "-c", "echo hi"]);
    assert_eq!(c.args_escaped, Some(true));
    let hc = c.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(hc.interval, 90_000_000_000);
    assert_eq!(hc.retries, 3);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGTERM"));
    assert_eq!(c.volumes.as_ref().unwrap().len(), 2);
    assert_eq!(resp.config.author.as_deref(), Some("someone"));
    assert_eq!(c.on_build.as_deref().unwrap(), ["RUN make"]);
    let created: Vec<&str> = resp
        .config
        .history
        .iter()
        .map(|h| h.created_by.as_deref().unwrap())
        .collect();
    assert_eq!(
        created,
        [
            "SHELL [/bin/bash -c]",
            r#"CMD ["/bin/bash" "-c" "echo hi"]"#,
            "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:1m30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}",
            "STOPSIGNAL SIGTERM",
            "VOLUME [/data /cache]",
            "MAINTAINER someone",
        ]
    );
    // Nothing made a vertex.
    assert_eq!(resp.definition.outputs, [None]);
    assert!(resp.definition.vertices.is_empty());

    let resp = run("FROM scratch\nHEALTHCHECK NONE\n");
    assert_eq!(resp.config.config.healthcheck.unwrap().test, ["NONE"]);
}

#[test]
fn unknown_instruction_is_lowered_by_the_host() {
    let host = FakeHost {
        lower: Some(Box::new(|req: &InstructionRequest| {
            if req.keyword != "INCLUDE" {
                return None;
            }
            let base = req.state.state(req.state.outputs[0]).ok()?;
            let st = FileBuilder::new(&base)
                .action(FileAction::Mkfile {
                    path: "/included".into(),
                    mode: 0o644,
                    data: req.args.clone(),
                    owner: None,
                })
                .build("INCLUDE");
            let mut config = req.config.clone();
            config
                .config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert("included".into(), "yes".into());
            Some(InstructionResponse {
                state: State::definition(&[st]),
                config,
                history: Some("INCLUDE (plugin)".into()),
            })
        })),
        ..FakeHost::default()
    };
    let source = "FROM scratch\nARG A=1\nWORKDIR /w\nINCLUDE --depth=2 \\\n  other.Dockerfile\nLABEL after=1\n";
    let resp = build(&request(source), &host).unwrap();
    let lowered = host.lowered.borrow();
    assert_eq!(lowered.len(), 1);
    let req = &lowered[0];
    assert_eq!(req.keyword, "INCLUDE");
    assert_eq!(req.flags, ["--depth=2"]);
    assert_eq!(req.args, "other.Dockerfile");
    assert_eq!(req.location.line, 4);
    assert_eq!(req.build_args.get("A").map(String::as_str), Some("1"));
    assert_eq!(req.config.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(req.state.outputs.len(), 1);

    let def = &resp.definition;
    let top = output(def);
    assert!(
        matches!(&file_op(top).actions[0], FileAction::Mkfile { path, data, .. } if path == "/included" && data == "other.Dockerfile")
    );
    let below = input(def, top, 0);
    assert!(matches!(&file_op(&below).actions[0], FileAction::Mkdir { path, .. } if path == "/w"));
    let labels = resp.config.config.labels.as_ref().unwrap();
    assert_eq!(
        (labels["included"].as_str(), labels["after"].as_str()),
        ("yes", "1")
    );
    let h = &resp.config.history[2];
    assert_eq!(
        (h.created_by.as_deref(), h.empty_layer),
        (Some("INCLUDE (plugin)"), false)
    );
    assert_eq!(resp.config.history.len(), 4);

    // Unhandled keywords still fail at their line.
    drop(lowered);
    let e = build(&request("FROM scratch\nRUNN x\n"), &host).unwrap_err();
    assert!(
        e.message
            .contains("unknown instruction: RUNN (did you mean RUN?)"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().line, 2);
}

#[test]
fn same_dockerfile_gives_identical_definition() {
    let source = "FROM scratch AS a\nCOPY x /x\nFROM scratch\nWORKDIR /app\nCOPY --from=a /x ./\nCOPY <<EOF /etc/conf\nhello\nEOF\n";
    let one = run(source);
    let two = run(source);
    assert_eq!(one.definition.to_json(), two.definition.to_json());
    assert_eq!(one.config, two.config);
}

#[test]
fn heredoc_copy_becomes_mkfile() {
    let source = "FROM scratch\nENV NAME=world\nCOPY --chmod=600 <<EOF /etc/app/\nhello $NAME\nEOF\nCOPY <<'RAW' /raw.txt\n$NAME\nRAW\n";
    let resp = run(source);
    let def = &resp.definition;
    let raw = output(def);
    assert_eq!(
        file_op(raw).actions.last().unwrap(),
        &FileAction::Mkfile {
            path: "/raw.txt".into(),
            mode: 0o644,
            data: "$NAME\n".into(),
            owner: None
        }
    );
    let expanded = input(def, raw, 0);
    assert_eq!(
        file_op(&expanded).actions,
        [
            FileAction::Mkdir {
                path: "/etc/app".into(),
                mode: 0o755,
                make_parents: true,
                owner: None
            },
            FileAction::Mkfile {
                path: "/etc/app/EOF".into(),
                mode: 0o600,
                data: "hello world\n".into(),
                owner: None
            }
        ]
    );
    assert_eq!(
        resp.config.history[1].created_by.as_deref(),
        Some("COPY --chmod=600 <<EOF /etc/app/ # buildkit")
    );
}

#[test]
fn copy_flags_map_onto_the_copy_action() {
    let source = "FROM scratch\nWORKDIR /app\nCOPY --chmod=u+x --exclude=*.md --parents src/./lib/a.rs dest/\nCOPY --link b /b\n";
    let resp = run(source);
    let def = &resp.definition;
    let merge = output(def);
    assert!(matches!(merge.op, Op::Merge), "{:?}", merge.op);
    assert_eq!(merge.meta.description, "[3/3] LINK COPY --link b /b");
    let linked = input(def, merge, 1);
    assert_eq!(file_op(&linked).base, None);
    assert_eq!(linked.meta.description, "[3/3] COPY --link b /b");
    let flagged = input(def, merge, 0);
    let a = copy_action(&flagged, 0);
    assert_eq!(a.src, "/src");
    assert_eq!(a.include_patterns, ["lib/a.rs"]);
    assert_eq!(a.exclude_patterns, ["*.md"]);
    assert_eq!(a.dest, "/app/dest/");
    assert_eq!(a.mode, Some(Chmod::Symbolic("u+x".into())));
}

#[test]
fn run_mounts_and_heredocs() {
    let source = "FROM scratch AS tools\nCOPY t /t\nFROM scratch\nWORKDIR /src\nRUN --mount=type=cache,target=.cache --mount=type=bind,from=tools,source=/t,target=/tools --mount=type=secret,id=tok <<EOF\nmake\nEOF\n";
    let resp = run(source);
    let def = &resp.definition;
    let v = output(def);
    let Op::Exec(exec) = &v.op else { panic!() };
    assert_eq!(exec.args, ["/bin/sh", "-c", "make\n"]);
    assert_eq!(exec.mounts.len(), 4);
    assert!(
        matches!(&exec.mounts[1].kind, MountKind::Cache { id, .. } if id == "/src/.cache" || id == ".cache")
    );
    assert_eq!(exec.mounts[1].dest, "/src/.cache");
    assert_eq!(exec.mounts[1].input, None);
    assert_eq!(
        (
            exec.mounts[2].dest.as_str(),
            exec.mounts[2].selector.as_str()
        ),
        ("/tools", "/t")
    );
    assert!(exec.mounts[2].readonly);
    assert!(exec.mounts[2].input.is_some());
    assert_eq!(exec.mounts[3].dest, "/run/secrets/tok");
    assert!(
        v.meta.description.ends_with(" (make)"),
        "{}",
        v.meta.description
    );
}

#[test]
fn parser_warnings_are_returned() {
    let resp = run("FROM scratch\nLABEL a=b \\\n\n  c=d\n");
    assert!(!resp.warnings.is_empty());
    assert_eq!(
        resp.warnings[0].location.as_ref().unwrap().file,
        "Dockerfile"
    );
}

#[test]
fn no_cache_marks_vertices() {
    let mut req = request("FROM scratch AS a\nCOPY x /x\n");
    req.no_cache_filter = vec!["a".into()];
    let resp = build(&req, &FakeHost::default()).unwrap();
    assert!(output(&resp.definition).meta.ignore_cache);
    let resp = run("FROM scratch AS a\nCOPY x /x\n");
    assert!(!output(&resp.definition).meta.ignore_cache);
}

#[test]
fn wildcard_matching_several_files_needs_a_directory_dest() {
    let mut host = FakeHost::default();
    for f in [
        "src/a.txt",
        "src/b.txt",
        "src/c.md",
        "one.txt",
        ".dockerignore",
    ] {
        host.files.insert(f.into(), String::new());
    }
    let e = build(&request("FROM scratch\nCOPY src/*.txt /out\n"), &host).unwrap_err();
    assert!(
        e.message
            .starts_with("When using COPY with more than one source file"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().line, 2);
    // One match, or a directory destination, is fine.
    build(&request("FROM scratch\nCOPY *.txt /out\n"), &host).unwrap();
    build(&request("FROM scratch\nCOPY src/*.txt /out/\n"), &host).unwrap();
    // Ignored files do not count.
    host.files
        .insert(".dockerignore".into(), "src/b.txt\n".into());
    build(&request("FROM scratch\nCOPY src/*.txt /out\n"), &host).unwrap();
}

/// Every Dockerfile of the shared BuildKit conformance data converts or fails cleanly: no panic,
/// and every located error points into the file.
#[test]
fn conformance_dockerfiles_never_panic() {
    let dir = match std::env::var_os("KILN_CONFORMANCE_DIR") {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance")
        }
    };
    let mut files = Vec::new();
    let mut todo = vec![dir];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("Dockerfile"))
            {
                files.push(p);
            }
        }
    }
    assert!(
        !files.is_empty(),
        "no conformance Dockerfiles found (set KILN_CONFORMANCE_DIR)"
    );
    let host = FakeHost::default();
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let lines = text.lines().count() as u32;
        if let Err(e) = build(&request(&text), &host) {
            if let Some(loc) = &e.location {
                assert!(
                    loc.line >= 1 && loc.line <= lines.max(1),
                    "{}: {e}",
                    f.display()
                );
            }
        }
    }
}
