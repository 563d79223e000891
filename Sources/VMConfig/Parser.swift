// The vm.conf recursive-descent parser. The grammar and most messages
// follow OpenBSD's usr.sbin/vmd/parse.y; unlike yacc's error recovery, a
// mistake inside a block only skips that one line, so every error of a file
// is reported in one run.

#if canImport(Glibc)
import Glibc
#endif

public enum ConfigParser {
    /// Where link group names are defined, first match wins (iproute2 reads
    /// /etc/iproute2/group; newer releases ship defaults in /usr/share).
    /// Tests point this at a fixture.
    nonisolated(unsafe) public static var linkGroupFiles = ["/etc/iproute2/group", "/usr/share/iproute2/group"]

    /// Parses the file at `path`. `macros` are `vmd -D name=value`
    /// definitions: they win over definitions of the same name in the file.
    /// Relative `include` paths are resolved against the including file's
    /// directory. Errors name the file as given here.
    ///
    /// `missingIsEmpty`: a top-level file that does not exist (ENOENT) is an
    /// empty configuration with a warning, as vmd runs without vm.conf.
    public static func parse(file path: String, macros: [String: String] = [:],
                             missingIsEmpty: Bool = false) -> Result<VMDConfiguration, ConfigErrors> {
        let context = ParseContext(macros: macros)
        if missingIsEmpty && access(path, F_OK) != 0 && errno == ENOENT {
            var empty = VMDConfiguration()
            empty.warnings.append(ConfigError(file: path, line: 0,
                                              message: "failed to open: No such file or directory; no VMs configured"))
            return .success(empty)
        }
        switch ConfigFile.read(path) {
        case .failure(let reason):
            return .failure(ConfigErrors([ConfigError(file: path, line: 0, message: "failed to open: \(reason.text)")]))
        case .success(let bytes):
            if let canonical = ConfigFile.canonicalPath(path) { context.includeStack.append(canonical) }
            FileParser(context: context, file: path, bytes: bytes,
                       directory: ConfigFile.directory(of: path)).parseFile()
        }
        return context.finish()
    }

    /// Parses configuration text; `filename` is used in messages and
    /// `includeDirectory` (default: the current directory) resolves
    /// relative `include` paths.
    public static func parse(text: String, filename: String,
                             macros: [String: String] = [:],
                             includeDirectory: String? = nil) -> Result<VMDConfiguration, ConfigErrors> {
        let context = ParseContext(macros: macros)
        FileParser(context: context, file: filename, bytes: Array(text.utf8),
                   directory: includeDirectory).parseFile()
        return context.finish()
    }

    /// Splits a `vmd -D name=value` argument at its last '=' (as vmd does);
    /// nil if there is no '=' or the name is not a valid macro name.
    public static func macroDefinition(_ argument: String) -> (name: String, value: String)? {
        guard let equals = argument.lastIndex(of: "=") else { return nil }
        let name = String(argument[..<equals])
        let value = String(argument[argument.index(after: equals)...])
        guard isValidMacroName(name) else { return nil }
        return (name, value)
    }

    static func isValidMacroName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { isAlphanumeric($0) || $0 == UInt8(ascii: "_") }
            && Keyword(rawValue: name) == nil
    }
}

/// State shared by a file and everything it includes.
final class ParseContext {
    var config = VMDConfiguration()
    let diagnostics = Diagnostics()
    let macros: MacroTable
    /// Canonical paths of the files being read, outermost first.
    var includeStack: [String] = []
    /// Link group names (iproute2's `group` file), read once per parse,
    /// when the first `group NAME` needs it.
    lazy var linkGroups: [String: UInt32] = LinkGroups.load(ConfigParser.linkGroupFiles)

    init(macros: [String: String]) {
        self.macros = MacroTable(overrides: macros)
    }

    func error(_ location: SourceLocation, _ message: String) {
        diagnostics.errors.append(ConfigError(location, message))
    }

    func warning(_ location: SourceLocation, _ message: String) {
        diagnostics.warnings.append(ConfigError(location, message))
    }

    /// Checks that need the whole file, then the verdict.
    func finish() -> Result<VMDConfiguration, ConfigErrors> {
        let switchNames = Set(config.switches.map(\.name))
        for vm in config.vms {
            for interface in vm.interfaces {
                if let name = interface.switchName, !switchNames.contains(name) {
                    error(interface.location, "vm \"\(vm.name)\": interface switch \"\(name)\" is not defined")
                } else if let name = interface.switchName, let rdomain = interface.rdomain,
                          let sw = config.switchConfiguration(named: name), rdomain != (sw.rdomain ?? 0) {
                    // Linux: a bridge port has no routing domain of its own.
                    warning(interface.location, "vm \"\(vm.name)\": interface rdomain \(rdomain) ignored: "
                        + "on Linux a tap on switch \"\(name)\" is a bridge port and the switch's rdomain "
                        + "(\(sw.rdomain ?? 0)) applies")
                }
            }
        }
        for name in macros.order {
            if let macro = macros.macros[name], !macro.used, let location = macro.definedAt {
                warning(location, "macro '\(name)' not used")
            }
        }
        if !diagnostics.errors.isEmpty { return .failure(ConfigErrors(diagnostics.errors)) }
        config.warnings = diagnostics.warnings
        return .success(config)
    }
}

