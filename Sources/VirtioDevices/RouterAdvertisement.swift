// vionet's router for `local inet6` (issue 15): OpenBSD leaves router
// advertisements to rad(8); Linux has no such daemon, so vionet answers
// the guest's Router Solicitations itself (RFC 4861 6.2.6), the way it
// answers DHCP (DHCPServer.swift).
//
// The advertisement is the one rad(8) would send with its defaults, from
// the host side of the tap:
//   Ethernet  host MAC (vmd's hostmac, the tap's address) -> 33:33:00:00:00:01
//   IPv6      fe80::EUI-64(host MAC) -> ff02::1, hop limit 255
//   RA        cur hop limit 64, no M/O flags, router lifetime 1800 s
//   options   source link-layer address = host MAC;
//             prefix information: the /64 holding the host side's address
//             (the `local inet6` prefix's first 64 bits), A flag set, L flag
//             clear, valid 2592000 s, preferred 604800 s;
//             RDNSS (RFC 8106): the host side's address, 1800 s.
// The L flag is clear on purpose: that /64 is shared by every local
// interface of every VM (vmd encodes the VM in the low 64 bits), so it is
// on-link on none of them; the guest sends everything, the host side's
// /96 included, to its default router, the host side.
//
// What else the guest sends on a local interface with `local inet6`:
// Router Advertisements and Redirects are dropped (a guest must not become
// the host's router), invalid solicitations too; every other frame goes on
// to the tap. The frame is guest data: every length is checked against
// what was received before it is used, and a reply is built only from the
// fixed values above.

public enum RouterAdvertisement {
    /// rad(8)'s defaults.
    static let routerLifetime: UInt16 = 1800
    static let validLifetime: UInt32 = 2_592_000
    static let preferredLifetime: UInt32 = 604_800
    static let curHopLimit: UInt8 = 64
    static let rdnssLifetime: UInt32 = 1800

    static let ethernetIPv6: UInt16 = 0x86dd
    static let icmpv6: UInt8 = 58
    public enum ICMPType: UInt8 {
        case routerSolicitation = 133, routerAdvertisement = 134, neighborSolicitation = 135
        case neighborAdvertisement = 136, redirect = 137
    }
    /// Extension headers walked to find what a frame really carries.
    static let extensionHeaders: Set<UInt8> = [0, 43, 44, 60]
    static let maxExtensionHeaders = 8

    /// fe80::/64 with the modified EUI-64 of `mac` (RFC 4291 2.5.1).
    public static func linkLocal(mac: [UInt8]) -> [UInt8] {
        precondition(mac.count == 6)
        return [0xfe, 0x80, 0, 0, 0, 0, 0, 0] + eui64(mac: mac)
    }

