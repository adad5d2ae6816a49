//! Rootless kiln (issue 13 item 1, docs/rootless.md): an ordinary user's `kiln build` runs in a
//! user namespace of its own mapped with the user's subordinate ids, on the user's store
//! (~/.local/share/kiln), and the image's files keep the owners they have inside the build.
//!
//! The tests run as root (as CI does): each makes the system users it needs (idempotent, under
//! a lock, as several test processes run at once): `kiln-rootless-test` with subordinate ids
//! 300000-365535 (clear of the 100000-165535 that Debian gives the first user) and
//! `kiln-rootless-nosub` with none; then it runs kiln as them with `setpriv`, in a clean
//! environment (HOME set, no KILN_ROOT).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_e2e::*;

const USER: &str = "kiln-rootless-test";
const NOSUB: &str = "kiln-rootless-nosub";

/// Makes the two users (once per machine; a lock keeps parallel tests from racing useradd).
fn ensure_users() {
    for t in [
        "useradd",
        "usermod",
        "setpriv",
        "flock",
        "newuidmap",
        "newgidmap",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{t} is required for the rootless tests (Debian packages passwd, util-linux, \
             uidmap; cargo xtask test installs them)"
        );
    }
    assert!(
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout == b"0\n"),
        "the rootless tests make users: run them as root"
    );
    // System users: Debian's useradd gives ordinary ones subordinate ids of its choosing.
    let script = format!(
        "set -e
         id -u {USER} >/dev/null 2>&1 || useradd --system --no-create-home \
           --home-dir /nonexistent --shell /usr/sbin/nologin {USER}
         grep -qx '{USER}:300000:65536' /etc/subuid || usermod --add-subuids 300000-365535 {USER}
         grep -qx '{USER}:300000:65536' /etc/subgid || usermod --add-subgids 300000-365535 {USER}
         id -u {NOSUB} >/dev/null 2>&1 || useradd --system --no-create-home \
           --home-dir /nonexistent --shell /usr/sbin/nologin {NOSUB}
         ! grep -q '^{NOSUB}:' /etc/subuid /etc/subgid"
    );
    tool(
        "flock",
        &["/tmp/kiln-rootless-test-users.lock", "sh", "-c", &script],
    );
}

/// setpriv's path: a command given its own PATH is looked up on that PATH.
fn setpriv() -> PathBuf {
    PathBuf::from(tool("sh", &["-c", "command -v setpriv"]).trim())
}

fn uid_of(user: &str) -> u32 {
    tool("id", &["-u", user]).trim().parse().unwrap()
}

fn gid_of(user: &str) -> u32 {
    tool("id", &["-g", user]).trim().parse().unwrap()
}

/// A sandbox the user owns: its HOME, a copy of the busybox layout, contexts, outputs.
struct Rootless {
    k: Kiln,
    user: &'static str,
}

impl Rootless {
    fn new(user: &'static str) -> Self {
        ensure_users();
        let k = Kiln::new(&[]);
        std::fs::create_dir_all(k.path("home")).unwrap();
        tool(
            "cp",
            &[
                "-a",
                busybox_layout().to_str().unwrap(),
                k.path("bb").to_str().unwrap(),
            ],
        );
        let r = Rootless { k, user };
        r.chown();
        // The user runs the built kiln and its plugins where they are.
        let v = r.run(&["version"]);
        assert_eq!(
            v.code,
            0,
            "{user} cannot run {}: the target directory must be readable by other users \
             (no 0700 directory on its path):\n{}",
            target_dir().join("kiln").display(),
            v.stderr
        );
        r
    }

    /// Gives everything under the sandbox to the user (after the test wrote files as root).
    fn chown(&self) {
        tool(
            "chown",
            &[
                "-R",
                &format!("{0}:{0}", self.user),
                self.k.dir.path().to_str().unwrap(),
            ],
        );
    }

    fn home(&self) -> PathBuf {
        self.k.path("home")
    }

