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

mod add;
mod call_outline;
mod dockerignore_beside;
mod expansion;
mod git_query;
mod lint_buildkit_cases;
mod lint_rules;
mod named_contexts;
mod platform_args;
mod remote_named_contexts;
mod run_network_device;
mod workdir_dests;

type Lower = Box<dyn Fn(&InstructionRequest) -> Option<InstructionResponse>>;

#[derive(Default)]
struct FakeHost {
    files: BTreeMap<String, String>,
    /// The files beside the Dockerfile (the engine's `DOCKERFILE_CONTEXT`).
    beside: BTreeMap<String, String>,
    images: BTreeMap<String, ImageConfig>,
    lower: Option<Lower>,
    lowered: RefCell<Vec<InstructionRequest>>,
    resolved: RefCell<Vec<String>>,
}

impl FrontendHost for FakeHost {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        if context == kiln_plugin_sdk::context::BUILD_FILE {
            return Ok(self.beside.get(path).map(|s| s.as_bytes().to_vec()));
        }
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
            "EXPOSE [53/udp 80/tcp]",
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

    // A Dockerfile-specific ignore file wins, read beside the Dockerfile (BuildKit's
    // `dockerfile` local); one of that name at the context root is not it.
    host.files
        .insert("app.Dockerfile.dockerignore".into(), "stray\n".into());
    let mut req = request(source);
    req.filename = "app.Dockerfile".into();
    let resp = build(&req, &host).unwrap();
    assert_eq!(
        local_source(&resp.definition).exclude_patterns,
        ["*.log", "!keep.log"]
    );
    host.beside
        .insert("app.Dockerfile.dockerignore".into(), "target\n".into());
    let resp = build(&req, &host).unwrap();
    assert_eq!(local_source(&resp.definition).exclude_patterns, ["target"]);
    // Only the Dockerfile's own name counts beside it.
    let resp = build(&request(source), &host).unwrap();
    assert_eq!(
        local_source(&resp.definition).exclude_patterns,
        ["*.log", "!keep.log"]
    );

    // None at all is fine.
    let resp = run(source);
    assert!(local_source(&resp.definition).exclude_patterns.is_empty());
}

#[test]
fn dockerignore_is_compiled_once_per_build() {
    // 2 000 glob patterns and 2 000 wildcard COPYs: the patterns were compiled again for every
    // COPY, 4 million compilations. The bound is generous; compiling once takes about a second
    // in a debug build.
    let source = format!("FROM scratch\n{}", "COPY a*.txt /file\n".repeat(2_000));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut host = FakeHost::default();
        let ignore: String = (0..2_000).map(|i| format!("dir{i}/*.tmp\n")).collect();
        host.files.insert(".dockerignore".into(), ignore);
        host.files.insert("a1.txt".into(), "1".into());
        host.files.insert("b.txt".into(), "2".into());
        let copies = build(&request(&source), &host).map(|r| r.definition.vertices.len());
        tx.send(copies).ok();
    });
    let vertices = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the build ends within 10 s")
        .unwrap();
    assert!(vertices > 2_000, "{vertices}");
}

