import XCTest
@testable import VMDaemon
import VMDControl
import VMConfig
import VirtioDevices

/// Issue 15 `local inet6`: what priv and vionet are told for a local
/// interface, and vmd's random default prefix.
final class LocalInet6Tests: XCTestCase {
    let loc = SourceLocation(file: "vm.conf", line: 1)

    func testLocalInterfaceWithInet6() throws {
        var network = NetworkSettings()
        network.localInet6Prefix = IPPrefix(address: "fd12:3456:789a:1::", length: 64)
        var vm = VMConfiguration(name: "web", location: loc)
        let local = Interface(isLocal: true, location: loc)
        vm.interfaces = [local]
        let mac: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]
        let (t, l) = try LaunchBuilder.tapRequest(vmid: 1, vm: vm, index: 0, interface: local, mac: mac, network: network)
        let host: [UInt8] = [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 100, 64, 1, 3, 0, 0, 0, 1]
        XCTAssertEqual(t.localIPv6, host, "vmd's vm_priv_addr6: prefix, guest IPv4 in bytes 8-11, 1")
        XCTAssertEqual(t.guestSLAAC, [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0xfc, 0xe1, 0xbb, 0xff, 0xfe, 0xd1, 0x12, 0x34],
                       "the /64 of the host side + the EUI-64 of the guest's MAC")
        XCTAssertEqual(l?.hostIPv6, host, "vionet advertises the host side's /64")
        XCTAssertEqual(try TapRequest(decoding: t.encoded()), t)

        var d = DeviceSetup(kind: .net, name: "vionet0", vmName: "web", regions: [])
        d.parameters.mac = mac
        d.parameters.local = l
        XCTAssertEqual(try DeviceSetup(decoding: d.encoded()).parameters.local, l)
        d.parameters.local?.hostIPv6 = [1, 2, 3]
        XCTAssertThrowsError(try DeviceSetup(decoding: d.encoded()), "an IPv6 address of 3 bytes")

        // Without local inet6: neither.
        network.localInet6Prefix = nil
        let (u, ul) = try LaunchBuilder.tapRequest(vmid: 1, vm: vm, index: 0, interface: local, mac: mac, network: network)
        XCTAssertEqual(u.guestSLAAC, []); XCTAssertEqual(ul?.hostIPv6, [])
    }

    func testRandomDefaultPrefixAsVmd() throws {
        // config_init_localprefix: fd00::/8 with bytes 1-7 random, once.
        let p = LocalAddress.startupInet6Prefix
        XCTAssertEqual(p.length, 8)
        XCTAssertEqual(p, LocalAddress.startupInet6Prefix, "drawn once")
        let bytes = try XCTUnwrap(LocalAddress.parseIPv6(p.address))
        XCTAssertEqual(bytes[0], 0xfd)
        XCTAssertEqual(Array(bytes[8...]), [UInt8](repeating: 0, count: 8))
        XCTAssertNotEqual(Array(bytes[1..<8]), [UInt8](repeating: 0, count: 7), "random (1 in 2^56 to fail)")
        var config = VMDConfiguration()
        config.localInet6 = true
        XCTAssertEqual(NetworkSettings(config).localInet6Prefix, p)
    }

    func testVhostUserBackendInet6Option() throws {
        let o = try VhostUserOptions.parse(["-t", "net", "-S", "/s", "-n", "tap0", "-l", "100.64.1.2",
                                            "-6", "fd00::6440:103:0:1"])
        XCTAssertEqual(o.localHost6, [0xfd, 0, 0, 0, 0, 0, 0, 0, 100, 64, 1, 3, 0, 0, 0, 1])
        XCTAssertThrowsError(try VhostUserOptions.parse(["-t", "net", "-S", "/s", "-n", "t", "-6", "fd00::1"]),
                             "-6 without -l")
        for bad in ["nonsense", "ff02::1", "::1", "100.64.1.2"] {
            XCTAssertThrowsError(try VhostUserOptions.parse(["-t", "net", "-S", "/s", "-n", "t", "-l", "100.64.1.2",
                                                             "-6", bad]), bad)
        }
    }
}
