import Foundation
import XCTest

/// `vmctl create`: the built binary makes images that qemu-img checks,
/// with the right size and base; -i conversions compare equal.
final class CreateTests: XCTestCase {
    var dir = ""
    var vmctl: String {
        URL(fileURLWithPath: CommandLine.arguments.first ?? "").deletingLastPathComponent()
            .appendingPathComponent("vmctl").path
    }

    override func setUpWithError() throws {
        guard FileManager.default.isExecutableFile(atPath: vmctl) else { throw XCTSkip("vmctl is not built next to the tests") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/qemu-img") else {
            throw XCTSkip("needs /usr/bin/qemu-img (Debian's qemu-utils)")
        }
        dir = NSTemporaryDirectory() + "vmctl-create-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) }
    }

    @discardableResult
    func run(_ tool: String, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: dir)
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func info(_ name: String) throws -> [String: Any] {
        let r = try run("/usr/bin/qemu-img", ["info", "--output=json", name])
        XCTAssertEqual(r.status, 0, r.err)
        return try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any] ?? [:]
    }

    func check(_ name: String, line: UInt = #line) throws {
        let r = try run("/usr/bin/qemu-img", ["check", name])
        XCTAssertEqual(r.status, 0, r.out + r.err, line: line)
    }

    func testCreateEmptyOverlayAndConvert() throws {
        var r = try run(vmctl, ["create", "-s", "1G", "disk.qcow2"])
        XCTAssertEqual(r.status, 0)
        XCTAssertEqual(r.err, "vmctl: qcow2 imagefile created\n")
        try check("disk.qcow2")
        XCTAssertEqual(try info("disk.qcow2")["virtual-size"] as? Int, 1 << 30)
        XCTAssertEqual(try info("disk.qcow2")["format"] as? String, "qcow2")

        r = try run(vmctl, ["create", "-s", "100M", "disk.img"])
        XCTAssertEqual(r.err, "vmctl: raw imagefile created\n")
        XCTAssertEqual(try info("disk.img")["format"] as? String, "raw")
        XCTAssertEqual(try info("disk.img")["virtual-size"] as? Int, 100 << 20)
        r = try run(vmctl, ["-v", "cr", "-s", "2M", "qcow2:plain"])
        XCTAssertEqual(try info("plain")["format"] as? String, "qcow2")
        XCTAssertEqual(r.status, 0)
        // Mode 0600, as vmctl creates images.
        let mode = try FileManager.default.attributesOfItem(atPath: dir + "/disk.img")[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)

        // Never overwrites.
        r = try run(vmctl, ["create", "-s", "1G", "disk.qcow2"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.err, "vmctl: create imagefile operation failed: File exists\n")

        // An overlay takes the base's size; its backing file is named as given.
        XCTAssertEqual(try run(vmctl, ["create", "-s", "64M", "base.qcow2"]).status, 0)
        r = try run(vmctl, ["create", "-b", "base.qcow2", "over.qcow2"])
        XCTAssertEqual(r.status, 0, r.err)
        try check("over.qcow2")
        let overlay = try info("over.qcow2")
        XCTAssertEqual(overlay["virtual-size"] as? Int, 64 << 20)
        XCTAssertEqual(overlay["backing-filename"] as? String, "base.qcow2")
        XCTAssertEqual(overlay["backing-filename-format"] as? String, "qcow2")
        let chain = try run("/usr/bin/qemu-img", ["info", "--backing-chain", "over.qcow2"]).out
        XCTAssertTrue(chain.contains("image: over.qcow2") && chain.contains("image: base.qcow2"), chain)

        XCTAssertEqual(try run(vmctl, ["create", "-b", "disk.qcow2", "-s", "2G", "o2.qcow2"]).err,
                       "vmctl: base size does not match requested size\n")
        XCTAssertEqual(try run(vmctl, ["create", "-b", "disk.qcow2", "o3.img"]).err,
                       "vmctl: base images require qcow2 disk format\n")
        XCTAssertEqual(try run(vmctl, ["create", "-b", "disk.qcow2", "-i", "disk.img", "o4.img"]).err,
                       "vmctl: conflicting -b and -i arguments\n")
        r = try run(vmctl, ["create", "nosize.img"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("vmctl: could not create nosize.img: missing size argument\nusage: vmctl create"), r.err)
        XCTAssertEqual(try run(vmctl, ["create", "-s", "100K", "small.img"]).err, "vmctl: disk size must be at least 1MB\n")
        XCTAssertEqual(try run(vmctl, ["create", "-s", "12Q", "bad.img"]).err, "vmctl: invalid disk size: 12Q\n")

        // -i: raw -> qcow2 -> raw, with data written by qemu-io.
        XCTAssertEqual(try run("/usr/bin/qemu-io", ["-f", "raw", "-c", "write -P 0x42 1M 3M", "-c", "write -P 7 99M 1M",
                                                   "disk.img"]).status, 0)
        r = try run(vmctl, ["create", "-i", "disk.img", "conv.qcow2"])
        XCTAssertEqual(r.err, "vmctl: qcow2 imagefile created\n")
        try check("conv.qcow2")
        XCTAssertEqual(try run("/usr/bin/qemu-img", ["compare", "disk.img", "conv.qcow2"]).status, 0)
        r = try run(vmctl, ["create", "-i", "conv.qcow2", "-s", "150M", "back.img"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try info("back.img")["virtual-size"] as? Int, 150 << 20)
        XCTAssertEqual(try run("/usr/bin/qemu-img", ["compare", "disk.img", "back.img"]).status, 0)
        XCTAssertEqual(try run(vmctl, ["create", "-i", "conv.qcow2", "-s", "50M", "tiny.img"]).err,
                       "vmctl: size cannot be smaller than input disk size\n")
        // -i through a chain: the overlay's contents come from its base.
        XCTAssertEqual(try run("/usr/bin/qemu-io", ["-f", "qcow2", "-c", "write -P 9 0 64k", "base.qcow2"]).status, 0)
        r = try run(vmctl, ["create", "-i", "over.qcow2", "flat.img"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(try run("/usr/bin/qemu-img", ["compare", "over.qcow2", "flat.img"]).status, 0)
    }
}
