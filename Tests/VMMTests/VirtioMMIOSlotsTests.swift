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

    /// The DSDT describes each slot as Linux's virtio_mmio ACPI match wants
    /// it: LNRO0005, the slot's 4 KiB and its level-triggered line.
    func testDSDTDescribesEverySlot() throws {
        let devices = VirtioMMIOSlots.acpiDevices(slots: 18)
        XCTAssertEqual(devices.map(\.name).prefix(3), ["VR00", "VR01", "VR02"])
        XCTAssertEqual(devices.last?.name, "VR11")
        XCTAssertEqual(Set(devices.map(\.name)).count, 18)
        guard case .memory32Fixed(let base, let length) = devices[2].resources[0],
              case .interrupt(let irq, let level) = devices[2].resources[1] else { return XCTFail("\(devices[2].resources)") }
        XCTAssertEqual(UInt64(base), VirtioMMIOSlots.address(slot: 2))
        XCTAssertEqual(UInt64(length), VirtioMMIOSlots.slotSize)
        XCTAssertEqual(irq, VirtioMMIOSlots.irqs[2])
        XCTAssertTrue(level)
        let tables = ACPITables(cpus: 1, devices: VirtioMMIOSlots.acpiDevices(slots: 3))
        let image = tables.tables
        let hid = Array("LNRO0005".utf8)
        let count = (0...(image.count - hid.count)).filter { Array(image[$0..<$0 + hid.count]) == hid }.count
        XCTAssertEqual(count, 3, "one LNRO0005 device per slot in the DSDT")
    }

    func testCommandLineAnnouncesEverySlot() {
        XCTAssertEqual(VirtioMMIOSlots.commandLine("console=ttyS0", slots: 2),
                       "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:9")
        XCTAssertEqual(VirtioMMIOSlots.commandLine("", slots: 1), "virtio_mmio.device=4K@0xd0000000:5")
        XCTAssertEqual(VirtioMMIOSlots.commandLine("quiet", slots: 0), "quiet")
    }
}

final class MicroVMMPTableTests: XCTestCase {
    /// (bus id, flags, source irq, pin) of every I/O interrupt entry; the bus names.
    private func walk(_ image: ByteImage) throws -> (routes: [(UInt8, UInt16, UInt8, UInt8)], buses: [String]) {
        let t = 16
        let count = Int(try XCTUnwrap(image.u16(t + 34)))
        XCTAssertEqual(image.sum(t..<t + Int(try XCTUnwrap(image.u16(t + 4)))), 0, "checksum")
        var at = t + 44
        var routes: [(UInt8, UInt16, UInt8, UInt8)] = []
        var buses: [String] = []
        for _ in 0..<count {
            switch try XCTUnwrap(image.u8(at)) {
            case 0: at += 20
            case 1: buses.append(String(decoding: image.bytes[at + 2..<at + 5], as: UTF8.self)); at += 8
            case 3: routes.append((image.u8(at + 4)!, image.u16(at + 2)!, image.u8(at + 5)!, image.u8(at + 7)!)); at += 8
            default: at += 8
            }
        }
        return (routes, buses)
    }

    func testMicroVMRoutesEveryISALineAndTheMMIOLinesLevelHigh() throws {
        let irqs = Array(VirtioMMIOSlots.irqs.prefix(12))   // 5 ... 15, then 16 and 17
        let (routes, buses) = try walk(MPTable.build(cpus: 1, virtioMMIOIRQs: irqs))
        XCTAssertEqual(buses, ["ISA"], "no PCI bus")
        XCTAssertEqual(routes.map { $0.2 }, Array(0...17))
        XCTAssertTrue(routes.allSatisfy { $0.0 == 1 && $0.2 == $0.3 }, "ISA sources, pin = IRQ")
        for route in routes {
            XCTAssertEqual(route.1, irqs.contains(UInt32(route.2)) ? 0x0D : 0, "IRQ \(route.2)")
        }
        // The PC shape is unchanged: a PCI bus, its INTx lines left out of the ISA routes.
        let (pcRoutes, pcBuses) = try walk(MPTable.build(cpus: 1))
        XCTAssertEqual(pcBuses, ["PCI", "ISA"])
        XCTAssertEqual(pcRoutes.filter { $0.0 == 1 }.map { $0.2 }, [0, 1, 2, 3, 4, 6, 7, 8, 12, 13, 14, 15])
    }
}
