//! Docker's default seccomp profile as data (moby/profiles `seccomp/default.json`, the one
//! BuildKit applies to RUN steps), and the filters both runtimes build from it: an allow-list,
//! every other syscall answered EPERM (the profile's `defaultErrnoRet: 1`).
//!
//! What the embedded filter simplifies (runc gets the profile's own conditions through
//! libseccomp): it covers the host's native ABI and, on x86_64, i386 (`linux/386` images run
//! natively there). A 32-bit arm process on aarch64 is killed by the architecture check, and
//! x32 syscalls get EPERM, where Docker allows them; emulated steps run QEMU, a native
//! process, so the native filter is the one that applies to them. The profile's
//! `minKernel: 4.8` entry is taken as met.

use caps::Capability;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::Error;

/// `personality(2)` values the profile allows: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (the query).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// `socket(2)` domains the profile refuses: AF_ALG (38) and AF_VSOCK (40). It allows
/// `domain < 38`, `domain == 39` and `domain > 40`.
const AF_ALG: u64 = 38;
const AF_NFC: u64 = 39;
const AF_VSOCK: u64 = 40;

/// The `clone(2)` flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET): without CAP_SYS_ADMIN the profile allows `clone` only with none of them.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// Answered to `clone3(2)` without CAP_SYS_ADMIN (its flags are behind a pointer, out of a
/// filter's reach): ENOSYS, so that glibc falls back to `clone`, whose flags are checked.
pub const CLONE3_ERRNO: u32 = libc::ENOSYS as u32;

/// Allowed whatever the step holds: the profile's unconditional entry, and `ptrace`,
/// `process_vm_readv` and `process_vm_writev`, which it allows from kernel 4.8 on (every kernel
/// kiln supports).
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "riscv_hwprobe",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// Allowed on one architecture only (the profile's `arches` entries for this one).
#[cfg(target_arch = "x86_64")]
pub const ALLOWED_ARCH: &[&str] = &["arch_prctl", "modify_ldt"];
/// Allowed on one architecture only (the profile's `arches` entries for this one).
#[cfg(target_arch = "aarch64")]
pub const ALLOWED_ARCH: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
];
/// Allowed on one architecture only (none here).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub const ALLOWED_ARCH: &[&str] = &[];

/// Allowed when the step holds the capability (`--security=insecure` steps have no filter).
pub const ALLOWED_BY_CAP: &[(Capability, &[&str])] = &[
    (Capability::CAP_DAC_READ_SEARCH, &["open_by_handle_at"]),
    (
        Capability::CAP_SYS_ADMIN,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::CAP_SYS_BOOT, &["reboot"]),
    (Capability::CAP_SYS_CHROOT, &["chroot"]),
    (
        Capability::CAP_SYS_MODULE,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::CAP_SYS_PACCT, &["acct"]),
    (
        Capability::CAP_SYS_PTRACE,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::CAP_SYS_RAWIO, &["iopl", "ioperm"]),
    (
        Capability::CAP_SYS_TIME,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::CAP_SYS_TTY_CONFIG, &["vhangup"]),
    (
        Capability::CAP_SYS_NICE,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::CAP_SYSLOG, &["syslog"]),
    (Capability::CAP_BPF, &["bpf"]),
    (Capability::CAP_PERFMON, &["perf_event_open"]),
];

