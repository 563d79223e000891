import Glibc
import CVMDSys

/// An errno value captured immediately after the failing call, with the
/// name of what failed, so errors read like `socketpair: Too many open files`.
public struct SystemError: Error, CustomStringConvertible, Equatable {
    public let code: Int32
    public let what: String

    public init(_ what: String, code: Int32 = cvmd_errno()) {
        self.what = what
        self.code = code
    }

    public var message: String { errnoDescription(code) }
    public var description: String { "\(what): \(message)" }
}

/// The one place libc return values are turned into Swift errors.
/// `retryOnInterrupt` repeats the call on EINTR; never use it for close(2).
@inline(__always)
@discardableResult
public func sys<T: BinaryInteger>(_ what: @autoclosure () -> String,
                                  retryOnInterrupt: Bool = true,
                                  _ call: () -> T) throws -> T {
    while true {
        let r = call()
        if r != -1 { return r }
        let e = cvmd_errno()
        if e == EINTR && retryOnInterrupt { continue }
        throw SystemError(what(), code: e)
    }
}

/// strerror(3) without its traps: glibc's strerror translates through the
/// message catalogs of the current locale (files a sandboxed process may not
/// open); this is the untranslated text (strerrordesc_np), never a file.
public func errnoDescription(_ code: Int32) -> String {
    if let p = cvmd_strerror(code) { return String(cString: p) }
    return "error \(code)"
}

public func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGSYS: return "SIGSYS"
    case SIGKILL: return "SIGKILL"
    case SIGTERM: return "SIGTERM"
    case SIGSEGV: return "SIGSEGV"
    case SIGABRT: return "SIGABRT"
    case SIGILL: return "SIGILL"
    case SIGBUS: return "SIGBUS"
    case SIGINT: return "SIGINT"
    case SIGHUP: return "SIGHUP"
    case SIGTRAP: return "SIGTRAP"
    case SIGPIPE: return "SIGPIPE"
    default: return "signal \(sig)"
    }
}
