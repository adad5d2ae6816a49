//! `kiln builder create|ls|use|rm|inspect` through the real binary, with the builders kept in
//! a temporary XDG_CONFIG_HOME (or HOME); and the example deploy manifests parse and say what
//! docs/scale-out.md says they do.
#![allow(clippy::unwrap_used)]

use kiln_e2e::serve::{builder_create, Certs, Daemon};
use kiln_e2e::Kiln;

/// The rows of `kiln builder ls` as cells (split on runs of 2+ spaces), so that assertions do
/// not depend on column widths.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(ToOwned::to_owned)
                .collect()
        })
        .collect()
}

#[test]
fn builders_are_created_appended_listed_used_and_removed() {
    let k = Kiln::new(&[]);
    let n1 = k.path("n1.sock");
    let n2 = k.path("n2.sock");
    let (n1, n2) = (
        format!("unix://{}", n1.display()),
        format!("unix://{}", n2.display()),
    );

    let out = builder_create(
        &k,
        "b1",
        &["--node", "n1", "--platform", "linux/amd64"],
        &n1,
    )
    .ok();
    assert_eq!(out.stdout, "b1\n");
    let out = builder_create(
        &k,
        "b1",
        &["--append", "--node", "n2", "--platform", "arm64"],
        &n2,
    )
    .ok();
    assert_eq!(out.stdout, "b1\n");
    // The builder is a file in the config directory, written whole.
    let file = k.path("xdg-config/kiln/builders/b1.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(doc["name"], "b1");
    assert_eq!(doc["driver"], "remote");
    assert_eq!(doc["nodes"][0]["name"], "n1");
    assert_eq!(doc["nodes"][0]["endpoint"], n1.as_str());
    assert_eq!(doc["nodes"][1]["name"], "n2");
    assert_eq!(doc["nodes"][1]["platforms"][0]["architecture"], "arm64");

    // Refusals, with buildx's reasons; nothing is changed by them.
    let before = std::fs::read_to_string(&file).unwrap();
    for (args, why) in [
        (
            &["--name", "b1", "--append", "--node", "n2", "unix:///x.sock"][..],
            "node \"n2\" already exists in builder \"b1\"",
        ),
        (
            &["--name", "b1", "--append", &n1],
            "invalid duplicate endpoint",
        ),
        (
            &["--platform", "nonsense", &n1],
            "invalid --platform \"nonsense\"",
        ),
        (&["--name", "default", &n1], "reserved name"),
    ] {
        let err = k.run(&[&["builder", "create"][..], args].concat()).fails();
        assert!(err.stderr.contains(why), "{args:?}: {}", err.stderr);
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // `ls`: default is current; b1's nodes with their endpoints, status, declared platforms.
    let ls = k.run(&["builder", "ls"]).ok();
    let table = rows(&ls.stdout);
    assert_eq!(
        table[0],
        ["NAME/NODE", "DRIVER/ENDPOINT", "STATUS", "PLATFORMS"]
    );
    assert_eq!(table[1], ["default*", "local"]);
    assert_eq!(table[2][0], "\\_ default");
    assert_eq!(table[2][2], "running");
    assert_eq!(table[3], ["b1", "remote"]);
    assert_eq!(
        table[4],
        ["\\_ n1", &format!("\\_ {n1}"), "inactive", "linux/amd64*"]
    );
    assert_eq!(
        table[5],
        ["\\_ n2", &format!("\\_ {n2}"), "inactive", "linux/arm64*"]
    );
    // No daemon listens there: said after the table, per node, as buildx says it.
    assert!(
        ls.stderr.contains(&format!(
            "Failed to get status for b1 (n1): cannot reach builder at {n1}"
        )),
        "{}",
        ls.stderr
    );

    // `use` makes it current; `inspect` without a name shows the current builder.
    k.run(&["builder", "use", "b1"]).ok();
    let table = rows(&k.run(&["builder", "ls"]).ok().stdout);
    assert_eq!(table[1], ["default", "local"]);
    assert_eq!(table[3], ["b1*", "remote"]);
    let inspect = k.run(&["builder", "inspect"]).ok().stdout;
    let lines: Vec<Vec<String>> = inspect
        .lines()
        .map(|l| l.splitn(2, ':').map(|c| c.trim().to_owned()).collect())
        .collect();
    assert_eq!(lines[0], ["Name", "b1"]);
    assert_eq!(lines[1], ["Driver", "remote"]);
    assert!(inspect.contains("\nNodes:\n"), "{inspect}");
    for (node, endpoint, platform) in [("n1", &n1, "linux/amd64*"), ("n2", &n2, "linux/arm64*")] {
        let block = inspect
            .split("\n\n")
            .find(|b| {
                b.lines()
                    .any(|l| l.starts_with("Name:") && l.split_whitespace().nth(1) == Some(node))
            })
            .unwrap_or_else(|| panic!("no block for {node}:\n{inspect}"));
        assert!(
            block
                .lines()
                .any(|l| l.starts_with("Endpoint:") && l.ends_with(endpoint.as_str())),
            "{block}"
        );
        assert!(
            block
                .lines()
                .any(|l| l.starts_with("Status:") && l.ends_with("inactive")),
            "{block}"
        );
        assert!(
            block
                .lines()
                .any(|l| l.starts_with("Platforms:") && l.ends_with(platform)),
            "{block}"
        );
        assert!(
            block
                .lines()
                .any(|l| l.starts_with("Error:") && l.contains("cannot reach")),
            "{block}"
        );
    }
    // KILN_BUILDER outranks the current one; `default` is the local store.
    let inspect = k
        .run_env(&[("KILN_BUILDER", "default")], &["builder", "inspect"])
        .ok()
        .stdout;
    assert!(inspect.starts_with("Name:"), "{inspect}");
    assert!(
        inspect.lines().next().unwrap().ends_with("default"),
        "{inspect}"
    );
    // `ls` still lists when the selection names no builder, and says so.
    let ls = k
        .run_env(&[("KILN_BUILDER", "nope")], &["builder", "ls"])
        .ok();
    assert_eq!(rows(&ls.stdout)[3], ["b1", "remote"]);
    assert!(
        ls.stderr.contains("WARNING: no builder \"nope\" found"),
        "{}",
        ls.stderr
    );
    let err = k
        .run_env(&[("KILN_BUILDER", "nope")], &["builder", "inspect"])
        .fails();
    assert!(
        err.stderr.contains("no builder \"nope\" found") && err.stderr.contains("default, b1"),
        "{}",
        err.stderr
    );

    // `rm` of the current builder: gone, and default is current again.
    let err = k.run(&["builder", "rm", "default"]).fails();
    assert!(err.stderr.contains("cannot be removed"), "{}", err.stderr);
    let rm = k.run(&["builder", "rm", "b1"]).ok();
    assert!(rm.stderr.contains("b1 removed"), "{}", rm.stderr);
    assert!(!file.exists());
    let table = rows(&k.run(&["builder", "ls"]).ok().stdout);
    assert_eq!(table.len(), 3, "{table:?}");
    assert_eq!(table[1], ["default*", "local"]);
    let err = k.run(&["builder", "use", "b1"]).fails();
    assert!(
        err.stderr.contains("no builder \"b1\" found"),
        "{}",
        err.stderr
    );
}

#[test]
fn builders_live_under_home_without_xdg_config_home() {
    let k = Kiln::new(&[]);
    let home = k.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [("XDG_CONFIG_HOME", ""), ("HOME", home.to_str().unwrap())];
    let out = k
        .run_env(&env, &["builder", "create", "--use", "tcp://127.0.0.1:1"])
        .ok();
    // A generated name, buildx's style.
    let name = out.stdout.trim().to_owned();
    assert!(
        name.contains('_') && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "{name}"
    );
    assert!(home
        .join(format!(".config/kiln/builders/{name}.json"))
        .is_file());
    assert_eq!(
        std::fs::read_to_string(home.join(".config/kiln/builders/current")).unwrap(),
        format!("{name}\n")
    );
    let table = rows(&k.run_env(&env, &["builder", "ls"]).ok().stdout);
    assert_eq!(table[3], [format!("{name}*"), "remote".to_owned()]);
    assert_eq!(table[4][0], format!("\\_ {name}0"));
}

#[test]
fn ls_and_inspect_show_what_a_running_daemon_reports() {
    let k = Kiln::new(&[]);
    let missing = format!("unix://{}", k.path("missing.sock").display());
    // The daemon on a store of its own, declaring two platforms.
    let daemon = Daemon::unix(
        &k,
        "daemon.sock",
        "daemon-store",
        &["--platform", "linux/amd64,linux/arm64"],
    );
    let addr = daemon.addr.clone();
    builder_create(
        &k,
        "b1",
        &["--node", "n1", "--platform", "linux/amd64"],
        &addr,
    )
    .ok();
    builder_create(&k, "b1", &["--append", "--node", "n2"], &missing).ok();

    // --bootstrap checks the nodes answer: fine for the daemon, an error for a missing one
    // (the builder is kept, as buildx keeps it).
    let boot = builder_create(&k, "live", &["--bootstrap"], &addr).ok();
    assert_eq!(boot.stdout, "live\n");
    let boot = builder_create(&k, "dead", &["--bootstrap"], &missing).fails();
    assert!(
        boot.stderr.contains(&format!(
            "failed to bootstrap builder dead (node dead0): cannot reach builder at {missing}"
        )),
        "{}",
        boot.stderr
    );
    k.run(&["builder", "rm", "live", "dead"]).ok();

    // The JSON listing, for scripts.
    let json = k.run(&["builder", "ls", "--format", "json"]).ok().stdout;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[1]["Name"], "b1");
    assert_eq!(lines[1]["Nodes"][0]["Status"], "running");
    assert_eq!(
        lines[1]["Nodes"][0]["Platforms"],
        serde_json::json!(["linux/amd64*", "linux/arm64"])
    );
    assert_eq!(lines[1]["Nodes"][1]["Status"], "inactive");

    let ls = k.run(&["builder", "ls"]).ok();
    let table = rows(&ls.stdout);
    // n1 answers: running, its declared platform marked, then the one it reports besides.
    assert_eq!(
        table[4],
        [
            "\\_ n1",
            &format!("\\_ {addr}"),
            "running",
            "linux/amd64*, linux/arm64"
        ]
    );
    assert_eq!(table[5], ["\\_ n2", &format!("\\_ {missing}"), "inactive"]);
    assert!(
        ls.stderr.contains(&format!(
            "Failed to get status for b1 (n2): cannot reach builder at {missing}"
        )),
        "{}",
        ls.stderr
    );
    assert!(!ls.stderr.contains("(n1)"), "{}", ls.stderr);

    let inspect = k.run(&["builder", "inspect", "b1"]).ok().stdout;
    let n1 = inspect
        .split("\n\n")
        .find(|b| b.contains(&addr))
        .unwrap_or_else(|| panic!("no n1 block:\n{inspect}"));
    let field = |block: &str, key: &str| -> String {
        block
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no {key} in:\n{block}"))
    };
    assert_eq!(field(n1, "Status"), "running");
    assert_eq!(field(n1, "Platforms"), "linux/amd64*, linux/arm64");
    let version = k.run(&["version"]).ok().stdout;
    assert!(
        version.starts_with(&format!("kiln {} ", field(n1, "Version"))),
        "{version} vs\n{n1}"
    );
    // An address given to KILN_BUILDER is inspected as a builder of that one node.
    let inspect = k
        .run_env(&[("KILN_BUILDER", &addr)], &["builder", "inspect"])
        .ok()
        .stdout;
    assert_eq!(field(&inspect, "Status"), "running", "{inspect}");
    assert_eq!(field(&inspect, "Endpoint"), addr);

    // The daemon stops on SIGTERM; the node is inactive again.
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
    let table = rows(&k.run(&["builder", "ls"]).ok().stdout);
    assert_eq!(table[4][2], "inactive");
}

#[test]
fn a_mutual_tls_node_answers_with_its_client_certificate_only() {
    let k = Kiln::new(&[]);
    let certs = Certs::make(&k.path("certs"));
    let daemon = Daemon::mutual_tls(&k, "daemon-store", &certs);
    let addr = daemon.addr.clone();
    let with_cert = certs.client_opt();
    builder_create(
        &k,
        "mtls",
        &["--driver-opt", &with_cert, "--bootstrap"],
        &addr,
    )
    .ok();
    let ca_only = certs.ca_only_opt();
    builder_create(&k, "nocert", &["--driver-opt", &ca_only], &addr).ok();
    let json = k.run(&["builder", "ls", "--format", "json"]).ok().stdout;
    let status: Vec<(String, String)> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|b| {
            (
                b["Name"].as_str().unwrap().to_owned(),
                b["Nodes"][0]["Status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("default".to_owned(), "running".to_owned()),
            ("mtls".to_owned(), "running".to_owned()),
            ("nocert".to_owned(), "inactive".to_owned()),
        ]
    );
    let inspect = k.run(&["builder", "inspect", "nocert"]).ok().stdout;
    assert!(
        inspect
            .lines()
            .any(|l| l.starts_with("Error:") && l.contains(&addr)),
        "{inspect}"
    );
    let (code, log) = daemon.terminate();
    assert_eq!(code, 0, "{log}");
}

/// Every document of every YAML file under deploy/kubernetes, as JSON values, by file.
fn manifests() -> Vec<(String, serde_json::Value)> {
    let dir = kiln_e2e::workspace().join("deploy/kubernetes");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for doc in text.split("\n---\n") {
            let v: serde_norway::Value = serde_norway::from_str(doc)
                .unwrap_or_else(|e| panic!("{name} does not parse as YAML: {e}"));
            out.push((name.clone(), serde_json::to_value(&v).unwrap()));
        }
    }
    out
}

#[test]
fn kubernetes_manifests_run_kiln_serve_per_architecture_with_tls_and_a_store() {
    let docs = manifests();
    for (file, doc) in &docs {
        assert!(doc["kind"].is_string(), "{file}: no kind");
        assert!(doc["apiVersion"].is_string(), "{file}: no apiVersion");
    }
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    };
    // The kustomization lists every other file.
    let kustomization = docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .map(|(_, d)| d)
        .expect("a kustomization");
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for (file, _) in &docs {
        if file != "kustomization.yaml" {
            assert!(
                listed.contains(&file.as_str()),
                "{file} not in kustomization"
            );
        }
    }
    let secret = of("Secret");
    assert_eq!(secret.len(), 1);
    let secret_name = secret[0]["metadata"]["name"].as_str().unwrap();
    for key in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(secret[0]["stringData"][key].is_string(), "secret key {key}");
    }

    let sets = of("StatefulSet");
    let services = of("Service");
    let mut arches = Vec::new();
    for set in &sets {
        let name = set["metadata"]["name"].as_str().unwrap();
        let pod = &set["spec"]["template"]["spec"];
        let arch = pod["nodeSelector"]["kubernetes.io/arch"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no kubernetes.io/arch node selector"));
        arches.push(arch.to_owned());
        assert_eq!(set["spec"]["replicas"], 1, "{name}: one daemon per store");
        let labels = &set["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&set["spec"]["selector"]["matchLabels"], labels, "{name}");
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true, "{name}");
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let flag = |f: &str| {
            args.iter()
                .position(|a| *a == f)
                .map(|i| args[i + 1])
                .unwrap_or_else(|| panic!("{name}: no {f} in {args:?}"))
        };
        assert_eq!(args[0], "serve", "{name}");
        assert_eq!(flag("--addr"), "tcp://0.0.0.0:1234", "{name}");
        assert_eq!(flag("--platform"), format!("linux/{arch}"), "{name}");
        assert!(!args.contains(&"--insecure"), "{name}: tcp must use TLS");
        // The TLS files are the Secret's, mounted where the flags point.
        let mounts = c["volumeMounts"].as_array().unwrap();
        let mount_of = |volume: &str| -> &str {
            mounts
                .iter()
                .find(|m| m["name"] == volume)
                .and_then(|m| m["mountPath"].as_str())
                .unwrap_or_else(|| panic!("{name}: volume {volume} not mounted"))
        };
        let certs = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == secret_name)
            .unwrap_or_else(|| panic!("{name}: the TLS secret is not a volume"));
        let certs_dir = mount_of(certs["name"].as_str().unwrap());
        for (f, file) in [
            ("--tlscacert", "ca.pem"),
            ("--tlscert", "cert.pem"),
            ("--tlskey", "key.pem"),
        ] {
            assert_eq!(flag(f), format!("{certs_dir}/{file}"), "{name}: {f}");
        }
        // The store on a persistent volume, where KILN_ROOT says.
        let root = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "KILN_ROOT")
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name}: no KILN_ROOT"));
        let claim = &set["spec"]["volumeClaimTemplates"][0];
        assert_eq!(mount_of(claim["metadata"]["name"].as_str().unwrap()), root);
        assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
        assert!(claim["spec"]["resources"]["requests"]["storage"].is_string());
        // Ready when the port accepts connections.
        let port = &c["ports"][0];
        assert_eq!(port["containerPort"], 1234);
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], port["name"]);
        // The Service named by the StatefulSet selects exactly its pods on the port.
        let service = services
            .iter()
            .find(|s| s["metadata"]["name"] == set["spec"]["serviceName"])
            .unwrap_or_else(|| panic!("{name}: no Service for it"));
        let selector = service["spec"]["selector"].as_object().unwrap();
        for (k, v) in selector {
            assert_eq!(&labels[k], v, "{name}: service selector {k}");
        }
        assert!(
            selector.contains_key("arch"),
            "{name}: service not per arch"
        );
        assert_eq!(service["spec"]["ports"][0]["port"], 1234);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    }
    arches.sort();
    assert_eq!(arches, ["amd64", "arm64"]);
}