/// The numbers of the profile's syscalls on this architecture (the kernel's table, as
/// the `libc` crate has it, and the newer calls it lacks); a name missing here does not exist
/// on it and is skipped, as libseccomp does.
#[cfg(target_arch = "x86_64")]
const NUMBERS: &[(&str, i64)] = &[
    ("accept", 43),
    ("accept4", 288),
    ("access", 21),
    ("acct", 163),
    ("adjtimex", 159),
    ("alarm", 37),
    ("arch_prctl", 158),
    ("bind", 49),
    ("bpf", 321),
    ("brk", 12),
    ("cachestat", 451),
    ("capget", 125),
    ("capset", 126),
    ("chdir", 80),
    ("chmod", 90),
    ("chown", 92),
    ("chroot", 161),
    ("clock_adjtime", 305),
    ("clock_getres", 229),
    ("clock_gettime", 228),
    ("clock_nanosleep", 230),
    ("clock_settime", 227),
    ("clone", 56),
    ("clone3", 435),
    ("close", 3),
    ("close_range", 436),
    ("connect", 42),
    ("copy_file_range", 326),
    ("creat", 85),
    ("delete_module", 176),
    ("dup", 32),
    ("dup2", 33),
    ("dup3", 292),
    ("epoll_create", 213),
    ("epoll_create1", 291),
    ("epoll_ctl", 233),
    ("epoll_ctl_old", 214),
    ("epoll_pwait", 281),
    ("epoll_pwait2", 441),
    ("epoll_wait", 232),
    ("epoll_wait_old", 215),
    ("eventfd", 284),
    ("eventfd2", 290),
    ("execve", 59),
    ("execveat", 322),
    ("exit", 60),
    ("exit_group", 231),
    ("faccessat", 269),
    ("faccessat2", 439),
    ("fadvise64", 221),
    ("fallocate", 285),
    ("fanotify_init", 300),
    ("fanotify_mark", 301),
    ("fchdir", 81),
    ("fchmod", 91),
    ("fchmodat", 268),
    ("fchmodat2", 452),
    ("fchown", 93),
    ("fchownat", 260),
    ("fcntl", 72),
    ("fdatasync", 75),
    ("fgetxattr", 193),
    ("finit_module", 313),
    ("flistxattr", 196),
    ("flock", 73),
    ("fork", 57),
    ("fremovexattr", 199),
    ("fsconfig", 431),
    ("fsetxattr", 190),
    ("fsmount", 432),
    ("fsopen", 430),
    ("fspick", 433),
    ("fstat", 5),
    ("fstatfs", 138),
    ("fsync", 74),
    ("ftruncate", 77),
    ("futex", 202),
    ("futex_requeue", 456),
    ("futex_wait", 455),
    ("futex_waitv", 449),
    ("futex_wake", 454),
    ("futimesat", 261),
    ("get_mempolicy", 239),
    ("get_robust_list", 274),
    ("get_thread_area", 211),
    ("getcpu", 309),
    ("getcwd", 79),
    ("getdents", 78),
    ("getdents64", 217),
    ("getegid", 108),
    ("geteuid", 107),
    ("getgid", 104),
    ("getgroups", 115),
    ("getitimer", 36),
    ("getpeername", 52),
    ("getpgid", 121),
    ("getpgrp", 111),
    ("getpid", 39),
    ("getppid", 110),
    ("getpriority", 140),
    ("getrandom", 318),
    ("getresgid", 120),
    ("getresuid", 118),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("getsid", 124),
    ("getsockname", 51),
    ("getsockopt", 55),
    ("gettid", 186),
    ("gettimeofday", 96),
    ("getuid", 102),
    ("getxattr", 191),
    ("getxattrat", 464),
    ("init_module", 175),
    ("inotify_add_watch", 254),
    ("inotify_init", 253),
    ("inotify_init1", 294),
    ("inotify_rm_watch", 255),
    ("io_cancel", 210),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_pgetevents", 333),
    ("io_setup", 206),
    ("io_submit", 209),
    ("ioctl", 16),
    ("ioperm", 173),
    ("iopl", 172),
    ("ioprio_get", 252),
    ("ioprio_set", 251),
    ("kcmp", 312),
    ("kill", 62),
    ("landlock_add_rule", 445),
    ("landlock_create_ruleset", 444),
    ("landlock_restrict_self", 446),
    ("lchown", 94),
    ("lgetxattr", 192),
    ("link", 86),
    ("linkat", 265),
    ("listen", 50),
    ("listmount", 458),
    ("listxattr", 194),
    ("listxattrat", 465),
    ("llistxattr", 195),
    ("lookup_dcookie", 212),
    ("lremovexattr", 198),
    ("lseek", 8),
    ("lsetxattr", 189),
    ("lsm_get_self_attr", 459),
    ("lsm_list_modules", 461),
    ("lsm_set_self_attr", 460),
    ("lstat", 6),
    ("madvise", 28),
    ("map_shadow_stack", 453),
    ("mbind", 237),
    ("membarrier", 324),
    ("memfd_create", 319),
    ("memfd_secret", 447),
    ("mincore", 27),
    ("mkdir", 83),
    ("mkdirat", 258),
    ("mknod", 133),
    ("mknodat", 259),
    ("mlock", 149),
    ("mlock2", 325),
    ("mlockall", 151),
    ("mmap", 9),
    ("modify_ldt", 154),
    ("mount", 165),
    ("mount_setattr", 442),
    ("move_mount", 429),
    ("mprotect", 10),
    ("mq_getsetattr", 245),
    ("mq_notify", 244),
    ("mq_open", 240),
    ("mq_timedreceive", 243),
    ("mq_timedsend", 242),
    ("mq_unlink", 241),
    ("mremap", 25),
    ("mseal", 462),
    ("msgctl", 71),
    ("msgget", 68),
    ("msgrcv", 70),
    ("msgsnd", 69),
    ("msync", 26),
    ("munlock", 150),
    ("munlockall", 152),
    ("munmap", 11),
    ("name_to_handle_at", 303),
    ("nanosleep", 35),
    ("newfstatat", 262),
    ("open", 2),
    ("open_by_handle_at", 304),
    ("open_tree", 428),
    ("openat", 257),
    ("openat2", 437),
    ("pause", 34),
    ("perf_event_open", 298),
    ("personality", 135),
    ("pidfd_getfd", 438),
    ("pidfd_open", 434),
    ("pidfd_send_signal", 424),
    ("pipe", 22),
    ("pipe2", 293),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("pkey_mprotect", 329),
    ("poll", 7),
    ("ppoll", 271),
    ("prctl", 157),
    ("pread64", 17),
    ("preadv", 295),
    ("preadv2", 327),
    ("prlimit64", 302),
    ("process_madvise", 440),
    ("process_mrelease", 448),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("pselect6", 270),
    ("ptrace", 101),
    ("pwrite64", 18),
    ("pwritev", 296),
    ("pwritev2", 328),
    ("quotactl", 179),
    ("quotactl_fd", 443),
    ("read", 0),
    ("readahead", 187),
    ("readlink", 89),
    ("readlinkat", 267),
    ("readv", 19),
    ("reboot", 169),
    ("recvfrom", 45),
    ("recvmmsg", 299),
    ("recvmsg", 47),
    ("remap_file_pages", 216),
    ("removexattr", 197),
    ("removexattrat", 466),
    ("rename", 82),
    ("renameat", 264),
    ("renameat2", 316),
    ("restart_syscall", 219),
    ("rmdir", 84),
    ("rseq", 334),
    ("rt_sigaction", 13),
    ("rt_sigpending", 127),
    ("rt_sigprocmask", 14),
    ("rt_sigqueueinfo", 129),
    ("rt_sigreturn", 15),
    ("rt_sigsuspend", 130),
    ("rt_sigtimedwait", 128),
    ("rt_tgsigqueueinfo", 297),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_getaffinity", 204),
    ("sched_getattr", 315),
    ("sched_getparam", 143),
    ("sched_getscheduler", 145),
    ("sched_rr_get_interval", 148),
    ("sched_setaffinity", 203),
    ("sched_setattr", 314),
    ("sched_setparam", 142),
    ("sched_setscheduler", 144),
    ("sched_yield", 24),
    ("seccomp", 317),
    ("select", 23),
    ("semctl", 66),
    ("semget", 64),
    ("semop", 65),
    ("semtimedop", 220),
    ("sendfile", 40),
    ("sendmmsg", 307),
    ("sendmsg", 46),
    ("sendto", 44),
    ("set_mempolicy", 238),
    ("set_mempolicy_home_node", 450),
    ("set_robust_list", 273),
    ("set_thread_area", 205),
    ("set_tid_address", 218),
    ("setdomainname", 171),
    ("setfsgid", 123),
    ("setfsuid", 122),
    ("setgid", 106),
    ("setgroups", 116),
    ("sethostname", 170),
    ("setitimer", 38),
    ("setns", 308),
    ("setpgid", 109),
    ("setpriority", 141),
    ("setregid", 114),
    ("setresgid", 119),
    ("setresuid", 117),
    ("setreuid", 113),
    ("setrlimit", 160),
    ("setsid", 112),
    ("setsockopt", 54),
    ("settimeofday", 164),
    ("setuid", 105),
    ("setxattr", 188),
    ("setxattrat", 463),
    ("shmat", 30),
    ("shmctl", 31),
    ("shmdt", 67),
    ("shmget", 29),
    ("shutdown", 48),
    ("sigaltstack", 131),
    ("signalfd", 282),
    ("signalfd4", 289),
    ("socket", 41),
    ("socketpair", 53),
    ("splice", 275),
    ("stat", 4),
    ("statfs", 137),
    ("statmount", 457),
    ("statx", 332),
    ("symlink", 88),
    ("symlinkat", 266),
    ("sync", 162),
    ("sync_file_range", 277),
    ("syncfs", 306),
    ("sysinfo", 99),
    ("syslog", 103),
    ("tee", 276),
    ("tgkill", 234),
    ("time", 201),
    ("timer_create", 222),
    ("timer_delete", 226),
    ("timer_getoverrun", 225),
    ("timer_gettime", 224),
    ("timer_settime", 223),
    ("timerfd_create", 283),
    ("timerfd_gettime", 287),
    ("timerfd_settime", 286),
    ("times", 100),
    ("tkill", 200),
    ("truncate", 76),
    ("umask", 95),
    ("umount2", 166),
    ("uname", 63),
    ("unlink", 87),
    ("unlinkat", 263),
    ("unshare", 272),
    ("uretprobe", 335),
    ("utime", 132),
    ("utimensat", 280),
    ("utimes", 235),
    ("vfork", 58),
    ("vhangup", 153),
    ("vmsplice", 278),
    ("wait4", 61),
    ("waitid", 247),
    ("write", 1),
    ("writev", 20),
];

