//! Platforms as containerd's `platforms` package understands them (the names every `--platform`
//! flag, `FROM --platform` and image index accepts): parsing of the short forms (`arm64`,
//! `linux`, `armhf`, `Linux/x86_64`), normalization (`aarch64` = `arm64`, `arm` = `arm/v7`,
//! `arm64/v8` = `arm64`, `amd64/v1` = `amd64`), formatting, the "what can run here" matcher of
//! `platforms.Only` (an `amd64` host takes `386` images; an `arm64/v8.2` one takes `v8.1`,
//! `v8`, and 32-bit `arm` down to `v5`), and BuildKit's predefined platform build args.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An OCI platform: `os/architecture[/variant]`, as written in `--platform` and image indexes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// GOARCH-style architecture: `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v7`, `v8`, ... where it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A platform specifier that cannot be understood, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {spec:?}: {reason}")]
pub struct PlatformError {
    spec: String,
    reason: String,
}

impl PlatformError {
    fn new(spec: &str, reason: impl Into<String>) -> Self {
        PlatformError {
            spec: spec.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Go's list of operating systems (`go/build/syslist.go`), as containerd knows them: a lone word
/// that is one of these is an OS, otherwise an architecture.
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];

/// Go's architectures, as containerd knows them: a lone word must be one of these (after
/// normalization) to be taken as an architecture.
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

/// arm64 variants and the (major, highest minor) pairs each one can run, newest first: a v9.x
/// core runs v9.0..v9.x and v8.0..v8.(x+5) code (containerd's table, after the Arm ARM).
fn arm64_versions(variant: &str) -> Option<&'static [(u32, u32)]> {
    Some(match variant {
        "v8" | "v8.0" => &[(8, 0)],
        "v8.1" => &[(8, 1)],
        "v8.2" => &[(8, 2)],
        "v8.3" => &[(8, 3)],
        "v8.4" => &[(8, 4)],
        "v8.5" => &[(8, 5)],
        "v8.6" => &[(8, 6)],
        "v8.7" => &[(8, 7)],
        "v8.8" => &[(8, 8)],
        "v8.9" => &[(8, 9)],
        "v9" | "v9.0" => &[(9, 0), (8, 5)],
        "v9.1" => &[(9, 1), (8, 6)],
        "v9.2" => &[(9, 2), (8, 7)],
        "v9.3" => &[(9, 3), (8, 8)],
        "v9.4" => &[(9, 4), (8, 9)],
        "v9.5" => &[(9, 5), (8, 9)],
        "v9.6" => &[(9, 6), (8, 9)],
        "v9.7" => &[(9, 7), (8, 9)],
        _ => return None,
    })
}

impl Platform {
    /// `os/architecture[/variant]` as given (no normalization; see [`Platform::normalize`]).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.filter(|v| !v.is_empty()).map(ToOwned::to_owned),
        }
    }

    /// The platform this process runs on, in OCI terms, normalized.
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            // Without reading /proc/cpuinfo (no I/O here), v7: what 32-bit arm Linux mostly is.
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            "loongarch64" => ("loong64", None),
            "mips64" => ("mips64le", None),
            other => (other, None),
        };
        Platform::new(std::env::consts::OS, architecture, variant)
    }

    /// containerd's `Normalize`: lower case, Go's names for the architecture (`x86_64` →
    /// `amd64`, `aarch64` → `arm64`, `i386` → `386`, `armhf` → `arm/v7`, `armel` → `arm/v6`),
    /// and the default variant spelled one way: `arm` is `arm/v7`, `arm64/v8` is `arm64`,
    /// `amd64/v1` is `amd64`, `arm/7` is `arm/v7`, `arm64/9.0` is `arm64/v9`.
    pub fn normalize(&self) -> Platform {
        let os = normalize_os(&self.os);
        let (architecture, variant) = normalize_arch(
            &self.architecture,
            self.variant.as_deref().unwrap_or_default(),
        );
        Platform {
            os,
            architecture,
            variant: Some(variant).filter(|v| !v.is_empty()),
        }
    }

    /// Whether `other` names the same platform once both are normalized (containerd's
    /// `NewMatcher(self).Match(other)`): `linux/arm64` matches `linux/aarch64/v8`, and
    /// `linux/arm` matches `linux/armhf`, but `linux/amd64` does not match `linux/386`
    /// (for that, see [`PlatformMatcher::only`]).
    pub fn matches(&self, other: &Platform) -> bool {
        self.normalize() == other.normalize()
    }

    /// The platforms a machine of this platform runs, best first (containerd's
    /// `platformVector`, the list behind `platforms.Only`), each normalized.
    pub fn compatible(&self) -> Vec<Platform> {
        let p = self.normalize();
        let with = |architecture: &str, variant: Option<String>| Platform {
            os: p.os.clone(),
            architecture: architecture.to_owned(),
            variant,
        };
        let level = |v: &Option<String>| {
            v.as_deref()
                .and_then(|v| v.strip_prefix('v'))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let mut out = Vec::new();
        match p.architecture.as_str() {
            "amd64" => {
                out.push(p.clone());
                // amd64/vN runs vN-1 .. v1; v1 is spelled without a variant.
                if let Some(n) = level(&p.variant).filter(|n| *n > 1) {
                    for m in (1..n).rev() {
                        out.push(with("amd64", Some(format!("v{m}"))).normalize());
                    }
                }
                out.push(with("386", None));
            }
            "arm" => {
                out.push(p.clone());
                if let Some(n) = level(&p.variant).filter(|n| *n > 5) {
                    for m in (5..n).rev() {
                        out.push(with("arm", Some(format!("v{m}"))));
                    }
                }
            }
            "arm64" => {
                let variant = p.variant.clone().unwrap_or_else(|| "v8".to_owned());
                // An unknown arm64 variant runs nothing, not even itself (as containerd).
                let Some(versions) = arm64_versions(&variant) else {
                    return out;
                };
                for &(major, top) in versions {
                    for minor in (0..=top).rev() {
                        let v = if minor == 0 {
                            format!("v{major}")
                        } else {
                            format!("v{major}.{minor}")
                        };
                        out.push(with("arm64", Some(v)).normalize());
                    }
                }
                // Every arm64 core runs 32-bit arm code up to arm/v8.
                out.extend(with("arm", Some("v8".to_owned())).compatible());
            }
            _ => out.push(p),
        }
        out
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "" => std::env::consts::OS.to_owned(),
        "macos" => "darwin".to_owned(),
        _ => os,
    }
}

