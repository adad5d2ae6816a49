//! Test fixture: a well-built plugin whose manifest is invalid (an empty name), which the host
//! must refuse with the reason. Depends on kiln-plugin-sdk only.

use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
use kiln_plugin_sdk::{Frontend, Host};

struct Nameless;

impl Frontend for Nameless {
    fn build(
        &self,
        _req: FrontendRequest,
        _host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        Err(PluginError::internal("never called"))
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "",
    version: env!("CARGO_PKG_VERSION"),
    frontend: Nameless => [],
}
