import Foundation
import XCTest
import Glibc

/// Issue 15 `local inet6`, with the real vmd in a network namespace the
/// test creates: priv gives the host side of a local interface vmd's /96
/// and its link-local address and routes the guest's SLAAC address to the
/// tap; vionet answers the test guest's router solicitation; the guest
/// autoconfigures from the advertised /64 and pings the host side over
/// IPv6; after stop nothing is left.
final class LocalInet6IntegrationTests: XCTestCase {
    override func setUpWithError() throws {
        try requireRoot()
        try requireKVM()
        try requireVmtest()
    }

    func ip(_ ns: NetNamespace, _ args: [String]) -> String {
        (try? runCommand("/usr/sbin/ip", ["-n", ns.name] + args))?.out ?? ""
    }

    func testGuestAutoconfiguresFromVionetsAdvertisementAndPingsTheHostSide() throws {
        let ns = try NetNamespace()
        let conf = """
            local inet6 prefix fd12:3456:789a:1::/64
            vm "six" {
                memory 64M
                boot "\(Repo.vmtestELF)"
                cmdline "dhcp slaac stay"
                local interface { lladdr fe:e1:ba:d0:00:21 }
            }
            """
        let d = try Daemon(config: conf, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(d.waitLog("vmtest: net ", timeout: 60), d.log)
        // vm 1, interface 0: guest 100.64.1.3, so the host side is
        // fd12:3456:789a:1:6440:103:0:1/96; the host MAC is the guest's + 1.
        XCTAssertTrue(d.log.contains("vmtest: slaac ok addr=fd12:3456:789a:1:fce1:baff:fed0:21/64 "
                                     + "prefix=fd12:3456:789a:1:0:0:0:0/64 flags=0x40 "
                                     + "router=fe80:0:0:0:fce1:baff:fed0:22 lifetime=1800 "
                                     + "rdnss=fd12:3456:789a:1:6440:103:0:1 ping6 ok"), d.log)
        XCTAssertTrue(d.log.contains("vmtest: net ok"), "IPv4 (DHCP) still works beside it\n\(d.log)")
        let tap = try XCTUnwrap(ip(ns, ["-o", "link", "show"]).split(separator: "\n")
            .compactMap { $0.split(separator: ":").dropFirst().first?.trimmingCharacters(in: .whitespaces) }
            .first { $0.hasPrefix("tap") })
        let addrs = ip(ns, ["-6", "addr", "show", "dev", tap])
        XCTAssertTrue(addrs.contains("inet6 fd12:3456:789a:1:6440:103:0:1/96"), addrs)
        XCTAssertTrue(addrs.contains("inet6 fe80::fce1:baff:fed0:22/64"), addrs)
        let routes = ip(ns, ["-6", "route", "show"])
        XCTAssertTrue(routes.contains("fd12:3456:789a:1:fce1:baff:fed0:21 dev \(tap)"), routes)

        XCTAssertEqual(try d.vmctl(["stop", "-f", "-w", "six"], timeout: 60).status, 0)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline && ip(ns, ["-o", "link", "show"]).contains(tap) { usleep(50_000) }
        XCTAssertFalse(ip(ns, ["-o", "link", "show"]).contains(tap), "the tap goes with its VM")
        XCTAssertFalse(ip(ns, ["-6", "route", "show"]).contains("fd12:"), "no route left")
        XCTAssertFalse(ip(ns, ["-6", "addr", "show"]).contains("fd12:"), "no address left")
        XCTAssertEqual(d.stop(), 0)
    }
}