    fn write(&self, rel: &str, files: &[(&str, &str)]) -> PathBuf {
        let p = self.k.write(rel, files);
        self.chown();
        p
    }

    /// `kiln ARGS` as the user, with only HOME, PATH and the attestation switch set.
    fn run(&self, args: &[&str]) -> Run {
        self.run_with_path(&std::env::var_os("PATH").unwrap_or_default(), args)
    }

    /// [`Rootless::run`] with `PATH` set to `path`.
    fn run_with_path(&self, path: &std::ffi::OsStr, args: &[&str]) -> Run {
        let out = self
            .command(path, args)
            .output()
            .expect("run setpriv (util-linux)");
        Run::from(out)
    }

    /// `kiln ARGS` as the user, with only HOME, PATH and the attestation switch set.
    fn command(&self, path: &std::ffi::OsStr, args: &[&str]) -> Command {
        let mut c = Command::new(setpriv());
        c.args([
            "--reuid",
            self.user,
            "--regid",
            self.user,
            "--init-groups",
            "--",
        ])
        .arg(target_dir().join("kiln"))
        .args(args)
        .env_clear()
        .env("HOME", self.home())
        .env("PATH", path)
        .env(NO_DEFAULT_ATTESTATIONS, "1")
        .current_dir(self.k.dir.path());
        c
    }

    /// Starts `kiln ARGS` as the user (with `env` added) in the background: the process and
    /// the lines of its stderr as they come.
    fn spawn(
        &self,
        env: &[(&str, &Path)],
        args: &[&str],
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        use std::io::BufRead;
        let mut c = self.command(&std::env::var_os("PATH").unwrap_or_default(), args);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run setpriv (util-linux)");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, lines)
    }

    /// `kiln build --progress=plain` with the busybox layout as `bb`.
    fn build(&self, ctx: &Path, extra: &[&str]) -> Run {
        let bb = format!("bb=oci-layout://{}:latest", self.k.path("bb").display());
        let mut args = vec!["build", "--progress=plain", "--build-context", &bb];
        args.extend_from_slice(extra);
        let c = ctx.display().to_string();
        args.push(&c);
        self.run(&args)
    }
}

/// `(owner, path)` of every entry of every layer of the image in OCI tarball `tar`, with
/// numeric owners as `tar --numeric-owner -tv` prints them (`1000/1000`).
fn layer_owners(k: &Kiln, tar: &Path) -> Vec<(String, String)> {
    let dir = k.path("oci-unpacked");
    std::fs::create_dir_all(&dir).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dir.to_str().unwrap()],
    );
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index = json(&std::fs::read_to_string(dir.join("index.json")).unwrap());
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest = json(&std::fs::read_to_string(blob(&manifest)).unwrap());
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let path = blob(layer["digest"].as_str().unwrap());
        out.extend(tar_owners(&path));
    }
    out
}

/// `(owner, path)` of each entry of a (possibly compressed) tar.
fn tar_owners(tar: &Path) -> Vec<(String, String)> {
    tool("tar", &["--numeric-owner", "-tvf", tar.to_str().unwrap()])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(1)?.to_string(), f.get(5)?.to_string()))
        })
        .collect()
}

fn owner_of(entries: &[(String, String)], path: &str) -> String {
    entries
        .iter()
        .rev()
        .find(|(_, p)| p.trim_end_matches('/') == path)
        .map(|(o, _)| o.clone())
        .unwrap_or_else(|| panic!("no {path} in {entries:?}"))
}

