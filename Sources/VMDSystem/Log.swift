import Glibc
import CVMDSys

/// One line per event: to stderr in the foreground (`vmd -d`), else to
/// syslog (facility daemon). Every line names the process it came from.
public enum Log {
    public enum Level: Int32 { case error = 3, warning = 4, info = 6, debug = 7 }

    nonisolated(unsafe) private static var toStderr = true
    nonisolated(unsafe) public private(set) static var verbosity = 0
    nonisolated(unsafe) private static var processName = "vmd"
    private static let lock = Mutex()

    public static func setup(foreground: Bool, verbosity v: Int, process: String) {
        toStderr = foreground
        verbosity = v
        processName = process
        if !foreground { cvmd_openlog("vmd", LOG_DAEMON) }
    }

    public static func setVerbosity(_ v: Int) { verbosity = v }
    public static func setProcessName(_ name: String) { processName = name }

    public static func error(_ msg: String) { emit(.error, msg) }
    public static func warning(_ msg: String) { emit(.warning, msg) }
    public static func info(_ msg: String) { emit(.info, msg) }
    /// Shown with -v.
    public static func debug(_ msg: String) { if verbosity > 0 { emit(.debug, msg) } }

    private static func emit(_ level: Level, _ msg: String) {
        let line = "\(processName): \(msg)"
        if toStderr {
            lock.locked {
                var bytes = Array(line.utf8)
                bytes.append(10)
                _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            }
        } else {
            cvmd_syslog(level.rawValue, line)
        }
    }
}