/// The numbers of the profile's syscalls on this architecture (the kernel's table, as
/// the `libc` crate has it, and the newer calls it lacks); a name missing here does not exist
/// on it and is skipped, as libseccomp does.
#[cfg(target_arch = "aarch64")]
const NUMBERS: &[(&str, i64)] = &[
    ("accept", 202),
    ("accept4", 242),
    ("acct", 89),
    ("adjtimex", 171),
    ("bind", 200),
    ("bpf", 280),
    ("brk", 214),
    ("cachestat", 451),
    ("capget", 90),
    ("capset", 91),
    ("chdir", 49),
    ("chroot", 51),
    ("clock_adjtime", 266),
    ("clock_getres", 114),
    ("clock_gettime", 113),
    ("clock_nanosleep", 115),
    ("clock_settime", 112),
    ("clone", 220),
    ("clone3", 435),
    ("close", 57),
    ("close_range", 436),
    ("connect", 203),
    ("copy_file_range", 285),
    ("delete_module", 106),
    ("dup", 23),
    ("dup3", 24),
    ("epoll_create1", 20),
    ("epoll_ctl", 21),
    ("epoll_pwait", 22),
    ("epoll_pwait2", 441),
    ("eventfd2", 19),
    ("execve", 221),
    ("execveat", 281),
    ("exit", 93),
    ("exit_group", 94),
    ("faccessat", 48),
    ("faccessat2", 439),
    ("fadvise64", 223),
    ("fallocate", 47),
    ("fanotify_init", 262),
    ("fanotify_mark", 263),
    ("fchdir", 50),
    ("fchmod", 52),
    ("fchmodat", 53),
    ("fchmodat2", 452),
    ("fchown", 55),
    ("fchownat", 54),
    ("fcntl", 25),
    ("fdatasync", 83),
    ("fgetxattr", 10),
    ("finit_module", 273),
    ("flistxattr", 13),
    ("flock", 32),
    ("fremovexattr", 16),
    ("fsconfig", 431),
    ("fsetxattr", 7),
    ("fsmount", 432),
    ("fsopen", 430),
    ("fspick", 433),
    ("fstat", 80),
    ("fstatfs", 44),
    ("fsync", 82),
    ("ftruncate", 46),
    ("futex", 98),
    ("futex_requeue", 456),
    ("futex_wait", 455),
    ("futex_waitv", 449),
    ("futex_wake", 454),
    ("get_mempolicy", 236),
    ("get_robust_list", 100),
    ("getcpu", 168),
    ("getcwd", 17),
    ("getdents64", 61),
    ("getegid", 177),
    ("geteuid", 175),
    ("getgid", 176),
    ("getgroups", 158),
    ("getitimer", 102),
    ("getpeername", 205),
    ("getpgid", 155),
    ("getpid", 172),
    ("getppid", 173),
    ("getpriority", 141),
    ("getrandom", 278),
    ("getresgid", 150),
    ("getresuid", 148),
    ("getrusage", 165),
    ("getsid", 156),
    ("getsockname", 204),
    ("getsockopt", 209),
    ("gettid", 178),
    ("gettimeofday", 169),
    ("getuid", 174),
    ("getxattr", 8),
    ("getxattrat", 464),
    ("init_module", 105),
    ("inotify_add_watch", 27),
    ("inotify_init1", 26),
    ("inotify_rm_watch", 28),
    ("io_cancel", 3),
    ("io_destroy", 1),
    ("io_getevents", 4),
    ("io_pgetevents", 292),
    ("io_setup", 0),
    ("io_submit", 2),
    ("ioctl", 29),
    ("ioprio_get", 31),
    ("ioprio_set", 30),
    ("kcmp", 272),
    ("kill", 129),
    ("landlock_add_rule", 445),
    ("landlock_create_ruleset", 444),
    ("landlock_restrict_self", 446),
    ("lgetxattr", 9),
    ("linkat", 37),
    ("listen", 201),
    ("listmount", 458),
    ("listxattr", 11),
    ("listxattrat", 465),
    ("llistxattr", 12),
    ("lookup_dcookie", 18),
    ("lremovexattr", 15),
    ("lseek", 62),
    ("lsetxattr", 6),
    ("lsm_get_self_attr", 459),
    ("lsm_list_modules", 461),
    ("lsm_set_self_attr", 460),
    ("madvise", 233),
    ("map_shadow_stack", 453),
    ("mbind", 235),
    ("membarrier", 283),
    ("memfd_create", 279),
    ("memfd_secret", 447),
    ("mincore", 232),
    ("mkdirat", 34),
    ("mknodat", 33),
    ("mlock", 228),
    ("mlock2", 284),
    ("mlockall", 230),
    ("mmap", 222),
    ("mount", 40),
    ("mount_setattr", 442),
    ("move_mount", 429),
    ("mprotect", 226),
    ("mq_getsetattr", 185),
    ("mq_notify", 184),
    ("mq_open", 180),
    ("mq_timedreceive", 183),
    ("mq_timedsend", 182),
    ("mq_unlink", 181),
    ("mremap", 216),
    ("mseal", 462),
    ("msgctl", 187),
    ("msgget", 186),
    ("msgrcv", 188),
    ("msgsnd", 189),
    ("msync", 227),
    ("munlock", 229),
    ("munlockall", 231),
    ("munmap", 215),
    ("name_to_handle_at", 264),
    ("nanosleep", 101),
    ("newfstatat", 79),
    ("open_by_handle_at", 265),
    ("open_tree", 428),
    ("openat", 56),
    ("openat2", 437),
    ("perf_event_open", 241),
    ("personality", 92),
    ("pidfd_getfd", 438),
    ("pidfd_open", 434),
    ("pidfd_send_signal", 424),
    ("pipe2", 59),
    ("pkey_alloc", 289),
    ("pkey_free", 290),
    ("pkey_mprotect", 288),
    ("ppoll", 73),
    ("prctl", 167),
    ("pread64", 67),
    ("preadv", 69),
    ("preadv2", 286),
    ("prlimit64", 261),
    ("process_madvise", 440),
    ("process_mrelease", 448),
    ("process_vm_readv", 270),
    ("process_vm_writev", 271),
    ("pselect6", 72),
    ("ptrace", 117),
    ("pwrite64", 68),
    ("pwritev", 70),
    ("pwritev2", 287),
    ("quotactl", 60),
    ("quotactl_fd", 443),
    ("read", 63),
    ("readahead", 213),
    ("readlinkat", 78),
    ("readv", 65),
    ("reboot", 142),
    ("recvfrom", 207),
    ("recvmmsg", 243),
    ("recvmsg", 212),
    ("remap_file_pages", 234),
    ("removexattr", 14),
    ("removexattrat", 466),
    ("renameat2", 276),
    ("restart_syscall", 128),
    ("rseq", 293),
    ("rt_sigaction", 134),
    ("rt_sigpending", 136),
    ("rt_sigprocmask", 135),
    ("rt_sigqueueinfo", 138),
    ("rt_sigreturn", 139),
    ("rt_sigsuspend", 133),
    ("rt_sigtimedwait", 137),
    ("rt_tgsigqueueinfo", 240),
    ("sched_get_priority_max", 125),
    ("sched_get_priority_min", 126),
    ("sched_getaffinity", 123),
    ("sched_getattr", 275),
    ("sched_getparam", 121),
    ("sched_getscheduler", 120),
    ("sched_rr_get_interval", 127),
    ("sched_setaffinity", 122),
    ("sched_setattr", 274),
    ("sched_setparam", 118),
    ("sched_setscheduler", 119),
    ("sched_yield", 124),
    ("seccomp", 277),
    ("semctl", 191),
    ("semget", 190),
    ("semop", 193),
    ("semtimedop", 192),
    ("sendfile", 71),
    ("sendmmsg", 269),
    ("sendmsg", 211),
    ("sendto", 206),
    ("set_mempolicy", 237),
    ("set_mempolicy_home_node", 450),
    ("set_robust_list", 99),
    ("set_tid_address", 96),
    ("setdomainname", 162),
    ("setfsgid", 152),
    ("setfsuid", 151),
    ("setgid", 144),
    ("setgroups", 159),
    ("sethostname", 161),
    ("setitimer", 103),
    ("setns", 268),
    ("setpgid", 154),
    ("setpriority", 140),
    ("setregid", 143),
    ("setresgid", 149),
    ("setresuid", 147),
    ("setreuid", 145),
    ("setsid", 157),
    ("setsockopt", 208),
    ("settimeofday", 170),
    ("setuid", 146),
    ("setxattr", 5),
    ("setxattrat", 463),
    ("shmat", 196),
    ("shmctl", 195),
    ("shmdt", 197),
    ("shmget", 194),
    ("shutdown", 210),
    ("sigaltstack", 132),
    ("signalfd4", 74),
    ("socket", 198),
    ("socketpair", 199),
    ("splice", 76),
    ("statfs", 43),
    ("statmount", 457),
    ("statx", 291),
    ("symlinkat", 36),
    ("sync", 81),
    ("syncfs", 267),
    ("sysinfo", 179),
    ("syslog", 116),
    ("tee", 77),
    ("tgkill", 131),
    ("timer_create", 107),
    ("timer_delete", 111),
    ("timer_getoverrun", 109),
    ("timer_gettime", 108),
    ("timer_settime", 110),
    ("timerfd_create", 85),
    ("timerfd_gettime", 87),
    ("timerfd_settime", 86),
    ("times", 153),
    ("tkill", 130),
    ("truncate", 45),
    ("umask", 166),
    ("umount2", 39),
    ("uname", 160),
    ("unlinkat", 35),
    ("unshare", 97),
    ("utimensat", 88),
    ("vhangup", 58),
    ("vmsplice", 75),
    ("wait4", 260),
    ("waitid", 95),
    ("write", 64),
    ("writev", 66),
];

