import XCTest
@testable import VMDaemon
import VMDControl
import VirtioDevices

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
        var s = LaunchSpec(vmid: 7, name: "web", memoryBytes: 64 << 20, cpus: 2, cmdline: "console=ttyS0",
                           kernelDescriptor: 0, initrdDescriptor: 1)
        s.devices = [
            .init(kind: .blk, parameters: .init(readOnly: true, identifier: "a.img"), descriptors: [2]),
            .init(kind: .net, parameters: .init(mac: [0xfe, 0xe1, 0xbb, 0xd1, 1, 2], lockedLladdr: true),
                  descriptors: [3]),
            .init(kind: .rnd), .init(kind: .vmmci),
        ]
        XCTAssertEqual(try LaunchSpec(decoding: s.encoded()), s)
        XCTAssertEqual((0..<4).map(s.deviceName), ["vioblk0", "vionet0", "viornd", "vmmci"])
    }

    func testLaunchSpecRefusesDescriptorsTheModelDoesNotTake() {
        var s = LaunchSpec(vmid: 1, name: "x", memoryBytes: 1, cpus: 1, cmdline: "")
        s.devices = [.init(kind: .rnd, descriptors: [1])]
        XCTAssertThrowsError(try LaunchSpec(decoding: s.encoded()))
    }

    func testTruncatedPayloadsAreErrorsNotCrashes() {
        var s = LaunchSpec(vmid: 1, name: "x", memoryBytes: 1, cpus: 1, cmdline: "")
        s.devices = [.init(kind: .blk, descriptors: [1])]
        let bytes = s.encoded()
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try LaunchSpec(decoding: Array(bytes.prefix(n))), "prefix \(n)")
        }
        // A hostile count does not allocate or loop.
        var w = WireWriter()
        w.u32(1); w.string("x"); w.u64(1); w.u32(1); w.string(""); w.u32(0); w.i32(-1); w.u32(0xffff_ffff)
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
        d.parameters.mac = [1, 2, 3, 4, 5, 6]
        d.parameters.lockedLladdr = true
        d.descriptors.append(.sync)
        d.descriptors.append(.async)
        d.descriptors.append(.guestMemory)
        d.descriptors.append(.backend(.tap))
        d.descriptors.append(.queueNotify(0))
        d.descriptors.append(.queueNotify(1))
        let decoded = try DeviceSetup(decoding: d.encoded())
        XCTAssertEqual(decoded, d)
        XCTAssertEqual(decoded.descriptors.first(.backend(.tap)), 6)
        XCTAssertEqual(decoded.descriptors.queueNotifies.map(\.fd), [7, 8])
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

    func testPCIHeaderComesFromTheDeviceTable() {
        let blk = VirtioProxy.configHeader(for: DeviceKind.blk.model.presentation)
        XCTAssertEqual(blk.deviceID, 0x1042)
        XCTAssertEqual(blk.bars.first??.size, 0x400)
        XCTAssertEqual(blk.capabilities.count, 4)
        let vmmci = VirtioProxy.configHeader(for: DeviceKind.vmmci.model.presentation)
        XCTAssertEqual(vmmci.vendorID, 0x0b5d)
        XCTAssertEqual(vmmci.bars.first??.size, 0x100)
        XCTAssertTrue(vmmci.capabilities.isEmpty)
    }
}

extension WireReader {
    func readString() throws -> String { var r = self; return try r.string() }
}
