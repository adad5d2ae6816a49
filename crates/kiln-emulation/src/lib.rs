//! Running programs of other architectures: which platforms this host executes natively, the
//! binfmt_misc handlers registered in the kernel, the QEMU user-mode emulators on disk
//! (Debian's `qemu-user-static`), and the registration of a missing handler with the `F` flag
//! (what `tonistiigi/binfmt` does for BuildKit users), mounting binfmt_misc first if needed.
//!
//! [`Emulation::ensure`] is what a build calls before it runs a step for a platform;
//! [`Emulation::setup`] and [`Emulation::status`] back `kiln setup emulation`.
//!
//! Architecture invariant: depends on kiln-types only; touches nothing but the binfmt_misc
//! directory, the emulator search directories and `/proc/cpuinfo`.

mod arch;
pub mod binfmt;
mod host;

use std::path::{Path, PathBuf};

use kiln_types::Platform;
use serde::Serialize;

pub use arch::{Emulator, EMULATORS};
pub use binfmt::Handler;

/// The Debian/Ubuntu package with the static emulators, named in errors.
pub const PACKAGE: &str = "qemu-user-static";

/// Environment variable: the directories (`:`-separated) searched for `qemu-*-static`, instead
/// of `/usr/bin:/usr/local/bin`. Tests point it at an empty directory.
pub const QEMU_DIR_ENV: &str = "KILN_QEMU_DIR";

/// Where the emulators are looked for by default (Debian installs them in /usr/bin).
const DEFAULT_QEMU_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin"];

/// Why a platform cannot be run, or a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The platform needs an emulator that is not there; the message names the package.
    #[error("this {host} host cannot run {platform} programs: {reason}")]
    Unavailable {
        /// The platform asked for, normalized.
        platform: String,
        /// The host's.
        host: String,
        reason: String,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot mount binfmt_misc on {path}: {source} (registering an emulator needs root, \
         and the kernel's CONFIG_BINFMT_MISC)"
    )]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot register the binfmt_misc handler {name} through {path}: {source}")]
    Register {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the emulator path {path:?} cannot be registered: binfmt_misc refuses ':' in it")]
    BadInterpreter { path: PathBuf },
    #[error(
        "wrote the binfmt_misc handler {name} for {platform} to {path}, but the kernel does not \
         list it as enabled afterwards"
    )]
    NotRegistered {
        name: String,
        platform: String,
        path: PathBuf,
    },
}

/// How this host runs a platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// Natively (the host's platform, or one its CPU also runs, such as 386 on amd64).
    Native,
    /// Through a binfmt_misc handler with the `F` flag; `registered` when this call registered
    /// it.
    Emulated { handler: Handler, registered: bool },
}

/// What `kiln setup emulation` did for one platform.
#[derive(Clone, Debug)]
pub struct SetupOutcome {
    pub platform: Platform,
    pub result: Result<Support, String>,
}

/// What the host runs, as `tonistiigi/binfmt` prints it: `supported` platforms (native first,
/// then emulated ones) and the enabled binfmt_misc handlers (`emulators`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub supported: Vec<String>,
    pub emulators: Vec<String>,
}

/// The host's emulation facilities: where binfmt_misc is, where emulators are looked for.
#[derive(Clone, Debug)]
pub struct Emulation {
    binfmt_dir: PathBuf,
    qemu_dirs: Vec<PathBuf>,
    host: Platform,
    native: Vec<Platform>,
    root: bool,
}

