import XCTest
@testable import VMDaemon
import VMDControl
import VirtioDevices
import Virtio
import VMM

final class MachineShapeCodecTests: XCTestCase {
    func testLaunchSpecCarriesBusAndBootProtocol() throws {
        var s = LaunchSpec(vmid: 3, name: "micro", memoryBytes: 64 << 20, cpus: 1, cmdline: "console=ttyS0")
        s.devices = [.init(kind: .rnd)]
        XCTAssertEqual(try LaunchSpec(decoding: s.encoded()).virtioBus, .pci, "default")
        s.virtioBus = .mmio
        s.bootProtocol = .pvh
        let decoded = try LaunchSpec(decoding: s.encoded())
        XCTAssertEqual(decoded, s)
        XCTAssertEqual(decoded.virtioBus, .mmio)
        XCTAssertEqual(decoded.bootProtocol, .pvh)
        // An unknown bus or protocol name is refused, not guessed.
        var w = WireWriter()
        w.string("usb"); w.string("pvh")
        var good = WireWriter()
        good.string("mmio"); good.string("pvh")
        let bytes = s.encoded()
        XCTAssertEqual(Array(bytes.suffix(good.bytes.count)), good.bytes, "the two fields end the encoding")
        XCTAssertThrowsError(try LaunchSpec(decoding: Array(bytes.dropLast(good.bytes.count)) + w.bytes))
    }

    func testDeviceSetupCarriesTheBus() throws {
        var d = DeviceSetup(kind: .blk, name: "vioblk0", vmName: "micro",
                            regions: [GuestMemoryRegion(guestPhysicalAddress: 0, size: 1 << 20, offsetInMapping: 0)])
        d.bus = .mmio
        XCTAssertEqual(try DeviceSetup(decoding: d.encoded()).bus, .mmio)
        d.bus = .pci
        XCTAssertEqual(try DeviceSetup(decoding: d.encoded()).bus, .pci)
    }
}
