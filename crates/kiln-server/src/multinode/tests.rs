use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_engine::{ImageFormat, TarDest};
use kiln_types::image::{
    Descriptor, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST,
};

use super::layout::{in_platform_order, Blobs};
use super::*;

fn p(s: &str) -> Platform {
    s.parse::<Platform>().expect("platform").normalize()
}

/// One platform's image as a node's OCI layout tarball holds it: (manifest descriptor with
/// platform, blobs by digest).
fn image(platform: &str, layers: &[&[u8]]) -> (Descriptor, Vec<(Digest, Vec<u8>)>) {
    let config = format!(
        r#"{{"architecture":"{}","os":"linux"}}"#,
        p(platform).architecture
    );
    let mut blobs = vec![(Digest::of(config.as_bytes()), config.clone().into_bytes())];
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|l| {
            blobs.push((Digest::of(l), l.to_vec()));
            Descriptor::new(MEDIA_TYPE_LAYER_GZIP, Digest::of(l), l.len() as u64)
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_MANIFEST.to_owned()),
        config: Descriptor::new(
            MEDIA_TYPE_CONFIG,
            Digest::of(config.as_bytes()),
            config.len() as u64,
        ),
        layers,
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(&bytes), bytes.len() as u64);
    d.platform = Some(p(platform));
    blobs.push((d.digest, bytes));
    (d, blobs)
}

/// A node's layout tarball as `kiln_export::export_oci` writes one image: `index.json` names
/// the manifest with the ref name and image name annotations.
fn node_tar(dir: &Path, name: &str, image: &(Descriptor, Vec<(Digest, Vec<u8>)>)) -> PathBuf {
    let mut top = image.0.clone();
    top.annotations
        .insert(ANNOTATION_REF_NAME.to_owned(), "latest".to_owned());
    top.annotations.insert(
        "io.containerd.image.name".to_owned(),
        "example/app:latest".to_owned(),
    );
    let index = Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.to_owned()),
        manifests: vec![top],
        annotations: BTreeMap::new(),
    };
    let path = dir.join(format!("{name}.tar"));
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let h = kiln_export::layout_tar_header(path, data.len() as u64, false).unwrap();
        b.append(&h, data).unwrap();
    };
    for (d, bytes) in &image.1 {
        add(&format!("blobs/sha256/{}", d.hex()), bytes);
    }
    add("index.json", &serde_json::to_vec(&index).unwrap());
    add("oci-layout", kiln_export::OCI_LAYOUT);
    b.into_inner().unwrap();
    path
}

fn tar_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

