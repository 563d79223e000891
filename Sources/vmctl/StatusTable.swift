import Foundation
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

    /// One JSON object per VM: sizes in bytes; pid, tty and curmem are null
    /// when the VM has no process.
    struct Entry: Encodable {
        let vm: VMInfo

        enum Key: String, CodingKey { case id, pid, vcpus, maxmem, curmem, tty, owner, state, name, device_restarts }

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            let running = StatusTable.isRunning(vm)
            try c.encode(vm.id, forKey: .id)
            if running { try c.encode(vm.pid, forKey: .pid) } else { try c.encodeNil(forKey: .pid) }
            try c.encode(vm.vcpus, forKey: .vcpus)
            try c.encode(vm.maxMemory, forKey: .maxmem)
            if running { try c.encode(vm.curMemory, forKey: .curmem) } else { try c.encodeNil(forKey: .curmem) }
            if running && !vm.tty.isEmpty { try c.encode(vm.tty, forKey: .tty) } else { try c.encodeNil(forKey: .tty) }
            try c.encode(vm.owner.isEmpty ? "root" : vm.owner, forKey: .owner)
            try c.encode(vm.state, forKey: .state)
            try c.encode(vm.name, forKey: .name)
            // Only once a device process was restarted (issue 12).
            if running && !vm.deviceRestarts.isEmpty {
                let counts = Dictionary(vm.deviceRestarts.map { ($0.device, $0.restarts) }, uniquingKeysWith: max)
                try c.encode(counts, forKey: .device_restarts)
            }
        }
    }

    static func json(_ vms: [VMInfo]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding plain numbers and strings cannot fail.
        let data = (try? encoder.encode(vms.map(Entry.init))) ?? Data("[]".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
