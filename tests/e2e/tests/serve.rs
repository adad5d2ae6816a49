//! `kiln serve` and `kiln build --builder unix://...` (issue 11): a daemon on a unix socket with
//! its own store, builds through it with the context synced, the OCI tarball written on the
//! client, failures printed as a local build prints them, an unreachable or killed daemon
//! reported quickly with its address, two clients at once, and SIGTERM. Needs the busybox
//! fixture (`cargo xtask test` builds it) and a `kill` command (procps).

use std::time::{Duration, Instant};

use kiln_e2e::serve::{builder_create, Certs, Daemon};
use kiln_e2e::{host_ssh_add, ssh_keygen, tool, Background, Kiln, SshAgent};

const PLUGINS: &[&str] = &["kiln-frontend-dockerfile", "kiln-exec"];

/// The test's daemon: on `<test dir>/run/kiln.sock`, with the store `daemon-root`.
fn start(k: &Kiln) -> Daemon {
    Daemon::unix(k, "run/kiln.sock", "daemon-root", &[])
}

/// The build flags every test uses: the busybox fixture as the `bb` context.
fn base_flags() -> Vec<String> {
    vec![
        "--progress=plain".to_owned(),
        "--build-context".to_owned(),
        format!("bb=oci-layout://{}", kiln_e2e::busybox_layout().display()),
    ]
}

fn build(k: &Kiln, builder: Option<&str>, extra: &[&str], ctx: &str) -> kiln_e2e::Run {
    let mut args: Vec<String> = vec!["build".to_owned()];
    if let Some(b) = builder {
        args.extend(["--builder".to_owned(), b.to_owned()]);
    }
    args.extend(base_flags());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(ctx.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    k.run(&args)
}

/// A client building a step that sleeps two minutes through `daemon`, once the step started.
fn slow_build(k: &Kiln, daemon: &Daemon) -> Background {
    let slow = k.write(
        "slow",
        &[(
            "Dockerfile",
            "FROM bb\nRUN echo started-sleeping && sleep 120\n",
        )],
    );
    let mut args = vec![
        "build".to_owned(),
        "--builder".to_owned(),
        daemon.addr.clone(),
    ];
    args.extend(base_flags());
    args.push(slow.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = k.spawn(&[], &args);
    assert!(
        client.wait_for_line("started-sleeping", Duration::from_secs(60)),
        "{}",
        client.seen.join("\n")
    );
    client
}

#[test]
fn a_remote_build_writes_the_tarball_on_the_client_and_resends_only_the_edited_file() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\nRUN cat /a.txt /b.txt > /both\n",
            ),
            ("a.txt", "alpha\n"),
            ("b.txt", "beta\n"),
            ("ignored.log", "not sent\n"),
            (".dockerignore", "*.log\n"),
        ],
    );
    let ctx = ctx.display().to_string();
    let mut daemon = start(&k);
    let out = k.path("out/image.tar");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let dest = format!("type=oci,dest={}", out.display());
    let first = build(&k, Some(&daemon.addr), &["-t", "app:1", "-o", &dest], &ctx).ok();
    assert_eq!(first.step_state("RUN cat"), "DONE", "{}", first.stderr);
    let synced = daemon.line("build 1: context synced");
    // Dockerfile, a.txt, b.txt, .dockerignore (the ignored file stayed on the client), and the
    // files of the `bb` layout.
    let layout_files = tool(
        "find",
        &[
            &kiln_e2e::busybox_layout().display().to_string(),
            "-type",
            "f",
        ],
    )
    .lines()
    .count();
    assert!(
        synced.contains(&format!(": {} files,", 4 + layout_files)),
        "{synced}"
    );
    // The tarball is the client's file, an OCI layout holding the image the build reported,
    // with the mode a local build's file gets (0666 less the umask), not tempfile's 0600.
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|u| u32::from_str_radix(u.trim(), 8).unwrap())
        .unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o666 & !umask, "{mode:o}");
    let listing = tool("tar", &["-tf", &out.display().to_string()]);
    assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
    let index = tool("tar", &["-xOf", &out.display().to_string(), "index.json"]);
    let digest = first.digest();
    assert!(index.contains(&digest), "{index} lacks {digest}");
    let bundle = k.unpack(&out, "first", "1");
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/both")).unwrap(),
        "alpha\nbeta\n"
    );

    // Edit one file: only it crosses the wire, and the steps before it come from the cache.
    std::fs::write(k.path("ctx/b.txt"), "BETA!\n").unwrap();
    let second = build(&k, Some(&daemon.addr), &["-o", &dest], &ctx).ok();
    let synced = daemon.line("build 2: context synced");
    assert!(
        synced.contains(": 1 files, 6 bytes received"),
        "only b.txt (6 bytes) should have been sent: {synced}"
    );
    assert_eq!(
        second.step_state("COPY a.txt"),
        "CACHED",
        "{}",
        second.stderr
    );
    assert_eq!(second.step_state("COPY b.txt"), "DONE", "{}", second.stderr);
    assert_eq!(second.step_state("RUN cat"), "DONE", "{}", second.stderr);
    assert_ne!(second.digest(), digest);
}

/// The failure report with what differs between a local and a remote build taken out: the
/// layout context's path (the daemon reads its own mirror of it), the step ids that path
/// changes, and the timings.
fn failure_report(stderr: &str) -> Vec<String> {
    let from = stderr
        .lines()
        .position(|l| l.starts_with("------"))
        .unwrap_or_else(|| panic!("no step summary in:\n{stderr}"));
    stderr
        .lines()
        .skip(from)
        .map(|l| match l.find("(sha256:") {
            Some(i) => {
                let end = l[i..].find(')').map_or(l.len(), |e| i + e + 1);
                format!("{}(ID){}", &l[..i], &l[end..])
            }
            None => l.to_owned(),
        })
        .collect()
}

