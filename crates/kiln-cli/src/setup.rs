//! `kiln setup emulation [--platform P,...]`: registers the QEMU emulators of the platforms
//! asked for (every installed one when none is), as `docker run --privileged
//! tonistiigi/binfmt --install ...` does for BuildKit users, then prints what the host runs.
//! One line per platform goes to stderr; the status (`{"supported": [...], "emulators":
//! [...]}`, tonistiigi/binfmt's shape) goes to stdout for scripts.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_emulation::{Emulation, SetupOutcome, Support};
use kiln_types::Platform;

/// `kiln setup` subcommands.
#[derive(clap::Subcommand)]
pub enum SetupCommand {
    /// Register binfmt_misc handlers (with the F flag) for the QEMU emulators of other
    /// platforms, and print which platforms this host can build RUN steps for.
    Emulation(EmulationArgs),
}

/// `kiln setup emulation` flags.
#[derive(clap::Args)]
pub struct EmulationArgs {
    /// Platforms to make runnable (os/arch[/variant], comma-separated or repeated); default:
    /// every platform whose emulator (qemu-*-static) is installed.
    #[arg(long, value_delimiter = ',')]
    platform: Vec<String>,
}

/// Runs a `kiln setup` subcommand.
pub fn run(command: &SetupCommand) -> Result<ExitCode> {
    match command {
        SetupCommand::Emulation(args) => emulation(&Emulation::from_host(), args),
    }
}

fn emulation(emu: &Emulation, args: &EmulationArgs) -> Result<ExitCode> {
    let platforms = args
        .platform
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<Platform>().map(|p| p.normalize()))
        .collect::<Result<Vec<_>, _>>()
        .context("--platform")?;
    let outcomes = emu.setup(&platforms).context("setting up emulation")?;
    let mut failed = false;
    let mut log = String::new();
    for o in &outcomes {
        failed |= o.result.is_err();
        writeln!(log, "{}", describe(o)).expect("writing to a String cannot fail");
    }
    if outcomes.is_empty() {
        log.push_str(
            "no emulator to register: install the qemu-user-static package for other platforms\n",
        );
    }
    eprint!("{log}");
    let status = emu.status().context("reading the binfmt_misc handlers")?;
    let json = serde_json::to_string_pretty(&status).context("encoding the status")?;
    println!("{json}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line for one platform: `linux/arm64: registered qemu-aarch64 (...)`.
fn describe(o: &SetupOutcome) -> String {
    let what = match &o.result {
        Ok(Support::Native) => "runs natively".to_owned(),
        Ok(Support::Emulated {
            handler,
            registered: true,
        }) => format!(
            "registered {} ({}, flags {})",
            handler.name,
            handler.interpreter.display(),
            handler.flags
        ),
        Ok(Support::Emulated { handler, .. }) => format!(
            "already registered: {} ({}, flags {})",
            handler.name,
            handler.interpreter.display(),
            handler.flags
        ),
        Err(e) => format!("error: {e}"),
    };
    format!("{}: {what}", o.platform)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_sentences() {
        let native = SetupOutcome {
            platform: Platform::host(),
            result: Ok(Support::Native),
        };
        assert_eq!(
            describe(&native),
            format!("{}: runs natively", Platform::host())
        );
        let failed = SetupOutcome {
            platform: "linux/s390x".parse().expect("valid"),
            result: Err("no emulator".to_owned()),
        };
        assert_eq!(describe(&failed), "linux/s390x: error: no emulator");
    }

    #[test]
    fn a_bad_platform_is_refused_before_anything_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let emu = Emulation::with_dirs(dir.path(), &[]);
        let args = EmulationArgs {
            platform: vec!["linux/arm64/v8/x".to_owned()],
        };
        let err = emulation(&emu, &args).unwrap_err();
        assert!(
            format!("{err:#}").contains("too many components"),
            "{err:#}"
        );
    }
}
