import XCTest
@testable import VirtioDevices

/// Issue 15 `local inet6`: vionet answers the guest's router solicitations
/// (RFC 4861) with an advertisement Linux's SLAAC accepts, and hostile
/// frames get no answer built from bytes outside them.
final class RouterAdvertisementTests: XCTestCase {
    let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]
    let hostMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35]
    // vmd's host side for vm 1, interface 0 with prefix fd12:3456:789a:1::/64.
    let hostIPv6: [UInt8] = [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 100, 64, 1, 3, 0, 0, 0, 1]
    var local: LocalInterface {
        LocalInterface(hostIPv4: 0x6440_0102, guestIPv4: 0x6440_0103, hostMAC: hostMAC, hostname: "web1",
                       hostIPv6: hostIPv6)
    }
    let guestLinkLocal: [UInt8] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xfc, 0xe1, 0xbb, 0xff, 0xfe, 0xd1, 0x12, 0x34]
    let allRouters: [UInt8] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]

    /// A solicitation as Linux sends it: from the guest's link-local
    /// address to ff02::2, with a source link-layer address option.
    func solicitation(options: [UInt8]? = nil, hopLimit: UInt8 = 255, source: [UInt8]? = nil,
                      payloadLengthDelta: Int = 0, badChecksum: Bool = false, code: UInt8 = 0,
                      trailing: Int = 0) -> [UInt8] {
        let icmp: [UInt8] = [133, code, 0, 0, 0, 0, 0, 0] + (options ?? ([1, 1] + guestMAC))
        let src = source ?? guestLinkLocal
        let length = UInt16(clamping: max(0, icmp.count + payloadLengthDelta))
        var frame: [UInt8] = [0x33, 0x33, 0, 0, 0, 2] + guestMAC + [0x86, 0xdd]
        frame += [0x60, 0, 0, 0, UInt8(length >> 8), UInt8(length & 0xff), 58, hopLimit] + src + allRouters
        frame += icmp
        let sum = frame.withUnsafeBytes {
            RouterAdvertisement.icmpChecksum($0, ip: 14, payloadLength: icmp.count)
        } &+ (badChecksum ? 1 : 0)
        frame[14 + 40 + 2] = UInt8(sum >> 8); frame[14 + 40 + 3] = UInt8(sum & 0xff)
        return frame + [UInt8](repeating: 0, count: trailing)
    }

    func verdict(_ frame: [UInt8]) -> DHCPServer.Verdict {
        frame.withUnsafeBytes { LocalServices.handle(frame: $0, guestMAC: guestMAC, local: local) }
    }

    func testSolicitationGetsAnAdvertisementLinuxAccepts() throws {
        guard case .reply(let ra) = verdict(solicitation()) else { return XCTFail("no advertisement") }
        XCTAssertEqual(Array(ra[0..<6]), [0x33, 0x33, 0, 0, 0, 1], "to all nodes")
        XCTAssertEqual(Array(ra[6..<12]), hostMAC)
        XCTAssertEqual(Array(ra[12..<14]), [0x86, 0xdd])
        XCTAssertEqual(ra[14] >> 4, 6)
        XCTAssertEqual(ra[14 + 6], 58)
        XCTAssertEqual(ra[14 + 7], 255, "hop limit 255 (RFC 4861 6.1.2)")
        let source = Array(ra[22..<38])
        XCTAssertEqual(source, [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xfc, 0xe1, 0xbb, 0xff, 0xfe, 0xd1, 0x12, 0x35],
                       "link-local source: fe80:: + EUI-64 of the host MAC")
        XCTAssertEqual(Array(ra[38..<54]), [0xff, 0x02] + [UInt8](repeating: 0, count: 13) + [1])
        let payload = Int(ra[18]) << 8 | Int(ra[19])
        XCTAssertEqual(14 + 40 + payload, ra.count)
        ra.withUnsafeBytes { XCTAssertEqual(RouterAdvertisement.icmpChecksum($0, ip: 14, payloadLength: payload), 0) }
        let icmp = 54
        XCTAssertEqual(ra[icmp], 134); XCTAssertEqual(ra[icmp + 1], 0)
        XCTAssertEqual(ra[icmp + 4], 64, "cur hop limit")
        XCTAssertEqual(ra[icmp + 5], 0, "no M/O")
        XCTAssertEqual(Int(ra[icmp + 6]) << 8 | Int(ra[icmp + 7]), 1800, "router lifetime")
        // Options.
        var options: [UInt8: [UInt8]] = [:]
        var i = icmp + 16
        while i < ra.count {
            let n = Int(ra[i + 1]) * 8
            XCTAssertGreaterThan(n, 0)
            options[ra[i]] = Array(ra[i..<(i + n)]); i += n
        }
        XCTAssertEqual(i, ra.count)
        XCTAssertEqual(options[1], [1, 1] + hostMAC)
        let pi = try XCTUnwrap(options[3])
        XCTAssertEqual(pi.count, 32)
        XCTAssertEqual(pi[2], 64, "a /64: what SLAAC needs on Ethernet")
        XCTAssertEqual(pi[3], 0x40, "A set, L clear")
        XCTAssertEqual(Array(pi[4..<8]), [0, 0x27, 0x8d, 0], "valid 2592000")
        XCTAssertEqual(Array(pi[8..<12]), [0, 0x09, 0x3a, 0x80], "preferred 604800")
        XCTAssertEqual(Array(pi[16..<32]), Array(hostIPv6[0..<8]) + [0, 0, 0, 0, 0, 0, 0, 0])
        let rdnss = try XCTUnwrap(options[25])
        XCTAssertEqual(Array(rdnss[8..<24]), hostIPv6, "DNS server = the host side")
    }

    func testUnspecifiedSourceWithoutLinkLayerOptionIsAnswered() {
        let frame = solicitation(options: [], source: [UInt8](repeating: 0, count: 16))
        guard case .reply = verdict(frame) else { return XCTFail("RS from :: is valid") }
        // But from :: with a source link-layer option is invalid (6.1.1).
        XCTAssertEqual(verdict(solicitation(source: [UInt8](repeating: 0, count: 16))), .drop)
    }

    func testInvalidSolicitationsAreDroppedNotAnswered() {
        XCTAssertEqual(verdict(solicitation(hopLimit: 64)), .drop, "wrong hop limit")
        XCTAssertEqual(verdict(solicitation(badChecksum: true)), .drop, "bad checksum")
        XCTAssertEqual(verdict(solicitation(code: 1)), .drop, "code not 0")
        XCTAssertEqual(verdict(solicitation(options: [1, 0, 0, 0, 0, 0, 0, 0])), .drop, "zero-length option")
        XCTAssertEqual(verdict(solicitation(options: [1, 2] + guestMAC)), .drop, "option length past the end")
        XCTAssertEqual(verdict(solicitation(options: [1])), .drop, "truncated option")
        XCTAssertEqual(verdict(solicitation(payloadLengthDelta: 100)), .drop, "payload length past the frame")
        XCTAssertEqual(verdict(solicitation(payloadLengthDelta: -9 - 8)), .drop, "shorter than an RS")
        var global = guestLinkLocal; global[0] = 0x20; global[1] = 0x01
        XCTAssertEqual(verdict(solicitation(source: global)), .drop, "source not link-local")
        var other = solicitation(); other[11] ^= 1
        XCTAssertEqual(verdict(other), .drop, "not from the guest's MAC")
        XCTAssertEqual(verdict(solicitation(trailing: 65536 - 70)), .drop, "a 64 KiB frame")
    }

    func testOptionsParser() {
        func parse(_ b: [UInt8]) -> Result<[UInt8]?, RouterAdvertisement.OptionsError> {
            b.withUnsafeBytes { RouterAdvertisement.parseOptions($0) }
        }
        XCTAssertEqual(parse([]), .success(nil))
        XCTAssertEqual(parse([1, 1] + guestMAC), .success(guestMAC))
        XCTAssertEqual(parse([14, 1, 0, 0, 0, 0, 0, 0, 1, 1] + guestMAC), .success(guestMAC))
        XCTAssertEqual(parse([1]), .failure(.truncated))
        XCTAssertEqual(parse([1, 0]), .failure(.zeroLength))
        XCTAssertEqual(parse([1, 1, 0, 0]), .failure(.pastEnd))
        XCTAssertEqual(parse([1, 255] + [UInt8](repeating: 0, count: 100)), .failure(.pastEnd))
    }

    func testGuestAdvertisementsAndRedirectsAreDropped() {
        for type: UInt8 in [134, 137] {
            var f = solicitation(); f[54] = type
            XCTAssertEqual(verdict(f), .drop, "type \(type)")
            // Hidden behind a hop-by-hop header too.
            var h = Array(f[0..<54]) + [58, 0, 1, 4, 0, 0, 0, 0] + Array(f[54...])
            h[14 + 6] = 0
            XCTAssertEqual(verdict(h), .drop, "type \(type) after hop-by-hop")
        }
        // A hop-by-hop chain that runs past the frame.
        var t = solicitation(); t[14 + 6] = 0; t[54 + 1] = 200
        XCTAssertEqual(verdict(t), .drop)
    }

    func testOtherTrafficPassesAndNothingWithoutInet6() {
        var ns = solicitation(); ns[54] = 135
        XCTAssertEqual(verdict(ns), .notDHCP, "neighbour solicitations go to the host")
        var udp = solicitation(); udp[14 + 6] = 17
        XCTAssertEqual(verdict(udp), .notDHCP)
        var v4only = local; v4only.hostIPv6 = []
        let rs = solicitation()
        XCTAssertEqual(rs.withUnsafeBytes { LocalServices.handle(frame: $0, guestMAC: guestMAC, local: v4only) },
                       .notDHCP, "without local inet6 the host sees the RS")
        // Short and odd frames.
        for n in [0, 13, 14, 53, 54, 61] {
            if case .reply = Array(rs.prefix(n)).withUnsafeBytes({
                LocalServices.handle(frame: $0, guestMAC: guestMAC, local: local)
            }) { XCTFail("answered a truncated frame of \(n) bytes") }
        }
    }

    func testAddressArithmetic() {
        XCTAssertEqual(RouterAdvertisement.linkLocal(mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
                       [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56])
        XCTAssertEqual(RouterAdvertisement.prefix64(hostIPv6: hostIPv6),
                       [0xfd, 0x12, 0x34, 0x56, 0x78, 0x9a, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    }
}
