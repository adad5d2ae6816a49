//! The architectures kiln can emulate: QEMU's name for each and the ELF header that
//! binfmt_misc recognizes it by. Magic and mask are data from Debian's `qemu-user-static`
//! (`/usr/share/binfmts/qemu-*`), and for the x86 pair (which Debian does not ship on x86
//! hosts) from QEMU's `scripts/qemu-binfmt-conf.sh`.

use kiln_types::Platform;

/// One architecture QEMU's user mode runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emulator {
    /// The OCI (GOARCH) name: `arm64`.
    pub architecture: &'static str,
    /// QEMU's name: `aarch64`. The binary is `qemu-aarch64-static`, the handler `qemu-aarch64`.
    pub qemu: &'static str,
    /// The platforms it is reported as supporting, normalized.
    pub platforms: &'static [&'static str],
    /// The first bytes of an executable of the architecture (ELF header up to `e_machine`).
    pub magic: &'static [u8],
    /// Which bits of `magic` count (ELF class, data and machine; not the OS ABI byte nor the
    /// executable/shared-object type bit).
    pub mask: &'static [u8],
}

impl Emulator {
    /// The binfmt_misc handler's name, as Debian and tonistiigi/binfmt name it.
    pub fn handler_name(&self) -> String {
        format!("qemu-{}", self.qemu)
    }

    /// The static emulator's file name.
    pub fn binary_name(&self) -> String {
        format!("qemu-{}-static", self.qemu)
    }

    /// The emulator for `platform` (any spelling), if QEMU has one and it is a Linux platform.
    pub fn for_platform(platform: &Platform) -> Option<&'static Emulator> {
        let p = platform.normalize();
        if p.os != "linux" {
            return None;
        }
        EMULATORS.iter().find(|e| e.architecture == p.architecture)
    }
}

const ELF64_MASK: &[u8] =
    b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff";

/// Every emulator kiln knows, as tonistiigi/binfmt offers them.
pub const EMULATORS: &[Emulator] = &[
    Emulator {
        architecture: "arm64",
        qemu: "aarch64",
        platforms: &["linux/arm64"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        mask: ELF64_MASK,
    },
    Emulator {
        architecture: "arm",
        qemu: "arm",
        platforms: &["linux/arm/v7", "linux/arm/v6"],
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        mask: ELF64_MASK,
    },
    Emulator {
        architecture: "s390x",
        qemu: "s390x",
        platforms: &["linux/s390x"],
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
    },
    Emulator {
        architecture: "ppc64le",
        qemu: "ppc64le",
        platforms: &["linux/ppc64le"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
    },
    Emulator {
        architecture: "riscv64",
        qemu: "riscv64",
        platforms: &["linux/riscv64"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
        mask: ELF64_MASK,
    },
    Emulator {
        architecture: "mips64le",
        qemu: "mips64el",
        platforms: &["linux/mips64le"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Emulator {
        architecture: "mips64",
        qemu: "mips64",
        platforms: &["linux/mips64"],
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
    },
    Emulator {
        architecture: "loong64",
        qemu: "loongarch64",
        platforms: &["linux/loong64"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x02\x01",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\x00\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Emulator {
        architecture: "386",
        qemu: "i386",
        platforms: &["linux/386"],
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
    Emulator {
        architecture: "amd64",
        qemu: "x86_64",
        platforms: &["linux/amd64"],
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_finds_its_emulator() {
        for (spec, qemu) in [
            ("linux/arm64", "aarch64"),
            ("linux/aarch64/v8", "aarch64"),
            ("arm64", "aarch64"),
            ("linux/armhf", "arm"),
            ("linux/arm/v6", "arm"),
            ("linux/s390x", "s390x"),
            ("linux/i386", "i386"),
            ("linux/x86_64", "x86_64"),
        ] {
            let p: Platform = spec.parse().expect(spec);
            assert_eq!(
                Emulator::for_platform(&p).map(|e| e.qemu),
                Some(qemu),
                "{spec}"
            );
        }
        let win: Platform = "windows/arm64".parse().expect("parses");
        assert_eq!(Emulator::for_platform(&win), None);
        let sparc: Platform = "linux/sparc64".parse().expect("parses");
        assert_eq!(Emulator::for_platform(&sparc), None);
    }

    #[test]
    fn magic_and_mask_agree() {
        for e in EMULATORS {
            assert_eq!(e.magic.len(), 20, "{}", e.qemu);
            assert_eq!(e.mask.len(), 20, "{}", e.qemu);
            // The template is an executable of its own architecture: it matches itself.
            assert!(crate::binfmt::masked_eq(e.magic, e.magic, e.mask));
            assert_eq!(&e.magic[..4], b"\x7fELF");
            for p in e.platforms {
                let p: Platform = p.parse().expect("valid");
                assert_eq!(p.normalize().to_string(), p.to_string());
                assert_eq!(Emulator::for_platform(&p), Some(e));
            }
        }
    }
}