impl Emulation {
    /// The real host: binfmt_misc at /proc/sys/fs/binfmt_misc, emulators in `$KILN_QEMU_DIR`
    /// or /usr/bin and /usr/local/bin, the amd64 level from /proc/cpuinfo.
    pub fn from_host() -> Self {
        let qemu_dirs = match std::env::var_os(QEMU_DIR_ENV) {
            Some(dirs) => std::env::split_paths(&dirs).collect(),
            None => DEFAULT_QEMU_DIRS.iter().map(PathBuf::from).collect(),
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
        let host = Platform::host();
        Emulation {
            binfmt_dir: PathBuf::from(binfmt::DEFAULT_DIR),
            qemu_dirs,
            native: host::native_platforms(&host, cpuinfo.as_deref()),
            host,
            root: nix::unistd::geteuid().is_root(),
        }
    }

    /// Another binfmt_misc directory and emulator directories (tests use fake ones).
    pub fn with_dirs(binfmt_dir: &Path, qemu_dirs: &[PathBuf]) -> Self {
        Emulation {
            binfmt_dir: binfmt_dir.to_owned(),
            qemu_dirs: qemu_dirs.to_vec(),
            ..Emulation::from_host()
        }
    }

    /// The host's platform (as `BUILDPLATFORM` names it).
    pub fn host(&self) -> &Platform {
        &self.host
    }

    /// The platforms the host runs natively, best first.
    pub fn native(&self) -> &[Platform] {
        &self.native
    }

    /// Whether the host runs `platform` without emulation.
    pub fn is_native(&self, platform: &Platform) -> bool {
        let p = platform.normalize();
        self.native.contains(&p)
    }

    /// The registered handlers (none when binfmt_misc is not mounted).
    pub fn handlers(&self) -> Result<Vec<Handler>, Error> {
        binfmt::read_handlers(&self.binfmt_dir)
    }

    /// The static emulator for `emulator` in the search directories: `qemu-<arch>-static`, or
    /// `qemu-<arch>` when that one is statically linked (as Debian 13's qemu-user is). A
    /// dynamically linked one is never used: it could not load its libraries in a build's root.
    pub fn find_qemu(&self, emulator: &Emulator) -> Option<PathBuf> {
        let names = [emulator.binary_name(), format!("qemu-{}", emulator.qemu)];
        self.qemu_dirs
            .iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| host::is_static_elf(p))
    }

    /// How `platform` runs here without changing anything, or why it does not.
    pub fn check(&self, platform: &Platform) -> Result<Support, Error> {
        self.decide(platform, false)
    }

    /// How `platform` runs here, registering its emulator when it is installed but has no
    /// handler (mounting binfmt_misc first if needed; root only). Fails before any build step
    /// runs with what to install or do: this is what the engine calls for each platform whose
    /// steps run programs.
    pub fn ensure(&self, platform: &Platform) -> Result<Support, Error> {
        self.decide(platform, true)
    }

    fn decide(&self, platform: &Platform, register: bool) -> Result<Support, Error> {
        if self.is_native(platform) {
            return Ok(Support::Native);
        }
        let unavailable = |reason: String| Error::Unavailable {
            platform: platform.normalize().to_string(),
            host: self.host.to_string(),
            reason,
        };
        let Some(emulator) = Emulator::for_platform(platform) else {
            let known: Vec<&str> = EMULATORS.iter().map(|e| e.platforms[0]).collect();
            return Err(unavailable(format!(
                "kiln has no emulator for it (QEMU user mode covers {})",
                known.join(", ")
            )));
        };
        let handlers = self.handlers()?;
        let mine = handlers.iter().filter(|h| h.enabled && h.handles(emulator));
        if let Some(h) = mine.clone().find(|h| h.fixed_binary()) {
            return Ok(Support::Emulated {
                handler: h.clone(),
                registered: false,
            });
        }
        if let Some(h) = mine.clone().next() {
            return Err(unavailable(format!(
                "the binfmt_misc handler {name} runs {platform} programs with {interp}, but it \
                 was registered without the F (fix binary) flag, so a build's sandbox, whose \
                 root has no {interp}, cannot use it; remove it (`echo -1 > {dir}/{name}`) and \
                 run `kiln setup emulation --platform {platform}` to register it with F",
                name = h.name,
                interp = h.interpreter.display(),
                dir = self.binfmt_dir.display(),
            )));
        }
        let Some(qemu) = self.find_qemu(emulator) else {
            return Err(unavailable(format!(
                "no binfmt_misc handler is registered for it and no {} was found in {} \
                 (${QEMU_DIR_ENV}); install the {PACKAGE} package (Debian and Ubuntu: \
                 `apt-get install {PACKAGE}`), then try again",
                emulator.binary_name(),
                self.search_path(),
            )));
        };
        if !register {
            return Err(unavailable(format!(
                "no binfmt_misc handler is registered for it; {} can be registered with `kiln \
                 setup emulation --platform {platform}`",
                qemu.display()
            )));
        }
        if !self.root {
            return Err(unavailable(format!(
                "no binfmt_misc handler is registered for it, and registering {} needs root: \
                 run `sudo kiln setup emulation --platform {platform}` once",
                qemu.display()
            )));
        }
        let handler = self.register(emulator, &qemu, platform)?;
        Ok(Support::Emulated {
            handler,
            registered: true,
        })
    }

