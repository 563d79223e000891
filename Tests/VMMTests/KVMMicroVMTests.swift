import Foundation
import Glibc
import VMDSystem
import XCTest
@testable import VMM

/// A register file standing in for a device process: fixed words, and a
/// record of the writes that reached it.
final class SlotDevice: BusDevice {
    let word: UInt32
    private let lock = NSLock()
    private var writes: [(UInt64, UInt64)] = []
    init(word: UInt32) { self.word = word }
    func read(offset: UInt64, size: Int) -> UInt64 { offset == 0 ? UInt64(word) : 0 }
    func write(offset: UInt64, size: Int, value: UInt64) {
        lock.lock(); writes.append((offset, value)); lock.unlock()
    }
    var recorded: [(UInt64, UInt64)] { lock.lock(); defer { lock.unlock() }; return writes }
}

/// The microVM shape and PVH entry under KVM, with hand-assembled guests.
final class KVMMicroVMTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(TestSupport.kvmAvailable, "/dev/kvm is missing: KVM micro-VM tests skipped")
    }

    /// mov eax, [address]; then out its low byte and the next three to COM1.
    private func printWord(_ guest: inout GuestCode, at address: UInt32) {
        guest.code += [0xA1] + guest.le32(address)
        guest.movDX(0x3F8)
        for _ in 0..<4 { guest.outAL(); guest.code += [0xC1, 0xE8, 0x08] }
    }

    func testSlotsAreReachableNotifyGoesToTheEventFDAndThereIsNoPCI() throws {
        var guest = GuestCode()
        printWord(&guest, at: 0xD000_0000)
        printWord(&guest, at: 0xD000_1000)
        // No host bridge: configuration mechanism 1 reads all ones.
        guest.movDX(0xCF8); guest.movEAX(0x8000_0000); guest.code += [0xEF]
        guest.movDX(0xCFC); guest.inEAX(); guest.movDX(0x3F8); guest.outAL()
        // QueueNotify of slot 0 with queue 1: the eventfd, not the device.
        guest.code += [0xC7, 0x05] + guest.le32(0xD000_0050) + guest.le32(1)
        // Queue 3 has no eventfd: that write reaches the device.
        guest.code += [0xC7, 0x05] + guest.le32(0xD000_0050) + guest.le32(3)
        guest.powerOff()
        var spec = VMSpec(name: "t", memoryBytes: 16 << 20, kernelPath: try TestSupport.writeFile(guest.image, name: "guest.bin"),
                          commandLine: "console=ttyS0")
        spec.virtioMMIOSlots = 2
        let run = try GuestRun(spec: spec)
        let first = SlotDevice(word: 0x7472_6976), second = SlotDevice(word: 0x0403_0201)
        let (address0, line0) = try run.vm.addVirtioMMIODevice(first)
        let (address1, line1) = try run.vm.addVirtioMMIODevice(second)
        XCTAssertEqual([address0, address1], [0xD000_0000, 0xD000_1000])
        XCTAssertEqual([line0.irq, line1.irq], [5, 9])
        XCTAssertThrowsError(try run.vm.addVirtioMMIODevice(SlotDevice(word: 0)), "only the announced slots")
        let notify = try EventFD.create()
        XCTAssertGreaterThanOrEqual(notify, 0)
        defer { close(notify) }
        try run.vm.mmioEventFD(notify, address: 0xD000_0050, length: 4, value: 1, assign: true)
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.vm.consoleReplay(), Array("virt".utf8) + [1, 2, 3, 4, 0xFF])
        var count: UInt64 = 0
        XCTAssertEqual(read(notify, &count, 8), 8)
        XCTAssertEqual(count, 1, "one kick signalled in the kernel")
        XCTAssertEqual(first.recorded.map { $0.0 }, [0x50])
        XCTAssertEqual(first.recorded.map { $0.1 }, [3])
        // The Multiboot command line announces both slots after the user's words.
        let line = try XCTUnwrap(run.vm.memoryForTesting.read(BootLayout.commandLine, count: 200))
        let text = String(decoding: line.prefix { $0 != 0 }, as: UTF8.self)
        XCTAssertTrue(text.hasSuffix("console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:9"), text)
    }

    func testPVHEntryGetsStartInfoInEBX() throws {
        // At the PVH entry: print "P" if [ebx] is the start_info magic, then
        // the low byte of memmap_entries ([ebx+48]).
        var code: [UInt8] = []
        code += [0x81, 0x3B] + GuestCode().le32(0x336E_C578)    // cmp dword [ebx], imm32
        code += [0x75, 0x07]                                     // jne +7
        code += [0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x50, 0xEE]       // mov dx,0x3f8; mov al,'P'; out
        code += [0x8B, 0x43, 0x30]                               // mov eax, [ebx+48]
        code += [0x66, 0xBA, 0xF8, 0x03, 0xEE]                   // mov dx,0x3f8; out dx, al
        code += [0x66, 0xBA, 0x04, 0x06, 0x66, 0xB8, 0x00, 0x20, 0x66, 0xEF]  // power off
        code += [0xF4, 0xEB, 0xFD]
        let file = ELF64Builder.elf64(segments: [.init(paddr: 0x100000, data: code, memorySize: 0x1000)],
                                      notes: ELF64Builder.pvhNote(entry: 0x100000))
        let run = try GuestRun(spec: VMSpec(name: "t", memoryBytes: 16 << 20,
                                            kernelPath: try TestSupport.writeFile(file, name: "pvh.elf")))
        XCTAssertEqual(run.vm.boot.format, "PVH")
        XCTAssertEqual(try run.run(timeout: 30), .powerOff)
        XCTAssertEqual(run.vm.consoleReplay(), [UInt8(ascii: "P"), 3])
    }
}
