// The vm.conf lexer, following OpenBSD parse.y's yylex(): words, quoted
// strings, numbers, `$macro` expansion, `#` comments, backslash line
// continuation, and newlines as tokens (statements end at a newline).
// It works on bytes and never traps: every read is bounds-checked and every
// problem becomes an error token after the message has been recorded.

enum Keyword: String, CaseIterable, Sendable {
    case allow, boot, cdrom, cmdline, cpus, delay, device, disable, disk, down
    case enable, format, group, include, inet6, initrd, instance, interface
    case interfaces, lladdr, local, locked, memory, net, owner, parallel
    case prefix, rdomain, readonly, socket, staggered, start, `switch`, type, up
    case vhostUser = "vhost-user", vm
}

enum TokenKind: Equatable, Sendable {
    case keyword(Keyword)
    /// A word or a quoted string; `quoted` strings are never keywords.
    case string(String, quoted: Bool)
    case number(Int64)
    /// Any other single byte: `{`, `}`, `=`, `,` and stray characters.
    case punct(UInt8)
    case newline
    case endOfFile
    /// A lexical error, already reported; the rest of the line was skipped.
    case invalid
}

struct Token: Equatable, Sendable {
    var kind: TokenKind
    var line: Int

    init(_ kind: TokenKind, line: Int) {
        self.kind = kind
        self.line = line
    }

    /// How an error message names this token.
    var quotedForMessage: String {
        switch kind {
        case .keyword(let keyword): return "'\(keyword.rawValue)'"
        case .string(let text, _): return "\"\(text)\""
        case .number(let value): return "\(value)"
        case .punct(let byte):
            if byte >= 0x21 && byte < 0x7f { return "'\(Character(Unicode.Scalar(byte)))'" }
            let digits = "0123456789abcdef".utf8.map { $0 }
            let hex = String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xf)]], as: UTF8.self)
            return "byte 0x\(hex)"
        case .newline: return "end of line"
        case .endOfFile: return "end of file"
        case .invalid: return "invalid token"
        }
    }
}

/// Errors and warnings of one parse, shared by the lexers and parsers of
/// a file and the files it includes.
final class Diagnostics {
    var errors: [ConfigError] = []
    var warnings: [ConfigError] = []
}

/// The macro table shared by a file and the files it includes.
final class MacroTable {
    struct Macro {
        var value: String
        /// From `vmd -D`: a definition in the file does not override it.
        var persistent: Bool
        var used = false
        var definedAt: SourceLocation?
    }

    private(set) var macros: [String: Macro] = [:]
    /// Definition order, for stable "not used" warnings.
    private(set) var order: [String] = []

    init(overrides: [String: String]) {
        for name in overrides.keys.sorted() {
            if let value = overrides[name] { define(name, value, persistent: true, at: nil) }
        }
    }

    func define(_ name: String, _ value: String, persistent: Bool, at location: SourceLocation?) {
        if let existing = macros[name], existing.persistent { return }
        if macros[name] == nil { order.append(name) }
        macros[name] = Macro(value: value, persistent: persistent, definedAt: location)
    }

    func use(_ name: String) -> String? {
        guard var macro = macros[name] else { return nil }
        macro.used = true
        macros[name] = macro
        return macro.value
    }
}

struct Lexer {
    let file: String
    private let bytes: [UInt8]
    private var position = 0
    /// The line the next byte of the file is on.
    private(set) var line = 1
    /// Bytes given back by the lexer, read again before anything else. Each
    /// remembers whether it came from a macro expansion.
    private var pushback: [(byte: UInt8, expanded: Bool)] = []
    /// The text of the macro being expanded (and the bytes read ahead of
    /// it), read before the file goes on.
    private var expansion: [(byte: UInt8, expanded: Bool)] = []
    private var expansionPosition = 0
    private let macros: MacroTable
    /// Where lexical errors go, interleaved with the parser's own.
    private let diagnostics: Diagnostics

    init(file: String, bytes: [UInt8], macros: MacroTable, diagnostics: Diagnostics) {
        self.file = file
        self.bytes = bytes
        self.macros = macros
        self.diagnostics = diagnostics
    }

    // MARK: bytes

    /// The next byte, or nil at the end of the file.
    private mutating func rawByte() -> (byte: UInt8, expanded: Bool)? {
        if let last = pushback.popLast() { return last }
        if expansionPosition < expansion.count {
            let item = expansion[expansionPosition]
            expansionPosition += 1
            return item
        }
        guard position < bytes.count else { return nil }
        let byte = bytes[position]
        position += 1
        return (byte, false)
    }

