//! ADD's archive extraction on arbitrary bytes (plain, gzip, bzip2, xz, zstd, detected by
//! content): never a panic, and nothing outside the destination, whatever the archive says.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).expect("mkdir");
    let _ = kiln_engine::extract_archive_bytes(data, &dest);
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read scratch")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("dest")],
        "written beside dest"
    );
    // A symlink may point anywhere (it is data), but the walk without following links
    // must stay inside dest: no entry was created through `..` or a link.
    for entry in walkdir::WalkDir::new(&dest).follow_links(false) {
        let entry = entry.expect("walk dest");
        assert!(entry.path().starts_with(&dest));
    }
});
