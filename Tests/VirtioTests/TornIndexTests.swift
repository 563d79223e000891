import XCTest
import Glibc
@testable import Virtio

/// Issue 9, item 6: the ring indices the guest updates while the device
/// reads them must be read with one load. GuestMemory.load16 went through a
/// byte copy (glibc's 2-byte memcpy loads the high byte a second time), so a
/// read racing the guest's avail_idx 0x..FF -> 0x..00 step could return
/// (new high, old low): 57343 -> 57344 read as 57599, "available index ...
/// is more than 128 ahead", DEVICE_NEEDS_RESET, and the guest's ring stuck.
final class TornIndexTests: XCTestCase {
    final class Flag: @unchecked Sendable { var stop = false }

    func testIndexReadsAreNeverTorn() {
        let memory = PlainGuestMemory(size: 4096)
        let address = Int(bitPattern: memory.storage.advanced(by: 0x102))
        memory.storage.advanced(by: 0x102).storeBytes(of: 0x00FF, as: UInt16.self)
        let flag = Flag()
        let writerEnd = Date().addingTimeInterval(10)
        let writer = Thread {
            // The guest: 0x00FF <-> 0x0100, each one 16-bit store.
            let word = UnsafeMutablePointer<UInt16>(bitPattern: address)!
            var v: UInt16 = 0x00FF
            while !flag.stop && Date() < writerEnd {
                v = v == 0x00FF ? 0x0100 : 0x00FF
                word.pointee = v
            }
        }
        writer.start()
        defer { flag.stop = true }
        var torn = 0, reads = 0
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            for _ in 0..<100_000 {
                let v = memory.load16(at: 0x102)
                reads += 1
                if v != 0x00FF && v != 0x0100 { torn += 1 }
            }
        }
        XCTAssertEqual(torn, 0, "\(torn) torn reads of \(reads)")
    }
}
