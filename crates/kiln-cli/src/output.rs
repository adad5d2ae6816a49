//! What a build hands back: for people, the Dockerfile lines around an
//! error and error chains; for scripts, the image ID (`--iidfile`, `-q`) and the metadata file
//! (`--metadata-file`) with the keys buildx writes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use kiln_engine::Export;
use kiln_types::image::Descriptor;
use kiln_types::reference::Reference;
use kiln_types::Digest;
use serde_json::{json, Value};

/// The lines around `line` of the build file, BuildKit style, on stderr.
pub fn show_location(dockerfile: &Path, line: usize) {
    for l in location_lines(dockerfile, line) {
        eprintln!("{l}");
    }
}

/// The lines around `line` of the build file, BuildKit style (none when it cannot be read):
/// as BuildKit's `errdefs.Source.Print`, two lines either side of a one-line range, and the
/// file split on `\n`, so that the empty line after the last newline can be shown too.
pub fn location_lines(dockerfile: &Path, line: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dockerfile) else {
        return Vec::new();
    };
    let lines: Vec<&str> = text.split('\n').collect();
    if line == 0 || line > lines.len() {
        return Vec::new();
    }
    let name = dockerfile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = vec![format!("{name}:{line}"), "--------------------".to_owned()];
    let from = line.saturating_sub(2).max(1);
    let to = (line + 2).min(lines.len());
    for (i, l) in lines.iter().enumerate().take(to).skip(from - 1) {
        let n = i + 1;
        let mark = if n == line { ">>>" } else { "   " };
        out.push(format!(" {n:>3} | {mark} {}", shorten_line(l)));
    }
    out.push("--------------------".to_owned());
    out
}

/// Lines longer than this are cut in the error box: a hostile Dockerfile's 30 KB line would
/// only bury the message.
const MAX_SHOWN_LINE: usize = 240;

fn shorten_line(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_SHOWN_LINE {
        return line.into();
    }
    let mut end = MAX_SHOWN_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &line[..end], line.len() - end).into()
}

/// The image a build exported, as scripts read it back.
pub struct BuiltImage {
    /// The manifest's descriptor (its digest is the image digest a registry shows).
    pub manifest: Descriptor,
    /// The config blob's digest: the image ID, as docker shows it.
    pub config: Digest,
    /// RFC 3339 time of the export (`SOURCE_DATE_EPOCH` when given), as BuildKit annotates
    /// the descriptor it reports.
    pub created: String,
}

/// The image ID buildx prints for `-q` and writes to `--iidfile`: the config digest (buildx's
/// `getImageID`), empty when no image was exported (a `type=local` output, or none).
pub fn image_id(image: Option<&BuiltImage>) -> String {
    image.map(|i| i.config.to_string()).unwrap_or_default()
}

/// The `--metadata-file` document: BuildKit's exporter response as buildx decodes it.
/// An image export (oci, docker, registry) gives `containerimage.digest` (manifest),
/// `containerimage.config.digest`, `containerimage.descriptor` and, when the image has names,
/// `image.name`: the names as given for a push, normalized (`docker.io/library/app:1`) for the
/// oci and docker tarballs. A `type=local` output gives nothing, so `{}`.
pub fn metadata(image: Option<&BuiltImage>, exports: &[Export], tags: &[String]) -> Value {
    let mut out = BTreeMap::new();
    let Some(image) = image else {
        return json!(out);
    };
    out.insert(
        "containerimage.digest".to_owned(),
        json!(image.manifest.digest.to_string()),
    );
    // An index (a multi-platform build) has no one config: BuildKit reports none.
    if !crate::multiplatform::is_index(&image.manifest.media_type) {
        out.insert(
            "containerimage.config.digest".to_owned(),
            json!(image.config.to_string()),
        );
    }
    // BuildKit's descriptor carries the manifest-descriptor annotations, then `created`.
    let mut annotations = image.manifest.annotations.clone();
    annotations
        .entry("org.opencontainers.image.created".to_owned())
        .or_insert_with(|| image.created.clone());
    out.insert(
        "containerimage.descriptor".to_owned(),
        json!({
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest.to_string(),
            "size": image.manifest.size,
            "annotations": annotations,
        }),
    );
    let pushed = exports.iter().find_map(|e| match e {
        Export::Registry { names, .. } if !names.is_empty() => Some(names.join(",")),
        _ => None,
    });
    let tarball = exports.iter().any(|e| {
        matches!(
            e,
            Export::Oci { .. } | Export::Docker { .. } | Export::Load { .. }
        )
    });
    let name = match pushed {
        Some(names) => Some(names),
        None if tarball && !tags.is_empty() => Some(
            tags.iter()
                .map(|t| normalized_name(t))
                .collect::<Vec<_>>()
                .join(","),
        ),
        None => None,
    };
    if let Some(name) = name {
        out.insert("image.name".to_owned(), json!(name));
    }
    json!(out)
}

/// `name` as BuildKit's oci exporter reports it: normalized, `:latest` when it has neither tag
/// nor digest (the tags were checked before the build, so parsing fails only on a bug; the
/// name is then kept as given).
fn normalized_name(name: &str) -> String {
    match Reference::parse_normalized(name) {
        Ok(mut r) => {
            if r.tag.is_none() && r.digest.is_none() {
                r.tag = Some("latest".to_owned());
            }
            r.to_string()
        }
        Err(_) => name.to_owned(),
    }
}