#[test]
fn a_rootless_copy_build_keeps_owners_on_the_users_store_and_is_cached_next_time() {
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nCOPY --chown=1000:1000 f /out/f\nCOPY d /d\nADD devs.tar /devs/\n",
            ),
            ("f", "hi\n"),
            ("d/g", "g\n"),
        ],
    );
    // A tar with a device node, made as root: ADD unpacks it; in the user namespace the node
    // cannot be created and is skipped (as moby's archive code does), its neighbour kept.
    std::fs::create_dir_all(r.k.path("devs")).unwrap();
    sh(
        &r.k.path("devs"),
        &format!(
            "mkdir -p x && mknod x/null c 1 3 && echo f > x/f && tar -C . -cf {} x",
            ctx.join("devs.tar").display()
        ),
    );
    r.chown();
    let oci = r.k.path("out.tar");
    let run = r.build(&ctx, &["-o", &format!("type=oci,dest={}", oci.display())]);
    let run = run.ok();
    assert!(
        !run.stderr.contains("copy snapshotter"),
        "overlay mounts must work rootless:\n{}",
        run.stderr
    );
    let owners = layer_owners(&r.k, &oci);
    assert_eq!(owner_of(&owners, "out/f"), "1000/1000", "{owners:?}");
    assert_eq!(owner_of(&owners, "out"), "1000/1000", "{owners:?}");
    // The context's files, the user's on the host, are root's in the image (as with rootful).
    assert_eq!(owner_of(&owners, "d/g"), "0/0", "{owners:?}");
    assert_eq!(owner_of(&owners, "devs/x/f"), "0/0", "{owners:?}");
    assert!(
        !owners.iter().any(|(_, p)| p == "devs/x/null"),
        "{owners:?}"
    );

    let store = r.home().join(".local/share/kiln");
    let uid = uid_of(USER);
    assert_eq!(
        std::fs::metadata(&store).unwrap().uid(),
        uid,
        "the store belongs to the user"
    );
    assert!(store.join("blobs").is_dir());

    // The same build again, to a rootfs tar and a directory: every step from the cache.
    let tar = r.k.path("rootfs.tar");
    let again = r
        .build(&ctx, &["-o", &format!("type=tar,dest={}", tar.display())])
        .ok();
    for (name, state) in again.steps() {
        if name.contains("COPY") {
            assert_eq!(state, "CACHED", "{name}:\n{}", again.stderr);
        }
    }
    let rootfs = tar_owners(&tar);
    assert_eq!(owner_of(&rootfs, "out/f"), "1000/1000", "{rootfs:?}");
    let local = r.k.path("local");
    r.build(
        &ctx,
        &["-o", &format!("type=local,dest={}", local.display())],
    )
    .ok();
    // A local export is written as the user, as BuildKit's client writes it.
    let f = std::fs::metadata(local.join("out/f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (uid, gid_of(USER)));
    assert_eq!(
        std::fs::read_to_string(local.join("out/f")).unwrap(),
        "hi\n"
    );
}

/// The issue's build; Debian's static busybox has no `adduser` applet, so the user is added
/// to /etc/passwd and /etc/group by hand (what `adduser -D -u 1000 app` writes).
const DONE_WHEN: &str = "FROM bb AS build
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >>/etc/passwd && echo 'app:x:1000:' >>/etc/group \
 && mkdir /out && echo hi >/out/f && chown -R app:app /out
FROM bb
COPY --from=build /etc/passwd /etc/group /etc/
COPY --from=build /out /out
USER app
RUN id && ls -ln /out
";

#[test]
fn the_done_when_build_runs_rootless_with_owners_as_in_the_build() {
    let r = Rootless::new(USER);
    let ctx = r.write("ctx", &[("Dockerfile", DONE_WHEN)]);
    let oci = r.k.path("out.tar");
    let run = r
        .build(&ctx, &["-o", &format!("type=oci,dest={}", oci.display())])
        .ok();
    assert!(
        run.stderr.contains("uid=1000(app) gid=1000(app)"),
        "{}",
        run.stderr
    );
    let owners = layer_owners(&r.k, &oci);
    assert_eq!(owner_of(&owners, "out/f"), "1000/1000", "{owners:?}");
    // Never the host's view of an id (the user's uid, or subuid start + 999).
    assert!(
        owners.iter().all(|(o, _)| o == "0/0" || o == "1000/1000"),
        "{owners:?}"
    );
    let store = r.home().join(".local/share/kiln");
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), uid_of(USER));
    // A second build: all from the store.
    let again = r.build(&ctx, &[]).ok();
    for (name, state) in again.steps() {
        if name.contains("RUN") || name.contains("COPY") {
            assert_eq!(state, "CACHED", "{name}:\n{}", again.stderr);
        }
    }
}

