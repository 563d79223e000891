import XCTest
import VMDSystem
import Foundation
@testable import Virtio
@testable import VirtioDevices

/// Issue 15: vionet's DHCP server for local interfaces (vmd's dhcp.c), with
/// hostile requests: nothing crashes and no reply carries request bytes
/// beyond xid and flags.
/// Requests as a client builds them, and a reply's options.
struct DHCPFixture {
    let guestMAC: [UInt8] = [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x34]
    var local = LocalInterface(hostIPv4: 0x6440_0102, guestIPv4: 0x6440_0103,
                                    hostMAC: [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35], hostname: "web1")

    static func checksum(_ b: [UInt8]) -> UInt16 {
        b.withUnsafeBytes { DHCPServer.checksum($0, from: 0, count: b.count) }
    }

    /// A client's request: Ethernet broadcast, 0.0.0.0 -> 255.255.255.255, UDP 68 -> 67.
    func request(type: UInt8?, options extra: [UInt8] = [], chaddr: [UInt8]? = nil, ciaddr: UInt32 = 0,
                 udpLengthDelta: Int = 0, fragment: Bool = false, badIPChecksum: Bool = false,
                 rawOptions: [UInt8]? = nil) -> [UInt8] {
        var bootp = [UInt8](repeating: 0, count: 236)
        bootp[0] = 1; bootp[1] = 1; bootp[2] = 6
        bootp[4] = 0xde; bootp[5] = 0xad; bootp[6] = 0xbe; bootp[7] = 0xef
        bootp[10] = 0x80
        bootp[12] = UInt8(ciaddr >> 24); bootp[15] = UInt8(ciaddr & 0xff)
        bootp.replaceSubrange(28..<34, with: chaddr ?? guestMAC)
        var options: [UInt8] = [99, 130, 83, 99]
        if let raw = rawOptions { options += raw } else {
            if let type { options += [53, 1, type] }
            options += extra + [255]
        }
        bootp += options
        if bootp.count < 300 { bootp += [UInt8](repeating: 0, count: 300 - bootp.count) }
        var udp: [UInt8] = [0, 68, 0, 67, 0, 0, 0, 0] + bootp
        let udpLength = UInt16(clamping: udp.count + udpLengthDelta)
        udp[4] = UInt8(udpLength >> 8); udp[5] = UInt8(udpLength & 0xff)
        var ip: [UInt8] = [0x45, 0, 0, 0, 0, 1, fragment ? 0x20 : 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]
        let total = UInt16(20 + udp.count)
        ip[2] = UInt8(total >> 8); ip[3] = UInt8(total & 0xff)
        let c = Self.checksum(ip) &+ (badIPChecksum ? 1 : 0)
        ip[10] = UInt8(c >> 8); ip[11] = UInt8(c & 0xff)
        return [0xff, 0xff, 0xff, 0xff, 0xff, 0xff] + guestMAC + [0x08, 0x00] + ip + udp
    }

    /// The reply's DHCP options as code -> value.
    func options(_ r: [UInt8]) -> [UInt8: [UInt8]] {
        let start = 14 + 20 + 8 + 236
        XCTAssertEqual(Array(r[start..<start + 4]), [99, 130, 83, 99])
        let parsed = r.withUnsafeBytes { p -> [UInt8: [UInt8]] in
            var out: [UInt8: [UInt8]] = [:]
            var i = start + 4
            while i < p.count, p[i] != 255 {
                if p[i] == 0 { i += 1; continue }
                let n = Int(p[i + 1]); out[p[i]] = Array(p[(i + 2)..<(i + 2 + n)]); i += 2 + n
            }
            return out
        }
        return parsed
    }

}

