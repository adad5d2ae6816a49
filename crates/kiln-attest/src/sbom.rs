//! An SPDX 2.3 JSON SBOM of an image, read from its root filesystem: the OS package databases
//! (dpkg `var/lib/dpkg/status`, apk `lib/apk/db/installed`) and the language lockfiles found
//! anywhere in it (`Cargo.lock`, `package-lock.json`, `go.mod`, Python `*.dist-info/METADATA`).
//! BuildKit runs a scanner image (syft) for this; kiln reads the same files itself. The
//! formats are simple and stable, so each gets a small parser here; `Cargo.lock` goes through
//! `toml`, `package-lock.json` through `serde_json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use kiln_types::Digest;
use serde_json::{json, Value};

use crate::statement::purl_escape;
use crate::Error;

/// The largest file the scan reads: a lockfile or package database bigger than this is not
/// one (an image's files are anyone's).
const MAX_FILE: u64 = 64 << 20;

/// Directories never scanned: kernel file systems, and places that hold no installed software.
const SKIP_DIRS: &[&str] = &["proc", "sys", "dev"];

/// One package found in the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its package URL (`pkg:deb/debian/bash@5.2?arch=amd64`).
    pub purl: String,
    /// Where it was found (`/var/lib/dpkg/status`), for the SPDX `sourceInfo`.
    pub found_in: String,
}

/// What the scan of an image found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Every package, sorted, no repeats.
    pub packages: Vec<Package>,
    /// Lockfiles that do not parse (`/path: why`): skipped, as a scanner skips them (an
    /// image may hold broken ones as test data), and named in the document's comment.
    pub skipped: Vec<String>,
}

/// Every package of the image whose root filesystem is `root`. Fails only when a file cannot
/// be read.
pub fn scan(root: &Path) -> Result<Found, Error> {
    let distro = os_release_id(root);
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let dpkg = "var/lib/dpkg/status";
    if let Some(text) = read(root, dpkg)? {
        out.extend(dpkg_status(
            &text,
            distro.as_deref().unwrap_or("debian"),
            dpkg,
        ));
    }
    let apk = "lib/apk/db/installed";
    if let Some(text) = read(root, apk)? {
        out.extend(apk_installed(
            &text,
            distro.as_deref().unwrap_or("alpine"),
            apk,
        ));
    }
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            !(e.depth() == 1
                && e.file_type().is_dir()
                && SKIP_DIRS.iter().any(|d| e.file_name() == *d))
        });
    for entry in walker {
        let entry = entry.map_err(|e| Error::Scan {
            path: e
                .path()
                .and_then(|p| p.strip_prefix(root).ok())
                .map_or_else(|| "/".to_owned(), |p| format!("/{}", p.display())),
            why: e.to_string(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        let name = entry.file_name().to_string_lossy();
        let parent_is_dist_info = entry
            .path()
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n.to_string_lossy().ends_with(".dist-info"));
        let parse: fn(&str, &str) -> Result<Vec<Package>, String> = match &*name {
            "Cargo.lock" => cargo_lock,
            "package-lock.json" => npm_lock,
            "go.mod" => go_mod,
            "METADATA" if parent_is_dist_info => python_metadata,
            _ => continue,
        };
        let Some(text) = read(root, &rel)? else {
            continue;
        };
        match parse(&text, &rel) {
            Ok(found) => out.extend(found),
            Err(why) => skipped.push(format!("/{rel}: {why}")),
        }
    }
    out.sort();
    out.dedup();
    Ok(Found {
        packages: out,
        skipped,
    })
}

/// The text of the regular file `rel` under `root`, or `None` when there is none (or it is
/// not text: a lockfile that is not UTF-8 is not one).
fn read(root: &Path, rel: &str) -> Result<Option<String>, Error> {
    let path = root.join(rel);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(scan_err(rel, e)),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| scan_err(rel, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::Scan {
            path: format!("/{rel}"),
            why: format!(
                "larger than {} MiB, the most the scan reads",
                MAX_FILE >> 20
            ),
        });
    }
    Ok(String::from_utf8(bytes).ok())
}

fn scan_err(rel: &str, e: std::io::Error) -> Error {
    Error::Scan {
        path: format!("/{rel}"),
        why: e.to_string(),
    }
}

