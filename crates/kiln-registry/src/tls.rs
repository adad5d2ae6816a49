//! TLS to registries: which certificates verify a registry and which one kiln presents to it.
//!
//! A registry reached over https is verified against the system's trust store (Debian's
//! `ca-certificates`, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set), read once per process and
//! only when some registry is https, plus the CAs given for that host: kiln.toml's `ca` and
//! docker's `/etc/docker/certs.d/HOST[:PORT]/*.crt`. A client certificate comes from kiln.toml's
//! `keypair` or from certs.d's `*.cert` with its `*.key`, as docker and BuildKit read them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{Error, HostOptions};

/// docker's directory of per-registry certificates: `HOST[:PORT]/{*.crt, *.cert, *.key}`.
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";

/// A client certificate (PEM, the chain leaf first) and its private key (PEM), presented to
/// a registry that asks for one (mutual TLS): BuildKit's `[[registry."host".keypair]]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPair {
    /// The certificate file.
    pub cert: PathBuf,
    /// The private key file.
    pub key: PathBuf,
}

/// The certificate files one host uses beyond the system's: kiln.toml's first, then certs.d's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct HostTls {
    /// CA files (PEM), added to the system's roots.
    pub cas: Vec<PathBuf>,
    /// Client certificates with their keys; the first is presented.
    pub keypairs: Vec<KeyPair>,
}

impl HostTls {
    /// Whether the host has certificate files of its own.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty() && self.keypairs.is_empty()
    }
}

/// The certificate files of `host`: its kiln.toml settings, then `certs_dir/host/` read as
/// docker reads it (`*.crt` are CAs, each `*.cert` goes with the `*.key` of the same name).
/// A missing or unreadable-for-permission directory is no files, as in BuildKit.
pub(crate) fn gather(
    host: &str,
    opts: Option<&HostOptions>,
    certs_dir: &Path,
) -> Result<HostTls, Error> {
    let mut tls = HostTls::default();
    if let Some(o) = opts {
        tls.cas.extend(o.ca.iter().cloned());
        tls.keypairs.extend(o.keypairs.iter().cloned());
    }
    let dir = certs_dir.join(host);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(tls)
        }
        Err(e) => {
            return Err(Error::Tls {
                registry: host.to_owned(),
                why: format!("cannot read {}: {e}", dir.display()),
            })
        }
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::Tls {
            registry: host.to_owned(),
            why: format!("cannot read {}: {e}", dir.display()),
        })?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    // Sorted, so that which client certificate comes first does not depend on the directory.
    names.sort();
    for name in &names {
        if name.ends_with(".crt") {
            tls.cas.push(dir.join(name));
        } else if let Some(base) = name.strip_suffix(".cert") {
            let key = format!("{base}.key");
            if !names.contains(&key) {
                return Err(Error::Tls {
                    registry: host.to_owned(),
                    why: format!(
                        "client certificate {} has no key {} (docker's certs.d convention: \
                         NAME.cert goes with NAME.key)",
                        dir.join(name).display(),
                        dir.join(&key).display()
                    ),
                });
            }
            tls.keypairs.push(KeyPair {
                cert: dir.join(name),
                key: dir.join(key),
            });
        } else if let Some(base) = name.strip_suffix(".key") {
            if !names.contains(&format!("{base}.cert")) {
                return Err(Error::Tls {
                    registry: host.to_owned(),
                    why: format!(
                        "key {} has no client certificate {base}.cert beside it (docker's \
                         certs.d convention: NAME.key goes with NAME.cert)",
                        dir.join(name).display()
                    ),
                });
            }
        }
    }
    Ok(tls)
}

/// The system's CA certificates, read on first use and kept for the process.
fn system_roots() -> &'static SystemRoots {
    static ROOTS: OnceLock<SystemRoots> = OnceLock::new();
    ROOTS.get_or_init(|| {
        SYSTEM_ROOT_LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let found = rustls_native_certs::load_native_certs();
        SystemRoots {
            certs: found.certs,
            errors: found.errors.iter().map(|e| e.to_string()).collect(),
        }
    })
}

