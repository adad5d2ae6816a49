//! RUN settings beyond the command: `force-network-mode` (buildx's `--network`) is every RUN's
//! network unless the RUN sets its own; `RUN --device` and the SSH mount's `mode`/`uid`/`gid`
//! reach the exec op.

use kiln_graph::{Definition, NetworkMode, Op};

use super::{request, FakeHost};
use crate::build;

/// The network of every exec in `def`, in graph order.
fn networks(def: &Definition) -> Vec<NetworkMode> {
    def.vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some((v.meta.description.clone(), e.network)),
            _ => None,
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect()
}

#[test]
fn force_network_mode_is_the_default_of_every_run() {
    let source = "FROM scratch\nRUN a\nRUN --network=default b\nRUN --network=host c\n";
    let mut req = request(source);
    let host = FakeHost::default();
    let plain = build(&req, &host).unwrap();
    assert_eq!(
        networks(&plain.definition),
        [
            NetworkMode::Default,
            NetworkMode::Default,
            NetworkMode::Host
        ]
    );
    req.options
        .insert("force-network-mode".into(), "none".into());
    let forced = build(&req, &host).unwrap();
    // Sorted by description: `[2/4] RUN a`, `[3/4] ... b`, `[4/4] ... c`.
    assert_eq!(
        networks(&forced.definition),
        [NetworkMode::None, NetworkMode::None, NetworkMode::Host]
    );
    req.options
        .insert("force-network-mode".into(), "bridge".into());
    let e = build(&req, &host).unwrap_err().to_string();
    assert!(e.contains("invalid force-network-mode \"bridge\""), "{e}");
}

#[test]
fn run_devices_reach_the_exec_op() {
    let source = "FROM scratch\n\
                  RUN --device=vendor1.com/device=foo --device=name=x.com/gpu=*,required a\n\
                  RUN b\n";
    let resp = build(&request(source), &FakeHost::default()).unwrap();
    let mut execs: Vec<_> = resp
        .definition
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some((v.meta.description.clone(), e.devices.clone())),
            _ => None,
        })
        .collect();
    execs.sort_by(|a, b| a.0.cmp(&b.0));
    let dev = |name: &str, required| kiln_graph::Device {
        name: name.into(),
        required,
    };
    assert_eq!(
        execs[0].1,
        [
            dev("vendor1.com/device=foo", false),
            dev("x.com/gpu=*", true)
        ]
    );
    assert!(execs[1].1.is_empty(), "{execs:?}");
    let e = build(
        &request("FROM scratch\nRUN --device=gpu a\n"),
        &FakeHost::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unqualified device \"gpu\", missing vendor"),
        "{e}"
    );
}

#[test]
fn ssh_mount_mode_uid_gid_reach_the_graph() {
    let source = "FROM scratch\n\
                  RUN --mount=type=ssh,mode=0644,uid=1000,gid=1001 --mount=type=ssh,id=x,target=/s a\n";
    let resp = build(&request(source), &FakeHost::default()).unwrap();
    let exec = resp
        .definition
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Exec(e) => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    let kinds: Vec<_> = exec.mounts.iter().skip(1).map(|m| m.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            kiln_graph::MountKind::Ssh {
                id: "default".into(),
                required: false,
                mode: 0o644,
                uid: 1000,
                gid: 1001,
            },
            // BuildKit's defaults: 0600, root.
            kiln_graph::MountKind::Ssh {
                id: "x".into(),
                required: false,
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        ]
    );
}
