//! In-process tests of the lowering, against a fake host serving context files and image
//! configs from memory; and the parity with the Dockerfile frontend (equal steps, equal
//! digests).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use kiln_graph::{
    CacheSharing, Chmod, Chown, Definition, FileAction, MountKind, NetworkMode, Op, SourceOp,
    UserRef, Vertex,
};
use kiln_plugin_sdk::proto::{
    ErrorKind, FrontendRequest, FrontendResponse, InstructionRequest, InstructionResponse,
    PluginError, ResolveImageConfigResponse,
};
use kiln_types::image::{History, ImageConfig, RootFs};
use kiln_types::{Digest, Platform};

use crate::{build, SpecHost};

#[derive(Default)]
struct FakeHost {
    files: BTreeMap<String, String>,
}

fn base_config() -> ImageConfig {
    let mut config = ImageConfig::scratch(&platform());
    config.rootfs = RootFs {
        kind: "layers".into(),
        diff_ids: vec![Digest::of(b"layer")],
    };
    config.history = vec![History {
        created_by: Some("base".into()),
        ..History::default()
    }];
    config.config.env = Some(vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()]);
    config.config.cmd = Some(vec!["sh".into()]);
    config
}

fn resolve(reference: &str) -> Result<ResolveImageConfigResponse, PluginError> {
    if reference.contains("missing") {
        return Err(PluginError::not_found("not found in the registry"));
    }
    Ok(ResolveImageConfigResponse {
        digest: Digest::of(reference.as_bytes()),
        config: base_config(),
    })
}

impl SpecHost for FakeHost {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        if context != "context" {
            return Ok(None);
        }
        Ok(self.files.get(path).map(|s| s.as_bytes().to_vec()))
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        resolve(reference)
    }

    fn warn(&self, _message: &str) {}
}

impl kiln_frontend_dockerfile::FrontendHost for FakeHost {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        SpecHost::read_context_file(self, context, path)
    }

    fn read_dir(&self, _context: &str, _path: &str) -> Result<Vec<String>, PluginError> {
        Ok(self.files.keys().cloned().collect())
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        resolve(reference)
    }

    fn lower_instruction(
        &self,
        _req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        Ok(None)
    }

    fn warn(&self, _message: &str) {}
}

fn platform() -> Platform {
    "linux/amd64".parse().unwrap()
}