    private mutating func unread(_ item: (byte: UInt8, expanded: Bool)?) {
        if let item { pushback.append(item) }
    }

    /// Outside quotes a backslash joins the next line, or else stands for
    /// the byte after it (parse.y's lgetc()).
    private mutating func byte() -> (byte: UInt8, expanded: Bool)? {
        while let item = rawByte() {
            guard item.byte == UInt8(ascii: "\\") else { return item }
            guard let next = rawByte() else { return nil }
            if next.byte == UInt8(ascii: "\n") {
                if !next.expanded { line += 1 }
                continue
            }
            return next
        }
        return nil
    }

    private mutating func error(_ message: String, line: Int) {
        diagnostics.errors.append(ConfigError(file: file, line: line, message: message))
    }

    /// Skips the rest of the line after an error, like parse.y's findeol():
    /// the newline is consumed, so the next token starts a new statement.
    private mutating func skipToEndOfLine() -> TokenKind {
        while let item = byte() {
            if item.byte == UInt8(ascii: "\n") {
                if !item.expanded { line += 1 }
                // The statement is over; give the parser its newline back.
                unread((UInt8(ascii: "\n"), true))
                break
            }
        }
        return .invalid
    }

    // MARK: tokens

    mutating func next() -> Token {
        while true {
            var item = byte()
            while let current = item, current.byte == UInt8(ascii: " ") || current.byte == UInt8(ascii: "\t")
                || current.byte == UInt8(ascii: "\r") {
                item = byte()
            }
            let start = line
            guard var current = item else { return Token(.endOfFile, line: start) }

            if current.byte == UInt8(ascii: "#") {
                while let next = byte() {
                    if next.byte == UInt8(ascii: "\n") { current = next; break }
                    current = next
                }
                if current.byte != UInt8(ascii: "\n") { return Token(.endOfFile, line: start) }
            }

            if current.byte == UInt8(ascii: "$") && !current.expanded {
                if let kind = expandMacro(line: start) { return Token(kind, line: start) }
                continue
            }

            switch current.byte {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                return Token(quotedString(quote: current.byte, line: start), line: start)
            case UInt8(ascii: "\n"):
                if !current.expanded { line += 1 }
                return Token(.newline, line: start)
            case 0:
                error("unexpected NUL byte", line: start)
                return Token(skipToEndOfLine(), line: start)
            default:
                break
            }

            if current.byte == UInt8(ascii: "-") || isDigit(current.byte) {
                if let kind = number(first: current, line: start) { return Token(kind, line: start) }
                // Not a number after all: the bytes were given back.
                current = rawByte() ?? current
                if current.byte == UInt8(ascii: "-") { return Token(.punct(current.byte), line: start) }
            }

            if isAlphanumeric(current.byte) || current.byte == UInt8(ascii: ":")
                || current.byte == UInt8(ascii: "_") || current.byte == UInt8(ascii: "/") {
                return Token(word(first: current, line: start), line: start)
            }
            return Token(.punct(current.byte), line: start)
        }
    }

    /// `$name`: the macro's text is read next, as if written here. Text from
    /// an expansion is not expanded again, so macros cannot recurse.
    private mutating func expandMacro(line start: Int) -> TokenKind? {
        var name: [UInt8] = []
        while let item = byte() {
            if isAlphanumeric(item.byte) || item.byte == UInt8(ascii: "_") {
                name.append(item.byte)
                if name.count > ConfigLimits.maxTokenLength {
                    error("string too long", line: start)
                    return skipToEndOfLine()
                }
                continue
            }
            unread(item)
            break
        }
        let text = String(decoding: name, as: UTF8.self)
        guard let value = macros.use(text) else {
            error("macro '\(text)' not defined", line: start)
            return skipToEndOfLine()
        }
        // parse.y pushes the text back in front of what was read ahead, so
        // bytes given back (the one ending the name) come after the value.
        let readAhead = Array(pushback.reversed())
        pushback.removeAll()
        let rest = expansion[expansionPosition...]
        expansion = value.utf8.map { (byte: $0, expanded: true) } + readAhead + rest
        expansionPosition = 0
        return nil
    }

