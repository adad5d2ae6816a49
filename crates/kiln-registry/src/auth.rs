//! Credentials from the docker client's configuration: `config.json` `auths`, `credHelpers` and
//! `credsStore` (`docker-credential-<name> get`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::Error;

/// The key docker uses for Docker Hub in `auths` and with credential helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The parts of `config.json` that matter for pulling.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The loaded docker configuration.
#[derive(Debug)]
pub(crate) struct DockerConfig {
    path: PathBuf,
    file: ConfigFile,
}

impl DockerConfig {
    /// Reads `<dir>/config.json`, where `dir` is `explicit`, `$DOCKER_CONFIG` or `~/.docker`.
    /// A missing file means no credentials.
    pub(crate) fn load(explicit: Option<&Path>) -> Result<Self, Error> {
        let dir = match explicit {
            Some(d) => d.to_owned(),
            None => match std::env::var_os("DOCKER_CONFIG") {
                Some(d) => PathBuf::from(d),
                None => std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default()
                    .join(".docker"),
            },
        };
        let path = dir.join("config.json");
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::DockerConfig {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
            Err(e) => {
                return Err(Error::DockerConfig {
                    path,
                    why: e.to_string(),
                })
            }
        };
        Ok(DockerConfig { path, file })
    }

    /// Where the configuration is (or would be).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials for `registry` (a normalized host, `docker.io` for Docker Hub): a
    /// credential helper first, then `auths`, else anonymous. Runs a helper: call it off the
    /// async threads.
    pub(crate) fn credentials(&self, registry: &str) -> Result<RegistryAuth, Error> {
        let server = if registry == "docker.io" {
            DOCKER_HUB_SERVER
        } else {
            registry
        };
        let per_registry = self
            .file
            .cred_helpers
            .iter()
            .find(|(k, _)| normalize_key(k) == registry)
            .map(|(_, v)| v);
        if let Some(helper) = per_registry {
            if let Some(auth) = run_helper(helper, server, registry, true)? {
                return Ok(auth);
            }
        } else if let Some(store) = &self.file.creds_store {
            if let Some(auth) = run_helper(store, server, registry, false)? {
                return Ok(auth);
            }
        }
        let entry = self
            .file
            .auths
            .iter()
            .find(|(k, _)| normalize_key(k) == registry)
            .map(|(_, v)| v);
        let Some(entry) = entry else {
            return Ok(RegistryAuth::Anonymous);
        };
        if let Some(token) = &entry.registrytoken {
            return Ok(RegistryAuth::Bearer(token.clone()));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
        }
        if let Some(b64) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |why: &str| Error::DockerConfig {
                path: self.path.clone(),
                why: format!("auths.{registry}.auth: {why}"),
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(&e.to_string()))?;
            let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad("expected base64 of user:password"))?;
            return Ok(RegistryAuth::Basic(u.to_owned(), p.to_owned()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://host:5000/` → `host:5000`.
fn normalize_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

/// Runs `docker-credential-<helper> get`. `Ok(None)`: the helper has no credentials for the
/// server (or, for the default `credsStore`, is not installed; docker then also falls back).
fn run_helper(
    helper: &str,
    server: &str,
    registry: &str,
    required: bool,
) -> Result<Option<RegistryAuth>, Error> {
    let program = format!("docker-credential-{helper}");
    let fail = |why: String| Error::CredentialHelper {
        helper: program.clone(),
        registry: registry.to_owned(),
        why,
    };
    let mut child = match Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) => return Err(fail(format!("cannot run it: {e}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| fail(format!("cannot write to it: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot read its output: {e}")))?;
    if !out.status.success() {
        let msg = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("{}: {}", out.status, msg.trim())));
    }
    let parsed: HelperOutput =
        serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unexpected output: {e}")))?;
    Ok(Some(RegistryAuth::Basic(parsed.username, parsed.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let c = DockerConfig::load(Some(dir.path())).unwrap();
        (dir, c)
    }

    fn basic(a: RegistryAuth) -> (String, String) {
        match a {
            RegistryAuth::Basic(u, p) => (u, p),
            _ => panic!("not basic auth"),
        }
    }

    #[test]
    fn auths_entries() {
        // "alice:s3cr:et" in base64
        let (_d, c) = config(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
                "127.0.0.1:5000":{"username":"bob","password":"pw"},
                "http://reg.example.com/v2/":{"registrytoken":"tok"}
            }}"#,
        );
        assert_eq!(
            basic(c.credentials("docker.io").unwrap()),
            ("alice".into(), "s3cr:et".into())
        );
        assert_eq!(
            basic(c.credentials("127.0.0.1:5000").unwrap()),
            ("bob".into(), "pw".into())
        );
        assert!(matches!(
            c.credentials("reg.example.com").unwrap(),
            RegistryAuth::Bearer(t) if t == "tok"
        ));
        assert!(matches!(
            c.credentials("ghcr.io").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = DockerConfig::load(Some(dir.path())).unwrap();
        assert!(matches!(
            c.credentials("docker.io").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let err = DockerConfig::load(Some(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn missing_default_store_falls_back_but_missing_per_registry_helper_fails() {
        let (_d, c) = config(
            r#"{"credsStore":"kiln-test-absent",
                "auths":{"a.example.com":{"username":"u","password":"p"}},
                "credHelpers":{"b.example.com":"kiln-test-absent"}}"#,
        );
        assert_eq!(
            basic(c.credentials("a.example.com").unwrap()),
            ("u".into(), "p".into())
        );
        let err = c.credentials("b.example.com").unwrap_err().to_string();
        assert!(err.contains("docker-credential-kiln-test-absent"), "{err}");
    }

    #[test]
    fn credential_helper_protocol() {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        let helper = bin.path().join("docker-credential-kilntest");
        // Echoes the server it was asked about as the user name.
        std::fs::write(
            &helper,
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\n\
             case \"$server\" in none*) echo 'credentials not found in native keychain'; exit 1;; esac\n\
             printf '{\"ServerURL\":\"%s\",\"Username\":\"%s\",\"Secret\":\"pw\"}' \"$server\" \"$server\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Only this test changes PATH, and only by prepending a directory.
        std::env::set_var("PATH", path);
        let (_d, c) = config(r#"{"credsStore":"kilntest"}"#);
        assert_eq!(
            basic(c.credentials("docker.io").unwrap()),
            (DOCKER_HUB_SERVER.into(), "pw".into())
        );
        assert_eq!(
            basic(c.credentials("localhost:5000").unwrap()),
            ("localhost:5000".into(), "pw".into())
        );
        assert!(matches!(
            c.credentials("none.example.com").unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}
