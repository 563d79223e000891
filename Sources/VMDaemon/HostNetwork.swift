import Glibc
import CNetlink
import VMDSystem
import VirtioDevices

/// The host side of VM networking, done by `vmd: priv` over rtnetlink
/// (libmnl): a tap's state, group, description and addresses, the Linux
/// bridges that are vm.conf switches, the VRFs that are routing domains.
///
/// Linux mapping (vm.conf(5) says the same):
/// - `rdomain 0`: no VRF. `rdomain N` (1-255): the VRF `vrfN`, routing
///   table `HostNetwork.vrfTableBase + N` (0x766d0000 + N; far from
///   Linux's reserved 253-255 and the small numbers admins use), created
///   on demand, used as it is when it already exists.
/// - `switch`: a Linux bridge; one that exists is used as it is, one vmd
///   creates is removed when vmd stops.
/// - `group`: the link's one numeric group (IFLA_GROUP).
/// Links vmd creates carry the alias `vmd[PID]: ...` (PID: vmd's parent
/// process), so a later vmd removes what a killed one left behind.
final class HostNetwork {
    static let vrfTableBase: UInt32 = 0x766d_0000
    static let aliasPrefix = "vmd["

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// `vmd[PID]: ` for links this vmd creates.
    let owner: String
    /// Bridges and VRFs this vmd created, in creation order.
    private(set) var created: [String] = []

    init(daemonPID: Int32) {
        owner = "\(Self.aliasPrefix)\(daemonPID)]: "
    }

    static func check(_ r: Int32, _ what: @autoclosure () -> String) throws {
        if r < 0 { throw Failure(description: "\(what()): \(String(cString: strerror(-r)))") }
    }

