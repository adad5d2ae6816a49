//! BuildKit's predefined platform ARGs (dockerfile2llb's `defaultArgs`): the values come from
//! kiln-types' one definition, for the target platform normalized as BuildKit normalizes
//! `--platform`, with the OS versions (empty on Linux) and `TARGETSTAGE` (`default` for an
//! unnamed target stage).

use super::*;

/// The environment of the (single) RUN step of `source` built for `platform`.
fn run_env(source: &str, platform: &str) -> Vec<String> {
    let mut req = request(source);
    req.platform = platform.parse().expect("a valid platform");
    let resp = build(&req, &FakeHost::default()).expect("builds");
    let Op::Exec(exec) = &output(&resp.definition).op else {
        panic!("the output is not the RUN step")
    };
    exec.env.clone()
}

const ALL: &str = "FROM scratch\nARG TARGETPLATFORM TARGETOS TARGETOSVERSION TARGETARCH \
                   TARGETVARIANT TARGETSTAGE BUILDPLATFORM BUILDOS BUILDOSVERSION BUILDARCH \
                   BUILDVARIANT\nRUN echo\n";

#[test]
fn target_values_are_normalized() {
    let env = run_env(ALL, "linux/arm64/v8");
    for kv in [
        "TARGETPLATFORM=linux/arm64",
        "TARGETOS=linux",
        "TARGETOSVERSION=",
        "TARGETARCH=arm64",
        "TARGETVARIANT=",
        "BUILDOSVERSION=",
    ] {
        assert!(env.iter().any(|e| e == kv), "{kv} not in {env:?}");
    }
    let env = run_env(ALL, "linux/arm");
    for kv in ["TARGETPLATFORM=linux/arm/v7", "TARGETVARIANT=v7"] {
        assert!(env.iter().any(|e| e == kv), "{kv} not in {env:?}");
    }
    let host = Platform::host();
    assert!(env.contains(&format!("BUILDPLATFORM={host}")), "{env:?}");
}

#[test]
fn an_unnamed_target_stage_is_default() {
    let env = run_env(ALL, "linux/amd64");
    assert!(env.iter().any(|e| e == "TARGETSTAGE=default"), "{env:?}");
    let named = ALL.replacen("FROM scratch", "FROM scratch AS final", 1);
    let env = run_env(&named, "linux/amd64");
    assert!(env.iter().any(|e| e == "TARGETSTAGE=final"), "{env:?}");
}
