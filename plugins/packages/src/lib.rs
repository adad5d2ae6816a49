//! The `PACKAGES` instruction plugin: `PACKAGES <manager> <package>...` installs packages with
//! the RUN people write by hand to keep downloads in cache mounts across builds (BuildKit's
//! reference, "RUN --mount=type=cache"), so a changed package list re-downloads only what is
//! new, and the downloads never land in a layer:
//!
//! | manager | runs | cache mounts |
//! |---|---|---|
//! | `apt` (`apt-get`) | keeps downloaded `.deb`s (drops `docker-clean`), `apt-get update`, `apt-get install -y --no-install-recommends` | `/var/cache/apt`, `/var/lib/apt` (`sharing=locked`: apt wants them alone) |
//! | `apk` | links `/etc/apk/cache` to the mount (apk caches only then), `apk add --update-cache` | `/var/cache/apk` (`sharing=locked`) |
//! | `pip` (`pip3`) | `pip install` | `/root/.cache/pip` |
//! | `npm` | `npm install --global` | `/root/.npm` |
//!
//! The plugin answers with an [`Expansion`]: one RUN line in place of the instruction, at the
//! same file and line, which the frontend dispatches as any RUN (SHELL, USER, WORKDIR, ARGs and
//! ENV apply; errors point at the PACKAGES line). Package words go to the shell as written
//! (so `$VERSION` expands), quoted when they hold characters the shell would interpret
//! (`requests>=2` stays one argument).
//!
//! Architecture invariant: depends on `kiln-plugin-sdk` only.

use kiln_plugin_sdk::proto::{
    ErrorKind, Expansion, InstructionRequest, InstructionResponse, PluginError,
};
use kiln_plugin_sdk::{Host, Instruction};

/// The package managers `PACKAGES` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// Debian and Ubuntu.
    Apt,
    /// Alpine.
    Apk,
    /// Python.
    Pip,
    /// Node.js (global installs).
    Npm,
}

/// Every manager name accepted, for messages.
const NAMES: &str = "apt, apk, pip, npm";

impl Manager {
    /// The manager `name` designates (`apt-get` and `pip3` are aliases).
    pub fn from_name(name: &str) -> Option<Manager> {
        match name.to_ascii_lowercase().as_str() {
            "apt" | "apt-get" => Some(Manager::Apt),
            "apk" => Some(Manager::Apk),
            "pip" | "pip3" => Some(Manager::Pip),
            "npm" => Some(Manager::Npm),
            _ => None,
        }
    }

    /// The RUN instruction installing `packages` (already shell words).
    pub fn run_line(self, packages: &str) -> String {
        match self {
            Manager::Apt => format!(
                "RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
                 --mount=type=cache,target=/var/lib/apt,sharing=locked \
                 rm -f /etc/apt/apt.conf.d/docker-clean && \
                 echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/keep-cache && \
                 apt-get update && \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages}"
            ),
            Manager::Apk => format!(
                "RUN --mount=type=cache,target=/var/cache/apk,sharing=locked \
                 ln -sfn /var/cache/apk /etc/apk/cache && \
                 apk add --update-cache {packages}"
            ),
            Manager::Pip => format!(
                "RUN --mount=type=cache,target=/root/.cache/pip pip install {packages}"
            ),
            Manager::Npm => format!(
                "RUN --mount=type=cache,target=/root/.npm npm install --global {packages}"
            ),
        }
    }
}

/// `PACKAGES <manager> <package>...` → the RUN line to run in its place.
pub fn lower(req: InstructionRequest) -> Result<InstructionResponse, PluginError> {
    if !req.accepts_expansion {
        return Err(PluginError::unsupported(
            "PACKAGES needs a frontend that runs instruction expansions (kiln plugin protocol 3); the frontend of this build does not",
        ));
    }
    if let Some(flag) = req.flags.first() {
        return Err(invalid(format!("PACKAGES has no flags, got {flag}")));
    }
    let mut words = req.args.split_whitespace();
    let Some(name) = words.next() else {
        return Err(invalid(format!(
            "PACKAGES needs a package manager ({NAMES}) and the packages to install"
        )));
    };
    let manager = Manager::from_name(name).ok_or_else(|| {
        invalid(format!(
            "PACKAGES: unknown package manager {name:?} (expected one of {NAMES})"
        ))
    })?;
    let packages: Vec<String> = words.map(shell_word).collect();
    if packages.is_empty() {
        return Err(invalid(format!("PACKAGES {name}: no package to install")));
    }
    let source = manager.run_line(&packages.join(" "));
    let expansion = Expansion {
        file: req.location.file.clone(),
        source,
        first_line: req.location.line,
    };
    Ok(InstructionResponse::expand(req, expansion))
}

/// `word` as one shell word: as written when the shell would not split or interpret it
/// (variables included), single-quoted otherwise. Quotes around the whole word are the
/// user's own quoting and are removed first.
pub fn shell_word(word: &str) -> String {
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| word.strip_prefix(*q).and_then(|w| w.strip_suffix(*q)))
        .unwrap_or(word);
    let plain = !unquoted.is_empty()
        && unquoted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+:=@/,%${}".contains(c));
    if plain {
        unquoted.to_owned()
    } else {
        format!("'{}'", unquoted.replace('\'', r"'\''"))
    }
}

fn invalid(message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::InvalidInput, message)
}

/// The plugin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Packages;

impl Instruction for Packages {
    fn lower(
        &self,
        req: InstructionRequest,
        _host: &Host<'_>,
    ) -> Result<InstructionResponse, PluginError> {
        lower(req)
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "packages",
    version: env!("CARGO_PKG_VERSION"),
    instruction: Packages => ["PACKAGES"],
}

#[cfg(test)]
mod tests;
