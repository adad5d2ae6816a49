//! Loads the real test plugins (cdylibs under `tests/plugins/`) and calls them.
//!
//! The plugins are built by this test with `cargo build -p <plugin>` (same profile and target
//! directory as the test), so `cargo test -p kiln-plugin-host` is self-sufficient.

#![allow(clippy::unwrap_used)] // helpers of an integration test (not `#[test]` fns) may unwrap too

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use kiln_graph::{FileAction, FileBuilder, State};
use kiln_plugin_host::proto::{
    ErrorKind, FileInfo, FileKind, FrontendRequest, InstructionRequest, InstructionResponse, Kind,
    LogLevel, PluginError,
};
use kiln_plugin_host::{Error, HostServices, LoadedPlugin, PluginRegistry, Refusal, SearchPath};
use kiln_types::Platform;

const PLUGINS: [&str; 5] = [
    "kiln-test-echo-frontend",
    "kiln-test-panic",
    "kiln-test-bad-abi",
    "kiln-test-not-plugin",
    "kiln-test-bad-manifest",
];

/// Built with [`PLUGINS`] but kept out of the directory of `discovery_sorts_good_from_bad`.
const NEEDS_CAPABILITY: &str = "kiln-test-needs-capability";

/// Builds the test plugins once and returns the directory holding the `.so` files.
fn artifacts() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.current_dir(&workspace).arg("build").arg("--quiet");
        for p in PLUGINS.iter().chain([&NEEDS_CAPABILITY]) {
            cmd.arg("-p").arg(p);
        }
        let status = cmd.status().expect("run cargo build for the test plugins");
        assert!(
            status.success(),
            "building the test plugins failed; try `cargo build -p {}`",
            PLUGINS.join(" -p ")
        );
        std::fs::canonicalize(target.join("debug")).expect("the target directory exists")
    })
}

fn lib(crate_name: &str) -> PathBuf {
    artifacts().join(format!("lib{}.so", crate_name.replace('-', "_")))
}