    /// The modified EUI-64 interface identifier of `mac`.
    public static func eui64(mac: [UInt8]) -> [UInt8] {
        [mac[0] ^ 0x02, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
    }

    /// The /64 the guest autoconfigures from: the host side's address
    /// with the low 64 bits cleared.
    public static func prefix64(hostIPv6: [UInt8]) -> [UInt8] {
        Array(hostIPv6.prefix(8)) + [UInt8](repeating: 0, count: 8)
    }

    /// What a valid Router Solicitation says (only what we check).
    public struct Solicitation: Equatable {
        public var sourceIsUnspecified: Bool
        public var sourceLinkLayer: [UInt8]?
    }

    public enum OptionsError: Error, Equatable {
        case truncated, zeroLength, pastEnd
    }

    /// Walks NDP options (RFC 4861 4.6): each is type, length in units of 8
    /// bytes (0 is invalid), data. Returns the source link-layer address
    /// option's address if present. Never reads outside `bytes`.
    public static func parseOptions(_ bytes: UnsafeRawBufferPointer) -> Result<[UInt8]?, OptionsError> {
        var i = 0
        var sourceLinkLayer: [UInt8]?
        while i < bytes.count {
            guard i + 2 <= bytes.count else { return .failure(.truncated) }
            let units = Int(bytes[i + 1])
            guard units > 0 else { return .failure(.zeroLength) }
            guard units * 8 <= bytes.count - i else { return .failure(.pastEnd) }
            if bytes[i] == 1 && units == 1 { sourceLinkLayer = Array(bytes[(i + 2)..<(i + 8)]) }
            i += units * 8
        }
        return .success(sourceLinkLayer)
    }

    /// Classifies a frame the guest sent (Ethernet header first) and, for
    /// a valid Router Solicitation, builds the advertisement. `local` must
    /// have a 16-byte hostIPv6; without one nothing is ours.
    public static func handle(frame: UnsafeRawBufferPointer, guestMAC: [UInt8],
                              local: LocalInterface) -> DHCPServer.Verdict {
        guard local.hostIPv6.count == 16, local.hostMAC.count == 6,
              frame.count >= 14 + 40, DHCPServer.be16(frame, 12) == ethernetIPv6 else { return .notDHCP }
        let ip = 14
        guard frame[ip] >> 4 == 6 else { return .notDHCP }
        // What the IPv6 header chain ends in; a chain that runs past the
        // frame or is too long is dropped (it might hide an advertisement).
        var next = frame[ip + 6]
        var offset = ip + 40
        var walked = 0
        var fragmented = false
        while extensionHeaders.contains(next) {
            walked += 1
            guard walked <= maxExtensionHeaders, offset + 8 <= frame.count else { return .drop }
            if next == 44 {
                fragmented = true
                // A later fragment: its upper layer is not in it.
                if DHCPServer.be16(frame, offset + 2) & 0xfff8 != 0 { return .notDHCP }
                next = frame[offset]
                offset += 8
            } else {
                let length = (Int(frame[offset + 1]) + 1) * 8
                next = frame[offset]
                guard offset + length <= frame.count else { return .drop }
                offset += length
            }
        }
        guard next == icmpv6 else { return .notDHCP }
        guard offset + 1 <= frame.count else { return .drop }
        switch frame[offset] {
        case ICMPType.routerAdvertisement.rawValue, ICMPType.redirect.rawValue:
            return .drop
        case ICMPType.routerSolicitation.rawValue:
            guard walked == 0, !fragmented, validSolicitation(frame: frame, guestMAC: guestMAC, local: local) != nil
            else { return .drop }
            return .reply(advertisement(guestMAC: guestMAC, local: local))
        default:
            return .notDHCP
        }
    }

    /// RFC 4861 6.1.1's checks of a Router Solicitation, plus: from our
    /// guest's MAC, to all-routers or to us. nil: invalid.
    public static func validSolicitation(frame: UnsafeRawBufferPointer, guestMAC: [UInt8],
                                         local: LocalInterface) -> Solicitation? {
        let ip = 14, icmp = 14 + 40
        guard frame.count >= icmp + 8, frame.count <= 14 + 1500 else { return nil }
        let payloadLength = Int(DHCPServer.be16(frame, ip + 4))
        guard payloadLength >= 8, icmp + payloadLength <= frame.count,
              frame[ip + 6] == icmpv6, frame[ip + 7] == 255,              // hop limit
              frame[icmp] == ICMPType.routerSolicitation.rawValue, frame[icmp + 1] == 0 else { return nil }
        guard frame[6..<12].elementsEqual(guestMAC) else { return nil }
        let allRoutersMAC: [UInt8] = [0x33, 0x33, 0, 0, 0, 2]
        guard frame[0..<6].elementsEqual(allRoutersMAC) || frame[0..<6].elementsEqual(local.hostMAC) else { return nil }
        let destination = frame[(ip + 24)..<(ip + 40)]
        let allRouters: [UInt8] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
        guard destination.elementsEqual(allRouters) || destination.elementsEqual(linkLocal(mac: local.hostMAC))
        else { return nil }
        let source = frame[(ip + 8)..<(ip + 24)]
        let unspecified = source.allSatisfy { $0 == 0 }
        // A source is the unspecified address or the guest's link-local one.
        guard unspecified || (source.first == 0xfe && source[source.startIndex + 1] & 0xc0 == 0x80) else { return nil }
        guard icmpChecksum(frame, ip: ip, payloadLength: payloadLength) == 0 else { return nil }
        let options = UnsafeRawBufferPointer(rebasing: frame[(icmp + 8)..<(icmp + payloadLength)])
        guard case .success(let sll) = parseOptions(options) else { return nil }
        if unspecified && sll != nil { return nil }
        return Solicitation(sourceIsUnspecified: unspecified, sourceLinkLayer: sll)
    }

    /// The advertisement (an Ethernet frame, no virtio header): to every
    /// node of the link; the guest is the only one.
    public static func advertisement(guestMAC: [UInt8], local: LocalInterface) -> [UInt8] {
        var ra: [UInt8] = [ICMPType.routerAdvertisement.rawValue, 0, 0, 0, curHopLimit, 0]
        ra += DHCPServer.bytes16(routerLifetime)
        ra += [0, 0, 0, 0, 0, 0, 0, 0]                                   // reachable, retrans: unspecified
        ra += [1, 1] + local.hostMAC                                     // source link-layer address
        ra += [3, 4, 64, 0x40]                                           // prefix information, A
        ra += DHCPServer.bytes32(validLifetime) + DHCPServer.bytes32(preferredLifetime) + [0, 0, 0, 0]
        ra += prefix64(hostIPv6: local.hostIPv6)
        ra += [25, 3, 0, 0] + DHCPServer.bytes32(rdnssLifetime) + local.hostIPv6
        let source = linkLocal(mac: local.hostMAC)
        let destination: [UInt8] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        var ip: [UInt8] = [0x60, 0, 0, 0] + DHCPServer.bytes16(UInt16(ra.count)) + [icmpv6, 255]
        ip += source + destination
        var frame = [0x33, 0x33, 0, 0, 0, 1] + local.hostMAC + [0x86, 0xdd] + ip + ra
        let sum = frame.withUnsafeBytes { icmpChecksum($0, ip: 14, payloadLength: ra.count) }
        DHCPServer.put16(&frame, 14 + 40 + 2, sum)
        return frame
    }

    /// The ICMPv6 checksum over the pseudo-header (RFC 8200 8.1) and the
    /// message: 0 when a received message's checksum is right. The caller
    /// has checked that ip + 40 + payloadLength <= b.count.
    static func icmpChecksum(_ b: UnsafeRawBufferPointer, ip: Int, payloadLength: Int) -> UInt16 {
        var sum: UInt32 = 0
        var i = ip + 8
        while i < ip + 40 { sum += UInt32(DHCPServer.be16(b, i)); i += 2 }
        sum += UInt32(payloadLength >> 16) + UInt32(payloadLength & 0xffff) + UInt32(icmpv6)
        let end = ip + 40 + payloadLength
        i = ip + 40
        while i + 1 < end { sum += UInt32(DHCPServer.be16(b, i)); i += 2 }
        if i < end { sum += UInt32(b[i]) << 8 }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }
}

/// What vionet itself answers on a local interface: DHCP, and with
/// `local inet6` router solicitations. The one call VioNet makes.
public enum LocalServices {
    public static func handle(frame: UnsafeRawBufferPointer, guestMAC: [UInt8],
                              local: LocalInterface) -> DHCPServer.Verdict {
        let v4 = DHCPServer.handle(frame: frame, guestMAC: guestMAC, local: local)
        guard v4 == .notDHCP, local.hostIPv6.count == 16 else { return v4 }
        return RouterAdvertisement.handle(frame: frame, guestMAC: guestMAC, local: local)
    }
}
