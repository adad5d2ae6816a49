//! Today's host against a plugin built on the frozen protocol-1 SDK (`tests/data/plugin-sdk-v1`,
//! plugin `tests/plugins/kiln-test-v1-greet`): it loads, and its frontend and instruction run,
//! through today's messages (which carry fields the plugin has never heard of) and today's
//! callbacks. Guards the compatibility rules of `kiln_plugin_sdk::proto` and the frozen root
//! module of `kiln-plugin-abi`: a change that breaks either makes this test fail.
//!
//! The plugin is built by this test with `cargo build -p kiln-test-v1-greet`.

#![allow(clippy::unwrap_used)] // helpers of an integration test may unwrap too

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_graph::{FileAction, Op, State};
use kiln_plugin_host::proto::{
    ErrorKind, FrontendRequest, InstructionRequest, Kind, Location, PluginError,
};
use kiln_plugin_host::{HostServices, LoadedPlugin, PluginRegistry, SearchPath};
use kiln_types::image::ImageConfig;
use kiln_types::Platform;

const PACKAGE: &str = "kiln-test-v1-greet";

/// Builds the v1 plugin once and returns its library.
fn v1_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target"));
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(&workspace)
            .args(["build", "--quiet", "-p", PACKAGE])
            .status()
            .expect("run cargo build for the v1 plugin");
        assert!(status.success(), "`cargo build -p {PACKAGE}` failed");
        std::fs::canonicalize(target.join("debug/libkiln_test_v1_greet.so"))
            .expect("the v1 plugin library was built")
    })
}

/// Serves one context file, `hello.txt`.
struct Context;

impl HostServices for Context {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Vec<u8>, PluginError> {
        match (context, path) {
            ("context", "hello.txt") => Ok(b"from the context\n".to_vec()),
            _ => Err(PluginError::not_found(format!("{context}/{path}"))),
        }
    }
}

fn request(source: &str) -> FrontendRequest {
    FrontendRequest {
        source: source.to_owned(),
        filename: "Greetfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        platform: "linux/amd64".parse::<Platform>().unwrap(),
        no_cache: false,
        no_cache_filter: Vec::new(),
        contexts: vec!["context".into()],
        options: BTreeMap::new(),
    }
}

