import XCTest
import Glibc
import VMDSystem
@testable import VMM
@testable import VMDaemon

/// The interrupt page shared by a VM process and a device process, the
/// device's irqfd signalling, and the VM side's MSI-X table (IrqRouting.swift,
/// MSIX.swift), with two mappings of one memfd as the two processes.
final class InterruptPageTests: XCTestCase {
    var fds: [Int32] = []
    override func tearDown() { for fd in fds { FD.close(fd) } }

    func eventfd() throws -> Int32 { let fd = try EventFD.create(); fds.append(fd); return fd }

    func twoMappings() throws -> (vm: InterruptPage, device: InterruptPage) {
        let fd = try InterruptPage.create()
        fds.append(fd)
        return (try InterruptPage(fd: fd), try InterruptPage(fd: fd))
    }

    func testISRIsSharedReadToClearAndResampleRaisesTheLineAgain() throws {
        let (vm, page) = try twoMappings()
        let intx = try eventfd(), resample = try eventfd()
        let dev = DeviceInterrupts(page: page, intxFD: intx, resampleFD: resample, vectorFDs: [])
        dev.raiseISR(1)
        XCTAssertTrue(EventFD.drain(intx), "a clear ISR getting a bit raises the line")
        dev.raiseISR(2)
        XCTAssertFalse(EventFD.drain(intx), "the line is already high")
        XCTAssertEqual(vm.isr, 3, "the VM process sees the device's bits")
        EventFD.signal(resample)          // the guest EOI'd without reading the ISR
        dev.resampled()
        XCTAssertTrue(EventFD.drain(intx), "still pending: raised again")
        XCTAssertEqual(vm.readAndClearISR(), 3)
        XCTAssertEqual(dev.isrBits, 0)
        EventFD.signal(resample)
        dev.resampled()
        XCTAssertFalse(EventFD.drain(intx), "read: not raised again")
        dev.raiseISR(1)
        XCTAssertTrue(EventFD.drain(intx))
    }

    func testMaskedVectorStaysPendingUntilUnmasked() throws {
        let (vm, page) = try twoMappings()
        let vectors = [try eventfd(), try eventfd()]
        let dev = DeviceInterrupts(page: page, intxFD: try eventfd(), resampleFD: try eventfd(), vectorFDs: vectors)
        var routes: [(gsi: UInt32, address: UInt64, data: UInt32)] = []
        var signalled: [Int] = []
        let table = MSIXTable(vectorCount: 2, gsis: [24, 25], state: vm,
                              route: { routes += $0 }, signal: { signalled.append($0); EventFD.signal(vectors[$0]) })
        XCTAssertFalse(dev.msixEnabled)
        table.controlWritten(MSIXLayout.controlEnable)
        XCTAssertTrue(dev.msixEnabled)
        XCTAssertEqual(table.read(offset: 12, size: 4), 1, "vectors start masked")
        // Vector 1 is masked: the interrupt waits in the PBA.
        dev.fire(vector: 1)
        XCTAssertFalse(EventFD.drain(vectors[1]))
        XCTAssertEqual(table.read(offset: MSIXLayout.pbaOffset, size: 4), 2)
        // The guest programs it and unmasks it: routed, then sent once.
        table.write(offset: 16, size: 4, value: 0xFEE0_0000)
        table.write(offset: 24, size: 4, value: 0x41)
        XCTAssertTrue(routes.isEmpty, "a masked vector is not routed yet")
        table.write(offset: 28, size: 4, value: 0)
        XCTAssertEqual(routes.map(\.gsi), [25])
        XCTAssertEqual(routes.first?.address, 0xFEE0_0000)
        XCTAssertEqual(routes.first?.data, 0x41)
        XCTAssertEqual(signalled, [1])
        XCTAssertTrue(EventFD.drain(vectors[1]))
        XCTAssertEqual(table.read(offset: MSIXLayout.pbaOffset, size: 4), 0)
        // Unmasked: straight to the irqfd.
        dev.fire(vector: 1)
        XCTAssertTrue(EventFD.drain(vectors[1]))
        // The function mask holds every vector.
        table.controlWritten(MSIXLayout.controlEnable | MSIXLayout.controlFunctionMask)
        dev.fire(vector: 1)
        XCTAssertFalse(EventFD.drain(vectors[1]))
        table.controlWritten(MSIXLayout.controlEnable)
        XCTAssertEqual(signalled, [1, 1])
        XCTAssertTrue(EventFD.drain(vectors[1]))
        // Out-of-range vectors and table offsets are ignored.
        dev.fire(vector: 7)
        table.write(offset: 0x7f0, size: 4, value: 1)
        XCTAssertEqual(table.read(offset: 0x7f0, size: 4), 0)
    }

    func testAKickReadsTheSyncChannelOnlyWhenWritesAreUnserved() throws {
        let vm = try VMDeviceInterrupts(vectors: 0)
        fds += vm.descriptors.map(\.fd)
        let dev = DeviceInterrupts(page: try InterruptPage(fd: vm.pageFD), intxFD: try eventfd(),
                                   resampleFD: try eventfd(), vectorFDs: [])
        vm.countWrite()
        dev.startCountingWrites()       // a restarted device: earlier writes are in its channel
        XCTAssertFalse(dev.writesPending)
        vm.countWrite()
        vm.countWrite()
        XCTAssertTrue(dev.writesPending, "two writes sent, none served")
        dev.writesServed &+= 1
        XCTAssertTrue(dev.writesPending)
        dev.writesServed &+= 1
        XCTAssertFalse(dev.writesPending)
    }

    func testAcknowledgeClearsOnlyTheHandledBits() throws {
        let vm = try VMDeviceInterrupts(vectors: 0)
        fds += vm.descriptors.map(\.fd)
        let dev = DeviceInterrupts(page: try InterruptPage(fd: vm.pageFD), intxFD: vm.intxFD,
                                   resampleFD: vm.resampleFD, vectorFDs: [])
        dev.raiseISR(3)
        XCTAssertEqual(vm.isrBits, 3)
        vm.acknowledge(1)
        XCTAssertEqual(vm.isrBits, 2)
        XCTAssertEqual(dev.isrBits, 2)
        vm.acknowledge(2)
        XCTAssertEqual(vm.readISR(), 0)
    }

    func testCapabilityLayout() {
        let cap = MSIXLayout.capability(vectors: 3, bar: 1)
        XCTAssertEqual(cap, [0x11, 0, 2, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0])
    }
}
