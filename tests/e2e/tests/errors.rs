//! Bad input: clear messages with file:line, never a panic, nothing half-written.
#![allow(clippy::unwrap_used)]

use kiln_e2e::*;

#[test]
fn unknown_instruction_shows_file_line_and_the_line() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let ctx = k.write(
        "ctx",
        &[
            ("Dockerfile", "FROM scratch\nCOPY a /a\nCOPPY b /b\n"),
            ("a", "a"),
        ],
    );
    let r = k.run(&["build", ctx.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("Dockerfile:3"), "{}", r.stderr);
    assert!(r.stderr.contains(">>> COPPY b /b"), "{}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("unknown instruction"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_dockerfile_context_file_and_output_errors() {
    let k = Kiln::new(&["kiln-frontend-dockerfile"]);
    let empty = k.write("empty", &[]);
    let r = k.run(&["build", empty.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("failed to read dockerfile"),
        "{}",
        r.stderr
    );

    let ctx = k.write(
        "ctx",
        &[("Dockerfile", "FROM scratch\nCOPY missing.txt /x\n")],
    );
    let tar = k.path("o.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let r = k
        .run(&[
            "build",
            "--progress=plain",
            "--output",
            &dest,
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(
        r.stderr.contains("missing.txt") && r.stderr.contains("not found"),
        "{}",
        r.stderr
    );
    assert!(!tar.exists(), "a failed build left an output behind");

    let r = k
        .run(&[
            "build",
            "--output",
            "type=bogus,dest=x",
            ctx.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("unknown type"), "{}", r.stderr);
    let r = k.run(&["build", "/definitely/not/here"]).fails();
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
}