/// `ID=` of the image's `etc/os-release` (the purl namespace of its OS packages).
fn os_release_id(root: &Path) -> Option<String> {
    let text = read(root, "etc/os-release")
        .ok()
        .flatten()
        .or_else(|| read(root, "usr/lib/os-release").ok().flatten())?;
    text.lines()
        .find_map(|l| l.strip_prefix("ID="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Debian control paragraphs: `Field: value` lines (continuations start with a space),
/// separated by blank lines.
fn paragraphs(text: &str) -> Vec<BTreeMap<&str, &str>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.trim(), v.trim());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The installed packages of a dpkg `status` file.
fn dpkg_status(text: &str, distro: &str, rel: &str) -> Vec<Package> {
    paragraphs(text)
        .into_iter()
        .filter(|p| {
            p.get("Status")
                .is_none_or(|s| s.split_whitespace().last() == Some("installed"))
        })
        .filter_map(|p| {
            let name = p.get("Package")?;
            let version = p.get("Version")?;
            let mut purl = format!(
                "pkg:deb/{}/{}@{}",
                purl_escape(distro),
                purl_escape(name),
                purl_escape(version)
            );
            if let Some(arch) = p.get("Architecture") {
                purl.push_str(&format!("?arch={}", purl_escape(arch)));
            }
            Some(Package {
                name: (*name).to_owned(),
                version: (*version).to_owned(),
                purl,
                found_in: format!("/{rel}"),
            })
        })
        .collect()
}

/// The packages of an apk `installed` database: `P:name`, `V:version`, `A:arch` lines, one
/// blank-line-separated record per package.
fn apk_installed(text: &str, distro: &str, rel: &str) -> Vec<Package> {
    let mut out = Vec::new();
    let (mut name, mut version, mut arch) = (None, None, None);
    let mut flush =
        |name: &mut Option<&str>, version: &mut Option<&str>, arch: &mut Option<&str>| {
            if let (Some(n), Some(v)) = (name.take(), version.take()) {
                let mut purl = format!(
                    "pkg:apk/{}/{}@{}",
                    purl_escape(distro),
                    purl_escape(n),
                    purl_escape(v)
                );
                if let Some(a) = arch.take() {
                    purl.push_str(&format!("?arch={}", purl_escape(a)));
                }
                out.push(Package {
                    name: n.to_owned(),
                    version: v.to_owned(),
                    purl,
                    found_in: format!("/{rel}"),
                });
            }
            *arch = None;
        };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut name, &mut version, &mut arch);
            continue;
        }
        match line.split_once(':') {
            Some(("P", v)) => name = Some(v.trim()),
            Some(("V", v)) => version = Some(v.trim()),
            Some(("A", v)) => arch = Some(v.trim()),
            _ => {}
        }
    }
    flush(&mut name, &mut version, &mut arch);
    out
}

/// The packages of a `Cargo.lock` (every version; the format's `[[package]]` tables).
fn cargo_lock(text: &str, rel: &str) -> Result<Vec<Package>, String> {
    let doc: toml::Table = toml::from_str(text).map_err(|e| format!("not a Cargo.lock: {e}"))?;
    let Some(packages) = doc.get("package").and_then(|p| p.as_array()) else {
        return Ok(Vec::new());
    };
    Ok(packages
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?;
            let version = p.get("version")?.as_str()?;
            Some(Package {
                name: name.to_owned(),
                version: version.to_owned(),
                purl: format!("pkg:cargo/{}@{}", purl_escape(name), purl_escape(version)),
                found_in: format!("/{rel}"),
            })
        })
        .collect())
}

