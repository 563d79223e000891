import Glibc
import CVMDSys

/// One line per event: to stderr in the foreground (`vmd -d`), else to
/// syslog (facility daemon). Every line names the process it came from.
///
/// Logging must keep working inside every sandbox, so it touches no file
/// and no libc code that might: the syslog socket is connected once at
/// `setup` (before the sandbox; `FD.closeAll` keeps it), messages carry no
/// timestamp (the syslog daemon stamps them; glibc's syslog(3) would call
/// localtime_r, which opens /etc/localtime), and a failed send is retried
/// with a fresh connection only until the process restricts itself.
public enum Log {
    public enum Level: Int32 { case error = 3, warning = 4, info = 6, debug = 7 }

    /// LOG_DAEMON.
    static let facility: Int32 = 3 << 3
    /// Where syslog listens; `VMD_SYSLOG_SOCKET` overrides it (tests).
    static let defaultSyslogPath = "/dev/log"

    nonisolated(unsafe) private static var toStderr = true
    nonisolated(unsafe) public private(set) static var verbosity = 0
    nonisolated(unsafe) private static var processName = "vmd"
    nonisolated(unsafe) private static var syslogFD: Int32 = -1
    nonisolated(unsafe) private static var syslogStream = false
    nonisolated(unsafe) private static var syslogPath = defaultSyslogPath
    nonisolated(unsafe) private static var mayReconnect = true
    private static let lock = Mutex()

    static var currentProcessName: String { processName }
    static var isForeground: Bool { toStderr }

    /// The syslog descriptor, which descriptor clean-ups must keep (-1: none).
    public static var descriptor: Int32 { syslogFD }

    public static func setup(foreground: Bool, verbosity v: Int, process: String) {
        toStderr = foreground
        verbosity = v
        processName = process
        if !foreground {
            if let p = getenv("VMD_SYSLOG_SOCKET"), p.pointee != 0 { syslogPath = String(cString: p) }
            connect()
        }
        Crash.installHandler()
    }

    public static func setVerbosity(_ v: Int) { verbosity = v }
    public static func setProcessName(_ name: String) {
        processName = name
        Crash.updateOutput()
    }

    /// After daemon(3): the crash line names the new pid.
    public static func forked() { Crash.updateOutput() }

    /// Called once the process is sandboxed: no new sockets from here on.
    public static func sandboxed() { mayReconnect = false }

    public static func error(_ msg: String) { emit(.error, msg) }
    public static func warning(_ msg: String) { emit(.warning, msg) }
    public static func info(_ msg: String) { emit(.info, msg) }
    /// Shown with -v.
    public static func debug(_ msg: String) { if verbosity > 0 { emit(.debug, msg) } }

    private static func connect() {
        var stream: Int32 = 0
        let fd = cvmd_syslog_connect(syslogPath, &stream)
        syslogFD = fd
        syslogStream = stream != 0
        Crash.updateOutput()
    }

    /// What precedes a message on the syslog socket (RFC 3164 without the
    /// timestamp): `<PRI>vmd[PID]: `.
    static func syslogHeader(_ level: Level) -> String {
        "<\(facility | level.rawValue)>vmd[\(getpid())]: "
    }

    private static func emit(_ level: Level, _ msg: String) {
        let line = "\(processName): \(msg)"
        lock.locked {
            if toStderr {
                var bytes = Array(line.utf8)
                bytes.append(10)
                _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
                return
            }
            var bytes = Array((syslogHeader(level) + line).utf8)
            if syslogStream { bytes.append(0) }
            for attempt in 0..<2 {
                if syslogFD < 0 {
                    guard attempt == 0, mayReconnect else { return }
                    connect()
                    if syslogFD < 0 { return }
                }
                let n = bytes.withUnsafeBytes { send(syslogFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n >= 0 { return }
                // syslogd restarted (or is gone): reconnect once if still allowed.
                guard mayReconnect else { return }
                FD.close(syslogFD)
                syslogFD = -1
            }
        }
    }
}