#[test]
fn a_failing_step_through_the_daemon_prints_what_a_local_build_prints() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nRUN echo before\nRUN echo the-last-words && exit 3\nRUN echo never\n",
        )],
    );
    let ctx = ctx.display().to_string();
    let daemon = start(&k);
    let local = build(&k, None, &[], &ctx).fails();
    let remote = build(&k, Some(&daemon.addr), &[], &ctx).fails();
    assert_eq!(remote.code, local.code);
    let (l, r) = (
        failure_report(&local.stderr),
        failure_report(&remote.stderr),
    );
    assert_eq!(r, l, "remote:\n{}\nlocal:\n{}", remote.stderr, local.stderr);
    // What both show: the step's output, the Dockerfile excerpt, BuildKit's ERROR line.
    assert!(r.iter().any(|l| l == "the-last-words"), "{r:?}");
    assert!(
        r.iter().any(|l| l.contains(">>> RUN echo the-last-words")),
        "{r:?}"
    );
    let last = r.last().unwrap();
    assert!(
        last.starts_with("ERROR: failed to solve: ") && last.contains("exit code: 3"),
        "{last}"
    );
}

#[test]
fn an_unreachable_daemon_is_an_error_naming_its_address() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\n")]);
    let addr = format!("unix://{}", k.path("nobody-here.sock").display());
    let started = Instant::now();
    let run = build(&k, Some(&addr), &[], &ctx.display().to_string()).fails();
    assert!(
        run.stderr
            .contains(&format!("ERROR: cannot reach builder at {addr}: ")),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_daemon_killed_mid_build_fails_the_client_quickly_and_a_restarted_one_builds() {
    let k = Kiln::new(PLUGINS);
    let mut daemon = start(&k);
    let client = slow_build(&k, &daemon);
    tool("kill", &["-KILL", &daemon.pid()]);
    let killed_at = Instant::now();
    let (code, stderr) = client.finish(Duration::from_secs(10));
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "ERROR: builder at {}: connection lost",
            daemon.addr
        )),
        "{stderr}"
    );
    daemon.proc = None;
    let sessions = k.path("daemon-root/serve-sessions");
    let left = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    assert_eq!(left(&sessions), 1, "the killed daemon's session directory");

    // The same store and socket path: the stale socket is replaced, the store opens, and the
    // dead session's directory is removed.
    let daemon = start(&k);
    assert_eq!(left(&sessions), 0, "a dead session's directory was left");
    let ok = k.write("ok", &[("Dockerfile", "FROM bb\nRUN echo after-restart\n")]);
    let run = build(&k, Some(&daemon.addr), &[], &ok.display().to_string()).ok();
    assert_eq!(
        run.step_state("RUN echo after-restart"),
        "DONE",
        "{}",
        run.stderr
    );
}

#[test]
fn two_clients_build_through_one_daemon_at_once() {
    let k = Kiln::new(PLUGINS);
    let daemon = start(&k);
    let mut clients = Vec::new();
    for name in ["one", "two"] {
        let ctx = k.write(
            name,
            &[
                (
                    "Dockerfile",
                    "FROM bb\nCOPY name /name\nRUN sleep 1 && cat /name > /out\n",
                ),
                ("name", name),
            ],
        );
        let out = k.path(&format!("{name}.tar"));
        let mut args = vec![
            "build".to_owned(),
            "--builder".to_owned(),
            daemon.addr.clone(),
            "-o".to_owned(),
            format!("type=oci,dest={}", out.display()),
        ];
        args.extend(base_flags());
        args.push(ctx.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        clients.push((k.spawn(&[], &args), out));
    }
    for (client, out) in clients {
        let (code, stderr) = client.finish(Duration::from_secs(120));
        assert_eq!(code, 0, "{stderr}");
        assert!(stderr.contains("\nbuilt sha256:"), "{stderr}");
        let listing = tool("tar", &["-tf", &out.display().to_string()]);
        assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
    }
}

#[test]
fn sigterm_cancels_running_builds_removes_the_socket_and_exits_zero() {
    let k = Kiln::new(PLUGINS);
    let mut daemon = start(&k);
    let client = slow_build(&k, &daemon);
    tool("kill", &["-TERM", &daemon.pid()]);
    let proc = daemon.proc.take().expect("running");
    let (code, log) = proc.finish(Duration::from_secs(30));
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(
        !k.path("run/kiln.sock").exists(),
        "the socket was left behind"
    );
    let (code, stderr) = client.finish(Duration::from_secs(10));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ERROR: failed to solve: "), "{stderr}");
    // The store is consistent: a new daemon on it builds.
    let daemon = start(&k);
    let ok = k.write(
        "ok",
        &[("Dockerfile", "FROM bb\nRUN echo after-shutdown\n")],
    );
    let run = build(&k, Some(&daemon.addr), &[], &ok.display().to_string()).ok();
    assert_eq!(
        run.step_state("RUN echo after-shutdown"),
        "DONE",
        "{}",
        run.stderr
    );
}

#[test]
fn a_tcp_daemon_with_mutual_tls_serves_a_client_with_a_certificate_and_refuses_others() {
    let k = Kiln::new(PLUGINS);
    let certs = Certs::make(&k.path("certs"));
    let daemon = Daemon::mutual_tls(&k, "daemon-root", &certs);
    let addr = daemon.addr.clone();
    let root = k.path("daemon-root").display().to_string();
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\nRUN echo over-tls\n")]);
    let ctx = ctx.display().to_string();

    let with_cert = certs.client_opt();
    builder_create(&k, "mtls", &["--driver-opt", &with_cert], &addr).ok();
    let run = build(&k, Some("mtls"), &[], &ctx).ok();
    assert_eq!(
        run.step_state("RUN echo over-tls"),
        "DONE",
        "{}",
        run.stderr
    );

    // The right CA but no client certificate: refused, quickly, naming the address.
    let ca_only = certs.ca_only_opt();
    builder_create(&k, "nocert", &["--driver-opt", &ca_only], &addr).ok();
    let started = Instant::now();
    let refused = build(&k, Some("nocert"), &[], &ctx).fails();
    assert!(refused.stderr.contains(&addr), "{}", refused.stderr);
    assert!(!refused.stderr.contains("over-tls"), "{}", refused.stderr);
    // Plain tcp to the TLS port: refused too.
    let plain = build(&k, Some(&addr), &[], &ctx).fails();
    assert!(plain.stderr.contains(&addr), "{}", plain.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    drop(daemon);

    // Without TLS files, tcp is refused, and --insecure off loopback too.
    let no_tls = k
        .run(&["--root", &root, "serve", "--addr", "tcp://127.0.0.1:0"])
        .fails();
    assert!(no_tls.stderr.contains("--tlscacert"), "{}", no_tls.stderr);
    let open = k
        .run(&[
            "--root",
            &root,
            "serve",
            "--addr",
            "tcp://0.0.0.0:0",
            "--insecure",
        ])
        .fails();
    assert!(open.stderr.contains("loopback"), "{}", open.stderr);
}

#[test]
fn local_outputs_and_named_directory_contexts_go_through_the_daemon() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb AS build\nCOPY --from=extra sub/note.txt big.bin /out/\n\
                 RUN echo built > /out/built.txt\nFROM scratch\nCOPY --from=build /out/ /\n",
        )],
    );
    k.write("extra", &[("sub/note.txt", "from the named context\n")]);
    // Bigger than one piece of the wire (1 MiB): it arrives in several.
    let big: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(k.path("extra/big.bin"), &big).unwrap();
    let daemon = start(&k);
    let out = k.path("out-dir");
    let dest = format!("type=local,dest={}", out.display());
    let named = format!("extra={}", k.path("extra").display());
    let run = build(
        &k,
        Some(&daemon.addr),
        &["-o", &dest, "--build-context", &named],
        &ctx.display().to_string(),
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out.join("note.txt")).unwrap(),
        "from the named context\n",
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("built.txt")).unwrap(),
        "built\n"
    );
}

