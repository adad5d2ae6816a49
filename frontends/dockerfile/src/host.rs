//! What the conversion needs from kiln, as a small trait: the plugin implements it over the
//! SDK's [`Host`], tests over an in-memory fake, so the conversion runs in-process in tests.

use kiln_plugin_sdk::proto::{
    InstructionRequest, InstructionResponse, LogLevel, PluginError, ResolveImageConfigResponse,
};
use kiln_plugin_sdk::Host;
use kiln_types::Platform;

/// The host services the Dockerfile frontend uses.
pub trait FrontendHost {
    /// The content of `path` in the local context `context`; `None` when it does not exist.
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError>;

    /// The names of the entries of directory `path` (`.` for the root) in `context`.
    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<String>, PluginError>;

    /// The config (and manifest digest) of image `reference` for `platform`.
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError>;

    /// Hands an instruction the frontend does not know to an instruction plugin; `None` when no
    /// plugin handles the keyword.
    fn lower_instruction(
        &self,
        req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError>;

    /// Shows a warning in the build progress.
    fn warn(&self, message: &str);
}

impl FrontendHost for Host<'_> {
    fn read_context_file(&self, context: &str, path: &str) -> Result<Option<Vec<u8>>, PluginError> {
        Host::read_file_if_exists(self, context, path)
    }

    fn read_dir(&self, context: &str, path: &str) -> Result<Vec<String>, PluginError> {
        Ok(Host::read_dir(self, context, path)?
            .into_iter()
            .map(|info| info.name)
            .collect())
    }

    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolveImageConfigResponse, PluginError> {
        Host::resolve_image_config(self, reference, platform)
    }

    fn lower_instruction(
        &self,
        req: &InstructionRequest,
    ) -> Result<Option<InstructionResponse>, PluginError> {
        Host::lower_instruction(self, req)
    }

    fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }
}
