import VMDControl

/// `vmctl status` output: vmd's table, byte for byte, or JSON (our addition).
enum StatusTable {
    /// vmctl.c: printf("%5s %5s %5s %7s %7s %7s %12s %8s %s\n", ...).
    static let header = row("ID", "PID", "VCPUS", "MAXMEM", "CURMEM", "TTY", "OWNER", "STATE", "NAME")

    /// vmctl.c copies the owner into a 16-byte buffer with strlcpy/strlcat,
    /// so at most 15 bytes of `user:group` are shown.
    static let maxOwnerBytes = 15

    /// Running as vmctl.c decides it: the VM has a process. A VM that is
    /// still starting has none yet and shows dashes like a stopped one.
    static func isRunning(_ vm: VMInfo) -> Bool { vm.pid != 0 && vm.id != 0 }

    /// The header and one line per VM, each ending in a newline.
    /// `ownerName` turns the daemon's owner text into what is shown.
    static func render(_ vms: [VMInfo], ownerName: (String) -> String = { $0 }) -> String {
        var out = header
        for vm in vms { out += line(vm, ownerName: ownerName) }
        return out
    }

    static func line(_ vm: VMInfo, ownerName: (String) -> String = { $0 }) -> String {
        let running = isRunning(vm)
        return row(String(vm.id),
                   running ? String(vm.pid) : "-",
                   String(vm.vcpus),
                   ScaledSize.format(vm.maxMemory),
                   running ? ScaledSize.format(vm.curMemory) : "-",
                   running ? ttyName(vm.tty) : "-",
                   truncated(vm.owner.isEmpty ? "root" : ownerName(vm.owner), bytes: maxOwnerBytes),
                   vm.state,
                   vm.name)
    }

    /// `user[:group]` with numeric ids replaced by names where `user` and
    /// `group` know them, as vmctl.c shows owners (user_from_uid(3)); a
    /// VM made with `vmctl start` by a user is owned by that uid.
    static func ownerName(_ owner: String, user: (UInt32) -> String?, group: (UInt32) -> String?) -> String {
        let parts = owner.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard let first = parts.first else { return owner }
        var out = UInt32(first).flatMap(user) ?? String(first)
        if parts.count == 2 {
            out += ":" + (UInt32(parts[1]).flatMap(group) ?? String(parts[1]))
        }
        return out
    }

    /// The tty column drops the `/dev/` prefix: `/dev/pts/3` is `pts/3`.
    static func ttyName(_ path: String) -> String {
        if path.isEmpty { return "-" }
        if path.hasPrefix("/dev/") && path.count > 5 { return String(path.dropFirst(5)) }
        return path
    }

    static func row(_ id: String, _ pid: String, _ vcpus: String, _ maxmem: String, _ curmem: String,
                    _ tty: String, _ owner: String, _ state: String, _ name: String) -> String {
        [pad(id, 5), pad(pid, 5), pad(vcpus, 5), pad(maxmem, 7), pad(curmem, 7), pad(tty, 7),
         pad(owner, 12), pad(state, 8), name].joined(separator: " ") + "\n"
    }

    /// printf's `%Ns`: right-aligned in N bytes, never cut.
    static func pad(_ s: String, _ width: Int) -> String {
        let used = s.utf8.count
        return used >= width ? s : String(repeating: " ", count: width - used) + s
    }

    /// The first `bytes` bytes of `s`, never splitting a character.
    static func truncated(_ s: String, bytes: Int) -> String {
        var out = ""
        var used = 0
        for c in s {
            let n = String(c).utf8.count
            if used + n > bytes { break }
            out.append(c)
            used += n
        }
        return out
    }

    /// One JSON object per VM, keys sorted: sizes in bytes; pid, tty and
    /// curmem are null when the VM has no process; device_restarts only
    /// once a device process was restarted.
    static func jsonValue(_ vm: VMInfo) -> JSON.Value {
        let running = isRunning(vm)
        var fields: [(String, JSON.Value)] = [("curmem", running ? .uint(vm.curMemory) : .null)]
        if running && !vm.deviceRestarts.isEmpty {
            var counts: [String: UInt64] = [:]
            for r in vm.deviceRestarts { counts[r.device] = max(counts[r.device] ?? 0, UInt64(r.restarts)) }
            fields.append(("device_restarts", .object(counts.keys.sorted().map { ($0, .uint(counts[$0]!)) })))
        }
        fields += [
            ("id", .uint(UInt64(vm.id))),
            ("maxmem", .uint(vm.maxMemory)),
            ("name", .string(vm.name)),
            ("owner", .string(vm.owner.isEmpty ? "root" : vm.owner)),
            ("pid", running ? .int(Int64(vm.pid)) : .null),
            ("state", .string(vm.state)),
            ("tty", running && !vm.tty.isEmpty ? .string(vm.tty) : .null),
            ("vcpus", .uint(UInt64(vm.vcpus))),
        ]
        return .object(fields)
    }

    static func json(_ vms: [VMInfo]) -> String {
        JSON.text(.array(vms.map(jsonValue))) + "\n"
    }
}
