//! Test fixture: a frontend (syntax `panic`) whose build panics, to prove that a panicking
//! plugin becomes an error and the host keeps running. Depends on kiln-plugin-sdk only.

use kiln_plugin_sdk::proto::{FrontendRequest, FrontendResponse, PluginError};
use kiln_plugin_sdk::{Frontend, Host};

struct Panics;

impl Frontend for Panics {
    fn build(
        &self,
        req: FrontendRequest,
        _host: &Host<'_>,
    ) -> Result<FrontendResponse, PluginError> {
        panic!("boom while reading {}", req.filename)
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "panic",
    version: env!("CARGO_PKG_VERSION"),
    frontend: Panics => ["panic"],
}
