//! `kiln serve`: the build daemon (buildkitd's flag spellings: `--addr`, `--tlscacert`,
//! `--tlscert`, `--tlskey`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use kiln_engine::Engine;
use kiln_server::server::{serve, ServeConfig, ServerTls};
use kiln_server::Address;

use crate::{config, multiplatform};

/// `kiln serve` flags.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to listen: unix:///PATH or tcp://HOST:PORT (default: unix:///run/kiln/kiln.sock
    /// as root, unix://$XDG_RUNTIME_DIR/kiln/kiln.sock for an ordinary user, as rootless
    /// buildkitd).
    #[arg(long)]
    addr: Option<String>,
    /// The platforms this daemon builds, as reported to clients (default: the host's).
    #[arg(long)]
    platform: Option<String>,
    /// CA certificate clients' certificates must be signed by (tcp).
    #[arg(long, value_name = "FILE")]
    tlscacert: Option<PathBuf>,
    /// This daemon's certificate (tcp).
    #[arg(long, value_name = "FILE")]
    tlscert: Option<PathBuf>,
    /// This daemon's private key (tcp).
    #[arg(long, value_name = "FILE")]
    tlskey: Option<PathBuf>,
    /// Serve plain tcp without TLS: loopback addresses only.
    #[arg(long)]
    insecure: bool,
    /// Extra plugin directories.
    #[arg(long = "plugin-dir")]
    plugin_dirs: Vec<PathBuf>,
}

/// The address a daemon listens on without `--addr`: the system socket as root; the user's
/// runtime directory for an ordinary user (also inside rootless kiln's user namespace, where
/// it is uid 0), as rootless buildkitd does.
fn default_addr(env: &dyn Fn(&str) -> Option<std::ffi::OsString>) -> Result<String> {
    // SAFETY: geteuid takes nothing and cannot fail.
    let root = unsafe { libc::geteuid() } == 0 && !crate::rootless::is_rootless_child(env);
    if root {
        return Ok("unix:///run/kiln/kiln.sock".to_owned());
    }
    match env("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => {
            Ok(format!("unix://{}", dir.join("kiln/kiln.sock").display()))
        }
        _ => bail!(
            "kiln serve as an ordinary user listens in $XDG_RUNTIME_DIR/kiln/, and \
             XDG_RUNTIME_DIR is not set: pass --addr unix:///PATH (a directory you own)"
        ),
    }
}

/// Runs the daemon until SIGTERM or SIGINT: then running builds are cancelled, their sessions
/// end, the socket is removed and kiln exits 0.
pub fn run(settings: &config::Config, args: &ServeArgs) -> Result<ExitCode> {
    let addr = match &args.addr {
        Some(a) => a.clone(),
        None => default_addr(&|n| std::env::var_os(n))?,
    };
    let addr = Address::parse(&addr)?;
    let tls = match (&args.tlscacert, &args.tlscert, &args.tlskey) {
        (None, None, None) => None,
        (Some(cacert), Some(cert), Some(key)) => {
            if matches!(addr, Address::Unix(_)) {
                bail!("--tlscacert/--tlscert/--tlskey apply to a tcp:// --addr only");
            }
            Some(ServerTls {
                cacert: cacert.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })
        }
        _ => bail!(
            "mutual TLS needs all of --tlscacert (the clients' CA), --tlscert and --tlskey (the \
             daemon's certificate and key)"
        ),
    };
    let platforms = match &args.platform {
        Some(p) => multiplatform::parse_platforms(p)?,
        None => Vec::new(),
    };
    // As `kiln build`: while kiln is one thread, its builds' mounts go into a namespace of
    // their own that vanishes with the daemon.
    if let Err(e) = kiln_engine::isolate_mounts() {
        eprintln!("WARNING: {e}: a killed daemon may leave mounts behind");
    }
    let mut engine = Engine::new(settings.engine_config(&args.plugin_dirs, &[]))
        .context("opening the kiln store")?;
    for r in engine.plugins().refused() {
        eprintln!("WARNING: plugin refused: {r}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The daemon's own kiln.toml says which unpinned plugin references its builds may pull
    // (`# syntax=` travels in the build file) and which plugins it pulls for every build.
    engine.allow_plugins(settings.plugin_allow_with(&[]));
    for line in rt.block_on(engine.add_plugins(&settings.plugin_pull_with(&[])))? {
        eprintln!("{line}");
    }
    rt.block_on(serve(
        engine,
        ServeConfig {
            addr,
            platforms,
            root: settings.root.value.clone(),
            insecure: args.insecure,
            tls,
        },
        stop_signal(),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves at the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action (exit) applies: nothing to wait for.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::default_addr;

    #[test]
    fn rootless_daemons_listen_in_the_users_runtime_dir() {
        let rootless = |xdg: Option<&'static str>| {
            move |n: &str| match n {
                "KILN_ROOTLESS" => Some("1".into()),
                "XDG_RUNTIME_DIR" => xdg.map(Into::into),
                _ => None,
            }
        };
        assert_eq!(
            default_addr(&rootless(Some("/run/user/1001"))).unwrap(),
            "unix:///run/user/1001/kiln/kiln.sock"
        );
        let err = default_addr(&rootless(None)).unwrap_err().to_string();
        assert!(
            err.contains("XDG_RUNTIME_DIR") && err.contains("--addr"),
            "{err}"
        );
        let err = default_addr(&rootless(Some("relative")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
        // SAFETY: geteuid takes nothing and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(
                default_addr(&|_| None).unwrap(),
                "unix:///run/kiln/kiln.sock"
            );
        }
    }
}
