//! The vertex digests of a fixed graph must never change: a cache written by one kiln version
//! and machine is read by the next. `UPDATE_EXPECT=1` rewrites the golden file after a
//! deliberate encoding change (then bump the `kiln.vertex.v1` prefix).

#![allow(clippy::unwrap_used)]

use kiln_graph::*;

fn sample() -> Vec<State> {
    let ctx = State::local(
        LocalSource {
            name: "context".into(),
            include_patterns: vec![],
            exclude_patterns: vec!["*.md".into()],
        },
        "load build context",
    );
    let base = State::image(
        ImageSource {
            reference: "127.0.0.1:5000/busybox:latest".into(),
            platform: "linux/amd64".parse().unwrap(),
        },
        "[internal] load metadata",
    );
    let mut copy = CopyAction::new(None, "/src", "/app/");
    copy.owner = Some(Chown {
        user: UserRef::Id(1000),
        group: None,
    });
    let built = FileBuilder::new(&base)
        .action(FileAction::Mkdir {
            path: "/app".into(),
            mode: 0o755,
            make_parents: true,
            owner: None,
        })
        .copy(&ctx, copy)
        .build("[build 2/3] COPY /src /app/");
    let ran = ExecBuilder::new(&built, vec!["/bin/sh".into(), "-c".into(), "make".into()])
        .env(vec!["PATH=/bin".into()])
        .cwd("/app")
        .build("[build 3/3] RUN make");
    let final_ = FileBuilder::new(&State::scratch())
        .copy(&ran, CopyAction::new(None, "/app/out", "/out"))
        .build("[stage-1 1/1] COPY --from=build /app/out /out");
    vec![final_, ran]
}

#[test]
fn digests_match_golden() {
    let def = State::definition(&sample());
    def.validate().expect("builder output is valid");
    let got: String = def
        .vertices
        .iter()
        .map(|v| format!("{} {} {}\n", v.digest, v.op.kind(), v.meta.description))
        .collect();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/golden-digests.txt");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_EXPECT=1 creates it)");
    assert_eq!(got, want, "vertex digests changed");
}

#[test]
fn same_graph_same_digests_and_dedup() {
    let a = State::definition(&sample());
    let b = State::definition(&sample());
    assert_eq!(a.to_json(), b.to_json());
    // `ran` is an input of `final_` and also requested: listed once.
    assert_eq!(a.vertices.len(), 5);
    let descriptions_differ = sample()[0].clone().with_description("other");
    assert_eq!(descriptions_differ.edge(), sample()[0].edge());
}

#[test]
fn validate_rejects_tampering() {
    let mut def = State::definition(&sample());
    let mut bad = def.clone();
    if let Op::Exec(e) = &mut bad.vertices[3].op {
        e.args.push("evil".into());
    }
    assert!(matches!(
        bad.validate(),
        Err(GraphError::DigestMismatch { .. })
    ));

    // Inputs out of order.
    let last = def.vertices.pop().unwrap();
    def.vertices.insert(0, last);
    assert!(matches!(
        def.validate(),
        Err(GraphError::UnknownInput { .. })
    ));

    let json = State::definition(&sample()).to_json();
    let round: Definition = serde_json::from_slice(&json).unwrap();
    round.validate().unwrap();
}

#[test]
fn definition_rebuilds_states() {
    let states = sample();
    let def = State::definition(&states);
    let again = def.state(def.outputs[0]).unwrap();
    assert_eq!(again.edge(), states[0].edge());
    assert_eq!(
        State::definition(&[again]).vertices,
        State::definition(&states[..1]).vertices
    );
    assert!(def.state(None).unwrap().is_scratch());
}

#[test]
fn a_long_chain_of_states_drops_on_a_small_stack() {
    // 200,000 chained file ops dropped on a 256 KiB thread: a recursive drop overflows.
    let handle = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let mut state = State::scratch();
            for i in 0..200_000u32 {
                state = FileBuilder::new(&state)
                    .action(FileAction::Mkdir {
                        path: format!("/d{i}"),
                        mode: 0o755,
                        make_parents: false,
                        owner: None,
                    })
                    .build("mkdir");
            }
            let shared = state.clone();
            drop(state);
            assert!(!shared.is_scratch());
            drop(shared);
        })
        .unwrap();
    handle.join().expect("the drop overflowed the stack");
}