/// containerd's `normalizeArch`: (architecture, variant), the variant `""` when it is the
/// default one of the architecture (except `arm`, whose default `v7` is written out).
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v) = match arch.as_str() {
        "i386" => ("386", ""),
        "x86_64" | "x86-64" | "amd64" => ("amd64", if variant == "v1" { "" } else { &variant }),
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "8" | "v8" | "v8.0" => "",
                "9" | "9.0" | "v9.0" => "v9",
                other => other,
            },
        ),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        "arm" => {
            return (
                "arm".to_owned(),
                match variant.as_str() {
                    "" | "7" => "v7".to_owned(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                },
            )
        }
        _ => return (arch, variant),
    };
    (a.to_owned(), v.to_owned())
}

/// A specifier part other than the OS: `[A-Za-z0-9_.-]+`.
fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl fmt::Display for Platform {
    /// containerd's `Format`: `os/architecture[/variant]`, as given (normalize first for the
    /// canonical spelling).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.os.is_empty() {
            return f.write_str("unknown");
        }
        f.write_str(&self.os)?;
        for part in [Some(&self.architecture), self.variant.as_ref()]
            .into_iter()
            .flatten()
        {
            if !part.is_empty() {
                write!(f, "/{part}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    /// containerd's `Parse`: `os`, `arch`, `os/arch` or `os/arch/variant`, in any case. A lone
    /// word is an OS if Go knows it (the architecture is then the host's), else a known
    /// architecture (the OS is then the host's). Names are normalized as containerd does at
    /// parse time, which keeps an explicit `arm64/v8` and drops an implicit `arm/v7`; call
    /// [`Platform::normalize`] for the canonical form (BuildKit normalizes `--platform`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PlatformError::new(s, reason);
        if s.contains('*') {
            return Err(err("wildcards are not supported".to_owned()));
        }
        let parts: Vec<&str> = s.splitn(4, '/').collect();
        let os_part = parts[0];
        if os_part.contains('(') {
            return Err(err(format!(
                "OS versions and features ({os_part}) are not supported: kiln builds Linux images"
            )));
        }
        if os_part.is_empty()
            || !os_part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(err(format!(
                "{os_part:?} is not a valid OS: expected letters, digits, '_' or '-', as in \
                 linux/amd64"
            )));
        }
        if let Some(bad) = parts[1..].iter().find(|p| !valid_part(p)) {
            return Err(err(format!(
                "{bad:?} is not a valid component: expected letters, digits, '_', '.' or '-', \
                 as in linux/arm64/v8"
            )));
        }
        let os = normalize_os(os_part);
        let (architecture, variant) = match parts.as_slice() {
            [_] if KNOWN_OS.contains(&os.as_str()) => {
                let host = Platform::host();
                return Ok(Platform { os, ..host });
            }
            [word] => {
                let (arch, variant) = normalize_arch(word, "");
                if !KNOWN_ARCH.contains(&arch.as_str()) {
                    return Err(err(
                        "unknown operating system or architecture: expected os/arch[/variant], \
                         e.g. linux/amd64"
                            .to_owned(),
                    ));
                }
                let variant = if arch == "arm" && variant == "v7" {
                    String::new()
                } else {
                    variant
                };
                return Ok(Platform {
                    os: std::env::consts::OS.to_owned(),
                    architecture: arch,
                    variant: Some(variant).filter(|v| !v.is_empty()),
                });
            }
            [_, arch] => {
                let (arch, variant) = normalize_arch(arch, "");
                if arch == "arm" && variant == "v7" {
                    (arch, String::new())
                } else {
                    (arch, variant)
                }
            }
            [_, arch, variant] => {
                let (arch, variant) = normalize_arch(arch, variant);
                if arch == "arm64" && variant.is_empty() {
                    (arch, "v8".to_owned())
                } else {
                    (arch, variant)
                }
            }
            _ => {
                return Err(err(
                    "too many components: expected os/arch[/variant], e.g. linux/arm/v7".to_owned(),
                ))
            }
        };
        Ok(Platform {
            os,
            architecture,
            variant: Some(variant).filter(|v| !v.is_empty()),
        })
    }
}

