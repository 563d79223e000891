import Foundation
import XCTest
import Glibc

/// qcow2 disks through vmd's vioblk: the vmtest guest reads the harness
/// pattern from a raw <- qcow2 (v2) <- qcow2 (v3, compressed clusters) chain
/// that qemu-img and qemu-io made, writes its sectors into the top image,
/// and qemu-img then checks the image and finds what the guest wrote.
final class QCOW2VMTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
        for tool in ["qemu-img", "qemu-io"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)") {
            throw XCTSkip("needs /usr/bin/\(tool) (Debian's qemu-utils)")
        }
        dir = NSTemporaryDirectory() + "vmd-qcow2-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) }
    }

    func tool(_ name: String, _ args: [String]) throws -> String {
        let r = try runCommand("/usr/bin/" + name, args)
        XCTAssertEqual(r.status, 0, "\(name) \(args.joined(separator: " ")): \(r.out)")
        return r.out
    }

    func testGuestReadsQemuChainAndWritesTop() throws {
        // The pattern, split over three images: the raw base holds sectors
        // 0..1023 (and the rest of the disk), the v2 middle 1024..1535
        // (written by qemu-io from the pattern file), the v3 top, whose
        // clusters qemu-img compressed, 1536..2047.
        let pattern = dir + "/pattern.img"
        try Guest.makeDisk(pattern)
        let base = dir + "/base.raw"
        try FileManager.default.copyItem(atPath: pattern, toPath: base)
        _ = try tool("qemu-io", ["-f", "raw", "-c", "write -z 512k 512k", base])
        _ = try tool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4k", "-b", "base.raw", "-F", "raw",
                                  dir + "/mid.qcow2", "4M"])
        // qemu-io's write -s takes its data from the start of the file.
        let all = try Data(contentsOf: URL(fileURLWithPath: pattern))
        try all.subdata(in: (512 << 10)..<(768 << 10)).write(to: URL(fileURLWithPath: dir + "/part1"))
        try all.subdata(in: (768 << 10)..<(1024 << 10)).write(to: URL(fileURLWithPath: dir + "/part2"))
        _ = try tool("qemu-io", ["-f", "qcow2", "-c", "write -s \(dir)/part1 512k 256k", dir + "/mid.qcow2"])
        // A compressed image of the last quarter, then rebased onto mid.
        let quarter = dir + "/quarter.raw"
        _ = try tool("qemu-img", ["create", "-q", "-f", "raw", quarter, "4M"])
        _ = try tool("qemu-io", ["-f", "raw", "-c", "write -s \(dir)/part2 768k 256k", quarter])
        let top = dir + "/top.qcow2"
        _ = try tool("qemu-img", ["convert", "-c", "-O", "qcow2", quarter, top])
        _ = try tool("qemu-img", ["rebase", "-u", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", top])
        let chain = try tool("qemu-img", ["info", "--backing-chain", top])
        XCTAssertTrue(chain.contains("backing file: mid.qcow2") && chain.contains("backing file: base.raw"), chain)
        XCTAssertTrue(try tool("qemu-img", ["check", top]).contains("compressed"), "top has compressed clusters")

        let baseBefore = try Data(contentsOf: URL(fileURLWithPath: base))
        let midBefore = try Data(contentsOf: URL(fileURLWithPath: dir + "/mid.qcow2"))
        // vm.conf names the top image, no format: detected by its magic.
        // A second, raw disk after it: its descriptor comes after the chain's.
        let other = dir + "/other.img"
        try Guest.makeDisk(other, sectors: 2048)
        let conf = """
            vm "qc" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
                disk "\(top)"
                disk "\(other)"
            }
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"])
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest summary:", timeout: 90), d.log)
        let r = Guest.results(d.log)
        XCTAssertEqual(r["blk"], true, d.log)
        // vioblk0 holds the chain (the bases read-only), vioblk1 its own image.
        let blkDevices = descendants(of: d.pid).filter { $0.args.hasPrefix("vmd: vm qc vioblk") }
        XCTAssertEqual(blkDevices.count, 2, "\(descendants(of: d.pid))")
        for dev in blkDevices {
            let fdDir = "/proc/\(dev.pid)/fd"
            let files = try FileManager.default.contentsOfDirectory(atPath: fdDir).compactMap { fd -> String? in
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: fdDir + "/" + fd),
                      target.hasPrefix(dir) else { return nil }
                let flags = (try? String(contentsOfFile: "/proc/\(dev.pid)/fdinfo/\(fd)", encoding: .utf8))?
                    .split(separator: "\n").first { $0.hasPrefix("flags:") }
                    .flatMap { Int($0.split(separator: "\t").last ?? "", radix: 8) } ?? -1
                return target + (flags & 3 == 0 ? " ro" : " rw")
            }
            if dev.args.hasSuffix("vioblk0") {
                XCTAssertEqual(Set(files), [top + " rw", dir + "/mid.qcow2 ro", base + " ro"], dev.args)
            } else {
                XCTAssertEqual(files, [other + " rw"], dev.args)
            }
        }
        let stop = try d.vmctl(["stop", "-w", "qc"], timeout: 60)
        XCTAssertEqual(stop.status, 0, stop.out)
        XCTAssertEqual(d.stop(), 0)

        // qemu-img finds the image clean and what the guest wrote in it.
        let check = try runCommand("/usr/bin/qemu-img", ["check", top])
        XCTAssertEqual(check.status, 0, check.out)
        let flat = dir + "/flat.raw"
        _ = try tool("qemu-img", ["convert", "-O", "raw", top, flat])
        XCTAssertNil(try Guest.verifyWrittenSectors(flat))
        // The whole pattern came through, and the bases are untouched.
        let flatData = try Data(contentsOf: URL(fileURLWithPath: flat))
        let patternData = try Data(contentsOf: URL(fileURLWithPath: pattern))
        XCTAssertEqual(flatData.prefix(1 << 20), patternData.prefix(1 << 20))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: base)), baseBefore)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/mid.qcow2")), midBefore)
    }

    /// `format qcow2` on a raw file is an error naming the file; a corrupt
    /// qcow2 image is refused for writing with QEMU's advice.
    func testBadImagesAreRefusedAtStart() throws {
        let raw = dir + "/plain.img"
        try Guest.makeDisk(raw)
        let bad = dir + "/corrupt.qcow2"
        _ = try tool("qemu-img", ["create", "-q", "-f", "qcow2", bad, "4M"])
        // Set the corrupt bit (incompatible feature bit 1, byte 79).
        let fh = try FileHandle(forUpdating: URL(fileURLWithPath: bad))
        try fh.seek(toOffset: 79)
        fh.write(Data([2]))
        try fh.close()
        let conf = """
            vm "fmt" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(raw)" format qcow2
                disable
            }
            vm "bad" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                disk "\(bad)"
                disable
            }
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"])
        try d.waitReady()
        var out = try d.vmctl(["start", "fmt"], timeout: 30)
        XCTAssertNotEqual(out.status, 0)
        XCTAssertTrue(out.out.contains("disk \(raw): not a qcow2 image (bad magic)"), out.out)
        // vmctl start -d takes the same format prefix.
        out = try d.vmctl(["start", "-m", "64M", "-b", Repo.vmtestELF, "-d", "qcow2:" + raw, "pfx"], timeout: 30)
        XCTAssertNotEqual(out.status, 0)
        XCTAssertTrue(out.out.contains("disk \(raw): not a qcow2 image (bad magic)"), out.out)
        out = try d.vmctl(["start", "bad"], timeout: 30)
        XCTAssertNotEqual(out.status, 0)
        XCTAssertTrue(out.out.contains("disk \(bad): image is marked corrupt: refused for writing"), out.out)
        XCTAssertEqual(d.stop(), 0)
    }

    /// QEMU's locks: an image qemu-io holds is refused by vmctl start, an
    /// image a VM uses is refused by qemu-img, and a base is shared
    /// read-only by two VMs and a read-only qemu-io at once.
    func testLocksQEMUUnderstands() throws {
        let base = dir + "/base.qcow2"
        _ = try tool("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"])
        for name in ["o1", "o2"] {
            _ = try tool("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", dir + "/\(name).qcow2"])
        }
        let conf = ["o1", "o2"].map { name in
            """
            vm "\(name)" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
                disk "\(dir)/\(name).qcow2"
                disable
            }
            """
        }.joined(separator: "\n")
        let d = try Daemon(config: conf, extraArgs: ["-v"])
        defer { _ = d.stop() }
        try d.waitReady()

        // qemu-io (interactive, waiting on its input) holds o1 for writing.
        // The probe (qemu-img info) takes a shared lock for a moment: a
        // qemu-io opening the image just then fails to get its write lock
        // and exits, so one that left is started again.
        var holder = Process()
        var input = Pipe()
        var held = false
        for _ in 0..<5 where !held {
            holder = Process()
            holder.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-io")
            holder.arguments = ["-f", "qcow2", dir + "/o1.qcow2"]
            input = Pipe()
            holder.standardInput = input
            holder.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            try holder.run()
            // qemu-io can take seconds to start on a loaded machine.
            for _ in 0..<600 where !held && holder.isRunning {
                held = try runCommand("/usr/bin/qemu-img", ["info", dir + "/o1.qcow2"]).status != 0
                if !held { usleep(50_000) }
            }
        }
        XCTAssertTrue(held, "qemu-io never locked o1")
        var r = try d.vmctl(["start", "o1"], timeout: 30)
        XCTAssertNotEqual(r.status, 0, r.out)
        XCTAssertTrue(r.out.contains("disk \(dir)/o1.qcow2: locked by another process"), r.out)
        // A qemu-io that already left must not take the test runner with it
        // (SIGPIPE on the write).
        signal(SIGPIPE, SIG_IGN)
        if holder.isRunning { try? input.fileHandleForWriting.write(contentsOf: Data("quit\n".utf8)) }
        holder.waitUntilExit()

        // A read-only qemu-io on the base does not stop two VMs sharing it.
        let reader = Process()
        reader.executableURL = URL(fileURLWithPath: "/usr/bin/qemu-io")
        reader.arguments = ["-r", "-f", "qcow2", base]
        let readerInput = Pipe()
        reader.standardInput = readerInput
        reader.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try reader.run()
        usleep(300_000)
        for name in ["o1", "o2"] {
            r = try d.vmctl(["start", name], timeout: 30)
            XCTAssertEqual(r.status, 0, r.out)
        }
        XCTAssertTrue(d.waitLog("vm o2: console: vmtest summary:", timeout: 90), d.log)
        XCTAssertTrue(d.waitLog("vm o1: console: vmtest summary:", timeout: 90), d.log)
        if reader.isRunning { try? readerInput.fileHandleForWriting.write(contentsOf: Data("quit\n".utf8)) }
        reader.waitUntilExit()

        // While the VM runs, QEMU refuses its image, and refuses to write the base.
        let info = try runCommand("/usr/bin/qemu-img", ["info", dir + "/o1.qcow2"])
        XCTAssertNotEqual(info.status, 0, info.out)
        XCTAssertTrue(info.out.contains("lock"), info.out)
        let write = try runCommand("/usr/bin/qemu-io", ["-f", "qcow2", "-c", "write 0 512", base])
        XCTAssertTrue(write.status != 0 || write.out.contains("lock"), write.out)
        XCTAssertTrue(write.out.contains("lock"), write.out)
        XCTAssertEqual(try runCommand("/usr/bin/qemu-img", ["info", "-U", dir + "/o1.qcow2"]).status, 0)
        for name in ["o1", "o2"] { XCTAssertEqual(try d.vmctl(["stop", "-w", name], timeout: 60).status, 0) }
        XCTAssertEqual(try runCommand("/usr/bin/qemu-img", ["check", dir + "/o1.qcow2"]).status, 0)
    }
}
