import Glibc
import VMDControl

/// vmctl's messages go to standard error as `vmctl: ...` (as err(3)/warnx(3)
/// write them); only tables and console output go to standard output.
enum Output {
    static var verbose = false

    static func warn(_ message: String) {
        writeError("vmctl: \(message)\n")
    }

    /// A message that may span several lines (reload errors are one
    /// `file:line: message` per line): each line gets the prefix.
    static func warnLines(_ message: String, prefix: String = "") {
        let lines = message.split(separator: "\n", omittingEmptySubsequences: true)
        if lines.isEmpty { warn(prefix.isEmpty ? "failed" : String(prefix.dropLast(2))) }
        // String(line): String + Substring is an unspecialized generic
        // append (run-time type look-ups on every vmctl error, issue 14).
        for line in lines { warn(prefix + String(line)) }
    }

    /// Text without the `vmctl:` prefix, as vmctl prints `stopping vm web: ...`.
    static func note(_ message: String) {
        for line in message.split(separator: "\n", omittingEmptySubsequences: true) {
            writeError(line + "\n")
        }
    }

    static func debug(_ message: String) {
        if verbose && !message.isEmpty { warnLines(message) }
    }

    static func writeError(_ text: String) {
        writeAll(STDERR_FILENO, Array(text.utf8))
    }

    static func writeOut(_ text: String) {
        writeAll(STDOUT_FILENO, Array(text.utf8))
    }

    /// Writes everything, retrying short writes and EINTR; gives up quietly
    /// on other errors (a closed pipe is not worth a second message).
    @discardableResult
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    /// `file:line: ...`, as vm.conf errors are written.
    static func isLocated(_ message: String) -> Bool {
        let parts = message.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[0].contains(" ") else { return false }
        return !parts[1].isEmpty && parts[1].allSatisfy(\.isNumber)
    }

    /// Prints `vmctl: <message>` (every line of it) and exits 1.
    static func fail(_ failure: Failure, verb: String? = nil) -> Never {
        // The daemon's messages already name the verb and the VM
        // ("start web: ..."); for the rest, say which command failed.
        // Configuration errors (`file:line: message`) speak for themselves.
        var prefix = ""
        if let verb, !failure.message.hasPrefix(verb + " ") && !failure.message.hasPrefix(verb + ":"),
           !isLocated(failure.message) {
            prefix = verb + ": "
        }
        warnLines(failure.message, prefix: prefix)
        exit(1)
    }
}