/// How many times the system roots were read (once per process at most).
static SYSTEM_ROOT_LOADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct SystemRoots {
    certs: Vec<CertificateDer<'static>>,
    /// Why some locations could not be read.
    errors: Vec<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The rustls configuration for https to `host`: the server verified against the system's
/// roots and `tls.cas` (or not at all when `verify` is false: `insecure = true`), the first
/// keypair presented when the server asks for a client certificate.
pub(crate) fn client_config(
    host: &str,
    tls: &HostTls,
    verify: bool,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let tls_err = |why: String| Error::Tls {
        registry: host.to_owned(),
        why,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("TLS setup: {e}")))?;
    let builder = if verify {
        let mut roots = rustls::RootCertStore::empty();
        let system = system_roots();
        // Some system bundles hold certificates webpki cannot parse; the others still count.
        roots.add_parsable_certificates(system.certs.iter().cloned());
        for ca in &tls.cas {
            let certs = read_certs(ca).map_err(|why| tls_err(format!("CA file {why}")))?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    tls_err(format!(
                        "CA file {}: not a usable CA certificate: {e}",
                        ca.display()
                    ))
                })?;
            }
        }
        if roots.is_empty() {
            return Err(Error::NoCaCertificates {
                registry: host.to_owned(),
                why: system.errors.join("; "),
            });
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    match tls.keypairs.first() {
        None => Ok(builder.with_no_client_auth()),
        Some(pair) => {
            let chain = read_certs(&pair.cert)
                .map_err(|why| tls_err(format!("client certificate {why}")))?;
            let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| {
                tls_err(format!(
                    "client key {}: {} (expected a PEM private key)",
                    pair.key.display(),
                    pem_error(&e)
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                tls_err(format!(
                    "client certificate {} with key {}: {e}",
                    pair.cert.display(),
                    pair.key.display()
                ))
            })
        }
    }
}

/// The certificates of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {}", path.display(), pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "nothing found in it".to_owned(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// A certificate problem, in words and with what to do about it; `None` when `e` is not about
/// a certificate. `client_cert`: whether kiln presented one.
pub(crate) fn describe(registry: &str, e: &rustls::Error, client_cert: bool) -> Option<String> {
    let add_ca = format!(
        "add its CA to [registry.\"{registry}\"] ca in kiln.toml, to \
         {DOCKER_CERTS_DIR}/{registry}/ca.crt, or to the system's trust store \
         (update-ca-certificates, or SSL_CERT_FILE)"
    );
    let problem = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                format!("the certificate is not trusted (unknown issuer): {add_ca}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let presented = match c {
                    CertificateError::NotValidForNameContext { presented, .. } => {
                        let names: Vec<&str> = presented.iter().map(|n| bare_name(n)).collect();
                        format!(" (it is for {})", names.join(", "))
                    }
                    _ => String::new(),
                };
                format!(
                    "the certificate is not valid for the name {}{presented}: reach the \
                     registry by a name its certificate has, or give it a certificate for this \
                     name",
                    host_name(registry)
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the certificate has expired: the registry needs a new one".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the certificate is not valid yet (check this machine's clock)".to_owned()
            }
            CertificateError::Revoked => "the certificate has been revoked".to_owned(),
            CertificateError::BadSignature => {
                format!("the certificate's signature is invalid: {add_ca}")
            }
            other => format!("the certificate is not accepted ({other:?})"),
        },
        // The server's alerts about the client's certificate (Go's registry answers a missing
        // one with `bad_certificate` under TLS 1.3, `certificate_required` is the newer name).
        rustls::Error::AlertReceived(alert) => {
            use rustls::AlertDescription as A;
            match alert {
                A::CertificateRequired
                | A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::AccessDenied => {
                    if client_cert {
                        format!(
                            "the registry refused kiln's client certificate ({alert:?}): check \
                             that it is signed by a CA the registry trusts, is valid now and is \
                             for client authentication"
                        )
                    } else {
                        format!(
                            "the registry requires a client certificate ({alert:?}): give one \
                             with [[registry.\"{registry}\".keypair]] cert and key in kiln.toml, \
                             or as {DOCKER_CERTS_DIR}/{registry}/client.cert and client.key"
                        )
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(problem)
}

/// `x` of rustls's `DnsName("x")` / `IpAddress(x)` words for a name in a certificate.
fn bare_name(n: &str) -> &str {
    match (n.find('('), n.ends_with(')')) {
        (Some(open), true) => n[open + 1..n.len() - 1].trim_matches('"'),
        _ => n,
    }
}

/// `host` of `host:port` (`[v6]:port` keeps its brackets).
fn host_name(registry: &str) -> &str {
    match registry.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            if h.starts_with('[') || !h.contains(':') {
                h
            } else {
                registry
            }
        }
        _ => registry,
    }
}

/// The first rustls error in `e`'s chain. A handshake error is an `io::Error` around it, at
/// times inside another `io::Error`, whose `source()` skips the error it wraps: look inside.
pub(crate) fn rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        if let Some(r) = rustls_error(inner) {
            return Some(r);
        }
    }
    rustls_error(e.source()?)
}

