//! Cleanup that survives kiln's death: for plugins (and the engine) that start processes which
//! must not outlive a build, even when kiln is killed with SIGKILL and runs no destructor.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

/// A `sh` that cleans up after kiln should kiln die first: it reads a pipe whose write end only
/// kiln holds (close-on-exec, so no other child inherits it), and runs `script` with what kiln
/// [`told`](DeathWatch::tell) it. Dropping the watch says `done` (kiln cleaned up itself) and
/// reaps it; end of file without `done` means kiln is gone, killed or crashed, and the script
/// runs. `PR_SET_PDEATHSIG` cannot always do this: executing a set-group-id program such as
/// Debian's `ssh-agent` clears the parent-death signal, and a runc container's init is not
/// kiln's child. The watch has a process group of its own, so that a Ctrl-C meant for kiln does
/// not kill it (kiln then cleans up itself).
pub struct DeathWatch {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl DeathWatch {
    /// Starts `/bin/sh -c script` with `env` added. `script` reads the lines kiln tells it, then
    /// one more: `done`, or nothing at all.
    pub fn start(script: &str, env: &[(&str, &OsStr)]) -> io::Result<DeathWatch> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(DeathWatch { child, pipe })
    }

    /// One line for the script. Best effort: a watch that went away cannot be helped.
    pub fn tell(&mut self, line: &str) {
        if let Some(p) = &mut self.pipe {
            let _ignored = writeln!(p, "{line}");
        }
    }

    /// Closes kiln's end of the pipe without `done`, as kiln's death does: the script runs.
    /// For tests of a cleanup script; [`wait`](DeathWatch::wait) then waits for it.
    pub fn close_without_done(&mut self) {
        drop(self.pipe.take());
    }

    /// Waits for the script to end (after [`close_without_done`](DeathWatch::close_without_done)).
    pub fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        self.child.wait()
    }
}

impl Drop for DeathWatch {
    fn drop(&mut self) {
        self.tell("done");
        drop(self.pipe.take());
        // It exits as soon as it reads that line.
        let _ignored = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_when_the_pipe_closes_without_done() {
        let dir = std::env::temp_dir().join(format!("kiln-deathwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mark = dir.join("ran");
        let mut w = DeathWatch::start(
            r#"read -r what; read -r last || last=; [ "$last" = done ] || touch "$MARK.$what""#,
            &[("MARK", mark.as_os_str())],
        )
        .expect("start sh");
        w.tell("x");
        // Kiln's death, as the watch sees it: the pipe closes with no `done`.
        w.close_without_done();
        w.wait().expect("wait for sh");
        // The sh has exited, so its `touch` is done.
        assert!(dir.join("ran.x").exists(), "the script did not run");
        drop(w);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn dropping_the_watch_says_done_and_nothing_runs() {
        let dir = std::env::temp_dir().join(format!("kiln-deathwatch-done-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mark = dir.join("ran");
        let w = DeathWatch::start(
            r#"read -r last || last=; [ "$last" = done ] || touch "$MARK""#,
            &[("MARK", mark.as_os_str())],
        )
        .expect("start sh");
        drop(w); // waits for the sh to exit
        assert!(!mark.exists(), "the script ran though kiln said done");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
