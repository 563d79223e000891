import Glibc
import CVMDSys

/// Reports of real traps (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT):
/// a handler installed at start-up writes one preformatted line, with the
/// signal and the fault address, to the log descriptor the process already
/// holds (write(2) only: async-signal-safe and allowed by every sandbox),
/// then re-raises the signal with its default action, so the parent's wait
/// status names the real signal. It replaces the Swift runtime's own crash
/// handler, whose backtracer would need syscalls the sandbox forbids (and
/// so turned every crash into "killed by SIGSYS").
public enum Crash {
    nonisolated(unsafe) private static var installed = false

    public static func installHandler() {
        if !installed { installed = cvmd_crash_install() == 0 }
        updateOutput()
    }

    static func updateOutput() {
        guard installed else { return }
        let name = Log.currentProcessName
        if Log.descriptor >= 0 && !Log.isForeground {
            cvmd_crash_set_output(Log.descriptor, Log.syslogHeader(.error) + "\(name): ", "")
        } else {
            cvmd_crash_set_output(2, "\(name): ", "\n")
        }
    }

    /// The line the handler writes for a trap (tests).
    public static func format(signal: Int32, code: Int32, address: UInt?) -> String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBufferPointer { b in
            cvmd_crash_format(b.baseAddress, b.count, signal, code,
                              UnsafeRawPointer(bitPattern: address ?? 0), address == nil ? 0 : 1)
        }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
