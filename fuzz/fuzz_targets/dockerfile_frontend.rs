//! The whole Dockerfile frontend (parse, expand, stages, lints, graph) on arbitrary text, with a
//! context and one base image served from memory: never a panic, every refusal carries the
//! file name, and every graph it returns passes the host's validation.
#![no_main]

use std::collections::BTreeMap;

use kiln_frontend_dockerfile::{build, FrontendHost};
use kiln_plugin_sdk::proto::{
    FrontendRequest, InstructionRequest, InstructionResponse, PluginError,
    ResolveImageConfigResponse,
};
use kiln_types::image::{ImageConfig, RootFs};
use kiln_types::{Digest, Platform};
use libfuzzer_sys::fuzz_target;

struct Host;

impl FrontendHost for Host {
    fn read_context_file(
        &self,
        _context: &str,
        path: &str,
    ) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(match path {
            ".dockerignore" => Some(b"*.log\n!keep.log\n**/tmp\n".to_vec()),
            "a.txt" | "dir/b.txt" => Some(b"content\n".to_vec()),
            _ => None,
        })
    }

    fn read_dir(&self, _context: &str, path: &str) -> Result<Vec<String>, PluginError> {
        Ok(match path {
            "." => vec!["a.txt".into(), "dir".into(), "Dockerfile".into()],
            "dir" => vec!["b.txt".into()],
            _ => vec![],
        })
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        let config = ImageConfig {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![Digest::of(b"layer")],
            },
            ..ImageConfig::default()
        };
        Ok(ResolveImageConfigResponse {
            digest: Digest::of(reference.as_bytes()),
            config,
        })
    }

    fn lower_instruction(
        &self,
        _req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        Ok(None)
    }

    fn warn(&self, _message: &str) {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let req = FrontendRequest {
        source: source.to_owned(),
        filename: "Dockerfile".into(),
        build_args: BTreeMap::from([("V".to_owned(), "1".to_owned())]),
        target: None,
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        no_cache: false,
        no_cache_filter: vec![],
        contexts: vec!["context".into()],
        options: BTreeMap::new(),
    };
    match build(&req, &Host) {
        Ok(resp) => {
            resp.definition
                .validate()
                .expect("the frontend built an invalid graph");
        }
        Err(e) => {
            assert!(!e.message.is_empty());
        }
    }
});