/// The interface names of `/proc/net/dev` text.
fn interfaces(net_dev: &str) -> Vec<String> {
    let mut names: Vec<String> = net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_owned()))
        .collect();
    names.sort();
    names
}

#[test]
fn rootless_run_steps_have_no_network_or_the_hosts() {
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nRUN cat /proc/net/dev > /net\nFROM scratch\nCOPY --from=0 /net /\n",
        )],
    );
    let none = r.k.path("none");
    r.build(
        &ctx,
        &[
            "--network=none",
            "-o",
            &format!("type=local,dest={}", none.display()),
        ],
    )
    .ok();
    assert_eq!(
        interfaces(&std::fs::read_to_string(none.join("net")).unwrap()),
        ["lo"]
    );
    let host = r.k.path("host");
    r.build(
        &ctx,
        &["-o", &format!("type=local,dest={}", host.display())],
    )
    .ok();
    assert_eq!(
        interfaces(&std::fs::read_to_string(host.join("net")).unwrap()),
        interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap()),
        "the default network is the host's"
    );
}

#[test]
fn a_user_without_subordinate_ids_or_uidmap_is_told_what_to_add() {
    let r = Rootless::new(NOSUB);
    let ctx = r.write("ctx", &[("Dockerfile", "FROM bb\n")]);
    let run = r.build(&ctx, &[]).fails();
    assert!(
        run.stderr.contains(&format!(
            "no subordinate uids for user {NOSUB} (uid {})",
            uid_of(NOSUB)
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("\"{NOSUB}:100000:65536\" to /etc/subuid")),
        "{}",
        run.stderr
    );
    // Without newuidmap on PATH: what to install.
    let r = Rootless::new(USER);
    let ctx = r.write("ctx", &[("Dockerfile", "FROM bb\n")]);
    let run = r
        .run_with_path(
            std::ffi::OsStr::new("/nonexistent"),
            &["build", ctx.to_str().unwrap()],
        )
        .fails();
    assert!(
        run.stderr
            .contains("newuidmap not found: install Debian's uidmap package"),
        "{}",
        run.stderr
    );
    // Commands that need no store do not need the namespace either.
    let v = r.run(&["version"]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.starts_with("kiln "), "{}", v.stdout);
}

/// `--security=insecure` is honoured rootless as rootless BuildKit honours it (docs/sandbox.md,
/// "Rootless"): the step has every capability of kiln's user namespace, none of the host's.
#[test]
fn rootless_security_insecure_has_the_namespaces_capabilities_only() {
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\n\
             RUN --security=insecure mkdir /m && mount -t tmpfs t /m && echo mounted > /r \\\n \
             && { mknod /x c 1 3 2>/dev/null && echo made >> /r || echo refused >> /r; }\n\
             FROM scratch\nCOPY --from=0 /r /\n",
        )],
    );
    let out = r.k.path("out");
    let refused = r.build(&ctx, &[]).fails();
    assert!(
        refused.stderr.contains("security.insecure"),
        "the entitlement is still needed:\n{}",
        refused.stderr
    );
    let run = r
        .build(
            &ctx,
            &[
                "--allow",
                "security.insecure",
                "-o",
                &format!("type=local,dest={}", out.display()),
            ],
        )
        .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("r")).unwrap(),
        "mounted\nrefused\n"
    );
    // The step is told what it does not get.
    assert!(
        run.stderr.contains(
            "kiln runs rootless: --security=insecure gives this step the capabilities of \
             kiln's user namespace, not the host's root"
        ),
        "{}",
        run.stderr
    );
}

/// A rootless build running `RUN sleep SECS` (started as the parent kiln: setpriv execs it),
/// its progress read line by line.
struct Sleeping {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    sleep: String,
}