/// The numbers of the profile's syscalls for i386 processes on an x86_64 host (the kernel's
/// `syscall_32.tbl`: Linux's `asm/unistd_32.h`, and the calls from 451 on, numbered alike on
/// every architecture); a name missing here does not exist on i386 and is skipped, as
/// libseccomp does.
#[cfg(target_arch = "x86_64")]
const NUMBERS_I386: &[(&str, i64)] = &[
    ("_llseek", 140),
    ("_newselect", 142),
    ("accept4", 364),
    ("access", 33),
    ("acct", 51),
    ("adjtimex", 124),
    ("alarm", 27),
    ("arch_prctl", 384),
    ("bind", 361),
    ("bpf", 357),
    ("brk", 45),
    ("cachestat", 451),
    ("capget", 184),
    ("capset", 185),
    ("chdir", 12),
    ("chmod", 15),
    ("chown", 182),
    ("chown32", 212),
    ("chroot", 61),
    ("clock_adjtime", 343),
    ("clock_adjtime64", 405),
    ("clock_getres", 266),
    ("clock_getres_time64", 406),
    ("clock_gettime", 265),
    ("clock_gettime64", 403),
    ("clock_nanosleep", 267),
    ("clock_nanosleep_time64", 407),
    ("clock_settime", 264),
    ("clock_settime64", 404),
    ("clone", 120),
    ("clone3", 435),
    ("close", 6),
    ("close_range", 436),
    ("connect", 362),
    ("copy_file_range", 377),
    ("creat", 8),
    ("delete_module", 129),
    ("dup", 41),
    ("dup2", 63),
    ("dup3", 330),
    ("epoll_create", 254),
    ("epoll_create1", 329),
    ("epoll_ctl", 255),
    ("epoll_pwait", 319),
    ("epoll_pwait2", 441),
    ("epoll_wait", 256),
    ("eventfd", 323),
    ("eventfd2", 328),
    ("execve", 11),
    ("execveat", 358),
    ("exit", 1),
    ("exit_group", 252),
    ("faccessat", 307),
    ("faccessat2", 439),
    ("fadvise64", 250),
    ("fadvise64_64", 272),
    ("fallocate", 324),
    ("fanotify_init", 338),
    ("fanotify_mark", 339),
    ("fchdir", 133),
    ("fchmod", 94),
    ("fchmodat", 306),
    ("fchmodat2", 452),
    ("fchown", 95),
    ("fchown32", 207),
    ("fchownat", 298),
    ("fcntl", 55),
    ("fcntl64", 221),
    ("fdatasync", 148),
    ("fgetxattr", 231),
    ("finit_module", 350),
    ("flistxattr", 234),
    ("flock", 143),
    ("fork", 2),
    ("fremovexattr", 237),
    ("fsconfig", 431),
    ("fsetxattr", 228),
    ("fsmount", 432),
    ("fsopen", 430),
    ("fspick", 433),
    ("fstat", 108),
    ("fstat64", 197),
    ("fstatat64", 300),
    ("fstatfs", 100),
    ("fstatfs64", 269),
    ("fsync", 118),
    ("ftruncate", 93),
    ("ftruncate64", 194),
    ("futex", 240),
    ("futex_requeue", 456),
    ("futex_time64", 422),
    ("futex_wait", 455),
    ("futex_waitv", 449),
    ("futex_wake", 454),
    ("futimesat", 299),
    ("get_mempolicy", 275),
    ("get_robust_list", 312),
    ("get_thread_area", 244),
    ("getcpu", 318),
    ("getcwd", 183),
    ("getdents", 141),
    ("getdents64", 220),
    ("getegid", 50),
    ("getegid32", 202),
    ("geteuid", 49),
    ("geteuid32", 201),
    ("getgid", 47),
    ("getgid32", 200),
    ("getgroups", 80),
    ("getgroups32", 205),
    ("getitimer", 105),
    ("getpeername", 368),
    ("getpgid", 132),
    ("getpgrp", 65),
    ("getpid", 20),
    ("getppid", 64),
    ("getpriority", 96),
    ("getrandom", 355),
    ("getresgid", 171),
    ("getresgid32", 211),
    ("getresuid", 165),
    ("getresuid32", 209),
    ("getrlimit", 76),
    ("getrusage", 77),
    ("getsid", 147),
    ("getsockname", 367),
    ("getsockopt", 365),
    ("gettid", 224),
    ("gettimeofday", 78),
    ("getuid", 24),
    ("getuid32", 199),
    ("getxattr", 229),
    ("getxattrat", 464),
    ("init_module", 128),
    ("inotify_add_watch", 292),
    ("inotify_init", 291),
    ("inotify_init1", 332),
    ("inotify_rm_watch", 293),
    ("io_cancel", 249),
    ("io_destroy", 246),
    ("io_getevents", 247),
    ("io_pgetevents", 385),
    ("io_pgetevents_time64", 416),
    ("io_setup", 245),
    ("io_submit", 248),
    ("ioctl", 54),
    ("ioperm", 101),
    ("iopl", 110),
    ("ioprio_get", 290),
    ("ioprio_set", 289),
    ("ipc", 117),
    ("kcmp", 349),
    ("kill", 37),
    ("landlock_add_rule", 445),
    ("landlock_create_ruleset", 444),
    ("landlock_restrict_self", 446),
    ("lchown", 16),
    ("lchown32", 198),
    ("lgetxattr", 230),
    ("link", 9),
    ("linkat", 303),
    ("listen", 363),
    ("listmount", 458),
    ("listxattr", 232),
    ("listxattrat", 465),
    ("llistxattr", 233),
    ("lookup_dcookie", 253),
    ("lremovexattr", 236),
    ("lseek", 19),
    ("lsetxattr", 227),
    ("lsm_get_self_attr", 459),
    ("lsm_list_modules", 461),
    ("lsm_set_self_attr", 460),
    ("lstat", 107),
    ("lstat64", 196),
    ("madvise", 219),
    ("map_shadow_stack", 453),
    ("mbind", 274),
    ("membarrier", 375),
    ("memfd_create", 356),
    ("memfd_secret", 447),
    ("mincore", 218),
    ("mkdir", 39),
    ("mkdirat", 296),
    ("mknod", 14),
    ("mknodat", 297),
    ("mlock", 150),
    ("mlock2", 376),
    ("mlockall", 152),
    ("mmap", 90),
    ("mmap2", 192),
    ("modify_ldt", 123),
    ("mount", 21),
    ("mount_setattr", 442),
    ("move_mount", 429),
    ("mprotect", 125),
    ("mq_getsetattr", 282),
    ("mq_notify", 281),
    ("mq_open", 277),
    ("mq_timedreceive", 280),
    ("mq_timedreceive_time64", 419),
    ("mq_timedsend", 279),
    ("mq_timedsend_time64", 418),
    ("mq_unlink", 278),
    ("mremap", 163),
    ("mseal", 462),
    ("msgctl", 402),
    ("msgget", 399),
    ("msgrcv", 401),
    ("msgsnd", 400),
    ("msync", 144),
    ("munlock", 151),
    ("munlockall", 153),
    ("munmap", 91),
    ("name_to_handle_at", 341),
    ("nanosleep", 162),
    ("open", 5),
    ("open_by_handle_at", 342),
    ("open_tree", 428),
    ("openat", 295),
    ("openat2", 437),
    ("pause", 29),
    ("perf_event_open", 336),
    ("personality", 136),
    ("pidfd_getfd", 438),
    ("pidfd_open", 434),
    ("pidfd_send_signal", 424),
    ("pipe", 42),
    ("pipe2", 331),
    ("pkey_alloc", 381),
    ("pkey_free", 382),
    ("pkey_mprotect", 380),
    ("poll", 168),
    ("ppoll", 309),
    ("ppoll_time64", 414),
    ("prctl", 172),
    ("pread64", 180),
    ("preadv", 333),
    ("preadv2", 378),
    ("prlimit64", 340),
    ("process_madvise", 440),
    ("process_mrelease", 448),
    ("process_vm_readv", 347),
    ("process_vm_writev", 348),
    ("pselect6", 308),
    ("pselect6_time64", 413),
    ("ptrace", 26),
    ("pwrite64", 181),
    ("pwritev", 334),
    ("pwritev2", 379),
    ("quotactl", 131),
    ("quotactl_fd", 443),
    ("read", 3),
    ("readahead", 225),
    ("readlink", 85),
    ("readlinkat", 305),
    ("readv", 145),
    ("reboot", 88),
    ("recvfrom", 371),
    ("recvmmsg", 337),
    ("recvmmsg_time64", 417),
    ("recvmsg", 372),
    ("remap_file_pages", 257),
    ("removexattr", 235),
    ("removexattrat", 466),
    ("rename", 38),
    ("renameat", 302),
    ("renameat2", 353),
    ("restart_syscall", 0),
    ("rmdir", 40),
    ("rseq", 386),
    ("rt_sigaction", 174),
    ("rt_sigpending", 176),
    ("rt_sigprocmask", 175),
    ("rt_sigqueueinfo", 178),
    ("rt_sigreturn", 173),
    ("rt_sigsuspend", 179),
    ("rt_sigtimedwait", 177),
    ("rt_sigtimedwait_time64", 421),
    ("rt_tgsigqueueinfo", 335),
    ("sched_get_priority_max", 159),
    ("sched_get_priority_min", 160),
    ("sched_getaffinity", 242),
    ("sched_getattr", 352),
    ("sched_getparam", 155),
    ("sched_getscheduler", 157),
    ("sched_rr_get_interval", 161),
    ("sched_rr_get_interval_time64", 423),
    ("sched_setaffinity", 241),
    ("sched_setattr", 351),
    ("sched_setparam", 154),
    ("sched_setscheduler", 156),
    ("sched_yield", 158),
    ("seccomp", 354),
    ("select", 82),
    ("semctl", 394),
    ("semget", 393),
    ("semtimedop_time64", 420),
    ("sendfile", 187),
    ("sendfile64", 239),
    ("sendmmsg", 345),
    ("sendmsg", 370),
    ("sendto", 369),
    ("set_mempolicy", 276),
    ("set_mempolicy_home_node", 450),
    ("set_robust_list", 311),
    ("set_thread_area", 243),
    ("set_tid_address", 258),
    ("setdomainname", 121),
    ("setfsgid", 139),
    ("setfsgid32", 216),
    ("setfsuid", 138),
    ("setfsuid32", 215),
    ("setgid", 46),
    ("setgid32", 214),
    ("setgroups", 81),
    ("setgroups32", 206),
    ("sethostname", 74),
    ("setitimer", 104),
    ("setns", 346),
    ("setpgid", 57),
    ("setpriority", 97),
    ("setregid", 71),
    ("setregid32", 204),
    ("setresgid", 170),
    ("setresgid32", 210),
    ("setresuid", 164),
    ("setresuid32", 208),
    ("setreuid", 70),
    ("setreuid32", 203),
    ("setrlimit", 75),
    ("setsid", 66),
    ("setsockopt", 366),
    ("settimeofday", 79),
    ("setuid", 23),
    ("setuid32", 213),
    ("setxattr", 226),
    ("setxattrat", 463),
    ("shmat", 397),
    ("shmctl", 396),
    ("shmdt", 398),
    ("shmget", 395),
    ("shutdown", 373),
    ("sigaltstack", 186),
    ("signalfd", 321),
    ("signalfd4", 327),
    ("sigprocmask", 126),
    ("sigreturn", 119),
    ("socket", 359),
    ("socketcall", 102),
    ("socketpair", 360),
    ("splice", 313),
    ("stat", 106),
    ("stat64", 195),
    ("statfs", 99),
    ("statfs64", 268),
    ("statmount", 457),
    ("statx", 383),
    ("stime", 25),
    ("symlink", 83),
    ("symlinkat", 304),
    ("sync", 36),
    ("sync_file_range", 314),
    ("syncfs", 344),
    ("sysinfo", 116),
    ("syslog", 103),
    ("tee", 315),
    ("tgkill", 270),
    ("time", 13),
    ("timer_create", 259),
    ("timer_delete", 263),
    ("timer_getoverrun", 262),
    ("timer_gettime", 261),
    ("timer_gettime64", 408),
    ("timer_settime", 260),
    ("timer_settime64", 409),
    ("timerfd_create", 322),
    ("timerfd_gettime", 326),
    ("timerfd_gettime64", 410),
    ("timerfd_settime", 325),
    ("timerfd_settime64", 411),
    ("times", 43),
    ("tkill", 238),
    ("truncate", 92),
    ("truncate64", 193),
    ("ugetrlimit", 191),
    ("umask", 60),
    ("umount", 22),
    ("umount2", 52),
    ("uname", 122),
    ("unlink", 10),
    ("unlinkat", 301),
    ("unshare", 310),
    ("utime", 30),
    ("utimensat", 320),
    ("utimensat_time64", 412),
    ("utimes", 271),
    ("vfork", 190),
    ("vhangup", 111),
    ("vmsplice", 316),
    ("wait4", 114),
    ("waitid", 284),
    ("waitpid", 7),
    ("write", 4),
    ("writev", 146),
];

