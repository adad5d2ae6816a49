//! Test fixture: a well-built frontend that requires the host capability `teleport.files`, which
//! no kiln offers, so the host must refuse it at load naming that capability (and list it among
//! the refused files of `kiln plugins ls`). It requires a real capability too, which must not
//! be reported. Depends on kiln-plugin-sdk only.

use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
use kiln_plugin_sdk::{Frontend, Host};

struct NeedsMore;

impl Frontend for NeedsMore {
    fn build(
        &self,
        _req: FrontendRequest,
        _host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        Err(PluginError::internal(
            "never called: the host refuses this plugin at load",
        ))
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "needs-capability",
    version: env!("CARGO_PKG_VERSION"),
    requires: ["frontend.call_result", "teleport.files"],
    frontend: NeedsMore => ["needs-capability"],
}