const BOUND: std::time::Duration = std::time::Duration::from_secs(60);

impl Sleeping {
    /// Starts the build and returns once its step runs.
    fn start(r: &Rootless, secs: u32) -> Self {
        let ctx = r.write(
            "ctx",
            &[(
                "Dockerfile",
                // The shell computes the marker: the step's title line holds the command
                // text, never `step-42`.
                &format!("FROM bb\nRUN echo step-$((6*7)) && sleep {secs}\n"),
            )],
        );
        let bb = format!("bb=oci-layout://{}:latest", r.k.path("bb").display());
        let ctx = ctx.display().to_string();
        let (child, lines) = r.spawn(
            &[],
            &["build", "--progress=plain", "--build-context", &bb, &ctx],
        );
        let mut b = Sleeping {
            child,
            lines,
            seen: Vec::new(),
            sleep: format!("sleep {secs}"),
        };
        loop {
            match b.lines.recv_timeout(BOUND) {
                Ok(l) => {
                    let hit = l.contains("step-42");
                    b.seen.push(l);
                    if hit {
                        return b;
                    }
                }
                Err(_) => {
                    let _ = b.child.kill();
                    panic!("the RUN step did not start:\n{}", b.seen.join("\n"));
                }
            }
        }
    }

    /// Waits (at most [`BOUND`]: the step sleeps far longer, so hanging is the failure) for
    /// the parent to end: its status and all the progress.
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let end = std::time::Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                return (status, self.seen.join("\n"));
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "kiln did not end within {BOUND:?}:\n{}",
                    self.seen.join("\n")
                );
            }
            if let Ok(l) = self
                .lines
                .recv_timeout(std::time::Duration::from_millis(200))
            {
                self.seen.push(l);
            }
        }
    }

    /// Whether the step's process is still running as the user (other tests run as the user
    /// too: only this test's `sleep N` counts).
    fn step_alive(user: &str, sleep: &str) -> bool {
        let left = Command::new("pgrep")
            .args(["-u", user, "-fx", sleep])
            .output()
            .expect("run pgrep (procps)");
        !left.stdout.is_empty()
    }
}

/// Ctrl-C sent to the parent kiln (the one outside the namespace, whose pid a user or a
/// service manager sees) reaches the build in the namespace, which cancels and cleans up; the
/// parent ends with the child's status.
#[test]
fn an_interrupt_of_the_parent_cancels_the_rootless_build() {
    let r = Rootless::new(USER);
    let b = Sleeping::start(&r, 600);
    let sleep = b.sleep.clone();
    tool("kill", &["-INT", &b.child.id().to_string()]);
    let (status, out) = b.finish();
    assert!(!status.success(), "{out}");
    assert!(out.contains("Cancelling the build"), "{out}");
    assert!(!out.contains("interrupted twice"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        !Sleeping::step_alive(USER, &sleep),
        "the step outlived kiln"
    );
}

/// SIGKILL cannot be forwarded: the namespaced kiln dies with its parent (parent-death
/// signal, as rootlesskit's child), and its step with it.
#[test]
fn a_killed_parent_takes_the_rootless_build_with_it() {
    let r = Rootless::new(USER);
    let b = Sleeping::start(&r, 601);
    let sleep = b.sleep.clone();
    tool("kill", &["-KILL", &b.child.id().to_string()]);
    let (status, out) = b.finish();
    assert!(!status.success(), "{out}");
    // The step's process goes with the namespace; bounded, as hanging on is the bug.
    let end = std::time::Instant::now() + BOUND;
    while Sleeping::step_alive(USER, &sleep) {
        assert!(
            std::time::Instant::now() < end,
            "the step outlived its killed kiln by {BOUND:?}:\n{out}"
        );
        std::thread::yield_now();
    }
}

/// A push from rootless kiln carries the owners as inside the build, like the other outputs.
#[test]
fn a_rootless_push_keeps_owners_as_in_the_build() {
    let registry = registry::OwnRegistry::start();
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[
            ("Dockerfile", "FROM bb\nCOPY --chown=1000:1000 f /out/f\n"),
            ("f", "hi\n"),
        ],
    );
    let name = format!("{}/rootless/app:1", registry.addr);
    r.build(&ctx, &["-t", &name, "--push"]).ok();
    // Copied back as an OCI layout, archived, and read as the OCI tarball of the other test.
    let layout = r.k.path("pulled");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{name}"),
            &format!("oci:{}:1", layout.display()),
        ],
    );
    let tar = r.k.path("pulled.tar");
    tool(
        "tar",
        &[
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            layout.to_str().unwrap(),
            ".",
        ],
    );
    let owners = layer_owners(&r.k, &tar);
    assert_eq!(owner_of(&owners, "out/f"), "1000/1000", "{owners:?}");
}