/// A fresh directory holding copies of the given plugins.
fn plugin_dir(crates: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for c in crates {
        let src = lib(c);
        std::fs::copy(&src, dir.path().join(src.file_name().unwrap())).unwrap();
    }
    dir
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl HostServices for Recorder {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Vec<u8>, PluginError> {
        self.record(format!("read_file {context}/{path}"));
        match path {
            "echo.txt" => Ok(b"from the context\n".to_vec()),
            _ => Err(PluginError::not_found(path)),
        }
    }

    fn stat(&self, context: &str, path: &str) -> Result<Option<FileInfo>, PluginError> {
        self.record(format!("stat {context}/{path}"));
        Ok((path == "echo.txt").then(|| FileInfo {
            name: "echo.txt".into(),
            kind: FileKind::File,
            size: 17,
            mode: 0o644,
            link_target: None,
        }))
    }

    fn lower_instruction(
        &self,
        req: InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        self.record(format!("lower {} {}", req.keyword, req.args));
        if !req.keyword.eq_ignore_ascii_case("GREET") {
            return Ok(None);
        }
        let base = req.state.state(req.state.outputs[0]).unwrap();
        let state = FileBuilder::new(&base)
            .action(FileAction::Mkfile {
                path: "/greet".into(),
                mode: 0o644,
                data: req.args.clone(),
                owner: None,
            })
            .build("GREET");
        let mut config = req.config;
        config.config.cmd = Some(vec!["greet".into(), req.args]);
        Ok(Some(InstructionResponse {
            state: State::definition(&[state]),
            config,
            history: None,
            expansion: None,
        }))
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.record(format!("log {level:?} {message}"));
    }
}

fn request(source: &str) -> FrontendRequest {
    FrontendRequest {
        source: source.to_owned(),
        filename: "Echofile".into(),
        build_args: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        target: None,
        platform: "linux/amd64".parse::<Platform>().unwrap(),
        no_cache: false,
        no_cache_filter: Vec::new(),
        contexts: vec!["context".into()],
        options: BTreeMap::new(),
    }
}

fn mkfile(base: &State, path: &str, data: &str, description: &str) -> State {
    FileBuilder::new(base)
        .action(FileAction::Mkfile {
            path: path.into(),
            mode: 0o644,
            data: data.into(),
            owner: None,
        })
        .build(description)
}

#[test]
fn echo_frontend_loads_lists_and_builds() {
    let dir = plugin_dir(&["kiln-test-echo-frontend"]);
    let registry = PluginRegistry::discover(&SearchPath::new([dir.path().to_path_buf()]));
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());
    let [echo] = registry.plugins() else {
        panic!("expected one plugin: {:?}", registry.plugins())
    };
    assert_eq!(echo.name(), "echo");
    assert_eq!(echo.kinds(), [Kind::Frontend]);
    assert_eq!(echo.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!(echo.abi_version(), 1);
    assert_eq!(
        echo.path(),
        dir.path().join("libkiln_test_echo_frontend.so")
    );
    assert!(echo.path().is_absolute());
    let caps = echo.manifest().frontend.as_ref().unwrap();
    assert_eq!(caps.syntaxes, ["echo", "kiln/echo"]);

    // Lookups: by name, by syntax with a tag.
    assert_eq!(registry.frontend("echo").unwrap().path(), echo.path());
    assert_eq!(
        registry.frontend("kiln/echo:1.2").unwrap().path(),
        echo.path()
    );

    let source = "# syntax=echo\nhello\n!GREET world\n";
    let services = Recorder::default();
    let resp = echo.frontend_build(&request(source), &services).unwrap();

    let expected_state = {
        let s = mkfile(&State::scratch(), "/echo", source, "echo /echo");
        let s = mkfile(&s, "/echo.txt", "from the context\n", "echo /echo.txt");
        mkfile(&s, "/greet", "world", "GREET")
    };
    assert_eq!(resp.definition, State::definition(&[expected_state]));
    resp.definition.validate().unwrap();

    let labels = resp.config.config.labels.as_ref().unwrap();
    assert_eq!(labels["kiln.echo.filename"], "Echofile");
    assert_eq!(labels["kiln.echo.lines"], "3");
    assert_eq!(labels["kiln.echo.arg.A"], "1");
    assert_eq!(resp.config.architecture, "amd64");
    assert_eq!(
        resp.config.config.cmd,
        Some(vec!["greet".to_owned(), "world".to_owned()])
    );

    assert_eq!(
        services.calls(),
        [
            format!("log Info echo: {} bytes", source.len()),
            "stat context/echo.txt".to_owned(),
            "read_file context/echo.txt".to_owned(),
            "lower GREET world".to_owned(),
        ]
    );

    // Deterministic: the same request gives the same graph.
    let again = echo
        .frontend_build(&request(source), &Recorder::default())
        .unwrap();
    assert_eq!(again, resp);
}

#[test]
fn plugin_errors_keep_their_location() {
    let echo = LoadedPlugin::load(&lib("kiln-test-echo-frontend")).unwrap();
    let err = echo
        .frontend_build(&request("one\n!FROBNICATE x\n"), &Recorder::default())
        .unwrap_err();
    let Error::Plugin { plugin, error } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(plugin, "echo");
    assert_eq!(error.kind, ErrorKind::InvalidInput);
    let loc = error.location.as_ref().unwrap();
    assert_eq!((loc.file.as_str(), loc.line), ("Echofile", 2));
    assert_eq!(
        err.to_string(),
        "plugin echo: Echofile:2: unknown instruction FROBNICATE: no instruction plugin handles it"
    );
}

#[test]
fn a_panicking_plugin_is_an_error_and_the_host_goes_on() {
    let dir = plugin_dir(&["kiln-test-panic", "kiln-test-echo-frontend"]);
    let registry = PluginRegistry::discover(&SearchPath::new([dir.path().to_path_buf()]));
    let panic = registry.frontend("panic").unwrap();
    let err = panic
        .frontend_build(&request("x"), &Recorder::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("plugin panic panicked: boom while reading Echofile"),
        "{msg}"
    );
    assert_eq!(err.plugin_error().unwrap().kind, ErrorKind::Panic);
    assert!(!msg.contains("panicked at"), "{msg}");

    // The same plugin panics again cleanly, and another plugin still works.
    assert!(panic
        .frontend_build(&request("x"), &Recorder::default())
        .is_err());
    let echo = registry.frontend("echo").unwrap();
    let resp = echo
        .frontend_build(&request("still here"), &Recorder::default())
        .unwrap();
    assert_eq!(resp.definition.vertices.len(), 2);
}

#[test]
fn wrong_abi_is_refused_naming_both_versions_and_the_file() {
    let path = lib("kiln-test-bad-abi");
    let err = LoadedPlugin::load(&path).unwrap_err();
    let Error::Refused(refused) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        refused.reason,
        Refusal::AbiMismatch {
            found: 999,
            expected: 1
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("built for kiln plugin ABI 999, this kiln speaks ABI 1"),
        "{msg}"
    );
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
}

#[test]
fn a_plugin_requiring_a_capability_this_kiln_lacks_is_refused_naming_it() {
    let path = lib(NEEDS_CAPABILITY);
    let err = LoadedPlugin::load(&path).unwrap_err();
    let Error::Refused(refused) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        refused.reason,
        Refusal::MissingCapabilities {
            missing: vec!["teleport.files".to_owned()],
            protocol: kiln_plugin_host::proto::PROTOCOL_VERSION,
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("requires host capability \"teleport.files\" that this kiln lacks"),
        "{msg}"
    );
    assert!(msg.contains("libkiln_test_needs_capability.so"), "{msg}");
    // Discovery records it among the refused files (what `kiln plugins ls` shows), and the
    // other plugins of the directory still load.
    let dir = plugin_dir(&[NEEDS_CAPABILITY, "kiln-test-echo-frontend"]);
    let registry = PluginRegistry::discover(&SearchPath::new(vec![dir.path().to_path_buf()]));
    assert_eq!(registry.plugins().len(), 1);
    assert_eq!(registry.refused().len(), 1, "{:?}", registry.refused());
    assert!(
        registry.refused()[0]
            .to_string()
            .contains("\"teleport.files\""),
        "{}",
        registry.refused()[0]
    );
}

#[test]
fn a_foreign_library_is_not_a_plugin() {
    let err = LoadedPlugin::load(&lib("kiln-test-not-plugin")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not a kiln plugin (no `kiln_plugin_abi_version` symbol)"),
        "{msg}"
    );
    assert!(msg.contains("libkiln_test_not_plugin.so"), "{msg}");
}

#[test]
fn an_invalid_manifest_is_refused() {
    let err = LoadedPlugin::load(&lib("kiln-test-bad-manifest")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("invalid plugin manifest: the plugin name is empty"),
        "{msg}"
    );
}

#[test]
fn a_missing_file_is_refused_with_the_loader_message() {
    let err = LoadedPlugin::load(Path::new("/nonexistent/libnothing.so")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("/nonexistent/libnothing.so: cannot be loaded"),
        "{msg}"
    );
    assert!(msg.contains("No such file"), "{msg}");
}

#[test]
fn discovery_sorts_good_from_bad() {
    let dir = plugin_dir(&PLUGINS);
    std::fs::write(dir.path().join("README.txt"), "not a library").unwrap();
    let registry = PluginRegistry::discover(&SearchPath::new([dir.path().to_path_buf()]));
    let names: Vec<&str> = registry.plugins().iter().map(|p| p.name()).collect();
    assert_eq!(names, ["echo", "panic"]);
    let refused: Vec<(String, String)> = registry
        .refused()
        .iter()
        .map(|r| {
            (
                r.path.file_name().unwrap().to_string_lossy().into_owned(),
                r.reason.to_string(),
            )
        })
        .collect();
    let files: Vec<&str> = refused.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        files,
        [
            "libkiln_test_bad_abi.so",
            "libkiln_test_bad_manifest.so",
            "libkiln_test_not_plugin.so"
        ]
    );
    assert!(refused[0].1.contains("ABI 999"), "{:?}", refused[0]);
    assert!(refused[1].1.contains("name is empty"), "{:?}", refused[1]);
    assert!(
        refused[2].1.contains("not a kiln plugin"),
        "{:?}",
        refused[2]
    );

    let err = registry.frontend("yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no frontend plugin for \"yaml\"; found: echo (syntax echo, kiln/echo), panic (syntax panic)"
    );
    let err = registry.instruction("INCLUDE").unwrap_err();
    assert!(err.to_string().contains("none is installed"), "{err}");
}

