// The vm.conf lexer on its own: what each byte sequence becomes, on which
// line, and that hostile input ends in an error token, never a trap.

import XCTest
@testable import VMConfig

final class LexerTests: XCTestCase {
    /// All tokens of `text` (up to the end of the file) and the errors.
    private func lex(_ text: String, macros: [String: String] = [:]) -> (tokens: [Token], errors: [String]) {
        lex(bytes: Array(text.utf8), macros: macros)
    }

    private func lex(bytes: [UInt8], macros: [String: String] = [:]) -> (tokens: [Token], errors: [String]) {
        let diagnostics = Diagnostics()
        var lexer = Lexer(file: "t.conf", bytes: bytes, macros: MacroTable(overrides: macros),
                          diagnostics: diagnostics)
        var tokens: [Token] = []
        while tokens.count < 100_000 {
            let token = lexer.next()
            if token.kind == .endOfFile { break }
            tokens.append(token)
        }
        return (tokens, diagnostics.errors.map(\.description))
    }

    private func kinds(_ text: String, macros: [String: String] = [:]) -> [TokenKind] {
        lex(text, macros: macros).tokens.map(\.kind)
    }

    private func word(_ text: String) -> TokenKind { .string(text, quoted: false) }
    private func quoted(_ text: String) -> TokenKind { .string(text, quoted: true) }
    private func punct(_ character: Unicode.Scalar) -> TokenKind { .punct(UInt8(ascii: character)) }

    func testKeywordsWordsAndPunctuation() {
        XCTAssertEqual(kinds("vm \"web\" { memory 1G }\n"),
                       [.keyword(.vm), quoted("web"), punct("{"), .keyword(.memory), word("1G"), punct("}"),
                        .newline])
        // A quoted keyword is just a string.
        XCTAssertEqual(kinds("\"memory\" memory"), [quoted("memory"), .keyword(.memory)])
        XCTAssertEqual(kinds("a=b"), [word("a"), punct("="), word("b")])
        XCTAssertEqual(kinds("x,y"), [word("x"), punct(","), word("y")])
    }

    func testNumbers() {
        XCTAssertEqual(kinds("512 -7 0"), [.number(512), .number(-7), .number(0)])
        // Digits followed by anything but a separator make a word.
        XCTAssertEqual(kinds("512M 10.0.0.1 100.64.0.0/10 00:11:22:33:44:55"),
                       [word("512M"), word("10.0.0.1"), word("100.64.0.0/10"), word("00:11:22:33:44:55")])
        // '/' ends a number (parse.y's allowed_to_end_number).
        XCTAssertEqual(kinds("10/8"), [.number(10), word("/8")])
        XCTAssertEqual(kinds("5}"), [.number(5), punct("}")])
        XCTAssertEqual(kinds("- x"), [punct("-"), word("x")])
        XCTAssertEqual(kinds("9223372036854775807"), [.number(Int64.max)])
        XCTAssertEqual(kinds("-9223372036854775808"), [.number(Int64.min)])
    }

    func testHugeNumbersAreErrorsNotTraps() {
        let result = lex("cpus 9223372036854775808 more\nnext")
        XCTAssertEqual(result.tokens.map(\.kind), [.keyword(.cpus), .invalid, .newline, word("next")])
        XCTAssertEqual(result.errors, ["t.conf:1: \"9223372036854775808\" invalid number: too large"])
        XCTAssertEqual(lex("-99999999999999999999").errors,
                       ["t.conf:1: \"-99999999999999999999\" invalid number: too small"])
    }

