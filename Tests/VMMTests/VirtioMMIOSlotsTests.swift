import XCTest
@testable import VMM

final class VirtioMMIOSlotsTests: XCTestCase {
    func testSlotsAreInTheHoleAndNeverOverlapRAM() throws {
        for memory: UInt64 in [2 << 20, 512 << 20, 3 << 30, 64 << 30] {
            let layout = try GuestMemoryLayout(memoryBytes: memory)
            for slot in 0..<VirtioMMIOSlots.maxSlots {
                let start = VirtioMMIOSlots.address(slot: slot), end = start + VirtioMMIOSlots.slotSize
                for region in layout.regions {
                    XCTAssertTrue(end <= region.guestPhysical || start >= region.guestPhysical + region.size,
                                  "slot \(slot) overlaps RAM with \(memory) bytes")
                }
                XCTAssertLessThan(end, 0xFEC0_0000, "below the IOAPIC")
            }
        }
        XCTAssertEqual(VirtioMMIOSlots.address(slot: 0), 0xD000_0000)
        XCTAssertEqual(VirtioMMIOSlots.address(slot: 2), 0xD000_2000)
    }

    func testEachSlotHasItsOwnLineNoLegacyDeviceUses() {
        let irqs = VirtioMMIOSlots.irqs
        XCTAssertEqual(Set(irqs).count, irqs.count, "one line per slot")
        for legacy: UInt32 in [0, 1, 2, 4, 8, 12] { XCTAssertFalse(irqs.contains(legacy), "IRQ \(legacy)") }
        XCTAssertTrue(irqs.allSatisfy { $0 < 24 }, "the IOAPIC has 24 pins")
        XCTAssertGreaterThanOrEqual(VirtioMMIOSlots.maxSlots, 16, "as many as a launch spec has devices")
    }

    func testCommandLineAnnouncesEverySlot() {
        XCTAssertEqual(VirtioMMIOSlots.commandLine("console=ttyS0", slots: 2),
                       "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:9")
        XCTAssertEqual(VirtioMMIOSlots.commandLine("", slots: 1), "virtio_mmio.device=4K@0xd0000000:5")
        XCTAssertEqual(VirtioMMIOSlots.commandLine("quiet", slots: 0), "quiet")
    }
}
