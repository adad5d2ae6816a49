//! Lazy layers: a fresh store rebuilding from a registry cache, every step cached, takes the
//! layers of the result as blobs and unpacks none of them (an OCI export needs the blobs only),
//! and gives the same image; a later build whose step must run on those layers unpacks them
//! then, and its result is right.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kiln_e2e::*;

/// The `parallel` bench workload's shape: four stages on the base, each writing a file (a
/// random uuid, so that a step that ran again would change the image), copied into a final
/// stage on the base, which ends with `final_run`.
fn dockerfile(registry: &str, final_run: &str) -> String {
    let mut text = String::new();
    for s in ["a", "b", "c", "d"] {
        text.push_str(&format!(
            "FROM {registry}/busybox:latest AS {s}\n\
             RUN echo {s} > /out && cat /proc/sys/kernel/random/uuid >> /out\n"
        ));
    }
    text.push_str(&format!("FROM {registry}/busybox:latest\n"));
    for s in ["a", "b", "c", "d"] {
        text.push_str(&format!("COPY --from={s} /out /out-{s}\n"));
    }
    text.push_str(final_run);
    text.push('\n');
    text
}

const FIRST_RUN: &str = "RUN cat /out-a /out-b /out-c /out-d > /all";
const SECOND_RUN: &str = "RUN cat /out-d /out-c /out-b /out-a > /all";

fn context(k: &Kiln, final_run: &str) -> PathBuf {
    k.write(
        "ctx",
        &[("Dockerfile", &dockerfile(&test_registry(), final_run))],
    )
}

/// `kiln build` with an OCI tarball output only, plus `extra`.
fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Run {
    let tar = format!("type=oci,dest={}", k.path("image.tar").display());
    let mut args = vec!["build", "--progress=plain", "--output", &tar];
    args.extend_from_slice(extra);
    let c = ctx.display().to_string();
    args.push(&c);
    k.run(&args)
}

/// The store's layers: (directory, whether its files are unpacked).
fn layers(k: &Kiln) -> Vec<(PathBuf, bool)> {
    let dir = k.path("store").join("layers");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "by-diff-id" || name == "by-blob" {
            continue;
        }
        out.push((e.path(), e.path().join("fs").is_dir()));
    }
    out.sort();
    out
}

/// A repository of the test registry no other run has used.
fn fresh_repo() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}/lazy-cache-{}-{nanos}",
        test_registry(),
        std::process::id()
    )
}

#[test]
fn a_registry_cache_hit_exports_blobs_without_unpacking_and_unpacks_when_a_step_runs() {
    let first = Kiln::new(&[]);
    let repo = fresh_repo();
    let cache = format!("type=registry,ref={repo}:cache");
    let built = build(
        &first,
        &context(&first, FIRST_RUN),
        &["--cache-to", &format!("{cache},mode=max")],
    )
    .ok();
    assert_eq!(built.step_state(FIRST_RUN), "DONE", "{}", built.stderr);

    // Another machine: an empty store, the cache in the registry.
    let second = Kiln::new(&[]);
    let ctx = context(&second, FIRST_RUN);
    let again = build(&second, &ctx, &["--cache-from", &cache]).ok();
    let ran: Vec<_> = again
        .steps()
        .into_iter()
        .filter(|(name, state)| {
            (name.contains("RUN") || name.contains("COPY")) && state != "CACHED"
        })
        .collect();
    assert!(ran.is_empty(), "steps ran: {ran:?}\n{}", again.stderr);
    assert_eq!(again.digest(), built.digest(), "the same image");
    // The result's layers (the base's, four COPY, the RUN) are in the store as blobs only;
    // the stages a-d, below cached COPY steps, left nothing at all.
    let taken = layers(&second);
    assert_eq!(taken.len(), 6, "the result's layers only: {taken:?}");
    let unpacked: Vec<_> = taken.iter().filter(|(_, fs)| *fs).collect();
    assert!(unpacked.is_empty(), "layers were unpacked: {unpacked:?}");
    for (dir, _) in &taken {
        assert!(dir.join("blob-lazy.json").is_file(), "{}", dir.display());
    }
    // The image is whole and reads: its files are the first build's.
    let bundle = second.unpack(&second.path("image.tar"), "again", "latest");
    let all = std::fs::read_to_string(bundle.join("rootfs/all")).unwrap();
    let firsts: Vec<&str> = all.lines().step_by(2).collect();
    assert_eq!(firsts, ["a", "b", "c", "d"], "{all}");

    // The final RUN changes: it must run on the imported layers, which are unpacked now.
    let ctx = context(&second, SECOND_RUN);
    let changed = build(&second, &ctx, &["--cache-from", &cache]).ok();
    assert_eq!(changed.step_state(SECOND_RUN), "DONE", "{}", changed.stderr);
    assert_eq!(
        changed.step_state("COPY --from=d"),
        "CACHED",
        "{}",
        changed.stderr
    );
    let bundle = second.unpack(&second.path("image.tar"), "changed", "latest");
    let reversed = std::fs::read_to_string(bundle.join("rootfs/all")).unwrap();
    let firsts: Vec<&str> = reversed.lines().step_by(2).collect();
    assert_eq!(firsts, ["d", "c", "b", "a"], "{reversed}");
    // The same uuids: the stages' files came from the cache, not from steps run again.
    let mut sorted_all: Vec<&str> = all.lines().collect();
    let mut sorted_reversed: Vec<&str> = reversed.lines().collect();
    sorted_all.sort();
    sorted_reversed.sort();
    assert_eq!(sorted_all, sorted_reversed);
    let now = layers(&second);
    let unpacked = now.iter().filter(|(_, fs)| *fs).count();
    // The base and the four COPY layers under the new RUN, and the RUN's own layer.
    assert!(unpacked >= 6, "{now:?}");
    assert_eq!(mounts_under(&second.path("store")), Vec::<String>::new());
}