/// Thrown after a syntax error has been reported; the caller skips ahead.
private struct SyntaxError: Error {}

final class FileParser {
    private let context: ParseContext
    private let file: String
    private let directory: String?
    private var lexer: Lexer
    private var lookahead: Token?

    init(context: ParseContext, file: String, bytes: [UInt8], directory: String?) {
        self.context = context
        self.file = file
        self.directory = directory
        self.lexer = Lexer(file: file, bytes: bytes, macros: context.macros, diagnostics: context.diagnostics)
    }

    // MARK: tokens

    private func peek() -> Token {
        if let token = lookahead { return token }
        let token = lexer.next()
        lookahead = token
        return token
    }

    @discardableResult
    private func advance() -> Token {
        let token = peek()
        lookahead = nil
        return token
    }

    private func location(_ token: Token) -> SourceLocation {
        SourceLocation(file: file, line: token.line)
    }

    private func error(_ token: Token, _ message: String) {
        context.error(location(token), message)
    }

    /// Reports "expected X, found Y" and abandons the statement. A token
    /// that is already a lexical error is not reported twice.
    private func fail(_ token: Token, expected: String) -> SyntaxError {
        if token.kind != .invalid {
            error(token, "syntax error: expected \(expected), found \(token.quotedForMessage)")
        }
        // A brace taken by mistake is given back, so that skipping to the
        // end of the statement still sees the block it opens or closes.
        if lookahead == nil && (isPunct(token, "{") || isPunct(token, "}")) { lookahead = token }
        return SyntaxError()
    }

    private func isPunct(_ token: Token, _ character: Unicode.Scalar) -> Bool {
        token.kind == .punct(UInt8(ascii: character))
    }

    private func isKeyword(_ token: Token, _ keyword: Keyword) -> Bool {
        token.kind == .keyword(keyword)
    }

    private func expect(_ keyword: Keyword, after what: String) throws {
        let token = advance()
        guard isKeyword(token, keyword) else { throw fail(token, expected: "'\(keyword.rawValue)' after \(what)") }
    }

    /// parse.y's `string`: one or more strings run together (`"a" "b"` is
    /// "ab"). A number is taken as its digits (`vm 1`, `owner 1000`).
    private func string(_ what: String) throws -> String {
        let token = advance()
        var text: String
        switch token.kind {
        case .string(let value, _): text = value
        case .number(let value): text = String(value)
        case .punct(let byte) where byte > 0x20 && byte < 0x7f && byte != UInt8(ascii: "{")
            && byte != UInt8(ascii: "}"):
            // vm.conf(5): arguments not starting with a letter, digit, '_'
            // or '/' must be quoted (`"./disk.img"`).
            throw fail(token, expected: what + " (quote arguments that start with other characters)")
        default: throw fail(token, expected: what)
        }
        while case .string(let more, _) = peek().kind {
            let next = advance()
            // Joined strings obey the lexer's limit too: `$big $big ...`
            // must not grow without bound.
            guard text.utf8.count + more.utf8.count <= ConfigLimits.maxTokenLength else {
                error(next, "string too long")
                throw SyntaxError()
            }
            text += more
        }
        return text
    }

    private func number(_ what: String) throws -> (Int64, Token) {
        let token = advance()
        guard case .number(let value) = token.kind else { throw fail(token, expected: what) }
        return (value, token)
    }

    private func skipNewlines() {
        while peek().kind == .newline { advance() }
    }

    /// After an error: skips to the end of the statement, stepping over
    /// whole `{ ... }` blocks. Stops before a `}` that closes the enclosing
    /// block so that block still ends where it should.
    private func skipStatement(insideBlock: Bool) {
        var depth = 0
        while true {
            let token = peek()
            switch token.kind {
            case .endOfFile:
                return
            case .newline where depth == 0:
                advance()
                return
            case .punct(UInt8(ascii: "{")):
                depth += 1
            case .punct(UInt8(ascii: "}")):
                if depth == 0 && insideBlock { return }
                depth = max(0, depth - 1)
            default:
                break
            }
            advance()
        }
    }

    /// A statement ends at a newline, at the `}` of its block, or at the end.
    private func endOfStatement(after what: String) throws {
        let token = peek()
        switch token.kind {
        case .newline: advance()
        case .endOfFile: break
        case .punct(UInt8(ascii: "}")): break
        default: throw fail(token, expected: "end of line after \(what)")
        }
    }

