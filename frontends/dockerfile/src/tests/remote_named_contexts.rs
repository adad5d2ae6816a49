//! Named contexts given as URLs (`--build-context NAME=<git url>`, `NAME=https://...`) become
//! the sources BuildKit's dockerui makes for them: a git checkout, or one downloaded file named
//! `context`.

use super::*;

fn custom_payloads(def: &Definition) -> Vec<(String, serde_json::Value)> {
    def.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Custom(c) => Some((
                c.primitive.clone(),
                serde_json::from_str(&c.payload).expect("a JSON payload"),
            )),
            _ => None,
        })
        .collect()
}

fn build_with(source: &str, name: &str, value: &str) -> Result<FrontendResponse, PluginError> {
    let mut req = request(source);
    req.options
        .insert(format!("context:{name}"), value.to_owned());
    build(&req, &FakeHost::default())
}

#[test]
fn a_git_url_context_is_a_git_checkout() {
    let resp = build_with(
        "FROM scratch\nCOPY --from=src /app /app\n",
        "src",
        "https://example.com/o/r.git#v1:sub",
    )
    .unwrap();
    assert_eq!(
        custom_payloads(&resp.definition),
        [(
            "git".to_owned(),
            serde_json::json!({
                "remote": "https://example.com/o/r.git",
                "ref": "v1",
                "subdir": "sub",
                "keep_git_dir": false,
            })
        )]
    );
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);
    // The query string form and a FROM of the context.
    let resp = build_with(
        "FROM src\n",
        "src",
        "git@example.com:o/r.git?ref=main&subdir=a",
    )
    .unwrap();
    let payloads = custom_payloads(&resp.definition);
    assert_eq!(payloads[0].1["ref"], "main");
    assert_eq!(payloads[0].1["subdir"], "a");
}

#[test]
fn an_http_url_context_is_one_downloaded_file() {
    let resp = build_with(
        "FROM scratch\nCOPY --from=dl /context /ctx.tar.gz\n",
        "dl",
        "https://example.com/ctx.tar.gz",
    )
    .unwrap();
    assert_eq!(
        custom_payloads(&resp.definition),
        [(
            "http".to_owned(),
            serde_json::json!({"url": "https://example.com/ctx.tar.gz", "filename": "context"})
        )]
    );
}

#[test]
fn a_bad_git_url_context_is_refused() {
    let e = build_with(
        "FROM scratch\nCOPY --from=src / /\n",
        "src",
        "https://example.com/r.git?depth=1",
    )
    .unwrap_err();
    assert!(
        e.message.contains(r#"unexpected query "depth""#),
        "{}",
        e.message
    );
}
