// Addresses of `local interface`s, computed as OpenBSD vmd's priv.c does
// (vm_priv_addr, vm_priv_addr6): VM id N and interface index M give
// the /31 PREFIX + N.(2M+2) (host side) and PREFIX + N.(2M+3) (guest), and
// with `local inet6` PREFIX6 with the guest's IPv4 address in bytes 8-11
// and 1 (host) or 2 (guest) in the last byte, a /96.

#if canImport(Glibc)
import Glibc
#endif

public enum LocalAddress {
    /// The IPv4 address (host byte order), nil when the VM id or the
    /// interface index does not fit the prefix (vmd's "dhcp address range
    /// exceeded"): the prefix must keep its bits, and idx < 127.
    public static func ipv4(prefix: IPPrefix, vmid: UInt32, index: Int, isVM: Bool) -> UInt32? {
        guard let base = parseIPv4(prefix.address), (0...32).contains(prefix.length),
              index >= 0, index < 0x7f else { return nil }
        let mask: UInt32 = prefix.length == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix.length)
        var address = vmid &<< 8
        address |= UInt32((index + 1) * 2)
        if isVM { address &+= 1 }
        address |= base
        guard address & mask == base else { return nil }
        return address
    }

    /// The IPv6 address (16 bytes) for `local inet6` with this prefix.
    public static func ipv6(prefix6: IPPrefix, prefix: IPPrefix, vmid: UInt32, index: Int, isVM: Bool) -> [UInt8]? {
        guard var bytes = parseIPv6(prefix6.address),
              let guest = ipv4(prefix: prefix, vmid: vmid, index: index, isVM: true) else { return nil }
        bytes[8] = UInt8(guest >> 24); bytes[9] = UInt8((guest >> 16) & 0xff)
        bytes[10] = UInt8((guest >> 8) & 0xff); bytes[11] = UInt8(guest & 0xff)
        bytes[15] = isVM ? 2 : 1
        return bytes
    }

    /// The default when `local inet6` has no prefix (vmd's parse.y).
    public static let defaultInet6Prefix = IPPrefix(address: "fd00::", length: 8)

    /// What `local inet6` without a prefix uses, as vmd's config.c
    /// (config_init_localprefix): fd00::/8 with its 56 bits of "Global ID"
    /// and "Subnet ID" (bytes 1-7) random, drawn once per daemon (a reload
    /// keeps them). The length stays /8 as in vmd.
    public static let startupInet6Prefix: IPPrefix = {
        var bytes: [UInt8] = [0xfd] + [UInt8](repeating: 0, count: 15)
        var random = [UInt8](repeating: 0, count: 7)
        var got = 0
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        while fd >= 0 && got < 7 {
            let n = random.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, 7 - got) }
            if n > 0 { got += n } else if n == 0 || errno != EINTR { break }
        }
        if fd >= 0 { close(fd) }
        // Without /dev/urandom: fd00::/8 as it is.
        if got == 7 { bytes.replaceSubrange(1..<8, with: random) }
        return IPPrefix(address: format(ipv6: bytes), length: 8)
    }()

    public static func format(ipv6 bytes: [UInt8]) -> String {
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) { $0.copyBytes(from: bytes.prefix(16)) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &a, &text, socklen_t(text.count))
        return String(cString: text)
    }

    /// vmd's parse_prefix6 check: no bit set past the prefix length.
    public static func hostBitsClear(prefix6: IPPrefix) -> Bool {
        guard let bytes = parseIPv6(prefix6.address), (0...128).contains(prefix6.length) else { return false }
        for (i, b) in bytes.enumerated() {
            let keep = max(0, min(8, prefix6.length - i * 8))
            let mask: UInt8 = keep == 0 ? 0 : ~UInt8(0) << UInt8(8 - keep)
            if b & ~mask != 0 { return false }
        }
        return true
    }

    /// vmd's parse_prefix4 check: no bit set past the prefix length.
    public static func hostBitsClear(prefix4: IPPrefix) -> Bool {
        guard let address = parseIPv4(prefix4.address), (0...32).contains(prefix4.length) else { return false }
        let mask: UInt32 = prefix4.length == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix4.length)
        return address & ~mask == 0
    }

    public static func parseIPv4(_ text: String) -> UInt32? {
        var a = in_addr()
        guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
        return UInt32(bigEndian: a.s_addr)
    }

    public static func parseIPv6(_ text: String) -> [UInt8]? {
        var a = in6_addr()
        guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
        return withUnsafeBytes(of: &a) { Array($0) }
    }

    public static func format(ipv4 a: UInt32) -> String {
        "\(a >> 24).\((a >> 16) & 0xff).\((a >> 8) & 0xff).\(a & 0xff)"
    }
}