    /// `{ option \n option ... }`; `option` parses one option. An error in
    /// one option skips to the next line, and the block goes on.
    private func block(_ what: String, opened: Token, separatedByCommas: Bool = false,
                       _ option: () throws -> String) throws {
        let brace = advance()
        guard isPunct(brace, "{") else { throw fail(brace, expected: "'{' after \(what)") }
        while true {
            skipNewlines()
            let token = peek()
            if isPunct(token, "}") {
                advance()
                return
            }
            if token.kind == .endOfFile {
                error(opened, "\(what): expected '}' before end of file")
                throw SyntaxError()
            }
            do {
                let name = try option()
                if separatedByCommas && isPunct(peek(), ",") {
                    advance()
                } else {
                    try endOfStatementInBlock(after: name, separatedByCommas: separatedByCommas)
                }
            } catch {
                skipStatement(insideBlock: true)
            }
        }
    }

    private func endOfStatementInBlock(after what: String, separatedByCommas: Bool) throws {
        if separatedByCommas {
            // Interface options may share a line: `{ switch "a" up }`.
            let token = peek()
            if token.kind == .newline || isPunct(token, "}") || token.kind == .endOfFile { return }
            if case .keyword = token.kind { return }
            throw fail(token, expected: "end of line, ',' or '}' after \(what)")
        }
        try endOfStatement(after: what)
    }

    // MARK: top level

    func parseFile() {
        while true {
            let token = peek()
            switch token.kind {
            case .endOfFile:
                return
            case .newline:
                advance()
            default:
                do {
                    let what = try statement()
                    try endOfStatement(after: what)
                } catch {
                    skipStatement(insideBlock: false)
                }
            }
        }
    }

    private func statement() throws -> String {
        let token = advance()
        switch token.kind {
        case .keyword(.include): try include(token); return "include"
        case .keyword(.local): return try local(token)
        case .keyword(.socket):
            try expect(.owner, after: "'socket'")
            context.config.socketOwner = try owner(token)
            return "socket owner"
        case .keyword(.staggered): try staggered(token); return "staggered start"
        case .keyword(.switch): try switchBlock(token); return "switch block"
        case .keyword(.vm): try vmBlock(token); return "vm block"
        case .keyword(.vhostUser): try vhostUserBlock(token); return "vhost-user block"
        case .string(let name, _) where isPunct(peek(), "="):
            try macro(name, token)
            return "macro definition"
        case .keyword(let keyword) where isPunct(peek(), "="):
            error(token, "macro name '\(keyword.rawValue)' is a reserved word")
            throw SyntaxError()
        default:
            throw fail(token, expected: "vm, switch, vhost-user, include, local, socket owner, "
                + "staggered start or a macro definition")
        }
    }

    private func macro(_ name: String, _ token: Token) throws {
        advance() // '='
        let valueToken = advance()
        let value: String
        switch valueToken.kind {
        case .string(let text, _): value = text
        case .number(let number): value = String(number)
        default: throw fail(valueToken, expected: "a value after '\(name) ='")
        }
        guard ConfigParser.isValidMacroName(name) else {
            error(token, "invalid macro name: \"\(name)\" (expected letters, digits and '_')")
            return
        }
        context.macros.define(name, value, persistent: false, at: location(token))
    }

    private func include(_ token: Token) throws {
        let name = try string("a file name after 'include'")
        guard context.includeStack.count < ConfigLimits.maxIncludeDepth else {
            error(token, "include \"\(name)\": includes nested too deeply (at most \(ConfigLimits.maxIncludeDepth))")
            return
        }
        let path = ConfigFile.resolve(name, relativeTo: directory)
        let bytes: [UInt8]
        switch ConfigFile.read(path) {
        case .failure(let reason):
            error(token, "failed to include file \(name): \(reason.text)")
            return
        case .success(let contents):
            bytes = contents
        }
        let canonical = ConfigFile.canonicalPath(path) ?? path
        if context.includeStack.contains(canonical) {
            error(token, "include \"\(name)\": include loop (the file is already being read)")
            return
        }
        context.includeStack.append(canonical)
        defer { context.includeStack.removeLast() }
        FileParser(context: context, file: name, bytes: bytes,
                   directory: ConfigFile.directory(of: path)).parseFile()
    }

