//! The builder frontends use: immutable [`State`] values that share their history, like
//! BuildKit's `llb.State`.

use std::collections::HashSet;
use std::sync::Arc;

use crate::definition::{vertex_digest, Definition, Edge, Vertex, VertexMeta};
use crate::op::*;

struct Node {
    op: Op,
    inputs: Vec<State>,
    meta: VertexMeta,
    edge: Edge,
}

/// A long chain of states (one per Dockerfile instruction, thousands in a hostile file) would
/// drop recursively, one stack frame per node: drop the inputs this node alone owns on a heap
/// stack instead.
impl Drop for Node {
    fn drop(&mut self) {
        let mut owned: Vec<Arc<Node>> = self.inputs.drain(..).filter_map(|s| s.0).collect();
        while let Some(node) = owned.pop() {
            // `into_inner` succeeds for the last owner only; the others just let go.
            if let Some(mut node) = Arc::into_inner(node) {
                owned.extend(node.inputs.drain(..).filter_map(|s| s.0));
            }
        }
    }
}

/// A filesystem state: the empty filesystem (`scratch`) or the output of a vertex.
/// Cloning is cheap.
#[derive(Clone, Default)]
pub struct State(Option<Arc<Node>>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.edge() {
            None => f.write_str("State(scratch)"),
            Some(e) => write!(f, "State({:?})", e.vertex),
        }
    }
}

impl State {
    /// The empty filesystem.
    pub fn scratch() -> Self {
        State(None)
    }

    /// Whether this is the empty filesystem.
    pub fn is_scratch(&self) -> bool {
        self.0.is_none()
    }

    /// The vertex output this state is, if not scratch.
    pub fn edge(&self) -> Option<Edge> {
        self.0.as_ref().map(|n| n.edge)
    }

    /// A vertex with the given op and inputs; `inputs` must all be non-scratch (ops express
    /// scratch as a missing input index).
    pub fn from_op(op: Op, inputs: Vec<State>, description: impl Into<String>) -> Self {
        let inputs: Vec<State> = inputs.into_iter().filter(|s| !s.is_scratch()).collect();
        let edges: Vec<Edge> = inputs.iter().filter_map(State::edge).collect();
        let digest = vertex_digest(&op, &edges);
        State(Some(Arc::new(Node {
            op,
            inputs,
            meta: VertexMeta {
                description: description.into(),
                ignore_cache: false,
                source: None,
            },
            edge: Edge {
                vertex: digest,
                output: 0,
            },
        })))
    }

    /// A local directory source.
    pub fn local(source: LocalSource, description: impl Into<String>) -> Self {
        State::from_op(Op::Source(SourceOp::Local(source)), Vec::new(), description)
    }

    /// An image source.
    pub fn image(source: ImageSource, description: impl Into<String>) -> Self {
        State::from_op(Op::Source(SourceOp::Image(source)), Vec::new(), description)
    }

    /// The same vertex, re-run even when cached. Display metadata only; the digest is unchanged.
    pub fn ignore_cache(self, ignore: bool) -> Self {
        self.map_meta(|m| m.ignore_cache = ignore)
    }

    /// The same vertex, remembering the build-file line it comes from (display metadata).
    pub fn with_source(self, file: &str, line: u32) -> Self {
        let loc = crate::SourceLocation {
            file: file.to_owned(),
            line,
        };
        self.map_meta(|m| m.source = Some(loc))
    }

    /// The same vertex with another progress description.
    pub fn with_description(self, description: impl Into<String>) -> Self {
        let d = description.into();
        self.map_meta(|m| m.description = d)
    }

    fn map_meta(self, f: impl FnOnce(&mut VertexMeta)) -> Self {
        match self.0 {
            None => State(None),
            Some(node) => {
                let mut meta = node.meta.clone();
                f(&mut meta);
                State(Some(Arc::new(Node {
                    op: node.op.clone(),
                    inputs: node.inputs.clone(),
                    meta,
                    edge: node.edge,
                })))
            }
        }
    }

    /// The graph needed to compute `outputs`, in dependency order, each vertex once.
    pub fn definition(outputs: &[State]) -> Definition {
        let mut seen = HashSet::new();
        let mut vertices = Vec::new();
        // Iterative post-order walk: deep graphs (hundreds of steps) must not overflow the stack.
        for out in outputs {
            let Some(root) = &out.0 else { continue };
            let mut stack: Vec<(Arc<Node>, bool)> = vec![(root.clone(), false)];
            while let Some((node, expanded)) = stack.pop() {
                if seen.contains(&node.edge.vertex) {
                    continue;
                }
                if expanded {
                    seen.insert(node.edge.vertex);
                    vertices.push(Vertex {
                        digest: node.edge.vertex,
                        op: node.op.clone(),
                        inputs: node.inputs.iter().filter_map(State::edge).collect(),
                        meta: node.meta.clone(),
                    });
                } else {
                    stack.push((node.clone(), true));
                    for input in node.inputs.iter().rev() {
                        if let Some(n) = &input.0 {
                            if !seen.contains(&n.edge.vertex) {
                                stack.push((n.clone(), false));
                            }
                        }
                    }
                }
            }
        }
        Definition {
            vertices,
            outputs: outputs.iter().map(State::edge).collect(),
        }
    }
}