#[test]
fn ctrl_c_on_the_client_cancels_the_build_on_the_daemon() {
    let k = Kiln::new(PLUGINS);
    let mut daemon = start(&k);
    let client = slow_build(&k, &daemon);
    tool("kill", &["-INT", &client.id().to_string()]);
    let (code, stderr) = client.finish(Duration::from_secs(30));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ERROR: failed to solve: "), "{stderr}");
    // The daemon saw the build end (cancelled), long before the step's 120 s.
    daemon.line("build 1: failed");
}

#[test]
fn secrets_are_served_by_the_client_when_a_step_mounts_them_and_never_kept() {
    const SECRET: &str = "s3cret-from-the-client-7f3a";
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            // The Dockerfile holds the secret upper-cased, so that only the secret itself is
            // looked for on the daemon's disk.
            "FROM bb\nRUN --mount=type=secret,id=tok,required=true \
             test \"$(tr a-z A-Z < /run/secrets/tok)\" = S3CRET-FROM-THE-CLIENT-7F3A && echo secret-seen\n\
             RUN --mount=type=secret,id=envtok,env=TOK test \"$TOK\" = from-env && echo env-seen\n",
        )],
    );
    k.write("secrets", &[("tok", SECRET)]);
    let daemon = start(&k);
    let file = format!("id=tok,src={}", k.path("secrets/tok").display());
    let mut args = vec![
        "build".to_owned(),
        "--builder".to_owned(),
        daemon.addr.clone(),
    ];
    args.extend(base_flags());
    args.extend([
        "--secret".to_owned(),
        file,
        "--secret".to_owned(),
        "id=envtok,env=KILN_TEST_TOKEN".to_owned(),
        ctx.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = k.run_env(&[("KILN_TEST_TOKEN", "from-env")], &args).ok();
    assert!(run.stderr.contains("secret-seen"), "{}", run.stderr);
    assert!(run.stderr.contains("env-seen"), "{}", run.stderr);
    // The daemon kept it nowhere: not in its store, mirrors or session directories.
    let kept = kiln_e2e::files_containing(&k.path("daemon-root"), SECRET.as_bytes());
    assert!(
        kept.is_empty(),
        "the secret is on the daemon's disk: {kept:?}"
    );

    // A secret the client does not have fails the step, naming it, as a local build does.
    let ctx2 = k.write(
        "ctx2",
        &[(
            "Dockerfile",
            "FROM bb\nRUN --mount=type=secret,id=missing,required=true cat /run/secrets/missing\n",
        )],
    );
    let failed = build(&k, Some(&daemon.addr), &[], &ctx2.display().to_string()).fails();
    let local = build(&k, None, &[], &ctx2.display().to_string()).fails();
    let error = |stderr: &str| {
        let line = stderr
            .lines()
            .rfind(|l| l.starts_with("ERROR: "))
            .unwrap_or_else(|| panic!("no ERROR line in:\n{stderr}"))
            .to_owned();
        failure_report(&format!("------\n{line}"))
            .pop()
            .unwrap_or_default()
    };
    assert_eq!(error(&failed.stderr), error(&local.stderr));
    assert!(
        error(&failed.stderr).contains("missing"),
        "{}",
        failed.stderr
    );
}

#[test]
fn an_ssh_agent_of_the_client_serves_the_steps_of_a_remote_build() {
    let k = Kiln::new(PLUGINS);
    let (key, fingerprint) = ssh_keygen(&k, "id_ed25519", "", "kiln-remote-ssh");
    let key_s = key.display().to_string();
    let agent = SshAgent::start(&k, &[&key]);
    let sock = agent.sock.display().to_string();

    let (hostbin, ld) = host_ssh_add(&k);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!(
                "FROM bb\nRUN --mount=type=ssh --mount=type=bind,from=hostbin,target=/h \
                 /h/{ld} --library-path /h /h/ssh-add -l > /keys\n\
                 FROM scratch\nCOPY --from=0 /keys /keys\n"
            ),
        )],
    );
    let daemon = start(&k);
    let out = k.path("out");
    let run = build(
        &k,
        Some(&daemon.addr),
        &[
            "--ssh",
            &format!("default={sock}"),
            "--build-context",
            &format!("hostbin={}", hostbin.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
        &ctx.display().to_string(),
    )
    .ok();
    let keys = std::fs::read_to_string(out.join("keys")).unwrap();
    assert!(
        keys.contains(&fingerprint) && keys.contains("kiln-remote-ssh"),
        "{keys}\n{}",
        run.stderr
    );

    // `--ssh ID=KEYFILE`: the client loads the key into an agent of its own and serves that
    // agent over the same relay; the key file itself is not sent.
    let out_keys = k.path("out-keys");
    let run = build(
        &k,
        Some(&daemon.addr),
        &[
            "--no-cache",
            "--ssh",
            &format!("default={key_s}"),
            "--build-context",
            &format!("hostbin={}", hostbin.display()),
            "-o",
            &format!("type=local,dest={}", out_keys.display()),
        ],
        &ctx.display().to_string(),
    )
    .ok();
    let keys = std::fs::read_to_string(out_keys.join("keys")).unwrap();
    assert!(
        keys.contains(&fingerprint) && keys.contains("kiln-remote-ssh"),
        "{keys}\n{}",
        run.stderr
    );
}

#[test]
fn a_remote_build_takes_its_context_from_stdin_as_a_tar_or_a_dockerfile() {
    let k = Kiln::new(PLUGINS);
    k.write(
        "tarsrc",
        &[
            (
                "Build.df",
                "FROM bb\nCOPY . /ctx/\nRUN cat /ctx/sub/a.txt > /seen\n",
            ),
            ("sub/a.txt", "from stdin\n"),
        ],
    );
    let tar = std::process::Command::new("tar")
        .args(["-czf", "-", "-C"])
        .arg(k.path("tarsrc"))
        .arg(".")
        .output()
        .expect("tar (GNU tar) must be installed for this test");
    assert!(tar.status.success(), "tar failed");
    let daemon = start(&k);
    let stdin_build = |input: &[u8], extra: &[&str], out: &std::path::Path| {
        let mut args: Vec<String> = vec!["build".into(), "--builder".into(), daemon.addr.clone()];
        args.extend(base_flags());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend([
            "-o".into(),
            format!("type=local,dest={}", out.display()),
            "-".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        k.run_stdin(input, &args)
    };

    // A compressed tar on stdin, -f naming a file inside it.
    let out = k.path("out-tar");
    let run = stdin_build(&tar.stdout, &["-f", "Build.df"], &out).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "from stdin\n",
        "{}",
        run.stderr
    );
    assert!(out.join("ctx/sub/a.txt").is_file(), "{}", run.stderr);

    // A Dockerfile alone on stdin: an empty context.
    let out = k.path("out-df");
    let run = stdin_build(b"FROM bb\nRUN echo df-on-stdin > /seen\n", &[], &out).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "df-on-stdin\n",
        "{}",
        run.stderr
    );
}

#[test]
fn a_remote_load_comes_back_to_the_client_and_goes_into_its_docker() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            "FROM bb\nRUN echo loaded-through-the-builder > /hello\nCMD [\"cat\", \"/hello\"]\n",
        )],
    );
    let ctx = ctx.display().to_string();
    let daemon = start(&k);
    // A short path: unix socket paths are limited to 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("kd")
        .tempdir_in("/tmp")
        .unwrap();
    let docker = kiln_e2e::dockerd::Dockerd::start(dir.path());
    let mut args: Vec<String> = vec!["build".into(), "--builder".into(), daemon.addr.clone()];
    args.extend(base_flags());
    args.extend([
        "--load".into(),
        "-t".into(),
        "remote-load:1".into(),
        ctx.clone(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = k
        .run_env(&[("DOCKER_HOST", docker.host.as_str())], &args)
        .ok();
    let out = docker.docker(&["run", "--rm", "--network", "none", "remote-load:1"]);
    assert!(
        out.status.success(),
        "docker run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        run.stderr
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "loaded-through-the-builder\n"
    );
    drop(docker);

    // No docker answers the client: one clear error before anything is built.
    let gone = format!("unix://{}/nothing.sock", dir.path().display());
    let run = k.run_env(&[("DOCKER_HOST", gone.as_str())], &args).fails();
    assert!(
        run.stderr.contains("--load: no docker daemon answers"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("exporting to"), "{}", run.stderr);
}

#[test]
fn concurrent_builds_share_unchanged_mirrors_and_run_an_identical_step_once() {
    let k = Kiln::new(PLUGINS);
    let dockerfile = "FROM bb\nRUN echo identical-step && sleep 20 && echo done > /stamp\n";
    let a = k.write("a", &[("Dockerfile", dockerfile)]);
    let b = k.write("b", &[("Dockerfile", dockerfile)]);
    let mut daemon = start(&k);
    let start = |ctx: &std::path::Path| {
        let mut args = vec![
            "build".to_owned(),
            "--builder".to_owned(),
            daemon.addr.clone(),
        ];
        args.extend(base_flags());
        args.push(ctx.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        k.spawn(&[], &args)
    };
    let mut first = start(&a);
    assert!(
        first.wait_for_line("identical-step", Duration::from_secs(60)),
        "{}",
        first.seen.join("\n")
    );
    // The second build syncs the same `bb` layout while the first builds from it: nothing of
    // it changed, so it does not wait for the first build to end.
    let second = start(&b);
    daemon.line("build 2: context synced");
    let log = daemon.log();
    assert!(!log.contains("build 1: done"), "{log}");
    let (code, first_err) = first.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{first_err}");
    let (code, second_err) = second.finish(Duration::from_secs(120));
    assert_eq!(code, 0, "{second_err}");
    // The step ran once: the second build waited for the first's and took its result (its
    // `echo` printed nothing there).
    let echoed = |stderr: &str| stderr.lines().any(|l| l.ends_with(" identical-step"));
    assert!(echoed(&first_err), "{first_err}");
    assert!(!echoed(&second_err), "{second_err}");
    assert!(
        second_err.contains("waiting for another kiln build that runs this step"),
        "{second_err}"
    );
}

#[test]
fn a_registry_cache_lets_a_second_daemon_reuse_the_first_ones_steps() {
    let registry = kiln_e2e::test_registry();
    let k = Kiln::new(PLUGINS);
    // A step no earlier run of this test pushed a cache record for.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let ctx = k.write(
        "ctx",
        &[(
            "Dockerfile",
            &format!("FROM bb\nRUN echo shared-step-{nonce} > /x\n"),
        )],
    );
    let ctx = ctx.display().to_string();
    let cache = format!("{registry}/kiln-serve-cache:{nonce}");
    let first = Daemon::unix(&k, "run/a.sock", "root-a", &[]);
    let run = build(
        &k,
        Some(&first.addr),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
        &ctx,
    )
    .ok();
    assert_eq!(
        run.step_state("RUN echo shared-step"),
        "DONE",
        "{}",
        run.stderr
    );
    let second = Daemon::unix(&k, "run/b.sock", "root-b", &[]);
    let run = build(
        &k,
        Some(&second.addr),
        &["--cache-from", &format!("type=registry,ref={cache}")],
        &ctx,
    )
    .ok();
    assert_eq!(
        run.step_state("RUN echo shared-step"),
        "CACHED",
        "{}",
        run.stderr
    );
}

#[test]
fn a_url_context_is_fetched_by_the_daemon() {
    let k = Kiln::new(PLUGINS);
    k.write(
        "tarsrc",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            ("Other.Dockerfile", "FROM scratch\nCOPY a.txt /other.txt\n"),
            ("a.txt", "from the tarball\n"),
        ],
    );
    let www = k.write("www", &[("placeholder", "")]);
    kiln_e2e::sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    let url = format!("{}/ctx.tar.gz", kiln_e2e::serve_files(&www));
    let daemon = start(&k);
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    build(&k, Some(&daemon.addr), &["-o", &dest], &url).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("ctx/a.txt")).unwrap(),
        "from the tarball\n"
    );
    // `-f` relative: a file inside the fetched context.
    let out2 = k.path("out2");
    let dest2 = format!("type=local,dest={}", out2.display());
    build(
        &k,
        Some(&daemon.addr),
        &["-o", &dest2, "-f", "Other.Dockerfile"],
        &url,
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(out2.join("other.txt")).unwrap(),
        "from the tarball\n"
    );
    // `-f` absolute: the client's own file, sent.
    let mine = k.write(
        "mine",
        &[("Dockerfile", "FROM scratch\nCOPY a.txt /mine.txt\n")],
    );
    let out3 = k.path("out3");
    let dest3 = format!("type=local,dest={}", out3.display());
    let file = mine.join("Dockerfile").display().to_string();
    build(&k, Some(&daemon.addr), &["-o", &dest3, "-f", &file], &url).ok();
    assert_eq!(
        std::fs::read_to_string(out3.join("mine.txt")).unwrap(),
        "from the tarball\n"
    );
}