    private func local(_ token: Token) throws -> String {
        let next = advance()
        switch next.kind {
        case .keyword(.prefix):
            let text = try string("an IPv4 prefix after 'local prefix'")
            // As vmd's parse_prefix4: the length is 1 to 16 (vmd keeps the low
            // 16 bits for the VM id and interface index), /16 when omitted, and
            // bits set past it are "bad mask".
            guard let prefix = Validate.prefix(text.contains("/") ? text : text + "/16", inet6: false, maxLength: 16),
                  prefix.length >= 1 else {
                error(token, "invalid local prefix: \(text) (expected address/length with a length of 1 to 16, "
                    + "like 100.64.0.0/10)")
                return "local prefix"
            }
            guard LocalAddress.hostBitsClear(prefix4: prefix) else {
                error(token, "invalid local prefix: \(text): bad mask (bits set past /\(prefix.length))")
                return "local prefix"
            }
            context.config.localPrefix = prefix
            return "local prefix"
        case .keyword(.inet6):
            context.config.localInet6 = true
            context.config.localInet6Location = location(token)
            guard isKeyword(peek(), .prefix) else { return "local inet6" }
            advance()
            let text = try string("an IPv6 prefix after 'local inet6 prefix'")
            // As vmd's parse_prefix6: no length means /64; bits past the
            // length are "bad mask".
            guard let prefix = Validate.prefix(text.contains("/") ? text : text + "/64", inet6: true, maxLength: 64)
            else {
                error(token, "invalid local inet6 prefix: \(text) (expected address/length, length at most 64)")
                return "local inet6 prefix"
            }
            guard LocalAddress.hostBitsClear(prefix6: prefix) else {
                error(token, "invalid local inet6 prefix: \(text): bad mask (bits set past /\(prefix.length))")
                return "local inet6 prefix"
            }
            context.config.localInet6Prefix = prefix
            return "local inet6 prefix"
        default:
            throw fail(next, expected: "'prefix' or 'inet6' after 'local'")
        }
    }

    private func staggered(_ token: Token) throws {
        try expect(.start, after: "'staggered'")
        try expect(.parallel, after: "'staggered start'")
        let (parallel, parallelToken) = try number("a number after 'parallel'")
        try expect(.delay, after: "'staggered start parallel \(parallel)'")
        let (delay, delayToken) = try number("a number of seconds after 'delay'")
        var valid = true
        if !(1...1024).contains(parallel) {
            error(parallelToken, "invalid staggered start parallel: \(parallel) (expected 1 to 1024)")
            valid = false
        }
        if !(0...86400).contains(delay) {
            error(delayToken, "invalid staggered start delay: \(delay) (expected 0 to 86400 seconds)")
            valid = false
        }
        if valid {
            context.config.staggeredStart = StaggeredStart(parallel: Int(parallel), delaySeconds: Int(delay))
        }
    }

    /// `owner_id`: a number (a uid) or `user`, `user:group`, `:group`.
    private func owner(_ statement: Token) throws -> Owner? {
        let token = advance()
        switch token.kind {
        case .number(let uid):
            guard uid >= 0 && uid <= Int64(UInt32.max) - 1 else {
                error(token, "invalid owner: \(uid) (expected a user id from 0 to 4294967294)")
                return nil
            }
            return Owner(user: String(uid), group: nil)
        case .string(let text, _):
            switch Validate.owner(text) {
            case .success(let owner):
                // As vmd: names must exist now (numbers are ids as given).
                if let problem = Validate.ownerExists(owner) {
                    error(token, problem)
                    return nil
                }
                return owner
            case .failure(let reason):
                error(token, reason.text)
                return nil
            }
        default:
            throw fail(token, expected: "user, user:group or :group after 'owner'")
        }
    }

    // MARK: switch

    private func switchBlock(_ token: Token) throws {
        let name = try string("a switch name after 'switch'")
        var valid = true
        if let problem = Validate.name(name, what: "switch") {
            error(token, problem)
            valid = false
        }
        var sw = SwitchConfiguration(name: name, location: location(token))
        var seen: Set<String> = []
        try block("switch \"\(name)\"", opened: token) {
            let option = self.advance()
            switch option.kind {
            case .keyword(.enable): sw.enabled = true; return "enable"
            case .keyword(.disable): sw.enabled = false; return "disable"
            case .keyword(.up): sw.up = true; return "up"
            case .keyword(.down): sw.up = false; return "down"
            case .keyword(.group):
                let group = try self.string("a group name after 'group'")
                self.once("group", &seen, option)
                if let id = self.linkGroup(group, option) { sw.group = group; sw.groupID = id }
                return "group"
            case .keyword(.interface):
                let interface = try self.string("a bridge interface name after 'interface'")
                self.once("interface", &seen, option)
                if let problem = Validate.interfaceName(interface, what: "switch interface") {
                    self.error(option, problem)
                }
                sw.interface = interface
                return "interface"
            case .keyword(.locked):
                try self.expect(.lladdr, after: "'locked'")
                sw.lockedLladdr = true
                return "locked lladdr"
            case .keyword(.rdomain):
                sw.rdomain = try self.rdomain(option)
                return "rdomain"
            default:
                throw self.fail(option, expected: "a switch option (enable, disable, group, interface, "
                    + "locked lladdr, rdomain, up, down)")
            }
        }
        if sw.interface == nil {
            error(token, "switch \"\(name)\" is missing interface name")
            valid = false
        }
        if let first = context.config.switchConfiguration(named: name) {
            error(token, "switch \"\(name)\" is already defined at \(first.location)")
            valid = false
        }
        if valid { context.config.switches.append(sw) }
    }

    /// Reports a setting given twice in one block.
    private func once(_ what: String, _ seen: inout Set<String>, _ token: Token) {
        if !seen.insert(what).inserted { error(token, "\(what) specified more than once") }
    }

