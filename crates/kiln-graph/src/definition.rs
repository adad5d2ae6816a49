//! The serialized graph: vertices in dependency order, each with a digest computed from a
//! canonical encoding of its op and its inputs' digests.

use std::collections::HashMap;

use kiln_types::Digest;
use serde::{Deserialize, Serialize};

use crate::op::{FileAction, Op};

/// A reference to one output of a vertex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Edge {
    /// The vertex.
    pub vertex: Digest,
    /// Which of its outputs (0 for every op today).
    #[serde(default)]
    pub output: u32,
}

/// Display and cache metadata of a vertex: not part of its digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VertexMeta {
    /// What progress shows, e.g. `[build 2/3] COPY . /src`.
    #[serde(default)]
    pub description: String,
    /// Run even when a cached result exists (`--no-cache`, `--no-cache-filter`).
    #[serde(default)]
    pub ignore_cache: bool,
    /// Where in the build file the vertex comes from, for error messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceLocation>,
}

/// A line of a build file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    /// The file name as the user gave it (e.g. `Dockerfile`).
    pub file: String,
    /// 1-based line.
    pub line: u32,
}

/// One vertex of a [`Definition`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vertex {
    /// Digest of the canonical encoding of `op` and `inputs`.
    pub digest: Digest,
    /// What it does.
    pub op: Op,
    /// Its inputs; ops refer to them by index.
    pub inputs: Vec<Edge>,
    /// Display metadata.
    #[serde(default)]
    pub meta: VertexMeta,
}

/// A whole build graph as a frontend hands it over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    /// Vertices, every vertex after all of its inputs.
    pub vertices: Vec<Vertex>,
    /// The requested results; `None` is the empty filesystem (`FROM scratch` with nothing added).
    pub outputs: Vec<Option<Edge>>,
}

/// A graph that breaks the rules (typically one received from a plugin).
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The digest does not match the content.
    #[error("vertex {index} claims digest {claimed} but its content hashes to {actual}")]
    DigestMismatch {
        /// Position in the vertex list.
        index: usize,
        /// What it said.
        claimed: Digest,
        /// What it is.
        actual: Digest,
    },
    /// An input that is not an earlier vertex.
    #[error("vertex {vertex} refers to {input}, which is not defined before it")]
    UnknownInput {
        /// The referring vertex.
        vertex: Digest,
        /// The missing input.
        input: Digest,
    },
    /// An op that names an input index the vertex does not have.
    #[error("{kind} vertex {vertex} uses input #{index} but has only {count} inputs")]
    InputIndex {
        /// The vertex.
        vertex: Digest,
        /// Its op kind.
        kind: &'static str,
        /// The bad index.
        index: u32,
        /// How many inputs it has.
        count: usize,
    },
    /// A requested output that is not a vertex of the graph.
    #[error("requested output {0} is not a vertex of the graph")]
    UnknownOutput(Digest),
    /// Merge needs inputs, diff exactly two.
    #[error("{kind} vertex {vertex} has {count} inputs")]
    Arity {
        /// The vertex.
        vertex: Digest,
        /// Its op kind.
        kind: &'static str,
        /// How many inputs it has.
        count: usize,
    },
}

/// The canonical digest of an op with its inputs. JSON from typed structs (field order fixed by
/// the declarations, no maps) is deterministic; the prefix versions the encoding.
pub(crate) fn vertex_digest(op: &Op, inputs: &[Edge]) -> Digest {
    #[derive(Serialize)]
    struct Canonical<'a> {
        op: &'a Op,
        inputs: &'a [Edge],
    }
    let mut buf = b"kiln.vertex.v1\n".to_vec();
    // Serializing plain structs of strings, integers and enums into a Vec cannot fail.
    serde_json::to_writer(&mut buf, &Canonical { op, inputs })
        .expect("typed op structs always serialize");
    Digest::of(&buf)
}

impl Definition {
    /// Looks up a vertex.
    pub fn vertex(&self, digest: &Digest) -> Option<&Vertex> {
        self.vertices.iter().find(|v| &v.digest == digest)
    }

    /// Checks every rule a well-formed graph follows: digests match content, inputs come
    /// earlier, op input indexes are in range, outputs exist. Call it on any graph that crossed a
    /// trust boundary (a plugin's answer).
    pub fn validate(&self) -> Result<(), GraphError> {
        let mut seen: HashMap<Digest, usize> = HashMap::new();
        for (index, v) in self.vertices.iter().enumerate() {
            let actual = vertex_digest(&v.op, &v.inputs);
            if actual != v.digest {
                return Err(GraphError::DigestMismatch {
                    index,
                    claimed: v.digest,
                    actual,
                });
            }
            for e in &v.inputs {
                if !seen.contains_key(&e.vertex) {
                    return Err(GraphError::UnknownInput {
                        vertex: v.digest,
                        input: e.vertex,
                    });
                }
            }
            check_indexes(v)?;
            seen.insert(v.digest, index);
        }
        for e in self.outputs.iter().flatten() {
            if !seen.contains_key(&e.vertex) {
                return Err(GraphError::UnknownOutput(e.vertex));
            }
        }
        Ok(())
    }

    /// Canonical JSON bytes of the whole definition.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("typed graph structs always serialize")
    }
}

fn check_indexes(v: &Vertex) -> Result<(), GraphError> {
    let count = v.inputs.len();
    let check = |index: Option<u32>| match index {
        Some(i) if i as usize >= count => Err(GraphError::InputIndex {
            vertex: v.digest,
            kind: v.op.kind(),
            index: i,
            count,
        }),
        _ => Ok(()),
    };
    match &v.op {
        Op::Source(_) => Ok(()),
        Op::Exec(e) => e.mounts.iter().try_for_each(|m| check(m.input)),
        Op::File(f) => {
            check(f.base)?;
            f.actions.iter().try_for_each(|a| match a {
                FileAction::Copy(c) => check(c.source),
                _ => Ok(()),
            })
        }
        Op::Merge if count == 0 => Err(GraphError::Arity {
            vertex: v.digest,
            kind: "merge",
            count,
        }),
        Op::Diff if count != 2 => Err(GraphError::Arity {
            vertex: v.digest,
            kind: "diff",
            count,
        }),
        Op::Merge | Op::Diff | Op::Custom(_) => Ok(()),
    }
}