#[test]
fn the_nodes_layouts_become_one_layout_naming_an_index_of_every_platform() {
    let t = tempfile::tempdir().unwrap();
    // Both images share their base layer; each has a layer of its own.
    let amd = image("linux/amd64", &[b"base layer", b"amd64 binary"]);
    let arm = image("linux/arm64", &[b"base layer", b"arm64 binary"]);
    let a = node_tar(t.path(), "a", &amd);
    let b = node_tar(t.path(), "b", &arm);

    let blobs = Blobs::in_dir(&t.path().join("blobs")).unwrap();
    // The arm64 node answered first: the index still follows --platform's order.
    let from_b = blobs.add_layout_tar("b", &b).unwrap();
    let from_a = blobs.add_layout_tar("a", &a).unwrap();
    assert_eq!(from_a.manifests.len(), 1);
    assert!(
        from_a.manifests[0].annotations.is_empty(),
        "the node's names are dropped: {:?}",
        from_a.manifests[0].annotations
    );
    let targets = [p("linux/amd64"), p("linux/arm64")];
    let manifests = in_platform_order(
        &targets,
        &[
            ("b".to_owned(), from_b.manifests),
            ("a".to_owned(), from_a.manifests),
        ],
    )
    .unwrap();
    // A destination directory that does not exist yet is made, as a one-machine export makes it.
    let dest = t.path().join("out/dir/out.tar");
    let names = ["localhost:5000/app:1".to_owned()];
    let index = blobs
        .write_layout(manifests, &ImageFormat::default(), &names, &dest, true)
        .unwrap();

    let entries = tar_entries(&dest);
    let paths: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    // The layout a one-machine export writes: directories, blobs sorted by digest, each once,
    // then index.json and oci-layout.
    let mut blob_paths: Vec<String> = amd
        .1
        .iter()
        .chain(&arm.1)
        .map(|(d, _)| format!("blobs/sha256/{}", d.hex()))
        .chain([format!("blobs/sha256/{}", index.digest.hex())])
        .collect();
    blob_paths.sort();
    blob_paths.dedup();
    // Per image a config, two layers and a manifest; the base layer once; the index.
    assert_eq!(blob_paths.len(), 4 + 4 - 1 + 1, "the base layer once");
    let mut want: Vec<&str> = vec!["blobs/", "blobs/sha256/"];
    want.extend(blob_paths.iter().map(String::as_str));
    want.extend(["index.json", "oci-layout"]);
    assert_eq!(paths, want);

    let get = |name: &str| {
        entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    let top: Index = serde_json::from_slice(&get("index.json")).unwrap();
    assert_eq!(top.manifests.len(), 1);
    assert_eq!(top.manifests[0].digest, index.digest);
    assert_eq!(top.manifests[0].media_type, MEDIA_TYPE_INDEX);
    assert_eq!(top.manifests[0].annotations[ANNOTATION_REF_NAME], "1");
    let idx_bytes = get(&format!("blobs/sha256/{}", index.digest.hex()));
    assert_eq!(Digest::of(&idx_bytes), index.digest);
    let idx: Index = serde_json::from_slice(&idx_bytes).unwrap();
    let listed: Vec<(Digest, String)> = idx
        .manifests
        .iter()
        .map(|d| (d.digest, d.platform.as_ref().unwrap().to_string()))
        .collect();
    assert_eq!(
        listed,
        [
            (amd.0.digest, "linux/amd64".to_owned()),
            (arm.0.digest, "linux/arm64".to_owned())
        ]
    );
    // The same index a one-machine build makes of the same images.
    let same = kiln_export::index_document(vec![amd.0.clone(), arm.0.clone()], &Default::default())
        .unwrap();
    assert_eq!(same.bytes, idx_bytes);

    // Merging again gives the same bytes (deterministic), and a directory holds the same.
    let again = t.path().join("again.tar");
    let blobs2 = Blobs::in_dir(&t.path().join("blobs2")).unwrap();
    let m2 = [
        blobs2.add_layout_tar("a", &a).unwrap().manifests,
        blobs2.add_layout_tar("b", &b).unwrap().manifests,
    ]
    .concat();
    blobs2
        .write_layout(m2.clone(), &ImageFormat::default(), &names, &again, true)
        .unwrap();
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(&again).unwrap()
    );
    let dir = t.path().join("layout");
    blobs2
        .write_layout(m2, &ImageFormat::default(), &names, &dir, false)
        .unwrap();
    for b in &blob_paths {
        assert!(dir.join(b).is_file(), "{b}");
    }
    assert_eq!(
        std::fs::read(dir.join("index.json")).unwrap(),
        get("index.json")
    );
}

#[test]
fn a_blob_whose_bytes_are_not_its_digest_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut amd = image("linux/amd64", &[b"layer"]);
    // The layer's entry carries other bytes than its name says.
    amd.1[1].1 = b"tampered".to_vec();
    let a = node_tar(t.path(), "a", &amd);
    let blobs = Blobs::in_dir(&t.path().join("blobs")).unwrap();
    let err = blobs.add_layout_tar("a", &a).err().unwrap().to_string();
    assert!(
        err.starts_with("node a: its OCI layout: blobs/sha256/"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "holds bytes of digest {}",
            Digest::of(b"tampered")
        )),
        "{err}"
    );
    assert!(
        !t.path()
            .join("blobs")
            .join(Digest::of(b"layer").hex())
            .exists(),
        "nothing is kept under a digest its bytes do not have"
    );
}

