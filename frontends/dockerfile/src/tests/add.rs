//! ADD's graphs: archives, URLs and git sources.

use kiln_graph::{Chmod, Op, Vertex};

use super::{copy_action, fail, input, output, run};

fn custom(v: &Vertex) -> (String, serde_json::Value) {
    match &v.op {
        Op::Custom(c) => (
            c.primitive.clone(),
            serde_json::from_str(&c.payload).unwrap(),
        ),
        other => panic!("expected a custom op, got {other:?}"),
    }
}

#[test]
fn local_archives_unpack_by_default() {
    let resp = run("FROM scratch\nADD app.tar.gz /opt/\nADD --unpack=false b.tar /b/\n");
    let def = &resp.definition;
    let last = output(def);
    assert!(!copy_action(last, 0).unpack);
    let first = input(def, last, 0);
    let c = copy_action(&first, 0);
    assert!(c.unpack);
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/app.tar.gz", "/opt/"));
    // COPY never unpacks.
    let resp = run("FROM scratch\nCOPY app.tar.gz /opt/\n");
    assert!(!copy_action(output(&resp.definition), 0).unpack);
}

#[test]
fn urls_become_http_vertices() {
    let sum = format!("sha256:{}", "ab".repeat(32));
    let resp = run(&format!(
        "FROM scratch\nADD --checksum={sum} --chmod=644 --chown=1:2 https://example.com/dl/tool.tar.gz?v=1 /bin/\n"
    ));
    let def = &resp.definition;
    let v = output(def);
    let c = copy_action(v, 0);
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/tool.tar.gz", "/bin/"));
    assert!(!c.unpack, "remote archives are not extracted by default");
    assert_eq!(c.mode, Some(Chmod::Octal(0o644)));
    assert!(c.owner.is_some());
    let fetched = input(def, v, c.source.unwrap() as usize);
    let (primitive, payload) = custom(&fetched);
    assert_eq!(primitive, "http");
    assert_eq!(
        payload,
        serde_json::json!({
            "url": "https://example.com/dl/tool.tar.gz?v=1",
            "checksum": sum,
            "filename": "tool.tar.gz",
        })
    );
    assert!(fetched.inputs.is_empty());

    let resp = run("FROM scratch\nADD --unpack=true https://example.com/a.tgz /x\n");
    assert!(copy_action(output(&resp.definition), 0).unpack);

    // The same URL gives the same vertex digest whatever the content: no checksum, no pin.
    let a = run("FROM scratch\nADD https://example.com/f /f\n");
    let b = run("FROM scratch\nADD https://example.com/f /f\n");
    assert_eq!(a.definition.outputs, b.definition.outputs);
}

#[test]
fn git_sources_become_git_vertices() {
    let resp =
        run("FROM scratch\nADD --keep-git-dir=true https://example.com/r.git#v1.0:sub/dir /src\n");
    let def = &resp.definition;
    let v = output(def);
    let c = copy_action(v, 0);
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/", "/src"));
    let (primitive, payload) = custom(&input(def, v, c.source.unwrap() as usize));
    assert_eq!(primitive, "git");
    assert_eq!(
        payload,
        serde_json::json!({
            "remote": "https://example.com/r.git",
            "ref": "v1.0",
            "subdir": "sub/dir",
            "keep_git_dir": true,
        })
    );
    let resp = run("FROM scratch\nADD git@example.com:o/r.git /src/\n");
    let def = &resp.definition;
    let v = output(def);
    let (_, payload) = custom(&input(def, v, copy_action(v, 0).source.unwrap() as usize));
    assert_eq!(
        payload,
        serde_json::json!({"remote": "git@example.com:o/r.git", "keep_git_dir": false})
    );
}

#[test]
fn add_errors_carry_the_line() {
    let e = fail("FROM scratch\n\nADD --checksum=md5:00 https://example.com/f /f\n");
    assert!(
        e.message.contains("invalid checksum digest format"),
        "{}",
        e.message
    );
    assert_eq!(e.location.unwrap().line, 3);
    let e = fail("FROM scratch\nADD --checksum=sha256:00 https://example.com/f local /d/\n");
    assert!(
        e.message
            .starts_with("checksum requires HTTP(S) or Git sources"),
        "{}",
        e.message
    );
    let e = fail("FROM scratch\nADD --checksum=zz https://example.com/r.git /d\n");
    assert!(e.message.contains("expected a commit id"), "{}", e.message);
}

#[test]
fn url_filenames_are_percent_decoded() {
    use crate::add::url_filename;
    for (url, name) in [
        ("https://h/dir/tool.tar.gz?x=1#f", "tool.tar.gz"),
        ("https://h/a%20b%E2%99%A5", "a b\u{2665}"),
        // Malformed escapes stay as written; bytes that are not UTF-8 become U+FFFD.
        ("https://h/100%25%zz%4", "100%%zz%4"),
        ("https://h/x%FF", "x\u{fffd}"),
        // A decoded separator or NUL, or no name at all, gives BuildKit's placeholder.
        ("https://h/a%2Fb", "__unnamed__"),
        ("https://h/a%00", "__unnamed__"),
        ("https://h/..", "__unnamed__"),
        ("https://h/%2E%2E", "__unnamed__"),
        ("https://h", "__unnamed__"),
        ("https://h/dir/", "__unnamed__"),
    ] {
        assert_eq!(url_filename(url), name, "{url}");
    }
}
