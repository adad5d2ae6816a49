//! CDI devices (`RUN --device=vendor.com/class=name`): the Container Device Interface spec
//! files of the host (JSON or YAML, in `/etc/cdi` and `/var/run/cdi`, or the directories of
//! `KILN_CDI_SPEC_DIRS`, colon-separated) name devices and the container edits that give a
//! process access to them. A step gets the edits of the devices it names, and the spec-level
//! edits of every spec one of them comes from, as BuildKit's worker injects them.
//!
//! Applied: device nodes (bound from the host node, and allowed in runc's device cgroup),
//! environment variables, bind mounts and additional group ids. OCI hooks, Intel RDT and
//! network devices are not: the embedded sandbox has no hook runner, so a step whose devices
//! carry them is told so in its log and runs without them.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_plugin_sdk::graph::Device;
use serde::Deserialize;

use crate::Error;

/// Where spec files are looked for unless `KILN_CDI_SPEC_DIRS` says otherwise, in increasing
/// priority (a device defined in both is the later directory's), as CDI's defaults.
const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// A spec file larger than this is refused: spec files are small, and one read whole must not
/// exhaust memory.
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// The spec directories, from `KILN_CDI_SPEC_DIRS` (colon-separated) or CDI's defaults.
pub fn spec_dirs() -> Vec<PathBuf> {
    match std::env::var_os("KILN_CDI_SPEC_DIRS") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
    }
}

/// One CDI spec file (the fields kiln reads; the rest is ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    kind: String,
    #[serde(default)]
    devices: Vec<SpecDevice>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

/// A spec's or a device's `containerEdits`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Edits {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    device_nodes: Vec<DeviceNode>,
    #[serde(default)]
    mounts: Vec<SpecMount>,
    #[serde(default)]
    hooks: Vec<serde_norway::Value>,
    #[serde(default)]
    additional_gids: Vec<u32>,
    #[serde(default)]
    intel_rdt: Option<serde_norway::Value>,
    #[serde(default)]
    net_devices: Vec<serde_norway::Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceNode {
    /// The path in the container (and on the host, unless `hostPath` says otherwise).
    path: String,
    #[serde(default)]
    host_path: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecMount {
    host_path: String,
    container_path: String,
    #[serde(default)]
    options: Vec<String>,
    #[serde(default, rename = "type")]
    typ: Option<String>,
}

/// A host device node the step gets at `path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Where the process sees it.
    pub path: String,
    /// The host's node (bound there).
    pub host_path: PathBuf,
    /// `'c'` or `'b'`.
    pub kind: char,
    /// Device numbers, for runc's device cgroup.
    pub major: u64,
    /// Device numbers, for runc's device cgroup.
    pub minor: u64,
}

/// A host path the step gets bound at `container_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub host_path: PathBuf,
    /// Where the process sees it.
    pub container_path: String,
    /// Mounted read-only (`ro` among its options).
    pub readonly: bool,
}

/// What the step's devices add to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    /// `K=V` entries, replacing the step's own of the same name.
    pub env: Vec<String>,
    /// Device nodes.
    pub nodes: Vec<Node>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// Supplementary groups of the process.
    pub gids: Vec<u32>,
    /// Things the step is told about: optional devices that are missing, edits not applied.
    pub warnings: Vec<String>,
}

/// The devices of the spec directories, by qualified name (`vendor.com/class=name`), with the
/// spec-level edits of the spec each comes from.
struct Registry {
    devices: BTreeMap<String, (Edits, usize)>,
    spec_edits: Vec<(PathBuf, Edits)>,
}

impl Registry {
    fn load(dirs: &[PathBuf]) -> Result<Registry, Error> {
        let mut reg = Registry {
            devices: BTreeMap::new(),
            spec_edits: Vec::new(),
        };
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                // A directory that does not exist holds no specs (CDI's rule).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot read the CDI spec directory", dir, e)),
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for file in files {
                let spec = read_spec(&file)?;
                let index = reg.spec_edits.len();
                for d in spec.devices {
                    if d.name.is_empty() {
                        return Err(Error::InvalidInput(format!(
                            "CDI spec {}: a device has no name",
                            file.display()
                        )));
                    }
                    reg.devices.insert(
                        format!("{}={}", spec.kind, d.name),
                        (d.container_edits, index),
                    );
                }
                reg.spec_edits.push((file, spec.container_edits));
            }
        }
        Ok(reg)
    }

    /// The qualified names `device` stands for: itself, the first device of its class when it
    /// names no device, or all of them for `=*` (BuildKit's rules).
    fn find(&self, device: &str) -> Vec<String> {
        let (kind, name) = device.split_once('=').unwrap_or((device, ""));
        let prefix = format!("{kind}=");
        let mut of_kind = self.devices.keys().filter(|d| d.starts_with(&prefix));
        match name {
            "" => of_kind.next().cloned().into_iter().collect(),
            "*" => of_kind.cloned().collect(),
            _ => self
                .devices
                .contains_key(device)
                .then(|| device.to_owned())
                .into_iter()
                .collect(),
        }
    }
}