/// Where user namespaces are disabled, kiln names the sysctl. The test disables them for its
/// own: a user namespace that maps every id onto itself (so the user exists in it), whose root
/// sets `user.max_user_namespaces` to 0 there (the limit is per namespace) before running kiln
/// as the user.
#[test]
fn where_user_namespaces_are_disabled_the_sysctl_is_named() {
    use std::io::{BufRead, BufReader, Write};
    let r = Rootless::new(USER);
    let ctx = r.write("ctx", &[("Dockerfile", "FROM bb\n")]);
    let kiln = target_dir().join("kiln");
    let mut child = Command::new("unshare")
        .args([
            "--user",
            "--",
            "sh",
            "-c",
            // Mapped only after this sh started, so it has no capabilities in the namespace:
            // the sh it execs (uid 0 there now) has them.
            "echo ready; read go && exec sh -c 'echo 0 > /proc/sys/user/max_user_namespaces \
             && exec \"$0\" \"$@\"' \"$0\" \"$@\"",
        ])
        .arg(setpriv())
        .args(["--reuid", USER, "--regid", USER, "--init-groups", "--"])
        .arg(&kiln)
        .arg("build")
        .arg(&ctx)
        .env_clear()
        .env("HOME", r.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run unshare (util-linux)");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "unshare did not start");
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{}/{map}", child.id()), "0 0 4294967295\n").unwrap();
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let run = Run::from(child.wait_with_output().unwrap()).fails();
    assert!(
        run.stderr.contains("rootless: unshare(CLONE_NEWUSER)")
            && run.stderr.contains("sysctl user.max_user_namespaces = 0"),
        "{}",
        run.stderr
    );
}

/// Ctrl-C at a terminal reaches the whole foreground process group, the parent kiln and the
/// namespaced one alike: the parent must not forward it again (kiln would read a second
/// press and stop without cleaning up), and must not die before the child.
#[test]
fn ctrl_c_at_a_terminal_cancels_the_rootless_build_once() {
    use std::io::{Read, Write};
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nRUN echo step-$((6*7)) && sleep 602\n",
        )],
    );
    let bb = format!("bb=oci-layout://{}:latest", r.k.path("bb").display());
    let command = format!(
        "exec {} --reuid {USER} --regid {USER} --init-groups -- {} build --progress=plain \
         --build-context {bb} {}",
        setpriv().display(),
        target_dir().join("kiln").display(),
        ctx.display()
    );
    // util-linux `script` runs the command on a pseudo-terminal of its own, in the foreground,
    // and copies our stdin to it: a 0x03 there is a Ctrl-C.
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_clear()
        .env("HOME", r.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TERM", "dumb")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, chunks) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let text = |seen: &Vec<u8>| String::from_utf8_lossy(seen).into_owned();
    while !text(&seen).contains("step-42") {
        match chunks.recv_timeout(BOUND) {
            Ok(c) => seen.extend(c),
            Err(_) => {
                let _ = child.kill();
                panic!("the RUN step did not start:\n{}", text(&seen));
            }
        }
    }
    stdin.write_all(&[0x03]).unwrap();
    // Ends within the bound (the step sleeps 602 s) once the reader sees the pty close.
    loop {
        match chunks.recv_timeout(BOUND) {
            Ok(c) => seen.extend(c),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("kiln did not end after Ctrl-C:\n{}", text(&seen));
            }
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let out = text(&seen);
    assert!(!status.success(), "{out}");
    assert!(out.contains("Cancelling the build"), "{out}");
    assert!(!out.contains("interrupted twice"), "{out}");
    assert!(
        !Sleeping::step_alive(USER, "sleep 602"),
        "the step outlived kiln"
    );
}

/// `kiln serve` as an ordinary user is a rootless daemon: without `--addr` it listens in the
/// user's runtime directory, builds in its user namespace on the user's store, and a client of
/// the same user (in no namespace of its own) gets the image with the owners of the build.
#[test]
fn a_rootless_daemon_listens_in_the_users_runtime_dir_and_keeps_owners() {
    let r = Rootless::new(USER);
    let run_dir = r.k.path("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let ctx = r.write("ctx", &[("Dockerfile", DONE_WHEN)]);
    let (mut daemon, lines) = r.spawn(&[("XDG_RUNTIME_DIR", &run_dir)], &["serve"]);
    let socket = run_dir.join("kiln/kiln.sock");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening on")) {
        match lines.recv_timeout(BOUND) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = daemon.kill();
                panic!("the daemon did not start:\n{}", seen.join("\n"));
            }
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains(&socket.display().to_string())),
        "not listening on {}:\n{}",
        socket.display(),
        seen.join("\n")
    );
    let oci = r.k.path("out.tar");
    let builder = format!("unix://{}", socket.display());
    let run = r.build(
        &ctx,
        &[
            "--builder",
            &builder,
            "-o",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    // SIGTERM ends the daemon cleanly, whatever the build did.
    tool("kill", &["-TERM", &daemon.id().to_string()]);
    let status = daemon.wait().unwrap();
    seen.extend(lines.try_iter());
    let run = run.ok();
    assert!(
        run.stderr.contains("uid=1000(app) gid=1000(app)"),
        "{}",
        run.stderr
    );
    assert_eq!(status.code(), Some(0), "{}", seen.join("\n"));
    assert!(!socket.exists(), "the socket stays after SIGTERM");
    let owners = layer_owners(&r.k, &oci);
    assert_eq!(owner_of(&owners, "out/f"), "1000/1000", "{owners:?}");
    assert_eq!(std::fs::metadata(&oci).unwrap().uid(), uid_of(USER));
    // The daemon's store is the user's.
    let store = r.home().join(".local/share/kiln");
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), uid_of(USER));
}

