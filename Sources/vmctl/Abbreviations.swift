/// OpenBSD's vmctl accepts any unique prefix of a command (`vmctl stat`,
/// `vmctl unp`). ArgumentParser only knows whole names, so the command word
/// is resolved here and the argument list rewritten before parsing.
enum CommandWords {
    enum Resolution: Equatable {
        case command(String)
        case unknown(String)
        case ambiguous(String, candidates: [String])
    }

    /// An exact name wins; otherwise the word must be the prefix of exactly one.
    static func resolve(_ word: String, among names: [String]) -> Resolution {
        if names.contains(word) { return .command(word) }
        let matches = word.isEmpty ? [] : names.filter { $0.hasPrefix(word) }.sorted()
        switch matches.count {
        case 0: return .unknown(word)
        case 1: return .command(matches[0])
        default: return .ambiguous(word, candidates: matches)
        }
    }

    enum RewriteError: Error, Equatable, CustomStringConvertible {
        case unknown(String)
        case ambiguous(String, candidates: [String])

        var description: String {
            switch self {
            case .unknown(let word): return "unknown command: \(word)"
            case .ambiguous(let word, let candidates):
                return "ambiguous command: \(word) (could be \(candidates.joined(separator: ", ")))"
            }
        }
    }

    /// Options of `vmctl` itself that come before the command word, and
    /// whether each takes a value (`-s path`, `-spath`, `-vs path`).
    /// (A switch, not a dictionary: a Character-keyed dictionary costs
    /// vmctl 3% of its start-up in metadata and hashing set-up.)
    static func globalOptionTakesValue(_ flag: Character) -> Bool? {
        switch flag {
        case "v": return false
        case "s": return true
        default: return nil
        }
    }

    /// `arguments` without the program name. Finds the command word after
    /// vmctl's own options, replaces it by the full command name and moves
    /// those options after it, split into separate words (`-vs/tmp/s stat`
    /// becomes `status -v -s /tmp/s`), because ArgumentParser reads a
    /// command's options only after its name. Anything it does not
    /// understand (help flags, unknown options) is left for ArgumentParser.
    static func rewrite(_ arguments: [String], commands: [String]) throws -> [String] {
        var globals: [String] = []
        var i = 0
        scan: while i < arguments.count {
            let arg = arguments[i]
            if arg == "--" { i += 1; break }
            guard arg.hasPrefix("-"), arg.count > 1 else { break }
            if arg.hasPrefix("--") { return arguments }
            var rest = arg.dropFirst()
            while let flag = rest.first {
                rest = rest.dropFirst()
                guard let takesValue = globalOptionTakesValue(flag) else { return arguments }
                globals.append("-" + String(flag))
                if takesValue {
                    if rest.isEmpty {
                        i += 1  // the value is the next argument
                        guard i < arguments.count else { return arguments }
                        globals.append(arguments[i])
                    } else {
                        globals.append(String(rest))
                    }
                    break
                }
            }
            i += 1
        }
        guard i < arguments.count else { return arguments }
        switch resolve(arguments[i], among: commands) {
        case .command(let name):
            // `vmctl -s x help start`: help takes no options.
            if name == "help" { return [name] + arguments[(i + 1)...] }
            return [name] + globals + arguments[(i + 1)...]
        case .unknown(let word):
            throw RewriteError.unknown(word)
        case .ambiguous(let word, let candidates):
            throw RewriteError.ambiguous(word, candidates: candidates)
        }
    }
}
