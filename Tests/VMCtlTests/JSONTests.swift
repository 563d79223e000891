import XCTest
import Foundation
@testable import VMCtlCLI
import VMDControl

/// vmctl's own JSON writer (it replaced JSONEncoder so that vmctl needs no
/// Foundation): escapes as RFC 8259 says, and Foundation reads it back.
final class JSONTests: XCTestCase {
    func testEscapes() throws {
        let tricky = "a\"b\\c/d\n\r\t\u{08}\u{0C}\u{01}\u{1F}é€😀"
        let text = JSON.text(.array([.string(tricky), .int(-5), .uint(UInt64.max), .null,
                                     .object([("k", .string("v")), ("e", .array([]))])]))
        XCTAssertEqual(text, "[\"a\\\"b\\\\c/d\\n\\r\\t\\b\\f\\u0001\\u001fé€😀\",-5,18446744073709551615,null,{\"k\":\"v\",\"e\":[]}]")
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [Any])
        XCTAssertEqual(parsed.first as? String, tricky)
    }

    /// The same bytes JSONEncoder gave with sortedKeys and unescaped slashes.
    func testStatusJSONIsCompactAndSorted() {
        let vm = VMInfo(id: 7, pid: 0, vcpus: 2, maxMemory: 1 << 30, curMemory: 0, tty: "",
                        owner: "", state: "stopped", name: "a/b")
        XCTAssertEqual(StatusTable.json([vm]),
                       "[{\"curmem\":null,\"id\":7,\"maxmem\":1073741824,\"name\":\"a/b\",\"owner\":\"root\","
                       + "\"pid\":null,\"state\":\"stopped\",\"tty\":null,\"vcpus\":2}]\n")
    }
}
