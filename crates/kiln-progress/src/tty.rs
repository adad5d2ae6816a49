//! The interactive renderer (`--progress=tty`), in the manner of buildx: a header with the
//! elapsed time and counts, one line per step (` => [stage 2/3] COPY ...  0.3s`, `=> CACHED`),
//! the last output lines of running steps, redrawn in place.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use kiln_solver::Event;
use kiln_types::Digest;

const LOG_TAIL: usize = 4;

enum Status {
    Running(Instant),
    Cached,
    Done(Duration),
    Failed(String),
    Cancelled,
}

struct Step {
    name: String,
    status: Status,
    logs: Vec<String>,
}

/// The screen model; `draw` renders it over the previous frame.
pub(crate) struct Screen {
    started: Instant,
    steps: Vec<Step>,
    index: HashMap<Digest, usize>,
    drawn_lines: usize,
    width: usize,
}

impl Screen {
    pub(crate) fn new() -> Self {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        Screen {
            started: Instant::now(),
            steps: Vec::new(),
            index: HashMap::new(),
            drawn_lines: 0,
            width,
        }
    }

    pub(crate) fn apply(&mut self, event: &Event<Digest>) {
        let (id, name) = match event {
            Event::Started { id, name }
            | Event::Cached { id, name }
            | Event::Done { id, name, .. }
            | Event::Error { id, name, .. }
            | Event::Cancelled { id, name }
            | Event::Log { id, name, .. } => (*id, name.clone()),
        };
        let i = *self.index.entry(id).or_insert_with(|| {
            self.steps.push(Step {
                name,
                status: Status::Running(Instant::now()),
                logs: Vec::new(),
            });
            self.steps.len() - 1
        });
        let step = &mut self.steps[i];
        match event {
            Event::Started { .. } => step.status = Status::Running(Instant::now()),
            Event::Cached { .. } => step.status = Status::Cached,
            Event::Done { duration, .. } => step.status = Status::Done(*duration),
            Event::Error { message, .. } => step.status = Status::Failed(message.clone()),
            Event::Cancelled { .. } => step.status = Status::Cancelled,
            Event::Log { line, .. } => {
                step.logs.extend(line.lines().map(str::to_owned));
                let excess = step.logs.len().saturating_sub(LOG_TAIL);
                step.logs.drain(..excess);
            }
        }
    }

    fn fit(&self, s: String) -> String {
        if s.chars().count() <= self.width {
            return s;
        }
        s.chars()
            .take(self.width.saturating_sub(1))
            .collect::<String>()
            + "…"
    }

    pub(crate) fn draw(&mut self, out: &mut dyn Write) {
        let mut lines = Vec::new();
        let done = self
            .steps
            .iter()
            .filter(|s| !matches!(s.status, Status::Running(_)))
            .count();
        lines.push(format!(
            "[+] Building {:.1}s ({}/{})",
            self.started.elapsed().as_secs_f64(),
            done,
            self.steps.len()
        ));
        for s in &self.steps {
            let line = match &s.status {
                Status::Running(t) => {
                    format!(" => {:<60} {:>6.1}s", s.name, t.elapsed().as_secs_f64())
                }
                Status::Cached => format!(" => CACHED {}", s.name),
                Status::Done(d) => format!(" => {:<60} {:>6.1}s", s.name, d.as_secs_f64()),
                Status::Failed(m) => format!(" => ERROR {}: {m}", s.name),
                Status::Cancelled => format!(" => CANCELED {}", s.name),
            };
            lines.push(self.fit(line));
            if matches!(s.status, Status::Running(_) | Status::Failed(_)) {
                for l in &s.logs {
                    lines.push(self.fit(format!(" => => # {l}")));
                }
            }
        }
        let mut frame = String::new();
        if self.drawn_lines > 0 {
            // Back to the top of the previous frame, then clear it.
            frame.push_str(&format!("\x1b[{}F\x1b[J", self.drawn_lines));
        }
        for l in &lines {
            frame.push_str(l);
            frame.push('\n');
        }
        self.drawn_lines = lines.len();
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_redraw_in_place_and_show_states() {
        let mut s = Screen::new();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        s.apply(&Event::Started {
            id: a,
            name: "[1/2] RUN make".into(),
        });
        s.apply(&Event::Log {
            id: a,
            name: String::new(),
            line: "compiling\n".into(),
        });
        s.apply(&Event::Cached {
            id: b,
            name: "[2/2] COPY x /y".into(),
        });
        let mut out = Vec::new();
        s.draw(&mut out);
        let first = String::from_utf8(out).unwrap();
        assert!(first.starts_with("[+] Building"), "{first}");
        assert!(first.contains(" => [1/2] RUN make") && first.contains(" => => # compiling"));
        assert!(first.contains(" => CACHED [2/2] COPY x /y"));
        s.apply(&Event::Done {
            id: a,
            name: String::new(),
            duration: Duration::from_millis(1500),
        });
        let mut out = Vec::new();
        s.draw(&mut out);
        let second = String::from_utf8(out).unwrap();
        // Four lines were drawn before (header, step, its log, cached step): go back over them.
        assert!(second.starts_with("\x1b[4F\x1b[J"), "{second:?}");
        assert!(second.contains("1.5s") && !second.contains("compiling"));
        assert!(second.contains("(2/2)"));
    }
}