/// No table here: [`target_arch`] refuses such a host before a number is looked up.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NUMBERS: &[(&str, i64)] = &[];

/// The profile for a step holding `caps`: the syscalls allowed unconditionally on this
/// architecture, and whether `clone`/`clone3` are unrestricted (CAP_SYS_ADMIN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Allowed names, deduplicated, in the profile's order.
    pub allowed: Vec<&'static str>,
    /// `clone` with any flags and `clone3` are allowed.
    pub clone_unrestricted: bool,
}

impl Profile {
    /// The profile as Docker derives it for a container with these capabilities.
    pub fn for_caps(caps: &[Capability]) -> Profile {
        let mut allowed: Vec<&'static str> = Vec::new();
        let by_cap = ALLOWED_BY_CAP
            .iter()
            .filter(|(c, _)| caps.contains(c))
            .flat_map(|(_, names)| names.iter());
        for name in ALLOWED.iter().chain(ALLOWED_ARCH).chain(by_cap) {
            if !allowed.contains(name) {
                allowed.push(name);
            }
        }
        let clone_unrestricted = caps.contains(&Capability::CAP_SYS_ADMIN);
        if !clone_unrestricted {
            // Listed under CAP_SYS_ADMIN only; without it they get the argument checks below.
            allowed.retain(|n| *n != "clone" && *n != "clone3");
        }
        Profile {
            allowed,
            clone_unrestricted,
        }
    }

