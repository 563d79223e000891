// vionet's DHCP server for `local interface`s, as OpenBSD vmd's dhcp.c:
// the guest's DISCOVER gets an OFFER and its REQUEST an ACK (a NAK when it
// asks for another address), always the same lease: the guest's half of
// the interface's /31, netmask 255.255.255.254, router and DNS server = the
// host side, hostname = the VM's name, lease time 0xffffffff. A BOOTP
// request (no DHCP message type) gets a BOOTP reply. Every other frame to
// UDP port 67 is dropped, never passed to the tap: on a local interface
// vionet is the only DHCP server. (vmd answers other DHCP message types
// with a NAK; here they are dropped.)
//
// The frame is guest data: every length is checked against what was
// received before it is used, and a reply is built only from the fixed
// values above and the request's xid/flags/hardware type.

/// A local interface's addresses (host byte order) and names.
public struct LocalInterface: Equatable, Sendable {
    public var hostIPv4: UInt32
    public var guestIPv4: UInt32
    /// The source of replies: vmd's "hostmac", the guest's MAC plus one.
    public var hostMAC: [UInt8]
    /// The VM's name ("" for none).
    public var hostname: String
    /// `local inet6`: the host side's IPv6 address (16 bytes), empty
    /// without; vionet then answers router solicitations
    /// (RouterAdvertisement.swift).
    public var hostIPv6: [UInt8]

    public init(hostIPv4: UInt32, guestIPv4: UInt32, hostMAC: [UInt8], hostname: String, hostIPv6: [UInt8] = []) {
        self.hostIPv4 = hostIPv4
        self.guestIPv4 = guestIPv4
        self.hostMAC = hostMAC
        self.hostname = hostname
        self.hostIPv6 = hostIPv6
    }
}

public enum DHCPServer {
    public enum Verdict: Equatable {
        /// Not for a DHCP server: pass it on.
        case notDHCP
        /// For a DHCP server but not one we answer: drop it.
        case drop
        /// The reply to give the guest (an Ethernet frame, no virtio header).
        case reply([UInt8])
    }

    static let serverPort: UInt16 = 67
    static let clientPort: UInt16 = 68
    /// BOOTP's fixed part before the options (op ... file).
    static let fixedLength = 236
    /// BOOTP_MIN_LEN: the smallest BOOTP message.
    static let minimumLength = 300
    static let cookie: [UInt8] = [99, 130, 83, 99]

    public enum MessageType: UInt8 {
        case discover = 1, offer = 2, request = 3, decline = 4, ack = 5, nak = 6, release = 7, inform = 8
    }

    /// What the DHCP options of a request say (only what we use).
    public struct Options: Equatable {
        public var messageType: UInt8?
        public var requestedAddress: UInt32?
    }

    /// Parses options (after the magic cookie) as dhcp.c does: PAD skipped,
    /// END or the end of the data stops, an option whose length runs past
    /// the end stops. Never reads outside `bytes`.
    public static func parseOptions(_ bytes: UnsafeRawBufferPointer) -> Options {
        var o = Options()
        var i = 0
        while i < bytes.count {
            let code = bytes[i]
            if code == 255 { break }
            if code == 0 { i += 1; continue }
            guard i + 1 < bytes.count else { break }
            let length = Int(bytes[i + 1])
            guard i + 2 + length <= bytes.count else { break }
            if code == 53 && length == 1 { o.messageType = bytes[i + 2] }
            if code == 50 && length == 4 { o.requestedAddress = be32(bytes, i + 2) }
            i += 2 + length
        }
        return o
    }

    /// Classifies a frame the guest sent (Ethernet header first) and, for a
    /// DHCP request we answer, builds the reply.
    public static func handle(frame: UnsafeRawBufferPointer, guestMAC: [UInt8], local: LocalInterface) -> Verdict {
        // Ethernet II, IPv4, UDP to port 67: anything else is not ours.
        guard frame.count >= 14 + 20 + 8, be16(frame, 12) == 0x0800 else { return .notDHCP }
        let ip = 14
        let ihl = Int(frame[ip] & 0x0f) * 4
        guard frame[ip] >> 4 == 4, ihl >= 20, ip + ihl + 8 <= frame.count, frame[ip + 9] == 17 else {
            return .notDHCP
        }
        let udp = ip + ihl
        guard be16(frame, udp + 2) == serverPort else { return .notDHCP }
        // From here on it is addressed to a DHCP server: answer or drop.
        guard let reply = answer(frame: frame, ihl: ihl, guestMAC: guestMAC, local: local) else { return .drop }
        return .reply(reply)
    }

