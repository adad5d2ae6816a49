//! `--explain-cache` output: each step that ran, under the number the progress display gave
//! it, and the first thing that changed since the last build of the same target.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_engine::Miss;
use kiln_solver::{Event, ProgressSink};
use kiln_types::Digest;

/// A progress sink that remembers the number each step gets on the way through, as the
/// plain display numbers steps (`#N`, in the order steps are first seen).
pub(crate) struct Numbered {
    inner: Arc<dyn ProgressSink<Digest>>,
    numbers: Mutex<HashMap<Digest, usize>>,
}

impl Numbered {
    pub(crate) fn new(inner: Arc<dyn ProgressSink<Digest>>) -> Self {
        Numbered {
            inner,
            numbers: Mutex::new(HashMap::new()),
        }
    }

    fn number(&self, id: &Digest) -> Option<usize> {
        self.numbers.lock().ok()?.get(id).copied()
    }
}

impl ProgressSink<Digest> for Numbered {
    fn send(&self, event: Event<Digest>) {
        let id = match &event {
            Event::Started { id, .. }
            | Event::Cached { id, .. }
            | Event::Done { id, .. }
            | Event::Error { id, .. }
            | Event::Cancelled { id, .. }
            | Event::Log { id, .. } => *id,
        };
        // Held while the event is passed on, so that the display sees events in the order
        // they were numbered here.
        let Ok(mut numbers) = self.numbers.lock() else {
            self.inner.send(event);
            return;
        };
        let next = numbers.len() + 1;
        numbers.entry(id).or_insert(next);
        self.inner.send(event);
    }
}

/// The explanation lines: `#N NAME: CAUSE`, or one JSON object per step for `rawjson`.
pub(crate) fn lines(misses: &[Miss], numbers: &Numbered, json: bool) -> Vec<String> {
    let number = |d: &Digest| numbers.number(d);
    if json {
        return misses
            .iter()
            .map(|m| {
                serde_json::json!({
                    "vertex": m.vertex.to_string(),
                    "name": m.name,
                    "cache_miss": m.cause.render(&number),
                })
                .to_string()
            })
            .collect();
    }
    if misses.is_empty() {
        return vec!["--explain-cache: every step came from the cache".to_owned()];
    }
    let mut out = vec!["--explain-cache: why these steps ran:".to_owned()];
    out.extend(misses.iter().map(|m| {
        let n = number(&m.vertex).map_or_else(|| "#?".to_owned(), |n| format!("#{n}"));
        format!("{n} {}: {}", m.name, m.cause.render(&number))
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::Cause;

    struct Sink;
    impl ProgressSink<Digest> for Sink {
        fn send(&self, _: Event<Digest>) {}
    }

    #[test]
    fn steps_keep_the_numbers_the_display_gave_them() {
        let numbers = Numbered::new(Arc::new(Sink));
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        for (id, name) in [(a, "[1/2] COPY a /a"), (b, "[2/2] RUN x")] {
            numbers.send(Event::Started {
                id,
                name: name.into(),
            });
        }
        numbers.send(Event::Log {
            id: a,
            name: String::new(),
            line: "again".into(),
        });
        let misses = [
            Miss {
                vertex: a,
                name: "[1/2] COPY a /a".into(),
                cause: Cause::File {
                    path: "a".into(),
                    change: kiln_engine::FileChange::Changed,
                    more: 0,
                },
            },
            Miss {
                vertex: b,
                name: "[2/2] RUN x".into(),
                cause: Cause::Input {
                    vertex: a,
                    name: "[1/2] COPY a /a".into(),
                },
            },
        ];
        assert_eq!(
            lines(&misses, &numbers, false),
            [
                "--explain-cache: why these steps ran:",
                "#1 [1/2] COPY a /a: file changed: a",
                "#2 [2/2] RUN x: input changed: #1",
            ]
        );
        assert_eq!(
            lines(&[], &numbers, false),
            ["--explain-cache: every step came from the cache"]
        );
        let json: serde_json::Value =
            serde_json::from_str(&lines(&misses[1..], &numbers, true)[0]).unwrap();
        assert_eq!(json["cache_miss"], "input changed: #1");
    }
}