    /// The compiled programs for the embedded sandbox, to install in this order: the
    /// allow-list, then (without CAP_SYS_ADMIN) one answering `clone3` with ENOSYS. The kernel
    /// runs every installed filter and, between two errno answers, keeps the newest filter's:
    /// so `clone3` gets ENOSYS, not the allow-list's EPERM.
    pub fn programs(&self) -> Result<Vec<BpfProgram>, Error> {
        let arch = target_arch()?;
        let mut allow_list = Vec::new();
        let mut clone3 = Vec::new();
        for abi in abis() {
            let nr = |name: &str| {
                abi.numbers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, nr)| *nr)
                    .ok_or_else(|| {
                        Error::Unsupported(format!(
                            "the seccomp tables lack {name} for {:#x}",
                            abi.audit_arch
                        ))
                    })
            };
            let mut rules = std::collections::BTreeMap::new();
            for name in &self.allowed {
                if let Some((_, nr)) = abi.numbers.iter().find(|(n, _)| n == name) {
                    rules.insert(*nr, Vec::new());
                }
            }
            // A rule on the first argument (the profile's conditions are all on it; an i386
            // process's arguments reach the filter zero-extended).
            let one = |op, value| {
                let condition = SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value)
                    .map_err(filter_error)?;
                SeccompRule::new(vec![condition]).map_err(filter_error)
            };
            rules.insert(
                nr("personality")?,
                PERSONALITIES
                    .iter()
                    .map(|p| one(SeccompCmpOp::Eq, *p))
                    .collect::<Result<_, _>>()?,
            );
            rules.insert(
                nr("socket")?,
                vec![
                    one(SeccompCmpOp::Lt, AF_ALG)?,
                    one(SeccompCmpOp::Eq, AF_NFC)?,
                    one(SeccompCmpOp::Gt, AF_VSOCK)?,
                ],
            );
            if !self.clone_unrestricted {
                rules.insert(
                    nr("clone")?,
                    vec![one(SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS), 0)?],
                );
            }
            allow_list.push((
                abi.audit_arch,
                compile(
                    rules,
                    SeccompAction::Errno(libc::EPERM as u32),
                    SeccompAction::Allow,
                    arch,
                )?,
            ));
            if !self.clone_unrestricted {
                let only = [(nr("clone3")?, Vec::new())].into_iter().collect();
                clone3.push((
                    abi.audit_arch,
                    compile(
                        only,
                        SeccompAction::Allow,
                        SeccompAction::Errno(CLONE3_ERRNO),
                        arch,
                    )?,
                ));
            }
        }
        let mut programs = vec![by_arch(allow_list)?];
        if !self.clone_unrestricted {
            programs.push(by_arch(clone3)?);
        }
        Ok(programs)
    }

    /// The profile as runc's `linux.seccomp`: the same rules by name (libseccomp resolves them
    /// for the native and compat architectures, and skips names an architecture lacks).
    pub fn oci(&self) -> Result<LinuxSeccomp, Error> {
        let allow = |names: &[&str], args: Vec<(LinuxSeccompOperator, u64)>| {
            let args = args
                .into_iter()
                .map(|(op, value)| {
                    LinuxSeccompArgBuilder::default()
                        .index(0usize)
                        .value(value)
                        .op(op)
                        .build()
                        .map_err(oci_error)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut b = LinuxSyscallBuilder::default()
                .names(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActAllow);
            if !args.is_empty() {
                b = b.args(args);
            }
            b.build().map_err(oci_error)
        };
        let mut syscalls: Vec<LinuxSyscall> = vec![allow(&self.allowed, Vec::new())?];
        for p in PERSONALITIES {
            syscalls.push(allow(
                &["personality"],
                vec![(LinuxSeccompOperator::ScmpCmpEq, p)],
            )?);
        }
        syscalls.push(allow(
            &["socket"],
            vec![(LinuxSeccompOperator::ScmpCmpLt, AF_ALG)],
        )?);
        syscalls.push(allow(
            &["socket"],
            vec![(LinuxSeccompOperator::ScmpCmpEq, AF_NFC)],
        )?);
        syscalls.push(allow(
            &["socket"],
            vec![(LinuxSeccompOperator::ScmpCmpGt, AF_VSOCK)],
        )?);
        if !self.clone_unrestricted {
            let arg = LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(CLONE_NAMESPACE_FLAGS)
                .value_two(0u64)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()
                .map_err(oci_error)?;
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["clone".to_owned()])
                    .action(LinuxSeccompAction::ScmpActAllow)
                    .args(vec![arg])
                    .build()
                    .map_err(oci_error)?,
            );
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["clone3".to_owned()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(CLONE3_ERRNO)
                    .build()
                    .map_err(oci_error)?,
            );
        }
        LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .default_errno_ret(libc::EPERM as u32)
            .architectures(oci_arches())
            .syscalls(syscalls)
            .build()
            .map_err(oci_error)
    }
}

