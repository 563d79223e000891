import XCTest
import Glibc
@testable import VMDaemon
import VMDControl
import VMConfig
import VirtioDevices

/// Issue 15: what the parent asks priv for each interface, and its wire form.
final class TapRequestTests: XCTestCase {
    let loc = SourceLocation(file: "vm.conf", line: 1)

    func testWireRoundTripAndBoundsChecks() throws {
        var t = TapRequest(name: "tap7")
        t.description = "vm3-if0-web"; t.up = false; t.group = 42; t.rdomain = 5
        t.hostLladdr = [1, 2, 3, 4, 5, 6]; t.localIPv4 = 0x6440_0302; t.localIPv6 = Array(0..<16)
        t.bridge = .init(name: "uplink", interface: "br0", group: 7, rdomain: 3, up: true)
        XCTAssertEqual(try TapRequest(decoding: t.encoded()), t)
        XCTAssertEqual(try TapRequest(decoding: TapRequest().encoded()), TapRequest())
        var bad = t.encoded()
        bad.removeLast()
        XCTAssertThrowsError(try TapRequest(decoding: bad))
        XCTAssertThrowsError(try TapRequest(decoding: t.encoded() + [0]))
        var long = TapRequest(name: String(repeating: "x", count: 16))
        long.description = ""
        XCTAssertThrowsError(try TapRequest(decoding: long.encoded()), "a name longer than IFNAMSIZ")
        XCTAssertTrue(HostNetwork.validName("tap0"))
        XCTAssertFalse(HostNetwork.validName("../x"))
        XCTAssertFalse(HostNetwork.validName("a b"))
        XCTAssertFalse(HostNetwork.validName(""))
    }

    func testInterfacesBecomeRequests() throws {
        var sw = SwitchConfiguration(name: "uplink", location: loc)
        sw.interface = "br9"; sw.groupID = 12; sw.rdomain = 4; sw.up = false
        var network = NetworkSettings()
        network.switches = [sw]
        var vm = VMConfiguration(name: "web", location: loc)
        var plain = Interface(name: "tap", location: loc)
        plain.groupID = 3; plain.rdomain = 2; plain.up = false
        let switched = Interface(name: "vmtap5", switchName: "uplink", location: loc)
        let local = Interface(isLocal: true, location: loc)
        vm.interfaces = [plain, switched, local]
        let mac: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd3, 0, 0xff]

        let (a, la) = try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 0, interface: plain, mac: mac, network: network)
        XCTAssertEqual(a.name, "", "`interface tap`: the kernel picks tapN")
        XCTAssertEqual(a.description, "vm3-if0-web")
        XCTAssertEqual(a.group, 3); XCTAssertEqual(a.rdomain, 2); XCTAssertFalse(a.up)
        XCTAssertNil(a.bridge); XCTAssertNil(la)

        let (b, _) = try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 1, interface: switched, mac: mac, network: network)
        XCTAssertEqual(b.name, "vmtap5")
        XCTAssertEqual(b.bridge, .init(name: "uplink", interface: "br9", group: 12, rdomain: 4, up: false))

        let (c, lc) = try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 2, interface: local, mac: mac, network: network)
        XCTAssertEqual(c.localIPv4, 0x6440_0306, "100.64.3.6: vm 3, interface 2")
        XCTAssertEqual(c.hostLladdr, [0xfe, 0xe1, 0xbb, 0xd3, 0, 0x00],
                       "vmd's hostmac: the guest's last byte plus one, without carry (pc_smac[5]++)")
        XCTAssertEqual(c.localIPv6, [], "no local inet6")
        XCTAssertEqual(lc, LocalInterface(hostIPv4: 0x6440_0306, guestIPv4: 0x6440_0307, hostMAC: c.hostLladdr, hostname: "web"))

        network.localInet6Prefix = LocalAddress.defaultInet6Prefix
        let (d, _) = try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 2, interface: local, mac: mac, network: network)
        XCTAssertEqual(d.localIPv6, [0xfd, 0, 0, 0, 0, 0, 0, 0, 100, 64, 3, 7, 0, 0, 0, 1])

        // A switch that is not defined (vmctl start -n), or disabled, refuses the start.
        let missing = Interface(switchName: "nope", location: loc)
        XCTAssertThrowsError(try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 0, interface: missing, mac: mac,
                                                          network: network)) { e in
            XCTAssertEqual((e as? LaunchRefusal)?.message, "switch \"nope\" not found")
        }
        network.switches[0].enabled = false
        XCTAssertThrowsError(try LaunchBuilder.tapRequest(vmid: 3, vm: vm, index: 1, interface: switched, mac: mac,
                                                          network: network))
        // A VM id past the local prefix: a clear refusal, as vmd's "address range exceeded".
        XCTAssertThrowsError(try LaunchBuilder.tapRequest(vmid: 40000, vm: vm, index: 2, interface: local, mac: mac,
                                                          network: network)) { e in
            XCTAssertTrue("\(e)".contains("address range"), "\(e)")
        }
    }
}

/// `vmd -P vhost-user -t net -l ADDRESS`: a vhost-user net backend as a local interface.
final class VhostUserLocalOptionTests: XCTestCase {
    func testLocalAddressOption() throws {
        let o = try VhostUserOptions.parse(["-t", "net", "-S", "/tmp/x.sock", "-n", "tap0", "-l", "100.64.1.2"])
        XCTAssertEqual(o.localHost, 0x6440_0102)
        XCTAssertThrowsError(try VhostUserOptions.parse(["-t", "net", "-S", "/s", "-n", "t", "-l", "100.64.1.3"]),
                             "the host side is the first, even, address of the /31")
        XCTAssertThrowsError(try VhostUserOptions.parse(["-t", "net", "-S", "/s", "-n", "t", "-l", "nonsense"]))
    }
}