#[test]
fn plain_tcp_on_loopback_with_insecure_builds() {
    let k = Kiln::new(PLUGINS);
    let daemon = Daemon::tcp(&k, "daemon-root", &["--insecure"]);
    let addr = daemon.addr.clone();
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\nRUN echo over-tcp\n")]);
    let run = build(&k, Some(&addr), &[], &ctx.display().to_string()).ok();
    assert_eq!(
        run.step_state("RUN echo over-tcp"),
        "DONE",
        "{}",
        run.stderr
    );
}

/// The files under `dir`, relative and sorted (directories with a trailing `/`).
fn listing(dir: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read the output") {
            let path = entry.expect("an output entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under the output")
                .display()
                .to_string();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_remote_build_reads_the_dockerfiles_own_ignore_file_as_a_local_one_does() {
    let k = Kiln::new(PLUGINS);
    let copy_all = "FROM scratch\nCOPY . /\n";
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", copy_all),
            // Ignores itself too: the daemon cannot read it from its mirror of the context.
            (
                "Dockerfile.dockerignore",
                "beside-ignored.txt\nDockerfile.dockerignore\n",
            ),
            (".dockerignore", "root-ignored.txt\n"),
            ("keep.txt", "kept\n"),
            ("root-ignored.txt", "only .dockerignore ignores this\n"),
            (
                "beside-ignored.txt",
                "only Dockerfile.dockerignore ignores this\n",
            ),
            (
                "app-ignored.txt",
                "only app.Dockerfile.dockerignore ignores this\n",
            ),
            ("docker/app.Dockerfile", copy_all),
            ("docker/app.Dockerfile.dockerignore", "app-ignored.txt\n"),
        ],
    );
    let ctx_s = ctx.display().to_string();
    let app = ctx.join("docker/app.Dockerfile").display().to_string();
    let daemon = start(&k);
    for (case, file) in [("default", None), ("app", Some(app.as_str()))] {
        let mut listings = Vec::new();
        for (side, builder) in [("local", None), ("remote", Some(daemon.addr.as_str()))] {
            let out = k.path(&format!("out-{case}-{side}"));
            let dest = format!("type=local,dest={}", out.display());
            let mut extra = vec!["-o", &dest];
            if let Some(f) = file {
                extra.extend(["-f", f]);
            }
            let run = build(&k, builder, &extra, &ctx_s).ok();
            listings.push((listing(&out), run.stderr));
        }
        let (local, remote) = (&listings[0], &listings[1]);
        assert_eq!(
            local.0, remote.0,
            "{case}: local vs remote listing\nlocal:\n{}\nremote:\n{}",
            local.1, remote.1
        );
        let has = |name: &str| local.0.iter().any(|f| f == name);
        match case {
            "default" => assert!(
                has("root-ignored.txt") && !has("beside-ignored.txt") && has("keep.txt"),
                "{:?}",
                local.0
            ),
            _ => assert!(
                has("root-ignored.txt") && has("beside-ignored.txt") && !has("app-ignored.txt"),
                "{:?}",
                local.0
            ),
        }
    }
}

