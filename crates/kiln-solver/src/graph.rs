use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use crate::Error;

/// One node of the build DAG, as the caller describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vertex<K> {
    /// Identity of the vertex (the engine uses the op's content digest).
    pub id: K,
    /// Human-readable name for progress, e.g. `[stage-1 2/4] COPY a /b`.
    pub name: String,
    /// Ids of the vertices whose outputs this one consumes, in order; repeats are allowed.
    pub inputs: Vec<K>,
}

impl<K> Vertex<K> {
    /// A vertex with the given id, display name and inputs.
    pub fn new(id: K, name: impl Into<String>, inputs: impl IntoIterator<Item = K>) -> Self {
        Self {
            id,
            name: name.into(),
            inputs: inputs.into_iter().collect(),
        }
    }
}

/// A validated DAG: ids are unique, every input exists, and there is no cycle.
///
/// Validation happens here, before a solve starts, so that a bad graph never runs any work.
#[derive(Debug, Clone)]
pub struct Graph<K> {
    pub(crate) vertices: Vec<Vertex<K>>,
    /// `inputs[v]` are the indices of `vertices[v].inputs`, same order and repeats.
    pub(crate) inputs: Vec<Vec<usize>>,
    index: HashMap<K, usize>,
}

impl<K: Clone + Eq + Hash + Debug> Graph<K> {
    /// Validates `vertices` into a graph, rejecting duplicate ids, unknown inputs and cycles.
    pub fn new(vertices: impl IntoIterator<Item = Vertex<K>>) -> Result<Self, Error<K>> {
        let vertices: Vec<Vertex<K>> = vertices.into_iter().collect();
        let mut index = HashMap::with_capacity(vertices.len());
        for (i, v) in vertices.iter().enumerate() {
            if index.insert(v.id.clone(), i).is_some() {
                return Err(Error::DuplicateVertex {
                    id: v.id.clone(),
                    name: v.name.clone(),
                });
            }
        }
        let mut inputs = Vec::with_capacity(vertices.len());
        for v in &vertices {
            let idx = v
                .inputs
                .iter()
                .map(|input| {
                    index
                        .get(input)
                        .copied()
                        .ok_or_else(|| Error::UnknownInput {
                            id: v.id.clone(),
                            name: v.name.clone(),
                            input: input.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            inputs.push(idx);
        }
        if let Some(cycle) = find_cycle(&inputs) {
            return Err(Error::Cycle {
                path: cycle
                    .into_iter()
                    .map(|i| (vertices[i].id.clone(), vertices[i].name.clone()))
                    .collect(),
            });
        }
        Ok(Self {
            vertices,
            inputs,
            index,
        })
    }

    /// The vertices, in the order they were given.
    pub fn vertices(&self) -> &[Vertex<K>] {
        &self.vertices
    }

    /// The vertex with this id, if any.
    pub fn get(&self, id: &K) -> Option<&Vertex<K>> {
        self.index.get(id).map(|&i| &self.vertices[i])
    }

    pub(crate) fn index_of(&self, id: &K) -> Option<usize> {
        self.index.get(id).copied()
    }
}

/// Finds a cycle in the graph whose edges are `edges[n]`; returns it with its first node repeated
/// last. Iterative, so a deep graph cannot overflow the stack.
pub(crate) fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Finished,
    }
    let mut mark = vec![Mark::New; edges.len()];
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (node, index of its next edge to follow): the stack is the current DFS path.
        let mut stack = vec![(root, 0usize)];
        mark[root] = Mark::OnPath;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if let Some(&to) = edges[node].get(next) {
                top.1 += 1;
                match mark[to] {
                    Mark::New => {
                        mark[to] = Mark::OnPath;
                        stack.push((to, 0));
                    }
                    Mark::OnPath => {
                        let start = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                        let mut cycle: Vec<usize> =
                            stack[start..].iter().map(|&(n, _)| n).collect();
                        cycle.push(to);
                        return Some(cycle);
                    }
                    Mark::Finished => {}
                }
            } else {
                mark[node] = Mark::Finished;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(id: &'static str, inputs: &[&'static str]) -> Vertex<&'static str> {
        Vertex::new(id, format!("step {id}"), inputs.iter().copied())
    }

    #[test]
    fn accepts_a_dag_with_repeated_inputs() {
        let g = Graph::new([v("a", &[]), v("b", &["a", "a"]), v("c", &["a", "b"])]).unwrap();
        assert_eq!(g.inputs[1], vec![0, 0]);
        assert_eq!(g.get(&"c").unwrap().name, "step c");
    }

    #[test]
    fn rejects_a_cycle_and_names_it() {
        let err =
            Graph::new([v("a", &["c"]), v("b", &["a"]), v("c", &["b"]), v("d", &[])]).unwrap_err();
        let Error::Cycle { path } = &err else {
            panic!("expected a cycle, got {err:?}");
        };
        let ids: Vec<_> = path.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, ["a", "c", "b", "a"]);
        assert_eq!(
            err.to_string(),
            "the build graph has a cycle: step a (\"a\") -> step c (\"c\") -> step b (\"b\") -> step a (\"a\")"
        );
    }

    #[test]
    fn rejects_a_self_loop() {
        let err = Graph::new([v("a", &["a"])]).unwrap_err();
        assert!(matches!(err, Error::Cycle { ref path } if path.len() == 2));
    }

    #[test]
    fn rejects_unknown_inputs_and_duplicates() {
        let err = Graph::new([v("a", &["zz"])]).unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownInput {
                id: "a",
                input: "zz",
                ..
            }
        ));
        let err = Graph::new([v("a", &[]), v("a", &[])]).unwrap_err();
        assert!(matches!(err, Error::DuplicateVertex { id: "a", .. }));
    }
}