fn request(source: &str) -> FrontendRequest {
    FrontendRequest {
        source: source.to_owned(),
        filename: "build.toml".to_owned(),
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
    build(&request(source), &FakeHost::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn fail(req: &FrontendRequest) -> PluginError {
    match build(req, &FakeHost::default()) {
        Ok(_) => panic!("built:\n{}", req.source),
        Err(e) => e,
    }
}

/// The vertex `edge` of `def` points at.
fn output(def: &Definition) -> &Vertex {
    let edge = def.outputs[0].unwrap();
    def.vertices
        .iter()
        .find(|v| v.digest == edge.vertex)
        .unwrap()
}

fn input<'d>(def: &'d Definition, v: &Vertex, i: usize) -> &'d Vertex {
    def.vertices
        .iter()
        .find(|x| x.digest == v.inputs[i].vertex)
        .unwrap()
}

const SMALL: &str = r#"# syntax=kiln/spec
[args]
VERSION = "1.0"

[stage.build]
from = "busybox"
args = ["VERSION"]
workdir = "/src"
env = { CGO_ENABLED = 0, OUT = "/src/out-${VERSION}" }
steps = [
  { copy = ".", to = "/src", exclude = ["*.md"], chown = "1000:1000" },
  { name = "compile", run = "make $OUT", cache = ["/root/.cache"], secrets = ["token"], mounts = [
      { type = "tmpfs", target = "/tmp", size = "1m" },
      { type = "cache", target = "pkg", id = "gomod", sharing = "locked" },
  ] },
]

[stage.final]
from = "scratch"
steps = [ { copy = "/src/app", from = "build", to = "/app", chmod = 0o755 } ]
[stage.final.image]
entrypoint = ["/app"]
cmd = "serve"
env = { MODE = "prod-${VERSION}" }
user = "1000"
workdir = "/data"
labels = { "org.opencontainers.image.version" = "${VERSION}" }
expose = ["8080/tcp", 53]
volumes = ["/data"]
stopsignal = "SIGTERM"
healthcheck = { cmd = ["/app", "health"], interval = "30s", retries = 3 }
"#;

#[test]
fn a_small_file_lowers_to_the_ops_mounts_and_config() {
    let resp = run(SMALL);
    let def = &resp.definition;
    def.validate().unwrap();

    // The final stage: a copy from the build stage onto scratch.
    let copy = output(def);
    let Op::File(f) = &copy.op else {
        panic!("{:?}", copy.op)
    };
    assert_eq!(f.base, None, "onto scratch");
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!("{:?}", f.actions)
    };
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/src/app", "/app"));
    assert_eq!(c.mode, Some(Chmod::Octal(0o755)));
    assert_eq!(
        copy.meta.description,
        "[final 1/1] COPY --from=build --chmod=755 /src/app /app"
    );
    assert_eq!(copy.meta.source.as_ref().map(|s| s.line), Some(20));

    // The build stage's run step.
    let run = input(def, copy, 0);
    let Op::Exec(e) = &run.op else {
        panic!("{:?}", run.op)
    };
    assert_eq!(
        e.args,
        ["/bin/sh", "-c", "make $OUT"],
        "the shell expands it"
    );
    assert_eq!(e.cwd, "/src");
    assert!(e.env.contains(&"CGO_ENABLED=0".to_owned()), "{:?}", e.env);
    assert!(
        e.env.contains(&"OUT=/src/out-1.0".to_owned()),
        "{:?}",
        e.env
    );
    assert!(
        e.env.contains(&"VERSION=1.0".to_owned()),
        "a declared arg: {:?}",
        e.env
    );
    assert_eq!(e.network, NetworkMode::Default);
    let kinds: Vec<(&str, &MountKind)> = e
        .mounts
        .iter()
        .map(|m| (m.dest.as_str(), &m.kind))
        .collect();
    assert_eq!(kinds[0], ("/", &MountKind::Bind));
    assert!(matches!(
        kinds[1],
        ("/root/.cache", MountKind::Cache { id, sharing: CacheSharing::Shared, mode: 0o755, .. })
            if id == "/root/.cache"
    ));
    assert!(matches!(
        kinds[2],
        ("/run/secrets/token", MountKind::Secret { id, required: false, mode: 0o400, .. })
            if id == "token"
    ));
    assert_eq!(
        kinds[3],
        (
            "/tmp",
            &MountKind::Tmpfs {
                size: Some(1 << 20)
            }
        )
    );
    assert!(matches!(
        kinds[4],
        ("/src/pkg", MountKind::Cache { id, sharing: CacheSharing::Locked, .. }) if id == "gomod"
    ));
    assert!(e.mounts[2].readonly && !e.mounts[1].readonly);
    assert_eq!(run.meta.description, "[build 4/4] compile: RUN make $OUT");
    assert_eq!(run.meta.source.as_ref().map(|s| s.line), Some(12));

    // Below it: the copy of the context (ignore nothing), the workdir, the image.
    let ctx_copy = input(def, run, 0);
    let Op::File(f) = &ctx_copy.op else {
        panic!("{:?}", ctx_copy.op)
    };
    let FileAction::Copy(c) = &f.actions[0] else {
        panic!()
    };
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/", "/src"));
    assert_eq!(c.exclude_patterns, ["*.md"]);
    assert_eq!(
        c.owner,
        Some(Chown {
            user: UserRef::Id(1000),
            group: Some(UserRef::Id(1000))
        })
    );
    let local = def
        .vertices
        .iter()
        .find(|v| matches!(v.op, Op::Source(SourceOp::Local(_))))
        .unwrap();
    assert_eq!(local.meta.description, "[internal] load build context");
    let image = def
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Image(i)) => Some(i),
            _ => None,
        })
        .unwrap();
    assert!(
        image
            .reference
            .starts_with("docker.io/library/busybox:latest@sha256:"),
        "{}",
        image.reference
    );

    // The image config: the final stage's, with [stage.final.image].
    let cfg = &resp.config.config;
    assert_eq!(cfg.entrypoint.as_deref(), Some(&["/app".to_owned()][..]));
    assert_eq!(
        cfg.cmd.as_deref(),
        Some(&["/bin/sh".to_owned(), "-c".into(), "serve".into()][..])
    );
    assert_eq!(cfg.env_get("MODE"), Some("prod-1.0"));
    assert_eq!(cfg.user.as_deref(), Some("1000"));
    assert_eq!(cfg.working_dir.as_deref(), Some("/data"));
    assert_eq!(
        cfg.labels.as_ref().unwrap()["org.opencontainers.image.version"],
        "1.0"
    );
    let ports: Vec<&String> = cfg.exposed_ports.as_ref().unwrap().keys().collect();
    assert_eq!(ports, ["53/tcp", "8080/tcp"]);
    assert!(cfg.volumes.as_ref().unwrap().contains_key("/data"));
    assert_eq!(cfg.stop_signal.as_deref(), Some("SIGTERM"));
    let hc = cfg.healthcheck.as_ref().unwrap();
    assert_eq!(hc.test, ["CMD", "/app", "health"]);
    assert_eq!((hc.interval, hc.retries), (30_000_000_000, 3));
    // The history names each step.
    let history: Vec<&str> = resp
        .config
        .history
        .iter()
        .filter_map(|h| h.created_by.as_deref())
        .collect();
    assert_eq!(
        history,
        ["COPY --from=build --chmod=755 /src/app /app # final/step-1"]
    );
}

