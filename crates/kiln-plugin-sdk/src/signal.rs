//! Stop signals (`STOPSIGNAL`, an image config's `StopSignal`) as docker accepts them.

/// Signal names without `SIG`, as docker's `signal.SignalMap` knows them on Linux.
const NAMES: [&str; 36] = [
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN",
];

/// Whether docker takes `sig` as a stop signal: a positive number, or a signal name with or
/// without `SIG`, in any case (`SIGTERM`, `term`), `RTMAX`, or `RTMIN+n`/`RTMAX-n` for n from 1
/// to 15.
pub fn is_stop_signal(sig: &str) -> bool {
    match sig.parse::<i64>() {
        Ok(n) => n > 0,
        Err(_) => {
            let upper = sig.to_uppercase();
            let name = upper.strip_prefix("SIG").unwrap_or(&upper);
            NAMES.contains(&name)
                || ["RTMIN+", "RTMAX-"].iter().any(|p| {
                    name.strip_prefix(p)
                        .and_then(|n| n.parse::<u8>().ok())
                        .is_some_and(|n| (1..=15).contains(&n))
                })
                || name == "RTMAX"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_signals() {
        for ok in [
            "SIGTERM",
            "TERM",
            "9",
            "sigkill",
            "RTMAX",
            "SIGRTMIN+3",
            "RTMAX-15",
        ] {
            assert!(is_stop_signal(ok), "{ok:?}");
        }
        for bad in ["0", "-1", "SIGNOPE", "", "RTMIN+0", "RTMAX-16", "SIG"] {
            assert!(!is_stop_signal(bad), "{bad:?}");
        }
    }
}
