import XCTest
import ArgumentParser
@testable import VMCtlCLI

final class CommandWordsTests: XCTestCase {
    let names = VMCtl.commandNames

    func testCommandList() {
        XCTAssertEqual(Set(names), ["console", "create", "load", "log", "pause", "reload", "reset", "start", "status",
                                    "show", "stop", "unpause", "wait", "help"])
    }

    func testUniquePrefixes() {
        XCTAssertEqual(CommandWords.resolve("stat", among: names), .command("status"))
        XCTAssertEqual(CommandWords.resolve("star", among: names), .command("start"))
        XCTAssertEqual(CommandWords.resolve("sto", among: names), .command("stop"))
        XCTAssertEqual(CommandWords.resolve("sh", among: names), .command("show"))
        XCTAssertEqual(CommandWords.resolve("unp", among: names), .command("unpause"))
        XCTAssertEqual(CommandWords.resolve("p", among: names), .command("pause"))
        XCTAssertEqual(CommandWords.resolve("con", among: names), .command("console"))
        XCTAssertEqual(CommandWords.resolve("cr", among: names), .command("create"))
        XCTAssertEqual(CommandWords.resolve("w", among: names), .command("wait"))
        XCTAssertEqual(CommandWords.resolve("rel", among: names), .command("reload"))
        XCTAssertEqual(CommandWords.resolve("stop", among: names), .command("stop"))
    }

    func testAmbiguousAndUnknown() {
        XCTAssertEqual(CommandWords.resolve("sta", among: names), .ambiguous("sta", candidates: ["start", "status"]))
        XCTAssertEqual(CommandWords.resolve("st", among: names),
                       .ambiguous("st", candidates: ["start", "status", "stop"]))
        XCTAssertEqual(CommandWords.resolve("lo", among: names), .ambiguous("lo", candidates: ["load", "log"]))
        XCTAssertEqual(CommandWords.resolve("c", among: names), .ambiguous("c", candidates: ["console", "create"]))
        XCTAssertEqual(CommandWords.resolve("re", among: names), .ambiguous("re", candidates: ["reload", "reset"]))
        XCTAssertEqual(CommandWords.resolve("frobnicate", among: names), .unknown("frobnicate"))
        XCTAssertEqual(CommandWords.resolve("", among: names), .unknown(""))
        XCTAssertEqual(CommandWords.resolve("statusx", among: names), .unknown("statusx"))
    }

    func testRewriteMovesGlobalOptionsAfterTheCommand() throws {
        XCTAssertEqual(try CommandWords.rewrite(["stat", "-r"], commands: names), ["status", "-r"])
        XCTAssertEqual(try CommandWords.rewrite(["-v", "-s", "/x.sock", "stat", "-r", "web"], commands: names),
                       ["status", "-v", "-s", "/x.sock", "-r", "web"])
        XCTAssertEqual(try CommandWords.rewrite(["-vs/x.sock", "unp", "web"], commands: names),
                       ["unpause", "-v", "-s", "/x.sock", "web"])
        XCTAssertEqual(try CommandWords.rewrite(["-s/x", "-v", "sto", "-fw", "web"], commands: names),
                       ["stop", "-s", "/x", "-v", "-fw", "web"])
        // A VM named like a command is not rewritten: only the command word is.
        XCTAssertEqual(try CommandWords.rewrite(["star", "stat"], commands: names), ["start", "stat"])
        XCTAssertEqual(try CommandWords.rewrite(["-s", "/x", "help", "sta"], commands: names), ["help", "sta"])
    }

    func testRewriteLeavesWhatItDoesNotKnow() throws {
        XCTAssertEqual(try CommandWords.rewrite([], commands: names), [])
        XCTAssertEqual(try CommandWords.rewrite(["--help"], commands: names), ["--help"])
        XCTAssertEqual(try CommandWords.rewrite(["-h"], commands: names), ["-h"])
        XCTAssertEqual(try CommandWords.rewrite(["-s"], commands: names), ["-s"])
        XCTAssertEqual(try CommandWords.rewrite(["-v"], commands: names), ["-v"])
    }

    func testRewriteErrors() {
        XCTAssertThrowsError(try CommandWords.rewrite(["-v", "sta"], commands: names)) { error in
            XCTAssertEqual("\(error)", "ambiguous command: sta (could be start, status)")
        }
        XCTAssertThrowsError(try CommandWords.rewrite(["bogus"], commands: names)) { error in
            XCTAssertEqual("\(error)", "unknown command: bogus")
        }
    }