/// One ABI a step's processes may use: the host's own, and on x86_64 also i386 (a
/// `linux/386` image runs natively there, as Docker's profile admits: its x86_64 entry lists
/// `x86` and `x32` as sub-architectures).
struct Abi {
    /// The `AUDIT_ARCH_*` value the kernel reports for a call of this ABI.
    audit_arch: u32,
    numbers: &'static [(&'static str, i64)],
}

const AUDIT_ARCH_I386: u32 = 0x4000_0003;

fn abis() -> Vec<Abi> {
    let native = Abi {
        // Filled in by `by_arch` from the compiled program's own check.
        audit_arch: 0,
        numbers: NUMBERS,
    };
    #[cfg(target_arch = "x86_64")]
    return vec![
        native,
        Abi {
            audit_arch: AUDIT_ARCH_I386,
            numbers: NUMBERS_I386,
        },
    ];
    #[cfg(not(target_arch = "x86_64"))]
    vec![native]
}

// Classic BPF opcodes (linux/bpf_common.h) for the dispatch on the architecture.
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
const BPF_JMP_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;
/// `offsetof(struct seccomp_data, arch)`.
const ARCH_OFFSET: u32 = 4;
/// The most instructions the kernel takes in one filter (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// One filter out of programs compiled for the host's architecture, each meant for one ABI
/// (`audit_arch` 0: the host's own): seccompiler opens every program with a check that kills a
/// call of another architecture (load the arch, compare, kill). Here that opening is replaced
/// by one dispatch: a call of each listed architecture runs that ABI's rules, any other is
/// killed, as before.
fn by_arch(parts: Vec<(u32, BpfProgram)>) -> Result<BpfProgram, Error> {
    let mut out = vec![sock(BPF_LD_W_ABS, ARCH_OFFSET, 0, 0)];
    for (audit_arch, program) in parts {
        let opening = program.get(..3).unwrap_or_default();
        let native = match opening {
            [load, check, kill]
                if load.code == BPF_LD_W_ABS
                    && load.k == ARCH_OFFSET
                    && check.code == BPF_JMP_JEQ_K
                    && (check.jt, check.jf) == (1, 0)
                    && kill.code == BPF_RET_K =>
            {
                check.k
            }
            _ => {
                return Err(Error::Unsupported(
                    "the seccomp filter does not open with the architecture check kiln \
                     expects of seccompiler"
                        .to_owned(),
                ))
            }
        };
        let body = &program[3..];
        let arch = if audit_arch == 0 { native } else { audit_arch };
        let len = u32::try_from(body.len()).map_err(|_| too_long(body.len()))?;
        // Equal: skip the jump over the body, into it. Else: over it, to the next check.
        out.push(sock(BPF_JMP_JEQ_K, arch, 1, 0));
        out.push(sock(BPF_JMP_JA, len, 0, 0));
        out.extend_from_slice(body);
    }
    out.push(sock(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS, 0, 0));
    if out.len() > MAX_INSNS {
        return Err(too_long(out.len()));
    }
    Ok(out)
}