/// The environment of a machine without CA certificates: rustls reads these two variables
/// instead of the system's locations, and finds nothing in an empty file and directory.
fn no_ca_certificates(k: &Kiln) -> (String, String) {
    let file = k.path("no-certs.pem");
    std::fs::write(&file, "").unwrap();
    let dir = k.path("no-certs");
    std::fs::create_dir_all(&dir).unwrap();
    (file.display().to_string(), dir.display().to_string())
}

#[test]
fn plain_http_registries_need_no_ca_certificates_and_https_says_what_is_missing() {
    let k = Kiln::new(&[]);
    let (file, dir) = no_ca_certificates(&k);
    let env = [
        ("SSL_CERT_FILE", file.as_str()),
        ("SSL_CERT_DIR", dir.as_str()),
    ];
    // The loopback registry is plain http: pulled, run on, and a cache pushed to it.
    let ctx = k.write(
        "http",
        &[(
            "Dockerfile",
            &format!(
                "FROM {}/busybox:latest\nRUN echo ok > /ok\n",
                test_registry()
            ),
        )],
    );
    let repo = fresh_repo();
    let to = format!("type=registry,ref={repo}:certless,mode=max");
    let c = ctx.display().to_string();
    let run = k
        .run_env(&env, &["build", "--progress=plain", "--cache-to", &to, &c])
        .ok();
    assert_eq!(run.step_state("RUN echo ok"), "DONE", "{}", run.stderr);
    // An https registry needs certificates to be verified: a clear error, not a panic.
    let ctx = k.write(
        "https",
        &[("Dockerfile", "FROM registry.example.invalid/app:1\n")],
    );
    let c = ctx.display().to_string();
    let run = k.run_env(&env, &["build", "--progress=plain", &c]).fails();
    assert!(
        run.stderr
            .contains("cannot reach registry registry.example.invalid over https"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("no CA certificates were found"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("internal error"), "{}", run.stderr);
}

#[test]
fn a_frontend_error_does_not_wait_for_a_stalled_cache_registry() {
    // A "registry" that accepts connections and never answers: reading a cache from it waits
    // for the client's read timeout, once per attempt.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let k = Kiln::new(&[]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM\n")]);
    let from = format!("type=registry,ref={addr}/stalled:cache");
    let c = ctx.display().to_string();
    // The caches are read while the frontend runs; when it fails, their reading stops.
    let build = k.spawn(
        &[],
        &["build", "--progress=plain", "--cache-from", &from, &c],
    );
    let (code, stderr) = build.finish(std::time::Duration::from_secs(20));
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("Dockerfile:1"), "{stderr}");
}