    func testQuotedStringEscapes() {
        XCTAssertEqual(kinds(#""a \"b\" c""#), [quoted("a \"b\" c")])
        XCTAssertEqual(kinds(#"'it\'s'"#), [quoted("it's")])
        // `\ ` and `\<tab>` are escapes; other backslashes stay.
        XCTAssertEqual(kinds("\"a\\ b\\\tc\""), [quoted("a b\tc")])
        XCTAssertEqual(kinds(#""C:\path\n""#), [quoted(#"C:\path\n"#)])
        // The other quote character needs no escape.
        XCTAssertEqual(kinds(#""say 'hi'""#), [quoted("say 'hi'")])
        // A backslash-newline inside quotes joins the lines.
        XCTAssertEqual(kinds("\"ab\\\ncd\""), [quoted("abcd")])
        XCTAssertEqual(kinds("\"\""), [quoted("")])
    }

    func testCommentsAndLineNumbers() {
        let result = lex("# comment\nvm # trailing\n\n  \"two\nlines\" x\ny")
        XCTAssertEqual(result.tokens.map(\.kind),
                       [.newline, .keyword(.vm), .newline, .newline, quoted("twolines"), word("x"), .newline,
                        word("y")])
        XCTAssertEqual(result.tokens.map(\.line), [1, 2, 2, 3, 4, 5, 5, 6])
        XCTAssertTrue(result.errors.isEmpty)
        // A comment ending the file without a newline.
        XCTAssertEqual(kinds("vm # the end"), [.keyword(.vm)])
    }

    func testLineContinuationOutsideQuotes() {
        let result = lex("disk \\\n  \"/a\"\nmem\\\nory")
        XCTAssertEqual(result.tokens.map(\.kind), [.keyword(.disk), quoted("/a"), .newline, .keyword(.memory)])
        XCTAssertEqual(result.tokens.map(\.line), [1, 2, 2, 3])
    }

    func testMacroExpansion() {
        XCTAssertEqual(kinds("boot $k", macros: ["k": "/bsd"]), [.keyword(.boot), word("/bsd")])
        // The value is text: it may hold several tokens, keywords included.
        XCTAssertEqual(kinds("$opts\n", macros: ["opts": "memory 1G"]),
                       [.keyword(.memory), word("1G"), .newline])
        // The expansion joins the word it is written in.
        XCTAssertEqual(kinds("$dir/a.img", macros: ["dir": "/var/vm"]), [word("/var/vm/a.img")])
        // Not inside quotes.
        XCTAssertEqual(kinds("\"$k\"", macros: ["k": "x"]), [quoted("$k")])
        // Not recursively: a '$' in a value is a plain character.
        XCTAssertEqual(kinds("$a", macros: ["a": "$a"]), [punct("$"), word("a")])
        // Line numbers are not disturbed.
        let result = lex("$a\nb", macros: ["a": "x y"])
        XCTAssertEqual(result.tokens.map(\.line), [1, 1, 1, 2])
    }

    func testUndefinedMacroSkipsTheLine() {
        let result = lex("boot $nope rest\nvm")
        XCTAssertEqual(result.tokens.map(\.kind), [.keyword(.boot), .invalid, .newline, .keyword(.vm)])
        XCTAssertEqual(result.errors, ["t.conf:1: macro 'nope' not defined"])
    }

    func testUnterminatedString() {
        let result = lex("boot \"/never/ends\nmore")
        XCTAssertEqual(result.tokens.map(\.kind), [.keyword(.boot), .invalid])
        XCTAssertEqual(result.errors, ["t.conf:1: reached end of file while parsing quoted string"])
        XCTAssertEqual(lex("\"trailing backslash\\").errors,
                       ["t.conf:1: reached end of file while parsing quoted string"])
    }

    func testNulBytes() {
        let result = lex(bytes: Array("vm\0 x\nboot \"a\0b\"\ny".utf8))
        XCTAssertEqual(result.tokens.map(\.kind),
                       [.keyword(.vm), .invalid, .newline, .keyword(.boot), .invalid, .newline, word("y")])
        XCTAssertEqual(result.errors, ["t.conf:1: unexpected NUL byte",
                                       "t.conf:2: unexpected NUL byte in quoted string"])
    }

    func testStringTooLong() {
        let long = String(repeating: "a", count: ConfigLimits.maxTokenLength + 1)
        XCTAssertEqual(lex("\"\(long)\"\n").errors, ["t.conf:1: string too long"])
        XCTAssertEqual(lex(long).errors, ["t.conf:1: string too long"])
        let fits = String(repeating: "a", count: ConfigLimits.maxTokenLength)
        XCTAssertEqual(kinds("\"\(fits)\""), [quoted(fits)])
    }

    func testHighAndControlBytesAreSingleTokens() {
        let result = lex(bytes: [0xff, 0x20, 0x01, 0x20, UInt8(ascii: "("), 0x0a])
        XCTAssertEqual(result.tokens.map(\.kind), [.punct(0xff), .punct(0x01), punct("("), .newline])
        XCTAssertEqual(Token(.punct(0x01), line: 1).quotedForMessage, "byte 0x01")
    }

    /// Random bytes (a fixed seed, so failures repeat) must always come to
    /// an end without trapping.
    func testRandomBytesNeverTrap() {
        var generator = SplitMix64(seed: 0x766d_642e_636f_6e66)
        let alphabet = Array("vm{}\"'\\$#=,- \t\n0123456789abcdefGM:/.\0".utf8)
        for _ in 0..<500 {
            let count = Int(generator.next() % 200)
            let bytes = (0..<count).map { _ in
                generator.next() % 4 == 0 ? UInt8(truncatingIfNeeded: generator.next())
                    : alphabet[Int(generator.next() % UInt64(alphabet.count))]
            }
            let result = lex(bytes: bytes, macros: ["a": "$a {", "b": "\"x"])
            XCTAssertLessThan(result.tokens.count, 100_000)
        }
    }
}

/// A tiny deterministic generator for fuzz-style tests.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
