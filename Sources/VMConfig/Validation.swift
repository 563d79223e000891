// Value checks for vm.conf arguments. Each returns the parsed value or a
// message that says what was expected; none of them traps on any input.

#if canImport(Glibc)
import Glibc
#endif

enum Validate {
    /// VM and switch names: alphanumerics, '.', '-' and '_', not starting
    /// with '.', '-' or '_' (they become process titles and file names).
    static func name(_ name: String, what: String) -> String? {
        let bytes = Array(name.utf8)
        guard let first = bytes.first else { return "\(what) name is empty" }
        guard bytes.count <= ConfigLimits.maxNameLength else {
            return "\(what) name too long: \"\(name)\" (at most \(ConfigLimits.maxNameLength) characters)"
        }
        let allowed = bytes.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_")
        }
        guard allowed && isAlphanumeric(first) else {
            return "invalid \(what) name: \"\(name)\" (expected letters, digits, '.', '-' and '_', "
                + "starting with a letter or digit)"
        }
        return nil
    }

    /// Linux network interface names (IFNAMSIZ): tap devices and bridges.
    static func interfaceName(_ name: String, what: String) -> String? {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, name != ".", name != ".." else {
            return "invalid \(what): \"\(name)\""
        }
        guard bytes.count <= ConfigLimits.maxInterfaceNameLength else {
            return "\(what) name too long: \"\(name)\" (at most \(ConfigLimits.maxInterfaceNameLength) characters)"
        }
        let allowed = bytes.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_")
        }
        guard allowed else {
            return "invalid \(what): \"\(name)\" (expected letters, digits, '.', '-' and '_')"
        }
        return nil
    }

    /// Interface groups as ifconfig(8) wants them: short, not ending in a digit.
    static func groupName(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        let valid = !bytes.isEmpty && bytes.count <= ConfigLimits.maxGroupNameLength
            && !isDigit(bytes[bytes.count - 1])
            && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7f }
        return valid ? nil
            : "invalid group name: \"\(name)\" (at most \(ConfigLimits.maxGroupNameLength) "
              + "characters, not ending with a digit)"
    }

    static func path(_ path: String, what: String) -> String? {
        if path.isEmpty { return "\(what) path is empty" }
        if path.utf8.count > ConfigLimits.maxPathLength {
            return "\(what) path too long (at most \(ConfigLimits.maxPathLength) bytes)"
        }
        return nil
    }

    /// A file the VM will use (boot, initrd, disk, cdrom): checked and
    /// resolved with realpath(3) as vmd's parser does, so `vmd -n`, start-up
    /// and reload all report a missing file with its `file:line`, and a
    /// relative name means the same thing after the daemon's chdir("/").
    static func existingPath(_ path: String, what: String) -> Result<String, Reason> {
        if let problem = Validate.path(path, what: what) { return .failure(Reason(problem)) }
        guard let resolved = realpath(path, nil) else {
            return .failure(Reason("\(what) \(path): \(String(cString: strerror(errno)))"))
        }
        defer { free(resolved) }
        return .success(String(cString: resolved))
    }

    /// `user`, `user:group` or `:group` (vm.conf's owner_id). Names are kept;
    /// the daemon looks them up.
    static func owner(_ text: String) -> Result<Owner, Reason> {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let user = parts.first.flatMap { $0.isEmpty ? nil : $0 }
        let group = parts.count > 1 ? parts[1] : nil
        let bad = "invalid owner: \"\(text)\" (expected user, user:group or :group)"
        if user == nil && (group ?? "").isEmpty { return .failure(Reason(bad)) }
        if parts.count > 1 && (group ?? "").isEmpty { return .failure(Reason(bad)) }
        for name in [user, group].compactMap({ $0 }) {
            let bytes = Array(name.utf8)
            let ok = bytes.count <= 32 && bytes.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ":") }
            if !ok { return .failure(Reason(bad)) }
        }
        return .success(Owner(user: user, group: group))
    }

    /// Why `owner` names a user or group that does not exist, or nil.
    static func ownerExists(_ owner: Owner) -> String? {
        func numeric(_ s: String) -> Bool { !s.isEmpty && s.utf8.allSatisfy(isDigit) && UInt32(s) != nil }
        if let u = owner.user, !numeric(u), getpwnam(u) == nil { return "failed to get user: \(u)" }
        if let g = owner.group, !numeric(g), getgrnam(g) == nil { return "failed to get group: \(g)" }
        return nil
    }

    /// ether_aton(3): six hex bytes of one or two digits separated by ':'.
    /// A multicast address cannot be a NIC's own address.
    static func lladdr(_ text: String) -> Result<MACAddress, Reason> {
        let bad = "invalid lladdr: \"\(text)\" (expected six hex bytes like fe:e1:ba:d0:00:01)"
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return .failure(Reason(bad)) }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...2).contains(part.utf8.count), let byte = UInt8(part, radix: 16) else { return .failure(Reason(bad)) }
            bytes.append(byte)
        }
        guard let mac = MACAddress(bytes: bytes) else { return .failure(Reason(bad)) }
        if bytes[0] & 1 != 0 {
            return .failure(Reason("invalid lladdr: \"\(text)\" is a multicast address"))
        }
        return .success(mac)
    }

    /// `a.b.c.d/len` or `x:y::/len`; the address is rewritten canonically.
    static func prefix(_ text: String, inet6: Bool, maxLength: Int) -> IPPrefix? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, (1...3).contains(parts[1].utf8.count),
              parts[1].utf8.allSatisfy(isDigit), let length = Int(parts[1]),
              (0...maxLength).contains(length),
              let address = canonicalAddress(String(parts[0]), inet6: inet6)
        else { return nil }
        return IPPrefix(address: address, length: length)
    }

    private static func canonicalAddress(_ text: String, inet6: Bool) -> String? {
        guard !text.isEmpty, text.utf8.count < 64 else { return nil }
        let family = inet6 ? AF_INET6 : AF_INET
        var binary = [UInt8](repeating: 0, count: 16)
        let parsed = binary.withUnsafeMutableBytes { inet_pton(family, text, $0.baseAddress) }
        guard parsed == 1 else { return nil }
        var output = [CChar](repeating: 0, count: 64)
        let written = binary.withUnsafeBytes { raw in
            output.withUnsafeMutableBufferPointer { inet_ntop(family, raw.baseAddress, $0.baseAddress, 64) }
        }
        guard written != nil else { return nil }
        let end = output.firstIndex(of: 0) ?? output.count
        return String(decoding: output[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// scan_scaled(3): digits, an optional fraction, an optional unit
    /// B, K, M, G, T, P or E (powers of 1024); a plain number is bytes.
    static func scaledSize(_ text: String) -> UInt64? {
        var bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return nil }
        var multiplier: UInt64 = 1
        if let last = bytes.last, !isDigit(last) {
            let units: [UInt8] = Array("BKMGTPE".utf8)
            let upper = last >= 0x61 && last <= 0x7a ? last - 0x20 : last
            guard let index = units.firstIndex(of: upper) else { return nil }
            multiplier = 1 << (10 * UInt64(index))
            bytes.removeLast()
        }
        let pieces = bytes.split(separator: UInt8(ascii: "."), maxSplits: 1, omittingEmptySubsequences: false)
        guard let wholeDigits = pieces.first, !wholeDigits.isEmpty, wholeDigits.allSatisfy(isDigit),
              wholeDigits.count <= 20 else { return nil }
        var whole: UInt64 = 0
        for digit in wholeDigits {
            let (times, o1) = whole.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times.addingReportingOverflow(UInt64(digit - 0x30))
            if o1 || o2 { return nil }
            whole = sum
        }
        var (total, overflow) = whole.multipliedReportingOverflow(by: multiplier)
        if overflow { return nil }
        if pieces.count == 2 {
            let fraction = pieces[1]
            guard !fraction.isEmpty, fraction.count <= 18, fraction.allSatisfy(isDigit), multiplier > 1 else {
                return nil
            }
            // fraction * multiplier / 10^digits, exactly in 128 bits' worth of care.
            var numerator: UInt64 = 0
            var denominator: UInt64 = 1
            for digit in fraction {
                numerator = numerator * 10 + UInt64(digit - 0x30)
                denominator *= 10
            }
            let product = numerator.multipliedFullWidth(by: multiplier)
            let (part, _) = denominator.dividingFullWidth(product)
            (total, overflow) = total.addingReportingOverflow(part)
            if overflow { return nil }
        }
        return total
    }

    /// A size as vm.conf prints it: the largest unit that divides it exactly.
    static func formatSize(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
        for (size, unit) in units where bytes >= size && bytes % size == 0 {
            return "\(bytes / size)\(unit)"
        }
        return "\(bytes)"
    }
}

/// Why a value was refused, in words for the user.
struct Reason: Error {
    let text: String
    init(_ text: String) { self.text = text }
}
