import XCTest
@testable import VMConfig

/// Issue 15: link groups resolved at load time, and vmd's local address
/// arithmetic (priv.c vm_priv_addr / vm_priv_addr6).
final class NetworkConfigTests: XCTestCase {
    private var groupFile = ""

    override func setUpWithError() throws {
        groupFile = FileManager.default.temporaryDirectory.appendingPathComponent("groups-\(UUID().uuidString)").path
        try "# comment\n0\tdefault\n7 vms # trailing\n0x10\tlab\nbad line\n99999999999 huge\n8 vms\n"
            .write(toFile: groupFile, atomically: true, encoding: .utf8)
        ConfigParser.linkGroupFiles = [groupFile]
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: groupFile) }

    private func parse(_ text: String) -> Result<VMDConfiguration, ConfigErrors> {
        ConfigParser.parse(text: text, filename: "vm.conf")
    }

    func testGroupFileParsing() {
        let table = Dictionary(uniqueKeysWithValues: LinkGroups.parse(Array("1 a\n2 b\n#3 c\n  4\td  \n0x1f e\nx f\n".utf8)))
        XCTAssertEqual(table, ["a": 1, "b": 2, "d": 4, "e": 31])
        // The first definition of a name wins, as in iproute2.
        XCTAssertEqual(LinkGroups.load([groupFile])["vms"], 7)
        XCTAssertEqual(LinkGroups.load(["/nonexistent/group", groupFile])["lab"], 16)
    }

    func testGroupsResolveToNumbers() throws {
        let config = try parse("""
            switch "sw" { interface br0
            	group lab }
            vm "a" {
            	interface { group vms }
            	interface { group 42 }
            	interface { group "default" }
            }
            """).get()
        XCTAssertEqual(config.switches.first?.groupID, 16)
        XCTAssertEqual(config.vms.first?.interfaces.map(\.groupID), [7, 42, 0])
        XCTAssertEqual(config.vms.first?.interfaces.map(\.group), ["vms", "42", "default"])
    }

    func testUnknownOrInvalidGroupIsAnErrorWithItsLine() {
        guard case .failure(let e) = parse("""
            vm "a" {
            	interface { group nosuchgroup }
            	interface { group 4294967296 }
            }
            switch "s" { interface br0
            	group other }
            """) else { return XCTFail("unknown groups must be refused") }
        let messages = e.errors.map(\.description)
        XCTAssertEqual(messages.count, 3, "\(messages)")
        XCTAssertTrue(messages[0].hasPrefix("vm.conf:2: unknown group \"nosuchgroup\": not a number and not defined in "), messages[0])
        XCTAssertEqual(messages[1], "vm.conf:3: invalid group: 4294967296 (expected 0 to 4294967295 or a name)")
        XCTAssertTrue(messages[2].hasPrefix("vm.conf:6: unknown group \"other\""), messages[2])
    }

    func testLocalAddressesAsVmd() {
        let p = VMDConfiguration.defaultLocalPrefix
        func v4(_ vmid: UInt32, _ idx: Int, _ vm: Bool) -> String? {
            LocalAddress.ipv4(prefix: p, vmid: vmid, index: idx, isVM: vm).map { LocalAddress.format(ipv4: $0) }
        }
        // 100.64.N.(2M+2)/31: host first, guest second.
        XCTAssertEqual(v4(1, 0, false), "100.64.1.2")
        XCTAssertEqual(v4(1, 0, true), "100.64.1.3")
        XCTAssertEqual(v4(1, 3, false), "100.64.1.8")
        XCTAssertEqual(v4(2, 1, true), "100.64.2.5")
        // The VM id spills into the third and second octets inside the /10.
        XCTAssertEqual(v4(300, 0, false), "100.65.44.2")
        XCTAssertEqual(v4(16383, 126, true), "100.127.255.255")
        // vmd ORs the VM id into the prefix rather than adding it: with
        // 100.64.0.0/10 (bit 22 set) vm id 16384 lands on vm 0's range, as
        // on OpenBSD; an id that sets bits outside the prefix is refused.
        XCTAssertEqual(v4(16384, 0, false), "100.64.0.2")
        XCTAssertNil(v4(32768, 0, false))
        XCTAssertNil(v4(1, 127, false))
        XCTAssertNil(v4(1, -1, false))
        // A smaller prefix: 10.0.0.0/24 has room for vm id 0 only.
        let small = IPPrefix(address: "10.0.0.0", length: 24)
        XCTAssertNil(LocalAddress.ipv4(prefix: small, vmid: 1, index: 0, isVM: false))
        XCTAssertEqual(LocalAddress.ipv4(prefix: small, vmid: 0, index: 0, isVM: true), 0x0a00_0003)
        XCTAssertNil(LocalAddress.ipv4(prefix: IPPrefix(address: "nonsense", length: 8), vmid: 1, index: 0, isVM: false))
    }

    func testLocalIPv6AsVmd() throws {
        let a = try XCTUnwrap(LocalAddress.ipv6(prefix6: LocalAddress.defaultInet6Prefix,
                                                prefix: VMDConfiguration.defaultLocalPrefix,
                                                vmid: 1, index: 0, isVM: false))
        // fd00:: + the guest's IPv4 (100.64.1.3) in bytes 8-11, 1 for the host.
        XCTAssertEqual(a, [0xfd, 0, 0, 0, 0, 0, 0, 0, 100, 64, 1, 3, 0, 0, 0, 1])
        let g = try XCTUnwrap(LocalAddress.ipv6(prefix6: IPPrefix(address: "fd12:3456:789a:1::", length: 64),
                                                prefix: VMDConfiguration.defaultLocalPrefix,
                                                vmid: 2, index: 1, isVM: true))
        XCTAssertEqual(g, [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 100, 64, 2, 5, 0, 0, 0, 2])
    }

    func testLocalInet6PrefixAsVmdParsesIt() throws {
        // parse_prefix6: no length is /64, host bits are a "bad mask".
        XCTAssertTrue(LocalAddress.hostBitsClear(prefix6: IPPrefix(address: "fd00:1::", length: 32)))
        XCTAssertFalse(LocalAddress.hostBitsClear(prefix6: IPPrefix(address: "fd00:1::", length: 16)))
        XCTAssertTrue(LocalAddress.hostBitsClear(prefix6: IPPrefix(address: "fd00::", length: 8)))
        XCTAssertFalse(LocalAddress.hostBitsClear(prefix6: IPPrefix(address: "fd00::1", length: 64)))
        XCTAssertTrue(LocalAddress.hostBitsClear(prefix6: IPPrefix(address: "fd00:0:0:7::", length: 64)))
        let ok = ConfigParser.parse(text: "local inet6 prefix fd12:3456:789a:1::\n", filename: "vm.conf")
        XCTAssertEqual(try ok.get().localInet6Prefix, IPPrefix(address: "fd12:3456:789a:1::", length: 64))
        let bad = ConfigParser.parse(text: "local inet6 prefix fd00::1/64\n", filename: "vm.conf")
        guard case .failure(let e) = bad else { return XCTFail("host bits set must fail") }
        XCTAssertTrue("\(e)".contains("vm.conf:1: invalid local inet6 prefix: fd00::1/64: bad mask"), "\(e)")
    }
}
