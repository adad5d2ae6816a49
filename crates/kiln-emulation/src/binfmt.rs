//! The kernel's binfmt_misc interface: the handlers it lists (one file per handler beside
//! `register` and `status`) and the line that registers one (`Documentation/admin-guide/
//! binfmt-misc.rst`).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::arch::Emulator;
use crate::Error;

/// Where binfmt_misc is mounted on every Linux system that has it.
pub const DEFAULT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// One registered handler, as its file in the binfmt_misc directory shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handler {
    /// Its file name: `qemu-aarch64`.
    pub name: String,
    /// `enabled` (a disabled handler runs nothing).
    pub enabled: bool,
    /// The program the kernel starts with the executable's path.
    pub interpreter: PathBuf,
    /// The flag letters (`F`: the interpreter was opened at registration, so it runs in any
    /// mount namespace or root, such as a build's sandbox; `P`, `O`, `C`).
    pub flags: String,
    /// Byte offset of the magic in the file.
    pub offset: usize,
    /// The bytes recognized (empty for a handler by file extension).
    pub magic: Vec<u8>,
    /// Which bits of `magic` count (all of them when the handler has no mask).
    pub mask: Vec<u8>,
}

impl Handler {
    /// Whether the interpreter was opened at registration (the `F` flag), which makes it work
    /// inside a container or a build sandbox where its path does not exist.
    pub fn fixed_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// Whether it takes the executables of `emulator`: magic at offset 0 that the emulator's
    /// ELF header passes (the kernel's test: `(file ^ magic) & mask == 0` on every byte).
    pub fn handles(&self, emulator: &Emulator) -> bool {
        self.offset == 0
            && !self.magic.is_empty()
            && self.magic.len() <= emulator.magic.len()
            && masked_eq(&emulator.magic[..self.magic.len()], &self.magic, &self.mask)
    }

    /// Parses a handler's file (`name` is its file name). `None` for text that is not one.
    pub fn parse(name: &str, text: &str) -> Option<Handler> {
        let mut h = Handler {
            name: name.to_owned(),
            enabled: false,
            interpreter: PathBuf::new(),
            flags: String::new(),
            offset: 0,
            magic: Vec::new(),
            mask: Vec::new(),
        };
        let mut seen_state = false;
        for line in text.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "enabled" => (h.enabled, seen_state) = (true, true),
                "disabled" => seen_state = true,
                "interpreter" => h.interpreter = PathBuf::from(value),
                "flags:" => h.flags = value.trim().to_owned(),
                "offset" => h.offset = value.trim().parse().ok()?,
                "magic" => h.magic = from_hex(value.trim())?,
                "mask" => h.mask = from_hex(value.trim())?,
                _ => {}
            }
        }
        if !seen_state || h.interpreter.as_os_str().is_empty() {
            return None;
        }
        if h.mask.is_empty() {
            h.mask = vec![0xff; h.magic.len()];
        }
        if h.mask.len() != h.magic.len() {
            return None;
        }
        Some(h)
    }
}

/// The kernel's comparison: `candidate` passes `magic` when they agree on every bit of `mask`.
pub(crate) fn masked_eq(candidate: &[u8], magic: &[u8], mask: &[u8]) -> bool {
    candidate.len() == magic.len()
        && magic.len() == mask.len()
        && candidate
            .iter()
            .zip(magic)
            .zip(mask)
            .all(|((c, m), k)| (c ^ m) & k == 0)
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every `\xHH` escaped, as the register file's grammar allows for any byte (and needs for
/// `:` and NUL).
fn escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\x{b:02x}")).collect()
}

/// The flags kiln registers with, as tonistiigi/binfmt does: `F` so that the emulator works in
/// sandboxes whose root does not have it, `C` (which implies `O`) so that setuid programs
/// keep their credentials and the emulator reads an executable it could not open itself.
pub const FLAGS: &str = "CF";

/// The line that registers `emulator` with `interpreter`.
pub fn register_line(emulator: &Emulator, interpreter: &Path) -> Result<String, Error> {
    let path = interpreter
        .to_str()
        .filter(|p| !p.contains(':') && !p.contains('\n'));
    let Some(path) = path else {
        return Err(Error::BadInterpreter {
            path: interpreter.to_owned(),
        });
    };
    Ok(format!(
        ":{}:M:0:{}:{}:{}:{}",
        emulator.handler_name(),
        escape(emulator.magic),
        escape(emulator.mask),
        path,
        FLAGS
    ))
}

/// The handlers in `dir` (none when binfmt_misc is not mounted there).
pub fn read_handlers(dir: &Path) -> Result<Vec<Handler>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                action: "list",
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut handlers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io {
            action: "list",
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        match std::fs::read_to_string(entry.path()) {
            Ok(text) => handlers.extend(Handler::parse(&name, &text)),
            // Unregistered between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    action: "read",
                    path: entry.path(),
                    source,
                })
            }
        }
    }
    handlers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(handlers)
}