#[test]
fn a_url_context_with_the_clients_dockerfile_uses_that_dockerfiles_own_ignore_file() {
    let k = Kiln::new(PLUGINS);
    k.write(
        "tarsrc",
        &[
            (".dockerignore", "a.txt\n"),
            ("a.txt", "only .dockerignore ignores this\n"),
            (
                "b.txt",
                "only the client's Dockerfile.dockerignore ignores this\n",
            ),
        ],
    );
    let www = k.write("www", &[("placeholder", "")]);
    kiln_e2e::sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    let url = format!("{}/ctx.tar.gz", kiln_e2e::serve_files(&www));
    // `-f` absolute: the client's own file, sent with its own ignore file.
    let mine = k.write(
        "mine",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /\n"),
            ("Dockerfile.dockerignore", "b.txt\n"),
        ],
    );
    let file = mine.join("Dockerfile").display().to_string();
    let daemon = start(&k);
    let mut listings = Vec::new();
    for (side, builder) in [("local", None), ("remote", Some(daemon.addr.as_str()))] {
        let out = k.path(&format!("out-{side}"));
        let dest = format!("type=local,dest={}", out.display());
        let run = build(&k, builder, &["-o", &dest, "-f", &file], &url).ok();
        listings.push((listing(&out), run.stderr));
    }
    let (local, remote) = (&listings[0], &listings[1]);
    assert_eq!(
        local.0, remote.0,
        "local vs remote listing\nlocal:\n{}\nremote:\n{}",
        local.1, remote.1
    );
    assert_eq!(local.0, vec![".dockerignore", "a.txt"], "{}", local.1);
}