#[test]
fn a_platform_missing_from_the_results_is_an_error() {
    let amd = image("linux/amd64", &[b"x"]);
    let err = in_platform_order(
        &[p("linux/amd64"), p("linux/arm64")],
        &[("a".to_owned(), vec![amd.0])],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no image for linux/arm64"), "{err}");
}

#[test]
fn each_images_attestation_manifest_follows_the_images_in_platform_order() {
    let amd = image("linux/amd64", &[b"x"]).0;
    let arm = image("linux/arm64", &[b"y"]).0;
    let att = |of: &Descriptor, body: &[u8]| {
        let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, Digest::of(body), body.len() as u64);
        d.platform = Some("unknown/unknown".parse().unwrap());
        d.annotations.insert(
            kiln_export::ANNOTATION_REFERENCE_TYPE.to_owned(),
            kiln_export::REFERENCE_TYPE_ATTESTATION.to_owned(),
        );
        d.annotations.insert(
            kiln_export::ANNOTATION_REFERENCE_DIGEST.to_owned(),
            of.digest.to_string(),
        );
        d
    };
    let (att_amd, att_arm) = (att(&amd, b"amd att"), att(&arm, b"arm att"));
    // Each node's attested index: its image, then the image's attestation manifest.
    let got = in_platform_order(
        &[p("linux/amd64"), p("linux/arm64")],
        &[
            ("b".to_owned(), vec![arm.clone(), att_arm.clone()]),
            ("a".to_owned(), vec![amd.clone(), att_amd.clone()]),
        ],
    )
    .unwrap();
    let digests: Vec<Digest> = got.iter().map(|d| d.digest).collect();
    assert_eq!(
        digests,
        [amd.digest, arm.digest, att_amd.digest, att_arm.digest],
        "images first, then their attestations, as one machine's index"
    );
    assert_eq!(got[2].annotations, att_amd.annotations);
}

/// Collects events.
#[derive(Default)]
struct Seen(Mutex<Vec<Event<Digest>>>);

impl ProgressSink<Digest> for Seen {
    fn send(&self, e: Event<Digest>) {
        self.0.lock().unwrap().push(e);
    }
}

#[test]
fn each_nodes_steps_are_named_with_its_platform_and_kept_apart() {
    let seen = Arc::new(Seen::default());
    let sink = |label: &str| Labelled {
        inner: seen.clone(),
        label: label.to_owned(),
    };
    let export = Digest::of(b"internal:export");
    let arm = sink("linux/arm64");
    let amd = sink("linux/amd64");
    arm.send(Event::Started {
        id: Digest::of(b"step"),
        name: "[2/3] RUN make".to_owned(),
    });
    arm.send(Event::Log {
        id: export,
        name: "exporting to image".to_owned(),
        line: "done".to_owned(),
    });
    amd.send(Event::Cached {
        id: export,
        name: "exporting to image".to_owned(),
    });
    let seen = seen.0.lock().unwrap();
    let Event::Started { name, .. } = &seen[0] else {
        panic!("{:?}", seen[0])
    };
    assert_eq!(name, "[linux/arm64 2/3] RUN make");
    let (Event::Log { id: a, name, .. }, Event::Cached { id: b, .. }) = (&seen[1], &seen[2]) else {
        panic!("{seen:?}")
    };
    assert_eq!(name, "[linux/arm64] exporting to image");
    // A node of two platforms: its platforms' own steps are named already; a step they share
    // gets both.
    let label = "linux/amd64,linux/riscv64";
    assert_eq!(
        relabel(label, "[linux/riscv64 stage-1 1/1] COPY x /"),
        "[linux/riscv64 stage-1 1/1] COPY x /"
    );
    assert_eq!(
        relabel(label, "[build 1/2] FROM busybox"),
        "[linux/amd64,linux/riscv64 build 1/2] FROM busybox"
    );
    assert_eq!(
        relabel("linux/arm", "[linux/arm64 1/1] COPY"),
        "[linux/arm linux/arm64 1/1] COPY",
        "a platform is matched whole"
    );
    // The same step id on two nodes is two lines of the display.
    assert_ne!(a, b);

    // A failed step is the display's step (the tail of its lines is found by this id).
    let f = relabel_failure(
        "linux/arm64",
        FailureView {
            message: "[2/3] RUN make (sha256:0123): process did not complete successfully"
                .to_owned(),
            step: Some((Digest::of(b"step"), "[2/3] RUN make".to_owned())),
            step_line: Some(3),
            frontend_line: None,
            dockerfile: None,
            location_file: None,
        },
    );
    assert_eq!(
        f.step,
        Some((
            reid("linux/arm64", &Digest::of(b"step")),
            "[linux/arm64 2/3] RUN make".to_owned()
        ))
    );
    assert_eq!(
        f.message,
        "[linux/arm64 2/3] RUN make (sha256:0123): process did not complete successfully"
    );
    let f = relabel_failure(
        "linux/arm64",
        FailureView {
            message: "dockerfile parse error".to_owned(),
            step: None,
            step_line: None,
            frontend_line: Some(1),
            dockerfile: None,
            location_file: None,
        },
    );
    assert_eq!(f.message, "[linux/arm64] dockerfile parse error");
}