/// The `(path, data)` of every mkfile of the graph, in vertex order.
fn files(def: &kiln_graph::Definition) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in &def.vertices {
        if let Op::File(f) = &v.op {
            for a in &f.actions {
                if let FileAction::Mkfile { path, data, .. } = a {
                    out.push((path.clone(), data.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn a_protocol_1_plugin_loads_with_its_version_and_both_kinds() {
    let plugin = LoadedPlugin::load(v1_lib()).unwrap();
    assert_eq!(plugin.name(), "v1-greet");
    assert_eq!(plugin.abi_version(), 1);
    assert_eq!(plugin.manifest().protocol_version, 1);
    assert!(plugin.manifest().requires.is_empty());
    assert_eq!(plugin.kinds(), [Kind::Frontend, Kind::Instruction]);
    assert!(plugin.answers_syntax("v1-greet"));
    assert!(plugin.answers_keyword("salute"));
    // And discovery takes it like any other plugin.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(v1_lib(), dir.path().join("libkiln_test_v1_greet.so")).unwrap();
    let registry = PluginRegistry::discover(&SearchPath::new([dir.path().to_path_buf()]));
    assert!(registry.refused().is_empty(), "{:?}", registry.refused());
    assert_eq!(registry.frontend("v1-greet").unwrap().name(), "v1-greet");
}

#[test]
fn a_protocol_1_frontend_builds_with_host_callbacks_and_errors_at_lines() {
    let plugin = LoadedPlugin::load(v1_lib()).unwrap();
    let resp = plugin
        .frontend_build(
            &request("# a v1 file\ngreet world\ncopy hello.txt\n"),
            &Context,
        )
        .unwrap();
    assert_eq!(
        files(&resp.definition),
        [
            ("/greeting.txt".to_owned(), "hello world\n".to_owned()),
            ("/copied.txt".to_owned(), "from the context\n".to_owned()),
        ]
    );
    assert_eq!(resp.call_result, None, "v1 has no call_result field");
    assert_eq!(
        resp.config.config.labels.unwrap()["greeted"],
        "world".to_owned()
    );

    let err = plugin
        .frontend_build(&request("greet a\nwave b\n"), &Context)
        .unwrap_err();
    let pe = err.plugin_error().expect("the plugin's own error");
    assert_eq!(pe.kind, ErrorKind::InvalidInput);
    assert_eq!(
        pe.location,
        Some(Location {
            file: "Greetfile".into(),
            line: 2
        })
    );
    // A callback error of today's host reaches it and comes back with its kind.
    let err = plugin
        .frontend_build(&request("copy nope.txt\n"), &Context)
        .unwrap_err();
    assert_eq!(err.plugin_error().unwrap().kind, ErrorKind::NotFound);
}

#[test]
fn a_protocol_1_frontend_answers_calls_in_the_label() {
    let plugin = LoadedPlugin::load(v1_lib()).unwrap();
    let mut req = request("greet world\n");
    req.options.insert("call".into(), "targets".into());
    let resp = plugin.frontend_build(&req, &Context).unwrap();
    assert_eq!(resp.call_result, None);
    let label = &resp.config.config.labels.unwrap()["kiln.call.result"];
    let v: serde_json::Value = serde_json::from_str(label).unwrap();
    assert_eq!(v["targets"][0]["name"], "greeting");
}

#[test]
fn a_protocol_1_instruction_lowers_todays_request() {
    let plugin = LoadedPlugin::load(v1_lib()).unwrap();
    let platform: Platform = "linux/amd64".parse().unwrap();
    // Today's request, with every protocol 3 field set: the v1 plugin ignores what it does not
    // know.
    let req = InstructionRequest {
        keyword: "SALUTE".into(),
        args: "world".into(),
        flags: Vec::new(),
        location: Location {
            file: "Dockerfile".into(),
            line: 2,
        },
        state: State::definition(&[State::scratch()]),
        config: ImageConfig::scratch(&platform),
        build_args: BTreeMap::new(),
        accepts_expansion: true,
    };
    let resp = plugin.instruction_lower(&req, &Context).unwrap();
    assert_eq!(
        files(&resp.state),
        [("/salute.txt".to_owned(), "salute world\n".to_owned())]
    );
    assert_eq!(resp.expansion, None, "v1 never expands");
    assert_eq!(resp.config.config.labels.unwrap()["saluted"], "world");
    assert_eq!(
        resp.history.as_deref(),
        Some("SALUTE world # kiln-test-v1-greet")
    );
}

/// FNV-1a, 64 bits: a fixed, dependency-free fingerprint of the frozen files.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn the_frozen_protocol_1_sdk_is_unchanged() {
    // The files of crates/kiln-plugin-sdk/src at commit 0472188 (`git show
    // 0472188:crates/kiln-plugin-sdk/src/proto.rs`...). Editing them would make this test prove
    // nothing about plugins built by the first release: fix kiln instead.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/plugin-sdk-v1/src");
    for (file, len, hash) in [
        ("export.rs", 13437, 0xfd74_6a59_681e_0bcf_u64),
        ("host.rs", 5020, 0x5414_2d41_65dc_ca0a),
        ("lib.rs", 3552, 0xc676_744e_a901_1566),
        ("proto.rs", 17579, 0x7334_6b05_1225_86f3),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(
            (bytes.len(), fnv1a(&bytes)),
            (len, hash),
            "tests/data/plugin-sdk-v1/src/{file} was edited; it must stay the protocol 1 SDK"
        );
    }
}
