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

/// VMCtl.commandWords and command(named:) (written out for start-up, issue 14) is exactly what
/// the commands' configurations say.
final class CommandTableTests: XCTestCase {
    func testTableMatchesTheConfigurations() {
        var fromConfigurations: [String: String] = [:]
        for c in VMCtl.subcommands {
            for word in [c.configuration.commandName!] + c.configuration.aliases { fromConfigurations[word] = "\(c)" }
        }
        var fromTable: [String: String] = [:]
        for word in VMCtl.commandWords { fromTable[word] = VMCtl.command(named: word).map { "\($0)" } }
        XCTAssertEqual(fromTable, fromConfigurations)
        XCTAssertEqual(VMCtl.commandWords.count, fromConfigurations.count)
        XCTAssertNil(VMCtl.command(named: "help"))
        XCTAssertNil(VMCtl.command(named: "stat"))
        XCTAssertEqual(Set(VMCtl.commandNames), Set(fromConfigurations.keys).union(["help"]))
    }

    func testOnlyTheChosenCommandIsInTheTree() throws {
        XCTAssertNotNil(QuickParse.parse(["pause", "web"]) as? VMCtl.Pause)
        XCTAssertEqual(QuickParse.configuration.subcommands.map { "\($0)" }, ["\(VMCtl.Pause.self)"])
        XCTAssertNotNil(QuickParse.parse(["show", "-r"]) as? VMCtl.Status)
        XCTAssertNil(QuickParse.parse(["-v", "status"]))   // not rewritten: VMCtl's
    }
}