fn read_spec(file: &Path) -> Result<Spec, Error> {
    let f =
        std::fs::File::open(file).map_err(|e| Error::io("cannot open the CDI spec", file, e))?;
    let mut text = String::new();
    f.take(MAX_SPEC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("cannot read the CDI spec", file, e))?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(Error::InvalidInput(format!(
            "CDI spec {} is larger than {MAX_SPEC_BYTES} bytes",
            file.display()
        )));
    }
    // YAML is a superset of JSON: one parser reads both kinds of spec file.
    let spec: Spec = serde_norway::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("CDI spec {}: {e}", file.display())))?;
    match spec.kind.split_once('/') {
        Some((vendor, class)) if !vendor.is_empty() && !class.is_empty() => Ok(spec),
        _ => Err(Error::InvalidInput(format!(
            "CDI spec {}: kind {:?} is not of the form vendor.com/class",
            file.display(),
            spec.kind
        ))),
    }
}

/// Resolves the step's devices against the specs in `dirs`.
pub fn resolve(devices: &[Device], dirs: &[PathBuf]) -> Result<Injected, Error> {
    let mut out = Injected::default();
    if devices.is_empty() {
        return Ok(out);
    }
    let reg = Registry::load(dirs)?;
    let mut chosen: Vec<String> = Vec::new();
    for d in devices {
        let found = reg.find(&d.name);
        if found.is_empty() {
            let dirs = dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            if d.required {
                return Err(Error::NotFound(format!(
                    "required device {:?} is not registered: no CDI spec in {dirs} defines it \
                     (KILN_CDI_SPEC_DIRS sets the directories)",
                    d.name
                )));
            }
            out.warnings.push(format!(
                "optional device {:?} is not registered (searched {dirs})",
                d.name
            ));
            continue;
        }
        for f in found {
            if !chosen.contains(&f) {
                chosen.push(f);
            }
        }
    }
    let mut specs: Vec<usize> = Vec::new();
    for name in &chosen {
        let (edits, spec) = &reg.devices[name];
        apply(&mut out, name, edits)?;
        if !specs.contains(spec) {
            specs.push(*spec);
        }
    }
    for i in specs {
        let (file, edits) = &reg.spec_edits[i];
        apply(&mut out, &file.display().to_string(), edits)?;
    }
    Ok(out)
}

