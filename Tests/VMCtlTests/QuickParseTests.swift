import XCTest
@testable import VMCtlCLI

/// QuickParse (VMCtl without ArgumentParser's completion-script check)
/// parses ordinary command lines exactly as VMCtl does, and hands help,
/// completion and anything that does not parse back to VMCtl.
final class QuickParseTests: XCTestCase {
    func testSameCommandsAsVMCtl() throws {
        let status = try XCTUnwrap(QuickParse.parse(["status", "-s", "/tmp/v.sock", "-r", "--json", "web"]) as? VMCtl.Status)
        XCTAssertEqual(status.global.socket, "/tmp/v.sock")
        XCTAssertTrue(status.runningOnly)
        XCTAssertTrue(status.json)
        XCTAssertEqual(status.name, "web")
        let stop = try XCTUnwrap(QuickParse.parse(["stop", "-fw", "web"]) as? VMCtl.Stop)
        XCTAssertEqual(stop.flags, 3)
        XCTAssertEqual(stop.global.socket, "/run/vmd.sock")
        XCTAssertNotNil(QuickParse.parse(["show"]) as? VMCtl.Status)
    }

    func testHelpCompletionAndErrorsAreVMCtls() {
        for words in [["help"], ["status", "--help"], ["status", "-h"], ["--generate-completion-script", "bash"],
                      ["--experimental-dump-help"], ["status", "--bogus"], ["stop", "-a", "web"], [], ["nosuch"]] {
            XCTAssertNil(QuickParse.parse(words), "\(words)")
        }
    }
}