/// What a test compares of a cache layout `dir`: the tags of its index.json, the media type
/// and number of entries of each cache manifest, and the blobs that are not exactly those the
/// index reaches (stale ones, missing ones: none in a layout a cache export wrote).
fn layout_shape(dir: &std::path::Path) -> (Vec<String>, Vec<(String, usize)>, Vec<String>) {
    let read = |digest: &str| {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::read_to_string(dir.join("blobs/sha256").join(hex)).ok()
    };
    let index = kiln_e2e::json(
        &std::fs::read_to_string(dir.join("index.json")).expect("the layout's index.json"),
    );
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let tags = entries
        .iter()
        .map(|m| m["annotations"]["org.opencontainers.image.ref.name"].to_string())
        .collect();
    let mut manifests = Vec::new();
    let mut reached = std::collections::BTreeSet::new();
    let mut stack: Vec<serde_json::Value> = entries;
    while let Some(d) = stack.pop() {
        let digest = d["digest"].as_str().unwrap_or_default().to_owned();
        if !reached.insert(digest.clone()) {
            continue;
        }
        let media = d["mediaType"].as_str().unwrap_or_default();
        if !(media.contains("manifest") || media.contains("index")) {
            continue;
        }
        let Some(doc) = read(&digest).map(|t| kiln_e2e::json(&t)) else {
            continue;
        };
        let mut inner: Vec<serde_json::Value> = Vec::new();
        for key in ["manifests", "layers"] {
            inner.extend(doc[key].as_array().cloned().unwrap_or_default());
        }
        if !doc["config"].is_null() {
            inner.push(doc["config"].clone());
        }
        manifests.push((media.to_owned(), inner.len()));
        stack.extend(inner);
    }
    let blobs: std::collections::BTreeSet<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .expect("the layout's blobs")
        .map(|e| {
            let name = e.expect("a blob entry").file_name();
            format!("sha256:{}", name.to_string_lossy())
        })
        .collect();
    let odd = blobs
        .symmetric_difference(&reached)
        .cloned()
        .collect::<Vec<_>>();
    (tags, manifests, odd)
}

/// The digest of the cache manifest index.json of layout `dir` names.
fn cache_manifest(dir: &std::path::Path) -> String {
    let index = kiln_e2e::json(
        &std::fs::read_to_string(dir.join("index.json")).expect("the layout's index.json"),
    );
    index["manifests"][0]["digest"]
        .as_str()
        .expect("a cache manifest")
        .trim_start_matches("sha256:")
        .to_owned()
}

