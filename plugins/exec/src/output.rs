//! Streams a running process's stdout and stderr to the host line by line, watching for
//! cancellation, until the process has exited.
//!
//! Event-driven: one `poll(2)` waits on the output pipes and on the process's pidfd, so the
//! pump wakes when there is output or when the process exits, never on a timer. The timeout of
//! that wait only bounds how late a cancellation (which the host is asked about) is seen.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use kiln_plugin_sdk::proto::LogLevel;

use crate::Sink;

/// How often the host is asked whether the build was cancelled while nothing else happens.
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
    /// A descriptor that becomes readable when it exits (its pidfd), valid while it is not
    /// reaped; `None` on a kernel without pidfds, where its exit is looked for at each tick.
    fn exit_fd(&self) -> Option<RawFd>;
}

/// A pidfd for `pid` (Linux 5.3 and later), `None` where the kernel has none.
pub fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
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
    pump_ticking(process, stdout, stderr, report, sink, TICK)
}

/// [`pump`], asking about cancellation after `tick` without events.
fn pump_ticking(
    process: &mut dyn Process,
    stdout: OwnedFd,
    stderr: OwnedFd,
    report: Option<OwnedFd>,
    sink: &dyn Sink,
    tick: Duration,
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
    let exit_fd = process.exit_fd();
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
        if status.is_none() {
            status = process.try_wait()?;
        }
        let open: Vec<i32> = streams
            .iter()
            .filter_map(|s| s.fd.as_ref().map(AsRawFd::as_raw_fd))
            .chain(report_fd.as_ref().map(AsRawFd::as_raw_fd))
            .collect();
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
        }
        // Until it has exited, its exit is one of the events waited for.
        let watched: Vec<i32> = open
            .iter()
            .copied()
            .chain(exit_fd.filter(|_| status.is_none()))
            .collect();
        let ready = poll_readable(&watched, tick)?;
        if ready.is_empty() && status.is_some() {
            // The process is gone but something it left holds our pipes open (only possible
            // outside a pid namespace): stop at what was written.
            streams.iter_mut().for_each(|s| s.fd = None);
            report_fd = None;
            continue;
        }
        for fd in ready {
            if Some(fd) == exit_fd {
                // Reaped by `try_wait` at the top of the loop.
                continue;
            }
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

    /// A process that closed its output and exits just after the pump first found it
    /// running: its exit is signalled on a pipe, as a pidfd signals it.
    struct ExitsLate {
        checks: u32,
        exit_r: OwnedFd,
        exit_w: Option<OwnedFd>,
    }

    impl Process for ExitsLate {
        fn kill(&mut self) {}

        fn try_wait(&mut self) -> io::Result<Option<i32>> {
            self.checks += 1;
            if self.checks < 3 {
                if self.checks == 2 {
                    // It exits now, right after this check saw it running.
                    let w = self.exit_w.take().expect("written once");
                    // SAFETY: writes one byte from a valid buffer to an open pipe.
                    let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
                    assert_eq!(n, 1);
                }
                return Ok(None);
            }
            Ok(Some(0))
        }

        fn exit_fd(&self) -> Option<RawFd> {
            Some(self.exit_r.as_raw_fd())
        }
    }

    struct Quiet;

    impl Sink for Quiet {
        fn log(&self, _: LogLevel, _: &str) {}
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn the_exit_of_a_process_wakes_the_pump_without_a_tick() {
        // The output pipes are closed before the process exits. The pump must learn of the
        // exit from its descriptor, not by sleeping a tick and asking again: with a tick of an
        // hour, a pump that sleeps never comes back in time.
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        drop((out_w, err_w));
        let (exit_r, exit_w) = pipe();
        let mut process = ExitsLate {
            checks: 0,
            exit_r,
            exit_w: Some(exit_w),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ended = pump_ticking(
                &mut process,
                out_r,
                err_r,
                None,
                &Quiet,
                Duration::from_secs(3600),
            );
            let _ = tx.send(ended.map(|e| (e.status, e.cancelled)));
        });
        let ended = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the pump did not return when the process exited");
        assert_eq!(ended.unwrap(), (0, false));
    }

    #[test]
    fn exit_codes_as_shells_report_them() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(0), 0);
        // Killed by SIGKILL (status = signal number, no core).
        assert_eq!(exit_code(9), 137);
    }
}