    static func validName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        return !b.isEmpty && b.count <= 15 && name != "." && name != ".." && b.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a)
                || $0 == 0x2e || $0 == 0x2d || $0 == 0x5f
        }
    }

    /// The link's kind ("" for none, e.g. a tap), master ifindex, group, flags; nil when absent.
    static func info(_ name: String) -> (kind: String, master: Int32, group: UInt32, flags: UInt32)? {
        var kind = [CChar](repeating: 0, count: 32)
        var master: Int32 = 0, group: UInt32 = 0, flags: UInt32 = 0
        guard vmdnl_link_info(name, &kind, kind.count, &master, &group, &flags) == 0 else { return nil }
        return (String(cString: kind), master, group, flags)
    }

    /// Removes the bridges and VRFs whose alias names a vmd that no longer
    /// runs. Before the sandbox (kill(pid, 0)).
    func removeLeftovers() {
        var buffer = [CChar](repeating: 0, count: 65536)
        let n = vmdnl_links_with_alias(Self.aliasPrefix, &buffer, buffer.count)
        guard n > 0 else { return }
        for line in String(cString: buffer).split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let name = String(parts[0]), alias = parts[1]
            let digits = alias.dropFirst(Self.aliasPrefix.count).prefix { $0 >= "0" && $0 <= "9" }
            guard let pid = Int32(digits), pid > 0 else { continue }
            if kill(pid, 0) == 0 || errno == EPERM { continue }   // that vmd still runs
            let r = vmdnl_link_delete(name)
            if r < 0 { Log.warning("cannot remove \(name) left by vmd \(pid): \(String(cString: strerror(-r)))") }
            else { Log.info("removed \(name) left behind by vmd \(pid) (\(alias.dropFirst(Self.aliasPrefix.count + digits.count + 3)))") }
        }
    }

    /// Removes what this vmd created, newest first (bridges before the VRFs they sit in).
    func removeCreated() {
        for name in created.reversed() {
            let r = vmdnl_link_delete(name)
            if r < 0 && r != -ENODEV { Log.warning("cannot remove \(name): \(String(cString: strerror(-r)))") }
        }
        created.removeAll()
    }

    /// The VRF of routing domain `rdomain`, created (and brought up) on first use; its ifindex.
    func vrf(_ rdomain: UInt32) throws -> Int32 {
        let name = "vrf\(rdomain)"
        if let i = Self.info(name) {
            guard i.kind == "vrf" else { throw Failure(description: "rdomain \(rdomain): \(name) exists and is not a VRF") }
        } else {
            try Self.check(vmdnl_link_create(name, "vrf", Self.vrfTableBase + rdomain, owner + "rdomain \(rdomain)"),
                           "create \(name)")
            created.append(name)
            try Self.check(vmdnl_link_set(name, 1, -1, -1, nil, nil), "up \(name)")
        }
        return vmdnl_ifindex(name)
    }

    /// The switch's bridge, created and configured when it does not exist;
    /// an existing bridge is used as it is. Its ifindex.
    func bridge(_ sw: TapRequest.SwitchSetup) throws -> Int32 {
        guard Self.validName(sw.interface) else { throw Failure(description: "switch \(sw.name): bad interface name") }
        if let i = Self.info(sw.interface) {
            guard i.kind == "bridge" else {
                throw Failure(description: "switch \(sw.name): \(sw.interface) exists and is not a bridge")
            }
        } else {
            // The VRF first: a bridge is only created when it can be set up whole.
            let master = sw.rdomain > 0 ? try vrf(sw.rdomain) : -1
            try Self.check(vmdnl_link_create(sw.interface, "bridge", 0, owner + "switch \(sw.name)"),
                           "switch \(sw.name): create bridge \(sw.interface)")
            created.append(sw.interface)
            try Self.check(vmdnl_link_set(sw.interface, sw.up ? 1 : 0, sw.group.map(Int64.init) ?? -1, master, nil, nil),
                           "switch \(sw.name): configure \(sw.interface)")
        }
        return vmdnl_ifindex(sw.interface)
    }

    /// Configures an open tap's host side as asked: link address, alias,
    /// group, bridge or VRF, addresses, then up or down.
    func configure(tap: String, _ req: TapRequest) throws {
        let lladdr = req.hostLladdr.count == 6 ? req.hostLladdr : nil
        let group = req.group ?? req.bridge?.group
        try Self.check(lladdr.withUnsafeOptionalBytes { p in
            vmdnl_link_set(tap, -1, group.map(Int64.init) ?? -1, -1, req.description.isEmpty ? nil : req.description, p)
        }, "\(tap): configure")
        if let sw = req.bridge {
            try Self.check(vmdnl_link_set(tap, -1, -1, try bridge(sw), nil, nil), "\(tap): join \(sw.interface)")
        } else if req.rdomain > 0 {
            try Self.check(vmdnl_link_set(tap, -1, -1, try vrf(req.rdomain), nil, nil), "\(tap): join vrf\(req.rdomain)")
        }
        if req.localIPv4 != 0 {
            let a = [UInt8(req.localIPv4 >> 24), UInt8((req.localIPv4 >> 16) & 0xff),
                     UInt8((req.localIPv4 >> 8) & 0xff), UInt8(req.localIPv4 & 0xff)]
            try Self.check(vmdnl_addr_add(tap, AF_INET, a, 31), "\(tap): address")
        }
        try Self.check(vmdnl_link_set(tap, req.up ? 1 : 0, -1, -1, nil, nil), "\(tap): \(req.up ? "up" : "down")")
        if req.localIPv6.count == 16 {
            try Self.check(vmdnl_addr_add(tap, AF_INET6, req.localIPv6, 96), "\(tap): IPv6 address")
            // `local inet6` (RouterAdvertisement.swift): vionet's router
            // advertisements come from fe80::EUI-64(host MAC); the host side
            // has that address whatever the host's addr_gen_mode, so its
            // kernel answers the guest's neighbour solicitations for it.
            if req.hostLladdr.count == 6 {
                try Self.check(vmdnl_addr_add(tap, AF_INET6, RouterAdvertisement.linkLocal(mac: req.hostLladdr), 64),
                               "\(tap): IPv6 link-local address")
            }
            // The guest's SLAAC address (EUI-64 of its MAC in the /64 the
            // advertisement gives) is reached through this tap.
            // (A route needs the link up: a `down` host side gets none.)
            if req.guestSLAAC.count == 16 && req.up {
                let table = req.rdomain > 0 ? Self.vrfTableBase + req.rdomain : 254 /* RT_TABLE_MAIN */
                try Self.check(vmdnl_route_add(tap, AF_INET6, req.guestSLAAC, 128, table), "\(tap): IPv6 route")
            }
        }
    }
}

private extension Optional where Wrapped == [UInt8] {
    func withUnsafeOptionalBytes<R>(_ body: (UnsafePointer<UInt8>?) -> R) -> R {
        switch self {
        case .some(let a): return a.withUnsafeBufferPointer { body($0.baseAddress) }
        case .none: return body(nil)
        }
    }
}
