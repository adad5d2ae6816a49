//! What the spec frontend needs from kiln, as a small trait: the plugin implements it over the
//! SDK's [`Host`], tests over an in-memory fake, so the lowering runs in-process in tests.

use kiln_plugin_sdk::proto::{LogLevel, PluginError, ResolveImageConfigResponse};
use kiln_plugin_sdk::Host;
use kiln_types::Platform;

/// The host services the spec frontend uses.
pub trait SpecHost {
    /// The content of `path` in the local context `context`; `None` when it does not exist.
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError>;

    /// The config (and manifest digest) of image `reference` for `platform`.
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError>;

    /// Shows a warning in the build progress.
    fn warn(&self, message: &str);
}

impl SpecHost for Host<'_> {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Host::read_file_if_exists(self, context, path)
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        Host::resolve_image_config(self, reference, platform)
    }

    fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }
}
