//! The security policy of a step, shared by both runtimes so that they agree: capabilities,
//! the seccomp deny-list, rlimits, masked and read-only paths.

use caps::Capability;
use kiln_plugin_sdk::graph::SecurityMode;
use kiln_plugin_sdk::proto::{Ulimit, UlimitResource};

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
    let can_raise =
        caps::has_cap(None, caps::CapSet::Effective, Capability::CAP_SYS_RESOURCE).unwrap_or(false);
    if known && !can_raise && current.rlim_max < NOFILE_LIMIT {
        current.rlim_max
    } else {
        NOFILE_LIMIT
    }
}

/// The seccomp deny-list: syscalls a build step has no business making, answered with EPERM.
/// A short deny-list rather than Docker's long allow-list: it blocks what lets a process reach
/// past its sandbox (kernel modules, other namespaces, mounts, keyrings, raw I/O ports).
pub const DENIED_SYSCALLS: &[(&str, i64)] = &[
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("setns", libc::SYS_setns),
    ("unshare", libc::SYS_unshare),
    ("syslog", libc::SYS_syslog),
    // The new mount API reaches the same places as mount(2).
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    #[cfg(target_arch = "x86_64")]
    ("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    ("ioperm", libc::SYS_ioperm),
];

/// The compiled seccomp program for the embedded sandbox, or `None` when the step runs
/// without seccomp (`--security=insecure`).
pub fn seccomp_program(security: SecurityMode) -> Result<Option<seccompiler::BpfProgram>, Error> {
    if security == SecurityMode::Insecure {
        return Ok(None);
    }
    let arch = target_arch()?;
    let mut rules = std::collections::BTreeMap::new();
    for (_, nr) in DENIED_SYSCALLS {
        rules.insert(*nr, Vec::new());
        // x32 processes use the x86_64 table with this bit set and pass the same arch check:
        // without these entries they would walk past the deny-list.
        #[cfg(target_arch = "x86_64")]
        rules.insert(*nr | X32_SYSCALL_BIT, Vec::new());
    }
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| Error::Unsupported(format!("cannot build the seccomp filter: {e}")))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e| Error::Unsupported(format!("cannot compile the seccomp filter: {e}")))?;
    Ok(Some(program))
}

#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

fn target_arch() -> Result<seccompiler::TargetArch, Error> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        Error::Unsupported(format!(
            "no seccomp filter for the {} architecture; use --security=insecure",
            std::env::consts::ARCH
        ))
    })
}

/// Paths hidden from the process (a tmpfs on directories, `/dev/null` on files), as runc's
/// default spec.
pub fn masked_paths(security: SecurityMode) -> Vec<String> {
    match security {
        SecurityMode::Insecure => Vec::new(),
        _ => oci_spec::runtime::get_default_maskedpaths(),
    }
}

/// Paths made read-only for the process, as runc's default spec.
pub fn readonly_paths(security: SecurityMode) -> Vec<String> {
    match security {
        SecurityMode::Insecure => Vec::new(),
        _ => oci_spec::runtime::get_default_readonly_paths(),
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
        let p = seccomp_program(SecurityMode::Sandbox).unwrap().unwrap();
        assert!(!p.is_empty());
        assert!(seccomp_program(SecurityMode::Insecure).unwrap().is_none());
    }
}
