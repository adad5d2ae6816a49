//! Test support: a real Debian `docker-registry` per test, and small images built by hand into
//! OCI layouts (no internet), pushed with `skopeo`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_types::Digest;
use serde_json::json;

const INSTALL_HINT: &str = "`cargo xtask test` installs docker-registry and skopeo \
     (Debian packages docker-registry and skopeo)";

/// Fails the test (never skips it) when a tool the test needs is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in PATH: {INSTALL_HINT}"))
}

/// A port nothing listens on (bound then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A `docker-registry serve` on 127.0.0.1, killed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Where the registry keeps its data.
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// An open registry.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A registry with basic auth from an htpasswd file (bcrypt entries).
    pub fn start_with_htpasswd(htpasswd: &Path) -> Self {
        Self::start_with(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            htpasswd.display()
        ))
    }

    /// A registry with `http_extra` (indented lines) in its `http:` section, such as a `tls:`
    /// table, logging at info level; ready when it accepts connections (a TLS registry answers no
    /// plain-http probe).
    pub fn start_tls(http_extra: &str) -> Self {
        Self::spawn(http_extra, "info", false)
    }

    fn start_with(extra: &str) -> Self {
        Self::spawn(extra, "error", true)
    }

    fn spawn(extra: &str, level: &str, http_probe: bool) -> Self {
        let bin = require_tool("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: {level}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {host}\n{extra}",
                storage.display()
            ),
        )
        .expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = TestRegistry {
            child: Some(child),
            host,
            storage,
            _dir: dir,
        };
        reg.wait_ready(http_probe);
        reg
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, http_probe: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !http_probe && TcpStream::connect(&self.host).is_ok() {
                return;
            }
            if let Some(status) = http_probe
                .then(|| http_status(&self.host, "/v2/"))
                .flatten()
            {
                assert!(
                    status == 200 || status == 401,
                    "registry answered /v2/ with {status}"
                );
                return;
            }
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                let log = std::fs::read_to_string(self._dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!("docker-registry exited with {exit}: {log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry on {} did not answer within 15 s",
            self.host
        );
    }

    /// Kills the registry now (its data stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The file in the registry's storage that holds blob `d`.
    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// Pushes an OCI layout's `tag` (with every platform) to `<this registry>/<repo>:<tag>`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) {
        self.push_as(layout, tag, repo, None);
    }

    /// [`Self::push`] with `user:password` credentials.
    pub fn push_as(&self, layout: &Path, tag: &str, repo: &str, creds: Option<&str>) {
        let skopeo = require_tool("skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ]);
        if let Some(c) = creds {
            cmd.arg(format!("--dest-creds={c}"));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The status code of `GET path`, or None when nothing answers.
fn http_status(host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One platform image of a test layout.
pub struct TestImage {
    pub platform: (&'static str, &'static str, Option<&'static str>),
    pub files: Vec<(&'static str, Vec<u8>)>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub layer_digests: Vec<Digest>,
}

/// An OCI layout written by hand.
pub struct TestLayout {
    pub dir: PathBuf,
    pub images: Vec<TestImage>,
    /// The digest `index.json` names for the tag (an index for multi-platform layouts).
    pub top_digest: Digest,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> (Digest, u64) {
    let d = Digest::of(bytes);
    let p = dir.join("blobs/sha256").join(d.hex());
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir blobs");
    std::fs::write(&p, bytes).expect("write blob");
    (d, bytes.len() as u64)
}

/// A gzip layer tar holding `files`; returns (gzip bytes, diff id).
fn layer(files: &[(&str, Vec<u8>)]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, content.as_slice())
            .expect("append tar entry");
    }
    let raw = tar.into_inner().expect("finish tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("finish gzip"), Digest::of(&raw))
}

/// Builds a layout in `dir` whose `tag` is one image per platform: each with two layers
/// (`hello.txt` saying the platform, and `etc/os`), a config with `Cmd`, `Env` and labels.
/// One platform → the tag names the manifest; several → an OCI index.
pub fn build_layout(
    dir: &Path,
    tag: &str,
    platforms: &[(&'static str, &'static str, Option<&'static str>)],
) -> TestLayout {
    build_layout_with(dir, tag, platforms, &|_| {}, &|_| {})
}

/// [`build_layout`] with the config and the manifest JSON of each image changed by `config`
/// and `manifest` before they are written (to make broken or hostile images).
pub fn build_layout_with(
    dir: &Path,
    tag: &str,
    platforms: &[(&'static str, &'static str, Option<&'static str>)],
    config: &dyn Fn(&mut serde_json::Value),
    manifest: &dyn Fn(&mut serde_json::Value),
) -> TestLayout {
    let (tamper_config, tamper_manifest) = (config, manifest);
    std::fs::create_dir_all(dir).expect("mkdir layout");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    let mut images = Vec::new();
    let mut entries = Vec::new();
    for &(os, arch, variant) in platforms {
        let platform_name = match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        };
        let files1 = vec![(
            "hello.txt",
            format!("hello from {platform_name}\n").into_bytes(),
        )];
        let files2 = vec![("etc/os", format!("{os}\n").into_bytes())];
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for files in [&files1, &files2] {
            let (gz, diff_id) = layer(files);
            let (d, size) = write_blob(dir, &gz);
            layer_descs.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": size
            }));
            diff_ids.push(diff_id.to_string());
            layer_digests.push(d);
        }
        let mut config = json!({
            "architecture": arch, "os": os,
            "config": {
                "Env": ["PATH=/bin", format!("PLATFORM={platform_name}")],
                "Cmd": ["/bin/hello"],
                "Labels": {"kiln.test": "yes"}
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        tamper_config(&mut config);
        let (config_digest, config_size) =
            write_blob(dir, &serde_json::to_vec(&config).expect("config json"));
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config_size},
            "layers": layer_descs
        });
        tamper_manifest(&mut manifest);
        let (manifest_digest, manifest_size) =
            write_blob(dir, &serde_json::to_vec(&manifest).expect("manifest json"));
        let mut platform = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(), "size": manifest_size,
            "platform": platform
        }));
        let mut files = files1;
        files.extend(files2);
        images.push(TestImage {
            platform: (os, arch, variant),
            files,
            manifest_digest,
            config_digest,
            layer_digests,
        });
    }
    let ref_name = json!({"org.opencontainers.image.ref.name": tag});
    let top = if let [only] = entries.as_slice() {
        let mut e = only.clone();
        e["annotations"] = ref_name;
        e
    } else {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries
        });
        let (d, size) = write_blob(dir, &serde_json::to_vec(&index).expect("index json"));
        json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": d.to_string(), "size": size, "annotations": ref_name
        })
    };
    let top_digest: Digest = top["digest"]
        .as_str()
        .expect("digest")
        .parse()
        .expect("digest parses");
    // Keep other tags already in the layout.
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["manifests"].as_array().cloned())
        .unwrap_or_default();
    manifests.push(top);
    std::fs::write(
        &index_path,
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).expect("json"),
    )
    .expect("write index.json");
    TestLayout {
        dir: dir.to_owned(),
        images,
        top_digest,
    }
}

