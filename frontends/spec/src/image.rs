//! The image config a stage's `image` table sets: commands, ports, signals, health checks,
//! with the rules of the Dockerfile instructions they stand for.

use kiln_plugin_sdk::signal;
use kiln_types::image::Healthcheck;
use kiln_types::Platform;

use crate::error::{Error, Result};
use crate::schema::{Command, HealthSpec};

/// The shell of a stage (`shell`), `/bin/sh -c` by default.
pub(crate) fn default_shell(shell: Option<&[String]>, platform: &Platform) -> Vec<String> {
    match shell.filter(|s| !s.is_empty()) {
        Some(s) => s.to_vec(),
        None if platform.os == "windows" => vec!["cmd".into(), "/S".into(), "/C".into()],
        None => vec!["/bin/sh".into(), "-c".into()],
    }
}

/// ENTRYPOINT/CMD arguments: a list as is, a string through the shell.
pub(crate) fn command_args(
    shell: Option<&[String]>,
    platform: &Platform,
    c: &Command,
) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut args = default_shell(shell, platform);
            args.push(s.clone());
            args
        }
    }
}

/// `healthcheck` → the config's, durations in nanoseconds.
pub(crate) fn healthcheck(h: &HealthSpec) -> Healthcheck {
    let test = match &h.cmd {
        None => vec!["NONE".to_owned()],
        Some(Command::Exec(v)) => std::iter::once("CMD".to_owned())
            .chain(v.iter().cloned())
            .collect(),
        Some(Command::Shell(s)) => vec!["CMD-SHELL".to_owned(), s.clone()],
    };
    Healthcheck {
        test,
        interval: h.interval.unwrap_or(0),
        timeout: h.timeout.unwrap_or(0),
        start_period: h.start_period.unwrap_or(0),
        start_interval: h.start_interval.unwrap_or(0),
        retries: h.retries.unwrap_or(0),
    }
}

/// An `expose` entry → `port/proto` keys: `80`, `80/tcp`, `53/udp`, `8000-8002/tcp`.
pub(crate) fn parse_port(raw: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::invalid(format!("invalid port {raw:?}: {why}"));
    let (ports, proto) = raw.split_once('/').unwrap_or((raw, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        return Err(bad("the protocol is tcp, udp or sctp"));
    }
    let number = |p: &str| p.parse::<u16>().map_err(|_| bad("a port is 0 to 65535"));
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            let p = number(ports)?;
            (p, p)
        }
    };
    if last < first {
        return Err(bad("a range goes from low to high"));
    }
    Ok((first..=last).map(|p| format!("{p}/{proto}")).collect())
}

/// Stop signals docker accepts (see [`signal::is_stop_signal`]).
pub(crate) fn check_signal(sig: &str) -> Result<()> {
    if signal::is_stop_signal(sig) {
        Ok(())
    } else {
        Err(Error::invalid(format!("invalid stop signal {sig:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_signals() {
        assert_eq!(parse_port("80").unwrap(), ["80/tcp"]);
        assert_eq!(parse_port("53/UDP").unwrap(), ["53/udp"]);
        assert_eq!(
            parse_port("1-3/sctp").unwrap(),
            ["1/sctp", "2/sctp", "3/sctp"]
        );
        for bad in ["x", "80/foo", "3-1", "70000", ""] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
        // docker's rule (the SDK's, the Dockerfile frontend's), real-time offsets included.
        assert!(check_signal("SIGRTMIN+3").is_ok());
        assert_eq!(
            check_signal("SIGNOPE").unwrap_err().to_string(),
            "invalid stop signal \"SIGNOPE\""
        );
    }

    #[test]
    fn commands_go_through_the_stage_shell() {
        let linux: Platform = "linux/amd64".parse().unwrap();
        let bash = ["/bin/bash".to_owned(), "-c".to_owned()];
        let shell = Command::Shell("run it".into());
        assert_eq!(
            command_args(None, &linux, &shell),
            ["/bin/sh", "-c", "run it"]
        );
        assert_eq!(
            command_args(Some(&bash), &linux, &shell),
            ["/bin/bash", "-c", "run it"]
        );
        let exec = Command::Exec(vec!["/app".into()]);
        assert_eq!(command_args(Some(&bash), &linux, &exec), ["/app"]);
        let none = healthcheck(&HealthSpec::default());
        assert_eq!(none.test, ["NONE"]);
    }
}