    fn register(
        &self,
        emulator: &Emulator,
        qemu: &Path,
        platform: &Platform,
    ) -> Result<Handler, Error> {
        if !binfmt::is_mounted(&self.binfmt_dir) {
            binfmt::mount(&self.binfmt_dir)?;
        }
        let name = emulator.handler_name();
        // A disabled handler of that name would make the kernel refuse the new one (EEXIST).
        if let Some(old) = self.handlers()?.iter().find(|h| h.name == name) {
            if !old.enabled {
                binfmt::unregister(&self.binfmt_dir, &name)?;
            }
        }
        let line = binfmt::register_line(emulator, qemu)?;
        // Some kernels list a new entry only once the mount point was touched (tonistiigi/binfmt
        // does the same); best effort, the check below says if it did not help.
        let _ = std::fs::File::open(&self.binfmt_dir)
            .and_then(|d| d.set_modified(std::time::SystemTime::now()));
        binfmt::register(&self.binfmt_dir, &name, &line)?;
        self.handlers()?
            .into_iter()
            .find(|h| h.enabled && h.handles(emulator) && h.fixed_binary())
            .ok_or_else(|| Error::NotRegistered {
                name,
                platform: platform.to_string(),
                path: self.binfmt_dir.join("register"),
            })
    }

    fn search_path(&self) -> String {
        let dirs: Vec<String> = self
            .qemu_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        if dirs.is_empty() {
            "no directory".to_owned()
        } else {
            dirs.join(":")
        }
    }

    /// `kiln setup emulation`: [`Emulation::ensure`] for each of `platforms`, or, when it is
    /// empty, for every platform whose emulator is installed (tonistiigi/binfmt's
    /// `--install all`). One outcome per platform; a failure does not stop the others. As
    /// root, binfmt_misc is mounted first when it is not, so that the handlers already
    /// registered are seen.
    pub fn setup(&self, platforms: &[Platform]) -> Result<Vec<SetupOutcome>, Error> {
        if self.root && !binfmt::is_mounted(&self.binfmt_dir) {
            binfmt::mount(&self.binfmt_dir)?;
        }
        let wanted: Vec<Platform> = if platforms.is_empty() {
            EMULATORS
                .iter()
                .filter(|e| self.find_qemu(e).is_some())
                .filter_map(|e| e.platforms[0].parse().ok())
                .filter(|p| !self.is_native(p))
                .collect()
        } else {
            platforms.to_vec()
        };
        Ok(wanted
            .into_iter()
            .map(|platform| SetupOutcome {
                result: self.ensure(&platform).map_err(|e| e.to_string()),
                platform,
            })
            .collect())
    }

