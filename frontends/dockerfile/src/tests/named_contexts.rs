//! Named contexts are found by the normalized reference a FROM or `--from` writes, and a
//! context the build never reads is reported.

use super::*;

fn with_contexts(source: &str, contexts: &[(&str, &str)]) -> FrontendRequest {
    let mut req = request(source);
    for (name, value) in contexts {
        req.options
            .insert(format!("context:{name}"), (*value).to_owned());
    }
    req
}

fn image_refs(def: &Definition) -> Vec<String> {
    def.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(SourceOp::Image(i)) => Some(i.reference.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_short_context_name_serves_every_spelling_of_the_reference() {
    for from in [
        "alpine",
        "alpine:latest",
        "docker.io/library/alpine:latest",
        "index.docker.io/library/alpine",
    ] {
        let source = format!("FROM {from}\nCOPY --from={from} /etc /copied\n");
        let req = with_contexts(&source, &[("alpine", "local:alpine")]);
        let host = FakeHost::default();
        let resp = build(&req, &host).unwrap_or_else(|e| panic!("{from}: {e:?}"));
        // Served by the directory, never resolved as an image.
        assert!(host.resolved.borrow().is_empty(), "{from}");
        assert!(image_refs(&resp.definition).is_empty(), "{from}");
        assert_eq!(local_source(&resp.definition).name, "alpine", "{from}");
        assert!(resp.warnings.is_empty(), "{from}: {:?}", resp.warnings);
    }
}

#[test]
fn a_registry_context_name_serves_from_with_latest() {
    let mut host = FakeHost::default();
    host.images.insert(
        "example.com/img:2".to_owned(),
        ImageConfig::scratch(&platform()),
    );
    let req = with_contexts(
        "FROM quay.io/org/img:latest\nRUN true\n",
        &[("quay.io/org/img", "docker-image://example.com/img:2")],
    );
    let resp = build(&req, &host).unwrap();
    // The context's image is resolved instead of the one FROM names.
    assert_eq!(*host.resolved.borrow(), ["example.com/img:2"]);
    assert!(resp.warnings.is_empty(), "{:?}", resp.warnings);

    // Another tag is another image, as in BuildKit: not the context.
    let req = with_contexts(
        "FROM quay.io/org/img:2\n",
        &[("quay.io/org/img", "docker-image://example.com/img:2")],
    );
    let host = FakeHost::default();
    let _ = build(&req, &host);
    let resolved = host.resolved.borrow();
    assert!(
        resolved.iter().all(|r| r.contains("quay.io/org/img:2")) && !resolved.is_empty(),
        "{resolved:?}"
    );
}

#[test]
fn names_that_are_no_references_still_match_as_written() {
    let req = with_contexts(
        "FROM scratch\nCOPY --from=MyFiles /a /a\n",
        &[("MyFiles", "local:MyFiles")],
    );
    let resp = build(&req, &FakeHost::default()).unwrap();
    assert_eq!(local_source(&resp.definition).name, "MyFiles");
}

#[test]
fn an_unused_context_is_a_warning() {
    let req = with_contexts(
        "FROM scratch AS build\nCOPY --from=tools /bin /bin\nFROM scratch\nCOPY --from=build /bin /bin\n",
        &[
            ("tools", "local:tools"),
            ("alpine:3", "local:alpine:3"),
            ("build", "local:build"),
        ],
    );
    let resp = build(&req, &FakeHost::default()).unwrap();
    let messages: Vec<&str> = resp.warnings.iter().map(|w| w.message.as_str()).collect();
    // `build` overrides the stage of that name (read by the last stage's COPY --from), so
    // `tools`, read only by the overridden stage, is unused too.
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].starts_with("unused build context \"alpine:3\""),
        "{messages:?}"
    );
    assert!(
        messages[1].starts_with("unused build context \"tools\""),
        "{messages:?}"
    );
}
