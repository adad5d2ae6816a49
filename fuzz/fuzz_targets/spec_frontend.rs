//! The whole spec frontend (TOML with spans, expansion, stages, mounts, image config, graph) on
//! arbitrary text, with a context and base images served from memory: never a panic, every
//! located refusal names the build file, and every graph it returns passes the host's
//! validation.
#![no_main]

use std::collections::BTreeMap;

use kiln_frontend_spec::{build, SpecHost};
use kiln_plugin_sdk::proto::{FrontendRequest, PluginError, ResolveImageConfigResponse};
use kiln_types::image::{ImageConfig, RootFs};
use kiln_types::{Digest, Platform};
use libfuzzer_sys::fuzz_target;

struct Host;

impl SpecHost for Host {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Ok(match (context, path) {
            ("context", ".dockerignore") => Some(b"*.log\n!keep.log\n**/tmp\n".to_vec()),
            _ => None,
        })
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        if reference.contains("missing") {
            return Err(PluginError::not_found("not found in the registry"));
        }
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

    fn warn(&self, _message: &str) {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let req = FrontendRequest {
        source: source.to_owned(),
        filename: "build.toml".into(),
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
        options: BTreeMap::from([("context:named".to_owned(), "local:named".to_owned())]),
    };
    match build(&req, &Host) {
        Ok(resp) => {
            resp.definition
                .validate()
                .expect("the frontend built an invalid graph");
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(loc) = &e.location {
                assert_eq!(loc.file, "build.toml", "{e}");
                assert!(loc.line >= 1, "{e}");
            }
        }
    }
});
