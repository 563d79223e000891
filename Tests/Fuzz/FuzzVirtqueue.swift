// libFuzzer target: a hostile guest driving a virtio device.
//
// The input is both the guest's memory (rings, descriptors, buffers) and a
// script of register accesses. Byte 0 picks the device (a recording test
// device, vioblk, vionet, viornd, vioscsi) and the mode: a well-behaved
// initialisation followed by notifications, or raw register writes and
// reads in any order. Whatever the guest does, the process must not trap;
// the sanitizers catch memory errors the type system would not.
import Glibc
import Virtio
import VirtioDevices

final class NullSink: InterruptSink {
    func setInterrupt(_ asserted: Bool) {}
}

/// Walks every chain and touches every byte of it through ChainCursor.
final class WalkingDevice: VirtioDevice {
    let name = "fuzzdev"
    let deviceFeatures: UInt64 = 0
    let queueMaxSizes: [UInt16] = [256, 16]
    func attach(to host: VirtioDeviceHost) {}
    func readConfig(offset: Int, size: Int) -> UInt32 { 0 }
    func reset() {}
    func process(queue: Virtqueue, index: Int) throws {
        while let request = try queue.popRequest() {
            var reader = ChainCursor(memory: queue.memory, elements: request.readable)
            _ = reader.readBytes(4096)
            var writer = ChainCursor(memory: queue.memory, elements: request.writable)
            _ = writer.write([UInt8](repeating: 0xa5, count: 1000))
            try queue.pushUsed(head: request.head, length: UInt32(truncatingIfNeeded: writer.position))
        }
    }
}

final class FuzzDisk: BlockBackend {
    var storage = [UInt8](repeating: 0x11, count: 64 * 1024)
    var capacity: UInt64 { UInt64(storage.count) }
    var isReadOnly = false
    var supportsDiscard = true
    var supportsWriteZeroes = true
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws {
        precondition(offset + UInt64(buffer.count) <= capacity, "device read past the image")
        storage.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count])) }
    }
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        precondition(!isReadOnly && offset + UInt64(buffer.count) <= capacity, "device wrote past the image")
        storage.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count]).copyMemory(from: buffer) }
    }
    func flush() throws {}
    func discard(offset: UInt64, length: UInt64) throws {
        precondition(offset + length <= capacity, "discard past the image")
    }
    func writeZeroes(offset: UInt64, length: UInt64) throws {
        precondition(offset + length <= capacity, "write zeroes past the image")
    }
}

final class FuzzNet: NetworkBackend {
    var descriptor: Int32 { -1 }
    var frames: [[UInt8]] = []
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int? {
        guard !frames.isEmpty else { return nil }
        let frame = frames.removeFirst()
        let n = min(frame.count, buffer.count)
        frame.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        return n
    }
    func send(_ frame: UnsafeRawBufferPointer) throws {
        precondition(frame.count >= 26 && frame.count <= 12 + 65536, "bad frame length sent")
    }
}

let memorySize = 64 * 1024
let descriptorTable: UInt64 = 0x0000, availRing: UInt64 = 0x4000, usedRing: UInt64 = 0x6000

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtqueue(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 4 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    virtioLogHook = { _ in }
    let memory = PlainGuestMemory(size: memorySize)
    // The guest's memory: the input, repeated.
    for i in stride(from: 0, to: memorySize, by: size) {
        memcpy(memory.storage + i, data, min(size, memorySize - i))
    }
    let net = FuzzNet()
    let device: VirtioDevice
    let type: VirtioDeviceType
    switch input[0] % 5 {
    case 0: device = WalkingDevice(); type = .block
    case 1:
        let disk = FuzzDisk()
        disk.isReadOnly = input[1] & 1 == 1
        device = VioBlk(name: "vioblk0", backend: disk, identifier: "fuzz.img"); type = .block
    case 2:
        net.frames = [Array(input.prefix(1600)), Array(input.suffix(40))]
        device = VioNet(name: "vionet0", backend: net, mac: [0xfe, 0xe1, 0xbb, 0xd1, 0, 1],
                        lockedLinkAddress: input[1] & 2 == 2)!
        type = .network
    case 3: device = VioRnd(); type = .entropy
    default:
        let iso = FuzzDisk()
        iso.isReadOnly = true
        device = VioSCSI(backend: iso); type = .scsi
    }
    let sink = NullSink()
    let transport = VirtioPCITransport(device: device, type: type, memory: memory, interruptSink: sink)

    if input[0] & 0xc0 == 0x40 {
        // Well-formed rings, fuzzed requests: the harness lays out chains
        // whose buffers lie in guest memory, so the device logic (request
        // headers, SCSI CDBs, frame contents) is what gets fuzzed.
        fuzzRequests(input, memory: memory, transport: transport, device: device)
    } else if input[0] & 0x80 == 0 {
        // A proper initialisation with fuzzed features and queue sizes.
        transport.write(offset: 0x14, size: 1, value: 3)
        let features = transport.offeredFeatures & (UInt64(input[1]) << 24 | 0xff_ffff | VirtioFeature.version1)
        transport.write(offset: 0x08, size: 4, value: 0)
        transport.write(offset: 0x0c, size: 4, value: UInt32(truncatingIfNeeded: features))
        transport.write(offset: 0x08, size: 4, value: 1)
        transport.write(offset: 0x0c, size: 4, value: UInt32(truncatingIfNeeded: features >> 32))
        transport.write(offset: 0x14, size: 1, value: 11)
        for q in 0..<transport.queues.count {
            transport.write(offset: 0x16, size: 2, value: UInt32(q))
            transport.write(offset: 0x18, size: 2, value: UInt32(1) << (input[2] >> 4 & 7))
            let spacing = UInt64(q) * 0x800
            transport.write(offset: 0x20, size: 4, value: UInt32(descriptorTable + spacing))
            transport.write(offset: 0x28, size: 4, value: UInt32(availRing + spacing / 4))
            transport.write(offset: 0x30, size: 4, value: UInt32(usedRing + spacing))
            transport.write(offset: 0x1c, size: 2, value: 1)
        }
        transport.write(offset: 0x14, size: 1, value: 15)
        for round in 0..<3 {
            for q in 0..<transport.queues.count {
                transport.write(offset: 0x100, size: 2, value: UInt32(q))
            }
            if let vionet = device as? VioNet { vionet.backendReadable() }
            if transport.needsReset { _ = transport.read(offset: 0x200, size: 1); break }
            // Let the guest move its available index between rounds.
            memory.store16(UInt16(input[3]) &* UInt16(round + 1), at: availRing + 2)
        }
    } else {
        // Raw register soup: 8-byte records of op, offset, size, value.
        var i = 4
        while i + 8 <= size {
            let offset = UInt16(input[i + 1]) | UInt16(input[i + 2] & 0x07) << 8
            let width = [1, 2, 4, 4][Int(input[i + 3] & 3)]
            let value = UInt32(input[i + 4]) | UInt32(input[i + 5]) << 8 | UInt32(input[i + 6]) << 16
                | UInt32(input[i + 7]) << 24
            if input[i] & 1 == 0 {
                transport.write(offset: offset, size: width, value: value)
            } else {
                _ = transport.read(offset: offset, size: width)
            }
            if input[i] & 0x80 != 0, let vionet = device as? VioNet { vionet.backendReadable() }
            i += 8
        }
    }
    return 0
}