#[test]
fn the_first_plugin_of_a_name_wins() {
    let first = plugin_dir(&["kiln-test-echo-frontend"]);
    let second = plugin_dir(&["kiln-test-echo-frontend"]);
    let search = SearchPath::new([first.path().to_path_buf(), second.path().to_path_buf()]);
    let registry = PluginRegistry::discover(&search);
    assert_eq!(registry.plugins().len(), 1);
    assert_eq!(registry.plugins()[0].path().parent().unwrap(), first.path());
    let [shadowed] = registry.refused() else {
        panic!("{:?}", registry.refused())
    };
    assert_eq!(shadowed.path.parent().unwrap(), second.path());
    assert!(
        matches!(&shadowed.reason, Refusal::Shadowed { name, by } if name == "echo" && by.parent() == Some(first.path())),
        "{shadowed}"
    );

    // An explicit path loads that very file, registered or not.
    let explicit = registry.load_file(&shadowed.path).unwrap();
    assert_eq!(explicit.path(), shadowed.path);
    let registered = registry.load_file(registry.plugins()[0].path()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&registered, &registry.plugins()[0]));
}

#[test]
fn a_tampered_graph_is_rejected() {
    let echo = LoadedPlugin::load(&lib("kiln-test-echo-frontend")).unwrap();
    let mut req = request("x");
    req.options.insert("echo.tamper".into(), "1".into());
    let err = echo.frontend_build(&req, &Recorder::default()).unwrap_err();
    assert!(matches!(err, Error::InvalidGraph { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("plugin echo returned an invalid build graph from frontend.build: vertex 0 claims digest"),
        "{err}"
    );
}

#[test]
fn calls_outside_the_plugin_kinds_are_refused() {
    let echo = LoadedPlugin::load(&lib("kiln-test-echo-frontend")).unwrap();
    let req = kiln_plugin_host::proto::PrimitiveRequest::new(
        kiln_graph::Op::Merge,
        Vec::new(),
        "/tmp/out".into(),
    );
    let err = echo
        .primitive_execute(&req, &Recorder::default())
        .unwrap_err();
    assert_eq!(err.to_string(), "plugin echo is not a primitive plugin");
    // A method the plugin does not know is answered, not crashed on.
    let err = echo
        .call_raw("future.method", b"{}", &Recorder::default())
        .unwrap_err();
    assert_eq!(err.plugin_error().unwrap().kind, ErrorKind::Unsupported);
}

/// Runs the panicking plugin in a child process (this test binary, filtered to
/// `panic_child`) and checks that nothing like "thread panicked at" reaches its stderr.
#[test]
fn a_plugin_panic_prints_nothing() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "panic_child", "--nocapture", "--test-threads=1"])
        .env("KILN_TEST_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn panic_child() {
    if std::env::var_os("KILN_TEST_PANIC_CHILD").is_none() {
        return;
    }
    let panic = LoadedPlugin::load(&lib("kiln-test-panic")).unwrap();
    let err = panic
        .frontend_build(&request("x"), &Recorder::default())
        .unwrap_err();
    assert_eq!(err.plugin_error().unwrap().kind, ErrorKind::Panic);
}
