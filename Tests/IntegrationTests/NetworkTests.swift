import Foundation
import XCTest
import Glibc

/// Issue 15: vm.conf's network model on Linux, in a network namespace each
/// test creates: taps configured by `vmd: priv`, switches as bridges,
/// groups, VRFs, local interfaces with vionet's DHCP server, and nothing
/// left behind.
final class NetworkTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func vm(_ name: String, cmdline: String, _ interfaces: String) -> String {
        """
        vm "\(name)" {
            memory 64M
            boot "\(Repo.vmtestELF)"
            cmdline "\(cmdline)"
        \(interfaces)
        }
        """
    }

    func ip(_ ns: NetNamespace, _ args: [String]) -> String {
        (try? runCommand("/usr/sbin/ip", ["-n", ns.name] + args))?.out ?? ""
    }

    func links(_ ns: NetNamespace) -> [String] {
        ip(ns, ["-o", "link", "show"]).split(separator: "\n").compactMap { line in
            let parts = line.split(separator: ":", maxSplits: 2)
            guard parts.count >= 2 else { return nil }
            return String(parts[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first ?? "")
        }
    }

    func waitFor(_ timeout: Double = 20, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(50_000)
        }
        return false
    }

    /// `local interface`: the guest's DHCP client gets vmd's /31 from
    /// vionet, then pings the host side, which priv addressed and brought up.
    func testLocalInterfaceGetsItsAddressFromVionetDHCP() throws {
        let ns = try NetNamespace()
        let d = try Daemon(config: vm("web", cmdline: "dhcp stay", "    local interface"), extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest: net ", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("vmtest: dhcp ok ip=100.64.1.3/31 router=100.64.1.2 server=100.64.1.2 "
                                     + "lease=4294967295 hostname=web"), d.log)
        XCTAssertTrue(d.log.contains("vmtest: net ok"), d.log)
        let tap = try XCTUnwrap(links(ns).first { $0.hasPrefix("tap") }, "\(links(ns))")
        let detail = ip(ns, ["-d", "addr", "show", tap])
        XCTAssertTrue(detail.contains("inet 100.64.1.2/31"), detail)
        XCTAssertTrue(detail.contains("alias vm1-if0-web"), detail)
        XCTAssertTrue(detail.contains(",UP"), "the host side is up:\n\(detail)")

        XCTAssertEqual(try d.vmctl(["stop", "-f", "-w", "web"], timeout: 60).status, 0)
        XCTAssertTrue(waitFor { !self.links(ns).contains(tap) }, "the tap goes with its VM: \(links(ns))")
        XCTAssertEqual(d.stop(), 0)
    }

    /// Two VMs on one switch: vmd creates the bridge with the switch's group,
    /// both taps join it (group, up), each VM pings the bridge's address,
    /// both MACs are in `bridge fdb`; after stop and shutdown nothing is left.
    func testTwoVMsOnOneSwitch() throws {
        let ns = try NetNamespace()
        let bridge = "brvmd\(getpid() % 10000)"
        let macs = ["fe:e1:ba:d0:00:11", "fe:e1:ba:d0:00:12"]
        let conf = """
            switch "lan" {
                interface \(bridge)
                group 42
            }
            \(vm("one", cmdline: "ip=10.77.0.11/24 gw=10.77.0.1 stay", "    interface { switch \"lan\" lladdr \(macs[0]) }"))
            \(vm("two", cmdline: "ip=10.77.0.12/24 gw=10.77.0.1 stay", "    interface vmtap2 { switch \"lan\" locked lladdr \(macs[1]) group default }"))
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(waitFor { self.links(ns).contains(bridge) }, "vmd creates the bridge\n\(d.log)")
        _ = ip(ns, ["addr", "add", "10.77.0.1/24", "dev", bridge])
        XCTAssertTrue(d.waitLog("vm one: console: vmtest: net ", timeout: 60), d.log)
        XCTAssertTrue(d.waitLog("vm two: console: vmtest: net ", timeout: 60), d.log)
        XCTAssertTrue(d.log.contains("vm one: console: vmtest: net ok"), d.log)
        XCTAssertTrue(d.log.contains("vm two: console: vmtest: net ok"), d.log)

        let fdb = (try? runCommand("/usr/sbin/bridge", ["-n", ns.name, "fdb", "show", "br", bridge]))?.out ?? ""
        for mac in macs { XCTAssertTrue(fdb.contains(mac), "\(mac) learnt on \(bridge):\n\(fdb)") }
        let br = ip(ns, ["-d", "link", "show", bridge])
        XCTAssertTrue(br.contains("group 42"), br)
        XCTAssertTrue(br.contains("alias vmd["), "vmd marks what it created:\n\(br)")
        let taps = links(ns).filter { $0.hasPrefix("tap") || $0 == "vmtap2" }
        XCTAssertEqual(taps.count, 2, "\(links(ns))")
        for tap in taps {
            let t = ip(ns, ["-d", "link", "show", tap])
            XCTAssertTrue(t.contains("master \(bridge)"), t)
            XCTAssertTrue(t.contains(",UP"), t)
            // An interface group wins over the switch's.
            XCTAssertTrue(t.contains(tap == "vmtap2" ? "group default" : "group 42"), t)
        }

        XCTAssertEqual(try d.vmctl(["stop", "-f", "-w", "one"], timeout: 60).status, 0)
        XCTAssertTrue(waitFor { self.links(ns).filter { $0.hasPrefix("tap") }.isEmpty }, "\(links(ns))")
        XCTAssertTrue(links(ns).contains("vmtap2"), "the other VM keeps its port")
        XCTAssertEqual(d.stop(), 0)
        XCTAssertEqual(links(ns), ["lo"], "no tap or bridge left after the daemon stops")
    }

    /// An existing bridge is used as it is and survives vmd; `down` keeps a
    /// tap's host side down.
    func testExistingBridgeIsKeptAndDownStaysDown() throws {
        let ns = try NetNamespace()
        _ = ip(ns, ["link", "add", "bradmin", "type", "bridge"])
        _ = ip(ns, ["link", "set", "bradmin", "group", "7"])
        let conf = """
            switch "admin" { interface bradmin
                group 9 }
            \(vm("dn", cmdline: "stay", "    interface { switch \"admin\" down }"))
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(waitFor { self.links(ns).contains { $0.hasPrefix("tap") } }, d.log)
        let tap = try XCTUnwrap(links(ns).first { $0.hasPrefix("tap") })
        let t = ip(ns, ["-d", "link", "show", tap])
        XCTAssertTrue(t.contains("master bradmin"), t)
        XCTAssertFalse(t.contains(",UP"), "down: the host side stays down\n\(t)")
        XCTAssertTrue(ip(ns, ["-d", "link", "show", "bradmin"]).contains("group 7"), "not touched")
        XCTAssertEqual(d.stop(), 0)
        XCTAssertEqual(links(ns).sorted(), ["bradmin", "lo"], "the admin's bridge stays")
    }

    /// A bridge a SIGKILLed vmd left is removed when vmd starts again.
    func testLeftoversOfAKilledDaemonAreRemoved() throws {
        let ns = try NetNamespace()
        let conf = """
            switch "lan" { interface brleft }
            \(vm("k", cmdline: "stay", "    interface { switch \"lan\" }"))
            """
        let first = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try first.waitReady()
        XCTAssertTrue(waitFor { self.links(ns).contains("brleft") }, first.log)
        // The whole daemon killed at once: priv first, or it would see the
        // parent's socket close and remove its bridge before its own death
        // signal arrives (which it does when only the parent is killed).
        for p in descendants(of: first.pid) where p.args == "vmd: priv" { kill(p.pid, SIGKILL) }
        kill(first.pid, SIGKILL)
        first.process.waitUntilExit()
        XCTAssertTrue(waitFor { !self.links(ns).contains { $0.hasPrefix("tap") } }, "taps die with their VM: \(links(ns))")
        XCTAssertTrue(links(ns).contains("brleft"), "nobody removed it yet")
        let second = try Daemon(config: "", extraArgs: ["-v"], netns: ns.name)
        try second.waitReady()
        XCTAssertTrue(waitFor { !self.links(ns).contains("brleft") }, "\(links(ns))\n\(second.log)")
        // Logged just after the removal: wait for the line, not only the link.
        XCTAssertTrue(second.waitLog("removed brleft left behind by vmd \(first.pid) (switch lan)", timeout: 10), second.log)
        XCTAssertEqual(second.stop(), 0)
    }

    /// `rdomain 5`: the tap is enslaved to the VRF vrf5, created with table
    /// 0x766d0005 and removed at shutdown. Without CONFIG_NET_VRF the start
    /// is refused with the reason and nothing is left.
    func testRdomainIsAVRF() throws {
        let ns = try NetNamespace()
        let probe = try runCommand("/usr/sbin/ip", ["-n", ns.name, "link", "add", "vrfprobe", "type", "vrf", "table", "10"])
        let d = try Daemon(config: vm("rd", cmdline: "stay", "    interface { rdomain 5 }"), extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        if probe.status != 0 {
            XCTAssertTrue(d.waitLog("start rd: tap: error: create vrf5:", timeout: 20), d.log)
            XCTAssertEqual(links(ns), ["lo"], "a refused start leaves no tap")
            XCTAssertEqual(d.stop(), 0)
            throw XCTSkip("the kernel has no VRF support (CONFIG_NET_VRF): checked the refusal only; \(probe.out)")
        }
        _ = ip(ns, ["link", "del", "vrfprobe"])
        XCTAssertTrue(waitFor { self.links(ns).contains { $0.hasPrefix("tap") } }, d.log)
        let tap = try XCTUnwrap(links(ns).first { $0.hasPrefix("tap") })
        XCTAssertTrue(ip(ns, ["-d", "link", "show", tap]).contains("master vrf5"))
        XCTAssertTrue(ip(ns, ["-d", "link", "show", "vrf5"]).contains("table 1986854917"))
        XCTAssertEqual(d.stop(), 0)
        XCTAssertEqual(links(ns), ["lo"])
    }

    /// `vmctl start -n switch` and `vmctl start -L` on VMs of vm.conf.
    func testVmctlStartWithSwitchAndLocalInterface() throws {
        let ns = try NetNamespace()
        let conf = """
            switch "lan" { interface brctl }
            vm "a1" {
                disable
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
            }
            vm "a2" {
                disable
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "stay"
            }
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        let bad = try d.vmctl(["start", "-n", "nosuch", "a1"], timeout: 30)
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.out.contains("switch \"nosuch\" not found"), bad.out)
        XCTAssertEqual(try d.vmctl(["start", "-n", "lan", "a1"], timeout: 30).status, 0, d.log)
        XCTAssertTrue(waitFor { self.ip(ns, ["-o", "link", "show", "master", "brctl"]).contains("tap") },
                      "the tap joins the switch\n\(d.log)")
        XCTAssertEqual(try d.vmctl(["start", "-L", "a2"], timeout: 30).status, 0, d.log)
        XCTAssertTrue(waitFor { self.ip(ns, ["-o", "addr", "show"]).contains("inet 100.64.2.2/31") },
                      "vm 2's local interface: 100.64.2.2/31 on the host side\n\(ip(ns, ["addr"]))")
        XCTAssertEqual(d.stop(), 0)
        XCTAssertEqual(links(ns), ["lo"])
    }
}