/// Accepts any server certificate (still checking the handshake's signatures): hosts with
/// `insecure = true`, which the user chose not to verify.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the `openssl` CLI (the TLS registry tests of this crate need it too); fails the
    /// test, naming the package, when it is missing.
    fn openssl(args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl (Debian package openssl) is required for this test");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn make_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (key, cert) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.pem")),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
            "-days",
            "2",
            "-subj",
            &format!("/CN=kiln unit {name}"),
        ]);
        (cert, key)
    }

    fn opts(ca: &[PathBuf], keypairs: &[KeyPair]) -> HostOptions {
        HostOptions {
            ca: ca.to_vec(),
            keypairs: keypairs.to_vec(),
            ..HostOptions::default()
        }
    }

    #[test]
    fn certs_dir_is_read_as_docker_reads_it_after_the_config() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = "127.0.0.1:5443";
        let dir = tmp.path().join(host);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in ["ca.crt", "other.crt", "client.cert", "client.key", "README"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        let from_config = KeyPair {
            cert: PathBuf::from("/conf/c.pem"),
            key: PathBuf::from("/conf/c.key"),
        };
        let o = opts(
            &[PathBuf::from("/conf/ca.pem")],
            std::slice::from_ref(&from_config),
        );
        let tls = gather(host, Some(&o), tmp.path()).expect("gather");
        assert_eq!(
            tls.cas,
            vec![
                PathBuf::from("/conf/ca.pem"),
                dir.join("ca.crt"),
                dir.join("other.crt")
            ]
        );
        assert_eq!(
            tls.keypairs,
            vec![
                from_config,
                KeyPair {
                    cert: dir.join("client.cert"),
                    key: dir.join("client.key"),
                }
            ]
        );
        // Another host, or none of this directory: nothing but the config.
        let none = gather("127.0.0.1:5444", None, tmp.path()).expect("gather");
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn a_certs_dir_client_cert_without_its_key_is_an_error_naming_both() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("reg.example.com");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("client.cert"), "x").expect("write");
        let e = gather("reg.example.com", None, tmp.path()).expect_err("no key");
        let text = e.to_string();
        assert!(text.contains("reg.example.com"), "{text}");
        assert!(text.contains("client.cert has no key"), "{text}");
        assert!(text.contains("client.key"), "{text}");

        std::fs::remove_file(dir.join("client.cert")).expect("rm");
        std::fs::write(dir.join("lone.key"), "x").expect("write");
        let text = gather("reg.example.com", None, tmp.path())
            .expect_err("no cert")
            .to_string();
        assert!(
            text.contains("lone.key has no client certificate"),
            "{text}"
        );
    }

    #[test]
    fn config_ca_and_keypair_make_a_tls_config_and_bad_files_are_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (ca, _) = make_pair(tmp.path(), "ca");
        let (cert, key) = make_pair(tmp.path(), "client");
        let pair = KeyPair { cert, key };
        let tls =
            gather("reg.example.com", Some(&opts(&[ca], &[pair])), tmp.path()).expect("gather");
        let config = client_config("reg.example.com", &tls, true).expect("tls config");
        assert!(config.client_auth_cert_resolver.has_certs());
        // The system roots were read, once, however many clients are made.
        client_config("other.example.com", &HostTls::default(), true).expect("tls config");
        assert_eq!(
            SYSTEM_ROOT_LOADS.load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        let not_pem = tmp.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").expect("write");
        let bad = HostTls {
            cas: vec![not_pem.clone()],
            keypairs: Vec::new(),
        };
        let text = client_config("reg.example.com", &bad, true)
            .expect_err("not a CA")
            .to_string();
        assert!(text.contains("reg.example.com"), "{text}");
        assert!(text.contains(&not_pem.display().to_string()), "{text}");
        assert!(text.contains("no certificate"), "{text}");

        let missing = tmp.path().join("missing.key");
        let bad = HostTls {
            cas: Vec::new(),
            keypairs: vec![KeyPair {
                cert: tls.keypairs[0].cert.clone(),
                key: missing.clone(),
            }],
        };
        let text = client_config("reg.example.com", &bad, false)
            .expect_err("no key")
            .to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
    }

    #[test]
    fn certificate_problems_name_the_host_and_what_to_do() {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let text = describe("127.0.0.1:5443", &unknown, false).expect("a certificate problem");
        assert!(
            text.starts_with("the certificate is not trusted (unknown issuer)"),
            "{text}"
        );
        assert!(text.contains("[registry.\"127.0.0.1:5443\"] ca"), "{text}");
        assert!(
            text.contains("/etc/docker/certs.d/127.0.0.1:5443/ca.crt"),
            "{text}"
        );
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        let text = describe("reg.example.com:5000", &name, false).expect("name");
        assert!(
            text.contains("not valid for the name reg.example.com:"),
            "{text}"
        );
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(describe("r", &expired, false)
            .expect("expired")
            .contains("expired"));
        let required = rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired);
        let text = describe("r:1", &required, false).expect("required");
        assert!(text.contains("requires a client certificate"), "{text}");
        assert!(text.contains("[[registry.\"r:1\".keypair]]"), "{text}");
        let refused = rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate);
        let text = describe("r:1", &refused, true).expect("refused");
        assert!(text.contains("refused kiln's client certificate"), "{text}");
        assert!(describe("r", &rustls::Error::DecryptError, false).is_none());
        assert_eq!(bare_name("DnsName(\"a.example\")"), "a.example");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
    }

    #[test]
    fn a_rustls_error_is_found_inside_nested_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let io = std::io::Error::other(io);
        let found = rustls_error(&io).expect("found");
        assert_eq!(
            found,
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }
}
