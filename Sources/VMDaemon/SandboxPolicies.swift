import VMDControl
import Glibc
import VMDSystem
import VMM
import VirtioDevices

/// The seccomp allow-lists, one per role, in one place. Anything not listed
/// kills the process (SIGSYS); the parent logs which process died and why.
public enum SandboxPolicies {
    /// What any Swift + libevent process needs to run its loop, log, and exit.
    static let base: [String] = [
        // event loop and channels
        "read", "write", "readv", "writev", "recvmsg", "sendmsg", "sendto", "recvfrom",
        "close", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl", "poll", "ppoll",
        "fcntl", "shutdown",
        // memory and threads (Swift runtime, malloc)
        "mmap", "munmap", "mremap", "madvise", "brk", "futex", "sched_yield",
        "set_robust_list", "rseq",
        // signals (libevent delivers them through a pipe; handlers return)
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
        // time, identity, exit
        "clock_gettime", "clock_nanosleep", "nanosleep", "gettimeofday",
        // a device process's polling: was it preempted while it spun (AdaptivePoll.swift)
        "getrusage",
        "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
        "exit", "exit_group", "tgkill", "getrandom", "set_tid_address",
    ]

    /// control: accepts vmctl connections on an already-bound socket.
    public static let control = SeccompPolicy(
        name: "control",
        allowing: base + ["accept4", "accept", "getsockopt"],
        extra: [.allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_READ | PROT_WRITE)),
                .allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_NONE)),
                .allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_READ)),
                // glibc's syslog() reconnects after syslogd restarts: refuse
                // quietly rather than kill the process.
                .fail("socket", errno: EACCES), .fail("connect", errno: EACCES)])

    /// priv: tap devices and bridges (ioctls on /dev/net/tun and sockets).
    public static let priv = SeccompPolicy(
        name: "priv",
        allowing: base + ["openat", "open", "ioctl", "socket", "connect", "bind", "getsockname",
                          "mprotect", "newfstatat", "fstat", "lseek", "uname"])

    /// vmm: starts VM processes (fork+exec of this binary) and reaps them;
    /// its filter is inherited by them, so it also covers a VM process's
    /// privileged set-up (opening /dev/kvm, creating the VM, ptys, memfds)
    /// and the vhost-user backends it starts (accepting their frontends).
    public static let vmm = SeccompPolicy(
        name: "vmm",
        allowing: base + [
            "clone", "clone3", "vfork", "execve", "wait4", "waitid", "kill",
            "openat", "open", "newfstatat", "fstat", "statx", "lseek", "readlink", "readlinkat",
            "access", "faccessat", "faccessat2", "getdents64", "pread64", "pwrite64", "ioctl",
            "mprotect", "memfd_create", "ftruncate", "fallocate", "fsync", "fdatasync", "flock",
            "socketpair", "socket", "connect", "dup", "dup2", "dup3", "pipe2", "prctl", "arch_prctl",
            "setresuid", "setresgid", "setgroups", "setuid", "setgid", "setsid", "getcwd", "uname", "prlimit64",
            "getrlimit", "setrlimit", "sched_getaffinity", "sched_setaffinity", "getpriority",
            "landlock_create_ruleset", "landlock_restrict_self", "landlock_add_rule", "seccomp",
            "umask", "chdir", "sysinfo", "getsockopt", "setsockopt", "sendmmsg", "recvmmsg",
            "timerfd_create", "timerfd_settime", "eventfd2", "pidfd_open", "mlock", "munlock",
            "unlink", "unlinkat", "mkdir", "mkdirat", "getresuid", "getresgid", "rt_sigtimedwait",
            "rt_sigqueueinfo", "tkill", "membarrier", "statfs", "fstatfs", "ioprio_set", "sched_getparam",
            "sched_getscheduler", "sched_setscheduler", "rt_sigsuspend", "pause", "alarm", "getpgrp",
            "setpgid", "getpgid", "getsid", "chmod", "fchmod", "fchown", "chown", "lchown", "fchmodat",
            "fchownat", "renameat", "rename", "symlink", "link", "readahead", "sync_file_range",
            "copy_file_range", "splice", "tee", "inotify_init1", "epoll_create1", "epoll_create",
            "fsetxattr", "fgetxattr", "getxattr", "mincore", "msync", "get_mempolicy", "set_mempolicy",
            "mbind", "close_range", "openat2", "setitimer", "getitimer", "times", "getrusage",
            "accept4", "accept",
            // vioblk's restricted io_uring, set up by device processes before their own
            // filter, and its thread-pool fallback (preadv/pwritev)
            "io_uring_setup", "io_uring_register", "io_uring_enter", "preadv", "pwritev", "pwritev2",
        ])

    /// A device process: its channels, guest memory (already mapped), its
    /// backends, and the system calls its table entry names. Nothing else:
    /// no open, no socket, no exec.
    static func device(_ model: DeviceModel) -> SeccompPolicy {
        let noExec: [SeccompPolicy.Rule] = [
            .allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_READ | PROT_WRITE)),
            .allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_NONE)),
            .allowIfArgEquals("mprotect", index: 2, value: UInt64(PROT_READ)),
        ]
        // "name=value": the call only with that second argument (an ioctl request).
        var names: [String] = []
        var argRules: [SeccompPolicy.Rule] = []
        for call in model.syscalls {
            let parts = call.split(separator: "=", maxSplits: 1)
            if parts.count == 2, let value = UInt64(parts[1]) {
                argRules.append(.allowIfArgEquals(String(parts[0]), index: 1, value: value))
            } else {
                names.append(call)
            }
        }
        return SeccompPolicy(name: model.kind.rawValue, allowing: base + names, extra: noExec + argRules)
    }

    /// A VM process after its privileged set-up: vCPU threads in KVM_RUN,
    /// interrupt lines, the console pty, the device channels.
    static let vm = SeccompPolicy(
        name: "vm",
        allowing: base + [
            // vCPU threads are started after the filter (TSYNC covers earlier ones)
            "clone", "clone3", "sched_getaffinity", "mprotect",
            // device processes are spawned before the filter; reaping after
            "wait4", "waitid", "kill",
            "time", "getcpu",
        ],
        // The KVM ioctls the running VM issues, as the VMM library lists
        // them from <linux/kvm.h> (KVM_RUN, KVM_IRQ_LINE, KVM_GET_REGS).
        extra: VirtualMachine.ioctlsAfterStart.map { .allowIfArgEquals("ioctl", index: 1, value: $0.request) })
}