#[test]
fn history_names_the_steps_and_keeps_the_base() {
    let resp = run(
        "[stage.a]\nfrom = \"busybox\"\nworkdir = \"/w\"\nsteps = [\n  { run = \"true\", name = \"check\" },\n  { env = { A = \"1\" } },\n]\n",
    );
    let h: Vec<(&str, bool)> = resp
        .config
        .history
        .iter()
        .map(|h| (h.created_by.as_deref().unwrap_or(""), h.empty_layer))
        .collect();
    assert_eq!(
        h,
        [
            ("base", false),
            ("WORKDIR /w # a/stage", false),
            ("RUN /bin/sh -c true # a/check", false),
            ("ENV A=1 # a/step-2", true),
        ]
    );
    assert_eq!(
        resp.config.history[1].comment.as_deref(),
        Some("kiln.spec.v0")
    );
    // The base's CMD stays: no ENTRYPOINT was set.
    assert_eq!(
        resp.config.config.cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
}

/// The point of sharing constructs: the same steps written in both syntaxes make the same
/// vertices, so one frontend's cache serves the other's build.
#[test]
fn equal_steps_have_the_digests_of_the_dockerfile_frontend() {
    let spec = r#"
[stage.build]
from = "busybox"
args = ["V"]
workdir = "/src"
env = { GOFLAGS = "-mod=mod" }
steps = [
  { copy = ".", to = "/src" },
  { run = "make", cache = ["/root/.cache"], secrets = ["token"] },
  { copy = "a.txt", to = "/etc/a.txt", chmod = "0644" },
  { run = ["/bin/echo", "hi"], network = "none" },
]
[args]
V = "1"
[stage.final]
from = "scratch"
steps = [ { copy = "/src/out", from = "build", to = "/out" } ]
"#;
    let dockerfile = r#"FROM busybox AS build
ARG V=1
ENV GOFLAGS=-mod=mod
WORKDIR /src
COPY . /src
RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=token make
COPY --chmod=0644 a.txt /etc/a.txt
RUN --network=none ["/bin/echo", "hi"]
FROM scratch AS final
COPY --from=build /src/out /out
"#;
    let host = FakeHost {
        files: BTreeMap::from([(".dockerignore".to_owned(), "*.md\n".to_owned())]),
    };
    let ours = build(&request(spec), &host).unwrap();
    let mut dreq = request(dockerfile);
    dreq.filename = "Dockerfile".into();
    let theirs = kiln_frontend_dockerfile::build(&dreq, &host).unwrap();
    let digests = |d: &Definition| {
        let mut v: Vec<(String, Digest)> = d
            .vertices
            .iter()
            .map(|v| (v.op.kind().to_owned(), v.digest))
            .collect();
        v.sort_by_key(|(_, d)| *d);
        v
    };
    assert_eq!(digests(&ours.definition), digests(&theirs.definition));
    assert_eq!(ours.definition.outputs, theirs.definition.outputs);
    // The .dockerignore was applied by both.
    assert!(ours.definition.vertices.iter().any(|v| matches!(
        &v.op,
        Op::Source(SourceOp::Local(l)) if l.exclude_patterns == ["*.md"]
    )));
}

#[test]
fn target_platform_args_and_build_args() {
    let src = r#"
[args]
GREETING = "hello"
DERIVED = "${GREETING}-${TARGETARCH}"
[stage.a]
from = "busybox"
platform = "$BUILDPLATFORM"
args = ["DERIVED", "TARGETOS"]
steps = [ { run = "echo $DERIVED" } ]
[stage.b]
from = "a"
steps = [ { run = "echo b" } ]
"#;
    let mut req = request(src);
    req.build_args.insert("GREETING".into(), "hi".into());
    req.build_args.insert("NOT_DECLARED".into(), "x".into());
    req.target = Some("a".into());
    let resp = build(&req, &FakeHost::default()).unwrap();
    let Op::Exec(e) = &output(&resp.definition).op else {
        panic!()
    };
    assert!(
        e.env.contains(&"DERIVED=hi-amd64".to_owned()),
        "{:?}",
        e.env
    );
    assert!(e.env.contains(&"TARGETOS=linux".to_owned()), "{:?}", e.env);
    assert_eq!(resp.warnings.len(), 1, "{:?}", resp.warnings);
    assert!(resp.warnings[0].message.contains("NOT_DECLARED"));

    // A wrong --target names the stages.
    req.target = Some("bb".into());
    let e = fail(&req);
    assert!(
        e.message
            .contains("target stage \"bb\" could not be found (did you mean b?)"),
        "{e}"
    );
}

#[test]
fn stage_errors_name_their_line() {
    let cases: &[(&str, u32, &str)] = &[
        (
            "[stage.a]\nfrom = \"b\"\n[stage.b]\nfrom = \"c\"\n[stage.c]\nfrom = \"a\"\n",
            6,
            "stage cycle: a → b → c → a",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nsteps = [ { copy = \"/x\", from = \"a\", to = \"/y\" } ]\n",
            3,
            "stage cycle: a → a",
        ),
        (
            "[stage.build]\nfrom = \"busybox\"\n[stage.final]\nfrom = \"scratch\"\nsteps = [\n  { copy = \"/x\", from = \"biuld\", to = \"/y\" },\n]\n",
            6,
            "unknown stage \"biuld\" (did you mean build?)",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nargs = [\"VERSOIN\"]\n[args]\nVERSION = \"1\"\n",
            3,
            "unknown arg \"VERSOIN\" in `args`: declare it in [args] first (did you mean VERSION?)",
        ),
        (
            "[stage.a]\nfrom = \"missing:1\"\n",
            2,
            "missing:1: not found in the registry",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nsteps = [\n  { run = \"x\", mounts = [{ type = \"cache\", target = \"/\" }] },\n]\n",
            4,
            "a mount cannot cover the root filesystem",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\n[stage.a.image]\nexpose = [\"80/foo\"]\n",
            4,
            "invalid port \"80/foo\"",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nenv = { A = \"${UNSET:?must be set}\" }\n",
            3,
            "must be set",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nsteps = [{ copy = \"https://x.invalid/f\", to = \"/f\" }]\n",
            3,
            "copy cannot fetch",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nsteps = [\n  { run = \"true\" },\n  { copy = \"/x\", to = \"/x\", chmod = \"9\" },\n]\n",
            5,
            "invalid chmod \"9\"",
        ),
        (
            "[stage.a]\nfrom = \"busybox\"\nuser = \":1\"\nsteps = [{ workdir = \"/w\" }]\n",
            4,
            "invalid user \":1\"",
        ),
    ];
    for (src, line, needle) in cases {
        let e = fail(&request(src));
        let loc = e
            .location
            .as_ref()
            .unwrap_or_else(|| panic!("no location: {e}"));
        assert_eq!((loc.file.as_str(), loc.line), ("build.toml", *line), "{e}");
        assert!(
            e.message.contains(needle),
            "{:?} lacks {needle:?}",
            e.message
        );
    }
    // Unreachable stages are still checked: a typo anywhere fails the build.
    let e = fail(&request(
        "[stage.a]\nfrom = \"busybox\"\n[stage.b]\nfrom = \"busybox\"\nstesp = []\n",
    ));
    assert_eq!(e.location.map(|l| l.line), Some(5));
    assert_eq!(e.kind, ErrorKind::InvalidInput);
}

#[test]
fn stages_the_target_does_not_need_are_not_resolved() {
    let resp = run("[stage.unused]\nfrom = \"missing:1\"\n[stage.a]\nfrom = \"busybox\"\n");
    assert_eq!(resp.definition.vertices.len(), 1);
}

#[test]
fn named_contexts_and_links() {
    let src = r#"
[stage.a]
from = "bb"
steps = [
  { copy = "/f", from = "files", to = "/f", link = true },
  { run = "ls", mounts = [{ type = "bind", from = "files", target = "/mnt", source = "sub" }] },
]
"#;
    let mut req = request(src);
    req.options.insert(
        "context:bb".into(),
        "oci-layout:///layouts/busybox:latest".into(),
    );
    req.options
        .insert("context:files".into(), "local:files".into());
    req.options.insert("label:extra".into(), "yes".into());
    req.no_cache_filter = vec!["a".into()];
    let resp = build(&req, &FakeHost::default()).unwrap();
    let def = &resp.definition;
    let run = output(def);
    assert!(run.meta.ignore_cache);
    let Op::Exec(e) = &run.op else { panic!() };
    assert_eq!(e.mounts[1].selector, "/sub");
    assert!(e.mounts[1].readonly);
    let merge = input(def, run, 0);
    assert_eq!(merge.op, Op::Merge);
    assert!(
        merge.meta.description.contains("LINK COPY --from=files"),
        "{}",
        merge.meta.description
    );
    let image = def
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(SourceOp::Image(i)) => Some(i.reference.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        image.starts_with("oci-layout:///layouts/busybox@sha256:"),
        "{image}"
    );
    assert!(def.vertices.iter().any(|v| matches!(
        &v.op,
        Op::Source(SourceOp::Local(l)) if l.name == "files"
    )));
    assert_eq!(resp.config.config.labels.as_ref().unwrap()["extra"], "yes");
}

#[test]
fn call_targets_and_check_answer_in_the_call_result() {
    let mut req = request(
        "[stage.build]\nfrom = \"busybox\"\ndescription = \"compiles\"\n[stage.final]\nfrom = \"build\"\nplatform = \"linux/arm64\"\n",
    );
    req.options.insert("call".into(), "targets".into());
    let resp = build(&req, &FakeHost::default()).unwrap();
    assert!(resp.definition.vertices.is_empty());
    let targets = resp.call_result.unwrap();
    assert_eq!(
        targets,
        serde_json::json!({"targets": [
            {"name": "build", "description": "compiles", "base": "busybox", "platform": null,
             "default": false, "location": {"file": "build.toml", "line": 1}},
            {"name": "final", "description": "", "base": "build", "platform": "linux/arm64",
             "default": true, "location": {"file": "build.toml", "line": 4}},
        ]})
    );

    // check: nothing built, the warnings, and the first error at its line.
    req.options.insert("call".into(), "check".into());
    req.build_args.insert("UNDECLARED".into(), "1".into());
    let check = build(&req, &FakeHost::default())
        .unwrap()
        .call_result
        .unwrap();
    assert_eq!(check["warnings"].as_array().unwrap().len(), 1, "{check}");
    assert!(check.get("error").is_none(), "{check}");
    let mut bad = request("[stage.a]\nfrom = \"busybox\"\nsteps = [{ run = 1 }]\n");
    bad.options.insert("call".into(), "check".into());
    let check = build(&bad, &FakeHost::default())
        .unwrap()
        .call_result
        .unwrap();
    assert_eq!(check["error"]["location"]["line"], 3, "{check}");
    assert!(
        check["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`stage.a.steps[0].run` must be"),
        "{check}"
    );

    req.options.insert("call".into(), "outlien".into());
    let e = fail(&req);
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("--call outlien is not supported"), "{e}");
}

/// The example shipped in examples/spec is valid and lowers (the e2e test builds it).
#[test]
fn the_shipped_example_lowers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/spec/build.toml"
    );
    let source = std::fs::read_to_string(path).unwrap();
    let resp = run(&source);
    resp.definition.validate().unwrap();
    assert!(resp.config.config.entrypoint.is_some());
}

#[test]
fn hostile_files_meet_limits_at_their_lines() {
    // Variables: 1024 per stage, env and args together.
    let env: String = (0..1025).map(|i| format!("V{i} = \"x\"\n")).collect();
    let src = format!("[stage.a]\nfrom = \"busybox\"\n[stage.a.env]\n{env}");
    let e = fail(&request(&src));
    assert!(e.message.contains("more than 1024 variables"), "{e}");
    // The base's PATH and HOME count too: the 1023rd entry is one too many.
    assert_eq!(e.location.map(|l| l.line), Some(4 + 1022));

    // Steps: 4096 per build file, wherever they are.
    let steps: String = (0..4097).map(|_| "  { user = \"a\" },\n").collect();
    let src = format!("[stage.a]\nfrom = \"busybox\"\nsteps = [\n{steps}]\n");
    let e = fail(&request(&src));
    assert!(e.message.contains("more than 4096 steps"), "{e}");
    assert_eq!(e.location.map(|l| l.line), Some(4 + 4096));

    // Config copied along a chain of stages: 64 MiB in all.
    let big = "x".repeat(1 << 20);
    let mut src = format!("[stage.s0]\nfrom = \"scratch\"\nenv = {{ BIG = \"{big}\" }}\n");
    for i in 1..80 {
        src.push_str(&format!("[stage.s{i}]\nfrom = \"s{}\"\n", i - 1));
    }
    let e = fail(&request(&src));
    assert!(
        e.message.contains("more than 64 MiB of image config"),
        "{e}"
    );
    assert!(e.location.is_some(), "{e}");
}