    /// The rewritten words parse into the command with the global options.
    func testParsesAfterRewrite() throws {
        let words = try CommandWords.rewrite(["-s", "/tmp/v.sock", "sh", "-r", "--json", "web"], commands: names)
        let command = try VMCtl.parseAsRoot(words)
        let status = try XCTUnwrap(command as? VMCtl.Status)
        XCTAssertEqual(status.global.socket, "/tmp/v.sock")
        XCTAssertTrue(status.runningOnly)
        XCTAssertTrue(status.json)
        XCTAssertEqual(status.name, "web")

        let stop = try XCTUnwrap(try VMCtl.parseAsRoot(try CommandWords.rewrite(["sto", "-fw", "web"],
                                                                                    commands: names)) as? VMCtl.Stop)
        XCTAssertEqual(stop.flags, 3)
        XCTAssertEqual(stop.global.socket, "/run/vmd.sock")
        let all = try XCTUnwrap(try VMCtl.parseAsRoot(["stop", "-a"]) as? VMCtl.Stop)
        XCTAssertEqual(all.flags, 4)
        XCTAssertThrowsError(try VMCtl.parseAsRoot(["stop", "-a", "web"]))
        XCTAssertThrowsError(try VMCtl.parseAsRoot(["stop"]))
    }

    func testStartRequestFromFlags() throws {
        let kernel = FileManager.default.temporaryDirectory.appendingPathComponent("vmctl-kernel-\(getpid())")
        XCTAssertTrue(FileManager.default.createFile(atPath: kernel.path, contents: Data([1])))
        defer { try? FileManager.default.removeItem(at: kernel) }
        let cwd = FileManager.default.currentDirectoryPath
        // Relative paths are resolved by vmctl, in its own directory.
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(kernel.deletingLastPathComponent().path))
        defer { _ = FileManager.default.changeCurrentDirectoryPath(cwd) }

        let start = try XCTUnwrap(try VMCtl.parseAsRoot(
            ["start", "-b", kernel.lastPathComponent, "-m", "64M", "-d", "qcow2:" + kernel.lastPathComponent,
             "-n", "uplink", "-L", "-B", "disk", "-t", "base", "web"]) as? VMCtl.Start)
        let request = try start.request()
        let real = try XCTUnwrap(realpath(kernel.path, nil).map { p -> String in defer { free(p) }; return String(cString: p) })
        XCTAssertEqual(request.name, "web")
        XCTAssertEqual(request.bootPath, real)
        XCTAssertEqual(request.memoryBytes, 64 << 20)
        XCTAssertEqual(request.disks, ["qcow2:" + real])
        XCTAssertEqual(request.switchName, "uplink")
        XCTAssertTrue(request.localInterface)
        XCTAssertEqual(request.interfaceCount, 2)
        XCTAssertEqual(request.bootDevice, "disk")
        XCTAssertEqual(request.parent, "base")

        let bare = try XCTUnwrap(try VMCtl.parseAsRoot(["start", "web"]) as? VMCtl.Start)
        XCTAssertFalse(try bare.request().hasOverrides)

        for bad in [["-b", "/nonexistent/kernel"], ["-B", "floppy"], ["-i", "5"], ["-i", "0"], ["-m", "1K"],
                    ["-n", "a", "-n", "b"], ["-t", ".bad"], ["-d", "/no/such/disk"]] {
            let cmd = try XCTUnwrap(try VMCtl.parseAsRoot(["start"] + bad + ["web"]) as? VMCtl.Start)
            XCTAssertThrowsError(try cmd.request(), "\(bad) should be refused")
        }
        let badName = try XCTUnwrap(try VMCtl.parseAsRoot(["start", "-b", kernel.path, ".web"]) as? VMCtl.Start)
        XCTAssertThrowsError(try badName.request())
    }

    func testVMNames() {
        for good in ["web", "vm1.example.com", "a-b_c", "1", "W3b"] { XCTAssertNil(VMName.problem(good), good) }
        for bad in ["", ".web", "-web", "_web", "web server", "web/1", "wéb", String(repeating: "a", count: 64)] {
            XCTAssertNotNil(VMName.problem(bad), bad)
        }
        XCTAssertNil(VMName.problem(String(repeating: "a", count: 63)))
    }

    func testSmallWords() {
        XCTAssertEqual(VMCtl.Log.code("brief"), 0)
        XCTAssertEqual(VMCtl.Log.code("V"), 1)
        XCTAssertEqual(VMCtl.Log.code("verb"), 1)
        XCTAssertNil(VMCtl.Log.code(""))
        XCTAssertNil(VMCtl.Log.code("loud"))
        XCTAssertEqual(VMCtl.Reset.codes, ["all": 0, "vms": 1, "switches": 2])
        XCTAssertEqual(VMCtl.Stop.stoppingNames("stopping vm web: requested to shutdown\nstopping vm db: requested to shutdown"),
                       ["web", "db"])
        XCTAssertEqual(VMCtl.Stop.stoppingNames(""), [])
        XCTAssertTrue(Output.isLocated("/etc/vm.conf:12: syntax error"))
        XCTAssertFalse(Output.isLocated("permission denied: only root may do that"))
        XCTAssertFalse(Output.isLocated("start web: disk /a: No such file"))
    }
}
