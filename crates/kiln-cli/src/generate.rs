//! `kiln generate completions SHELL` and `kiln generate man`: shell completions and the man page,
//! made from the same clap command the binary parses with, so they never drift from the flags.
//! Hidden: `cargo xtask dist` runs it to put them in the release tarball (xtask cannot depend on
//! kiln crates, so it asks the built binary).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Print shell completions or the man page (used by `cargo xtask dist`).
#[derive(clap::Args)]
#[command(hide = true)]
pub(crate) struct GenerateArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Completions for SHELL, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The kiln(1) man page (roff), on stdout.
    Man,
}

pub(crate) fn run(args: &GenerateArgs) -> Result<ExitCode> {
    let mut out = Vec::new();
    render(&args.what, &mut out)?;
    std::io::stdout()
        .lock()
        .write_all(&out)
        .context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn render(what: &What, out: &mut Vec<u8>) -> Result<()> {
    let mut cmd = crate::Cli::command();
    match what {
        What::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "kiln", out);
        }
        What::Man => {
            clap_mangen::Man::new(cmd)
                .render(out)
                .context("cannot render the man page")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(what: What) -> String {
        let mut out = Vec::new();
        render(&what, &mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn completions_and_man_page_know_the_build_flags_but_not_generate() {
        let bash = rendered(What::Completions {
            shell: clap_complete::Shell::Bash,
        });
        assert!(bash.contains("--build-arg"), "{bash}");
        assert!(bash.contains("--plugin-dir"), "{bash}");
        let man = rendered(What::Man);
        assert!(man.starts_with(".ie"), "{man}");
        assert!(man.contains("kiln\\-build"), "{man}");
        assert!(
            !man.contains("generate"),
            "the hidden subcommand stays out: {man}"
        );
    }

    #[test]
    fn generate_is_hidden_from_help() {
        let help = crate::Cli::command().render_help().to_string();
        assert!(help.contains("build"), "{help}");
        assert!(!help.contains("generate"), "{help}");
    }
}