/// Which platforms of an image index a machine (or a build for one platform) can use, and
/// which it prefers: containerd's `platforms.Only` (a platform and every one it runs, in
/// order) and `platforms.OnlyStrict` (the platform alone, under any spelling).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformMatcher {
    /// Normalized, best first.
    ordered: Vec<Platform>,
}

impl PlatformMatcher {
    /// `p` and what a `p` machine also runs ([`Platform::compatible`]), best first. An
    /// `amd64` host does not take `amd64/v2` images (it may lack the instructions), while an
    /// `amd64/v2` build takes `amd64` ones.
    pub fn only(p: &Platform) -> Self {
        PlatformMatcher {
            ordered: p.compatible(),
        }
    }

    /// `p` alone, whatever the spelling (`arm64` = `aarch64` = `arm64/v8`).
    pub fn strict(p: &Platform) -> Self {
        PlatformMatcher {
            ordered: vec![p.normalize()],
        }
    }

    /// Whether `p` is acceptable.
    pub fn matches(&self, p: &Platform) -> bool {
        self.rank(p).is_some()
    }

    /// How good `p` is: 0 for the best, `None` when not acceptable.
    pub fn rank(&self, p: &Platform) -> Option<usize> {
        let p = p.normalize();
        self.ordered.iter().position(|o| *o == p)
    }

    /// The position in `candidates` of the best acceptable platform (the first of equally good
    /// ones, as containerd's stable sort keeps index order), `None` when none is acceptable.
    pub fn best<'a, I>(&self, candidates: I) -> Option<usize>
    where
        I: IntoIterator<Item = &'a Platform>,
    {
        candidates
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| self.rank(p).map(|r| (r, i)))
            .min()
            .map(|(_, i)| i)
    }
}

