import Foundation
import XCTest
@testable import VMM

/// Hand-assembled guests exercising the VM's lifecycle and devices under KVM.
final class KVMDeviceTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: KVM device tests skipped")
    }

    private func makeRun(_ guest: GuestCode, cpus: Int = 1, memory: UInt64 = 16 << 20) throws -> GuestRun {
        let path = try TestSupport.writeFile(guest.image, name: "guest.bin")
        return try GuestRun(spec: VMSpec(name: "t", memoryBytes: memory, vcpus: cpus, kernelPath: path))
    }

    func testMultibootRegistersAndInfoAsTheSpecSays() throws {
        var guest = GuestCode()
        // EAX must be 0x2BADB002: compare and print Y/N; EBX's info flags byte.
        guest.code += [0x3D] + guest.le32(0x2BAD_B002)   // cmp eax, imm32
        guest.code += [0x75, 0x06]                         // jne +6
        guest.outByte(0x3F8, UInt8(ascii: "Y"))            // 6 bytes
        guest.code += [0x8B, 0x03]                         // mov eax, [ebx]  (info flags)
        guest.movDX(0x3F8)
        guest.outAL()
        guest.powerOff()
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(Array(run.console.utf8), [UInt8(ascii: "Y"), 0x45])  // flags 0x245 low byte
    }

    func testUnclaimedPortReadsAllOnesAndGuestGoesOn() throws {
        var guest = GuestCode()
        guest.echoPort(0x99)
        guest.print("!")
        guest.powerOff()
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(Array(run.console.utf8.suffix(1)), [UInt8(ascii: "!")])
        XCTAssertEqual(run.vm.consoleReplay().first, 0xFF)
    }

    func testELCRMatchesPCIInterruptRoutingAndPort61IsThePIT() throws {
        var guest = GuestCode()
        guest.echoPort(0x4D0)
        guest.echoPort(0x4D1)
        guest.outByte(0x61, 0x01)  // gate PIT channel 2 on, speaker off
        guest.echoPort(0x61)
        guest.echoPort(0x80)
        guest.powerOff()
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        let bytes = run.vm.consoleReplay()
        XCTAssertEqual(Array(bytes.prefix(2)), [0x20, 0x0E])
        XCTAssertEqual(bytes.count, 4)
        XCTAssertEqual(bytes.dropFirst(2).first.map { $0 & 0x03 }, 0x01, "in-kernel speaker port: gate bit reads back")
        XCTAssertEqual(bytes.last, 0x00, "port 0x80 is a sink")
    }

    func testGuestReadsHostBridgeThroughConfigMechanism1() throws {
        var guest = GuestCode()
        guest.movDX(0xCF8); guest.movEAX(0x8000_0000); guest.code += [0xEF]  // out dx, eax
        guest.movDX(0xCFC); guest.inEAX()
        guest.movDX(0x3F8)
        for _ in 0..<4 { guest.outAL(); guest.code += [0xC1, 0xE8, 0x08] }  // out; shr eax, 8
        guest.powerOff()
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.vm.consoleReplay(), [0x5D, 0x0B, 0x66, 0x06])
    }

    func testI8042ResetRequestsReboot() throws {
        var guest = GuestCode()
        guest.print("r")
        guest.outByte(0x64, 0xFE)
        guest.hang()
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .reboot)
        XCTAssertEqual(run.console, "r")
    }

    func testTripleFaultRequestsReboot() throws {
        var guest = GuestCode()
        // lidt [zero descriptor]; ud2 -> no IDT -> double fault -> triple fault.
        let descriptorAddress = guest.here + 7 + 2 + 3  // after lidt (7), ud2 (2), hang (3)
        guest.code += [0x0F, 0x01, 0x1D] + guest.le32(descriptorAddress)
        guest.code += [0x0F, 0x0B]
        guest.hang()
        guest.code += [0, 0, 0, 0, 0, 0]
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .reboot)
    }

    func testPauseStopsOutputAndUnpauseResumesIt() throws {
        var guest = GuestCode()
        let loop = guest.code.count
        guest.outByte(0x3F8, UInt8(ascii: "x"))
        guest.delay(2000)
        let back = loop - (guest.code.count + 2)
        guest.code += [0xEB, UInt8(bitPattern: Int8(back))]  // jmp loop
        let run = try makeRun(guest, cpus: 2)
        var reason: VMExitReason?
        try run.vm.start { reason = $0 }
        defer { run.vm.stop() }
        func count() -> Int { run.console.count }
        let deadline = Date().addingTimeInterval(20)
        while count() < 20 && Date() < deadline { usleep(10_000) }
        XCTAssertGreaterThanOrEqual(count(), 20, "guest did not print")
        run.vm.pause()
        XCTAssertTrue(run.vm.isPaused)
        let paused = count()
        usleep(300_000)
        XCTAssertEqual(count(), paused, "output while paused")
        run.vm.unpause()
        let resumeDeadline = Date().addingTimeInterval(20)
        while count() < paused + 20 && Date() < resumeDeadline { usleep(10_000) }
        XCTAssertGreaterThanOrEqual(count(), paused + 20, "no output after unpause")
        run.vm.stop()
        XCTAssertNil(reason, "stop() is not an exit the guest asked for")
        XCTAssertEqual(String(decoding: run.vm.consoleReplay().suffix(10), as: UTF8.self), String(repeating: "x", count: 10))
    }

    func testStopEndsHaltedAndWaitingVCPUs() throws {
        var guest = GuestCode()
        guest.print("h")
        guest.hang()  // BSP halts with interrupts off; the AP waits for SIPI
        let run = try makeRun(guest, cpus: 2)
        let started = Date()
        XCTAssertNil(try run.run(timeout: 0.3))
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertEqual(run.console, "h")
    }

    func testPauseReachesHaltedAndSIPIWaitingVCPUs() throws {
        var guest = GuestCode()
        guest.print("h")
        guest.hang()
        let run = try makeRun(guest, cpus: 2)
        try run.vm.start { _ in }
        usleep(50_000)
        run.vm.pause()  // returns only once both vCPUs are parked
        XCTAssertTrue(run.vm.isPaused)
        run.vm.unpause()
        XCTAssertFalse(run.vm.isPaused)
        run.vm.pause()
        run.vm.stop()   // stopping a paused VM ends its threads too
        XCTAssertEqual(run.console, "h")
    }

    func testStopInsideOnExitDoesNotDeadlock() throws {
        var guest = GuestCode()
        guest.powerOff()
        let run = try makeRun(guest, cpus: 2)
        let done = DispatchSemaphore(value: 0)
        let vm = run.vm
        try vm.start { _ in
            vm.stop()
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        vm.stop()  // joins from the test thread
    }

    /// A guest that installs a handler for `irq` (8259 vectors 0x20/0x28, only
    /// `irq` unmasked), runs `arm`, waits with interrupts on, and prints "I"
    /// once the handler ran. The handler runs `acknowledge`, sends EOI and goes
    /// on without iret (PVM's emulator cannot run a 32-bit iret).
    private func interruptGuest(irq: UInt32, arm: (inout GuestCode) -> Void,
                                acknowledge: (inout GuestCode) -> Void) -> GuestCode {
        let handlerOffset = 0x200, idt: UInt32 = 0x50000, idtr: UInt32 = 0x50200, flag: UInt32 = 0x50300
        let handler = GuestCode.loadAddress + UInt32(GuestCode.headerSize + handlerOffset)
        var guest = GuestCode()
        func movDword(_ address: UInt32, _ value: UInt32) { guest.code += [0xC7, 0x05] + guest.le32(address) + guest.le32(value) }
        let vector: UInt32 = 0x20 + irq
        let limit = vector * 8 + 7
        guest.code += [0xBC] + guest.le32(0x60000)  // mov esp: Multiboot leaves ESP undefined
        movDword(idt + vector * 8, (0x10 << 16) | (handler & 0xFFFF))
        movDword(idt + vector * 8 + 4, (handler & 0xFFFF_0000) | 0x8E00)
        guest.code += [0x66, 0xC7, 0x05] + guest.le32(idtr) + [UInt8(limit & 0xFF), UInt8(limit >> 8)]
        movDword(idtr + 2, idt)
        guest.code += [0x0F, 0x01, 0x1D] + guest.le32(idtr)  // lidt
        let mask = ~(UInt16(1) << UInt16(irq)) & ~(irq >= 8 ? 0x0004 : 0)  // the cascade for slave IRQs
        for (port, value) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01),
                              (0xA0, 0x11), (0xA1, 0x28), (0xA1, 0x02), (0xA1, 0x01)] as [(UInt16, UInt8)] {
            guest.outByte(port, value)
        }
        guest.outByte(0x21, UInt8(mask & 0xFF))
        guest.outByte(0xA1, UInt8(mask >> 8))
        arm(&guest)
        guest.code += [0xFB]  // sti
        let wait = guest.code.count
        guest.code += [0x80, 0x3D] + guest.le32(flag) + [0x01]  // cmp byte [flag], 1
        guest.code += [0x75, UInt8(bitPattern: Int8(wait - (guest.code.count + 2)))]  // jne wait
        let done = guest.here
        guest.print("I")
        guest.powerOff()
        precondition(guest.code.count <= handlerOffset)
        guest.code += [UInt8](repeating: 0x90, count: handlerOffset - guest.code.count)
        acknowledge(&guest)
        guest.code += [0xC6, 0x05] + guest.le32(flag) + [0x01]
        if irq >= 8 { guest.code += [0xB0, 0x20, 0xE6, 0xA0] }  // EOI to the slave
        guest.code += [0xB0, 0x20, 0xE6, 0x20]  // EOI: mov al, 0x20; out 0x20, al
        guest.movEAX(done)
        guest.code += [0xFF, 0xE0]              // jmp eax
        return guest
    }

    /// COM1's THRE interrupt reaches the guest through KVM_IRQ_LINE and the
    /// in-kernel 8259 (IRQ 4, edge).
    func testUARTInterruptIsDeliveredToTheGuest() throws {
        let guest = interruptGuest(irq: 4, arm: { $0.outByte(0x3F9, 0x02) },  // IER: THRE -> at once
                                   acknowledge: { g in g.movDX(0x3FA); g.inAL(); g.outByte(0x3F9, 0x00) })
        let run = try makeRun(guest)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.console, "I")
    }

    /// A PCI function's InterruptLine (slot 2 -> IRQ 9, level, slave 8259).
    func testPCIInterruptLineIsDeliveredToTheGuest() throws {
        let guest = interruptGuest(irq: 9, arm: { $0.print("w") }, acknowledge: { _ in })
        let run = try makeRun(guest)
        let header = PCIConfigHeader(vendorID: 0x1AF4, deviceID: 0x1044, classCode: 0xFF, subclass: 0)
        _ = try run.vm.addPCIFunction(FakeFunction(header: header))
        let line = try run.vm.addPCIFunction(FakeFunction(header: header))
        XCTAssertEqual(line.irq, 9)
        var reason: VMExitReason?
        let done = DispatchSemaphore(value: 0)
        try run.vm.start { reason = $0; done.signal() }
        let deadline = Date().addingTimeInterval(20)
        while run.console.isEmpty && Date() < deadline { usleep(1000) }
        usleep(20_000)  // let the guest reach sti
        line.assert()
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        line.deassert()
        run.vm.stop()
        XCTAssertEqual(reason, .powerOff)
        XCTAssertEqual(run.console, "wI")
    }

    func testConsoleInputReachesTheGuestThroughTheUART() throws {
        var guest = GuestCode()
        // Wait for LSR.DR, then echo the byte back, then power off.
        let poll = guest.code.count
        guest.movDX(0x3FD); guest.inAL()
        guest.code += [0xA8, 0x01]  // test al, 1
        let back = poll - (guest.code.count + 2)
        guest.code += [0x74, UInt8(bitPattern: Int8(back))]  // jz poll
        guest.echoPort(0x3F8)
        guest.powerOff()
        let run = try makeRun(guest)
        var reason: VMExitReason?
        let done = DispatchSemaphore(value: 0)
        try run.vm.start { reason = $0; done.signal() }
        usleep(50_000)
        XCTAssertEqual(run.vm.consoleReceive([UInt8(ascii: "k")]), 1)
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        run.vm.stop()
        XCTAssertEqual(reason, .powerOff)
        XCTAssertEqual(run.console, "k")
    }

    func testConsolePTYCarriesOutput() throws {
        var guest = GuestCode()
        guest.print("pty!")
        guest.powerOff()
        let run = try makeRun(guest)
        XCTAssertTrue(run.vm.consoleName.hasPrefix("/dev/pts/"), run.vm.consoleName)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        var buffer = [UInt8](repeating: 0, count: 64)
        let slave = open(run.vm.consoleName, O_RDWR | O_NOCTTY | O_NONBLOCK)
        XCTAssertGreaterThanOrEqual(slave, 0)
        defer { close(slave) }
        let n = read(run.vm.consoleSlaveFD, &buffer, buffer.count)
        XCTAssertEqual(n, 4)
        XCTAssertEqual(Array(buffer.prefix(max(n, 0))), Array("pty!".utf8))
    }

    func testMemoryAboveFourGiBIsRegisteredAndShared() throws {
        var guest = GuestCode()
        guest.print("m")
        guest.powerOff()
        let run = try makeRun(guest, memory: (3 << 30) + (64 << 20))
        XCTAssertEqual(run.vm.memoryRegions, [
            MemoryRegion(guestPhysical: 0, size: 3 << 30, fdOffset: 0),
            MemoryRegion(guestPhysical: 1 << 32, size: 64 << 20, fdOffset: 3 << 30),
        ])
        var st = stat()
        XCTAssertEqual(fstat(run.vm.memoryFD, &st), 0)
        XCTAssertEqual(UInt64(st.st_size), (3 << 30) + (64 << 20))
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
    }

    func testGuestReachesAPCIFunctionThroughItsIOAndMemoryBARs() throws {
        var guest = GuestCode()
        func printEAX() {
            guest.movDX(0x3F8)
            for _ in 0..<4 { guest.outAL(); guest.code += [0xC1, 0xE8, 0x08] }  // out; shr eax, 8
        }
        guest.movDX(0x1000); guest.inEAX(); printEAX()
        guest.movDX(0x1004); guest.movEAX(0x1234_5678); guest.outEAX()
        guest.code += [0xA1] + guest.le32(0xC000_0008); printEAX()   // mov eax, [0xC0000008]
        guest.movEAX(0xCAFE_F00D)
        guest.code += [0xA3] + guest.le32(0xC000_000C)                // mov [0xC000000C], eax
        guest.powerOff()
        let run = try makeRun(guest)
        let function = FakeFunction(header: PCIConfigHeader(
            vendorID: 0x1AF4, deviceID: 0x1044, classCode: 0xFF, subclass: 0,
            bars: [.init(kind: .io, size: 64), .init(kind: .memory32, size: 4096)]))
        let line = try run.vm.addPCIFunction(function)
        XCTAssertEqual(line.irq, 5)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.vm.consoleReplay(), [0x00, 0x00, 0x00, 0xA0, 0x08, 0x00, 0x01, 0xA0])
        XCTAssertEqual(function.writes.map { [UInt32($0.bar), $0.offset, UInt32($0.size), $0.value] },
                       [[0, 4, 4, 0x1234_5678], [1, 0xC, 4, 0xCAFE_F00D]])
        line.assert()
        line.deassert()  // KVM_IRQ_LINE on a stopped VM is harmless
    }

    func testVMLeavesNoFileDescriptorsOrThreadsBehind() throws {
        func openFDs() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }
        func threads() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1 }
        var guest = GuestCode()
        guest.print("x")
        guest.powerOff()
        let path = try TestSupport.writeFile(guest.image, name: "guest.bin")
        let spec = VMSpec(name: "t", memoryBytes: 16 << 20, vcpus: 2, kernelPath: path)
        _ = try GuestRun(spec: spec).run(timeout: 30)  // warm up lazily opened runtime fds
        let (fdsBefore, threadsBefore) = (openFDs(), threads())
        for _ in 0..<3 { XCTAssertEqual(try GuestRun(spec: spec).run(timeout: 30), .powerOff) }
        XCTAssertThrowsError(try VirtualMachine(spec: VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: "/nonexistent")))
        if openFDs() != fdsBefore || threads() > threadsBefore {
            for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
                print("fd \(fd) -> \((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd)) ?? "?")")
            }
            for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
                print("task \(task) \((try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? "?")")
            }
        }
        XCTAssertEqual(openFDs(), fdsBefore)
        // Fewer is fine: the test runner's own Dispatch workers come and go.
        XCTAssertLessThanOrEqual(threads(), threadsBefore)
    }

    func testKernelOpenedThroughAnFDIsNamedByItsName() throws {
        var guest = GuestCode()
        guest.powerOff()
        let path = try TestSupport.writeFile(guest.image, name: "guest.bin")
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        let vm = try VirtualMachine(spec: VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: "/proc/self/fd/\(fd)",
                                                 commandLine: "a=1", kernelName: "/var/vm/guest.bin"))
        XCTAssertEqual(vm.boot.format, "Multiboot")
        let junk = try TestSupport.writeFile([1, 2, 3], name: "junk")
        XCTAssertThrowsError(try VirtualMachine(spec: VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: junk,
                                                             kernelName: "/var/vm/junk"))) {
            XCTAssertTrue("\($0)".hasPrefix("/var/vm/junk: not a kernel"), "\($0)")
        }
        XCTAssertThrowsError(try VirtualMachine(spec: VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: "/nonexistent/k",
                                                             kernelName: "k.elf"))) {
            XCTAssertEqual("\($0)", "k.elf: No such file or directory")
        }
    }

    func testBadKernelIsNamedInTheError() throws {
        let path = try TestSupport.writeFile([UInt8](repeating: 0x90, count: 10000), name: "junk.bin")
        XCTAssertThrowsError(try VirtualMachine(spec: VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: path))) { error in
            XCTAssertTrue("\(error)".hasPrefix(path + ": not a kernel"), "\(error)")
        }
    }
}
