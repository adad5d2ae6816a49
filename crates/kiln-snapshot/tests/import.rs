//! Layer import: hostile tars are refused without touching anything outside the layer (and
//! leave no layer behind); good ones round-trip through `write_layer_tar`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_snapshot::*;
use kiln_types::image::{MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD};
use kiln_types::Digest;

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

/// A tar with names written byte for byte (the `tar` crate's builder refuses `..` and
/// absolute names, which is exactly what these tests need).
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mode(0o644);
        let (name, data): (&str, &[u8]) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, b"")
            }
            E::File(n, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (n, d)
            }
            E::Sym(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_link_name(t).unwrap();
                (n, b"")
            }
            E::Hard(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name(t).unwrap();
                (n, b"")
            }
        };
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name = [0; 100];
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

struct Fixture {
    _t: tempfile::TempDir,
    store: Store,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let store = Store::open(t.path().join("store")).unwrap();
    Fixture {
        _t: t,
        store,
        outside,
    }
}

fn assert_refused(f: &Fixture, tar: &[u8], entry: &str, why: &str) {
    let blob = f.store.write_blob(&gzip(tar)).unwrap();
    let err = f
        .store
        .import_layer(&blob, MEDIA_TYPE_LAYER_GZIP)
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("refused: {msg}");
    assert!(msg.contains(&blob.to_string()), "names the blob: {msg}");
    assert!(
        msg.contains(&format!("{entry:?}")),
        "names {entry:?}: {msg}"
    );
    assert!(msg.contains(why), "says {why:?}: {msg}");
    assert_eq!(
        fs::read_dir(&f.outside).unwrap().count(),
        0,
        "nothing written outside"
    );
    let root = f.store.root();
    let layers: Vec<_> = fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        layers.iter().all(|l| l.starts_with("by-")),
        "no layer left behind: {layers:?}"
    );
    assert_eq!(
        fs::read_dir(root.join("layers/by-diff-id"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "tmp/ swept"
    );
}

#[test]
fn dot_dot_above_the_root_is_refused() {
    let f = fixture();
    // The layer is written at <t>/store/tmp/layer-*/fs: four levels up is <t>.
    let tar = tar_of(&[
        E::File("ok", b"1"),
        E::File("../../../../outside/x", b"pwned"),
    ]);
    assert_refused(
        &f,
        &tar,
        "../../../../outside/x",
        "climbs above the layer root",
    );
    let tar = tar_of(&[E::File("a/../../../../../outside/x", b"pwned")]);
    assert_refused(&f, &tar, "a/../../../../../outside/x", "climbs above");
}

#[test]
fn absolute_names_are_made_relative() {
    let f = fixture();
    let abs = format!("{}/x", f.outside.display());
    let tar = tar_of(&[E::File(&abs, b"inside")]);
    let blob = f.store.write_blob(&tar).unwrap();
    let l = f.store.import_layer(&blob, MEDIA_TYPE_LAYER_TAR).unwrap();
    assert_eq!(fs::read_dir(&f.outside).unwrap().count(), 0);
    let inside = f.store.layer_dir(&l.id).join(abs.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"inside");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let f = fixture();
    let out = f.outside.display().to_string();
    let tar = tar_of(&[E::Sym("lnk", &out), E::File("lnk/pwned", b"x")]);
    assert_refused(&f, &tar, "lnk/pwned", "symlink");
    let tar = tar_of(&[E::Sym("lnk", "../../../../outside"), E::Dir("lnk/d/")]);
    assert_refused(&f, &tar, "lnk/d/", "symlink");
    // A chain: a -> b -> outside; then write below a.
    let tar = tar_of(&[
        E::Dir("d/"),
        E::Sym("d/b", &out),
        E::Sym("a", "d/b"),
        E::File("a/pwned", b"x"),
    ]);
    assert_refused(&f, &tar, "a/pwned", "symlink");
    // A symlink replacing a directory, then a write below it.
    let tar = tar_of(&[
        E::Dir("etc/"),
        E::Sym("etc", &out),
        E::File("etc/passwd", b"x"),
    ]);
    assert_refused(&f, &tar, "etc/passwd", "symlink");
}

#[test]
fn hard_links_must_stay_inside_the_layer() {
    let f = fixture();
    let tar = tar_of(&[E::Hard("passwd", "/etc/passwd")]);
    assert_refused(&f, &tar, "passwd", "not a regular file created earlier");
    let tar = tar_of(&[E::Hard("x", "../../x")]);
    assert_refused(&f, &tar, "x", "climbs above");
    let out = f.outside.display().to_string();
    let tar = tar_of(&[E::Sym("lnk", &out), E::Hard("h", "lnk/secret")]);
    assert_refused(&f, &tar, "h", "not a regular file created earlier");
    // To a directory of this layer.
    let tar = tar_of(&[E::Dir("d/"), E::Hard("h", "d")]);
    assert_refused(&f, &tar, "h", "not a regular file created earlier");
    // To a file that a later entry replaced with a symlink.
    let tar = tar_of(&[
        E::File("f", b"1"),
        E::Sym("f", "/etc/passwd"),
        E::Hard("h", "f"),
    ]);
    assert_refused(&f, &tar, "h", "not a regular file created earlier");
}

#[test]
fn a_file_used_as_a_directory_and_odd_media_types_are_refused() {
    let f = fixture();
    let tar = tar_of(&[E::File("f", b"1"), E::File("f/x", b"2")]);
    assert_refused(&f, &tar, "f/x", "not a directory");
    let blob = f.store.write_blob(&tar).unwrap();
    let err = f
        .store
        .import_layer(&blob, "application/vnd.oci.image.layer.v1.tar+bzip2")
        .unwrap_err();
    assert!(err.to_string().contains("unsupported media type"), "{err}");
    assert!(err.to_string().contains(&blob.to_string()), "{err}");
    // A gzip blob announced as such but holding garbage.
    let bad = f.store.write_blob(b"not gzip at all").unwrap();
    let err = f
        .store
        .import_layer(&bad, MEDIA_TYPE_LAYER_GZIP)
        .unwrap_err();
    assert!(err.to_string().contains(&bad.to_string()), "{err}");
    assert_eq!(fs::read_dir(f.store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn whiteouts_and_opaque_markers_become_overlay_format() {
    let f = fixture();
    let tar = tar_of(&[
        E::Dir("etc/"),
        E::File("etc/.wh.drop", b""),
        E::Dir("opq/"),
        E::File("opq/.wh..wh..opq", b""),
        E::File("opq/new", b"n"),
        E::File(".wh..wh.plnk", b""),
    ]);
    let blob = f.store.write_blob(&gzip(&tar)).unwrap();
    let l = f.store.import_layer(&blob, MEDIA_TYPE_LAYER_GZIP).unwrap();
    assert_eq!(l.diff_id, Digest::of(&tar));
    assert_eq!(l.notes.len(), 1, "aufs metadata noted: {:?}", l.notes);
    let dir = f.store.layer_dir(&l.id);
    let wh = fs::symlink_metadata(dir.join("etc/drop")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(dir.join("opq"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(dir.join("opq/new")).unwrap(), b"n");
    assert!(!dir.join(".wh..wh.plnk").exists());
}

/// A directory with one of everything a layer can hold.
fn rich_dir(d: &Path) {
    fs::create_dir_all(d.join("etc/opq")).unwrap();
    fs::create_dir_all(d.join("bin")).unwrap();
    fs::write(d.join("bin/su"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(d.join("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(d.join("etc/b"), b"bee").unwrap();
    fs::hard_link(d.join("etc/b"), d.join("etc/a")).unwrap();
    std::os::unix::fs::symlink("b", d.join("etc/c")).unwrap();
    std::os::unix::fs::symlink("/nowhere/../etc", d.join("abs")).unwrap();
    fs::write(d.join("etc/opq/inner"), b"i").unwrap();
    xattr::set(d.join("etc/opq"), "trusted.overlay.opaque", b"y").unwrap();
    xattr::set(d.join("etc/b"), "user.k", b"v").unwrap();
    xattr::set(d.join("etc/b"), "trusted.secret", b"no").unwrap();
    nix::sys::stat::mknod(
        &d.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    nix::sys::stat::mknod(
        &d.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    std::os::unix::fs::lchown(d.join("etc/b"), Some(1000), Some(1001)).unwrap();
    fs::create_dir(d.join("private")).unwrap();
    fs::set_permissions(d.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn an_imported_layer_exports_the_same_tar_and_is_deduplicated() {
    let f = fixture();
    let src = tempfile::tempdir().unwrap();
    rich_dir(src.path());
    let mut tar = Vec::new();
    let diff_id = write_layer_tar(src.path(), Compression::Uncompressed, &mut tar).unwrap();
    let mut gz = Vec::new();
    write_layer_tar(src.path(), Compression::Gzip, &mut gz).unwrap();

    let blob = f.store.write_blob(&gz).unwrap();
    let l = f.store.import_layer(&blob, MEDIA_TYPE_LAYER_GZIP).unwrap();
    assert_eq!(l.diff_id, diff_id);
    assert!(l.notes.is_empty(), "{:?}", l.notes);
    let mut again = Vec::new();
    let re = write_layer_tar(
        &f.store.layer_dir(&l.id),
        Compression::Uncompressed,
        &mut again,
    )
    .unwrap();
    assert_eq!(re, diff_id, "round trip gives the same diff id");
    assert_eq!(again, tar);
    // trusted.* never made it in.
    assert_eq!(
        xattr::get(f.store.layer_dir(&l.id).join("etc/b"), "trusted.secret").unwrap(),
        None
    );

    // Re-export keeps the pulled blob.
    let exported = f.store.layer_blob(&l.id, Compression::Gzip).unwrap();
    assert_eq!(exported.digest, blob);
    assert_eq!(exported.diff_id, diff_id);
    assert_eq!(exported.size, gz.len() as u64);

    // Same content as plain tar, as zstd, or the same blob again: the same layer.
    let plain = f.store.write_blob(&tar).unwrap();
    let zst = f
        .store
        .write_blob(&zstd::encode_all(tar.as_slice(), 3).unwrap())
        .unwrap();
    for (b, mt) in [
        (&plain, MEDIA_TYPE_LAYER_TAR),
        (&zst, MEDIA_TYPE_LAYER_ZSTD),
        (&blob, MEDIA_TYPE_LAYER_GZIP),
    ] {
        let again = f.store.import_layer(b, mt).unwrap();
        assert_eq!((again.id, again.diff_id), (l.id.clone(), diff_id), "{mt}");
    }
    assert_eq!(
        f.store.layer_by_diff_id(&diff_id).unwrap(),
        Some(l.id.clone())
    );
    let layer_dirs = fs::read_dir(f.store.root().join("layers"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("by-")
        })
        .count();
    assert_eq!(layer_dirs, 1);
    assert_eq!(fs::read_dir(f.store.root().join("tmp")).unwrap().count(), 0);
}

#[test]
fn an_imported_whiteout_hides_a_lower_file_with_either_snapshotter() {
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Copy] {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open_with(t.path(), kind).unwrap();
        let w = WriteView::new(&store, &Snapshot::default()).unwrap();
        fs::create_dir(w.path().join("etc")).unwrap();
        fs::write(w.path().join("etc/keep"), b"k").unwrap();
        fs::write(w.path().join("etc/drop"), b"d").unwrap();
        let base = w.commit().unwrap();

        let tar = tar_of(&[
            E::Dir("etc/"),
            E::File("etc/.wh.drop", b""),
            E::File("etc/new", b"n"),
        ]);
        let blob = store.write_blob(&gzip(&tar)).unwrap();
        let top = store.import_layer(&blob, MEDIA_TYPE_LAYER_GZIP).unwrap();
        let v = ReadView::new(
            &store,
            &Snapshot {
                layers: vec![base, top.id],
            },
        )
        .unwrap();
        assert!(!v.path().join("etc/drop").exists(), "{kind:?}");
        assert_eq!(fs::read(v.path().join("etc/keep")).unwrap(), b"k");
        assert_eq!(fs::read(v.path().join("etc/new")).unwrap(), b"n");
    }
}

/// A ustar header of `kind` for `name`, with `size` bytes of data to follow.
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).unwrap();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h.set_cksum();
    h
}

/// PAX records (`<len> <key>=<value>\n`, the length counting itself).
fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while (len.to_string().len() + body) != len {
            len = len.to_string().len() + body;
        }
        out.extend_from_slice(format!("{len} {k}=").as_bytes());
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// A tar of: a PAX header with `records`, then the file `name` holding `data`.
fn tar_with_pax(records: &[(&str, &[u8])], name: &str, data: &[u8]) -> Vec<u8> {
    let pax = pax_records(records);
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header("PaxHeaders/x", tar::EntryType::XHeader, pax.len() as u64),
        &pax[..],
    )
    .unwrap();
    b.append(
        &raw_header(name, tar::EntryType::Regular, data.len() as u64),
        data,
    )
    .unwrap();
    b.into_inner().unwrap()
}

/// A tar of one file named `name` (a GNU long-name record when it needs one) holding `x`.
fn long_named_file(name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(1);
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn names_and_link_targets_beyond_linux_limits_are_refused() {
    let f = fixture();
    // A GNU long name of 4,200 bytes in 2-byte components: every component fits, the path does
    // not fit PATH_MAX.
    let long = format!("{}f", "a/".repeat(2100));
    let tar = long_named_file(&long);
    let shown = format!("{}… (4201 bytes)", &long[..200]);
    assert_refused(&f, &tar, &shown, "PATH_MAX");
    // One component longer than NAME_MAX.
    let name = format!("d/{}", "n".repeat(300));
    let tar = tar_of(&[E::File("ok", b"1")]);
    let mut tar = tar[..tar.len() - 1024].to_vec();
    tar.extend(long_named_file(&name));
    let shown = format!("{}… (302 bytes)", &name[..200]);
    assert_refused(&f, &tar, &shown, "NAME_MAX");
    // A symlink target longer than PATH_MAX (a PAX linkpath).
    let target = "t/".repeat(2500);
    let pax = pax_records(&[("linkpath", target.as_bytes())]);
    let mut b = tar::Builder::new(Vec::new());
    b.append(
        &raw_header("PaxHeaders/l", tar::EntryType::XHeader, pax.len() as u64),
        &pax[..],
    )
    .unwrap();
    b.append(&raw_header("lnk", tar::EntryType::Symlink, 0), &[][..])
        .unwrap();
    assert_refused(
        &f,
        &b.into_inner().unwrap(),
        "lnk",
        "link target is 5000 bytes",
    );
}

#[test]
fn oversized_extended_headers_are_refused_before_they_are_read() {
    let f = fixture();
    // 2 MiB of PAX comment before an ordinary file: the reader would hold it all in memory.
    let comment = vec![b'c'; 2 << 20];
    let tar = tar_with_pax(&[("comment", &comment)], "f", b"data");
    assert_refused(&f, &tar, "(start of tar)", "exceed 1048576 bytes");
    // The same after a first entry: the error names the entry before.
    let mut tar = tar_of(&[E::File("first", b"1")]);
    tar.truncate(tar.len() - 1024);
    tar.extend(tar_with_pax(&[("comment", &comment)], "f", b"data"));
    assert_refused(&f, &tar, "(tar stream after \"first\")", "exceed 1048576");
    // A GNU long-name record of 8 MiB.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(8 << 20);
    h.set_cksum();
    b.append(&h, std::io::repeat(b'n').take(8 << 20)).unwrap();
    b.append(&raw_header("f", tar::EntryType::Regular, 1), &b"x"[..])
        .unwrap();
    assert_refused(&f, &b.into_inner().unwrap(), "(start of tar)", "exceed");
}

#[test]
fn xattrs_beyond_linux_limits_are_refused() {
    let f = fixture();
    let big = vec![b'v'; 70_000];
    let tar = tar_with_pax(&[("SCHILY.xattr.user.big", &big)], "f", b"1");
    assert_refused(&f, &tar, "f", "70000-byte value");
    let name = format!("SCHILY.xattr.user.{}", "k".repeat(300));
    let tar = tar_with_pax(&[(&name, b"v")], "f", b"1");
    assert_refused(&f, &tar, "f", "Linux allows 1 to 255");
    let names: Vec<String> = (0..300)
        .map(|i| format!("SCHILY.xattr.user.a{i}"))
        .collect();
    let records: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"1"[..])).collect();
    let tar = tar_with_pax(&records, "f", b"1");
    assert_refused(&f, &tar, "f", "more than 256 xattrs");
}

#[test]
fn sizes_that_do_not_match_the_data_are_refused() {
    let f = fixture();
    // The header promises 10,000 bytes; the stream ends after 600.
    let mut tar = raw_header("short", tar::EntryType::Regular, 10_000)
        .as_bytes()
        .to_vec();
    tar.extend(vec![b'x'; 600]);
    assert_refused(
        &f,
        &tar,
        "short",
        "says 10000 bytes but the tar ends after 600",
    );
    // A GNU sparse file of 4 GiB holes around 512 stored bytes.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(512);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].offset = *b"37777777000\0";
    gnu.sparse[0].numbytes = *b"00000001000\0";
    gnu.realsize = *b"40000000000\0";
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[7u8; 512][..]).unwrap();
    assert_refused(
        &f,
        &b.into_inner().unwrap(),
        "sparse",
        "more than 1073741824 bytes of holes",
    );
}