/// Whether binfmt_misc is mounted at `dir` (its `register` file is there).
pub fn is_mounted(dir: &Path) -> bool {
    dir.join("register").exists()
}

/// Mounts binfmt_misc at `dir`, with the options systemd uses.
pub fn mount(dir: &Path) -> Result<(), Error> {
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("binfmt_misc"),
        dir,
        Some("binfmt_misc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| Error::Mount {
        path: dir.to_owned(),
        source: std::io::Error::from(e),
    })
}

/// Writes `line` to `dir/register`. A handler of the same name registered meanwhile (another
/// kiln doing the same, EEXIST) is not an error: the caller reads the handlers again.
pub fn register(dir: &Path, name: &str, line: &str) -> Result<(), Error> {
    let path = dir.join("register");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Ok(()),
        Err(source) => Err(Error::Register {
            name: name.to_owned(),
            path,
            source,
        }),
    }
}

/// Removes the handler `name` (writing `-1` to its file), as `update-binfmts --disable` and
/// tonistiigi/binfmt's `--uninstall` do.
pub fn unregister(dir: &Path, name: &str) -> Result<(), Error> {
    let path = dir.join(name);
    std::fs::write(&path, "-1").map_err(|source| Error::Io {
        action: "unregister",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::EMULATORS;

    const AARCH64: &str = "enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn emulator(qemu: &str) -> &'static Emulator {
        EMULATORS.iter().find(|e| e.qemu == qemu).expect("known")
    }

    #[test]
    fn parses_the_kernels_listing() {
        let h = Handler::parse("qemu-aarch64", AARCH64).expect("a handler");
        assert!(h.enabled && h.fixed_binary());
        assert_eq!(h.interpreter, Path::new("/usr/bin/qemu-aarch64-static"));
        assert_eq!(h.flags, "OCF");
        assert!(h.handles(emulator("aarch64")));
        assert!(!h.handles(emulator("s390x")));
        assert!(!h.handles(emulator("x86_64")));

        let ext = "enabled\ninterpreter /usr/bin/python3.11\nflags: \nextension .pyc\n";
        let h = Handler::parse("python3.11", ext).expect("a handler");
        assert!(!h.fixed_binary());
        assert!(EMULATORS.iter().all(|e| !h.handles(e)));

        let disabled = AARCH64.replacen("enabled", "disabled", 1);
        assert!(!Handler::parse("x", &disabled).expect("a handler").enabled);
        assert_eq!(Handler::parse("x", "garbage"), None);
        assert_eq!(
            Handler::parse("x", "enabled\ninterpreter /q\nmagic 7f4\n"),
            None
        );
    }

    #[test]
    fn the_registration_line_round_trips() {
        let e = emulator("aarch64");
        let line = register_line(e, Path::new("/usr/bin/qemu-aarch64-static")).expect("ok");
        assert!(
            line.starts_with(":qemu-aarch64:M:0:\\x7f\\x45\\x4c\\x46\\x02"),
            "{line}"
        );
        assert!(line.ends_with(":/usr/bin/qemu-aarch64-static:CF"), "{line}");
        assert_eq!(line.split(':').count(), 8, "{line}");
        assert!(register_line(e, Path::new("/odd:path/qemu")).is_err());
    }

    #[test]
    fn each_emulator_matches_only_its_own_binaries() {
        for e in EMULATORS {
            let listing = format!(
                "enabled\ninterpreter /q\nflags: F\noffset 0\nmagic {}\nmask {}\n",
                e.magic
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                e.mask
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let h = Handler::parse(&e.handler_name(), &listing).expect("parses");
            for other in EMULATORS {
                assert_eq!(h.handles(other), other == e, "{} vs {}", e.qemu, other.qemu);
            }
        }
    }

    #[test]
    fn reads_a_directory_of_handlers() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read_handlers(&dir.path().join("absent"))
            .expect("ok")
            .is_empty());
        std::fs::write(dir.path().join("register"), "").expect("write");
        std::fs::write(dir.path().join("status"), "enabled\n").expect("write");
        std::fs::write(dir.path().join("qemu-aarch64"), AARCH64).expect("write");
        std::fs::write(dir.path().join("junk"), "nothing").expect("write");
        let hs = read_handlers(dir.path()).expect("ok");
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].name, "qemu-aarch64");
        assert!(is_mounted(dir.path()));

        register(dir.path(), "qemu-s390x", ":qemu-s390x:M:0:x:y:/q:F").expect("writes");
        let written = std::fs::read_to_string(dir.path().join("register")).expect("read");
        assert_eq!(written, ":qemu-s390x:M:0:x:y:/q:F");
        unregister(dir.path(), "qemu-aarch64").expect("writes");
        let gone = std::fs::read_to_string(dir.path().join("qemu-aarch64")).expect("read");
        assert_eq!(gone, "-1");
    }
}
