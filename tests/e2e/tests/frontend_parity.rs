//! The Dockerfile frontend gives the same answers in-process (rlib) and through the loaded
//! plugin (cdylib), as BuildKit runs its Dockerfile tests built-in and through the gateway: a
//! corpus of Dockerfiles (ours and BuildKit's parser cases) through both paths, compared.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_frontend_dockerfile::FrontendHost;
use kiln_plugin_host::{HostServices, LoadedPlugin};
use kiln_plugin_sdk::proto::{
    FileInfo, FileKind, FrontendRequest, InstructionRequest, InstructionResponse, PluginError,
    ResolveImageConfigResponse,
};
use kiln_plugin_sdk::types::image::ImageConfig;
use kiln_plugin_sdk::types::{Digest, Platform};

/// Serves a context directory and answers every image with the same small config.
struct Fake {
    root: PathBuf,
}

impl Fake {
    fn image(&self, reference: &str, platform: &Platform) -> ResolveImageConfigResponse {
        let mut config = ImageConfig::scratch(platform);
        config.config.env_set("PATH", "/usr/bin:/bin");
        config.config.working_dir = Some("/base".into());
        ResolveImageConfigResponse {
            digest: Digest::of(reference.as_bytes()),
            config,
        }
    }
}

impl FrontendHost for Fake {
    fn read_context_file(&self, _c: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        let p = self.root.join(path);
        Ok(if p.is_file() {
            Some(std::fs::read(p).unwrap())
        } else {
            None
        })
    }
    fn read_dir(&self, _c: &str, path: &str) -> Result<Vec<String>, PluginError> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join(path))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        Ok(v)
    }
    fn resolve_image_config(
        &self,
        r: &str,
        p: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        Ok(self.image(r, p))
    }
    fn lower_instruction(
        &self,
        _r: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        Ok(None)
    }
    fn warn(&self, _m: &str) {}
}

impl HostServices for Fake {
    fn read_context_file(&self, _c: &str, path: &str) -> Result<Vec<u8>, PluginError> {
        std::fs::read(self.root.join(path)).map_err(|e| PluginError::not_found(e.to_string()))
    }
    fn stat(&self, _c: &str, path: &str) -> Result<Option<FileInfo>, PluginError> {
        let p = self.root.join(path);
        Ok(std::fs::symlink_metadata(&p).ok().map(|md| FileInfo {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: if md.is_dir() {
                FileKind::Dir
            } else {
                FileKind::File
            },
            size: md.len(),
            mode: 0o644,
            link_target: None,
        }))
    }
    fn read_dir(&self, c: &str, path: &str) -> Result<Vec<FileInfo>, PluginError> {
        let names = FrontendHost::read_dir(self, c, path)?;
        Ok(names
            .into_iter()
            .filter_map(|n| {
                HostServices::stat(self, c, &format!("{path}/{n}"))
                    .ok()
                    .flatten()
            })
            .collect())
    }
    fn resolve_image_config(
        &self,
        r: &str,
        p: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        Ok(self.image(r, p))
    }
}

const OURS: &[&str] = &[
    "FROM scratch AS a\nARG V=1\nENV X=$V\nWORKDIR /w\nCOPY . .\nFROM scratch\nCOPY --from=a /w /w\nCMD [\"x\"]\n",
    "FROM busybox:1.36\nRUN echo hi > /x\nRUN --mount=type=cache,target=/c ls /c\nUSER 1000\nENTRYPOINT run\n",
    "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY <<EOF /greeting\nhello\nEOF\nCOPY --link --chmod=0755 a /a\nLABEL a=b\n",
    "ARG BASE=scratch\nFROM ${BASE}\nEXPOSE 80/tcp\nHEALTHCHECK --interval=5s CMD true\nSTOPSIGNAL SIGINT\n",
    "FROM scratch\nCOPPY a b\n",
    "FROM scratch\nCOPY --nope a b\n",
];

fn compare(plugin: &LoadedPlugin, fake: &Fake, name: &str, source: &str) {
    let req = FrontendRequest {
        source: source.to_owned(),
        filename: "Dockerfile".into(),
        build_args: BTreeMap::from([("V".to_owned(), "7".to_owned())]),
        target: None,
        platform: "linux/amd64".parse().unwrap(),
        no_cache: false,
        no_cache_filter: vec![],
        contexts: vec!["context".into()],
        options: BTreeMap::new(),
    };
    let inproc = kiln_frontend_dockerfile::build(&req, fake);
    let loaded = plugin.frontend_build(&req, fake);
    match (inproc, loaded) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.definition.to_json(),
                b.definition.to_json(),
                "{name}: graphs differ"
            );
            assert_eq!(a.config, b.config, "{name}: configs differ");
            assert_eq!(a.warnings, b.warnings, "{name}: warnings differ");
        }
        (Err(a), Err(b)) => {
            let b = b
                .plugin_error()
                .cloned()
                .unwrap_or_else(|| panic!("{name}: {b}"));
            assert_eq!(a, b, "{name}: errors differ");
        }
        (a, b) => panic!(
            "{name}: in-process {:?} but through the plugin {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
}

#[test]
fn in_process_and_loaded_plugin_agree() {
    kiln_e2e::ensure_built();
    let plugin = LoadedPlugin::load(&kiln_e2e::plugin_lib("kiln-frontend-dockerfile")).unwrap();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("a"), "a").unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "*.md\n").unwrap();
    let fake = Fake {
        root: ctx.path().to_owned(),
    };
    let mut count = 0;
    for (i, src) in OURS.iter().enumerate() {
        compare(&plugin, &fake, &format!("ours #{i}"), src);
        count += 1;
    }
    let shared = std::env::var_os("KILN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| kiln_e2e::workspace().join("../shared/conformance"));
    let cases = shared.join("buildkit/frontend/dockerfile/parser/testfiles");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&cases)
        .unwrap_or_else(|e| panic!("conformance data at {}: {e}", cases.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        let src = std::fs::read_to_string(d.join("Dockerfile")).unwrap_or_default();
        compare(&plugin, &fake, &d.display().to_string(), &src);
        count += 1;
    }
    assert!(count > 30);
    println!("frontend parity: {count} Dockerfiles agree in-process and through the plugin");
}