fn apply(out: &mut Injected, of: &str, edits: &Edits) -> Result<(), Error> {
    for kv in &edits.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        out.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        out.env.push(kv.clone());
    }
    for n in &edits.device_nodes {
        let host_path = PathBuf::from(n.host_path.as_deref().unwrap_or(&n.path));
        let meta = std::fs::metadata(&host_path)
            .map_err(|e| Error::io("cannot use the CDI device node", &host_path, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            return Err(Error::InvalidInput(format!(
                "CDI device {of}: {} is not a device node",
                host_path.display()
            )));
        };
        if !n.path.starts_with('/') {
            return Err(Error::InvalidInput(format!(
                "CDI device {of}: device path {:?} is not absolute",
                n.path
            )));
        }
        let rdev = meta.rdev();
        out.nodes.push(Node {
            path: n.path.clone(),
            host_path,
            kind,
            major: libc::major(rdev).into(),
            minor: libc::minor(rdev).into(),
        });
    }
    for m in &edits.mounts {
        if !matches!(m.typ.as_deref(), None | Some("bind") | Some("rbind"))
            && !m.options.iter().any(|o| o == "bind" || o == "rbind")
        {
            return Err(Error::Unsupported(format!(
                "CDI device {of}: mount at {} of type {:?}: kiln applies bind mounts only",
                m.container_path,
                m.typ.as_deref().unwrap_or("")
            )));
        }
        if !m.container_path.starts_with('/') {
            return Err(Error::InvalidInput(format!(
                "CDI device {of}: mount path {:?} is not absolute",
                m.container_path
            )));
        }
        out.mounts.push(BindMount {
            host_path: PathBuf::from(&m.host_path),
            container_path: m.container_path.clone(),
            readonly: m.options.iter().any(|o| o == "ro"),
        });
    }
    out.gids.extend(&edits.additional_gids);
    let skipped = [
        (!edits.hooks.is_empty(), "OCI hooks"),
        (edits.intel_rdt.is_some(), "Intel RDT settings"),
        (!edits.net_devices.is_empty(), "network devices"),
    ];
    for (_, what) in skipped.iter().filter(|(present, _)| *present) {
        out.warnings.push(format!(
            "CDI device {of}: its {what} are not applied by kiln; the step runs without them"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, required: bool) -> Device {
        Device {
            name: name.into(),
            required,
        }
    }

    fn dirs() -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("etc");
        let b = t.path().join("run");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(
            a.join("kiln.yaml"),
            "cdiVersion: \"0.6.0\"\nkind: kiln.dev/test\n\
             containerEdits:\n  env: [SPEC=1]\n\
             devices:\n\
             - name: zero\n  containerEdits:\n    env: [\"ZERO=yes\"]\n    deviceNodes:\n    \
             - path: /dev/kilntest\n      hostPath: /dev/zero\n    additionalGids: [44]\n\
             - name: lib\n  containerEdits:\n    mounts:\n    - hostPath: /etc\n      \
             containerPath: /opt/hostetc\n      options: [ro, nosuid, bind]\n    \
             hooks:\n    - hookName: createContainer\n      path: /bin/true\n",
        )
        .unwrap();
        std::fs::write(
            b.join("other.json"),
            r#"{"cdiVersion":"0.6.0","kind":"kiln.dev/test","devices":[{"name":"zero","containerEdits":{"env":["ZERO=run"]}}]}"#,
        )
        .unwrap();
        let dirs = vec![a, b];
        (t, dirs)
    }

    #[test]
    fn resolves_yaml_and_json_specs() {
        let (_t, dirs) = dirs();
        let got = resolve(&[dev("kiln.dev/test=lib", true)], &dirs).unwrap();
        assert_eq!(
            got.mounts,
            [BindMount {
                host_path: "/etc".into(),
                container_path: "/opt/hostetc".into(),
                readonly: true,
            }]
        );
        // The spec-level edits come with any device of the spec.
        assert_eq!(got.env, ["SPEC=1"]);
        assert!(
            got.warnings[0].contains("OCI hooks are not applied"),
            "{:?}",
            got.warnings
        );

        // The later directory's definition wins; its spec has no spec-level edits.
        let got = resolve(&[dev("kiln.dev/test=zero", true)], &dirs).unwrap();
        assert_eq!(got.env, ["ZERO=run"]);
        assert!(got.nodes.is_empty());

        let etc_only = &dirs[..1];
        let got = resolve(&[dev("kiln.dev/test=zero", false)], etc_only).unwrap();
        assert_eq!(got.env, ["ZERO=yes", "SPEC=1"]);
        assert_eq!(got.gids, [44]);
        let node = &got.nodes[0];
        assert_eq!(
            (node.path.as_str(), node.kind, node.major, node.minor),
            ("/dev/kilntest", 'c', 1, 5)
        );
        // `=*`: every device of the class; no name: the first one.
        assert_eq!(
            resolve(&[dev("kiln.dev/test=*", true)], etc_only)
                .unwrap()
                .nodes
                .len(),
            1
        );
        let first = resolve(&[dev("kiln.dev/test", true)], etc_only).unwrap();
        assert!(
            first.mounts.len() == 1 && first.nodes.is_empty(),
            "{first:?}"
        );
    }

    #[test]
    fn missing_devices() {
        let (_t, dirs) = dirs();
        let e = resolve(&[dev("kiln.dev/test=gpu", true)], &dirs)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("required device \"kiln.dev/test=gpu\" is not registered"),
            "{e}"
        );
        let got = resolve(&[dev("kiln.dev/test=gpu", false)], &dirs).unwrap();
        assert_eq!(got.env, Vec::<String>::new());
        assert!(
            got.warnings[0].starts_with("optional device \"kiln.dev/test=gpu\" is not registered")
        );
        // Directories that do not exist hold no specs.
        let none = resolve(
            &[dev("a.b/c=d", false)],
            &[PathBuf::from("/nonexistent/cdi")],
        );
        assert!(none.is_ok());
    }

    #[test]
    fn bad_specs_are_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("bad.yaml"), "kind: nokind\ndevices: []\n").unwrap();
        let e = resolve(&[dev("a.b/c=d", false)], &[t.path().to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.yaml") && e.contains("vendor.com/class"),
            "{e}"
        );
        std::fs::write(t.path().join("bad.yaml"), "kind: [").unwrap();
        let e = resolve(&[dev("a.b/c=d", false)], &[t.path().to_owned()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.yaml"), "{e}");
    }
}