fn request(exports: Vec<Export>) -> BuildRequest {
    BuildRequest {
        context: "/ctx".into(),
        dockerfile: "/ctx/Dockerfile".into(),
        frontend: None,
        build_args: BTreeMap::new(),
        target: None,
        no_cache: false,
        platform: p("linux/amd64"),
        platforms: vec![p("linux/amd64"), p("linux/arm64"), p("linux/riscv64")],
        exports,
        tags: vec!["localhost:5000/app:1".to_owned()],
        secrets: BTreeMap::new(),
        build_contexts: BTreeMap::new(),
        runtime: kiln_engine::ExecRuntime::Embedded,
        ssh: BTreeMap::new(),
        network: kiln_engine::NetworkMode::Default,
        allow: Default::default(),
        run_options: Default::default(),
        no_cache_filter: Vec::new(),
        labels: BTreeMap::new(),
        call: None,
        cache_to: Vec::new(),
        cache_from: Vec::new(),
        explain_cache: false,
    }
}

#[test]
fn a_node_builds_its_platforms_with_the_same_flags_and_outputs_the_client_assembles() {
    let t = tempfile::tempdir().unwrap();
    let req = request(vec![
        Export::Oci {
            dest: "/out/app.tar".into(),
            tar: true,
            format: ImageFormat::default(),
        },
        Export::Local {
            dest: "/out/files".into(),
        },
        Export::Registry {
            names: vec!["localhost:5000/app:1".to_owned()],
            format: ImageFormat::default(),
            push_by_digest: false,
        },
        Export::Tar {
            dest: TarDest::File("/out/files.tar".into()),
        },
    ]);
    let one = Share {
        node: 1,
        platforms: vec![p("linux/arm64")],
    };
    let sub = node_request(&req, &one, t.path()).unwrap();
    assert_eq!(sub.platform, p("linux/arm64"));
    assert!(
        sub.platforms.is_empty(),
        "one platform is a single-platform build"
    );
    assert_eq!(sub.tags, req.tags);
    let Export::Oci {
        dest, tar: true, ..
    } = &sub.exports[0]
    else {
        panic!("{:?}", sub.exports[0])
    };
    assert!(
        dest.starts_with(t.path()),
        "the node's layout goes to scratch: {dest:?}"
    );
    let Export::Local { dest } = &sub.exports[1] else {
        panic!("{:?}", sub.exports[1])
    };
    assert_eq!(dest, Path::new("/out/files/linux_arm64"));
    let Export::Registry {
        push_by_digest: true,
        names,
        ..
    } = &sub.exports[2]
    else {
        panic!("a node pushes by digest: {:?}", sub.exports[2])
    };
    assert_eq!(names, &req.tags);
    let Export::Local { dest } = &sub.exports[3] else {
        panic!("{:?}", sub.exports[3])
    };
    assert!(
        dest.starts_with(t.path()) && dest.ends_with("linux_arm64"),
        "{dest:?}"
    );

    // A node of two platforms builds both in one solve and writes their directories itself.
    let two = Share {
        node: 0,
        platforms: vec![p("linux/amd64"), p("linux/riscv64")],
    };
    let sub = node_request(&req, &two, t.path()).unwrap();
    assert_eq!(sub.platforms, two.platforms);
    let Export::Local { dest } = &sub.exports[1] else {
        panic!("{:?}", sub.exports[1])
    };
    assert_eq!(dest, Path::new("/out/files"));
}

#[test]
fn docker_archives_of_several_platforms_are_refused_before_anything_runs() {
    let err = check_exports(&[Export::Load {
        format: ImageFormat::default(),
    }])
    .unwrap_err()
    .to_string();
    assert_eq!(err, DOCKER_MULTI_PLATFORM);
    assert!(check_exports(&[Export::Tar {
        dest: TarDest::Stdout
    }])
    .is_err());
}

#[test]
fn each_node_pushes_its_cache_part_beside_the_tag_the_build_named() {
    let r: Reference = "127.0.0.1:5000/app/cache:main".parse().unwrap();
    let part = part_reference(&r, 1);
    assert_eq!(part.to_string(), "127.0.0.1:5000/app/cache:main-kiln-node1");
    let untagged: Reference = "127.0.0.1:5000/app/cache".parse().unwrap();
    assert_eq!(
        part_reference(&untagged, 0).tag.as_deref(),
        Some("latest-kiln-node0")
    );
    let long = Reference {
        tag: Some("t".repeat(128)),
        ..r
    };
    assert_eq!(part_reference(&long, 12).tag.unwrap().len(), 128);
}
