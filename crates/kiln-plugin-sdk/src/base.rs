//! Base images as a frontend builds on them (`FROM`, `COPY --from=<image>`): asked of the host
//! once per reference and platform, named in the graph by their pinned reference, and taken
//! for scratch when they have no layer, as BuildKit does.

use std::collections::HashMap;

use kiln_graph::{ImageSource, State};
use kiln_types::image::ImageConfig;
use kiln_types::Platform;

use crate::proto::{PluginError, ResolveImageConfigResponse};
use crate::reference;

/// A base image the host resolved.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference pinned to the manifest digest ([`reference::pinned`]): what the graph
    /// names, so the cache key changes when the image does.
    pub pinned: String,
    /// Its config, `created` removed (the image a build makes gets its own time).
    pub config: ImageConfig,
}

impl ResolvedImage {
    /// The host's answer for `reference`.
    pub fn new(reference: &str, resp: ResolveImageConfigResponse) -> Self {
        let mut config = resp.config;
        config.created = None;
        ResolvedImage {
            pinned: reference::pinned(reference, &resp.digest.to_string()),
            config,
        }
    }

    /// Whether the image has no layer at all (BuildKit then takes it for scratch).
    pub fn has_no_layers(&self) -> bool {
        self.config.rootfs.diff_ids.is_empty() && self.config.history.iter().all(|h| h.empty_layer)
    }

    /// Its filesystem for `platform`: scratch when it has no layer, else an image source.
    pub fn state(&self, platform: &Platform, description: impl Into<String>) -> State {
        if self.has_no_layers() {
            return State::scratch();
        }
        State::image(
            ImageSource {
                reference: self.pinned.clone(),
                platform: platform.clone(),
            },
            description,
        )
    }
}

/// The images one build resolved, so that each reference is asked once per platform.
#[derive(Debug, Default)]
pub struct ResolvedImages {
    by_reference: HashMap<(String, Platform), ResolvedImage>,
}

impl ResolvedImages {
    /// The image `reference` for `platform`: resolved before, or now with `resolve` (the
    /// host's `image.resolve_config`). A failure's message starts with the reference as
    /// written, as BuildKit's does.
    pub fn get_or_resolve(
        &mut self,
        reference: &str,
        platform: &Platform,
        resolve: impl FnOnce(&str, &Platform) -> Result<ResolveImageConfigResponse, PluginError>,
    ) -> Result<ResolvedImage, PluginError> {
        let key = (reference.to_owned(), platform.clone());
        if let Some(r) = self.by_reference.get(&key) {
            return Ok(r.clone());
        }
        let resp = resolve(reference, platform).map_err(|mut e| {
            e.message = format!("{reference}: {}", e.message);
            e
        })?;
        let resolved = ResolvedImage::new(reference, resp);
        self.by_reference.insert(key, resolved.clone());
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use kiln_types::image::History;

    use super::*;

    fn response(layers: usize) -> ResolveImageConfigResponse {
        let platform: Platform = "linux/amd64".parse().unwrap();
        let mut config = ImageConfig::scratch(&platform);
        config.created = Some("2024-01-01T00:00:00Z".into());
        for n in 0..layers {
            config
                .rootfs
                .diff_ids
                .push(format!("sha256:{:064x}", n).parse().unwrap());
            config.history.push(History::default());
        }
        ResolveImageConfigResponse {
            digest: format!("sha256:{}", "ab".repeat(32)).parse().unwrap(),
            config,
        }
    }

    #[test]
    fn resolved_once_pinned_and_scratch_without_layers() {
        let platform: Platform = "linux/amd64".parse().unwrap();
        let asked = Cell::new(0);
        let mut images = ResolvedImages::default();
        for _ in 0..2 {
            let img = images
                .get_or_resolve("busybox", &platform, |_, _| {
                    asked.set(asked.get() + 1);
                    Ok(response(1))
                })
                .unwrap();
            assert_eq!(
                img.pinned,
                format!(
                    "docker.io/library/busybox:latest@sha256:{}",
                    "ab".repeat(32)
                )
            );
            assert_eq!(img.config.created, None);
            assert!(!img.state(&platform, "FROM busybox").is_scratch());
        }
        assert_eq!(asked.get(), 1, "asked once per reference and platform");
        let empty = ResolvedImage::new("empty", response(0));
        assert!(empty.has_no_layers());
        assert!(empty.state(&platform, "FROM empty").is_scratch());
        let e = images
            .get_or_resolve("nope", &platform, |_, _| {
                Err(PluginError::not_found("not found"))
            })
            .unwrap_err();
        assert_eq!(e.message, "nope: not found");
    }
}