#[test]
fn systemd_unit_runs_kiln_serve_on_the_socket_with_a_state_directory() {
    let path = kiln_e2e::workspace().join("deploy/systemd/kiln.service");
    let text = std::fs::read_to_string(&path).unwrap();
    // `[Section]` then `Key=Value` lines, as systemd reads them (comments skipped).
    let mut section = String::new();
    let mut keys: Vec<(String, String, String)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=Value: {line:?}"));
        keys.push((section.clone(), k.to_owned(), v.to_owned()));
    }
    let get = |s: &str, k: &str| -> String {
        keys.iter()
            .find(|(ss, kk, _)| ss == s && kk == k)
            .map(|(_, _, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in [{s}]"))
    };
    let exec: Vec<String> = get("Service", "ExecStart")
        .split_whitespace()
        .map(ToOwned::to_owned)
        .collect();
    assert!(exec[0].ends_with("/kiln"), "{exec:?}");
    assert_eq!(exec[1..], ["serve", "--addr", "unix:///run/kiln/kiln.sock"]);
    // The socket's directory and the store are the unit's own directories.
    assert_eq!(get("Service", "RuntimeDirectory"), "kiln");
    assert_eq!(get("Service", "StateDirectory"), "kiln");
    assert_eq!(get("Service", "Environment"), "KILN_ROOT=/var/lib/kiln");
    assert_eq!(get("Service", "KillSignal"), "SIGTERM");
    assert_eq!(get("Install", "WantedBy"), "multi-user.target");
}

#[test]
fn the_flags_the_deployments_give_kiln_serve_are_flags_it_knows() {
    let k = Kiln::new(&[]);
    let help = k.run(&["serve", "--help"]).ok().stdout;
    let mut given: Vec<String> = Vec::new();
    for (file, doc) in manifests() {
        if doc["kind"] != "StatefulSet" {
            continue;
        }
        let args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(args[0], "serve", "{file}");
        given.extend(
            args.iter()
                .filter_map(|a| a.as_str())
                .filter(|a| a.starts_with("--"))
                .map(ToOwned::to_owned),
        );
    }
    let unit =
        std::fs::read_to_string(kiln_e2e::workspace().join("deploy/systemd/kiln.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart");
    given.extend(
        exec.split_whitespace()
            .filter(|a| a.starts_with("--"))
            .map(ToOwned::to_owned),
    );
    assert!(given.len() >= 6, "{given:?}");
    for flag in given {
        assert!(
            help.contains(&format!("{flag} ")),
            "kiln serve has no {flag}:\n{help}"
        );
    }
}