final class DHCPServerTests: XCTestCase {
    let fx = DHCPFixture()
    var guestMAC: [UInt8] { fx.guestMAC }
    var local: LocalInterface { fx.local }
    static func checksum(_ b: [UInt8]) -> UInt16 { DHCPFixture.checksum(b) }
    func request(type: UInt8?, options extra: [UInt8] = [], chaddr: [UInt8]? = nil, ciaddr: UInt32 = 0,
                 udpLengthDelta: Int = 0, fragment: Bool = false, badIPChecksum: Bool = false,
                 rawOptions: [UInt8]? = nil) -> [UInt8] {
        fx.request(type: type, options: extra, chaddr: chaddr, ciaddr: ciaddr, udpLengthDelta: udpLengthDelta,
                   fragment: fragment, badIPChecksum: badIPChecksum, rawOptions: rawOptions)
    }
    func options(_ r: [UInt8]) -> [UInt8: [UInt8]] { fx.options(r) }

    func handle(_ frame: [UInt8]) -> DHCPServer.Verdict {
        frame.withUnsafeBytes { DHCPServer.handle(frame: $0, guestMAC: guestMAC, local: local) }
    }

    func reply(_ frame: [UInt8], file: StaticString = #filePath, line: UInt = #line) -> [UInt8]? {
        guard case .reply(let r) = handle(frame) else {
            XCTFail("expected a reply, got \(handle(frame))", file: file, line: line)
            return nil
        }
        return r
    }

    func testDiscoverGetsAnOfferAsVmdBuildsIt() throws {
        let r = try XCTUnwrap(reply(request(type: 1)))
        XCTAssertEqual(Array(r[0..<6]), guestMAC, "to the guest")
        XCTAssertEqual(Array(r[6..<12]), local.hostMAC, "from vmd's hostmac")
        XCTAssertEqual(Array(r[26..<30]), [100, 64, 1, 2], "IP source: the host side")
        XCTAssertEqual(Array(r[30..<34]), [100, 64, 1, 3], "IP destination: the guest's address")
        XCTAssertEqual(Self.checksum(Array(r[14..<34])), 0, "IP header checksum")
        XCTAssertEqual(Array(r[34..<38]), [0, 67, 0, 68])
        // UDP checksum over the pseudo-header verifies.
        let udp = Array(r[34...])
        XCTAssertEqual(Self.checksum(Array(r[26..<34]) + [0, 17, UInt8(udp.count >> 8), UInt8(udp.count & 0xff)] + udp), 0)
        let bootp = 42
        XCTAssertEqual(r[bootp], 2, "BOOTREPLY")
        XCTAssertEqual(Array(r[bootp + 4..<bootp + 8]), [0xde, 0xad, 0xbe, 0xef], "xid")
        XCTAssertEqual(Array(r[bootp + 16..<bootp + 20]), [100, 64, 1, 3], "yiaddr")
        XCTAssertEqual(Array(r[bootp + 28..<bootp + 34]), guestMAC, "chaddr")
        let o = options(r)
        XCTAssertEqual(o[53], [2], "OFFER")
        XCTAssertEqual(o[1], [255, 255, 255, 254])
        XCTAssertEqual(o[3], [100, 64, 1, 2], "router")
        XCTAssertEqual(o[6], [100, 64, 1, 2], "DNS")
        XCTAssertEqual(o[54], [100, 64, 1, 2], "server id")
        XCTAssertEqual(o[51], [255, 255, 255, 255], "lease")
        XCTAssertEqual(o[12], Array("web1".utf8), "hostname")
        XCTAssertGreaterThanOrEqual(r.count - 42, 300, "BOOTP_MIN_LEN")
    }

    func testRequestGetsAckOrNak() throws {
        XCTAssertEqual(options(try XCTUnwrap(reply(request(type: 3))))[53], [5], "no requested address: ACK")
        XCTAssertEqual(options(try XCTUnwrap(reply(request(type: 3, options: [50, 4, 100, 64, 1, 3]))))[53], [5])
        XCTAssertEqual(options(try XCTUnwrap(reply(request(type: 3, options: [50, 4, 10, 0, 0, 9]))))[53], [6], "NAK")
        // BOOTP (no message type): a BOOTP reply without DHCP options.
        let bootp = try XCTUnwrap(reply(request(type: nil)))
        XCTAssertNil(options(bootp)[53])
        XCTAssertEqual(options(bootp)[1], [255, 255, 255, 254])
    }

