//! `kiln serve` daemons of a test and the certificates a TLS daemon and its clients use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{tool, Background, Kiln};

/// How long a daemon may take to listen, or to print a line a test waits for.
const BOUND: Duration = Duration::from_secs(30);

/// A `kiln serve` of the test, with a store of its own; killed (SIGKILL) when dropped.
pub struct Daemon {
    /// The process; `None` once the test ended it itself.
    pub proc: Option<Background>,
    /// The address clients dial (`unix://...` or `tcp://127.0.0.1:<port>`).
    pub addr: String,
    /// Its store (`--root`).
    pub root: PathBuf,
}

impl Daemon {
    /// A daemon on the unix socket `sock` with the store `root` (paths in the test's
    /// directory), started with `flags` besides.
    pub fn unix(k: &Kiln, sock: &str, root: &str, flags: &[&str]) -> Daemon {
        let addr = format!("unix://{}", k.path(sock).display());
        let mut args = vec!["serve", "--addr", &addr];
        args.extend_from_slice(flags);
        let (proc, root) = start(k, root, &args, "listening on");
        Daemon {
            proc: Some(proc),
            addr,
            root,
        }
    }

    /// A daemon on `tcp://127.0.0.1:<a free port>` with the store `root` and `flags` (TLS or
    /// `--insecure`); its address is read back from its `listening on` line.
    pub fn tcp(k: &Kiln, root: &str, flags: &[&str]) -> Daemon {
        let mut args = vec!["serve", "--addr", "tcp://127.0.0.1:0"];
        args.extend_from_slice(flags);
        let (proc, root) = start(k, root, &args, "listening on tcp://");
        // Port 0: the daemon says which port it got.
        let addr = proc
            .seen
            .last()
            .and_then(|l| l.split("listening on ").nth(1))
            .expect("the address line")
            .trim()
            .to_owned();
        Daemon {
            proc: Some(proc),
            addr,
            root,
        }
    }

    /// A daemon on `tcp://127.0.0.1:<a free port>` with the store `root`, asking clients for a
    /// certificate `certs`' CA signed (mutual TLS).
    pub fn mutual_tls(k: &Kiln, root: &str, certs: &Certs) -> Daemon {
        let c = |name: &str| certs.path(name);
        let (ca, cert, key) = (c("ca.pem"), c("server.pem"), c("server.key"));
        Daemon::tcp(
            k,
            root,
            &["--tlscacert", &ca, "--tlscert", &cert, "--tlskey", &key],
        )
    }

    /// Its process id, for `kill`.
    pub fn pid(&self) -> String {
        self.proc.as_ref().expect("running").id().to_string()
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().expect("running").seen.join("\n")
    }

    /// Reads the daemon's log until a line holds `needle` (within 30 s); returns that line.
    pub fn line(&mut self, needle: &str) -> String {
        self.line_within(needle, BOUND)
    }

    /// Reads the daemon's log until a line holds `needle` (within `bound`); returns that line.
    pub fn line_within(&mut self, needle: &str, bound: Duration) -> String {
        let proc = self.proc.as_mut().expect("running");
        assert!(
            proc.wait_for_line(needle, bound),
            "the daemon ended before printing {needle:?}:\n{}",
            proc.seen.join("\n")
        );
        proc.seen.last().cloned().unwrap_or_default()
    }

    /// Whether the daemon's store holds blob `digest` (`sha256:...`).
    pub fn has_blob(&self, digest: &str) -> bool {
        self.root
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
            .is_file()
    }

    /// Sends SIGTERM and waits (30 s) for the daemon to end: its exit code and whole log.
    pub fn terminate(mut self) -> (i32, String) {
        let proc = self.proc.take().expect("running");
        tool("kill", &["-TERM", &proc.id().to_string()]);
        proc.finish(BOUND)
    }
}

/// Spawns `kiln --root <root> ARGS` and waits for `ready` in its log.
fn start(k: &Kiln, root: &str, args: &[&str], ready: &str) -> (Background, PathBuf) {
    let root = k.path(root);
    let r = root.display().to_string();
    let mut all = vec!["--root", &r];
    all.extend_from_slice(args);
    let mut proc = k.spawn(&[], &all);
    assert!(
        proc.wait_for_line(ready, BOUND),
        "kiln {} ended before listening:\n{}",
        args.join(" "),
        proc.seen.join("\n")
    );
    (proc, root)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(p) = &self.proc {
            // Best effort: the daemon may have ended already.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.id().to_string()])
                .status();
        }
    }
}

/// A CA (`ca.pem`, `ca.key`), and a server (`server.pem`, `server.key`) and a client
/// certificate (`client.pem`, `client.key`) it signed for 127.0.0.1 and localhost (EC P-256),
/// made with the `openssl` CLI in one directory.
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// Makes the certificates in `dir`.
    pub fn make(dir: &Path) -> Certs {
        make_certs(dir);
        Certs {
            dir: dir.to_owned(),
        }
    }

    /// The path of file `name` (`ca.pem`, `client.key`...).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The `--driver-opt` of a client presenting the client certificate.
    pub fn client_opt(&self) -> String {
        format!(
            "cacert={},cert={},key={}",
            self.path("ca.pem"),
            self.path("client.pem"),
            self.path("client.key")
        )
    }

    /// The `--driver-opt` of a client that trusts the CA but has no certificate of its own.
    pub fn ca_only_opt(&self) -> String {
        format!("cacert={}", self.path("ca.pem"))
    }
}

/// `openssl req` arguments making a fresh EC P-256 key, unencrypted.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    let d = |name: &str| dir.join(name).display().to_string();
    let (ca_key, ca_pem) = (d("ca.key"), d("ca.pem"));
    let mut ca = vec!["req", "-x509"];
    ca.extend(NEW_EC_KEY);
    ca.extend([
        "-keyout",
        &ca_key,
        "-out",
        &ca_pem,
        "-days",
        "2",
        "-subj",
        "/CN=kiln test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    tool("openssl", &ca);
    for (who, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let (key, csr, pem, ext) = (
            d(&format!("{who}.key")),
            d(&format!("{who}.csr")),
            d(&format!("{who}.pem")),
            d(&format!("{who}.ext")),
        );
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
            ),
        )
        .expect("write the certificate extensions");
        let subject = format!("/CN=kiln test {who}");
        let mut req = vec!["req", "-new"];
        req.extend(NEW_EC_KEY);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        tool("openssl", &req);
        tool(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// `kiln builder create --name NAME FLAGS ENDPOINT` in `k`'s sandbox.
pub fn builder_create(k: &Kiln, name: &str, flags: &[&str], endpoint: &str) -> crate::Run {
    let mut args = vec!["builder", "create", "--name", name];
    args.extend_from_slice(flags);
    args.push(endpoint);
    k.run(&args)
}