    /// A Linux link has one numeric group: `group` takes a number or a name
    /// that iproute2's group file defines (read here, at load time).
    private func linkGroup(_ text: String, _ option: Token) -> UInt32? {
        if !text.isEmpty, text.utf8.allSatisfy(isDigit) {
            guard let id = UInt32(text) else {
                error(option, "invalid group: \(text) (expected 0 to \(UInt32.max) or a name)")
                return nil
            }
            return id
        }
        if let problem = Validate.groupName(text) { error(option, problem); return nil }
        guard let id = context.linkGroups[text] else {
            error(option, "unknown group \"\(text)\": not a number and not defined in "
                + ConfigParser.linkGroupFiles.joined(separator: " or "))
            return nil
        }
        return id
    }

    private func rdomain(_ option: Token) throws -> Int? {
        let (value, token) = try number("a routing domain number after 'rdomain'")
        guard (0...Int64(ConfigLimits.maxRdomain)).contains(value) else {
            error(token, "invalid rdomain: \(value) (expected 0 to \(ConfigLimits.maxRdomain))")
            return nil
        }
        return Int(value)
    }

    // MARK: vhost-user

    /// `vhost-user NAME { type KIND; socket PATH; owner ID; disk PATH
    /// [readonly] | cdrom PATH | interface [NAME] [lladdr ADDR] }`.
    private func vhostUserBlock(_ token: Token) throws {
        let name = try string("a backend name after 'vhost-user'")
        var valid = true
        if let problem = Validate.name(name, what: "vhost-user") {
            error(token, problem)
            valid = false
        }
        var backend = VhostUserConfiguration(name: name, location: location(token))
        var seen: Set<String> = []
        try block("vhost-user \"\(name)\"", opened: token) { try self.vhostUserOption(&backend, &seen) }
        let what = "vhost-user \"\(name)\""
        guard let kind = backend.kind else {
            // A `type` given but not understood has been reported already.
            if !seen.contains("type") { error(token, "\(what) is missing its type (blk, scsi, rnd or net)") }
            return
        }
        if backend.socketPath == nil {
            error(token, "\(what) is missing its socket path")
            valid = false
        }
        // Each kind takes exactly its own file; anything else is a mistake
        // better reported than ignored.
        let given: [(String, Bool)] = [("disk", backend.disk != nil), ("cdrom", backend.cdrom != nil),
                                       ("interface", backend.hasInterface), ("lladdr", backend.lladdr != nil)]
        let wanted: Set<String>
        switch kind {
        case .blk: wanted = ["disk"]
        case .scsi: wanted = ["cdrom"]
        case .rnd: wanted = []
        case .net: wanted = ["interface", "lladdr"]
        }
        for (statement, present) in given where present && !wanted.contains(statement) {
            error(token, "\(what): type \(kind.rawValue) takes no \(statement)")
            valid = false
        }
        if kind == .blk && backend.disk == nil {
            error(token, "\(what): type blk needs a disk")
            valid = false
        }
        if kind == .scsi && backend.cdrom == nil {
            error(token, "\(what): type scsi needs a cdrom")
            valid = false
        }
        if backend.readOnly && kind != .blk {
            error(token, "\(what): readonly is for type blk")
            valid = false
        }
        if kind == .net && !backend.hasInterface {
            // Like `interfaces 1`: the next free tap.
            backend.hasInterface = true
        }
        if let earlier = context.config.vhostUser(named: name) {
            error(token, "\(what) is already defined at \(earlier.location)")
            valid = false
        }
        if valid, let path = backend.socketPath,
           let earlier = context.config.vhostUsers.first(where: { $0.socketPath == path }) {
            error(token, "\(what): socket \(path) is already used by vhost-user \"\(earlier.name)\" "
                + "at \(earlier.location)")
            valid = false
        }
        if valid && context.config.vhostUsers.count >= ConfigLimits.maxVhostUsers {
            error(token, "too many vhost-user backends (at most \(ConfigLimits.maxVhostUsers))")
            valid = false
        }
        if valid { context.config.vhostUsers.append(backend) }
    }