#[test]
fn dockerignore_limits_point_at_the_ignore_file() {
    let source = "FROM scratch\nCOPY . /src/\n";
    let mut host = FakeHost::default();
    let long = format!(
        "# big\nkeep\n{}\n",
        "x".repeat(kiln_ignore::MAX_PATTERN_BYTES + 1)
    );
    host.files.insert(".dockerignore".into(), long);
    let e = build(&request(source), &host).unwrap_err();
    let loc = e.location.clone().expect("located");
    assert_eq!((loc.file.as_str(), loc.line), (".dockerignore", 3), "{e}");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(
        e.message
            .starts_with("failed to read .dockerignore: line 3: pattern of 4097 bytes"),
        "{}",
        e.message
    );
    let many = "p\n".repeat(kiln_ignore::MAX_PATTERNS + 1);
    host.files.insert(".dockerignore".into(), many);
    let e = build(&request(source), &host).unwrap_err();
    assert_eq!(
        e.location.map(|l| l.line),
        Some(u32::try_from(kiln_ignore::MAX_PATTERNS + 1).unwrap())
    );
    assert!(
        e.message.contains("more than 10000 patterns"),
        "{}",
        e.message
    );
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
    check(
        "FROM scratch\nFOO bar\n",
        2,
        "unknown instruction FOO (no plugin provides it)",
    );
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
    let e = fail("FROM scratch\nADD --checksum=sha256:00 local.txt /z\n");
    assert!(
        e.message
            .starts_with("checksum requires HTTP(S) or Git sources"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().line, 2);

    let e = fail("ARG ONLY=1\n");
    assert_eq!(e.message, "dockerfile contains no stages to build");
    let e = fail("");
    assert!(e.message.contains("cannot be empty"));
}

#[test]
fn amplifying_expansions_hit_the_dockerfile_budget() {
    // Each LABEL value expands 40 bytes into 9^7 ≈ 4.8 MB: 100 of them (6 KB) took 2 GB and
    // 40 s before the Dockerfile had a total budget.
    let mut word = "${B}".to_owned();
    for _ in 0..6 {
        word = format!("${{B//?/{word}}}");
    }
    let mut df = "FROM scratch\nARG B=abcdefghi\n".to_owned();
    for i in 0..100 {
        df.push_str(&format!("LABEL a{i}={word}\n"));
    }
    let e = fail(&df);
    assert!(e.message.contains("64 MiB in total"), "{}", e.message);
    let line = e.location.map(|l| l.line).expect("located");
    // 64 MiB of 4.8 MB values: the 14th LABEL (line 16) passes the budget.
    assert!((10..=20).contains(&line), "line {line}");
}

#[test]
fn untrusted_dockerfiles_hit_limits_not_the_stack() {
    let nested = |depth: usize| format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth));
    // Used to abort the whole process with a stack overflow.
    let e = fail(&format!("FROM scratch\nLABEL a={}\n", nested(5_000)));
    assert_eq!(e.location.as_ref().map(|l| l.line), Some(2), "{e}");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert!(
        e.message
            .contains("variable expansions nested deeper than 64 levels"),
        "{}",
        e.message
    );
    // The line is shown, shortened to something a terminal can take.
    assert!(
        e.message.contains("(in `LABEL a=${A:-${A:-"),
        "{}",
        e.message
    );
    assert!(e.message.len() < 600, "{} bytes", e.message.len());
    // The same in FROM (expanded against the global args) and in WORKDIR.
    let e = fail(&format!("FROM {}\n", nested(5_000)));
    assert_eq!(e.location.map(|l| l.line), Some(1), "{}", e.message);
    let e = fail(&format!("FROM scratch\nWORKDIR /{}\n", nested(5_000)));
    assert_eq!(e.location.map(|l| l.line), Some(2), "{}", e.message);
    // At the limit it builds.
    let def = run(&format!("FROM scratch\nLABEL a={}\n", nested(64)));
    assert_eq!(
        def.config.config.labels.as_ref().and_then(|l| l.get("a")),
        Some(&"x".to_owned())
    );
    // A line over the line limit is refused with its line number.
    let e = fail(&format!("FROM scratch\nLABEL a={}\n", "b".repeat(2 << 20)));
    assert_eq!(e.location.map(|l| l.line), Some(2), "{}", e.message);
    assert!(e.message.contains("longer than 1 MiB"), "{}", e.message);
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
                expansion: None,
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
    // Not into a directory for sure: a copy of the document decides at solve time.
    let c = copy_action(raw, 0);
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/RAW", "/raw.txt"));
    let doc = def.vertex(&raw.inputs[1].vertex).unwrap();
    assert_eq!(
        file_op(doc).actions,
        [FileAction::Mkfile {
            path: "/RAW".into(),
            mode: 0o644,
            data: "$NAME\n".into(),
            owner: None
        }]
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

/// The JSON a `--call` answered, in the response's own field (protocol 3), not in an image label
/// (where protocol 2 put it).
fn call_result(req: &FrontendRequest, host: &FakeHost) -> serde_json::Value {
    let resp = build(req, host).unwrap();
    assert_eq!(resp.definition.outputs, [None], "a call builds nothing");
    assert!(resp.definition.vertices.is_empty());
    assert_eq!(
        resp.config.config.labels, None,
        "the answer no longer travels in the kiln.call.result label"
    );
    resp.call_result.expect("a call result")
}

fn with_call(source: &str, call: &str) -> FrontendRequest {
    let mut req = request(source);
    req.options.insert("call".into(), call.into());
    req
}

#[test]
fn call_targets_lists_stages_with_descriptions() {
    let source = "# build compiles the app\nFROM alpine AS build\nFROM --platform=$BUILDPLATFORM scratch AS tools\nFROM build\n";
    let host = FakeHost::default();
    let v = call_result(&with_call(source, "targets"), &host);
    // Nothing was resolved: targets come from the text alone.
    assert!(host.resolved.borrow().is_empty());
    assert_eq!(
        v["targets"],
        serde_json::json!([
            {"name": "build", "description": "compiles the app", "base": "alpine", "platform": null,
             "default": false, "location": {"file": "Dockerfile", "line": 2}},
            {"name": "tools", "description": "", "base": "scratch", "platform": "$BUILDPLATFORM",
             "default": false, "location": {"file": "Dockerfile", "line": 3}},
            {"name": null, "description": "", "base": "build", "platform": null,
             "default": true, "location": {"file": "Dockerfile", "line": 4}},
        ])
    );
    let e = build(&with_call(source, "targets2"), &host).unwrap_err();
    assert!(
        e.message.contains("unknown --call value \"targets2\"")
            && e.message.contains("did you mean targets?"),
        "{}",
        e.message
    );
}

#[test]
fn call_outline_reports_used_args_secrets_and_ssh() {
    let source = r#"# VERSION the version to build
ARG VERSION=1.0
ARG UNUSED=x
ARG BASE=scratch
FROM ${BASE} AS build
# GOFLAGS flags for go
ARG GOFLAGS=-v
RUN --mount=type=secret,id=token,required=true --mount=type=ssh echo $GOFLAGS
FROM scratch
ARG VERSION
COPY --from=build /a /a
RUN --mount=type=secret,target=/run/secrets/npmrc x
"#;
    let v = call_result(&with_call(source, "outline"), &FakeHost::default());
    let loc = |line: u32| serde_json::json!({"file": "Dockerfile", "line": line});
    assert_eq!(
        v["args"],
        serde_json::json!([
            {"name": "VERSION", "value": "1.0", "description": "the version to build", "location": loc(2)},
            {"name": "BASE", "value": "scratch", "description": "", "location": loc(4)},
            {"name": "GOFLAGS", "value": "-v", "description": "flags for go", "location": loc(7)},
        ])
    );
    assert_eq!(
        v["secrets"],
        serde_json::json!([
            {"name": "token", "required": true, "location": loc(8)},
            {"name": "npmrc", "required": false, "location": loc(12)},
        ])
    );
    assert_eq!(
        v["ssh"],
        serde_json::json!([{"name": "default", "required": false, "location": loc(8)}])
    );
    // A build arg shows its value.
    let mut req = with_call(source, "outline");
    req.build_args.insert("VERSION".into(), "2.0".into());
    let v = call_result(&req, &FakeHost::default());
    let version = v["args"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "VERSION")
        .unwrap();
    assert_eq!(version["value"], "2.0");
}

const LINTED: &str = "ARG SUFFIX
FROM scratch${SUFIX} as Build
FROM scratch AS build
FROM scratch AS context
MAINTAINER me
ENV A 1
WORKDIR rel
WORKDIR other
COPY $AA /x/
LABEL b=$A
CMD echo hi
cmd [\"a\"]
";

#[test]
fn lint_checks_report_rule_message_and_line() {
    let resp = run(LINTED);
    let got: Vec<(String, u32)> = resp
        .warnings
        .iter()
        .map(|w| (w.message.clone(), w.location.as_ref().unwrap().line))
        .collect();
    let want = [
        ("StageNameCasing: Stage name 'Build' should be lowercase (line 2)", 2),
        ("FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)", 2),
        ("UndefinedArgInFrom: FROM argument 'SUFIX' is not declared (did you mean SUFFIX?) (line 2)", 2),
        ("DuplicateStageName: Duplicate stage name \"build\", stage names should be unique (line 3)", 3),
        ("ReservedStageName: Stage name should not use the same name as reserved stage \"context\" (line 4)", 4),
        ("MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 5)", 5),
        ("LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 6)", 6),
        ("WorkdirRelativePath: Relative workdir \"rel\" can have unexpected results if the base image changes (line 7)", 7),
        ("UndefinedVar: Usage of undefined variable '$AA' (did you mean $A?) (line 9)", 9),
        ("JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 11)", 11),
        ("MultipleInstructionsDisallowed: Multiple CMD instructions should not be used in the same stage because only the last one will be used (line 11)", 11),
        ("ConsistentInstructionCasing: Command 'cmd' should match the case of the command majority (uppercase) (line 12)", 12),
    ];
    let want: Vec<(String, u32)> = want.iter().map(|(m, l)| (m.to_string(), *l)).collect();
    assert_eq!(got, want);
    assert!(resp
        .warnings
        .iter()
        .all(|w| w.location.as_ref().unwrap().file == "Dockerfile"));

    // ENV/LABEL legacy form and a SHELL silence their rules; a WORKDIR in the base stage makes a
    // relative one fine.
    let resp = run("FROM scratch AS a\nWORKDIR /app\nFROM a\nSHELL [\"/bin/sh\", \"-c\"]\nWORKDIR sub\nCMD echo\n");
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
}

#[test]
fn check_directive_and_build_arg_configure_the_checks() {
    let resp = run("# check=skip=StageNameCasing,FromAsCasing\nFROM scratch as Build\n");
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
    let resp = run("# check=skip=all\nFROM scratch as Build\nMAINTAINER x\n");
    assert!(resp.warnings.is_empty());

    let e = fail("# check=error=true\nFROM scratch as build\nMAINTAINER x\n");
    assert_eq!(e.kind, ErrorKind::InvalidInput);
    assert_eq!(e.location.as_ref().unwrap().line, 2);
    assert!(
        e.message.starts_with("lint violation found for rules: FromAsCasing, MaintainerDeprecated (2 findings, first: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"),
        "{}",
        e.message
    );
    // No finding, no error.
    run("# check=error=true\nFROM scratch AS build\n");

    // The build arg wins over the directive.
    let mut req = request("# check=error=true\nFROM scratch as build\n");
    req.build_args.insert(
        "BUILDKIT_DOCKERFILE_CHECK".into(),
        "skip=FromAsCasing".into(),
    );
    let resp = build(&req, &FakeHost::default()).unwrap();
    assert!(resp.warnings.is_empty());

    let e = fail("# check=skip\nFROM scratch\n");
    assert!(
        e.message
            .contains("failed to parse check options: invalid check option"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().line, 1);
}

#[test]
fn huge_names_get_no_suggestion_and_stay_cheap() {
    // An ARG and a FROM variable of 25 000 characters, one edit apart: the full distance
    // matrix took 4.9 GB and 10 s.
    let name = "A".repeat(25_000);
    let resp = run(&format!("ARG {name}\nFROM scratch${{{name}B}}\n"));
    let undefined: Vec<&str> = resp
        .warnings
        .iter()
        .map(|w| w.message.as_str())
        .filter(|m| m.starts_with("UndefinedArgInFrom"))
        .collect();
    assert_eq!(undefined.len(), 1, "{undefined:?}");
    assert!(
        !undefined[0].contains("did you mean"),
        "{}",
        &undefined[0][..80]
    );
    assert!(undefined[0].len() < 700, "{} bytes", undefined[0].len());
    // Short names still get their hint.
    let resp = run("ARG SUFFIX\nFROM scratch${SUFIX}\n");
    assert!(resp
        .warnings
        .iter()
        .any(|w| w.message.contains("(did you mean SUFFIX?)")));
}

#[test]
fn call_check_lints_every_stage_without_building() {
    let source = "FROM scratch AS a\nCMD echo hi\nFROM scratch\nCOPY x /x\n";
    // A build checks only the stages it builds...
    assert!(run(source).warnings.is_empty());
    // ...a check, every stage.
    let v = call_result(&with_call(source, "check"), &FakeHost::default());
    assert_eq!(
        v,
        serde_json::json!({
            "warnings": [{
                "ruleName": "JSONArgsRecommended",
                "description": "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
                "url": "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
                "detail": "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
                "location": {"file": "Dockerfile", "line": 2},
            }],
            "error": null,
        })
    );
    // Findings before a failure are kept; the failure is reported with its location.
    let v = call_result(
        &with_call("FROM scratch as x\nCOPY --chmod=999 a /b\n", "check"),
        &FakeHost::default(),
    );
    assert_eq!(v["warnings"][0]["ruleName"], "FromAsCasing");
    assert_eq!(v["error"]["location"]["line"], 2);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid chmod parameter"));
    // error=true makes findings the check's error, not a failed call.
    let v = call_result(
        &with_call("# check=error=true\nFROM scratch as x\n", "check"),
        &FakeHost::default(),
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("lint violation found for rules: FromAsCasing"));
}

fn image_with(on_build: &[&str]) -> ImageConfig {
    let mut img = ImageConfig::scratch(&platform());
    img.config.on_build = Some(on_build.iter().map(|s| s.to_string()).collect());
    img.rootfs.diff_ids = vec![Digest::of(b"base layer")];
    img.history = vec![History {
        created_by: Some("base".into()),
        ..History::default()
    }];
    img
}

#[test]
fn onbuild_triggers_of_the_base_image_run_first() {
    let mut host = FakeHost::default();
    host.images.insert(
        "onbuild:1".into(),
        image_with(&["RUN make", "COPY --from=assets /a /a", "ENV X=1"]),
    );
    let source = "FROM scratch AS assets\nCOPY a /a\nFROM onbuild:1\nRUN echo after\n";
    let resp = build(&request(source), &host).unwrap();
    let c = &resp.config.config;
    // Triggers are not inherited further.
    assert_eq!(c.on_build, None);
    assert!(c.env.as_ref().unwrap().contains(&"X=1".to_owned()));
    let created: Vec<&str> = resp
        .config
        .history
        .iter()
        .map(|h| h.created_by.as_deref().unwrap())
        .collect();
    assert_eq!(
        created,
        [
            "base",
            "RUN /bin/sh -c make # buildkit",
            "COPY /a /a # buildkit",
            "ENV X=1",
            "RUN /bin/sh -c echo after # buildkit"
        ]
    );
    let def = &resp.definition;
    let after = output(def);
    assert_eq!(
        after.meta.description,
        "[assets 4/5] RUN echo after".replace("assets ", "stage-1 ")
    );
    let copy = input(def, after, 0);
    assert_eq!(
        copy.meta.description,
        "[stage-1 3/5] ONBUILD COPY --from=assets /a /a"
    );
    // The trigger's COPY --from made the `assets` stage needed.
    assert_eq!(
        input(def, &copy, 1).meta.description,
        "[assets 1/1] COPY a /a"
    );
    let make = input(def, &copy, 0);
    assert_eq!(make.meta.description, "[stage-1 2/5] ONBUILD RUN make");
    // Vertices of a trigger point at the FROM line.
    assert_eq!(make.meta.source.as_ref().map(|s| s.line), Some(3));

    // ONBUILD in a base stage fires in the stages built on it.
    let resp = run("FROM scratch AS base\nONBUILD ENV FROM_BASE=1\nFROM base\n");
    assert!(resp
        .config
        .config
        .env
        .unwrap()
        .contains(&"FROM_BASE=1".to_owned()));
    assert_eq!(resp.config.config.on_build, None);
}

#[test]
fn onbuild_trigger_errors_point_at_the_from_line() {
    let mut host = FakeHost::default();
    host.images
        .insert("bad-chmod".into(), image_with(&["COPY --chmod=999 a /b"]));
    host.images
        .insert("bad-kw".into(), image_with(&["BOGUS x"]));
    host.images
        .insert("bad-from".into(), image_with(&["FROM x"]));
    let check = |image: &str, needle: &str| {
        let e = build(&request(&format!("FROM scratch\n\nFROM {image}\n")), &host).unwrap_err();
        let loc = e.location.clone().expect("located");
        assert_eq!((loc.file.as_str(), loc.line), ("Dockerfile", 3), "{e}");
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
        assert!(e.message.contains("ONBUILD trigger"), "{}", e.message);
        assert!(
            e.message.contains(&format!("(in `FROM {image}`)")),
            "{}",
            e.message
        );
    };
    check(
        "bad-chmod",
        "\"COPY --chmod=999 a /b\" of the base failed: invalid chmod parameter",
    );
    check(
        "bad-kw",
        "unknown instruction BOGUS (no plugin provides it)",
    );
    check("bad-from", "FROM isn't allowed as an ONBUILD trigger");
}

#[test]
fn from_platform_selects_the_stage_platform() {
    let host_platform = Platform::host();
    run("FROM --platform=$BUILDPLATFORM scratch\n");
    run("FROM --platform=$TARGETPLATFORM scratch\n");
    run(&format!("FROM --platform={host_platform} scratch\n"));
    // Any platform is accepted, as in BuildKit: its image is pulled for that platform, and a
    // RUN for a foreign platform needs emulation on the host at run time.
    let other = if host_platform.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let resp = run(&format!(
        "FROM --platform={other} scratch AS x\nCOPY a /a\n"
    ));
    assert_eq!(resp.config.architecture, other.rsplit('/').next().unwrap());
    // containerd's names: a lone OS or architecture is a platform (`linux`, `arm64`), as in
    // BuildKit; a fourth component is not.
    run("FROM --platform=linux scratch\n");
    run("FROM --platform=aarch64 scratch\n");
    let e = fail("FROM --platform=linux/arm/v7/x scratch\n");
    assert_eq!(e.location.unwrap().line, 1);
}

#[test]
fn predefined_and_proxy_args() {
    let source = "FROM scratch\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDOS BUILDARCH\nRUN echo\n";
    let mut req = request(source);
    req.build_args
        .insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    req.build_args.insert("no_proxy".into(), "localhost".into());
    let resp = build(&req, &FakeHost::default()).unwrap();
    let Op::Exec(exec) = &output(&resp.definition).op else {
        panic!()
    };
    let host = Platform::host();
    for kv in [
        "TARGETPLATFORM=linux/amd64".to_owned(),
        "TARGETOS=linux".to_owned(),
        "TARGETARCH=amd64".to_owned(),
        "TARGETVARIANT=".to_owned(),
        format!("BUILDPLATFORM={host}"),
        format!("BUILDOS={}", host.os),
        format!("BUILDARCH={}", host.architecture),
    ] {
        assert!(exec.env.contains(&kv), "{kv} not in {:?}", exec.env);
    }
    // Proxies need no ARG, and travel apart from the environment (out of the cache key)...
    assert_eq!(
        exec.proxy_env,
        ["HTTP_PROXY=http://proxy:3128", "no_proxy=localhost"]
    );
    assert!(!exec.env.iter().any(|e| e.contains("proxy")));
    // ...and stay out of the history and the image.
    let history = resp
        .config
        .history
        .last()
        .unwrap()
        .created_by
        .clone()
        .unwrap();
    assert!(!history.contains("proxy"), "{history}");
    assert!(!resp
        .config
        .config
        .env
        .unwrap()
        .iter()
        .any(|e| e.contains("proxy")));
}

#[test]
fn label_options_and_source_date_epoch() {
    let source = "FROM scratch\nLABEL a=1 title=file\nCOPY x /x\n";
    let mut req = request(source);
    req.options.insert("label:title".into(), "cli".into());
    req.options
        .insert("label:org.example.extra".into(), "yes".into());
    req.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    let resp = build(&req, &FakeHost::default()).unwrap();
    let labels = resp.config.config.labels.as_ref().unwrap();
    assert_eq!(labels["a"], "1");
    assert_eq!(labels["title"], "cli");
    assert_eq!(labels["org.example.extra"], "yes");
    assert_eq!(resp.config.created.as_deref(), Some("2023-11-14T22:13:20Z"));
    assert!(resp
        .config
        .history
        .iter()
        .all(|h| h.created.as_deref() == Some("2023-11-14T22:13:20Z")));

    // A global ARG with a value works too.
    let resp = run("ARG SOURCE_DATE_EPOCH=0\nFROM scratch\nENV A=1\n");
    assert_eq!(resp.config.created.as_deref(), Some("1970-01-01T00:00:00Z"));
    // Without it, nothing is dated (reproducible by default).
    let resp = run(source);
    assert_eq!(resp.config.created, None);
    assert!(resp.config.history.iter().all(|h| h.created.is_none()));

    let mut req = request(source);
    req.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "yesterday".into());
    let e = build(&req, &FakeHost::default()).unwrap_err();
    assert_eq!(e.message, "invalid SOURCE_DATE_EPOCH: yesterday");
}

#[test]
fn unknown_flags_suggest_the_nearest_one() {
    let check = |source: &str, line: u32, needle: &str| {
        let e = fail(source);
        assert_eq!(e.location.as_ref().map(|l| l.line), Some(line), "{e}");
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
    };
    check(
        "FROM scratch\nCOPY --form=x a b\n",
        2,
        "unknown flag: --form (did you mean --from?)",
    );
    check(
        "FROM --platfrom=x scratch\n",
        1,
        "unknown flag: --platfrom (did you mean --platform?)",
    );
    check(
        "FROM scratch\nRUN --mout=type=cache,target=/x a\n",
        2,
        "unknown flag: --mout (did you mean --mount?)",
    );
    check(
        "FROM scratch\nRUN --mount=type=cache,targt=/x a\n",
        2,
        "(did you mean target?)",
    );
    check(
        "FROM scratch\nADD --chmdo=1 a b\n",
        2,
        "unknown flag: --chmdo (did you mean --chmod?)",
    );
    check(
        "FROM scratch\nHEALTHCHECK --retires=1 CMD x\n",
        2,
        "did you mean --retries?",
    );
    check(
        "FROM scratch\nWORKDIR --x /a\n",
        2,
        "unknown flag: --x (WORKDIR takes no flags)",
    );
}

/// A seeded random walk over Dockerfile fragments (instructions, flags, heredocs, expansions
/// nested past the depth limit, long lines, broken quoting): whatever the input, `build`
/// answers with a graph the host's validation accepts, or an error whose location is a line of
/// the file, never a panic. Deterministic (a fixed LCG seed), so a failure reproduces.
#[test]
fn random_dockerfiles_never_panic() {
    const PIECES: &[&str] = &[
        "FROM scratch",
        "FROM busybox AS b",
        "FROM b",
        "FROM --platform=$BUILDPLATFORM scratch",
        "FROM ${BASE:-scratch}",
        "ARG BASE",
        "ARG V=1",
        "ARG",
        "ENV A=$V B=\"x y\"",
        "ENV A",
        "COPY a /a",
        "COPY --from=b /x /y",
        "COPY --from=9 /x /y",
        "COPY --chown=u:g --chmod=u+x a /",
        "COPY --parents ./a/./b /c/",
        "COPY --exclude=*.md . /src/",
        "COPY <<EOF /f\nhi\nEOF",
        "ADD a.tar.gz /x/",
        "ADD --checksum=sha256:00 https://example.invalid/f /f",
        "ADD https://h/r.git#main:sub /g",
        "RUN echo $V",
        "RUN [\"sh\", \"-c\", \"x\"]",
        "RUN [\"bad",
        "RUN --mount=type=cache,target=/c ls",
        "RUN --mount=type=secret,id=s,env=S true",
        "RUN --mount=type=ssh true",
        "RUN --network=none true",
        "RUN <<EOF\nset -e\nEOF",
        "RUN <<-'EOT' sh\n\tx\n\tEOT",
        "RUN <<A <<B\na\nA\nb\nB",
        "WORKDIR ${V}/w",
        "WORKDIR",
        "USER 1:1",
        "EXPOSE 80/tcp 53/udp",
        "EXPOSE x",
        "VOLUME [\"/d\"]",
        "LABEL a=b \"c d\"=e",
        "CMD x",
        "ENTRYPOINT [\"e\"]",
        "SHELL [\"sh\", \"-c\"]",
        "STOPSIGNAL SIGKILL",
        "HEALTHCHECK --interval=1s CMD true",
        "HEALTHCHECK NONE",
        "ONBUILD RUN x",
        "ONBUILD ONBUILD RUN x",
        "MAINTAINER me",
        "GREET x",
        "LABEL deep=${A:-${A:-${A:-${A:-${A:-${A:-${A:-${A:-x}}}}}}}}",
        "ENV E=${V:+${V:+${V:+\"${V}\"}}}",
        "# check=error=true",
        "# syntax=x",
        "${",
        "\\",
        "\"",
        "'",
        "<<",
        "[",
        "--",
        "=",
        "$",
        "\u{2665}",
        "\t",
        "",
    ];
    let host = FakeHost {
        files: BTreeMap::from([("a".to_owned(), "a".to_owned())]),
        beside: BTreeMap::new(),
        images: BTreeMap::from([("busybox".to_owned(), ImageConfig::scratch(&platform()))]),
        lower: None,
        lowered: RefCell::new(Vec::new()),
        resolved: RefCell::new(Vec::new()),
    };
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..10_000 {
        let lines = 1 + next(12);
        let mut text = String::new();
        for _ in 0..lines {
            match next(40) {
                // Expansions nested around and past the depth limit.
                0 => {
                    let depth = [63, 64, 65, 500][next(4)];
                    text.push_str(&format!(
                        "LABEL n={}x{}",
                        "${N:-".repeat(depth),
                        "}".repeat(depth)
                    ));
                }
                // A long logical line of continuations.
                1 => {
                    text.push_str("RUN echo");
                    for _ in 0..next(300) {
                        text.push_str(" \\\n  $V ${V:-word}");
                    }
                }
                _ => text.push_str(PIECES[next(PIECES.len())]),
            }
            // Glue pieces into one line now and then, to reach odd argument shapes.
            text.push(if next(5) == 0 { ' ' } else { '\n' });
        }
        let mut req = request(&text);
        if next(3) == 0 {
            req.options.insert(
                "call".into(),
                ["targets", "outline", "check"][next(3)].into(),
            );
        }
        let call = req.options.contains_key("call");
        match build(&req, &host) {
            Ok(resp) => {
                ok += 1;
                if !call {
                    resp.definition
                        .validate()
                        .unwrap_or_else(|e| panic!("invalid graph for {text:?}: {e}"));
                }
            }
            Err(e) => {
                err += 1;
                assert!(!e.message.is_empty());
                assert!(e.message.len() < 2_000, "{} bytes", e.message.len());
                if let Some(loc) = &e.location {
                    let lines = text.lines().count() as u32;
                    assert!(
                        loc.file == "Dockerfile" && (1..=lines).contains(&loc.line),
                        "{loc:?} outside {lines} lines: {}",
                        e.message
                    );
                }
            }
        }
    }
    println!("random Dockerfiles: {ok} built, {err} refused, 0 panics");
    assert!(
        ok > 0 && err > 0,
        "the generator should reach both outcomes"
    );
}

#[test]
fn stage_and_instruction_counts_are_bounded() {
    // Each stage copies its base's config, history included: 1 000s of chained stages cost
    // memory in the square of their number (2 000 took 300 MB). Now a budget stops them.
    let mut chain = String::from("FROM scratch AS s0\n");
    for i in 1..2_000 {
        chain.push_str(&format!("FROM s{} AS s{i}\nLABEL l{i}=x\n", i - 1));
    }
    let e = fail(&chain);
    assert!(
        e.message
            .starts_with("stages copy more than 64 MiB of image config"),
        "{}",
        e.message
    );
    let line = e.location.expect("located").line as usize;
    assert!(
        chain.lines().nth(line - 1).unwrap().starts_with("FROM s"),
        "line {line}"
    );
    // Many independent stages are fine (and stage names are looked up by hash, not by scan).
    let mut fan = String::from("FROM scratch AS s0\nCOPY a /a\n");
    for i in 1..2_000 {
        fan.push_str(&format!(
            "FROM scratch AS s{i}\nCOPY --from=s{} /a /a\n",
            i / 2
        ));
    }
    let def = run(&fan).definition;
    let copies = def
        .vertices
        .iter()
        .filter(|v| matches!(v.op, Op::File(_)))
        .count();
    assert_eq!(
        copies, 12,
        "only the target's chain of --from stages is built"
    );
    // More instructions than the parser takes: refused at the first one over.
    let e = fail(&format!("FROM scratch\n{}", "COPY a /a\n".repeat(5_000)));
    assert_eq!(e.location.map(|l| l.line), Some(4097), "{}", e.message);
    assert!(
        e.message.contains("more than 4096 instructions"),
        "{}",
        e.message
    );
}

#[test]
fn too_many_onbuild_triggers_in_a_base_are_refused() {
    let mut host = FakeHost::default();
    let triggers = vec!["ENV A=1".to_owned(); crate::convert::MAX_ONBUILD_TRIGGERS + 1];
    let mut config = ImageConfig::scratch(&platform());
    config.config.on_build = Some(triggers);
    host.images.insert("base:1".to_owned(), config);
    let e = build(&request("FROM scratch\nFROM base:1\n"), &host).unwrap_err();
    assert_eq!(e.location.map(|l| l.line), Some(2), "{}", e.message);
    assert!(
        e.message
            .contains("the base has 257 ONBUILD triggers, more than the limit of 256"),
        "{}",
        e.message
    );
}

#[test]
fn many_lint_findings_stay_linear() {
    // 100 000 undefined variables on one line: the duplicate check scanned every earlier
    // finding, about 75 s of work. The bound is generous; the fix takes well under a second.
    let vars: Vec<String> = (0..100_000).map(|i| format!("$v{i}")).collect();
    let source = format!("FROM scratch\nLABEL x=\"{}\"\n", vars.join(" "));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let warnings = build(&request(&source), &FakeHost::default()).map(|r| r.warnings);
        tx.send(warnings).ok();
    });
    let warnings = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the build ends within 10 s")
        .unwrap();
    assert_eq!(warnings.len(), 100_000);
    assert!(warnings[0]
        .message
        .contains("Usage of undefined variable '$v"));
    assert!(warnings
        .iter()
        .all(|w| w.location.as_ref().unwrap().line == 2));
}

