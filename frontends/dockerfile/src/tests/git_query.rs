//! ADD of git URLs with BuildKit's query string (`?ref=&subdir=&checksum=`...): what reaches
//! the `git` vertex, and the combinations with the ADD flags that BuildKit refuses.

use kiln_graph::{Op, Vertex};

use super::{copy_action, fail, input, output, run};

/// The payload of the git vertex the last ADD copies from.
fn git_payload(dockerfile: &str) -> serde_json::Value {
    let resp = run(dockerfile);
    let def = &resp.definition;
    let v = output(def);
    let src: Vertex = input(def, v, copy_action(v, 0).source.unwrap() as usize);
    match &src.op {
        Op::Custom(c) if c.primitive == "git" => serde_json::from_str(&c.payload).unwrap(),
        other => panic!("expected a git op, got {other:?}"),
    }
}

#[test]
fn query_options_reach_the_git_vertex() {
    let commit = "a".repeat(40);
    assert_eq!(
        git_payload(&format!(
            "FROM scratch\nADD https://example.com/o/r.git?ref=v1.2&subdir=docs&checksum={commit} /src\n"
        )),
        serde_json::json!({
            "remote": "https://example.com/o/r.git",
            "ref": "v1.2",
            "subdir": "docs",
            "keep_git_dir": false,
            "checksum": commit,
        })
    );
    assert_eq!(
        git_payload(
            "FROM scratch\nADD git://example.com/r.git?tag=v1&keep-git-dir=true&submodules=false&mtime=commit /src\n"
        ),
        serde_json::json!({
            "remote": "git://example.com/r.git",
            "ref": "refs/tags/v1",
            "keep_git_dir": true,
            "submodules": false,
            "mtime_commit": true,
        })
    );
    assert_eq!(
        git_payload(&format!(
            "FROM scratch\nADD https://example.com/r.git?branch=dev&fetch-by-commit&commit={commit} /src\n"
        )),
        serde_json::json!({
            "remote": "https://example.com/r.git",
            "ref": "refs/heads/dev",
            "keep_git_dir": false,
            "checksum": commit,
            "fetch_by_commit": true,
        })
    );
    // Flags that agree with the query are accepted; the query's keep-git-dir applies alone too.
    let p = git_payload(&format!(
        "FROM scratch\nADD --checksum={commit} --keep-git-dir=true https://example.com/r.git?checksum={commit}&keep-git-dir=1 /src\n"
    ));
    assert_eq!(p["keep_git_dir"], true);
    assert_eq!(p["checksum"], commit.as_str());
    // A variable in the URL is expanded before the query is read.
    let p = git_payload(
        "FROM scratch\nARG V=v9\nADD https://example.com/r.git?ref=${V}&subdir=a%2Fb /src\n",
    );
    assert_eq!(
        (p["ref"].as_str(), p["subdir"].as_str()),
        (Some("v9"), Some("a/b"))
    );
}

#[test]
fn refused_query_combinations_name_the_line() {
    let sum_a = "a".repeat(40);
    let sum_b = "b".repeat(40);
    for (df, msg) in [
        (
            "FROM scratch\n\nADD https://example.com/r.git?ref=v1#v2 /src\n".to_owned(),
            r#"ref conflicts: "v2" vs "v1""#.to_owned(),
        ),
        (
            "FROM scratch\n\nADD https://example.com/r.git?tag=v1&branch=main /src\n".to_owned(),
            "branch conflicts with tag".to_owned(),
        ),
        (
            "FROM scratch\n\nADD https://example.com/r.git?depth=1 /src\n".to_owned(),
            r#"unexpected query "depth""#.to_owned(),
        ),
        (
            format!("FROM scratch\n\nADD --checksum={sum_a} https://example.com/r.git?checksum={sum_b} /src\n"),
            format!("checksum mismatch \"{sum_a}\" != \"{sum_b}\""),
        ),
        (
            "FROM scratch\n\nADD --keep-git-dir=false https://example.com/r.git?keep-git-dir=true /src\n".to_owned(),
            "inconsistent keep-git-dir configuration".to_owned(),
        ),
        (
            "FROM scratch\n\nADD https://example.com/r.git?checksum=xyz /src\n".to_owned(),
            "expected a commit id".to_owned(),
        ),
    ] {
        let e = fail(&df);
        assert!(e.message.contains(&msg), "{df}: {}", e.message);
        assert_eq!(e.location.expect("a location").line, 3, "{df}");
    }
}