/// Data area for the fuzzed buffers; rings live below it.
let dataArea: UInt64 = 0x8000

func fuzzRequests(_ input: UnsafeBufferPointer<UInt8>, memory: PlainGuestMemory, transport: VirtioPCITransport,
                  device: VirtioDevice) {
    transport.write(offset: 0x14, size: 1, value: 3)
    let offered = transport.offeredFeatures
    transport.write(offset: 0x08, size: 4, value: 0)
    transport.write(offset: 0x0c, size: 4, value: UInt32(truncatingIfNeeded: offered))
    transport.write(offset: 0x08, size: 4, value: 1)
    transport.write(offset: 0x0c, size: 4, value: UInt32(truncatingIfNeeded: offered >> 32))
    transport.write(offset: 0x14, size: 1, value: 11)
    let queueSize: UInt16 = 16
    for q in 0..<transport.queues.count {
        let base = UInt64(q) * 0x800
        transport.write(offset: 0x16, size: 2, value: UInt32(q))
        transport.write(offset: 0x18, size: 2, value: UInt32(queueSize))
        transport.write(offset: 0x20, size: 4, value: UInt32(base))
        transport.write(offset: 0x28, size: 4, value: UInt32(base + 0x200))
        transport.write(offset: 0x30, size: 4, value: UInt32(base + 0x400))
        transport.write(offset: 0x1c, size: 2, value: 1)
        // Rings start clean: the input only fills the data area.
        memset(memory.storage + Int(base), 0, 0x800)
    }
    transport.write(offset: 0x14, size: 1, value: 15)

    // Records of 4 bytes: queue+flags, length, offset (2 bytes).
    var availIndex = [UInt16](repeating: 0, count: transport.queues.count)
    var nextDescriptor = [UInt16](repeating: 0, count: transport.queues.count)
    var i = 4
    while i + 4 <= input.count {
        let q = Int(input[i] & 3) % transport.queues.count
        let chainLength = Int(input[i] >> 2 & 3) + 1
        let base = UInt64(q) * 0x800
        let head = nextDescriptor[q]
        for d in 0..<chainLength {
            let index = (head &+ UInt16(d)) % queueSize
            let record = i + 4 * d
            let byte = record < input.count ? input[record] : 0
            let length = UInt32(record + 1 < input.count ? input[record + 1] : 16) * 16
            let offset = UInt64(record + 3 < input.count ? UInt16(input[record + 2]) | UInt16(input[record + 3]) << 8 : 0)
            let address = dataArea + offset % (UInt64(memorySize) - dataArea - 4096)
            let writable = byte & 0x10 != 0 || d == chainLength - 1 && byte & 0x20 == 0
            let last = d == chainLength - 1
            let at = base + UInt64(index) * 16
            memory.store64(address, at: at)
            memory.store32(length, at: at + 8)
            memory.store16((writable ? VirtqDescriptorFlag.write : 0) | (last ? 0 : VirtqDescriptorFlag.next), at: at + 12)
            memory.store16((index &+ 1) % queueSize, at: at + 14)
        }
        nextDescriptor[q] = (head &+ UInt16(chainLength)) % queueSize
        memory.store16(head, at: base + 0x200 + 4 + 2 * UInt64(availIndex[q] % queueSize))
        availIndex[q] &+= 1
        memory.store16(availIndex[q], at: base + 0x200 + 2)
        transport.write(offset: 0x100, size: 2, value: UInt32(q))
        if let vionet = device as? VioNet { vionet.backendReadable() }
        if transport.needsReset { return }
        i += 4 * chainLength
    }
}