/// The fuse-overlayfs snapshotter (the fallback where the kernel refuses overlay mounts in a
/// user namespace, forced here with KILN_SNAPSHOTTER) as a real user: owners as in the build,
/// a deleted file and a replaced directory exported as a whiteout and an opaque directory.
/// This machine's /dev/fuse is `0600 root`; the user gets a `0666` node of the same device
/// (as Debian's udev makes it) in a mount namespace of the test's own.
#[test]
fn a_rootless_build_on_fuse_overlayfs_keeps_owners_whiteouts_and_opaque_dirs() {
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\n\
             RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >>/etc/passwd && mkdir /out \\\n \
             && echo hi >/out/f && chown -R 1000:1000 /out && rm /bin/vi \\\n \
             && rm -rf /usr && mkdir /usr && echo n >/usr/new && grep -c fuse-overlayfs /proc/mounts\n\
             USER 1000\nRUN id -u\n",
        )],
    );
    let dev = r.k.path("fusedev");
    std::fs::create_dir_all(&dev).unwrap();
    let oci = r.k.path("out.tar");
    let script = format!(
        "set -e; mount -t tmpfs -o mode=755 none {dev}; mknod -m 666 {dev}/fuse c 10 229; \
         mount --bind {dev}/fuse /dev/fuse; exec {setpriv} --reuid {USER} --regid {USER} \
         --init-groups -- {kiln} build --progress=plain --build-context bb=oci-layout://{bb}:latest \
         -o type=oci,dest={oci} {ctx}",
        dev = dev.display(),
        setpriv = setpriv().display(),
        kiln = target_dir().join("kiln").display(),
        bb = r.k.path("bb").display(),
        oci = oci.display(),
        ctx = ctx.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("HOME", r.home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KILN_SNAPSHOTTER", "fuse-overlayfs")
        .env(NO_DEFAULT_ATTESTATIONS, "1")
        .current_dir(r.k.dir.path())
        .output()
        .expect("run unshare (util-linux)");
    let run = Run::from(out).ok();
    // The RUN step's root was a fuse-overlayfs mount, and the USER step ran as 1000.
    let logged: Vec<&str> = run.stderr.lines().collect();
    assert!(
        logged
            .iter()
            .any(|l| l.ends_with(" 1") && l.starts_with("#3 ")),
        "no fuse-overlayfs mount under the step:\n{}",
        run.stderr
    );
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with("#4 ") && l.ends_with(" 1000")),
        "{}",
        run.stderr
    );
    let owners = layer_owners(&r.k, &oci);
    assert_eq!(owner_of(&owners, "out/f"), "1000/1000", "{owners:?}");
    assert_eq!(owner_of(&owners, "out"), "1000/1000", "{owners:?}");
    let paths: Vec<&str> = owners.iter().map(|(_, p)| p.as_str()).collect();
    assert!(paths.contains(&"bin/.wh.vi"), "{paths:?}");
    assert!(paths.contains(&"usr/.wh..wh..opq"), "{paths:?}");
    assert!(paths.contains(&"usr/new"), "{paths:?}");
    // fuse-overlayfs's own markers never reach a layer.
    assert!(
        !paths.iter().any(|p| p.contains("fuseoverlayfs")),
        "{paths:?}"
    );
}