    func testOtherDHCPIsDroppedAndOtherTrafficPasses() {
        for type: UInt8 in [2, 4, 5, 6, 7, 8, 0, 200] {
            XCTAssertEqual(handle(request(type: type)), .drop, "message type \(type)")
        }
        XCTAssertEqual(handle(request(type: 1, chaddr: [2, 0, 0, 0, 0, 1])), .drop, "another client's address")
        XCTAssertEqual(handle(request(type: 1, ciaddr: 0x0a000001)), .drop, "renewal with ciaddr (dhcp.c ignores it)")
        XCTAssertEqual(handle(request(type: 1, fragment: true)), .drop)
        XCTAssertEqual(handle(request(type: 1, badIPChecksum: true)), .drop)
        var spoofed = request(type: 1)
        spoofed[11] ^= 1
        XCTAssertEqual(handle(spoofed), .drop, "Ethernet source not the guest's")
        var toClient = request(type: 1)
        toClient[14 + 20 + 3] = 68
        XCTAssertEqual(handle(toClient), .notDHCP, "to port 68: not for a server")
        XCTAssertEqual(handle(Array(repeating: 0, count: 60)), .notDHCP)
        var arp = request(type: 1)
        arp[13] = 0x06
        XCTAssertEqual(handle(arp), .notDHCP)
    }

    func testHostileOptionsAndLengths() {
        // Option length past the end; truncated option header; no END; overload (52) ignored.
        XCTAssertEqual(options(reply(request(type: nil, rawOptions: [53, 1, 1, 50, 200, 1, 2])) ?? [])[53], [2],
                       "the type before the bad option counts; the rest is ignored")
        XCTAssertEqual(handle(request(type: nil, rawOptions: [53])).isReply, true, "truncated header: BOOTP reply")
        XCTAssertEqual(options(reply(request(type: nil, rawOptions: [52, 1, 3, 53, 1, 1, 255])) ?? [])[53], [2])
        XCTAssertEqual(options(reply(request(type: nil, rawOptions: [53, 2, 1, 1, 255])) ?? [])[53], nil,
                       "a type option of the wrong length is not a type")
        XCTAssertEqual(options(reply(request(type: 3, options: [50, 3, 100, 64, 1])) ?? [])[53], [5],
                       "a requested address of the wrong length is not one")
        XCTAssertEqual(handle(request(type: 1, udpLengthDelta: 1)), .drop, "UDP length past the IP payload")
        XCTAssertEqual(handle(request(type: 1, udpLengthDelta: -100)), .drop, "UDP length shorter than BOOTP")
        var shortIP = request(type: 1)
        shortIP[16] = 0; shortIP[17] = 40
        XCTAssertEqual(handle(shortIP), .drop, "IP total length shorter than the datagram (and checksum now wrong)")
        // A 64 KiB frame and one just over 1514 bytes: dropped (dhcp.c's limit).
        var big = request(type: 1)
        big += [UInt8](repeating: 0xff, count: 65536 - big.count)
        XCTAssertEqual(handle(big), .drop)
        var ihl = request(type: 1)
        ihl[14] = 0x4f                                     // 60-byte IP header
        XCTAssertFalse(handle(ihl).isReply, "a 60-byte IP header moves the UDP header: no reply")
        XCTAssertEqual(handle(Array(request(type: 1).prefix(14 + 20 + 7))), .notDHCP, "UDP header cut")
    }