    private static func answer(frame: UnsafeRawBufferPointer, ihl: Int, guestMAC: [UInt8],
                               local: LocalInterface) -> [UInt8]? {
        guard frame.count >= 14 + minimumLength, frame.count <= 14 + 1500 else { return nil }
        let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        let destination = Array(frame[0..<6]), source = Array(frame[6..<12])
        guard destination == broadcast || destination == local.hostMAC, source == guestMAC else { return nil }
        let ip = 14
        let totalLength = Int(be16(frame, ip + 2))
        guard totalLength >= ihl + 8, ip + totalLength <= frame.count,
              be16(frame, ip + 6) & 0x3fff == 0,                          // no fragments
              checksum(frame, from: ip, count: ihl) == 0 else { return nil }
        let udp = ip + ihl
        let udpLength = Int(be16(frame, udp + 4))
        guard be16(frame, udp) == clientPort, udpLength >= 8 + fixedLength, udp + udpLength <= ip + totalLength
        else { return nil }
        let bootp = udp + 8
        let bootpLength = udpLength - 8
        // op BOOTREQUEST, Ethernet, 6-byte addresses, our guest's; no relay,
        // no client address, no boot file (dhcp.c ignores those requests).
        guard frame[bootp] == 1, frame[bootp + 1] == 1, frame[bootp + 2] == 6, frame[bootp + 3] == 0,
              frame[(bootp + 28)..<(bootp + 34)].elementsEqual(guestMAC),
              be32(frame, bootp + 12) == 0, frame[bootp + 108] == 0 else { return nil }
        var options = Options()
        let optionsLength = bootpLength - fixedLength
        var isDHCP = false
        if optionsLength > cookie.count + 3 {
            let start = bootp + fixedLength
            if frame[start..<(start + 4)].elementsEqual(cookie) {
                options = parseOptions(UnsafeRawBufferPointer(rebasing: frame[(start + 4)..<(bootp + bootpLength)]))
                isDHCP = options.messageType != nil
            }
        }
        var replyType: MessageType?
        if isDHCP {
            switch options.messageType {
            case MessageType.discover.rawValue: replyType = .offer
            case MessageType.request.rawValue:
                let asked = options.requestedAddress ?? 0
                replyType = (asked == 0 || asked == local.guestIPv4) ? .ack : .nak
            default: return nil
            }
        }
        let xid = Array(frame[(bootp + 4)..<(bootp + 8)])
        let flags = Array(frame[(bootp + 10)..<(bootp + 12)])
        return build(type: replyType, xid: xid, flags: flags, guestMAC: guestMAC, local: local)
    }

    /// The reply frame: Ethernet, IPv4, UDP 67 -> 68, BOOTP with options.
    static func build(type: MessageType?, xid: [UInt8], flags: [UInt8], guestMAC: [UInt8],
                      local: LocalInterface) -> [UInt8] {
        var bootp = [UInt8](repeating: 0, count: fixedLength)
        bootp[0] = 2; bootp[1] = 1; bootp[2] = 6
        bootp.replaceSubrange(4..<8, with: xid)
        bootp.replaceSubrange(10..<12, with: flags)
        put32(&bootp, 16, local.guestIPv4)      // yiaddr
        put32(&bootp, 20, local.hostIPv4)       // siaddr
        bootp.replaceSubrange(28..<34, with: guestMAC)
        var o = cookie
        if let type {
            o += [53, 1, type.rawValue]
            o += [51, 4, 0xff, 0xff, 0xff, 0xff]
            o += [54, 4] + bytes32(local.hostIPv4)
        }
        o += [1, 4, 255, 255, 255, 254]
        o += [3, 4] + bytes32(local.hostIPv4)
        o += [6, 4] + bytes32(local.hostIPv4)
        let name = Array(local.hostname.utf8)
        if name.count > 1 && name.count <= 255 { o += [12, UInt8(name.count)] + name }
        o.append(255)
        bootp += o
        if bootp.count < minimumLength { bootp += [UInt8](repeating: 0, count: minimumLength - bootp.count) }

        var udp = [UInt8](repeating: 0, count: 8)
        put16(&udp, 0, serverPort); put16(&udp, 2, clientPort); put16(&udp, 4, UInt16(8 + bootp.count))
        udp += bootp
        var ip = [UInt8](repeating: 0, count: 20)
        ip[0] = 0x45; put16(&ip, 2, UInt16(20 + udp.count)); ip[8] = 64; ip[9] = 17
        put32(&ip, 12, local.hostIPv4); put32(&ip, 16, local.guestIPv4)
        ip.withUnsafeBytes { put16(&ip, 10, checksum($0, from: 0, count: 20)) }
        // UDP checksum over the pseudo-header.
        var pseudo = Array(ip[12..<20]) + [0, 17] + bytes16(UInt16(udp.count))
        pseudo += udp
        var sum = pseudo.withUnsafeBytes { checksum($0, from: 0, count: pseudo.count) }
        if sum == 0 { sum = 0xffff }
        put16(&udp, 6, sum)
        return guestMAC + local.hostMAC + [0x08, 0x00] + ip + udp
    }

    /// The Internet checksum of `count` bytes from `from` (0 when a header
    /// that carries its checksum is intact).
    static func checksum(_ b: UnsafeRawBufferPointer, from: Int, count: Int) -> UInt16 {
        var sum: UInt32 = 0
        var i = from
        while i + 1 < from + count { sum += UInt32(b[i]) << 8 | UInt32(b[i + 1]); i += 2 }
        if i < from + count { sum += UInt32(b[i]) << 8 }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    static func be16(_ b: UnsafeRawBufferPointer, _ i: Int) -> UInt16 { UInt16(b[i]) << 8 | UInt16(b[i + 1]) }
    static func be32(_ b: UnsafeRawBufferPointer, _ i: Int) -> UInt32 {
        UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }
    static func bytes16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
    static func bytes32(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)]
    }
    static func put16(_ a: inout [UInt8], _ i: Int, _ v: UInt16) { a[i] = UInt8(v >> 8); a[i + 1] = UInt8(v & 0xff) }
    static func put32(_ a: inout [UInt8], _ i: Int, _ v: UInt32) {
        a.replaceSubrange(i..<(i + 4), with: bytes32(v))
    }
}
