//! RUN settings beyond the command and its mounts: the build-wide ones that reach the
//! frontend as options, as buildx sends them to BuildKit (`force-network-mode`, from
//! `kiln build --network`, is the network of every RUN that does not choose its own with
//! `RUN --network`), and the CDI devices of `RUN --device`.

use std::collections::BTreeMap;

use dockerfile_parser::instructions as ins;
use kiln_graph::{Device, NetworkMode};

use crate::error::{Error, Result};

/// The frontend option buildx's `--network` becomes.
const FORCE_NETWORK_MODE: &str = "force-network-mode";

/// The network of a RUN without `--network` (or with `--network=default`): the build's
/// `force-network-mode`, else the builder's default. BuildKit's values: `host`, `none`, and
/// `sandbox` or nothing for the default.
pub(crate) fn default_network(options: &BTreeMap<String, String>) -> Result<NetworkMode> {
    match options.get(FORCE_NETWORK_MODE).map(|v| v.trim()) {
        None | Some("") | Some("sandbox") | Some("default") => Ok(NetworkMode::Default),
        Some("none") => Ok(NetworkMode::None),
        Some("host") => Ok(NetworkMode::Host),
        Some(other) => Err(Error::invalid(format!(
            "invalid {FORCE_NETWORK_MODE} {other:?}: expected default, none or host"
        ))),
    }
}

/// `RUN --device` values as the graph carries them: the exec primitive resolves them against
/// the host's CDI specs when the step runs (as BuildKit's worker does).
pub(crate) fn devices(devices: &[ins::Device]) -> Vec<Device> {
    devices
        .iter()
        .map(|d| Device {
            name: d.name.clone(),
            required: d.required,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_option() {
        let opts = |v: &str| BTreeMap::from([(FORCE_NETWORK_MODE.to_owned(), v.to_owned())]);
        assert_eq!(
            default_network(&BTreeMap::new()).unwrap(),
            NetworkMode::Default
        );
        assert_eq!(
            default_network(&opts("sandbox")).unwrap(),
            NetworkMode::Default
        );
        assert_eq!(default_network(&opts("none")).unwrap(), NetworkMode::None);
        assert_eq!(default_network(&opts("host")).unwrap(), NetworkMode::Host);
        let e = default_network(&opts("bridge")).unwrap_err().to_string();
        assert!(e.contains("invalid force-network-mode \"bridge\""), "{e}");
    }
}