    /// Random corruption of valid requests: never a crash, and every reply
    /// is one of the fixed answers (only xid and flags come from the request).
    func testRandomCorruptionNeverLeaksRequestBytes() {
        var rng = SystemRandomNumberGenerator()
        let seeds = [request(type: 1), request(type: 3, options: [50, 4, 100, 64, 1, 3]), request(type: nil)]
        var replies = 0
        for i in 0..<20000 {
            var f = seeds[i % seeds.count]
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                let at = Int.random(in: 0..<f.count, using: &rng)
                f[at] = UInt8.random(in: 0...255, using: &rng)
            }
            if Int.random(in: 0..<4, using: &rng) == 0 { f = Array(f.prefix(Int.random(in: 0..<f.count, using: &rng))) }
            guard case .reply(let r) = handle(f) else { continue }
            replies += 1
            XCTAssertEqual(Array(r[0..<6]), guestMAC)
            XCTAssertEqual(Array(r[30..<34]), [100, 64, 1, 3])
            XCTAssertTrue([[2], [5], [6], nil].contains(options(r)[53]))
            XCTAssertLessThan(r.count, 14 + 20 + 8 + 236 + 64 + 300)
        }
        XCTAssertGreaterThan(replies, 0, "some corruptions leave valid requests")
    }
}

extension DHCPServer.Verdict {
    var isReply: Bool { if case .reply = self { return true }; return false }
}

/// vionet with a local interface: DHCP answered inside, other DHCP dropped,
/// everything else to the tap.
final class VioNetLocalInterfaceTests: XCTestCase {
    var fds: [Int32] = [-1, -1]

    override func setUp() {
        virtioLogHook = { _ in }
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds), 0)
        XCTAssertNoThrow(try FD.setNonBlocking(fds[0]))
        XCTAssertNoThrow(try FD.setNonBlocking(fds[1]))
    }

    override func tearDown() { close(fds[0]); close(fds[1]) }

    func testDHCPAnsweredInsideVionet() throws {
        let helper = DHCPFixture()
        let net = try XCTUnwrap(VioNet(name: "vionet0", backend: TapBackend(fd: fds[0]), mac: helper.guestMAC,
                                       lockedLinkAddress: true))
        net.local = helper.local
        let driver = TestDriver(device: net, type: .network)
        XCTAssertTrue(driver.initialize())
        let buffer = driver.allocate(length: 2048)
        driver.submit(0, [(buffer, 2048, true)])
        let discover = [UInt8](repeating: 0, count: 12) + helper.request(type: 1)
        driver.submit(1, [(driver.allocate(discover), UInt32(discover.count), false)])
        var scratch = [UInt8](repeating: 0, count: 2048)
        XCTAssertLessThan(read(fds[1], &scratch, scratch.count), 0, "nothing reaches the tap")
        let used = driver.takeUsed(0)
        XCTAssertEqual(used.count, 1)
        let length = Int(try XCTUnwrap(used.first?.length))
        let got = try XCTUnwrap(driver.memory.readBytes(at: buffer, count: length))
        XCTAssertEqual(got[10], 1, "num_buffers")
        XCTAssertEqual(Array(got[12..<18]), helper.guestMAC)
        XCTAssertEqual(helper.options(Array(got[12...]))[53], [2])
        XCTAssertEqual(net.dhcpReplies, 1)
        // A RELEASE is dropped, not passed on; ordinary traffic passes.
        let release = [UInt8](repeating: 0, count: 12) + helper.request(type: 7)
        driver.submit(1, [(driver.allocate(release), UInt32(release.count), false)])
        XCTAssertLessThan(read(fds[1], &scratch, scratch.count), 0)
        let ping = [UInt8](repeating: 0, count: 12) + local(helper.guestMAC)
        driver.submit(1, [(driver.allocate(ping), UInt32(ping.count), false)])
        XCTAssertEqual(read(fds[1], &scratch, scratch.count), ping.count)
        // No receive buffer: the reply is dropped, the device stays healthy.
        driver.submit(1, [(driver.allocate(discover), UInt32(discover.count), false)])
        XCTAssertEqual(net.dhcpReplies, 1)
        XCTAssertFalse(driver.needsReset)
    }

    private func local(_ mac: [UInt8]) -> [UInt8] {
        [0xfe, 0xe1, 0xbb, 0xd1, 0x12, 0x35] + mac + [0x08, 0x00] + [UInt8](repeating: 0x45, count: 46)
    }
}
