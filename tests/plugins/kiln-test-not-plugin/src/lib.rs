//! Test fixture: an ordinary shared library with an unrelated exported function, which the kiln
//! plugin host must refuse as "not a kiln plugin". Depends on nothing.

/// Something a shared library might export.
#[unsafe(no_mangle)]
pub extern "C" fn unrelated_add(a: u32, b: u32) -> u32 {
    a.wrapping_add(b)
}
