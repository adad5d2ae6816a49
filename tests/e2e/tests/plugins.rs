//! Plugins through the real binary: `# syntax=` swapping, refused libraries, a panicking
//! frontend that leaves kiln working.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

#[test]
fn syntax_directive_build_arg_frontend_flag_and_path_all_swap_the_frontend() {
    let k = Kiln::new(&["kiln-frontend-dockerfile", "kiln-test-echo-frontend"]);
    let ctx = k.write("ctx", &[("Dockerfile", "# syntax=echo\nanything at all\n")]);
    let c = ctx.to_str().unwrap();
    let r = k.run(&["build", "--progress=plain", c]).ok();
    assert!(r.stderr.contains("with frontend echo"), "{}", r.stderr);

    // The same file through the Dockerfile frontend fails: it is no Dockerfile.
    let r = k.run(&["build", "--frontend", "dockerfile", c]).fails();
    assert!(
        r.stderr.contains("Dockerfile:2") && r.stderr.contains(">>> anything at all"),
        "{}",
        r.stderr
    );

    let plain = k.write("plain", &[("Dockerfile", "FROM scratch\n")]);
    let p = plain.to_str().unwrap();
    let r = k
        .run(&["build", "--build-arg", "BUILDKIT_SYNTAX=echo", p])
        .ok();
    assert!(r.stderr.contains("with frontend echo"), "{}", r.stderr);
    let r = k.run(&["build", "--frontend", "echo", p]).ok();
    assert!(r.stderr.contains("with frontend echo"), "{}", r.stderr);
    let lib = plugin_lib("kiln-test-echo-frontend");
    let r = k
        .run(&["build", "--frontend", lib.to_str().unwrap(), p])
        .ok();
    assert!(r.stderr.contains("with frontend echo"), "{}", r.stderr);
    let r = k.run(&["build", p]).ok();
    assert!(
        r.stderr.contains("with frontend dockerfile"),
        "{}",
        r.stderr
    );

    let r = k.run(&["build", "--frontend", "nosuch", p]).fails();
    assert!(
        r.stderr.contains("nosuch") && r.stderr.contains("echo") && r.stderr.contains("dockerfile"),
        "{}",
        r.stderr
    );
}

#[test]
fn broken_plugins_are_refused_clearly_and_the_rest_still_build() {
    let k = Kiln::new(&[
        "kiln-frontend-dockerfile",
        "kiln-test-echo-frontend",
        "kiln-test-panic",
        "kiln-test-bad-abi",
        "kiln-test-not-plugin",
    ]);
    std::fs::write(
        k.plugin_dir().join("libgarbage.so"),
        b"this is not an ELF file",
    )
    .unwrap();
    let ls = k.run(&["plugins", "ls"]).ok();
    assert!(
        ls.stdout.contains("echo") && ls.stdout.contains("dockerfile"),
        "{}",
        ls.stdout
    );
    let refused = ls
        .stdout
        .split("REFUSED")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(
        refused.contains("libkiln_test_bad_abi.so")
            && refused.contains("ABI 999")
            && refused.contains("ABI 1"),
        "{}",
        ls.stdout
    );
    assert!(
        refused.contains("libkiln_test_not_plugin.so") && refused.contains("not a kiln plugin"),
        "{}",
        ls.stdout
    );
    assert!(refused.contains("libgarbage.so"), "{}", ls.stdout);

    let ctx = k.write("ctx", &[("Dockerfile", "# syntax=panic\nFROM scratch\n")]);
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("panicked"), "{}", r.stderr);

    let ok = k.write("ok", &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    k.run(&["build", "--output", &dest, ok.to_str().unwrap()])
        .ok();
    assert!(out.join("Dockerfile").is_file());
}

