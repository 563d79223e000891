import XCTest
@testable import VMM

final class Serial8250Tests: XCTestCase {
    let irqs = RecordingInterrupts()
    var sent: [UInt8] = []
    lazy var uart = Serial8250(irq: InterruptRouter(controller: irqs).line(irq: 4), output: { [unowned self] in sent += $0 })

    func reg(_ r: Int) -> UInt8 { UInt8(uart.read(offset: UInt64(r), size: 1)) }
    func set(_ r: Int, _ v: UInt8) { uart.write(offset: UInt64(r), size: 1, value: UInt64(v)) }

    func testResetState() {
        XCTAssertEqual(reg(Serial8250.lsr), 0x60, "THRE and TEMT: transmitter empty")
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x01, "no interrupt pending")
        XCTAssertEqual(reg(Serial8250.ier), 0)
        XCTAssertEqual(reg(Serial8250.lcr), 0x03)
        XCTAssertEqual(reg(Serial8250.msr) & 0xB0, 0xB0, "DCD, DSR, CTS")
        XCTAssertFalse(irqs.level(4))
    }

    func testTransmitGoesOutAtOnce() {
        for byte in Array("hi\n".utf8) { set(Serial8250.rbrThr, byte) }
        XCTAssertEqual(sent, Array("hi\n".utf8))
        XCTAssertEqual(reg(Serial8250.lsr) & 0x60, 0x60)
    }

    func testDivisorLatch() {
        set(Serial8250.lcr, 0x83)
        set(Serial8250.rbrThr, 0x01)
        set(Serial8250.ier, 0x00)
        XCTAssertEqual(reg(Serial8250.rbrThr), 0x01)
        XCTAssertEqual(reg(Serial8250.ier), 0x00)
        XCTAssertTrue(sent.isEmpty, "a DLL write is not data")
        set(Serial8250.lcr, 0x03)
        XCTAssertEqual(reg(Serial8250.ier), 0, "IER untouched by the DLM write")
    }

    func testTHREInterruptRaisedOnEnableAndClearedByIIRRead() {
        set(Serial8250.ier, Serial8250.ierTHRE)
        XCTAssertTrue(irqs.level(4), "enabling ETBEI with THR empty interrupts")
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x02)
        XCTAssertFalse(irqs.level(4), "reading IIR acknowledged THRE")
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x01)
        set(Serial8250.rbrThr, 0x41)
        XCTAssertTrue(irqs.level(4), "THR empty again after the byte left")
        set(Serial8250.ier, 0)
        XCTAssertFalse(irqs.level(4), "disabled")
    }

    func testReceiveRaisesRDAUntilDrained() {
        set(Serial8250.ier, Serial8250.ierRDA)
        XCTAssertFalse(irqs.level(4))
        XCTAssertEqual(uart.receive(Array("ab".utf8)), 2)
        XCTAssertTrue(irqs.level(4))
        XCTAssertEqual(reg(Serial8250.lsr) & 0x01, 0x01, "data ready")
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x04)
        XCTAssertEqual(reg(Serial8250.rbrThr), UInt8(ascii: "a"))
        XCTAssertTrue(irqs.level(4))
        XCTAssertEqual(reg(Serial8250.rbrThr), UInt8(ascii: "b"))
        XCTAssertFalse(irqs.level(4))
        XCTAssertEqual(reg(Serial8250.lsr) & 0x01, 0)
        XCTAssertEqual(reg(Serial8250.rbrThr), 0, "empty receiver reads 0")
    }

    func testRDABeatsTHREInPriority() {
        set(Serial8250.ier, Serial8250.ierRDA | Serial8250.ierTHRE)
        uart.receive([1])
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x04)
        _ = reg(Serial8250.rbrThr)
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x02)
    }

    func testFIFOBitsInIIRAndFIFOClear() {
        set(Serial8250.iirFcr, 0x07)  // enable + clear both FIFOs
        XCTAssertEqual(reg(Serial8250.iirFcr), 0xC1)
        uart.receive([1, 2, 3])
        set(Serial8250.iirFcr, 0x03)
        XCTAssertEqual(reg(Serial8250.lsr) & 0x01, 0, "receive FIFO cleared")
    }

    func testOverrunWhenFull() {
        set(Serial8250.ier, Serial8250.ierRLS)
        let accepted = uart.receive([UInt8](repeating: 7, count: Serial8250.receiveCapacity + 10))
        XCTAssertEqual(accepted, Serial8250.receiveCapacity)
        XCTAssertEqual(uart.receiveSpace, 0)
        XCTAssertEqual(reg(Serial8250.iirFcr), 0x06, "line status interrupt")
        XCTAssertEqual(reg(Serial8250.lsr) & 0x02, 0x02, "overrun")
        XCTAssertEqual(reg(Serial8250.lsr) & 0x02, 0, "cleared by reading LSR")
    }

    func testLoopbackAsLinuxProbesIt() {
        set(Serial8250.mcr, 0x1A)  // loop, OUT2, RTS
        XCTAssertEqual(reg(Serial8250.msr) & 0xF0, 0x90, "CTS from RTS, DCD from OUT2")
        set(Serial8250.rbrThr, 0x55)
        XCTAssertTrue(sent.isEmpty, "looped back, not sent")
        XCTAssertEqual(reg(Serial8250.rbrThr), 0x55)
        set(Serial8250.mcr, 0x0B)
        XCTAssertEqual(reg(Serial8250.msr) & 0xB0, 0xB0)
    }

    func testScratchRegister() {
        set(Serial8250.scr, 0xA5)
        XCTAssertEqual(reg(Serial8250.scr), 0xA5)
    }
}

final class ConsoleRingTests: XCTestCase {
    func testKeepsTheNewestBytes() {
        let ring = ConsoleRing(capacity: 8)
        ring.append(Array("abc".utf8))
        XCTAssertEqual(ring.snapshot(), Array("abc".utf8))
        ring.append(Array("defghij".utf8))
        XCTAssertEqual(String(decoding: ring.snapshot(), as: UTF8.self), "cdefghij")
        ring.append(Array("0123456789".utf8))
        XCTAssertEqual(String(decoding: ring.snapshot(), as: UTF8.self), "23456789")
    }
}

final class InterruptRouterTests: XCTestCase {
    func testSharedLineIsAWiredOr() {
        let irqs = RecordingInterrupts()
        let router = InterruptRouter(controller: irqs)
        let slot1 = router.line(irq: 5), slot5 = router.line(irq: 5), other = router.line(irq: 9)
        slot1.assert()
        slot5.assert()
        slot1.deassert()
        XCTAssertTrue(irqs.level(5), "slot 5 still holds IRQ 5")
        other.assert()
        other.deassert()
        XCTAssertTrue(irqs.level(5))
        XCTAssertFalse(irqs.level(9))
        slot5.deassert()
        XCTAssertFalse(irqs.level(5))
        slot5.deassert()
        XCTAssertEqual(irqs.events.filter { $0.irq == 5 && !$0.level }.count, 1, "one deassert reached the controller")
    }
}