#[test]
fn variables_per_stage_are_bounded() {
    let pairs = |prefix: &str, n: usize| {
        (0..n)
            .map(|i| format!("{prefix}{i}=1"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let check = |source: String, host: &FakeHost, line: u32| {
        let e = build(&request(&source), host).unwrap_err();
        assert_eq!(e.location.map(|l| l.line), Some(line), "{}", e.message);
        assert!(
            e.message
                .starts_with("more than 1024 variables (ENV and ARG) in one stage"),
            "{}",
            e.message
        );
    };
    let host = FakeHost::default();
    // ENV and ARG in a stage count together; so do global ARGs.
    check(
        format!("FROM scratch\nENV {}\n", pairs("e", 2_000)),
        &host,
        2,
    );
    check(
        format!(
            "FROM scratch\nENV {}\nARG {}\n",
            pairs("e", 600),
            pairs("a", 600)
        ),
        &host,
        3,
    );
    check(
        format!("ARG {}\nFROM scratch\n", pairs("g", 2_000)),
        &host,
        1,
    );
    // A base image's env too.
    let mut host = FakeHost::default();
    let mut config = ImageConfig::scratch(&platform());
    config.config.env = Some((0..2_000).map(|i| format!("V{i}=x")).collect());
    host.images.insert("wide:1".to_owned(), config);
    check("FROM scratch\n\nFROM wide:1\n".to_owned(), &host, 3);
    // Up to the limit, fine.
    let resp = run(&format!("FROM scratch\nENV {}\n", pairs("e", 1_000)));
    assert_eq!(resp.config.config.env.unwrap().len(), 1_001);
}