#[test]
fn a_local_cache_directory_of_the_client_travels_through_daemons_as_a_local_export_writes_it() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM bb AS builder\nRUN echo built-once > /built\n\nFROM bb\n\
                 COPY --from=builder /built /built\nCOPY hello.txt /hello.txt\n\
                 RUN cat /built /hello.txt > /combined\n",
            ),
            ("hello.txt", "hello\n"),
        ],
    );
    let ctx = ctx.display().to_string();
    let (remote_dir, local_dir) = (k.path("cache-remote"), k.path("cache-local"));
    let to = |dir: &std::path::Path| format!("type=local,dest={},mode=max", dir.display());
    let from = |dir: &std::path::Path| format!("type=local,src={}", dir.display());
    let out = k.path("image.tar");
    let oci = format!("type=oci,dest={}", out.display());
    let mut a = start(&k);

    // A local build and a remote one, each exporting to its own directory of this machine.
    let local = build(&k, None, &["--cache-to", &to(&local_dir)], &ctx).ok();
    let first = build(
        &k,
        Some(&a.addr),
        &["--cache-to", &to(&remote_dir), "-o", &oci],
        &ctx,
    )
    .ok();
    assert_eq!(first.step_state("RUN cat"), "DONE", "{}", first.stderr);
    // The export step names the client's directory, as the local one does.
    let exporting = |run: &kiln_e2e::Run, dir: &std::path::Path| {
        run.steps()
            .into_iter()
            .find(|(n, _)| n.contains("exporting cache"))
            .map(|(n, state)| (n.replace(&dir.display().to_string(), "DIR"), state))
    };
    assert_eq!(
        exporting(&first, &remote_dir),
        exporting(&local, &local_dir),
        "{}",
        first.stderr
    );
    let (local_shape, remote_shape) = (layout_shape(&local_dir), layout_shape(&remote_dir));
    assert_eq!(remote_shape, local_shape);
    assert_eq!(remote_shape.0, vec!["\"latest\"".to_owned()]);
    assert!(remote_shape.2.is_empty(), "{remote_shape:?}");
    assert!(remote_dir.join("oci-layout").is_file());

    // Another daemon, whose store never saw this build, takes every step from the directory.
    let b = Daemon::unix(&k, "run/b.sock", "root-b", &[]);
    let again = build(
        &k,
        Some(&b.addr),
        &["--cache-from", &from(&remote_dir), "-o", &oci],
        &ctx,
    )
    .ok();
    let ran: Vec<_> = again
        .steps()
        .into_iter()
        .filter(|(name, state)| name.contains("RUN") && state != "CACHED")
        .collect();
    assert!(ran.is_empty(), "RUN steps ran: {ran:?}\n{}", again.stderr);
    assert_eq!(again.digest(), first.digest(), "same image");

    // A second export, after an edit, adds and removes what the local one does.
    std::fs::write(k.path("ctx/hello.txt"), "hello again\n").unwrap();
    let (old_local, old_remote) = (cache_manifest(&local_dir), cache_manifest(&remote_dir));
    let local = build(
        &k,
        None,
        &[
            "--cache-from",
            &from(&local_dir),
            "--cache-to",
            &to(&local_dir),
        ],
        &ctx,
    )
    .ok();
    assert_eq!(local.step_state("RUN cat"), "DONE", "{}", local.stderr);
    let second = build(
        &k,
        Some(&a.addr),
        &[
            "--cache-from",
            &from(&remote_dir),
            "--cache-to",
            &to(&remote_dir),
        ],
        &ctx,
    )
    .ok();
    assert_eq!(second.step_state("RUN echo built-once"), "CACHED");
    assert_eq!(second.step_state("RUN cat"), "DONE", "{}", second.stderr);
    // The cache directory crossed the wire once: the daemon's mirror took the first export's
    // files from the export itself, so only the edited file was sent now.
    let synced = a.line("build 2: context synced");
    assert!(
        synced.contains(": 1 files, 12 bytes received"),
        "only hello.txt should have been sent: {synced}"
    );
    let (local_shape, remote_shape) = (layout_shape(&local_dir), layout_shape(&remote_dir));
    assert_eq!(remote_shape, local_shape);
    assert!(remote_shape.2.is_empty(), "{remote_shape:?}");
    for (dir, old) in [(&local_dir, old_local), (&remote_dir, old_remote)] {
        assert_ne!(cache_manifest(dir), old);
        assert!(
            !dir.join("blobs/sha256").join(&old).exists(),
            "{}: the replaced cache manifest stays",
            dir.display()
        );
    }

    // A directory that is not there warns as a local build does, naming it.
    let missing = from(&k.path("no-such-cache"));
    let warning = |run: &kiln_e2e::Run| -> Vec<String> {
        run.stderr
            .lines()
            .filter(|l| l.contains("local cache import at"))
            .map(str::to_owned)
            .collect()
    };
    let local = build(&k, None, &["--cache-from", &missing], &ctx).ok();
    let remote = build(&k, Some(&a.addr), &["--cache-from", &missing], &ctx).ok();
    assert_eq!(warning(&remote), warning(&local), "{}", remote.stderr);
    assert!(
        warning(&remote)[0].contains(&k.path("no-such-cache").display().to_string()),
        "{}",
        remote.stderr
    );

    // An export that fails with ignore-error=true (its destination is a file) is a warning
    // naming the client's path, and the build goes on, as locally.
    let failing = |dir: &std::path::Path| {
        std::fs::write(dir, "not a directory\n").unwrap();
        format!("type=local,dest={},ignore-error=true", dir.display())
    };
    let export_warning = |run: &kiln_e2e::Run, dir: &std::path::Path| -> Vec<String> {
        let dir = dir.display().to_string();
        run.stderr
            .lines()
            .filter(|l| l.starts_with("WARNING: exporting cache to ") && l.contains(&dir))
            .filter(|l| l.ends_with("(ignored: ignore-error=true)"))
            .map(str::to_owned)
            .collect()
    };
    let (bad_local, bad_remote) = (k.path("bad-local"), k.path("bad-remote"));
    let local = build(&k, None, &["--cache-to", &failing(&bad_local)], &ctx).ok();
    let remote = build(
        &k,
        Some(&a.addr),
        &["--cache-to", &failing(&bad_remote)],
        &ctx,
    )
    .ok();
    assert_eq!(
        export_warning(&local, &bad_local).len(),
        1,
        "{}",
        local.stderr
    );
    assert_eq!(
        export_warning(&remote, &bad_remote).len(),
        1,
        "{}",
        remote.stderr
    );
    for bad in [&bad_local, &bad_remote] {
        assert_eq!(std::fs::read_to_string(bad).unwrap(), "not a directory\n");
    }
}

