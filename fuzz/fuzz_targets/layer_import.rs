//! Layer import (a pulled layer's tar into the store) on arbitrary bytes: never a panic, and
//! nothing is ever written outside the store, whatever the archive says.
#![no_main]

use std::sync::OnceLock;

use kiln_snapshot::Store;
use libfuzzer_sys::fuzz_target;

struct Scratch {
    dir: tempfile::TempDir,
    store: Store,
}

fn scratch() -> &'static Scratch {
    static S: OnceLock<Scratch> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("outside")).expect("mkdir");
        let store = Store::open(dir.path().join("store")).expect("open a store");
        Scratch { dir, store }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = scratch();
    let _ = s.store.import_tar_bytes(data);
    // The store lives in `store/`; its sibling must stay empty.
    let outside = s.dir.path().join("outside");
    assert!(
        std::fs::read_dir(&outside)
            .expect("read outside")
            .next()
            .is_none(),
        "the import wrote outside the store"
    );
    assert!(
        std::fs::read_dir(s.dir.path())
            .expect("read scratch")
            .count()
            == 2,
        "the import created something beside the store"
    );
});