/// Rootless kiln and kiln as root mark opaque directories with different xattrs
/// (`user.overlay.opaque`, `trusted.overlay.opaque`), so neither may build on the other's
/// store: each refuses it, saying who made it and where its own default store is.
#[test]
fn a_store_of_the_other_mode_is_refused_naming_who_made_it() {
    let r = Rootless::new(USER);
    let ctx = r.write(
        "ctx",
        &[("Dockerfile", "FROM bb\nCOPY f /f\n"), ("f", "x\n")],
    );
    let ctx = ctx.display().to_string();
    let bb = format!("bb=oci-layout://{}:latest", r.k.path("bb").display());
    let build = |root: &Path| {
        vec![
            "--root".to_owned(),
            root.display().to_string(),
            "build".to_owned(),
            "--progress=plain".to_owned(),
            "--build-context".to_owned(),
            bb.clone(),
            ctx.clone(),
        ]
    };

    // A store made as root, then given to the user: refused by rootless kiln.
    let root_store = r.k.path("root-store");
    let root_args = build(&root_store);
    let args: Vec<&str> = root_args.iter().map(String::as_str).collect();
    r.k.run(&args).ok();
    r.chown();
    let refused = r.run(&args).fails();
    assert!(
        refused.stderr.contains("was made by kiln as root")
            && refused.stderr.contains("this kiln runs rootless")
            && refused.stderr.contains("~/.local/share/kiln"),
        "{}",
        refused.stderr
    );

    // The user's own store, made rootless: refused by kiln as root.
    let users = r.home().join(".local/share/kiln");
    let own_args = build(&users);
    let own: Vec<&str> = own_args.iter().map(String::as_str).collect();
    r.run(&own).ok();
    let refused = r.k.run(&own).fails();
    assert!(
        refused.stderr.contains("was made by rootless kiln")
            && refused.stderr.contains("this kiln runs as root")
            && refused.stderr.contains("/var/lib/kiln"),
        "{}",
        refused.stderr
    );
}