#[test]
fn an_oci_layout_context_is_named_by_the_clients_path_in_step_names() {
    let k = Kiln::new(PLUGINS);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM bb\nRUN echo named\n")]);
    let ctx = ctx.display().to_string();
    let daemon = start(&k);
    let local = build(&k, None, &[], &ctx).ok();
    let remote = build(&k, Some(&daemon.addr), &[], &ctx).ok();
    let from = |run: &kiln_e2e::Run| -> Vec<String> {
        run.steps()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.contains("oci-layout://"))
            .collect()
    };
    let layout = kiln_e2e::busybox_layout().display().to_string();
    assert!(
        from(&local).iter().any(|n| n.contains(&layout)),
        "{}",
        local.stderr
    );
    assert_eq!(from(&remote), from(&local), "{}", remote.stderr);
}

#[test]
fn a_dockerfile_error_inside_a_fetched_url_context_shows_its_lines_as_a_local_build_does() {
    let k = Kiln::new(PLUGINS);
    k.write(
        "tarsrc",
        &[
            ("Dockerfile", "FROM scratch\nCOPY a.txt\nCOPY a.txt /a\n"),
            ("a.txt", "a\n"),
        ],
    );
    let www = k.write("www", &[("placeholder", "")]);
    kiln_e2e::sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    let url = format!("{}/ctx.tar.gz", kiln_e2e::serve_files(&www));
    let daemon = start(&k);
    // From the excerpt's first line to the end.
    let excerpt = |run: &kiln_e2e::Run| -> Vec<String> {
        let lines: Vec<&str> = run.stderr.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("Dockerfile:"))
            .unwrap_or_else(|| panic!("no Dockerfile excerpt in:\n{}", run.stderr));
        lines[at..].iter().map(|l| (*l).to_owned()).collect()
    };
    let local = build(&k, None, &[], &url).fails();
    let remote = build(&k, Some(&daemon.addr), &[], &url).fails();
    assert_eq!(remote.code, local.code);
    let shown = excerpt(&local);
    assert!(
        shown.iter().any(|l| l.contains(">>> COPY a.txt")),
        "{shown:?}"
    );
    assert_eq!(excerpt(&remote), shown, "{}", remote.stderr);
}

/// An error inside an `INCLUDE` fragment of a context only the daemon fetched: the daemon sends
/// the fragment (not the Dockerfile), and the client shows its lines as a local build does.
#[test]
fn an_error_in_a_fragment_of_a_fetched_url_context_shows_the_fragments_lines() {
    let k = Kiln::new(PLUGINS);
    k.add_plugin("kiln-include");
    k.write(
        "tarsrc",
        &[
            (
                "Dockerfile",
                "FROM bb\nRUN echo dockerfile-line-2\nINCLUDE frag/bad.df\n",
            ),
            ("frag/bad.df", "ENV A=1\nCOPY --bogus a /b\n"),
        ],
    );
    let www = k.write("www", &[("placeholder", "")]);
    kiln_e2e::sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    let url = format!("{}/ctx.tar.gz", kiln_e2e::serve_files(&www));
    let daemon = start(&k);
    let excerpt = |run: &kiln_e2e::Run| -> Vec<String> {
        let lines: Vec<&str> = run.stderr.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("bad.df:"))
            .unwrap_or_else(|| panic!("no excerpt of the fragment in:\n{}", run.stderr));
        lines[at..].iter().map(|l| (*l).to_owned()).collect()
    };
    let local = build(&k, None, &[], &url).fails();
    let remote = build(&k, Some(&daemon.addr), &[], &url).fails();
    assert_eq!(remote.code, local.code);
    let shown = excerpt(&local);
    assert!(
        shown.iter().any(|l| l.contains(">>> COPY --bogus a /b")),
        "{shown:?}"
    );
    assert_eq!(excerpt(&remote), shown, "{}", remote.stderr);
    assert!(
        !remote.stderr.contains(">>> RUN echo dockerfile-line-2"),
        "{}",
        remote.stderr
    );
}

#[test]
fn a_check_of_a_fetched_url_contexts_dockerfile_shows_its_lines_as_a_local_one_does() {
    let k = Kiln::new(PLUGINS);
    // `as` in lower case beside an upper-case FROM: a FromAsCasing warning on line 1.
    k.write(
        "tarsrc",
        &[
            ("Dockerfile", "FROM scratch as base\nCOPY a.txt /a\n"),
            ("a.txt", "a\n"),
        ],
    );
    let www = k.write("www", &[("placeholder", "")]);
    kiln_e2e::sh(k.dir.path(), "tar -czf www/ctx.tar.gz -C tarsrc .");
    let url = format!("{}/ctx.tar.gz", kiln_e2e::serve_files(&www));
    let daemon = start(&k);
    let local = build(&k, None, &["--check"], &url);
    let remote = build(&k, Some(&daemon.addr), &["--check"], &url);
    assert_eq!(remote.code, local.code);
    let shown = |run: &kiln_e2e::Run| -> Vec<String> {
        format!("{}\n{}", run.stdout, run.stderr)
            .lines()
            .filter(|l| l.contains(" | ") || l.starts_with("Dockerfile:"))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        shown(&local)
            .iter()
            .any(|l| l.contains(">>> FROM scratch as base")),
        "{}\n{}",
        local.stdout,
        local.stderr
    );
    assert_eq!(shown(&remote), shown(&local), "{}", remote.stderr);
}