/// Removes a previous `--iidfile`, as buildx does before it builds, so that a failed build
/// never leaves the ID of an older image for a script to pick up.
pub fn remove_stale_iidfile(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing the image ID file {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Writes the image ID to `path` without a newline, as `docker build --iidfile` does.
pub fn write_iidfile(path: &Path, id: &str) -> Result<()> {
    std::fs::write(path, id)
        .with_context(|| format!("writing the image ID file {}", path.display()))
}

/// Writes `doc` indented by two spaces, as buildx does, through a temporary file renamed over
/// `path`, so that a reader never sees half a document.
pub fn write_metadata_file(path: &Path, doc: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(doc).context("encoding the build metadata")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing the metadata file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_box_cuts_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        let long = format!("LABEL a={}", "é".repeat(15_000));
        std::fs::write(&df, format!("FROM scratch\n{long}\nCOPY a /\n")).unwrap();
        let lines = location_lines(&df, 2);
        assert_eq!(lines[0], "Dockerfile:2");
        let shown = lines.iter().find(|l| l.contains(">>>")).unwrap();
        assert!(
            shown.len() < 300 && shown.contains("more bytes)"),
            "{shown}"
        );
        assert!(lines.iter().any(|l| l.ends_with("COPY a /")), "{lines:?}");
    }

    #[test]
    fn the_error_box_is_buildkits() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        std::fs::write(
            &df,
            "FROM scratch\nCOPY a /\nCOPY b /\nCOPY c /\nCOPY d /\nCOPY e /\n",
        )
        .unwrap();
        // Two lines either side, ` %3d | ` numbers, as errdefs.Source.Print.
        assert_eq!(
            location_lines(&df, 4),
            [
                "Dockerfile:4",
                "--------------------",
                "   2 |     COPY a /",
                "   3 |     COPY b /",
                "   4 | >>> COPY c /",
                "   5 |     COPY d /",
                "   6 |     COPY e /",
                "--------------------",
            ]
        );
        // The last line: BuildKit shows the empty line after its newline.
        assert_eq!(
            location_lines(&df, 6)[2..6],
            [
                "   4 |     COPY c /",
                "   5 |     COPY d /",
                "   6 | >>> COPY e /",
                "   7 |     ",
            ]
        );
    }

    fn image() -> BuiltImage {
        BuiltImage {
            manifest: Descriptor::new(
                kiln_types::image::MEDIA_TYPE_MANIFEST,
                Digest::of(b"manifest"),
                412,
            ),
            config: Digest::of(b"config"),
            created: "2024-01-02T03:04:05Z".to_owned(),
        }
    }

    #[test]
    fn metadata_of_an_oci_export_has_buildkit_keys() {
        let img = image();
        let exports = [Export::Oci {
            dest: "a.tar".into(),
            tar: true,
            format: Default::default(),
        }];
        let tags = ["app:1".to_owned(), "quay.io/org/tool".to_owned()];
        let doc = metadata(Some(&img), &exports, &tags);
        assert_eq!(
            doc,
            json!({
                "containerimage.digest": Digest::of(b"manifest").to_string(),
                "containerimage.config.digest": Digest::of(b"config").to_string(),
                "containerimage.descriptor": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": Digest::of(b"manifest").to_string(),
                    "size": 412,
                    "annotations": {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"},
                },
                "image.name": "docker.io/library/app:1,quay.io/org/tool:latest",
            })
        );
        assert_eq!(image_id(Some(&img)), Digest::of(b"config").to_string());
    }

    #[test]
    fn metadata_names_pushes_as_given_and_local_exports_as_nothing() {
        let img = image();
        let pushed = metadata(
            Some(&img),
            &[Export::Registry {
                names: vec![
                    "localhost:5000/app:1".to_owned(),
                    "localhost:5000/app:2".to_owned(),
                ],
                format: Default::default(),
                push_by_digest: false,
            }],
            &[],
        );
        assert_eq!(
            pushed["image.name"],
            json!("localhost:5000/app:1,localhost:5000/app:2")
        );
        // An unnamed tarball has no image.name, as BuildKit reports none.
        let unnamed = metadata(
            Some(&img),
            &[Export::Docker {
                dest: "d.tar".into(),
                format: Default::default(),
            }],
            &[],
        );
        assert!(unnamed.get("image.name").is_none(), "{unnamed}");
        assert!(unnamed.get("containerimage.digest").is_some(), "{unnamed}");
        let local = metadata(
            None,
            &[Export::Local { dest: "out".into() }],
            &["app:1".to_owned()],
        );
        assert_eq!(local, json!({}));
        assert_eq!(image_id(None), "");
    }

    #[test]
    fn iidfile_and_metadata_file_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let iid = dir.path().join("iid");
        std::fs::write(&iid, "sha256:old").unwrap();
        remove_stale_iidfile(&iid).unwrap();
        assert!(!iid.exists());
        // Nothing to remove is no error.
        remove_stale_iidfile(&iid).unwrap();
        write_iidfile(&iid, "sha256:abc").unwrap();
        assert_eq!(std::fs::read_to_string(&iid).unwrap(), "sha256:abc");

        let meta = dir.path().join("meta.json");
        let doc = metadata(Some(&image()), &[], &[]);
        write_metadata_file(&meta, &doc).unwrap();
        let text = std::fs::read_to_string(&meta).unwrap();
        assert!(text.starts_with("{\n  \"containerimage."), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "a temporary file was left: {names:?}");

        let missing = dir.path().join("no/such/dir/meta.json");
        let e = format!("{:#}", write_metadata_file(&missing, &doc).unwrap_err());
        assert!(
            e.contains("writing the metadata file") && e.contains("no/such/dir"),
            "{e}"
        );
    }
}