    /// What the host runs now: native platforms, then those of enabled `F` handlers; and the
    /// names of every enabled handler.
    pub fn status(&self) -> Result<Status, Error> {
        let handlers = self.handlers()?;
        let mut supported: Vec<String> = self.native.iter().map(ToString::to_string).collect();
        for e in EMULATORS {
            if handlers
                .iter()
                .any(|h| h.enabled && h.fixed_binary() && h.handles(e))
            {
                for p in e.platforms {
                    if !supported.iter().any(|s| s == p) {
                        supported.push((*p).to_owned());
                    }
                }
            }
        }
        let emulators = handlers
            .iter()
            .filter(|h| h.enabled)
            .map(|h| h.name.clone())
            .collect();
        Ok(Status {
            supported,
            emulators,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake binfmt_misc directory (with `register`, so it counts as mounted) and an emulator
    /// directory.
    struct Fake {
        _dir: tempfile::TempDir,
        binfmt: PathBuf,
        qemu: PathBuf,
    }

    fn fake() -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        let binfmt = dir.path().join("binfmt_misc");
        let qemu = dir.path().join("bin");
        for d in [&binfmt, &qemu] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(binfmt.join("register"), "").expect("write");
        std::fs::write(binfmt.join("status"), "enabled\n").expect("write");
        Fake {
            _dir: dir,
            binfmt,
            qemu,
        }
    }

    impl Fake {
        fn emulation(&self) -> Emulation {
            Emulation {
                root: true,
                ..Emulation::with_dirs(&self.binfmt, std::slice::from_ref(&self.qemu))
            }
        }

        fn handler(&self, name: &str, flags: &str, emulator: &str) {
            let e = EMULATORS
                .iter()
                .find(|e| e.qemu == emulator)
                .expect("known");
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let text = format!(
                "enabled\ninterpreter /usr/bin/qemu-{emulator}-static\nflags: {flags}\noffset 0\nmagic {}\nmask {}\n",
                hex(e.magic),
                hex(e.mask)
            );
            std::fs::write(self.binfmt.join(name), text).expect("write");
        }

        /// A static "emulator": a minimal ELF header without program headers.
        fn install(&self, name: &str) {
            let mut elf = vec![0u8; 64];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            std::fs::write(self.qemu.join(name), elf).expect("write");
        }
    }

    fn platform(s: &str) -> Platform {
        s.parse().expect("valid platform")
    }

    #[test]
    fn the_host_platform_is_native() {
        let f = fake();
        let e = f.emulation();
        assert_eq!(e.ensure(e.host()).expect("native"), Support::Native);
        assert!(e.is_native(&Platform::host()));
    }

    #[test]
    fn a_registered_fixed_handler_is_used() {
        let f = fake();
        f.handler("qemu-aarch64", "OCF", "aarch64");
        let e = f.emulation();
        match e.check(&platform("linux/arm64")).expect("emulated") {
            Support::Emulated {
                handler,
                registered,
            } => {
                assert_eq!(handler.name, "qemu-aarch64");
                assert!(!registered);
            }
            other => panic!("{other:?}"),
        }
        // Any name will do: what counts is the magic.
        let f = fake();
        f.handler("aarch64", "F", "aarch64");
        assert!(f.emulation().check(&platform("arm64")).is_ok());
    }

    #[test]
    fn a_missing_emulator_names_the_package() {
        let f = fake();
        if f.emulation().is_native(&platform("linux/s390x")) {
            return; // an s390x host: nothing to emulate
        }
        let err = f.emulation().ensure(&platform("linux/s390x")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("cannot run linux/s390x programs"), "{msg}");
        assert!(msg.contains("qemu-s390x-static"), "{msg}");
        assert!(msg.contains("apt-get install qemu-user-static"), "{msg}");
        assert!(msg.contains(f.qemu.to_str().expect("utf-8")), "{msg}");
        assert!(msg.contains("KILN_QEMU_DIR"), "{msg}");
    }

    #[test]
    fn a_handler_without_the_f_flag_is_refused_with_the_fix() {
        let f = fake();
        f.handler("qemu-riscv64", "OC", "riscv64");
        let msg = f
            .emulation()
            .ensure(&platform("linux/riscv64"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("without the F (fix binary) flag"), "{msg}");
        assert!(
            msg.contains("kiln setup emulation --platform linux/riscv64"),
            "{msg}"
        );
    }

    #[test]
    fn an_installed_emulator_is_registered_with_the_f_flag() {
        let f = fake();
        f.install("qemu-aarch64-static");
        // A dynamically linked qemu (Debian 12's qemu-user) is never registered.
        std::fs::copy(
            std::env::current_exe().expect("exe"),
            f.qemu.join("qemu-s390x"),
        )
        .expect("copy");
        let e = f.emulation();
        // check() changes nothing and says how to.
        let msg = e.check(&platform("linux/arm64")).unwrap_err().to_string();
        assert!(
            msg.contains("kiln setup emulation --platform linux/arm64"),
            "{msg}"
        );
        // The fake kernel creates no entry, so ensure() writes the line and then reports that
        // the handler did not appear; the line is what the kernel would have been given.
        let err = e.ensure(&platform("linux/arm64")).unwrap_err();
        assert!(matches!(err, Error::NotRegistered { .. }), "{err}");
        let line = std::fs::read_to_string(f.binfmt.join("register")).expect("read");
        let qemu = f.qemu.join("qemu-aarch64-static");
        assert!(line.starts_with(":qemu-aarch64:M:0:\\x7f\\x45"), "{line}");
        assert!(line.ends_with(&format!(":{}:CF", qemu.display())), "{line}");

        let msg = e.ensure(&platform("linux/s390x")).unwrap_err().to_string();
        assert!(msg.contains("apt-get install qemu-user-static"), "{msg}");
    }

    #[test]
    fn not_root_says_to_use_sudo() {
        let f = fake();
        f.install("qemu-aarch64-static");
        let e = Emulation {
            root: false,
            ..f.emulation()
        };
        let msg = e.ensure(&platform("linux/arm64")).unwrap_err().to_string();
        assert!(msg.contains("needs root"), "{msg}");
        assert!(
            msg.contains("sudo kiln setup emulation --platform linux/arm64"),
            "{msg}"
        );
        // Nothing was written.
        assert_eq!(
            std::fs::read_to_string(f.binfmt.join("register")).expect("read"),
            ""
        );
    }

    #[test]
    fn setup_without_platforms_takes_every_installed_emulator() {
        let f = fake();
        f.install("qemu-riscv64-static");
        f.handler("qemu-aarch64", "F", "aarch64");
        f.install("qemu-aarch64-static");
        let outcomes = f.emulation().setup(&[]).expect("mounted");
        let names: Vec<String> = outcomes.iter().map(|o| o.platform.to_string()).collect();
        assert_eq!(names, ["linux/arm64", "linux/riscv64"]);
        assert!(matches!(
            outcomes[0].result,
            Ok(Support::Emulated {
                registered: false,
                ..
            })
        ));
        // riscv64 was written to the (fake) register file.
        assert!(outcomes[1].result.is_err());
        let line = std::fs::read_to_string(f.binfmt.join("register")).expect("read");
        assert!(line.starts_with(":qemu-riscv64:"), "{line}");
    }

    #[test]
    fn status_lists_native_then_emulated_platforms() {
        let f = fake();
        f.handler("qemu-aarch64", "OCF", "aarch64");
        f.handler("qemu-s390x", "OC", "s390x");
        let e = f.emulation();
        let status = e.status().expect("status");
        assert_eq!(status.supported[0], e.native()[0].to_string());
        assert!(status.supported.contains(&"linux/arm64".to_owned()));
        // Without F it does not work in a sandbox: not supported for builds.
        if !e.is_native(&platform("linux/s390x")) {
            assert!(!status.supported.contains(&"linux/s390x".to_owned()));
        }
        assert_eq!(status.emulators, ["qemu-aarch64", "qemu-s390x"]);
    }

    #[test]
    fn unknown_architectures_are_refused_by_name() {
        let f = fake();
        let msg = f
            .emulation()
            .ensure(&platform("linux/sparc64"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot run linux/sparc64 programs"), "{msg}");
        assert!(msg.contains("no emulator for it"), "{msg}");
    }
}
