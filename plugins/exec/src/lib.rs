//! The `exec` primitive plugin: runs a Dockerfile `RUN` step's process isolated on the root
//! filesystem the engine prepared, and returns its exit code.
//!
//! The engine hands over the rootfs (an overlay mount, writable: its upper dir becomes the
//! layer) and every other mount resolved to host paths; this plugin runs the process in it,
//! streams stdout (Info) and stderr (Warn) to the build progress line by line, kills it when the
//! build is cancelled, and leaves nothing behind: no process, no mount, and in the rootfs only
//! what the process wrote (see the `rootfs` module for the mountpoints it has to create).
//!
//! Two runtimes, one policy (`policy`), one request check (`step`):
//! - **embedded** (default, `sandbox`): new mount, pid, uts, ipc namespaces (and network for
//!   `--network=none`), pivot_root, fresh `/proc`, a tmpfs `/dev`, read-only `/sys`, the
//!   Docker default capabilities, Docker's seccomp allow-list, `RLIMIT_NOFILE`, user and
//!   groups from the image's own `/etc/passwd` and `/etc/group`;
//! - **runc** (`runc`): the same step as an OCI bundle run by `runc run`.
//!
//! `RUN --device` names CDI devices; `cdi` resolves them against the host's spec files when the
//! step runs, and both runtimes apply their edits (device nodes, env, mounts, groups).
//!
//! Results, as BuildKit reports them: a process that exits non-zero is not an error of the
//! plugin, its code is the result (a signal `n` gives `128 + n`). An executable that is not
//! found is an error of kind `NotFound` reading `unable to start container process: exec:
//! "foo": executable file not found in $PATH` (runc's words, which BuildKit shows), not a 127
//! exit: the step could not start. `--network=default` is the host network, as BuildKit's
//! default with its OCI worker.
//!
//! Contract with the engine: the rootfs at `output` is used for this one exec, then unmounted
//! and diffed. When it is an overlay, the plugin may remove from its upper dir a directory that
//! only its own mountpoint stub had copied up (see the `rootfs` module); writing through that
//! same mount afterwards is not supported.
//!
//! Architecture invariant: depends on `kiln-plugin-sdk` (and through it kiln-graph and
//! kiln-types) and third-party crates only — never on the engine, solver, snapshotter, cache or
//! plugin host; no async runtime (calls are synchronous, on one of kiln's blocking threads).

mod cdi;
mod cgroup;
mod error;
mod output;
mod policy;
mod rootfs;
mod runc;
mod sandbox;
mod scratch;
mod seccomp;
mod step;
mod user;
mod userns;

pub use error::Error;

use kiln_plugin_sdk::proto::{LogLevel, PluginError, PrimitiveRequest, PrimitiveResponse, Runtime};
use kiln_plugin_sdk::{Host, Primitive};

use step::Step;

/// Where a running step's output goes and where cancellation comes from: the plugin host in
/// production, a recorder in tests.
pub trait Sink {
    /// One line the process wrote (stdout at [`LogLevel::Info`], stderr at
    /// [`LogLevel::Warn`]), without its newline.
    fn log(&self, level: LogLevel, line: &str);
    /// Whether the build was cancelled (asked about every 100 ms while the process runs).
    fn cancelled(&self) -> bool;
}

impl Sink for Host<'_> {
    fn log(&self, level: LogLevel, line: &str) {
        Host::log(self, level, line);
    }

    fn cancelled(&self) -> bool {
        Host::cancelled(self)
    }
}

/// Runs one exec request: prepares the step, runs it with the requested runtime, and removes
/// the mountpoints it had to create, whatever happened.
pub fn execute(req: PrimitiveRequest, sink: &dyn Sink) -> Result<PrimitiveResponse, Error> {
    if sink.cancelled() {
        return Err(Error::Cancelled);
    }
    let runtime = req.runtime;
    if runtime == Runtime::Unknown {
        return Err(Error::Unsupported(
            "the requested runtime is unknown to this exec plugin (embedded and runc are \
             supported)"
                .into(),
        ));
    }
    // CDI devices (`RUN --device`) resolved against the host's specs now, so that a missing
    // optional device or an edit kiln skips is said in the step's log.
    let injected = match &req.op {
        kiln_plugin_sdk::graph::Op::Exec(op) => cdi::resolve(&op.devices, &cdi::spec_dirs())?,
        _ => cdi::Injected::default(),
    };
    for w in &injected.warnings {
        sink.log(LogLevel::Warn, w);
    }
    let (step, stubs) = Step::prepare(req, injected)?;
    if let Some(w) = userns::insecure_warning(&step) {
        sink.log(LogLevel::Warn, w);
    }
    let result = userns::check_step(&step).and_then(|()| match runtime {
        Runtime::Runc => runc::run(&step, sink),
        _ => sandbox::run(&step, sink),
    });
    for problem in stubs.cleanup() {
        sink.log(LogLevel::Warn, &problem);
    }
    drop(step);
    Ok(PrimitiveResponse {
        exit_code: Some(result?),
    })
}

/// The plugin's primitive: `exec` ops.
#[derive(Debug, Default)]
pub struct Exec;

impl Primitive for Exec {
    fn execute(
        &self,
        req: PrimitiveRequest,
        host: &Host<'_>,
    ) -> Result<PrimitiveResponse, PluginError> {
        execute(req, host).map_err(PluginError::from)
    }
}

kiln_plugin_sdk::export_plugin! {
    name: "exec",
    version: env!("CARGO_PKG_VERSION"),
    primitive: Exec => ["exec"],
}
