import Foundation
import Glibc
import XCTest
@testable import DiskImage

/// Proof by clients no one here wrote: images made by qemu-img/qemu-io read
/// through DiskImage with pattern checks, and images DiskImage wrote checked
/// and compared by qemu-img.
final class QemuInteropTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        for tool in ["qemu-img", "qemu-io"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)") {
            throw XCTSkip("needs /usr/bin/\(tool) (Debian's qemu-utils)")
        }
        dir = NSTemporaryDirectory() + "qcow2-interop-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) }
    }

    @discardableResult
    func run(_ tool: String, _ args: [String], expect: Int32? = 0) throws -> (status: Int32, output: String) {
        let (status, output) = try runTool(tool, args, in: dir)
        if let expect {
            XCTAssertEqual(status, expect, "\(tool) \(args.joined(separator: " ")): \(output)")
        }
        return (status, output)
    }

    func path(_ name: String) -> String { dir + "/" + name }

    func openFile(_ path: String, _ flags: Int32) throws -> ImageFile {
        let fd = open(path, flags | O_CLOEXEC)
        guard fd >= 0 else { throw DiskImageError.io(errno: errno, operation: "open \(path)") }
        return FDImageFile(fd: fd)
    }

    var opened: [FDImageFile] = []

    /// Opens the image at `name` with its whole backing chain.
    func openDisk(_ name: String, writable: Bool = false) throws -> VirtualDisk {
        let top = try openFile(path(name), writable ? O_RDWR : O_RDONLY)
        let chain = try BackingChain.resolve(path: path(name), file: top, format: nil, writable: writable) {
            try self.openFile($0, O_RDONLY)
        }
        opened += chain.compactMap { $0.file as? FDImageFile }
        let disk = try BackingChain.open(chain.map { ($0.file, $0.format) }, readOnly: !writable)
        if writable, let image = disk as? Qcow2Image { writableImages.append(image) }
        return disk
    }

    var writableImages: [Qcow2Image] = []

    /// Closes the images written (unused reserved clusters given back), then the files.
    func closeAll() {
        for image in writableImages { XCTAssertNoThrow(try image.close()) }
        writableImages = []
        for file in opened { close(file.fd) }
        opened = []
    }

    func read(_ disk: VirtualDisk, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xee, count: count)
        try out.withUnsafeMutableBytes { try disk.read(into: $0, at: offset) }
        return out
    }

    func assertFilled(_ disk: VirtualDisk, _ offset: UInt64, _ count: Int, _ byte: UInt8, _ what: String,
                      line: UInt = #line) throws {
        let data = try read(disk, offset, count)
        let bad = data.firstIndex { $0 != byte }
        XCTAssertNil(bad, "\(what): byte \(bad ?? 0) at \(offset) is \(bad.map { data[$0] } ?? 0), not \(byte)", line: line)
    }

    /// qemu-img check: no errors (leaks are allowed only if `leaksAllowed`).
    func assertChecks(_ name: String, leaksAllowed: Bool = false, line: UInt = #line) throws {
        let (status, output) = try run("qemu-img", ["check", path(name)], expect: nil)
        XCTAssertTrue(status == 0 || (leaksAllowed && status == 3), "qemu-img check \(name): \(status) \(output)", line: line)
        XCTAssertFalse(output.contains("ERROR"), output, line: line)
    }

    func testReadsQemuImagesV2V3AndClusterSizes() throws {
        for compat in ["0.10", "1.1"] {
            for cluster in ["64k", "2M"] {
                let name = "q-\(compat)-\(cluster).qcow2"
                try run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=\(compat),cluster_size=\(cluster)", path(name), "64M"])
                var commands = ["-c", "write -P 0xa5 0 64k", "-c", "write -P 0x5a 1M 4k", "-c", "write -P 0x11 33M 100k",
                                "-c", "write -P 0x77 63M 1M"]
                if compat == "1.1" { commands += ["-c", "write -P 0x33 8M 4M", "-c", "write -z 8M 4M"] }
                try run("qemu-io", ["-f", "qcow2"] + commands + [path(name)])
                let disk = try openDisk(name)
                XCTAssertEqual(disk.virtualSize, 64 << 20)
                try assertFilled(disk, 0, 65536, 0xa5, name)
                try assertFilled(disk, 65536, 65536, 0, name)
                try assertFilled(disk, 1 << 20, 4096, 0x5a, name)
                try assertFilled(disk, 33 << 20, 100 * 1024, 0x11, name)
                try assertFilled(disk, 63 << 20, 1 << 20, 0x77, name)
                try assertFilled(disk, 8 << 20, 4 << 20, 0, name)
                closeAll()
            }
        }
    }

    /// A raw reference with patterns at known offsets.
    func makeRaw(_ name: String, size: String = "8M", patterns: [(UInt8, String, String)]) throws {
        try run("qemu-img", ["create", "-q", "-f", "raw", path(name), size])
        var commands: [String] = []
        for (byte, offset, length) in patterns { commands += ["-c", "write -P \(byte) \(offset) \(length)"] }
        try run("qemu-io", ["-f", "raw"] + commands + [path(name)])
    }

    func testCompressedClustersReadAndRewritten() throws {
        try makeRaw("ref.raw", patterns: [(0x41, "0", "200k"), (0x42, "1M", "64k"), (0x43, "5M", "1M")])
        try run("qemu-img", ["convert", "-c", "-O", "qcow2", path("ref.raw"), path("c.qcow2")])
        let info = try run("qemu-img", ["check", path("c.qcow2")]).output
        XCTAssertTrue(info.contains("% compressed clusters") && !info.contains(" 0.00% compressed"),
                      "qemu-img made compressed clusters: \(info)")
        var disk = try openDisk("c.qcow2")
        let ref = try openDisk("ref.raw")
        XCTAssertEqual(try read(disk, 0, 8 << 20), try read(ref, 0, 8 << 20))
        closeAll()
        // A write into a compressed cluster moves it to a fresh one.
        disk = try openDisk("c.qcow2", writable: true)
        let ref2 = try openDisk("ref.raw", writable: true)
        for target in [disk, ref2] {
            try [UInt8](repeating: 0x99, count: 1000).withUnsafeBytes { try target.write(from: $0, at: 70_000) }
            try [UInt8](repeating: 0x98, count: 300).withUnsafeBytes { try target.write(from: $0, at: (5 << 20) + 12345) }
            try target.flush()
        }
        closeAll()
        try assertChecks("c.qcow2")
        try run("qemu-img", ["compare", path("c.qcow2"), path("ref.raw")])
    }

    func testThreeDeepChainRawQcow2Qcow2() throws {
        try makeRaw("base.raw", size: "8M", patterns: [(1, "0", "1M"), (1, "7M", "1M")])
        try run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", path("mid.qcow2"), "16M"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 2 512k 512k", "-c", "write -P 2 12M 64k", path("mid.qcow2")])
        try run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "-o", "compat=0.10",
                             path("top.qcow2"), "32M"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 3 768k 64k", "-c", "write -P 3 20M 4k", path("top.qcow2")])
        let disk = try openDisk("top.qcow2")
        XCTAssertEqual(disk.virtualSize, 32 << 20)
        try assertFilled(disk, 0, 512 * 1024, 1, "base")
        try assertFilled(disk, 512 * 1024, 256 * 1024, 2, "mid")
        try assertFilled(disk, 768 * 1024, 64 * 1024, 3, "top")
        try assertFilled(disk, 832 * 1024, 192 * 1024, 2, "mid")
        try assertFilled(disk, 1 << 20, 6 << 20, 0, "base hole")
        try assertFilled(disk, 7 << 20, 1 << 20, 1, "base end")
        try assertFilled(disk, 8 << 20, 4 << 20, 0, "past the raw base")
        try assertFilled(disk, 12 << 20, 65536, 2, "mid past base")
        try assertFilled(disk, 16 << 20, 4 << 20, 0, "past the mid")
        try assertFilled(disk, 20 << 20, 4096, 3, "top")
        closeAll()
    }

    /// The same operations on our image and on a raw reference.
    func exercise(_ disks: [VirtualDisk], size: UInt64) throws {
        var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
        func next() -> UInt64 { seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17; return seed }
        for k in 0..<200 {
            let offset = (next() % (size / 512)) * 512
            let length = min((next() % 300 + 1) * 512, size - offset)
            let op = k % 10
            let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: next()), count: Int(length))
            for disk in disks {
                switch op {
                case 7: try disk.writeZeroes(offset: offset, length: length)
                case 8 where !(disk is RawDisk): try disk.discard(offset: offset, length: length)
                case 8: // the raw reference: discarded whole clusters read as zeroes
                    break
                default: try bytes.withUnsafeBytes { try disk.write(from: $0, at: offset) }
                }
            }
            if op == 8, let image = disks.first as? Qcow2Image {
                // Mirror what a discard did on the reference: whole clusters are zeroes now.
                let cs = image.clusterSize
                let start = (offset + cs - 1) / cs * cs, end = (offset + length) / cs * cs
                if start < end {
                    try disks[1].writeZeroes(offset: start, length: end - start)
                }
            }
        }
        for disk in disks { try disk.flush() }
    }

    func testOurImagesPassQemuCheckAndCompare() throws {
        let configs: [(String, UInt32, UInt32, UInt32)] = [
            ("v3-64k", 3, 16, 4), ("v2-64k", 2, 16, 4), ("v3-512-r1", 3, 9, 0), ("v3-2m-r64", 3, 21, 6), ("v3-4k-r8", 3, 12, 3),
        ]
        for (name, version, bits, order) in configs {
            let size: UInt64 = 32 << 20
            let fd = open(path(name + ".qcow2"), O_RDWR | O_CREAT | O_EXCL, 0o600)
            XCTAssertGreaterThanOrEqual(fd, 0)
            var options = Qcow2CreateOptions(size: size)
            options.version = version
            options.clusterBits = bits
            options.refcountOrder = order
            try Qcow2Creator.create(options, on: FDImageFile(fd: fd))
            close(fd)
            try run("qemu-img", ["create", "-q", "-f", "raw", path(name + ".raw"), "32M"])
            try assertChecks(name + ".qcow2")
            let image = try openDisk(name + ".qcow2", writable: true)
            let raw = try openDisk(name + ".raw", writable: true)
            try exercise([image, raw], size: size)
            closeAll()
            try assertChecks(name + ".qcow2")
            try run("qemu-img", ["compare", path(name + ".qcow2"), path(name + ".raw")])
        }
    }

    func testFreshOverlayFilledThroughChain() throws {
        try makeRaw("base.raw", size: "4M", patterns: [(5, "0", "4M")])
        let fd = open(path("over.qcow2"), O_RDWR | O_CREAT | O_EXCL, 0o600)
        try Qcow2Creator.create(Qcow2CreateOptions(size: 6 << 20, backingFile: "base.raw", backingFormat: .raw), on: FDImageFile(fd: fd))
        close(fd)
        try run("qemu-img", ["create", "-q", "-f", "raw", path("ref.raw"), "6M"])
        try run("qemu-io", ["-f", "raw", "-c", "write -P 5 0 4M", path("ref.raw")])
        let info = try run("qemu-img", ["info", "--backing-chain", path("over.qcow2")]).output
        XCTAssertTrue(info.contains("backing file: base.raw"), info)
        XCTAssertTrue(info.contains("file format: raw"), info)
        XCTAssertTrue(info.contains("virtual size: 6 MiB"), info)
        let image = try openDisk("over.qcow2", writable: true)
        let ref = try openDisk("ref.raw", writable: true)
        // Fill the overlay in odd-sized pieces (every cluster partly from the base).
        var offset: UInt64 = 1000
        var fill: UInt8 = 0
        while offset < 6 << 20 {
            let n = min(UInt64(50_000), (6 << 20) - offset)
            fill &+= 1
            for disk in [image, ref] { try [UInt8](repeating: fill, count: Int(n)).withUnsafeBytes { try disk.write(from: $0, at: offset) } }
            offset += n + 30_000
        }
        try exercise([image, ref], size: 6 << 20)
        closeAll()
        try assertChecks("over.qcow2")
        try run("qemu-img", ["compare", path("over.qcow2"), path("ref.raw")])
    }

    func testHostileImagesNameTheFile() throws {
        try run("qemu-img", ["create", "-q", "-f", "qcow2", path("h.qcow2"), "1M"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 64k", path("h.qcow2")])
        let l2 = try run("qemu-img", ["map", "--output=json", path("h.qcow2")]).output
        XCTAssertTrue(l2.contains("\"offset\""), l2)
        // L1 entry 0 pointed at the refcount table.
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("h.qcow2"))))
        let l1Offset = bytes.withUnsafeBytes { Int(be64($0, 40)) }
        let refOffset = bytes.withUnsafeBytes { be64($0, 48) }
        putBE64(&bytes, l1Offset, 1 << 63 | refOffset)
        try Data(bytes).write(to: URL(fileURLWithPath: path("bad-l1.qcow2")))
        XCTAssertThrowsError(try openDisk("bad-l1.qcow2")) {
            XCTAssertEqual("\($0)", path("bad-l1.qcow2") + ": L1 entry 0: L2 table at offset \(refOffset) overlaps the header, L1 or refcount table")
        }
        // cluster_bits 40.
        bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("h.qcow2"))))
        putBE32(&bytes, 20, 40)
        try Data(bytes).write(to: URL(fileURLWithPath: path("bits.qcow2")))
        XCTAssertThrowsError(try openDisk("bits.qcow2")) {
            XCTAssertEqual("\($0)", path("bits.qcow2") + ": cluster_bits 40 is outside 9..21")
        }
        // A backing loop (a names b, b names a).
        for (name, base) in [("a.qcow2", "b.qcow2"), ("b.qcow2", "a.qcow2")] {
            let fd = open(path(name), O_RDWR | O_CREAT | O_EXCL, 0o600)
            try Qcow2Creator.create(Qcow2CreateOptions(size: 1 << 20, backingFile: base, backingFormat: .qcow2), on: FDImageFile(fd: fd))
            close(fd)
        }
        XCTAssertThrowsError(try openDisk("a.qcow2")) {
            XCTAssertEqual("\($0)", path("b.qcow2") + ": backing file \(path("a.qcow2")) makes a loop")
        }
        // qemu-img refuses it too.
        XCTAssertNotEqual(try run("qemu-img", ["info", "--backing-chain", path("a.qcow2")], expect: nil).status, 0)
        closeAll()
    }

    /// kill -9 of a process writing through DiskImage, 20 times at random
    /// points: qemu-img check never reports an error (leaks are allowed).
    func testKillNineMidWriteLeavesNoErrors() throws {
        let binDir = URL(fileURLWithPath: CommandLine.arguments.first ?? "").deletingLastPathComponent().path
        var tool = binDir + "/qcow2-stress"
        if !FileManager.default.isExecutableFile(atPath: tool) {
            var root = URL(fileURLWithPath: #filePath)
            for _ in 0..<3 { root.deleteLastPathComponent() }
            tool = root.path + "/.build/debug/qcow2-stress"
        }
        guard FileManager.default.isExecutableFile(atPath: tool) else { throw XCTSkip("qcow2-stress is not built (swift build)") }
        let configs = ["cluster_size=64k", "cluster_size=4k,refcount_bits=1", "cluster_size=512,refcount_bits=64",
                       "compat=0.10,cluster_size=64k"]
        try makeRaw("base.raw", size: "16M", patterns: [(7, "0", "16M")])
        var leaks = 0
        for round in 0..<20 {
            let name = "k\(round).qcow2"
            var args = ["create", "-q", "-f", "qcow2", "-o", configs[round % configs.count]]
            if round % 3 == 2 { args += ["-b", "base.raw", "-F", "raw"] }
            try run("qemu-img", args + [path(name), "24M"])
            let child = Process()
            child.executableURL = URL(fileURLWithPath: tool)
            child.arguments = [path(name), String(round + 1)]
            let pipe = Pipe()
            child.standardOutput = pipe
            try child.run()
            _ = pipe.fileHandleForReading.availableData   // "ready": it is writing
            usleep(UInt32.random(in: 5_000...150_000))
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
            XCTAssertEqual(child.terminationReason, .uncaughtSignal, "round \(round): the child was killed while writing")
            let (status, output) = try run("qemu-img", ["check", path(name)], expect: nil)
            XCTAssertTrue(status == 0 || status == 3, "round \(round): \(output)")
            XCTAssertFalse(output.contains("ERROR"), "round \(round): \(output)")
            if status == 3 { leaks += 1 }
            try FileManager.default.removeItem(atPath: path(name))
        }
        print("kill -9 rounds: 20, images with leaked clusters: \(leaks), with errors: 0")
    }

    /// An image left dirty with lazy refcounts is repaired when opened for
    /// writing, as QEMU does: refcounts rebuilt, dirty bit cleared.
    func testDirtyLazyRefcountImageIsRepaired() throws {
        try run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4k", path("lazy.qcow2"), "8M"])
        try run("qemu-io", ["-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c", "write -P 0x62 5M 100k", path("lazy.qcow2")])
        // What a crash with lazy refcounts leaves: counts too low, dirty bit set.
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("lazy.qcow2"))))
        let image = try Qcow2Image(file: MemoryImageFile(bytes: bytes), readOnly: true)
        let block = Int(image.refcountTable[0])
        for i in (2 * 16)..<(2 * 200) { bytes[block + i] = 0 }
        bytes[79] |= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path("lazy.qcow2")))
        let (status, output) = try run("qemu-img", ["check", path("lazy.qcow2")], expect: nil)
        XCTAssertNotEqual(status, 0, "the damage is real: \(output)")
        XCTAssertTrue(output.contains("ERROR"), output)
        let disk = try openDisk("lazy.qcow2", writable: true)
        try assertFilled(disk, 0, 1 << 20, 0x61, "after repair")
        try [UInt8](repeating: 0x63, count: 70_000).withUnsafeBytes { try disk.write(from: $0, at: 7 << 20) }
        try disk.flush()
        closeAll()
        let after = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path("lazy.qcow2"))))
        XCTAssertEqual(after[79] & 1, 0, "dirty bit cleared")
        try assertChecks("lazy.qcow2")
        let again = try openDisk("lazy.qcow2")
        try assertFilled(again, 5 << 20, 100 * 1024, 0x62, "after repair")
        try assertFilled(again, 7 << 20, 70_000, 0x63, "after repair")
        closeAll()
    }
}
