//! Progress renderers: turn the solver's events into what the user reads. `plain` follows
//! `docker buildx build --progress=plain` (`#N [stage 2/3] COPY ...`, `#N CACHED`,
//! `#N DONE 0.1s`), `rawjson` prints one JSON object per event, and `tty` redraws a live view
//! in place (header, one line per step, the last output lines of running steps).
//!
//! Architecture invariant: rendering only. No build logic; depends on the event type of
//! `kiln-solver` and on `kiln-types`.

mod tty;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_solver::{Event, ProgressSink};
use kiln_types::Digest;

/// `--progress` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain text, one line per event.
    Plain,
    /// Interactive terminal.
    Tty,
    /// JSON lines.
    RawJson,
}

impl Mode {
    /// `auto`: tty on a terminal, plain elsewhere.
    pub fn auto(is_terminal: bool) -> Self {
        if is_terminal {
            Mode::Tty
        } else {
            Mode::Plain
        }
    }
}

/// Output lines kept per step for the error summary, as BuildKit shows them.
const TAIL: usize = 10;

struct State {
    numbers: HashMap<Digest, usize>,
    tails: HashMap<Digest, Vec<String>>,
    next: usize,
    started: Instant,
}

/// A renderer writing to a shared writer (stderr in the CLI).
pub struct Renderer<W: Write + Send + 'static> {
    mode: Mode,
    out: Arc<Mutex<W>>,
    state: Mutex<State>,
    screen: Arc<Mutex<tty::Screen>>,
    stop: Arc<AtomicBool>,
}

impl<W: Write + Send + 'static> Renderer<W> {
    /// A renderer for `mode` writing to `out`. In tty mode a thread redraws the view a few
    /// times a second so that running steps' timers move; [`Renderer::finish`] stops it.
    pub fn new(mode: Mode, out: W) -> Self {
        let r = Renderer {
            mode,
            out: Arc::new(Mutex::new(out)),
            state: Mutex::new(State {
                numbers: HashMap::new(),
                tails: HashMap::new(),
                next: 1,
                started: Instant::now(),
            }),
            screen: Arc::new(Mutex::new(tty::Screen::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        if mode == Mode::Tty {
            let (out, screen, stop) = (r.out.clone(), r.screen.clone(), r.stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let (Ok(mut screen), Ok(mut out)) = (screen.lock(), out.lock()) {
                        screen.draw(&mut *out);
                    }
                }
            });
        }
        r
    }

    /// The last output lines of step `id` (for the summary of a failed step).
    pub fn tail(&self, id: &Digest) -> Vec<String> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.tails.get(id).cloned())
            .unwrap_or_default()
    }

    /// Ends live drawing (tty mode): one last frame, then output may follow below it.
    pub fn finish(&self) {
        if self.mode == Mode::Tty && !self.stop.swap(true, Ordering::Relaxed) {
            if let (Ok(mut screen), Ok(mut out)) = (self.screen.lock(), self.out.lock()) {
                screen.draw(&mut *out);
            }
        }
    }

    /// Prints a warning the way buildx does after the steps.
    pub fn warning(&self, text: &str) {
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "WARNING: {text}");
        }
    }

    fn render(&self, event: &Event<Digest>) -> String {
        let Ok(mut st) = self.state.lock() else {
            return String::new();
        };
        let (id, name) = match event {
            Event::Started { id, name }
            | Event::Cached { id, name }
            | Event::Done { id, name, .. }
            | Event::Error { id, name, .. }
            | Event::Cancelled { id, name }
            | Event::Log { id, name, .. } => (*id, name.as_str()),
        };
        let elapsed = st.started.elapsed().as_secs_f64();
        let new = !st.numbers.contains_key(&id);
        let n = match st.numbers.get(&id) {
            Some(n) => *n,
            None => {
                let n = st.next;
                st.next += 1;
                st.numbers.insert(id, n);
                n
            }
        };
        let mut s = String::new();
        if new {
            s.push_str(&format!("\n#{n} {name}\n"));
        }
        match event {
            Event::Started { .. } => {}
            Event::Cached { .. } => s.push_str(&format!("#{n} CACHED\n")),
            Event::Done { duration, .. } => {
                s.push_str(&format!("#{n} DONE {:.1}s\n", duration.as_secs_f64()))
            }
            Event::Error { message, .. } => s.push_str(&format!("#{n} ERROR: {message}\n")),
            Event::Cancelled { .. } => s.push_str(&format!("#{n} CANCELED\n")),
            Event::Log { line, .. } => {
                for l in line.lines() {
                    s.push_str(&format!("#{n} {elapsed:.3} {l}\n"));
                }
            }
        }
        s
    }
}

fn json(event: &Event<Digest>) -> serde_json::Value {
    use serde_json::json;
    match event {
        Event::Started { id, name } => {
            json!({"vertex": id.to_string(), "name": name, "status": "started"})
        }
        Event::Cached { id, name } => {
            json!({"vertex": id.to_string(), "name": name, "status": "cached"})
        }
        Event::Done { id, name, duration } => {
            json!({"vertex": id.to_string(), "name": name, "status": "done", "duration_ms": duration.as_millis() as u64})
        }
        Event::Error { id, name, message } => {
            json!({"vertex": id.to_string(), "name": name, "status": "error", "error": message})
        }
        Event::Cancelled { id, name } => {
            json!({"vertex": id.to_string(), "name": name, "status": "canceled"})
        }
        Event::Log { id, name, line } => {
            json!({"vertex": id.to_string(), "name": name, "log": line})
        }
    }
}

impl<W: Write + Send + 'static> Drop for Renderer<W> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl<W: Write + Send + 'static> ProgressSink<Digest> for Renderer<W> {
    fn send(&self, event: Event<Digest>) {
        if let Event::Log { id, line, .. } = &event {
            if let Ok(mut st) = self.state.lock() {
                let tail = st.tails.entry(*id).or_default();
                tail.extend(line.lines().map(str::to_owned));
                let excess = tail.len().saturating_sub(TAIL);
                tail.drain(..excess);
            }
        }
        if self.mode == Mode::Tty {
            if let (Ok(mut screen), Ok(mut out)) = (self.screen.lock(), self.out.lock()) {
                screen.apply(&event);
                if !self.stop.load(Ordering::Relaxed) {
                    screen.draw(&mut *out);
                }
            }
            return;
        }
        let text = match self.mode {
            Mode::RawJson => format!("{}\n", json(&event)),
            Mode::Plain | Mode::Tty => self.render(&event),
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_numbers_vertices_like_buildx() {
        let buf = Buf::default();
        let r = Renderer::new(Mode::Plain, buf.clone());
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        r.send(Event::Started {
            id: a,
            name: "[build 1/2] COPY . /src".into(),
        });
        r.send(Event::Cached {
            id: b,
            name: "[build 2/2] COPY x /y".into(),
        });
        r.send(Event::Done {
            id: a,
            name: "[build 1/2] COPY . /src".into(),
            duration: Duration::from_millis(250),
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "\n#1 [build 1/2] COPY . /src\n\n#2 [build 2/2] COPY x /y\n#2 CACHED\n#1 DONE 0.2s\n"
        );
        let j = Renderer::new(Mode::RawJson, buf.clone());
        j.send(Event::Cached {
            id: b,
            name: "x".into(),
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with("\"status\":\"cached\",\"vertex\":\"sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d\"}\n"), "{text}");
    }
}