#[test]
fn unknown_dockerfile_instructions_go_to_instruction_plugins() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            (
                "Dockerfile",
                "FROM scratch AS base\nCOPY a.txt /a.txt\nGREET --loud world\nCOPY a.txt /b.txt\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    let c = ctx.to_str().unwrap();

    // Without the plugin: a clear error at the line.
    let r = k.run(&["build", c]).fails();
    assert!(
        r.stderr.contains("Dockerfile:3")
            && r.stderr.to_lowercase().contains("unknown instruction"),
        "{}",
        r.stderr
    );

    k.add_plugin("kiln-test-greet");
    let ls = k.run(&["plugins", "ls"]).ok();
    assert!(
        ls.stdout.contains("greet") && ls.stdout.contains("instruction"),
        "{}",
        ls.stdout
    );
    let out = k.path("out");
    let dest = format!("type=local,dest={}", out.display());
    k.run(&["build", "--output", &dest, c]).ok();
    assert_eq!(
        std::fs::read_to_string(out.join("greeting.txt")).unwrap(),
        "HELLO WORLD\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("b.txt")).unwrap(), "a\n");

    let tar = k.path("img.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    k.run(&["build", "--output", &dest, c]).ok();
    let cfg: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", tar.display()),
        ],
    ))
    .unwrap();
    assert_eq!(cfg["config"]["Labels"]["greeted"], "world");
    let history: Vec<&str> = cfg["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        history.iter().any(|h| h.contains("GREET world")),
        "{history:?}"
    );

    let bad = k.write("bad", &[("Dockerfile", "FROM scratch\nGREET\n")]);
    let r = k.run(&["build", bad.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("GREET needs a name") && r.stderr.contains("Dockerfile:2"),
        "{}",
        r.stderr
    );
}

/// A shared library whose constructor (run by `dlopen`, before any check kiln can make) creates
/// the file named by `$KILN_EVIL_MARKER`.
fn evil_library(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("evil.c");
    std::fs::write(
        &src,
        "#include <fcntl.h>\n#include <stdlib.h>\n#include <unistd.h>\n\
         __attribute__((constructor)) static void evil(void) {\n\
           const char *p = getenv(\"KILN_EVIL_MARKER\");\n\
           if (p) { int fd = open(p, O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }\n\
         }\n",
    )
    .unwrap();
    let lib = dir.join("evil.so");
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .expect("cc (gcc) is needed to build the hostile library: apt-get install gcc");
    assert!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

#[test]
fn a_dockerfile_cannot_load_a_library_from_its_context() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write("ctx", &[("Dockerfile", "FROM scratch\n")]);
    let lib = evil_library(&ctx);
    let lib = lib.to_str().unwrap();
    let marker = k.path("constructor-ran");
    let marker_s = marker.to_str().unwrap();
    let env = [("KILN_EVIL_MARKER", marker_s)];

    // The control: the command line may load a library, and then its constructor runs (and
    // kiln refuses it afterwards as no plugin). So the marker does tell whether it was loaded.
    let r = k
        .run_env(&env, &["build", "--frontend", lib, ctx.to_str().unwrap()])
        .fails();
    assert!(r.stderr.contains("not a kiln plugin"), "{}", r.stderr);
    assert!(marker.exists(), "the control did not load the library");
    std::fs::remove_file(&marker).unwrap();

    // `# syntax=` naming it by absolute path: refused before anything is opened.
    let evil = k.write(
        "evil",
        &[("Dockerfile", &format!("# syntax={lib}\nFROM scratch\n"))],
    );
    let r = k.run_env(&env, &["build", evil.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("names a plugin library by path") && r.stderr.contains(lib),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the library's constructor ran");

    // Nor through BUILDKIT_SYNTAX, nor as a bare `*.so` name.
    let plain = ctx.to_str().unwrap();
    let arg = format!("BUILDKIT_SYNTAX={lib}");
    let r = k
        .run_env(&env, &["build", "--build-arg", &arg, plain])
        .fails();
    assert!(r.stderr.contains("BUILDKIT_SYNTAX"), "{}", r.stderr);
    let bare = k.write(
        "bare",
        &[("Dockerfile", "# syntax=evil.so\nFROM scratch\n")],
    );
    std::fs::copy(lib, bare.join("evil.so")).unwrap();
    let r = k.run_env(&env, &["build", bare.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("names a plugin library by path"),
        "{}",
        r.stderr
    );
    assert!(!marker.exists(), "the library's constructor ran");
}