/// The packages of an npm `package-lock.json`: `packages` (lockfile v2, v3: keyed by
/// `node_modules/...` path) or `dependencies` (v1, nested).
fn npm_lock(text: &str, rel: &str) -> Result<Vec<Package>, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("not a package-lock.json: {e}"))?;
    let mut out = Vec::new();
    let mut add = |name: &str, version: &str| {
        if name.is_empty() || version.is_empty() {
            return;
        }
        // A scoped name's `@` and `/` are the purl's namespace separator.
        let purl_name = match name.strip_prefix('@').and_then(|n| n.split_once('/')) {
            Some((scope, n)) => format!("%40{}/{}", purl_escape(scope), purl_escape(n)),
            None => purl_escape(name),
        };
        out.push(Package {
            name: name.to_owned(),
            version: version.to_owned(),
            purl: format!("pkg:npm/{purl_name}@{}", purl_escape(version)),
            found_in: format!("/{rel}"),
        });
    };
    if let Some(packages) = doc.get("packages").and_then(Value::as_object) {
        for (path, p) in packages {
            // `""` is the project itself.
            let Some((_, name)) = path.rsplit_once("node_modules/") else {
                continue;
            };
            let name = p.get("name").and_then(Value::as_str).unwrap_or(name);
            if let Some(v) = p.get("version").and_then(Value::as_str) {
                add(name, v);
            }
        }
    } else {
        let mut stack: Vec<&Value> = doc.get("dependencies").into_iter().collect();
        while let Some(deps) = stack.pop() {
            for (name, d) in deps.as_object().into_iter().flatten() {
                if let Some(v) = d.get("version").and_then(Value::as_str) {
                    add(name, v);
                }
                stack.extend(d.get("dependencies"));
            }
        }
    }
    Ok(out)
}

/// The requirements of a `go.mod` (`require path version`, single or in a block).
fn go_mod(text: &str, rel: &str) -> Result<Vec<Package>, String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        let spec = if in_block {
            if line == ")" {
                in_block = false;
                continue;
            }
            line
        } else if let Some(rest) = line.strip_prefix("require") {
            let rest = rest.trim();
            if rest == "(" {
                in_block = true;
                continue;
            }
            rest
        } else {
            continue;
        };
        let mut words = spec.split_whitespace();
        let (Some(path), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        let segments: Vec<String> = path.split('/').map(purl_escape).collect();
        out.push(Package {
            name: path.to_owned(),
            version: version.to_owned(),
            purl: format!("pkg:golang/{}@{}", segments.join("/"), purl_escape(version)),
            found_in: format!("/{rel}"),
        });
    }
    Ok(out)
}

/// The package of a Python `*.dist-info/METADATA` (email-style `Name:` and `Version:`
/// headers, before the first blank line).
fn python_metadata(text: &str, rel: &str) -> Result<Vec<Package>, String> {
    let headers = text.split("\n\n").next().unwrap_or("");
    let field = |k: &str| {
        headers
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
    };
    let (Some(name), Some(version)) = (field("Name"), field("Version")) else {
        return Ok(Vec::new());
    };
    // PyPI names compare lowercased, with runs of `-_.` as `-` (PEP 503), as the purl spec asks.
    let normalized = name.to_ascii_lowercase().replace(['_', '.'], "-");
    Ok(vec![Package {
        name: name.to_owned(),
        version: version.to_owned(),
        purl: format!(
            "pkg:pypi/{}@{}",
            purl_escape(&normalized),
            purl_escape(version)
        ),
        found_in: format!("/{rel}"),
    }])
}

