import XCTest
@testable import VMDaemon
import VMDControl

final class OptionsTests: XCTestCase {
    func testDefaultsAndGroupedFlags() throws {
        let o = try DaemonOptions.parse(["-dvv", "-D", "a=b", "-Dc=d=e", "-fvm.conf", "-s", "/tmp/s"])
        XCTAssertTrue(o.foreground)
        XCTAssertEqual(o.verbosity, 2)
        XCTAssertEqual(o.macros.map { "\($0.0)=\($0.1)" }, ["a=b", "c=d=e"])
        XCTAssertEqual(o.configPath, "vm.conf")
        XCTAssertEqual(o.socketPath, "/tmp/s")
        XCTAssertFalse(o.checkOnly)
        let d = try DaemonOptions.parse([])
        XCTAssertEqual(d.configPath, "/etc/vm.conf")
        XCTAssertEqual(d.socketPath, "/run/vmd.sock")
    }

    func testErrors() {
        XCTAssertThrowsError(try DaemonOptions.parse(["-f"]))
        XCTAssertThrowsError(try DaemonOptions.parse(["-x"]))
        XCTAssertThrowsError(try DaemonOptions.parse(["-D", "novalue"]))
        XCTAssertThrowsError(try DaemonOptions.parse(["extra"]))
    }

    func testChildrenInheritForegroundVerbosityAndSocket() throws {
        let o = try DaemonOptions.parse(["-d", "-v", "-s", "/x"])
        XCTAssertEqual(o.inheritedFlags, ["-d", "-v", "-s", "/x"])
    }
}

final class CodecTests: XCTestCase {
    func testLaunchSpecRoundTrip() throws {
        let s = LaunchSpec(vmid: 7, name: "web", memoryBytes: 64 << 20, cpus: 2, cmdline: "console=ttyS0",
                           hasInitrd: true, disks: [.init(name: "a.img", readOnly: true)], hasCDROM: false,
                           nics: [.init(mac: [0xfe, 0xe1, 0xbb, 0xd1, 1, 2], lockedLladdr: true, ifname: "tap3")])
        XCTAssertEqual(try LaunchSpec(decoding: s.encoded()), s)
        XCTAssertEqual(s.descriptorCount, 4)
    }

    func testTruncatedPayloadsAreErrorsNotCrashes() {
        let s = LaunchSpec(vmid: 1, name: "x", memoryBytes: 1, cpus: 1, cmdline: "", hasInitrd: false,
                           disks: [], hasCDROM: false, nics: [])
        let bytes = s.encoded()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try LaunchSpec(decoding: Array(bytes.prefix(n))), "prefix \(n)")
        }
        // A hostile count does not allocate or loop.
        var w = WireWriter()
        w.u32(1); w.string("x"); w.u64(1); w.u32(1); w.string(""); w.u32(0); w.u32(0xffff_ffff)
        XCTAssertThrowsError(try LaunchSpec(decoding: w.bytes))
        var big = WireWriter()
        big.u32(0x7fff_ffff)
        XCTAssertThrowsError(try WireReader(big.bytes).readString())
    }

    func testInvalidUTF8IsRefusedNotRepaired() {
        var w = WireWriter()
        w.u32(3)
        var bytes = w.bytes + [0x61, 0xa8, 0x62]
        XCTAssertThrowsError(try WireReader(bytes).readString())
        bytes = w.bytes + Array("abc".utf8)
        XCTAssertEqual(try WireReader(bytes).readString(), "abc")
    }

    func testDeviceSetupRoundTrip() throws {
        var d = DeviceSetup(kind: .net, name: "vionet0", vmName: "web",
                            regions: [.init(guestPhysicalAddress: 0, size: 1 << 20, offsetInMapping: 0),
                                      .init(guestPhysicalAddress: 1 << 32, size: 1 << 20, offsetInMapping: 1 << 20)])
        d.mac = [1, 2, 3, 4, 5, 6]
        d.lockedLladdr = true
        XCTAssertEqual(try DeviceSetup(decoding: d.encoded()), d)
    }

    func testControlPayloads() throws {
        let i = VMInfo(id: 1, pid: 99, vcpus: 2, maxMemory: 1 << 30, curMemory: 1 << 30, tty: "/dev/pts/3",
                       owner: "root", state: "running", name: "web")
        XCTAssertEqual(try VMInfo(decoding: i.encoded()), i)
        var r = StartRequest(name: "web")
        r.disks = ["raw:/a", "/b"]; r.memoryBytes = 1 << 29; r.bootPath = "/k"
        XCTAssertEqual(try StartRequest(decoding: r.encoded()), r)
        let v = VMRequest(name: "web", flags: VMRequest.force | VMRequest.wait)
        XCTAssertEqual(try VMRequest(decoding: v.encoded()), v)
        let f = Failure(code: 1, message: "start web: nope")
        XCTAssertEqual(try Failure(decoding: f.encoded()), f)
    }

    func testCapabilityChunksSplitTheTransportsList() {
        let list: [UInt8] = [0x09, 0x50, 16] + [UInt8](repeating: 1, count: 13)
            + [0x09, 0x00, 20] + [UInt8](repeating: 2, count: 17)
        let chunks = VirtioProxy.capabilityChunks(list)
        XCTAssertEqual(chunks.count, 2)
        XCTAssertEqual(chunks[0].count, 16)
        XCTAssertEqual(chunks[1].count, 20)
        XCTAssertEqual(chunks[0][1], 0, "the bus links them itself")
        XCTAssertEqual(VirtioProxy.capabilityChunks([0x09, 0, 200]).count, 0, "a bad length stops the walk")
    }
}

extension WireReader {
    func readString() throws -> String { var r = self; return try r.string() }
}
