import VMDControl

/// The second table of `vmctl status`: vmd's vhost-user backends, printed
/// after the VMs only when there are any. Same style as the VM table: one
/// header line in capitals, one line per backend, columns separated by
/// spaces; names and sockets (any length) left-aligned, numbers and states
/// right-aligned, each column as wide as its widest entry.
enum BackendTable {
    static let columns = ["NAME", "KIND", "SOCKET", "STATE", "FRONTEND-PID", "RESTARTS"]
    /// Which columns are left-aligned (the free-length text).
    static let leftAligned: Set<Int> = [0, 2]

    static func fields(_ b: BackendInfo) -> [String] {
        [b.name, b.kind, b.socket, b.state, b.frontendPID != 0 ? String(b.frontendPID) : "-", String(b.restarts)]
    }

    /// The header and one line per backend, each ending in a newline; ""
    /// when there are none.
    static func render(_ backends: [BackendInfo]) -> String {
        guard !backends.isEmpty else { return "" }
        let rows = [columns] + backends.map(fields)
        var widths = [Int](repeating: 0, count: columns.count)
        for row in rows {
            for (i, field) in row.enumerated() { widths[i] = max(widths[i], field.utf8.count) }
        }
        return rows.map { row in
            var cells: [String] = []
            for (i, field) in row.enumerated() {
                let gap = String(repeating: " ", count: widths[i] - field.utf8.count)
                // The last column needs no trailing blanks.
                if leftAligned.contains(i) { cells.append(i == row.count - 1 ? field : field + gap) }
                else { cells.append(gap + field) }
            }
            return cells.joined(separator: " ") + "\n"
        }.joined()
    }

    /// One JSON object per backend, the table's fields, keys sorted:
    /// frontend_pid is null when no frontend is connected.
    static func jsonValue(_ b: BackendInfo) -> JSON.Value {
        .object([
            ("frontend_pid", b.frontendPID != 0 ? .int(Int64(b.frontendPID)) : .null),
            ("kind", .string(b.kind)),
            ("name", .string(b.name)),
            ("restarts", .uint(UInt64(b.restarts))),
            ("socket", .string(b.socket)),
            ("state", .string(b.state)),
        ])
    }

    /// `--json`: without backends the VM array as before; with backends an
    /// object `{"vhost_user": [...], "vms": [...]}`.
    static func json(vms: [VMInfo], backends: [BackendInfo]) -> String {
        let vmArray = JSON.Value.array(vms.map(StatusTable.jsonValue))
        guard !backends.isEmpty else { return JSON.text(vmArray) + "\n" }
        return JSON.text(.object([("vhost_user", .array(backends.map(jsonValue))), ("vms", vmArray)])) + "\n"
    }
}
