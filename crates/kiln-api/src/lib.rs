//! The wire contract between `kiln build --builder` and `kiln serve`: `proto/kiln/v1/builder.proto`
//! (the documented contract) and the Rust generated from it (`src/kiln.v1.rs`, committed, made
//! by `cargo xtask proto` without protoc).
//!
//! Architecture invariant: no kiln crate below; this is data and gRPC plumbing only, so that a
//! client of the daemon needs nothing of the engine.

/// Version 1 of the API (package `kiln.v1`).
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    include!("kiln.v1.rs");
}

/// The .proto the generated code was made from, for tools and the freshness test.
pub const PROTO: &str = include_str!("../proto/kiln/v1/builder.proto");

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    /// The generated file names the sha256 of the .proto it was made from: a .proto edited
    /// without `cargo xtask proto` fails here.
    #[test]
    fn generated_code_matches_the_proto() {
        let sha: String = Sha256::digest(super::PROTO.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let generated = include_str!("kiln.v1.rs");
        let header = generated.lines().take(3).collect::<Vec<_>>().join("\n");
        assert!(
            header.contains(&format!("proto-sha256: {sha}")),
            "src/kiln.v1.rs is stale: proto/kiln/v1/builder.proto changed (sha256 {sha}); \
             run `cargo xtask proto`"
        );
    }
}
