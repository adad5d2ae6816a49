//! Loads the built `libkiln_exec.so` through kiln's plugin host, as kiln does, and runs a step
//! through the ABI: manifest, request and response JSON, log and cancel callbacks.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::{sh, Rootfs};
use kiln_plugin_host::proto::{ErrorKind, Kind, LogLevel};
use kiln_plugin_host::{Error, HostServices, LoadedPlugin};

/// Builds the cdylib (same profile and target directory as this test) and returns its path.
fn library() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", "kiln-exec"])
        .status()
        .unwrap();
    assert!(status.success(), "cargo build -p kiln-exec failed");
    target.join("debug/libkiln_exec.so")
}

#[derive(Default)]
struct Services {
    logs: Mutex<Vec<(LogLevel, String)>>,
    cancel: bool,
}

impl HostServices for Services {
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_owned()));
    }

    fn cancelled(&self) -> bool {
        self.cancel
    }
}

#[test]
fn runs_through_the_plugin_abi() {
    let plugin = LoadedPlugin::load(&library()).unwrap();
    assert_eq!(plugin.name(), "exec");
    assert!(plugin.has_kind(Kind::Primitive));
    assert!(plugin.answers_op("exec"));

    let root = Rootfs::busybox();
    let services = Services::default();
    let resp = plugin
        .primitive_execute(
            &sh(&root, "echo hi > /x; echo out; echo err >&2; exit 4"),
            &services,
        )
        .unwrap();
    assert_eq!(resp.exit_code, Some(4));
    assert_eq!(
        *services.logs.lock().unwrap(),
        vec![
            (LogLevel::Info, "out".to_owned()),
            (LogLevel::Warn, "err".to_owned())
        ]
    );
    assert_eq!(root.upper_entries(), vec!["x"]);

    let root = Rootfs::busybox();
    let cancelled = Services {
        cancel: true,
        ..Services::default()
    };
    match plugin.primitive_execute(&sh(&root, "sleep 100"), &cancelled) {
        Err(Error::Plugin { error, .. }) => assert_eq!(error.kind, ErrorKind::Cancelled),
        other => panic!("expected a cancelled error, got {other:?}"),
    }

    let root = Rootfs::busybox();
    match plugin.primitive_execute(&common::request(&root, &["nonexistent"]), &services) {
        Err(Error::Plugin { error, .. }) => {
            assert_eq!(error.kind, ErrorKind::NotFound);
            assert!(
                error.message.contains("executable file not found"),
                "{}",
                error.message
            );
        }
        other => panic!("expected a not-found error, got {other:?}"),
    }
}
