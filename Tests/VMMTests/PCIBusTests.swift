import XCTest
@testable import VMM

final class PCIBusTests: XCTestCase {
    var log = LogLines()
    lazy var io = Bus(name: "io", log: { [log] in log.append($0) })
    lazy var mmio = Bus(name: "mmio", log: { [log] in log.append($0) })
    lazy var pci: PCIBus = {
        let bus = PCIBus(ioBus: io, mmioBus: mmio, log: { [log] in log.append($0) })
        try! io.register(base: 0xCF8, length: 8, device: bus)
        return bus
    }()

    /// A virtio-like function: I/O BAR 0 of 256 bytes, memory BAR 1 of 4 KiB, two vendor capabilities.
    func virtioLike() -> FakeFunction {
        FakeFunction(header: PCIConfigHeader(
            vendorID: 0x1AF4, deviceID: 0x1042, revision: 1, classCode: 0x01, subclass: 0x00,
            subsystemVendorID: 0x1AF4, subsystemID: 0x0002,
            bars: [.init(kind: .io, size: 256), .init(kind: .memory32, size: 4096)],
            capabilities: [[0x09, 0, 16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0, 0, 0],
                           [0x09, 0, 20, 2, 0, 0, 0, 0, 0, 1, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0]]))
    }

    func address(slot: Int, register: Int) -> UInt64 { UInt64(0x8000_0000 | slot << 11 | register) }

    func config(_ slot: Int, _ register: Int, size: Int = 4) -> UInt64 {
        io.write(0xCF8, size: 4, value: address(slot: slot, register: register & ~3))
        return io.read(0xCFC + UInt64(register & 3), size: size)
    }

    func setConfig(_ slot: Int, _ register: Int, _ value: UInt64, size: Int = 4) {
        io.write(0xCF8, size: 4, value: address(slot: slot, register: register & ~3))
        io.write(0xCFC + UInt64(register & 3), size: size, value: value)
    }

    func testAddressRegisterReadsBackAsLinuxProbesIt() {
        _ = pci
        io.write(0xCF8, size: 4, value: 0x8000_0000)
        XCTAssertEqual(io.read(0xCF8, size: 4), 0x8000_0000)
        io.write(0xCFB, size: 1, value: 0x01)  // Linux's type-1 probe pokes here; ignored
        XCTAssertEqual(io.read(0xCF8, size: 4), 0x8000_0000)
    }

    func testHostBridgeIdentity() {
        _ = pci
        XCTAssertEqual(config(0, 0x00), 0x0666_0B5D)
        XCTAssertEqual(config(0, 0x08) >> 16, 0x0600)  // class host bridge
        XCTAssertEqual(config(0, 0x0E, size: 1), 0)
        XCTAssertEqual(config(0, 0x3C) >> 8 & 0xFF, 0, "no interrupt pin")
    }

    func testAbsentSlotsFunctionsAndBusesReadAllOnes() {
        _ = pci
        XCTAssertEqual(config(5, 0), 0xFFFF_FFFF)
        io.write(0xCF8, size: 4, value: 0x8000_0100)  // function 1 of slot 0
        XCTAssertEqual(io.read(0xCFC, size: 4), 0xFFFF_FFFF)
        io.write(0xCF8, size: 4, value: 0x8001_0000)  // bus 1
        XCTAssertEqual(io.read(0xCFC, size: 2), 0xFFFF)
        io.write(0xCF8, size: 4, value: 0x0000_0000)  // enable bit clear
        XCTAssertEqual(io.read(0xCFC, size: 4), 0xFFFF_FFFF)
    }

    func testFunctionHeaderSlotIRQAndCapabilities() throws {
        let f = virtioLike()
        let (slot, irq) = try pci.add(f)
        XCTAssertEqual(slot, 1)
        XCTAssertEqual(irq, 5)
        XCTAssertEqual(config(1, 0x00), 0x1042_1AF4)
        XCTAssertEqual(config(1, 0x08), 0x0100_0001)  // class 01, subclass 00, prog-if 00, revision 1
        XCTAssertEqual(config(1, 0x2C), 0x0002_1AF4)
        XCTAssertEqual(config(1, 0x3C, size: 1), 5, "interrupt line")
        XCTAssertEqual(config(1, 0x3D, size: 1), 1, "INTA#")
        XCTAssertEqual(config(1, 0x06, size: 2) & 0x10, 0x10, "status: capabilities list")
        XCTAssertEqual(config(1, 0x34, size: 1), 0x40)
        // First capability at 0x40: id 9, next 0x50, then its own bytes.
        XCTAssertEqual(config(1, 0x40, size: 1), 0x09)
        XCTAssertEqual(config(1, 0x41, size: 1), 0x50)
        XCTAssertEqual(config(1, 0x42, size: 1), 16)
        XCTAssertEqual(config(1, 0x4C), 0x38)
        XCTAssertEqual(config(1, 0x50, size: 1), 0x09)
        XCTAssertEqual(config(1, 0x51, size: 1), 0x00, "last capability")
        XCTAssertEqual(config(1, 0x53, size: 1), 2)
        XCTAssertEqual(config(1, 0x5C), 4)
        // Slots 2, 3, 4, 5 rotate through IRQs 9, 10, 11, 5.
        var irqs: [UInt32] = []
        for _ in 0..<4 { irqs.append(try pci.add(FakeFunction(header: f.configHeader)).irq) }
        XCTAssertEqual(irqs, [9, 10, 11, 5])
    }