/// BuildKit's predefined platform ARGs for a build running on `build` that targets `target`,
/// in BuildKit's order: `BUILDPLATFORM`, `BUILDOS`, `BUILDOSVERSION`, `BUILDARCH`,
/// `BUILDVARIANT`, `TARGETPLATFORM`, `TARGETOS`, `TARGETOSVERSION`, `TARGETARCH`,
/// `TARGETVARIANT`. Both platforms are normalized first, as BuildKit normalizes `--platform`
/// and its workers' platforms: `--platform linux/arm64/v8` gives `TARGETPLATFORM=linux/arm64`
/// and an empty `TARGETVARIANT`, `--platform linux/arm` gives `linux/arm/v7` and `v7`. The OS
/// versions are always empty (they exist for Windows). `TARGETSTAGE` belongs to the frontend.
pub fn build_args(build: &Platform, target: &Platform) -> Vec<(&'static str, String)> {
    let (b, t) = (build.normalize(), target.normalize());
    let variant = |p: &Platform| p.variant.clone().unwrap_or_default();
    vec![
        ("BUILDPLATFORM", b.to_string()),
        ("BUILDOS", b.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", b.architecture.clone()),
        ("BUILDVARIANT", variant(&b)),
        ("TARGETPLATFORM", t.to_string()),
        ("TARGETOS", t.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", t.architecture.clone()),
        ("TARGETVARIANT", variant(&t)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn host_os() -> &'static str {
        std::env::consts::OS
    }

    #[test]
    fn parses_and_prints() {
        let v7 = p("linux/arm/v7");
        assert_eq!(v7.variant.as_deref(), Some("v7"));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert_eq!(Platform::host().os, "linux");
        assert_eq!(
            Platform::new("linux", "amd64", Some("")).to_string(),
            "linux/amd64"
        );
        assert_eq!(Platform::new("", "amd64", None).to_string(), "unknown");
    }

    /// containerd's parse table (`TestParseSelector`): what each specifier parses to, and its
    /// formatted form, which parses back to itself.
    #[test]
    fn parse_vectors_from_containerd() {
        let host = Platform::host();
        let os = host_os();
        let cases: Vec<(&str, String)> = vec![
            ("linux/arm64", "linux/arm64".into()),
            ("linux/arm64/v8", "linux/arm64/v8".into()),
            ("linux/arm", "linux/arm".into()),
            ("linux/arm/v6", "linux/arm/v6".into()),
            ("linux/arm/v7", "linux/arm/v7".into()),
            ("arm", format!("{os}/arm")),
            ("armel", format!("{os}/arm/v6")),
            ("armhf", format!("{os}/arm")),
            ("Aarch64", format!("{os}/arm64")),
            ("x86_64", format!("{os}/amd64")),
            ("Linux/x86_64", "linux/amd64".into()),
            ("i386", format!("{os}/386")),
            ("linux", format!("linux/{}", host.architecture)),
            ("s390x", format!("{os}/s390x")),
            ("linux/s390x", "linux/s390x".into()),
            ("macOS", format!("darwin/{}", host.architecture)),
            ("windows", format!("windows/{}", host.architecture)),
            // kiln's own additions, same rules.
            ("arm64", format!("{os}/arm64")),
            ("Linux/AMD64", "linux/amd64".into()),
            ("linux/amd64/v2", "linux/amd64/v2".into()),
            ("linux/amd64/v1", "linux/amd64".into()),
            ("linux/x86-64/V3", "linux/amd64/v3".into()),
            ("linux/aarch64/8", "linux/arm64/v8".into()),
            ("linux/arm64/9.0", "linux/arm64/v9".into()),
            ("linux/arm/7", "linux/arm/v7".into()),
            ("linux/armhf", "linux/arm".into()),
            ("linux/i386/anything", "linux/386".into()),
            ("linux/riscv64", "linux/riscv64".into()),
        ];
        for (input, formatted) in cases {
            let parsed = p(input);
            assert_eq!(parsed.to_string(), formatted, "{input}");
            assert_eq!(p(&formatted), parsed, "{input}: the round trip changed it");
        }
    }

    #[test]
    fn parse_errors_say_why() {
        for (input, why) in [
            ("", "is not a valid OS"),
            ("linux//", "is not a valid component"),
            ("linux/amd64/", "is not a valid component"),
            ("lin ux/amd64", "is not a valid OS"),
            ("linux/*", "wildcards"),
            ("*", "wildcards"),
            ("linux/arm/v7/extra", "too many components"),
            ("toaster", "unknown operating system or architecture"),
            ("windows(10.0.17763)/amd64", "OS versions and features"),
        ] {
            let e = input.parse::<Platform>().expect_err(input).to_string();
            assert!(e.contains(why), "{input:?}: {e}");
            assert!(e.starts_with(&format!("invalid platform {input:?}")), "{e}");
        }
    }

    /// containerd's `NewMatcher` cases: every spelling of a platform matches it.
    #[test]
    fn spellings_match() {
        for (spec, same) in [
            (
                "linux/arm64",
                &["linux/aarch64", "linux/aarch64/v8", "linux/arm64/v8"][..],
            ),
            (
                "linux/arm64/v8",
                &["linux/aarch64", "linux/aarch64/v8", "linux/arm64"],
            ),
            ("linux/arm", &["linux/arm/v7", "linux/armhf", "linux/arm/7"]),
            ("linux/arm/v6", &["linux/armel"]),
            ("linux/arm/v7", &["linux/arm", "linux/armhf"]),
            ("linux/amd64", &["linux/x86_64", "linux/amd64/v1"]),
        ] {
            for other in same {
                let (a, b) = (p(spec), p(other));
                assert!(a.matches(&b), "{spec} should match {other}");
                assert!(b.matches(&a), "{other} should match {spec}");
            }
        }
        assert!(!p("linux/amd64").matches(&p("linux/amd64/v2")));
        assert!(!p("linux/arm64").matches(&p("linux/arm64/v9")));
        assert!(!p("linux/amd64").matches(&p("windows/amd64")));
    }

    #[test]
    fn normalization() {
        for (input, normal) in [
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/amd64/v1", "linux/amd64"),
            ("linux/amd64/v2", "linux/amd64/v2"),
            ("linux/arm64/v9.0", "linux/arm64/v9"),
        ] {
            assert_eq!(p(input).normalize().to_string(), normal, "{input}");
        }
        let odd = Platform::new("Linux", "AArch64", Some("V8"));
        assert_eq!(odd.normalize().to_string(), "linux/arm64");
        assert_eq!(Platform::host().normalize(), Platform::host());
    }

    /// containerd's `TestOnly` table: what an `Only(platform)` matcher accepts and refuses.
    #[test]
    fn only_vectors_from_containerd() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "linux/amd64",
                &["linux/amd64", "linux/386"],
                &[
                    "linux/amd64/v2",
                    "linux/arm/v7",
                    "linux/arm64",
                    "windows/amd64",
                    "windows/arm",
                ],
            ),
            (
                "linux/amd64/v2",
                &[
                    "linux/amd64",
                    "linux/amd64/v1",
                    "linux/amd64/v2",
                    "linux/386",
                ],
                &[
                    "linux/amd64/v3",
                    "linux/amd64/v4",
                    "linux/arm/v7",
                    "linux/arm64",
                ],
            ),
            (
                "linux/386",
                &["linux/386"],
                &["linux/amd64", "linux/arm/v7", "linux/arm64"],
            ),
            (
                "linux/arm/v8",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                ],
                &["linux/amd64", "linux/arm/v4", "linux/arm64"],
            ),
            (
                "linux/arm/v7",
                &["linux/arm", "linux/arm/v5", "linux/arm/v6", "linux/arm/v7"],
                &["linux/arm/v4", "linux/arm/v8", "linux/arm64"],
            ),
            (
                "linux/arm/v6",
                &["linux/arm/v5", "linux/arm/v6"],
                &["linux/arm", "linux/arm/v4", "linux/arm/v7"],
            ),
            (
                "linux/arm/v5",
                &["linux/arm/v5"],
                &["linux/arm", "linux/arm/v4", "linux/arm/v6"],
            ),
            (
                "linux/arm/v4",
                &["linux/arm/v4"],
                &["linux/arm", "linux/arm/v5"],
            ),
            (
                "linux/arm64/v9.6",
                &[
                    "linux/arm",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                    "linux/arm64/v8.9",
                    "linux/arm64/v9",
                    "linux/arm64/v9.0",
                    "linux/arm64/v9.6",
                ],
                &["linux/amd64", "linux/arm/v4", "linux/arm64/v8.10"],
            ),
            (
                "linux/arm64/v9",
                &[
                    "linux/arm",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8.5",
                    "linux/arm64/v9.0",
                ],
                &["linux/arm64/v8.6", "linux/amd64"],
            ),
            (
                "linux/arm64/v8.1",
                &["linux/arm/v5", "linux/arm64", "linux/arm64/v8.1"],
                &["linux/arm/v9", "linux/arm64/v9", "linux/arm64/v8.2"],
            ),
            (
                "linux/arm64",
                &[
                    "linux/arm",
                    "linux/arm/v5",
                    "linux/arm/v6",
                    "linux/arm/v7",
                    "linux/arm/v8",
                    "linux/arm64",
                    "linux/arm64/v8",
                ],
                &[
                    "linux/amd64",
                    "linux/arm/v4",
                    "linux/arm/v9",
                    "linux/arm64/v9",
                    "windows/arm",
                ],
            ),
        ];
        for (platform, yes, no) in cases {
            let m = PlatformMatcher::only(&p(platform));
            for other in *yes {
                assert!(m.matches(&p(other)), "Only({platform}) should take {other}");
            }
            for other in *no {
                assert!(
                    !m.matches(&p(other)),
                    "Only({platform}) should refuse {other}"
                );
            }
        }
    }

    /// containerd's `TestOnlyStrict`: no sub-platforms, any spelling.
    #[test]
    fn strict_matcher() {
        let m = PlatformMatcher::strict(&p("linux/amd64"));
        assert!(m.matches(&p("linux/x86_64")));
        assert!(!m.matches(&p("linux/386")));
        let m = PlatformMatcher::strict(&p("linux/arm/v7"));
        assert!(m.matches(&p("linux/arm")));
        assert!(!m.matches(&p("linux/arm/v6")));
        let m = PlatformMatcher::strict(&p("linux/arm64"));
        assert!(m.matches(&p("linux/aarch64/v8")));
        assert!(!m.matches(&p("linux/arm/v8")));
    }

    #[test]
    fn best_in_an_index() {
        let index: Vec<Platform> = [
            "linux/386",
            "linux/amd64",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/amd64/v3",
        ]
        .iter()
        .map(|s| p(s))
        .collect();
        let best = |want: &str| PlatformMatcher::only(&p(want)).best(&index);
        // The exact platform beats a compatible one listed before it.
        assert_eq!(best("linux/amd64"), Some(1));
        // amd64/v2 prefers v1 (plain amd64) to 386; it cannot take v3.
        assert_eq!(best("linux/amd64/v2"), Some(1));
        assert_eq!(best("linux/amd64/v4"), Some(5));
        assert_eq!(best("linux/arm64"), Some(4));
        assert_eq!(best("linux/arm"), Some(3));
        assert_eq!(best("linux/arm/v6"), Some(2));
        assert_eq!(best("linux/s390x"), None);
        // Without arm64 in the index, an arm64 machine takes 32-bit arm, the newest first.
        let arm_only = &index[..4];
        assert_eq!(
            PlatformMatcher::only(&p("linux/arm64")).best(arm_only),
            Some(3)
        );
        // Equally good entries: the first listed.
        let twice = [p("linux/arm64"), p("linux/aarch64/v8")];
        assert_eq!(PlatformMatcher::only(&p("arm64")).best(&twice), Some(0));
    }

    #[test]
    fn compatible_lists_best_first() {
        let names = |s: &str| -> Vec<String> {
            p(s).compatible().iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            names("linux/amd64/v3"),
            [
                "linux/amd64/v3",
                "linux/amd64/v2",
                "linux/amd64",
                "linux/386"
            ]
        );
        assert_eq!(
            names("linux/arm64/v8.1"),
            [
                "linux/arm64/v8.1",
                "linux/arm64",
                "linux/arm/v8",
                "linux/arm/v7",
                "linux/arm/v6",
                "linux/arm/v5"
            ]
        );
        assert_eq!(names("linux/s390x"), ["linux/s390x"]);
        assert!(p("linux/arm64/v7").compatible().is_empty());
    }

    /// BuildKit's values of the predefined ARGs (`platformArgs` / `defaultArgs` in
    /// dockerfile2llb) for a target normalized as `dockerui.parsePlatforms` does.
    #[test]
    fn buildkit_platform_args() {
        let args = |build: &str, target: &str| -> Vec<String> {
            build_args(&p(build), &p(target))
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        };
        assert_eq!(
            args("linux/amd64", "linux/arm64/v8"),
            [
                "BUILDPLATFORM=linux/amd64",
                "BUILDOS=linux",
                "BUILDOSVERSION=",
                "BUILDARCH=amd64",
                "BUILDVARIANT=",
                "TARGETPLATFORM=linux/arm64",
                "TARGETOS=linux",
                "TARGETOSVERSION=",
                "TARGETARCH=arm64",
                "TARGETVARIANT=",
            ]
        );
        let arm = args("linux/amd64", "arm");
        assert!(arm.contains(&format!("TARGETPLATFORM={}/arm/v7", host_os())));
        assert!(arm.contains(&"TARGETVARIANT=v7".to_owned()));
        let v2 = args("x86_64", "Linux/AMD64/V2");
        assert!(v2.contains(&"TARGETPLATFORM=linux/amd64/v2".to_owned()));
        assert!(v2.contains(&"TARGETVARIANT=v2".to_owned()));
        assert!(v2.contains(&format!("BUILDPLATFORM={}/amd64", host_os())));
    }
}
