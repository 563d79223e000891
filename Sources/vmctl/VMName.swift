/// What vmctl accepts as a VM name or id, checked before anything is sent
/// (vmctl.c's rules): letters, digits, `.`, `-`, `_`, not starting with
/// `.`, `-` or `_`, at most 63 bytes. All digits means a VM id.
enum VMName {
    static let maxLength = 63

    /// nil when `name` is acceptable, else why not.
    static func problem(_ name: String) -> String? {
        if name.isEmpty { return "missing vm name" }
        if name.utf8.count > maxLength { return "vm name too long (at most \(maxLength) bytes)" }
        guard let first = name.unicodeScalars.first, !".-_".unicodeScalars.contains(first) else {
            return "invalid vm name"
        }
        for s in name.unicodeScalars {
            let ok = ("a"..."z").contains(s) || ("A"..."Z").contains(s) || ("0"..."9").contains(s)
                || s == "." || s == "-" || s == "_"
            if !ok { return "invalid vm name" }
        }
        return nil
    }
}
