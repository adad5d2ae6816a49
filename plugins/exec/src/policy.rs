//! The security policy of a step, shared by both runtimes so that they agree: capabilities,
//! the seccomp profile, rlimits, masked and read-only paths.

use caps::Capability;
use kiln_plugin_sdk::graph::SecurityMode;
use kiln_plugin_sdk::proto::{Ulimit, UlimitResource};

use crate::seccomp::Profile;
use crate::Error;

/// Docker's (and BuildKit's) default capability set.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The capabilities a step keeps: the default set, or with `--security=insecure` everything
/// kiln itself holds (a step cannot be given more; asking runc for more fails the step).
pub fn capabilities(security: SecurityMode) -> Vec<Capability> {
    match security {
        SecurityMode::Insecure => {
            let held = |set| caps::read(None, set).unwrap_or_default();
            let permitted = held(caps::CapSet::Permitted);
            let mut all: Vec<_> = held(caps::CapSet::Bounding)
                .intersection(&permitted)
                .copied()
                .collect();
            all.sort_by_key(|c| c.index());
            all
        }
        _ => DEFAULT_CAPS.to_vec(),
    }
}

/// The capabilities as a bit mask (bit n = capability n), as `/proc/<pid>/status` shows them.
pub fn cap_mask(set: &[Capability]) -> u64 {
    set.iter().fold(0, |m, c| m | (1u64 << c.index()))
}

/// The resource limits of a step: `RLIMIT_NOFILE` at [`nofile_limit`] (BuildKit's default),
/// then the requested `--ulimit`s, each replacing the default for its resource. Both runtimes
/// apply this same list, in this order.
pub fn rlimits(requested: &[Ulimit]) -> Vec<Ulimit> {
    let mut out = vec![Ulimit {
        resource: UlimitResource::Nofile,
        soft: nofile_limit(),
        hard: nofile_limit(),
    }];
    for u in requested {
        out.retain(|o| o.resource != u.resource);
        out.push(*u);
    }
    out
}

/// The `RLIMIT_*` constant of a resource (`None` for one this plugin does not know).
pub fn rlimit_resource(r: UlimitResource) -> Option<libc::__rlimit_resource_t> {
    Some(match r {
        UlimitResource::Core => libc::RLIMIT_CORE,
        UlimitResource::Cpu => libc::RLIMIT_CPU,
        UlimitResource::Data => libc::RLIMIT_DATA,
        UlimitResource::Fsize => libc::RLIMIT_FSIZE,
        UlimitResource::Locks => libc::RLIMIT_LOCKS,
        UlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
        UlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
        UlimitResource::Nice => libc::RLIMIT_NICE,
        UlimitResource::Nofile => libc::RLIMIT_NOFILE,
        UlimitResource::Nproc => libc::RLIMIT_NPROC,
        UlimitResource::Rss => libc::RLIMIT_RSS,
        UlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
        UlimitResource::Rttime => libc::RLIMIT_RTTIME,
        UlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
        UlimitResource::Stack => libc::RLIMIT_STACK,
        UlimitResource::Unknown => return None,
    })
}

/// `RLIMIT_NOFILE` soft and hard, as BuildKit sets it.
const NOFILE_LIMIT: u64 = 1_048_576;

/// The `RLIMIT_NOFILE` a step gets: BuildKit's value, or kiln's own hard limit when that is
/// lower and kiln may not raise it (no `CAP_SYS_RESOURCE`, as in some CI containers), where
/// BuildKit's value would make every step fail to start.
pub fn nofile_limit() -> u64 {
    let mut current = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit64 writes the struct we pass.
    let known = unsafe { libc::getrlimit64(libc::RLIMIT_NOFILE, &mut current) } == 0;
    // In a user namespace CAP_SYS_RESOURCE is held, but only there: raising a hard limit
    // needs it on the host.
    let can_raise = !crate::userns::running_in_user_ns()
        && caps::has_cap(None, caps::CapSet::Effective, Capability::CAP_SYS_RESOURCE)
            .unwrap_or(false);
    if known && !can_raise && current.rlim_max < NOFILE_LIMIT {
        current.rlim_max
    } else {
        NOFILE_LIMIT
    }
}

/// The seccomp profile of a step: Docker's default for the capabilities it keeps, or `None`
/// with `--security=insecure` (BuildKit's insecure spec runs unconfined).
pub fn seccomp(security: SecurityMode) -> Option<Profile> {
    match security {
        SecurityMode::Insecure => None,
        _ => Some(Profile::for_caps(&capabilities(security))),
    }
}

/// The compiled seccomp programs for the embedded sandbox, in installation order (empty when
/// the step runs without seccomp).
pub fn seccomp_programs(security: SecurityMode) -> Result<Vec<seccompiler::BpfProgram>, Error> {
    seccomp(security).map_or(Ok(Vec::new()), |p| p.programs())
}

/// Paths hidden from a RUN step, as BuildKit's spec has them (containerd's default Unix spec:
/// runc's list plus `/sys/devices/virtual/powercap`, whose energy counters leak what other
/// processes on the host do). Absent paths are skipped.
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths made read-only for a RUN step, as BuildKit's (and runc's) default spec.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Paths hidden from the process (a tmpfs on directories, `/dev/null` on files); none with
/// `--security=insecure`.
pub fn masked_paths(security: SecurityMode) -> Vec<String> {
    match security {
        SecurityMode::Insecure => Vec::new(),
        _ => MASKED_PATHS.iter().map(|p| (*p).to_owned()).collect(),
    }
}

/// Paths made read-only for the process; none with `--security=insecure`.
pub fn readonly_paths(security: SecurityMode) -> Vec<String> {
    match security {
        SecurityMode::Insecure => Vec::new(),
        _ => READONLY_PATHS.iter().map(|p| (*p).to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_is_dockers() {
        assert_eq!(cap_mask(&DEFAULT_CAPS), 0x00000000a80425fb);
    }

    #[test]
    fn seccomp_compiles() {
        let p = seccomp_programs(SecurityMode::Sandbox).unwrap();
        assert_eq!(p.len(), 2, "the allow-list and the clone3 answer");
        assert!(seccomp_programs(SecurityMode::Insecure).unwrap().is_empty());
    }
}
