//! Streams a running process's stdout and stderr to the host line by line, watching for
//! cancellation, until the process has exited.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use kiln_plugin_sdk::proto::LogLevel;

use crate::Sink;

/// How often the host is asked whether the build was cancelled.
const TICK: Duration = Duration::from_millis(100);

/// A line longer than this is passed on in pieces (a process printing megabytes without a
/// newline must not make the plugin buffer them).
const MAX_LINE: usize = 64 * 1024;

/// A running process, as the pump needs it.
pub trait Process {
    /// Kills it (and everything it started); called on every tick once cancelled.
    fn kill(&mut self);
    /// Its wait status if it has exited (reaping it), without blocking.
    fn try_wait(&mut self) -> io::Result<Option<i32>>;
}

/// How a process ended.
pub struct Ended {
    /// The raw wait status.
    pub status: i32,
    /// Whether it was killed because the build was cancelled.
    pub cancelled: bool,
    /// Everything read from the extra `report` descriptor (the sandbox's setup-error pipe).
    pub report: Vec<u8>,
}

struct Stream {
    fd: Option<OwnedFd>,
    level: LogLevel,
    line: Vec<u8>,
}

impl Stream {
    fn push(&mut self, data: &[u8], sink: &dyn Sink) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if self.line.last() == Some(&b'\n') || self.line.len() >= MAX_LINE {
                self.flush(sink);
            }
        }
    }

    fn flush(&mut self, sink: &dyn Sink) {
        if self.line.is_empty() {
            return;
        }
        let mut text = self.line.as_slice();
        text = text.strip_suffix(b"\n").unwrap_or(text);
        text = text.strip_suffix(b"\r").unwrap_or(text);
        sink.log(self.level, &String::from_utf8_lossy(text));
        self.line.clear();
    }
}

/// Pumps `stdout` (logged at Info) and `stderr` (Warn) and collects `report` until all three
/// are closed and `process` has exited; kills it when the sink says the build was cancelled.
pub fn pump(
    process: &mut dyn Process,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: Option<OwnedFd>,
    sink: &dyn Sink,
) -> io::Result<Ended> {
    let mut streams = [
        Stream {
            fd: Some(stdout),
            level: LogLevel::Info,
            line: Vec::new(),
        },
        Stream {
            fd: Some(stderr),
            level: LogLevel::Warn,
            line: Vec::new(),
        },
    ];
    let mut report_fd = report;
    let mut report_bytes = Vec::new();
    let mut cancelled = false;
    let mut status = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !cancelled && sink.cancelled() {
            cancelled = true;
        }
        if cancelled && status.is_none() {
            process.kill();
        }
        let open: Vec<i32> = streams
            .iter()
            .filter_map(|s| s.fd.as_ref().map(AsRawFd::as_raw_fd))
            .chain(report_fd.as_ref().map(AsRawFd::as_raw_fd))
            .collect();
        if status.is_none() {
            status = process.try_wait()?;
        }
        if open.is_empty() {
            if let Some(status) = status {
                for s in &mut streams {
                    s.flush(sink);
                }
                return Ok(Ended {
                    status,
                    cancelled,
                    report: report_bytes,
                });
            }
            std::thread::sleep(TICK);
            continue;
        }
        let ready = poll_readable(&open, TICK)?;
        if ready.is_empty() && status.is_some() {
            // The process is gone but something it left holds our pipes open (only possible
            // outside a pid namespace): stop at what was written.
            streams.iter_mut().for_each(|s| s.fd = None);
            report_fd = None;
            continue;
        }
        for fd in ready {
            let n = read(fd, &mut buf)?;
            let data = buf.get(..n).unwrap_or_default();
            if let Some(s) = streams
                .iter_mut()
                .find(|s| s.fd.as_ref().map(AsRawFd::as_raw_fd) == Some(fd))
            {
                if n == 0 {
                    s.flush(sink);
                    s.fd = None;
                } else {
                    s.push(data, sink);
                }
            } else if n == 0 {
                report_fd = None;
            } else {
                report_bytes.extend_from_slice(data);
            }
        }
    }
}

/// The descriptors of `fds` that can be read (or are at EOF) within `timeout`.
fn poll_readable(fds: &[i32], timeout: Duration) -> io::Result<Vec<i32>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    Ok(pfds
        .iter()
        .filter(|p| p.revents != 0)
        .map(|p| p.fd)
        .collect())
}

fn read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The exit code of a wait status: the code, or 128 + the signal, as shells report it.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_shells_report_them() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        // Killed by SIGKILL (status = signal number, no core).
        assert_eq!(exit_code(9), 137);
    }
}
