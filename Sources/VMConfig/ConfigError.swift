// Diagnostics of the vm.conf parser. Every message is tied to the file and
// line it came from, printed as `file:line: message` like OpenBSD's vmd.

/// Where a statement was written: the file name as given (top-level path or
/// the string of the `include` statement) and its 1-based line.
public struct SourceLocation: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int

    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }

    public var description: String { "\(file):\(line)" }
}

/// One problem found in a configuration file (also used for warnings).
public struct ConfigError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public init(_ location: SourceLocation, _ message: String) {
        self.init(file: location.file, line: location.line, message: message)
    }

    /// `file:line: message`; `file: message` for the file as a whole
    /// (line 0: it could not be read at all).
    public var description: String {
        line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)"
    }
}

/// All the errors of one parse, in the order they were found. A parse that
/// fails reports every error of the file, not just the first.
public struct ConfigErrors: Error, Equatable, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]

    public init(_ errors: [ConfigError]) {
        self.errors = errors
    }

    /// One error per line, ready for stderr.
    public var description: String {
        errors.map(\.description).joined(separator: "\n")
    }
}
