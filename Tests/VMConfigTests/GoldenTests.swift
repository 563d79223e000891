// Golden-file tests in the style of OpenBSD's regress/usr.sbin/vmd/config:
// Golden/pass-N.conf must parse and print exactly pass-N.ok (warnings first,
// then the canonical configuration); Golden/fail-N.conf must fail with
// exactly the error lines of fail-N.ok. Lines `# -D name=value` in a .conf
// are passed as `vmd -D` macros. Files are parsed with the Golden directory
// as the current directory, so messages name them as `fail-3.conf`. Files
// they name for boot, disk and cdrom exist under Golden/images (the parser
// resolves them with realpath, as vmd's does).

import Foundation
import XCTest
@testable import VMConfig

final class GoldenTests: XCTestCase {
    private var goldenDirectory: URL!
    private var savedDirectory = ""

    override func setUpWithError() throws {
        goldenDirectory = try XCTUnwrap(Bundle.module.url(forResource: "Golden", withExtension: nil),
                                        "the Golden resource directory is missing from the test bundle")
        ConfigParser.linkGroupFiles = [goldenDirectory.appendingPathComponent("link-groups").path]
        savedDirectory = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(goldenDirectory.path))
    }

    override func tearDown() {
        _ = FileManager.default.changeCurrentDirectoryPath(savedDirectory)
    }

    /// The `# -D name=value` lines of a golden file.
    static func macros(in text: String) -> [String: String] {
        var macros: [String: String] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) where line.hasPrefix("# -D ") {
            if let definition = ConfigParser.macroDefinition(String(line.dropFirst(5))) {
                macros[definition.name] = definition.value
            }
        }
        return macros
    }

    /// What `vmd -nv -f FILE` would show: warnings, then the configuration;
    /// or the errors, one per line.
    static func output(of result: Result<VMDConfiguration, ConfigErrors>) -> String {
        let text: String
        switch result {
        case .success(let config):
            text = config.warnings.map { "warning: \($0)\n" }.joined() + config.printed()
        case .failure(let errors):
            text = errors.errors.map { "\($0)\n" }.joined()
        }
        // Paths are resolved with realpath: files under images/ print as
        // absolute paths into the Golden directory, shown relative here.
        let cwd = FileManager.default.currentDirectoryPath
        let real = realpath(cwd, nil).map { p in defer { free(p) }; return String(cString: p) } ?? cwd
        return text.replacingOccurrences(of: real + "/", with: "")
    }

    private func goldenNames(_ prefix: String) throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: goldenDirectory.path)
        return names.filter { $0.hasPrefix(prefix + "-") && $0.hasSuffix(".conf") }
            .sorted { $0.localizedStandardCompare($1) == .orderedAscending }
    }

    private func check(_ name: String, expectSuccess: Bool) throws {
        let confText = try String(contentsOfFile: name, encoding: .isoLatin1)
        let okName = String(name.dropLast(".conf".count)) + ".ok"
        let expected = try String(contentsOfFile: okName, encoding: .utf8)
        let result = ConfigParser.parse(file: name, macros: Self.macros(in: confText))
        switch result {
        case .success where !expectSuccess: XCTFail("\(name): parsed, but it must fail")
        case .failure(let errors) where expectSuccess: XCTFail("\(name): failed:\n\(errors)")
        default: break
        }
        XCTAssertEqual(Self.output(of: result), expected, "\(name) differs from \(okName)")

        // The canonical form must parse back to itself.
        if case .success(let config) = result {
            let printed = config.printed()
            switch ConfigParser.parse(text: printed, filename: "printed-\(name)") {
            case .success(let again): XCTAssertEqual(again.printed(), printed, "\(name): printed form is unstable")
            case .failure(let errors): XCTFail("\(name): printed form does not parse:\n\(errors)\n\(printed)")
            }
        }
    }

    func testPassFiles() throws {
        let names = try goldenNames("pass")
        XCTAssertGreaterThanOrEqual(names.count, 20)
        for name in names { try check(name, expectSuccess: true) }
    }

    func testFailFiles() throws {
        let names = try goldenNames("fail")
        XCTAssertGreaterThanOrEqual(names.count, 20)
        for name in names { try check(name, expectSuccess: false) }
    }

    /// Every error line of a fail file names the file and a line number.
    func testFailOutputsAreFileLineMessage() throws {
        for name in try goldenNames("fail") {
            let expected = try String(contentsOfFile: String(name.dropLast(5)) + ".ok", encoding: .utf8)
            XCTAssertFalse(expected.isEmpty, "\(name): no expected errors")
            for line in expected.split(separator: "\n") {
                let parts = line.split(separator: ":", maxSplits: 2)
                XCTAssertEqual(parts.count, 3, "\(name): \(line)")
                XCTAssertTrue(parts[0].hasSuffix(".conf"), "\(name): \(line)")
                XCTAssertNotNil(Int(parts[1]), "\(name): \(line)")
            }
        }
    }

    /// Every statement of vm.conf appears in at least one passing file.
    func testPassFilesCoverEveryStatement() throws {
        var all = ""
        for name in try goldenNames("pass") { all += try String(contentsOfFile: name, encoding: .isoLatin1) }
        for name in try FileManager.default.contentsOfDirectory(atPath: "include") {
            all += try String(contentsOfFile: "include/" + name, encoding: .isoLatin1)
        }
        let statements = ["include ", "local prefix", "local inet6 prefix", "local inet6\n", "socket owner",
                          "staggered start parallel", "switch \"", "instance \"", "enable", "disable",
                          "format qcow2", "format raw", "cdrom \"", "boot \"", "boot device cdrom",
                          "boot device disk", "boot device net", "memory ", "interfaces ", "local interface",
                          "interface tap", "switch \"uplink\"", "locked lladdr", "lladdr fe:", "group ",
                          "rdomain ", "up\n", "down\n", "owner ", "allow instance", "cpus ", "cmdline ",
                          "initrd ", "$", "# -D "]
        for statement in statements {
            XCTAssertTrue(all.contains(statement), "no pass file uses \(statement.debugDescription)")
        }
    }
}
