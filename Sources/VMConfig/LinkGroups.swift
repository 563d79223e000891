// iproute2's link group names (`/etc/iproute2/group`: "NUMBER NAME" lines,
// '#' comments), so vm.conf can say `group vms` where Linux wants a number.

#if canImport(Glibc)
import Glibc
#endif

public enum LinkGroups {
    /// Names to numbers from the files, the first definition of a name
    /// winning; missing or unreadable files add nothing.
    public static func load(_ paths: [String]) -> [String: UInt32] {
        var table: [String: UInt32] = [:]
        for path in paths {
            guard case .success(let bytes) = ConfigFile.read(path) else { continue }
            for (name, id) in parse(bytes) where table[name] == nil { table[name] = id }
        }
        return table
    }

    /// The file's valid lines; anything else is skipped as iproute2 does.
    public static func parse(_ bytes: [UInt8]) -> [(String, UInt32)] {
        var result: [(String, UInt32)] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let text = line.prefix { $0 != UInt8(ascii: "#") }
            let words = text.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0d })
            guard words.count >= 2 else { continue }
            let number = String(decoding: words[0], as: UTF8.self)
            let id: UInt32?
            if number.hasPrefix("0x") { id = UInt32(number.dropFirst(2), radix: 16) } else { id = UInt32(number) }
            guard let id else { continue }
            result.append((String(decoding: words[1], as: UTF8.self), id))
        }
        return result
    }
}
