import Glibc
import CVMDSys
import CLibseccomp

/// The unprivileged identity daemon processes drop to.
public struct Credentials: Equatable, Sendable {
    public var uid: uid_t
    public var gid: gid_t
    public init(uid: uid_t, gid: gid_t) { self.uid = uid; self.gid = gid }
}

public enum Users {
    public static let daemonUser = "_vmd"

    public static func lookup(_ name: String) -> Credentials? {
        guard let pw = getpwnam(name) else { return nil }
        return Credentials(uid: pw.pointee.pw_uid, gid: pw.pointee.pw_gid)
    }

    public static func lookupGroup(_ name: String) -> gid_t? {
        guard let gr = getgrnam(name) else { return nil }
        return gr.pointee.gr_gid
    }

    public static func name(of uid: uid_t) -> String? {
        guard let pw = getpwuid(uid) else { return nil }
        return String(cString: pw.pointee.pw_name)
    }

    public static func groupName(of gid: gid_t) -> String? {
        guard let gr = getgrgid(gid) else { return nil }
        return String(cString: gr.pointee.gr_name)
    }

    /// The `_vmd` user; created as a system user when missing (root only).
    public static func ensureDaemonUser() throws -> Credentials {
        if let c = lookup(daemonUser) { return c }
        let pid = try Spawn.spawn("/usr/sbin/useradd", arguments: [
            "useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--comment", "vmd unprivileged user", daemonUser,
        ], descriptors: [])
        _ = try Spawn.wait(pid)
        if let c = lookup(daemonUser) { return c }
        throw SystemError("user \(daemonUser) is missing and useradd failed", code: ENOENT)
    }
}

/// Process restriction primitives. Each role applies them in this order
/// right after its last privileged step: drop user, no_new_privs, Landlock,
/// seccomp (last, so the earlier steps need no syscalls in the filter).
public enum Sandbox {
    /// setgroups([]) + setresgid + setresuid, then proves root is gone.
    public static func dropPrivileges(to c: Credentials) throws {
        try sys("setgroups") { setgroups(0, nil) }
        try sys("setresgid") { cvmd_setresgid(c.gid) }
        try sys("setresuid") { cvmd_setresuid(c.uid) }
        if c.uid != 0 && (setuid(0) != -1 || geteuid() == 0) {
            throw SystemError("privilege drop did not stick", code: EPERM)
        }
    }

    public static func setNoNewPrivileges() throws {
        try sys("prctl(PR_SET_NO_NEW_PRIVS)") { cvmd_set_no_new_privs() }
    }

    public static var noNewPrivileges: Bool { cvmd_get_no_new_privs() == 1 }

    /// The Landlock ABI version the kernel offers (0 when absent).
    public static var landlockABI: Int32 { max(0, cvmd_landlock_abi()) }

    /// Denies every file system access the kernel can restrict; descriptors
    /// already open keep working. Requires no_new_privs or CAP_SYS_ADMIN.
    public static func denyFileSystem() throws {
        try sys("landlock_restrict_self") { cvmd_landlock_deny_all_fs() }
    }

    /// Makes this process non-dumpable so unprivileged users cannot ptrace
    /// it or read its /proc memory.
    public static func setNotDumpable() {
        _ = cvmd_set_dumpable(0)
    }
}

/// A seccomp allow-list: every syscall not named kills the whole process.
public struct SeccompPolicy: Sendable {
    public enum Rule: Sendable {
        /// Allowed with any arguments.
        case allow(String)
        /// Allowed only when argument `index` equals `value` (e.g. an ioctl request).
        case allowIfArgEquals(String, index: UInt32, value: UInt64)
        /// Fails with an errno instead of killing (for calls libraries probe).
        case fail(String, errno: Int32)
    }

    public let name: String
    public let rules: [Rule]

    public init(name: String, rules: [Rule]) {
        self.name = name
        self.rules = rules
    }

    public init(name: String, allowing names: [String], extra: [Rule] = []) {
        self.init(name: name, rules: names.map { .allow($0) } + extra)
    }

    /// Loads the filter into the kernel for this process (all threads).
    public func apply() throws {
        guard let ctx = seccomp_init(UInt32(SCMP_ACT_KILL_PROCESS)) else {
            throw SystemError("seccomp_init", code: ENOMEM)
        }
        defer { seccomp_release(ctx) }
        for rule in rules {
            switch rule {
            case .allow(let sc):
                try add(ctx, sc, action: UInt32(SCMP_ACT_ALLOW), conditions: [])
            case .allowIfArgEquals(let sc, let index, let value):
                let cmp = scmp_arg_cmp(arg: index, op: SCMP_CMP_EQ, datum_a: value, datum_b: 0)
                try add(ctx, sc, action: UInt32(SCMP_ACT_ALLOW), conditions: [cmp])
            case .fail(let sc, let err):
                try add(ctx, sc, action: cvmd_scmp_act_errno(UInt16(err)), conditions: [])
            }
        }
        // Apply to every thread: the Swift runtime may have started some.
        _ = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)
        let r = seccomp_load(ctx)
        if r < 0 { throw SystemError("seccomp_load (\(name))", code: -r) }
        Log.sandboxed()
    }

    private func add(_ ctx: scmp_filter_ctx, _ sc: String, action: UInt32,
                     conditions: [scmp_arg_cmp]) throws {
        let nr = seccomp_syscall_resolve_name(sc)
        // A name this kernel/arch doesn't know is skipped: nothing can call it.
        if nr == __NR_SCMP_ERROR { return }
        let r = conditions.withUnsafeBufferPointer {
            seccomp_rule_add_array(ctx, action, nr, UInt32($0.count), $0.baseAddress)
        }
        if r < 0 { throw SystemError("seccomp rule \(sc) (\(name))", code: -r) }
    }
}