    private func vhostUserOption(_ backend: inout VhostUserConfiguration,
                                 _ seen: inout Set<String>) throws -> String {
        let option = advance()
        switch option.kind {
        case .keyword(.enable): backend.enabled = true; return "enable"
        case .keyword(.disable): backend.enabled = false; return "disable"
        case .keyword(.type):
            let kindToken = advance()
            let text: String
            switch kindToken.kind {
            case .keyword(.net): text = "net"
            case .string(let value, _): text = value
            default: throw fail(kindToken, expected: "blk, scsi, rnd or net after 'type'")
            }
            once("type", &seen, option)
            guard let kind = VhostUserKind(rawValue: text) else {
                error(kindToken, "unknown vhost-user type: \(text) (expected blk, scsi, rnd or net)")
                return "type"
            }
            backend.kind = kind
            return "type"
        case .keyword(.socket):
            let path = try string("a socket path after 'socket'")
            once("socket", &seen, option)
            if !path.hasPrefix("/") {
                error(option, "socket path must be absolute: \(path)")
            } else if path.utf8.count > ConfigLimits.maxSocketPathLength {
                error(option, "socket path too long: \(path) (at most \(ConfigLimits.maxSocketPathLength) bytes)")
            } else {
                backend.socketPath = path
            }
            return "socket"
        case .keyword(.owner):
            once("owner", &seen, option)
            backend.owner = try owner(option)
            return "owner"
        case .keyword(.disk):
            let (path, format) = try diskPathAndFormat(option)
            if isKeyword(peek(), .readonly) {
                advance()
                backend.readOnly = true
            }
            once("disk", &seen, option)
            if let resolved = existingPath(path, what: "disk", option) {
                backend.disk = Disk(path: resolved, format: format, location: location(option))
            }
            return "disk"
        case .keyword(.cdrom):
            backend.cdrom = try cdrom(option, &seen)
            return "cdrom"
        case .keyword(.interface):
            once("interface", &seen, option)
            backend.hasInterface = true
            if case .string(let name, _) = peek().kind {
                advance()
                if name != "tap" {
                    if let problem = Validate.interfaceName(name, what: "interface") {
                        error(option, problem)
                    } else {
                        backend.interfaceName = name
                    }
                }
            }
            return "interface"
        case .keyword(.lladdr):
            let text = try string("an address like fe:e1:ba:d0:00:01 after 'lladdr'")
            once("lladdr", &seen, option)
            switch Validate.lladdr(text) {
            case .success(let mac): backend.lladdr = mac
            case .failure(let reason): error(option, reason.text)
            }
            return "lladdr"
        default:
            throw fail(option, expected: "a vhost-user option (cdrom, disable, disk, enable, interface, lladdr, "
                + "owner, socket, type)")
        }
    }

    // MARK: statements of both vm and vhost-user blocks

    /// `disk PATH [format raw|qcow2]`: the path as written and the format, if named.
    private func diskPathAndFormat(_ option: Token) throws -> (String, DiskFormat?) {
        let path = try string("a disk image path after 'disk'")
        var format: DiskFormat?
        if isKeyword(peek(), .format) {
            advance()
            let name = try string("raw or qcow2 after 'format'")
            format = DiskFormat(rawValue: name.lowercased())
            if format == nil { error(option, "unrecognized disk format \(name) (expected raw or qcow2)") }
        }
        return (path, format)
    }

    /// `cdrom PATH`: the resolved path, or nil after reporting why not.
    private func cdrom(_ option: Token, _ seen: inout Set<String>) throws -> String? {
        let path = try string("an ISO image path after 'cdrom'")
        once("cdrom", &seen, option)
        return existingPath(path, what: "cdrom", option)
    }

    /// The real path of a file that must exist, or nil after a `file:line` error.
    private func existingPath(_ path: String, what: String, _ option: Token) -> String? {
        switch Validate.existingPath(path, what: what) {
        case .failure(let problem): error(option, problem.text); return nil
        case .success(let resolved): return resolved
        }
    }

    // MARK: vm

    private func vmBlock(_ token: Token) throws {
        let first = try string("a vm name after 'vm'")
        var name = first
        var parent: String?
        if isKeyword(peek(), .instance) {
            advance()
            name = try string("an instance name after 'vm \(quoted(first)) instance'")
            parent = first
        }
        var valid = true
        for checked in [parent, name].compactMap({ $0 }) {
            if let problem = Validate.name(checked, what: "vm") {
                error(token, problem)
                valid = false
            }
        }
        var vm = VMConfiguration(name: name, parent: parent, location: location(token))
        var seen: Set<String> = []
        try block("vm \"\(name)\"", opened: token) { try self.vmOption(&vm, &seen) }

        if valid, let earlier = context.config.vm(named: name) {
            error(token, "vm \"\(name)\" is already defined at \(earlier.location)")
            valid = false
        }
        if valid, let parent {
            if let parentVM = context.config.vm(named: parent) {
                let conflicts = context.config.instanceConflicts(vm, parent: context.config.resolved(parentVM))
                for (location, message) in conflicts { context.error(location, message) }
                valid = conflicts.isEmpty
            } else {
                error(token, "vm \"\(name)\": parent vm \"\(parent)\" is not defined before this instance")
                valid = false
            }
        }
        if parent == nil && vm.bootPath == nil {
            if vm.cmdline != nil {
                error(token, "vm \"\(name)\": cmdline needs a kernel to pass it to (add boot path)")
                valid = false
            }
            if vm.initrd != nil {
                error(token, "vm \"\(name)\": initrd needs a kernel to pass it to (add boot path)")
                valid = false
            }
        }
        if valid { context.config.vms.append(vm) }
    }