fn sock(code: u16, k: u32, jt: u8, jf: u8) -> seccompiler::sock_filter {
    seccompiler::sock_filter { code, jt, jf, k }
}

fn too_long(n: usize) -> Error {
    Error::Unsupported(format!(
        "the seccomp filter would have {n} instructions, more than the kernel's {MAX_INSNS}"
    ))
}

/// The number of a syscall on this architecture, `None` when it has no such call.
#[cfg(test)]
fn number(name: &str) -> Option<i64> {
    NUMBERS.iter().find(|(n, _)| *n == name).map(|(_, nr)| *nr)
}

fn compile(
    rules: std::collections::BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: seccompiler::TargetArch,
) -> Result<BpfProgram, Error> {
    let filter = SeccompFilter::new(rules, mismatch, matched, arch).map_err(filter_error)?;
    filter
        .try_into()
        .map_err(|e| Error::Unsupported(format!("cannot compile the seccomp filter: {e}")))
}

fn filter_error(e: seccompiler::BackendError) -> Error {
    Error::Unsupported(format!("cannot build the seccomp filter: {e}"))
}

fn oci_error(e: oci_spec::OciSpecError) -> Error {
    Error::Runc(format!("cannot build the OCI seccomp profile: {e}"))
}

fn target_arch() -> Result<seccompiler::TargetArch, Error> {
    std::env::consts::ARCH.try_into().map_err(|_| {
        Error::Unsupported(format!(
            "no seccomp filter for the {} architecture; use --security=insecure",
            std::env::consts::ARCH
        ))
    })
}

/// The profile's architecture map for the native one: it and its compat modes.
fn oci_arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchNative]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DEFAULT_CAPS;

    #[test]
    fn default_caps_profile_is_dockers() {
        let p = Profile::for_caps(&DEFAULT_CAPS);
        for allowed in ["read", "execve", "ptrace", "chroot", "mknodat", "setresuid"] {
            assert!(p.allowed.contains(&allowed), "{allowed}");
        }
        for refused in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "bpf",
            "get_mempolicy",
            "clone",
            "clone3",
            "reboot",
            "syslog",
            "io_uring_setup",
            "personality",
            "socket",
        ] {
            assert!(!p.allowed.contains(&refused), "{refused}");
        }
        assert!(!p.clone_unrestricted);

        let mut admin = DEFAULT_CAPS.to_vec();
        admin.push(Capability::CAP_SYS_ADMIN);
        let p = Profile::for_caps(&admin);
        assert!(p.clone_unrestricted);
        assert!(p.allowed.contains(&"mount") && p.allowed.contains(&"clone3"));
    }

    #[test]
    fn every_unconditional_name_has_a_number_here_or_is_another_arch_s() {
        // A typo in the data would silently drop a syscall: the names this arch lacks must
        // be the 32-bit and other-arch ones.
        #[cfg(target_arch = "x86_64")]
        for name in ALLOWED.iter().chain(ALLOWED_ARCH) {
            let foreign = name.ends_with("32")
                || name.ends_with("64")
                || name.starts_with('_')
                || [
                    "ipc",
                    "recv",
                    "send",
                    "sigprocmask",
                    "sigreturn",
                    "socketcall",
                    "ugetrlimit",
                    "waitpid",
                    "mmap2",
                    "sync_file_range2",
                    "riscv_hwprobe",
                ]
                .contains(name);
            assert!(
                number(name).is_some() || foreign,
                "{name} has no x86_64 number"
            );
        }
        let mut names: Vec<_> = NUMBERS.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), NUMBERS.len());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn i386_numbers_are_unique_and_cover_what_an_i386_libc_calls() {
        let mut names: Vec<_> = NUMBERS_I386.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), NUMBERS_I386.len());
        // The 32-bit spellings exist only here; numbers differ from x86_64's.
        let nr = |n: &str| NUMBERS_I386.iter().find(|(x, _)| *x == n).map(|(_, v)| *v);
        assert_eq!(nr("write"), Some(4));
        assert_eq!(nr("exit_group"), Some(252));
        assert_eq!(nr("socketcall"), Some(102));
        assert_eq!(nr("mmap2"), Some(192));
        assert_eq!(nr("clone3"), Some(435));
        assert_eq!(nr("fchmodat2"), Some(452));
        assert_eq!(nr("arch_prctl"), Some(384));
    }

    #[test]
    fn the_filter_dispatches_on_the_architecture_within_the_kernels_limit() {
        for caps in [&DEFAULT_CAPS[..], &[Capability::CAP_SYS_ADMIN][..]] {
            let programs = Profile::for_caps(caps).programs().unwrap();
            for p in &programs {
                assert!(p.len() <= MAX_INSNS, "{} instructions", p.len());
                assert_eq!((p[0].code, p[0].k), (BPF_LD_W_ABS, ARCH_OFFSET));
                // The chain of architecture checks, each jumping over its rules to the next;
                // the last instruction kills a call of any other architecture.
                let mut checks = Vec::new();
                let mut i = 1;
                while i + 1 < p.len() - 1 {
                    assert_eq!((p[i].code, p[i].jt, p[i].jf), (BPF_JMP_JEQ_K, 1, 0));
                    assert_eq!(p[i + 1].code, BPF_JMP_JA);
                    checks.push(p[i].k);
                    i += 2 + p[i + 1].k as usize;
                }
                assert_eq!(i, p.len() - 1);
                #[cfg(target_arch = "x86_64")]
                assert_eq!(checks, [0xC000_003E, AUDIT_ARCH_I386]);
                #[cfg(target_arch = "aarch64")]
                assert_eq!(checks, [0xC000_00B7]);
                let last = p.last().unwrap();
                assert_eq!(
                    (last.code, last.k),
                    (BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS)
                );
            }
        }
    }

    #[test]
    fn oci_profile_answers_eperm_and_clone3_enosys() {
        let json = serde_json::to_value(Profile::for_caps(&DEFAULT_CAPS).oci().unwrap()).unwrap();
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        let rules = json["syscalls"].as_array().unwrap();
        let clone3 = rules
            .iter()
            .find(|r| r["names"][0] == "clone3")
            .expect("a clone3 rule");
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], 38);
        let clone = rules.iter().find(|r| r["names"][0] == "clone").unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
    }
}
