//! Test fixture: a library built for a kiln plugin ABI that does not exist (999). It exports only
//! the probe symbol, so the host must refuse it before abi_stable looks at it. Depends on nothing.

/// The probe symbol, answering an ABI this kiln does not speak.
#[unsafe(no_mangle)]
pub extern "C" fn kiln_plugin_abi_version() -> u32 {
    999
}