    func testBarAssignmentAndSizingProtocol() throws {
        let f = virtioLike()
        _ = try pci.add(f)
        XCTAssertEqual(config(1, 0x10), 0x1001, "I/O BAR at 0x1000, bit 0 = I/O")
        XCTAssertEqual(config(1, 0x14), 0xC000_0000, "memory BAR at the PCI hole")
        XCTAssertEqual(config(1, 0x18), 0, "unimplemented BAR")
        XCTAssertEqual(config(1, 0x04, size: 2) & 0x3, 0x3, "I/O and memory decoding on")
        // Sizing: all ones, read back the size mask, restore.
        setConfig(1, 0x10, 0xFFFF_FFFF)
        XCTAssertEqual(config(1, 0x10), 0xFFFF_FF01)
        setConfig(1, 0x14, 0xFFFF_FFFF)
        XCTAssertEqual(config(1, 0x14), 0xFFFF_F000)
        setConfig(1, 0x18, 0xFFFF_FFFF)
        XCTAssertEqual(config(1, 0x18), 0, "unimplemented BARs size as zero")
        setConfig(1, 0x30, 0xFFFF_FFFF)
        XCTAssertEqual(config(1, 0x30), 0, "no expansion ROM")
        setConfig(1, 0x10, 0x1000)
        setConfig(1, 0x14, 0xC000_0000)
        XCTAssertEqual(config(1, 0x10), 0x1001)
        // The BARs work again after sizing.
        XCTAssertEqual(io.read(0x1004, size: 2), 0xA000_0004 & 0xFFFF)
        XCTAssertEqual(mmio.read(0xC000_0010, size: 4), 0xA001_0010)
        XCTAssertEqual(f.reads.last?.bar, 1)
    }

    func testBarAccessesForwardWithOffsetsAndSplitEightByteMMIO() throws {
        let f = virtioLike()
        _ = try pci.add(f)
        io.write(0x1000 + 0x12, size: 2, value: 0x1234)
        XCTAssertEqual(f.writes.last?.bar, 0)
        XCTAssertEqual(f.writes.last?.offset, 0x12)
        XCTAssertEqual(f.writes.last?.size, 2)
        XCTAssertEqual(f.writes.last?.value, 0x1234)
        mmio.write(0xC000_0100, size: 8, value: 0x1111_2222_3333_4444)
        XCTAssertEqual(f.writes.suffix(2).map { $0.offset }, [0x100, 0x104])
        XCTAssertEqual(f.writes.suffix(2).map { $0.value }, [0x3333_4444, 0x1111_2222])
        XCTAssertEqual(io.read(0x1100, size: 1), 0xFF, "past the 256-byte BAR nobody answers")
    }

    func testMovingABarAndTurningDecodeOff() throws {
        let f = virtioLike()
        _ = try pci.add(f)
        setConfig(1, 0x10, 0x2000)
        XCTAssertEqual(io.read(0x1000, size: 4), 0xFFFF_FFFF, "old place unmapped")
        XCTAssertEqual(io.read(0x2008, size: 4), 0xA000_0008, "new place mapped")
        setConfig(1, 0x04, 0x0, size: 2)  // I/O and memory decoding off
        XCTAssertEqual(io.read(0x2008, size: 4), 0xFFFF_FFFF)
        XCTAssertEqual(mmio.read(0xC000_0000, size: 4), 0xFFFF_FFFF)
        setConfig(1, 0x04, 0x3, size: 2)
        XCTAssertEqual(io.read(0x2008, size: 4), 0xA000_0008)
        XCTAssertEqual(mmio.read(0xC000_0000, size: 4), 0xA001_0000)
    }

    func testReadOnlyRegistersIgnoreWritesAndInterruptLineIsHardWired() throws {
        _ = try pci.add(virtioLike())
        setConfig(1, 0x00, 0xDEAD_BEEF)
        XCTAssertEqual(config(1, 0x00), 0x1042_1AF4)
        setConfig(1, 0x3C, 0xFF, size: 1)   // SeaBIOS's "unknown routing"
        XCTAssertEqual(config(1, 0x3C, size: 1), 5, "the routed IRQ stays")
        XCTAssertEqual(config(1, 0x3D, size: 1), 1)
        setConfig(1, 0x40, 0xFFFF_FFFF)
        XCTAssertEqual(config(1, 0x40, size: 1), 0x09, "capabilities are read-only")
    }

    func testBadHeadersAreRejected() {
        var header = virtioLike().configHeader
        header.bars = [.init(kind: .io, size: 100)]
        XCTAssertThrowsError(try pci.add(FakeFunction(header: header)))
        header.bars = []
        header.capabilities = [[UInt8](repeating: 9, count: 200)]
        XCTAssertThrowsError(try pci.add(FakeFunction(header: header)))
    }

    func testSlotsRunOut() throws {
        let header = PCIConfigHeader(vendorID: 1, deviceID: 2, classCode: 0xFF, subclass: 0)
        for _ in 1..<32 { _ = try pci.add(FakeFunction(header: header)) }
        XCTAssertThrowsError(try pci.add(FakeFunction(header: header))) { error in
            XCTAssertTrue("\(error)".contains("slots are taken"))
        }
    }

    func testPortCF9ResetBit() {
        var resets = 0
        pci.onReset = { resets += 1 }
        io.write(0xCF9, size: 1, value: 0x02)
        XCTAssertEqual(resets, 0)
        io.write(0xCF9, size: 1, value: 0x06)
        XCTAssertEqual(resets, 1)
    }
}
