//! What the host runs without emulation, and whether a file is a static executable.

use std::path::Path;

use kiln_types::Platform;

/// The x86-64 micro-architecture levels (psABI): the `/proc/cpuinfo` flags each one needs
/// beyond the previous one. BuildKit offers `amd64/v2`.. on a host whose CPU has them.
const AMD64_LEVELS: &[(&str, &[&str])] = &[
    (
        "v2",
        &[
            "cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3",
        ],
    ),
    (
        "v3",
        &[
            "abm", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "xsave",
        ],
    ),
    (
        "v4",
        &["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"],
    ),
];

/// The highest amd64 level whose flags are all in `cpuinfo` (the text of `/proc/cpuinfo`),
/// `None` for the baseline.
pub(crate) fn amd64_level(cpuinfo: &str) -> Option<&'static str> {
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default();
    let mut level = None;
    for (name, needs) in AMD64_LEVELS {
        if !needs.iter().all(|f| flags.contains(f)) {
            break;
        }
        level = Some(*name);
    }
    level
}

/// The platforms this host runs natively, best first: the host's and what containerd's
/// matcher says it also runs (`386` on `amd64`, 32-bit `arm` on `arm64`), with the amd64
/// level read from `cpuinfo`.
pub(crate) fn native_platforms(host: &Platform, cpuinfo: Option<&str>) -> Vec<Platform> {
    let mut host = host.normalize();
    if host.architecture == "amd64" && host.variant.is_none() {
        host.variant = cpuinfo.and_then(amd64_level).map(ToOwned::to_owned);
    }
    host.compatible()
}

/// Whether `path` is an ELF executable without a program interpreter (`PT_INTERP`), the only
/// kind of emulator that runs inside another root filesystem. `false` for anything unreadable
/// or not ELF.
pub(crate) fn is_static_elf(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|elf| elf_is_static(&elf))
}

fn elf_is_static(elf: &[u8]) -> bool {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return false;
    }
    let wide = match elf.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return false,
    };
    let big = match elf.get(5) {
        Some(1) => false,
        Some(2) => true,
        _ => return false,
    };
    let num = |at: usize, len: usize| -> Option<u64> {
        let b = elf.get(at..at.checked_add(len)?)?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if big { b[i] } else { b[len - 1 - i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let header = if wide {
        (num(0x20, 8), num(0x36, 2), num(0x38, 2))
    } else {
        (num(0x1c, 4), num(0x2a, 2), num(0x2c, 2))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = header else {
        return false;
    };
    const PT_INTERP: u64 = 3;
    (0..phnum).all(|i| {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok());
        // A header that points outside the file is not a program we can vouch for.
        at.and_then(|at| num(at, 4))
            .is_some_and(|p_type| p_type != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd64_levels_follow_the_cpu_flags() {
        let v2 = "flags\t: fpu cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3\n";
        assert_eq!(amd64_level(v2), Some("v2"));
        let v3 = format!(
            "processor: 0\n{} abm avx avx2 bmi1 bmi2 f16c fma movbe xsave\n",
            v2.trim_end()
        );
        assert_eq!(amd64_level(&v3), Some("v3"));
        assert_eq!(amd64_level("flags\t: fpu sse2\n"), None);
        assert_eq!(amd64_level(""), None);
        // v4 needs v3 first.
        let odd = format!(
            "{} avx512f avx512bw avx512cd avx512dq avx512vl\n",
            v2.trim_end()
        );
        assert_eq!(amd64_level(&odd), Some("v2"));
    }

    #[test]
    fn native_platforms_include_the_lower_levels() {
        let host: Platform = "linux/amd64".parse().expect("parses");
        let v3 = "flags : cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3 abm avx avx2 bmi1 bmi2 f16c fma movbe xsave";
        let names: Vec<String> = native_platforms(&host, Some(v3))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        let arm64: Platform = "linux/arm64".parse().expect("parses");
        let names: Vec<String> = native_platforms(&arm64, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names[0], "linux/arm64");
        assert!(names.contains(&"linux/arm/v7".to_owned()));
    }

    #[test]
    fn static_executables_are_told_apart() {
        // This test binary is dynamically linked on every host kiln supports.
        let me = std::env::current_exe().expect("current exe");
        assert!(!is_static_elf(&me));
        assert!(!elf_is_static(b"#!/bin/sh\n"));
        assert!(!elf_is_static(b"\x7fELF\x02\x01"));
        // A minimal 64-bit little-endian ELF header with no program headers is static.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 64; // phoff
        elf[0x36] = 56; // phentsize
        assert!(elf_is_static(&elf));
        // One PT_INTERP program header makes it dynamic.
        elf[0x38] = 1;
        elf.extend_from_slice(&[3, 0, 0, 0]);
        elf.resize(64 + 56, 0);
        assert!(!elf_is_static(&elf));
        // The same as a 32-bit big-endian file.
        let mut be = vec![0u8; 52];
        be[..6].copy_from_slice(b"\x7fELF\x01\x02");
        be[0x1f] = 52; // phoff
        be[0x2b] = 32; // phentsize
        be[0x2d] = 1; // phnum
        be.extend_from_slice(&[0, 0, 0, 3]);
        be.resize(52 + 32, 0);
        assert!(!elf_is_static(&be));
        be[52 + 3] = 1; // PT_LOAD
        assert!(elf_is_static(&be));
    }
}
