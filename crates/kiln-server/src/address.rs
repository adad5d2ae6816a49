//! Builder addresses, as buildkitd's `--addr` spells them: `unix:///path/to.sock` or
//! `tcp://HOST:PORT`.

use std::fmt;
use std::path::PathBuf;

use crate::Error;

/// Where a daemon listens and a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP host (name or IP, IPv6 without brackets) and port.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
}

impl Address {
    /// Parses `unix:///abs/path` or `tcp://host:port` (`tcp://[::1]:port` for IPv6).
    pub fn parse(text: &str) -> Result<Address, Error> {
        let bad = |why: &str| Error::Address {
            addr: text.to_owned(),
            why: why.to_owned(),
        };
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a unix socket path must be absolute (unix:///run/kiln/kiln.sock)",
                ));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected tcp://HOST:PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("expected tcp://HOST:PORT (no host)"));
            }
            let port = port
                .parse::<u16>()
                .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
            return Ok(Address::Tcp {
                host: host.to_owned(),
                port,
            });
        }
        Err(bad("expected unix:///PATH or tcp://HOST:PORT"))
    }

    /// Whether a tcp address is on loopback (where `--insecure` is allowed).
    pub fn is_loopback(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_buildkitd_spells_them() {
        assert_eq!(
            Address::parse("unix:///run/kiln/kiln.sock").unwrap(),
            Address::Unix("/run/kiln/kiln.sock".into())
        );
        let tcp = Address::parse("tcp://[::1]:1234").unwrap();
        assert_eq!(tcp.to_string(), "tcp://[::1]:1234");
        assert!(tcp.is_loopback());
        assert!(Address::parse("tcp://127.0.0.1:80").unwrap().is_loopback());
        assert!(!Address::parse("tcp://10.0.0.1:80").unwrap().is_loopback());
        for bad in [
            "unix://rel.sock",
            "tcp://host",
            "tcp://:1",
            "http://x",
            "tcp://h:99999",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