    private func vmOption(_ vm: inout VMConfiguration, _ seen: inout Set<String>) throws -> String {
        let option = advance()
        switch option.kind {
        case .keyword(.enable): vm.enabled = true; return "enable"
        case .keyword(.disable): vm.enabled = false; return "disable"
        case .keyword(.disk):
            let (path, format) = try diskPathAndFormat(option)
            if let resolved = existingPath(path, what: "disk", option) {
                if vm.disks.count >= ConfigLimits.maxDisks {
                    error(option, "too many disks (at most \(ConfigLimits.maxDisks))")
                } else {
                    vm.disks.append(Disk(path: resolved, format: format, location: location(option)))
                }
            }
            return "disk"
        case .keyword(.local):
            try expect(.interface, after: "'local'")
            try interface(&vm, option, isLocal: true)
            return "local interface"
        case .keyword(.interface):
            try interface(&vm, option, isLocal: false)
            return "interface"
        case .keyword(.boot):
            if isKeyword(peek(), .device) {
                advance()
                let deviceToken = advance()
                let device: BootDevice
                switch deviceToken.kind {
                case .keyword(.cdrom): device = .cdrom
                case .keyword(.disk): device = .disk
                case .keyword(.net): device = .net
                default: throw fail(deviceToken, expected: "cdrom, disk or net after 'boot device'")
                }
                once("boot device", &seen, option)
                vm.bootDevice = device
                return "boot device"
            }
            let path = try string("a kernel path or 'device' after 'boot'")
            once("boot", &seen, option)
            if let resolved = existingPath(path, what: "boot", option) { vm.bootPath = resolved }
            if isKeyword(peek(), .format) {
                advance()
                let formatToken = peek()
                let name = try string("linux, pvh or multiboot after 'boot path format'")
                if let format = KernelFormat(rawValue: name) {
                    vm.kernelFormat = format
                } else {
                    error(formatToken, "unknown boot format \(name) (expected linux, pvh or multiboot)")
                }
            }
            return "boot"
        case .keyword(.cdrom):
            vm.cdrom = try cdrom(option, &seen)
            return "cdrom"
        case .keyword(.interfaces):
            let (count, token) = try number("a number after 'interfaces'")
            once("interfaces", &seen, option)
            if count < 0 {
                error(token, "invalid interfaces: \(count) (expected 0 to \(ConfigLimits.maxInterfaces))")
            } else if count > ConfigLimits.maxInterfaces {
                error(token, "too many interfaces: \(count) (at most \(ConfigLimits.maxInterfaces))")
            } else {
                vm.interfaceCount = Int(count)
            }
            return "interfaces"
        case .keyword(.memory):
            try memory(&vm, option, &seen)
            return "memory"
        case .keyword(.owner):
            once("owner", &seen, option)
            vm.owner = try owner(option)
            return "owner"
        case .keyword(.allow):
            try expect(.instance, after: "'allow'")
            try allowInstance(&vm.allowInstance)
            return "allow instance"
        case .keyword(.cpus):
            let (count, token) = try number("a number after 'cpus'")
            once("cpus", &seen, option)
            if (1...Int64(ConfigLimits.maxCPUs)).contains(count) {
                vm.cpus = Int(count)
            } else {
                error(token, "invalid cpus: \(count) (expected 1 to \(ConfigLimits.maxCPUs))")
            }
            return "cpus"
        case .keyword(.cmdline):
            let text = try string("a quoted kernel command line after 'cmdline'")
            once("cmdline", &seen, option)
            if text.utf8.count > ConfigLimits.maxCmdlineLength {
                error(option, "cmdline too long (at most \(ConfigLimits.maxCmdlineLength) bytes)")
            } else {
                vm.cmdline = text
            }
            return "cmdline"
        case .keyword(.initrd):
            let path = try string("an initrd path after 'initrd'")
            once("initrd", &seen, option)
            if let resolved = existingPath(path, what: "initrd", option) { vm.initrd = resolved }
            return "initrd"
        case .string("virtio", quoted: false):
            // A word rather than a keyword, so "virtio" stays usable as a name.
            let transportToken = peek()
            let name = try string("pci or mmio after 'virtio'")
            once("virtio", &seen, option)
            if let transport = VirtioTransport(rawValue: name) {
                vm.virtioTransport = transport
            } else {
                error(transportToken, "unknown virtio transport \(name) (expected pci or mmio)")
            }
            return "virtio"
        default:
            throw fail(option, expected: "a vm option (allow instance, boot, cdrom, cmdline, cpus, disable, "
                + "disk, enable, initrd, interface, interfaces, local interface, memory, owner)")
        }
    }