    /// A quoted string: `\"` (or `\'`), `\ ` and `\<tab>` escape; a
    /// backslash before a newline joins lines; other backslashes stay.
    /// Newlines inside quotes are dropped, as parse.y does.
    private mutating func quotedString(quote: UInt8, line start: Int) -> TokenKind {
        var text: [UInt8] = []
        while true {
            guard let item = rawByte() else {
                error("reached end of file while parsing quoted string", line: start)
                return .invalid
            }
            var byte = item.byte
            if byte == UInt8(ascii: "\n") {
                if !item.expanded { line += 1 }
                continue
            } else if byte == UInt8(ascii: "\\") {
                guard let next = rawByte() else {
                    error("reached end of file while parsing quoted string", line: start)
                    return .invalid
                }
                if next.byte == quote || next.byte == UInt8(ascii: " ") || next.byte == UInt8(ascii: "\t") {
                    byte = next.byte
                } else if next.byte == UInt8(ascii: "\n") {
                    if !next.expanded { line += 1 }
                    continue
                } else {
                    unread(next)
                }
            } else if byte == quote {
                break
            } else if byte == 0 {
                error("unexpected NUL byte in quoted string", line: start)
                return skipToEndOfLine()
            }
            if text.count >= ConfigLimits.maxTokenLength {
                error("string too long", line: start)
                return skipToEndOfLine()
            }
            text.append(byte)
        }
        return .string(String(decoding: text, as: UTF8.self), quoted: true)
    }

    /// A number is `-`? digits followed by a blank, `)`, `,`, `/`, `}`, `=`
    /// or the end; anything else makes the bytes a word (`512M`, `10.0.0.1`).
    private mutating func number(first: (byte: UInt8, expanded: Bool), line start: Int) -> TokenKind? {
        var read: [(byte: UInt8, expanded: Bool)] = [first]
        var after: (byte: UInt8, expanded: Bool)?
        while true {
            after = byte()
            guard let item = after, isDigit(item.byte) else { break }
            read.append(item)
            if read.count > ConfigLimits.maxTokenLength {
                error("string too long", line: start)
                return skipToEndOfLine()
            }
        }
        let endsNumber: Bool
        if let item = after {
            let b = item.byte
            endsNumber = b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") || b == UInt8(ascii: "\n")
                || b == UInt8(ascii: "\r") || b == UInt8(ascii: ")") || b == UInt8(ascii: ",")
                || b == UInt8(ascii: "/") || b == UInt8(ascii: "}") || b == UInt8(ascii: "=")
        } else {
            endsNumber = true
        }
        unread(after)
        let isBareMinus = read.count == 1 && first.byte == UInt8(ascii: "-")
        if endsNumber && !isBareMinus {
            let text = String(decoding: read.map(\.byte), as: UTF8.self)
            guard let value = Int64(text) else {
                let reason = first.byte == UInt8(ascii: "-") ? "too small" : "too large"
                error("\"\(text)\" invalid number: \(reason)", line: start)
                return skipToEndOfLine()
            }
            return .number(value)
        }
        for item in read.reversed() { unread(item) }
        return nil
    }

    /// A bare word; keywords are recognised here, never in quotes.
    private mutating func word(first: (byte: UInt8, expanded: Bool), line start: Int) -> TokenKind {
        var text: [UInt8] = [first.byte]
        while let item = byte() {
            guard allowedInWord(item.byte) else {
                unread(item)
                break
            }
            if text.count >= ConfigLimits.maxTokenLength {
                error("string too long", line: start)
                return skipToEndOfLine()
            }
            text.append(item.byte)
        }
        let string = String(decoding: text, as: UTF8.self)
        if let keyword = Keyword(rawValue: string) { return .keyword(keyword) }
        return .string(string, quoted: false)
    }
}

// ASCII classes as in the C locale; bytes >= 0x80 belong to none of them.
func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }

func isAlphanumeric(_ byte: UInt8) -> Bool {
    isDigit(byte) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
}

/// parse.y's allowed_in_string(): alphanumerics and punctuation except
/// the bytes that separate tokens.
func allowedInWord(_ byte: UInt8) -> Bool {
    if isAlphanumeric(byte) { return true }
    guard byte >= 0x21 && byte <= 0x7e else { return false }
    switch byte {
    case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "{"), UInt8(ascii: "}"),
         UInt8(ascii: "!"), UInt8(ascii: "="), UInt8(ascii: "#"), UInt8(ascii: ","):
        return false
    default:
        return true
    }
}
