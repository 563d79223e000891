import VMDControl
/// `vmd [-dnv] [-D macro=value] [-f file] [-s socket]`, plus the internal
/// flags the daemon uses to re-execute itself as a child role:
/// `-P priv|control|vmm`, `-V` (a VM process), `-X name` (a device process).
public struct DaemonOptions: Equatable {
    public var foreground = false
    public var checkOnly = false
    public var verbosity = 0
    public var macros: [(String, String)] = []
    public var configPath = "/etc/vm.conf"
    public var socketPath = "/run/vmd.sock"
    public var role: String?
    public var vmProcess = false
    public var deviceName: String?

    public init() {}

    public static func == (a: DaemonOptions, b: DaemonOptions) -> Bool {
        a.foreground == b.foreground && a.checkOnly == b.checkOnly && a.verbosity == b.verbosity
            && a.macros.map { $0.0 + "=" + $0.1 } == b.macros.map { $0.0 + "=" + $0.1 }
            && a.configPath == b.configPath && a.socketPath == b.socketPath && a.role == b.role
            && a.vmProcess == b.vmProcess && a.deviceName == b.deviceName
    }

    public static let usage = "usage: vmd [-dnv] [-D macro=value] [-f file] [-s socket]"

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case usage(String)
        public var description: String {
            switch self { case .usage(let m): return m.isEmpty ? DaemonOptions.usage : "vmd: \(m)\n\(DaemonOptions.usage)" }
        }
    }

    /// getopt(3)-style: flags may be grouped (`-dv`), values attached or
    /// separate (`-fvm.conf`, `-f vm.conf`).
    public static func parse(_ args: [String]) throws -> DaemonOptions {
        var o = DaemonOptions()
        var i = 0
        func value(_ flag: Character, _ rest: Substring) throws -> String {
            if !rest.isEmpty { return String(rest) }
            i += 1
            guard i < args.count else { throw ParseError.usage("option requires an argument -- \(flag)") }
            return args[i]
        }
        while i < args.count {
            let a = args[i]
            if a == "--" { i += 1; break }
            guard a.hasPrefix("-"), a.count > 1 else { break }
            var chars = a.dropFirst()
            while let c = chars.first {
                chars = chars.dropFirst()
                switch c {
                case "d": o.foreground = true
                case "n": o.checkOnly = true
                case "v": o.verbosity += 1
                case "V": o.vmProcess = true
                case "D":
                    let kv = try value(c, chars); chars = ""
                    guard let eq = kv.firstIndex(of: "="), eq != kv.startIndex else {
                        throw ParseError.usage("could not parse macro definition \(kv)")
                    }
                    o.macros.append((String(kv[..<eq]), String(kv[kv.index(after: eq)...])))
                case "f": o.configPath = try value(c, chars); chars = ""
                case "s": o.socketPath = try value(c, chars); chars = ""
                case "P": o.role = try value(c, chars); chars = ""
                case "X": o.deviceName = try value(c, chars); chars = ""
                default: throw ParseError.usage("unknown option -- \(c)")
                }
            }
            i += 1
        }
        if i < args.count { throw ParseError.usage("") }
        return o
    }

    /// The flags a child inherits from the parent's command line.
    public var inheritedFlags: [String] {
        var f: [String] = []
        if foreground { f.append("-d") }
        if verbosity > 0 { f.append("-" + String(repeating: "v", count: verbosity)) }
        f += ["-s", socketPath]
        return f
    }
}