    /// `memory N` (bytes) or `memory 512M`: at least 1M, rounded down to
    /// whole megabytes as vmd does.
    private func memory(_ vm: inout VMConfiguration, _ option: Token, _ seen: inout Set<String>) throws {
        let token = advance()
        let text: String
        let bytes: UInt64?
        switch token.kind {
        case .number(let value):
            text = String(value)
            bytes = value >= 0 ? UInt64(value) : nil
        case .string(let value, _):
            text = value
            bytes = Validate.scaledSize(value)
        default:
            throw fail(token, expected: "a size like 512M or 2G after 'memory'")
        }
        once("memory", &seen, option)
        guard let bytes else {
            error(token, "invalid memory size: \(text) (expected a number of bytes with an optional K, M, G "
                + "or T suffix)")
            return
        }
        if bytes < ConfigLimits.minMemoryBytes {
            error(token, "memory size must be at least 1M: \(text)")
            return
        }
        if bytes > ConfigLimits.maxMemoryBytes {
            error(token, "memory size too large: \(text) (at most \(Validate.formatSize(ConfigLimits.maxMemoryBytes)))")
            return
        }
        let rounded = bytes / ConfigLimits.minMemoryBytes * ConfigLimits.minMemoryBytes
        if rounded != bytes {
            context.warning(location(token), "memory size rounded to \(rounded >> 20)M")
        }
        vm.memoryBytes = rounded
    }

    /// `[local] interface [name] [{ options }|options]`.
    private func interface(_ vm: inout VMConfiguration, _ option: Token, isLocal: Bool) throws {
        var interface = Interface(isLocal: isLocal, location: location(option))
        var nameIsValid = true
        if case .string(let name, _) = peek().kind {
            advance()
            if name != "tap", let problem = Validate.interfaceName(name, what: "interface") {
                error(option, problem)
                nameIsValid = false
            }
            interface.name = name
        }
        var seen: Set<String> = []
        if isPunct(peek(), "{") {
            try block("interface", opened: option, separatedByCommas: true) {
                try self.interfaceOption(&interface, &seen)
            }
        } else {
            while isInterfaceOption(peek()) {
                _ = try interfaceOption(&interface, &seen)
                if isPunct(peek(), ",") { advance() }
            }
        }
        guard vm.interfaces.count < ConfigLimits.maxInterfaces else {
            error(option, "too many interfaces: \(vm.interfaces.count + 1) (at most \(ConfigLimits.maxInterfaces))")
            return
        }
        if nameIsValid { vm.interfaces.append(interface) }
    }

    private func isInterfaceOption(_ token: Token) -> Bool {
        switch token.kind {
        case .keyword(.switch), .keyword(.group), .keyword(.locked), .keyword(.lladdr),
             .keyword(.rdomain), .keyword(.up), .keyword(.down):
            return true
        default:
            return false
        }
    }

    private func interfaceOption(_ interface: inout Interface, _ seen: inout Set<String>) throws -> String {
        let option = advance()
        switch option.kind {
        case .keyword(.switch):
            let name = try string("a switch name after 'switch'")
            once("interface switch", &seen, option)
            if let problem = Validate.name(name, what: "switch") { error(option, problem) } else {
                interface.switchName = name
            }
            return "switch"
        case .keyword(.group):
            let group = try string("a group name after 'group'")
            once("interface group", &seen, option)
            if let id = linkGroup(group, option) { interface.group = group; interface.groupID = id }
            return "group"
        case .keyword(.locked), .keyword(.lladdr):
            if isKeyword(option, .locked) {
                try expect(.lladdr, after: "'locked'")
                interface.lockedLladdr = true
            }
            once("lladdr", &seen, option)
            // The address is optional: without one vmd picks a random one.
            switch peek().kind {
            case .string(let text, _):
                advance()
                switch Validate.lladdr(text) {
                case .success(let mac): interface.lladdr = mac
                case .failure(let reason): error(option, reason.text)
                }
            case .number(let value):
                advance()
                error(option, "invalid lladdr: \"\(value)\" (expected six hex bytes like fe:e1:ba:d0:00:01)")
            default:
                break
            }
            return interface.lockedLladdr ? "locked lladdr" : "lladdr"
        case .keyword(.rdomain):
            once("interface rdomain", &seen, option)
            interface.rdomain = try rdomain(option)
            return "rdomain"
        case .keyword(.up): interface.up = true; return "up"
        case .keyword(.down): interface.up = false; return "down"
        default:
            throw fail(option, expected: "an interface option (switch, group, lladdr, locked lladdr, rdomain, "
                + "up, down)")
        }
    }

    /// `allow instance flag` or `allow instance { flag, flag \n flag }`.
    private func allowInstance(_ allow: inout AllowInstance) throws {
        if !isPunct(peek(), "{") {
            try instanceFlag(&allow)
            return
        }
        let open = peek()
        try block("allow instance", opened: open, separatedByCommas: true) {
            try self.instanceFlag(&allow)
            return "allow instance option"
        }
    }

    private func instanceFlag(_ allow: inout AllowInstance) throws {
        let flag = advance()
        switch flag.kind {
        case .keyword(.boot): allow.boot = true
        case .keyword(.cdrom): allow.cdrom = true
        case .keyword(.disk): allow.disk = true
        case .keyword(.instance): allow.instance = true
        case .keyword(.interface): allow.interface = true
        case .keyword(.memory): allow.memory = true
        case .keyword(.owner): allow.owner = try owner(flag)
        default:
            throw fail(flag, expected: "an allow instance option (boot, cdrom, disk, instance, interface, "
                + "memory, owner)")
        }
    }
}
