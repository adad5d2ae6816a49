//! `kiln builder create|ls|use|rm|inspect` through the real binary, with the builders kept in
//! a temporary XDG_CONFIG_HOME (or HOME); and the example deploy manifests parse and say what
//! docs/scale-out.md says they do.
#![allow(clippy::unwrap_used)]

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

    let out = k
        .run(&[
            "builder",
            "create",
            "--name",
            "b1",
            "--node",
            "n1",
            "--platform",
            "linux/amd64",
            &n1,
        ])
        .ok();
    assert_eq!(out.stdout, "b1\n");
    let out = k
        .run(&[
            "builder",
            "create",
            "--name",
            "b1",
            "--append",
            "--node",
            "n2",
            "--platform",
            "arm64",
            &n2,
        ])
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

    // Refusals, with buildx's reasons.
    let err = k
        .run(&[
            "builder",
            "create",
            "--name",
            "b1",
            "--append",
            "--node",
            "n2",
            "unix:///x.sock",
        ])
        .fails();
    assert!(
        err.stderr
            .contains("node \"n2\" already exists in builder \"b1\""),
        "{}",
        err.stderr
    );
    let err = k
        .run(&["builder", "create", "--name", "b1", "--append", &n1])
        .fails();
    assert!(
        err.stderr.contains("invalid duplicate endpoint"),
        "{}",
        err.stderr
    );
    let err = k
        .run(&["builder", "create", "--platform", "nonsense", &n1])
        .fails();
    assert!(
        err.stderr.contains("invalid --platform \"nonsense\""),
        "{}",
        err.stderr
    );
    let err = k
        .run(&["builder", "create", "--name", "default", &n1])
        .fails();
    assert!(err.stderr.contains("reserved name"), "{}", err.stderr);

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
            "Failed to get status for b1 (n1): cannot reach {n1}"
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
