//! Registries over https with a private CA (issue 13, item 5): a `docker-registry` of the
//! test's own serves TLS on a free loopback port with a test CA's certificate (`Certs`, made
//! by openssl), and `kiln build` pushes to it and pulls from it with the CA given in kiln.toml,
//! in the trust store (`SSL_CERT_FILE`), in `/etc/docker/certs.d/127.0.0.1:PORT/`, with a
//! client certificate when the registry asks for one, and without the CA (a clear error, and
//! never a plain-http request).
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_e2e::serve::Certs;
use kiln_e2e::{tool, Kiln};

/// A `docker-registry` serving TLS, its log in a file; killed when dropped.
struct TlsRegistry {
    /// `127.0.0.1:PORT`.
    addr: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsRegistry {
    /// Serves `certs`' server certificate; with `client_certs`, every client must present a
    /// certificate signed by the test CA (mutual TLS).
    fn start(certs: &Certs, client_certs: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            certs.path("server.pem"),
            certs.path("server.key")
        );
        if client_certs {
            tls.push_str(&format!(
                "    clientcas:\n      - {}\n",
                certs.path("ca.pem")
            ));
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n{tls}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) is required for this test");
        let r = TlsRegistry { addr, child, dir };
        // Ready when it listens; bounded, since a registry that never starts is a failure.
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&r.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {} within 15 s:\n{}",
                r.addr,
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the registry logged `n` failed TLS handshakes: Go's server logs
    /// one after the client has gone.
    fn handshake_errors(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.matches("TLS handshake error").count() >= n || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/etc/docker/certs.d/HOST/` made for one test and removed when dropped, even when the test
/// fails (the machine is left as it was).
struct CertsD(PathBuf);

impl CertsD {
    fn create(host: &str, files: &[(&str, PathBuf)]) -> Self {
        let dir = Path::new("/etc/docker/certs.d").join(host);
        assert!(
            !dir.exists(),
            "{} exists already: not this test's to change",
            dir.display()
        );
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create {} (needs root): {e}", dir.display()));
        let guard = CertsD(dir);
        for (name, from) in files {
            std::fs::copy(from, guard.0.join(name)).unwrap();
        }
        guard
    }
}

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn certs(k: &Kiln) -> Certs {
    Certs::make(&k.path("certs"))
}

/// Writes `kiln.toml` with `body` and returns the `--config` flag's value.
fn config(k: &Kiln, body: &str) -> String {
    let path = k.path("kiln.toml");
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

/// `kiln [--config FILE] build --progress=plain EXTRA CTX` with `env`.
fn build(
    k: &Kiln,
    env: &[(&str, &str)],
    config: Option<&str>,
    ctx: &Path,
    extra: &[&str],
) -> kiln_e2e::Run {
    let mut args = Vec::new();
    if let Some(c) = config {
        args.extend(["--config", c]);
    }
    args.extend(["build", "--progress=plain"]);
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run_env(env, &args)
}

/// Pushes a one-file scratch image to `registry/tls/app:1`, then builds `FROM` it into a
/// local directory (a pull of its manifest, config and layer) and reads the pushed image back
/// with skopeo trusting the test CA only (`cert_dir`, docker's certs.d layout).
fn push_then_pull(
    k: &Kiln,
    registry: &TlsRegistry,
    env: &[(&str, &str)],
    config: Option<&str>,
    cert_dir: &Path,
) {
    let name = format!("{}/tls/app:1", registry.addr);
    let pushed = k.write(
        "pushed",
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", "over tls\n"),
        ],
    );
    build(k, env, config, &pushed, &["-t", &name, "--push"]).ok();
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("--cert-dir={}", cert_dir.display()),
            &format!("docker://{name}"),
        ],
    );
    assert!(raw.contains("schemaVersion"), "{raw}");

    let pulled = k.write(
        "pulled",
        &[
            (
                "Dockerfile",
                &format!("FROM {name}\nCOPY more.txt /more.txt\n"),
            ),
            ("more.txt", "more\n"),
        ],
    );
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    build(k, env, config, &pulled, &["--output", &dest]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("hello.txt")).unwrap(),
        "over tls\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("more.txt")).unwrap(),
        "more\n"
    );
}

/// A certs.d-style directory for skopeo holding the test CA, and the client certificate when
/// `client` is true.
fn skopeo_certs(k: &Kiln, certs: &Certs, client: bool) -> PathBuf {
    let dir = k.path("skopeo-certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(certs.path("ca.pem"), dir.join("ca.crt")).unwrap();
    if client {
        std::fs::copy(certs.path("client.pem"), dir.join("client.cert")).unwrap();
        std::fs::copy(certs.path("client.key"), dir.join("client.key")).unwrap();
    }
    dir
}

#[test]
fn with_the_ca_only_in_kiln_toml_an_image_is_pushed_and_pulled() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, false);
    // A loopback host is plain http by default; one with a CA of its own is https.
    let c = config(
        &k,
        &format!(
            "[registry.\"{}\"]\nca = [\"{}\"]\n",
            registry.addr,
            certs.path("ca.pem")
        ),
    );
    push_then_pull(
        &k,
        &registry,
        &[],
        Some(&c),
        &skopeo_certs(&k, &certs, false),
    );
}

#[test]
fn with_the_ca_in_the_trust_store_an_image_is_pushed_and_pulled() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, false);
    // The system's bundle with the test CA added, as update-ca-certificates would make it;
    // SSL_CERT_FILE points kiln at it instead of /etc/ssl/certs, which stays unchanged.
    let system = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("/etc/ssl/certs/ca-certificates.crt (Debian package ca-certificates) is required");
    let bundle = k.path("bundle.pem");
    std::fs::write(
        &bundle,
        system + &std::fs::read_to_string(certs.path("ca.pem")).unwrap(),
    )
    .unwrap();
    let bundle = bundle.display().to_string();
    // Nothing names a CA for the host: `http = false` makes the loopback host https.
    let c = config(
        &k,
        &format!("[registry.\"{}\"]\nhttp = false\n", registry.addr),
    );
    let env = [("SSL_CERT_FILE", bundle.as_str())];
    push_then_pull(
        &k,
        &registry,
        &env,
        Some(&c),
        &skopeo_certs(&k, &certs, false),
    );
}

#[test]
fn with_the_ca_in_docker_certs_d_an_image_is_pushed_and_pulled_without_any_config() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, false);
    let _certs_d = CertsD::create(&registry.addr, &[("ca.crt", certs.dir.join("ca.pem"))]);
    // No kiln.toml: the certs.d directory alone makes the loopback host https and trusted.
    push_then_pull(&k, &registry, &[], None, &skopeo_certs(&k, &certs, false));
}

#[test]
fn a_registry_asking_for_a_client_certificate_gets_the_one_in_kiln_toml() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, true);
    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let name = format!("{}/tls/app:1", registry.addr);
    // The CA alone: the registry refuses the connection, and the message says what to give.
    let c = config(
        &k,
        &format!(
            "[registry.\"{}\"]\nca = [\"{}\"]\n",
            registry.addr,
            certs.path("ca.pem")
        ),
    );
    let r = build(&k, &[], Some(&c), &ctx, &["-t", &name, "--push"]).fails();
    assert!(
        r.stderr.contains(&format!(
            "registry {}: the registry requires a client certificate",
            registry.addr
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("[[registry.\"{}\".keypair]]", registry.addr)),
        "{}",
        r.stderr
    );

    let c = config(
        &k,
        &format!(
            "[registry.\"{}\"]\nca = [\"{}\"]\n[[registry.\"{}\".keypair]]\ncert = \"{}\"\n\
             key = \"{}\"\n",
            registry.addr,
            certs.path("ca.pem"),
            registry.addr,
            certs.path("client.pem"),
            certs.path("client.key")
        ),
    );
    push_then_pull(
        &k,
        &registry,
        &[],
        Some(&c),
        &skopeo_certs(&k, &certs, true),
    );
}

#[test]
fn a_registry_asking_for_a_client_certificate_gets_the_one_in_docker_certs_d() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, true);
    let _certs_d = CertsD::create(
        &registry.addr,
        &[
            ("ca.crt", certs.dir.join("ca.pem")),
            ("client.cert", certs.dir.join("client.pem")),
            ("client.key", certs.dir.join("client.key")),
        ],
    );
    push_then_pull(&k, &registry, &[], None, &skopeo_certs(&k, &certs, true));
}

#[test]
fn without_the_ca_the_build_fails_naming_the_host_and_the_certificate_and_never_tries_http() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, false);
    let c = config(
        &k,
        &format!("[registry.\"{}\"]\nhttp = false\n", registry.addr),
    );
    let name = format!("{}/tls/app:1", registry.addr);

    // Pull: FROM the registry.
    let ctx = k.write("pull", &[("Dockerfile", &format!("FROM {name}\n"))]);
    let started = Instant::now();
    let r = build(&k, &[], Some(&c), &ctx, &[]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "registry {}: the certificate is not trusted (unknown issuer)",
            registry.addr
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("[registry.\"{}\"] ca", registry.addr)),
        "{}",
        r.stderr
    );
    // Refused at once, not after a connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Push: the same refusal.
    let ctx = k.write(
        "push",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")],
    );
    let r = build(&k, &[], Some(&c), &ctx, &["-t", &name, "--push"]).fails();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("registry {}", registry.addr))
            && r.stderr.contains("certificate is not trusted"),
        "{}",
        r.stderr
    );

    // The registry saw handshakes fail, and never a plain-http request: Go's server logs one
    // as "client sent an HTTP request to an HTTPS server" (older ones: a first record that
    // "does not look like a TLS handshake").
    let log = registry.handshake_errors(2);
    assert!(log.matches("TLS handshake error").count() >= 2, "{log}");
    assert!(!log.contains("HTTP request to an HTTPS server"), "{log}");
    assert!(!log.contains("does not look like a TLS handshake"), "{log}");
}

#[test]
fn plugins_and_build_caches_travel_through_a_tls_registry_too() {
    let k = Kiln::new(&[]);
    let certs = certs(&k);
    let registry = TlsRegistry::start(&certs, false);
    let c = config(
        &k,
        &format!(
            "[registry.\"{}\"]\nca = [\"{}\"]\n",
            registry.addr,
            certs.path("ca.pem")
        ),
    );
    // A plugin pushed as an artifact, then pulled (pinned) as the build's frontend.
    let lib = kiln_e2e::plugin_lib("kiln-frontend-dockerfile");
    let reference = format!("{}/kiln/dockerfile:1", registry.addr);
    let pushed = k
        .run(&[
            "--config",
            &c,
            "plugins",
            "push",
            lib.to_str().unwrap(),
            &reference,
        ])
        .ok();
    let pinned = pushed.stdout.trim().to_owned();
    assert!(
        pinned.starts_with(&format!("{reference}@sha256:")),
        "{pinned}"
    );
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                &format!("# syntax={pinned}\nFROM scratch\nCOPY a.txt /a.txt\n"),
            ),
            ("a.txt", "cached over tls\n"),
        ],
    );
    // The build cache exported to the registry...
    let cache = format!("{}/tls/cache:1", registry.addr);
    let to = format!("type=registry,ref={cache},mode=max");
    let first = build(&k, &[], Some(&c), &ctx, &["--cache-to", &to]).ok();
    assert_eq!(first.step_state("COPY a.txt"), "DONE", "{}", first.stderr);
    // ...and imported by a fresh store.
    let other = k.path("other-store").display().to_string();
    let from = format!("type=registry,ref={cache}");
    let r = k
        .run(&[
            "--config",
            &c,
            "--root",
            &other,
            "build",
            "--progress=plain",
            "--cache-from",
            &from,
            ctx.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(r.step_state("COPY a.txt"), "CACHED", "{}", r.stderr);
}