/// The SPDX 2.3 JSON document listing the packages `found` in the image `name`, created at
/// `created` (RFC 3339); skipped files are named in `creationInfo.comment`. Its namespace is
/// derived from the content, so the same image gives the same document.
pub fn spdx_document(name: &str, found: &Found, created: &str) -> Value {
    let packages = &found.packages;
    let mut ids = Vec::with_capacity(packages.len());
    let items: Vec<Value> = packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // SPDX ids allow letters, digits, `.` and `-` only.
            let clean: String = p
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let id = format!("SPDXRef-Package-{i}-{clean}");
            ids.push(id.clone());
            json!({
                "name": p.name,
                "SPDXID": id,
                "versionInfo": p.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "sourceInfo": format!("acquired package info from {}", p.found_in),
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": p.purl,
                }],
            })
        })
        .collect();
    let listing: String = packages.iter().map(|p| format!("{}\n", p.purl)).collect();
    let namespace = format!(
        "https://kiln.invalid/spdx/{}-{}",
        purl_escape(name),
        Digest::of(listing.as_bytes()).hex()
    );
    let relationships: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": id,
            })
        })
        .collect();
    let mut creation = json!({
        "created": created,
        "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
    });
    if !found.skipped.is_empty() {
        creation["comment"] = format!("not read: {}", found.skipped.join("; ")).into();
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": namespace,
        "creationInfo": creation,
        "packages": items,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn every_database_and_lockfile_is_read() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        write(root, "etc/os-release", "NAME=\"Debian\"\nID=debian\n");
        write(
            root,
            "var/lib/dpkg/status",
            "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\
             Description: shell\n continued line: not a field\n\n\
             Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n",
        );
        write(
            root,
            "lib/apk/db/installed",
            "C:Q1abc=\nP:musl\nV:1.2.5-r0\nA:x86_64\n\nP:zlib\nV:1.3.1-r1\n",
        );
        write(
            root,
            "app/Cargo.lock",
            "version = 4\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.200\"\n\n\
             [[package]]\nname = \"app\"\nversion = \"0.1.0\"\n",
        );
        write(
            root,
            "web/package-lock.json",
            r#"{"lockfileVersion":3,"packages":{"":{"name":"web"},
                "node_modules/left-pad":{"version":"1.3.0"},
                "node_modules/@types/node":{"version":"20.1.0"}}}"#,
        );
        write(
            root,
            "go/src/go.mod",
            "module example.com/x\n\ngo 1.22\n\nrequire github.com/pkg/errors v0.9.1\n\
             require (\n\tgolang.org/x/sys v0.20.0 // indirect\n)\n",
        );
        write(
            root,
            "usr/lib/python3/site-packages/Flask_Login-0.6.3.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: Flask_Login\nVersion: 0.6.3\n\nName: not-this\n",
        );
        // Not looked into.
        write(root, "proc/Cargo.lock", "garbage");
        let found = scan(root).unwrap().packages;
        let purls: Vec<&str> = found.iter().map(|p| p.purl.as_str()).collect();
        for want in [
            "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64",
            "pkg:apk/debian/musl@1.2.5-r0?arch=x86_64",
            "pkg:apk/debian/zlib@1.3.1-r1",
            "pkg:cargo/serde@1.0.200",
            "pkg:cargo/app@0.1.0",
            "pkg:npm/left-pad@1.3.0",
            "pkg:npm/%40types/node@20.1.0",
            "pkg:golang/github.com/pkg/errors@v0.9.1",
            "pkg:golang/golang.org/x/sys@v0.20.0",
            "pkg:pypi/flask-login@0.6.3",
        ] {
            assert!(purls.contains(&want), "{want} not in {purls:#?}");
        }
        assert_eq!(found.len(), 10, "{purls:#?}");
        let bash = found.iter().find(|p| p.name == "bash").unwrap();
        assert_eq!(bash.found_in, "/var/lib/dpkg/status");
    }

    #[test]
    fn a_broken_lockfile_is_skipped_and_named() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "srv/Cargo.lock", "[[package]\n");
        write(
            t.path(),
            "app/Cargo.lock",
            "[[package]]\nname = \"a\"\nversion = \"1\"\n",
        );
        let found = scan(t.path()).unwrap();
        assert_eq!(found.packages.len(), 1);
        assert_eq!(found.skipped.len(), 1);
        assert!(
            found.skipped[0].starts_with("/srv/Cargo.lock: "),
            "{found:?}"
        );
        let doc = spdx_document("x", &found, "2024-01-01T00:00:00Z");
        let comment = doc["creationInfo"]["comment"].as_str().unwrap();
        assert!(comment.contains("/srv/Cargo.lock"), "{comment}");
    }

    #[test]
    fn spdx_document_has_the_required_fields() {
        let p = Package {
            name: "@types/node".into(),
            version: "20".into(),
            purl: "pkg:npm/%40types/node@20".into(),
            found_in: "/package-lock.json".into(),
        };
        let found = Found {
            packages: vec![p],
            skipped: Vec::new(),
        };
        let doc = spdx_document("app:1", &found, "2024-01-01T00:00:00Z");
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(
            doc["packages"][0]["SPDXID"],
            "SPDXRef-Package-0--types-node"
        );
        assert_eq!(
            doc["relationships"][0]["relatedSpdxElement"],
            doc["packages"][0]["SPDXID"]
        );
        assert!(doc["creationInfo"].get("comment").is_none());
        assert_eq!(doc, spdx_document("app:1", &found, "2024-01-01T00:00:00Z"));
    }
}