/// Collects inputs for an op and hands out their indexes.
#[derive(Default)]
struct Inputs(Vec<State>);

impl Inputs {
    fn index(&mut self, s: &State) -> Option<u32> {
        let edge = s.edge()?;
        if let Some(i) = self.0.iter().position(|x| x.edge() == Some(edge)) {
            return Some(i as u32);
        }
        self.0.push(s.clone());
        Some((self.0.len() - 1) as u32)
    }
}

/// Builds a [`FileOp`] on a base state.
pub struct FileBuilder {
    inputs: Inputs,
    base: Option<u32>,
    actions: Vec<FileAction>,
}

impl FileBuilder {
    /// File actions on `base`.
    pub fn new(base: &State) -> Self {
        let mut inputs = Inputs::default();
        let base = inputs.index(base);
        FileBuilder {
            inputs,
            base,
            actions: Vec::new(),
        }
    }

    /// Copies from `source`; the action's `source` index is filled in.
    pub fn copy(mut self, source: &State, mut action: CopyAction) -> Self {
        action.source = self.inputs.index(source);
        self.actions.push(FileAction::Copy(action));
        self
    }

    /// Any action that takes no other input.
    pub fn action(mut self, action: FileAction) -> Self {
        self.actions.push(action);
        self
    }

    /// The resulting state.
    pub fn build(self, description: impl Into<String>) -> State {
        State::from_op(
            Op::File(FileOp {
                base: self.base,
                actions: self.actions,
            }),
            self.inputs.0,
            description,
        )
    }
}

/// Builds an [`ExecOp`] on a root filesystem.
pub struct ExecBuilder {
    inputs: Inputs,
    op: ExecOp,
}

impl ExecBuilder {
    /// Runs `args` on `root` (mounted at `/`).
    pub fn new(root: &State, args: Vec<String>) -> Self {
        let mut inputs = Inputs::default();
        let root_input = inputs.index(root);
        ExecBuilder {
            inputs,
            op: ExecOp {
                args,
                env: Vec::new(),
                cwd: "/".to_owned(),
                user: String::new(),
                network: NetworkMode::Default,
                security: SecurityMode::Sandbox,
                mounts: vec![Mount {
                    input: root_input,
                    selector: String::new(),
                    dest: "/".to_owned(),
                    readonly: false,
                    kind: MountKind::Bind,
                }],
                proxy_env: Vec::new(),
                devices: Vec::new(),
            },
        }
    }

    /// Sets the environment.
    pub fn env(mut self, env: Vec<String>) -> Self {
        self.op.env = env;
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.op.cwd = cwd.into();
        self
    }

    /// Sets the user.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.op.user = user.into();
        self
    }

    /// Sets the proxy variables (not part of the cache key).
    pub fn proxy_env(mut self, proxy_env: Vec<String>) -> Self {
        self.op.proxy_env = proxy_env;
        self
    }

    /// Sets the network mode.
    pub fn network(mut self, network: NetworkMode) -> Self {
        self.op.network = network;
        self
    }

    /// Sets the security mode.
    pub fn security(mut self, security: SecurityMode) -> Self {
        self.op.security = security;
        self
    }

    /// CDI devices of the step (`RUN --device`).
    pub fn devices(mut self, devices: Vec<Device>) -> Self {
        self.op.devices = devices;
        self
    }

    /// Adds a mount; for bind mounts `source` gives the filesystem.
    pub fn mount(mut self, source: &State, mut mount: Mount) -> Self {
        mount.input = self.inputs.index(source);
        self.op.mounts.push(mount);
        self
    }

    /// The resulting state (the root mount's result).
    pub fn build(self, description: impl Into<String>) -> State {
        State::from_op(Op::Exec(self.op), self.inputs.0, description)
    }
}

impl Definition {
    /// Rebuilds the state of `edge` from this graph, so that a graph received from a plugin can
    /// be extended with the builder. Call [`Definition::validate`] first for untrusted graphs.
    pub fn state(&self, edge: Option<Edge>) -> Result<State, crate::GraphError> {
        let Some(edge) = edge else {
            return Ok(State::scratch());
        };
        let mut built: std::collections::HashMap<kiln_types::Digest, State> =
            std::collections::HashMap::new();
        for v in &self.vertices {
            let inputs = v
                .inputs
                .iter()
                .map(|e| {
                    built
                        .get(&e.vertex)
                        .cloned()
                        .ok_or(crate::GraphError::UnknownInput {
                            vertex: v.digest,
                            input: e.vertex,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut s = State::from_op(v.op.clone(), inputs, v.meta.description.clone())
                .ignore_cache(v.meta.ignore_cache);
            if let Some(loc) = &v.meta.source {
                s = s.with_source(&loc.file, loc.line);
            }
            built.insert(v.digest, s);
        }
        built
            .remove(&edge.vertex)
            .ok_or(crate::GraphError::UnknownOutput(edge.vertex))
    }
}
