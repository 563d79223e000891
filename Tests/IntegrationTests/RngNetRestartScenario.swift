import Foundation
import XCTest
import Glibc

/// The rng + net device-restart scenario, shared by DeviceRestartTests
/// (PCI, build/vmtest.elf) and MMIORestartTests (`virtio mmio`, the PVH
/// build): vmtest's devloop (rng reads and gateway pings) runs while the
/// viornd and vionet0 processes are SIGKILLed in turn every 500 ms. Every
/// rng read is answered, and pings (frames in flight may be lost) are
/// answered again at the end: the rings did not stall.
enum RngNetRestartScenario {
    enum Transport {
        case pci
        case mmio

        /// The vm.conf lines that choose the guest and the transport.
        var bootLines: String {
            switch self {
            case .pci:
                return "boot \"\(Repo.vmtestELF)\""
            case .mmio:
                let pvh = Repo.root.appendingPathComponent("build/vmtest-pvh.elf").path
                return "boot \"\(pvh)\" format pvh\n    virtio mmio"
            }
        }
    }

    /// Runs the scenario on VM `vm` with a tap named `tap`; assertion
    /// failures point at the caller's line.
    static func run(_ transport: Transport, vm: String, tap: String, label: String,
                    file: StaticString = #filePath, line: UInt = #line) throws {
        let ns = try NetNamespace()
        let d = try Daemon(config: """
            vm "\(vm)" {
                memory 64M
                \(transport.bootLines)
                cmdline "ip=10.0.2.15/24 gw=10.0.2.2 devloop=8"
                interface "\(tap)"
            }
            """, extraArgs: ["-v"], netns: ns.name)
        try d.waitReady()
        XCTAssertTrue(ns.configureTap(tap, address: "10.0.2.2/24"), "tap \(tap) never appeared\n\(d.log)", file: file, line: line)
        XCTAssertTrue(d.waitLog("vmtest: net ok", timeout: 60), d.log, file: file, line: line)
        var kills = 0
        var turn = 0
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline && !d.log.contains("vmtest summary:") {
            let device = turn % 2 == 0 ? "viornd" : "vionet0"
            if let pid = descendants(of: d.pid).first(where: { $0.args == "vmd: vm \(vm) \(device)" })?.pid {
                kill(pid, SIGKILL)
                kills += 1
            }
            turn += 1
            usleep(500_000)
        }
        XCTAssertTrue(d.waitLog("vm \(vm): stopped (guest powered off)", timeout: 30), d.log, file: file, line: line)
        let log = d.log
        if ProcessInfo.processInfo.environment["SHOWLOG"] != nil { print(log) }
        if transport == .mmio {
            XCTAssertTrue(log.contains("vmtest: pci devices=0 mmio devices="), log, file: file, line: line)
        }
        XCTAssertGreaterThanOrEqual(kills, 8, log, file: file, line: line)
        XCTAssertTrue(log.contains("vmtest: devloop ok"), log, file: file, line: line)
        XCTAssertTrue(log.contains("failed=0"), log, file: file, line: line)
        XCTAssertFalse(log.contains("FAIL"), log, file: file, line: line)
        XCTAssertTrue(log.contains("viornd process killed by SIGKILL: restarting it"), log, file: file, line: line)
        XCTAssertTrue(log.contains("vionet0 process killed by SIGKILL: restarting it"), log, file: file, line: line)
        let devloop = log.split(separator: "\n").first { $0.contains("vmtest: devloop ok") } ?? ""
        print("\(label): \(kills) kills, \(devloop)")
        XCTAssertEqual(d.stop(), 0, file: file, line: line)
    }
}