/// The host platform as the layout builder spells it.
pub fn host_platform() -> (&'static str, &'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "aarch64" => ("linux", "arm64", Some("v8")),
        _ => ("linux", "amd64", None),
    }
}

/// A platform that is not the host.
pub fn other_platform() -> (&'static str, &'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "aarch64" => ("linux", "amd64", None),
        _ => ("linux", "arm64", Some("v8")),
    }
}

/// Every blob file name in the store, as digests.
pub fn store_blobs(store: &kiln_snapshot::Store) -> Vec<Digest> {
    let mut v: Vec<Digest> = std::fs::read_dir(store.root().join("blobs/sha256"))
        .expect("read blobs dir")
        .map(|e| {
            Digest::from_hex(&e.expect("dir entry").file_name().to_string_lossy())
                .expect("blob names are digests")
        })
        .collect();
    v.sort();
    v
}

/// A store and a registry client in a temporary directory, with an empty docker config dir
/// (anonymous, whatever the machine's ~/.docker says); `layouts` is scratch space beside them.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub store: kiln_snapshot::Store,
    pub layouts: PathBuf,
    pub registry: kiln_registry::Registry,
}

pub fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let store = kiln_snapshot::Store::open(tmp.path().join("store")).unwrap();
    let docker = tmp.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let registry = kiln_registry::Registry::new(kiln_registry::RegistryOptions {
        insecure: Vec::new(),
        docker_config: Some(docker),
        hosts: Default::default(),
    })
    .unwrap();
    Env {
        layouts: tmp.path().join("layouts"),
        tmp,
        store,
        registry,
    }
}

pub fn image(s: &str) -> kiln_registry::ImageRef {
    s.parse().unwrap()
}
