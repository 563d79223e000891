// libFuzzer target: a qcow2 image file from a hostile source. Opening it
// (header, extensions, L1, refcount table), reading through L2 tables and
// compressed clusters, and writing to it (allocation, refcount blocks and
// table growth, discard, write zeroes) must never trap; what a successful
// write wrote must read back.
import DiskImage
import Glibc

/// An in-memory file that refuses to grow past 1 MiB (hostile metadata
/// must not make the harness allocate gigabytes).
final class CappedFile: ImageFile {
    var bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        guard offset < UInt64(bytes.count) else { return 0 }
        let n = min(buffer.count, bytes.count - Int(offset))
        bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(offset), byteCount: n) }
        return n
    }
    func write(from buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard offset <= 1 << 20, buffer.count <= (1 << 20) - Int(offset) else {
            throw DiskImageError.io(errno: EFBIG, operation: "pwrite")
        }
        let end = Int(offset) + buffer.count
        if end > bytes.count { bytes += [UInt8](repeating: 0, count: end - bytes.count) }
        bytes.withUnsafeMutableBytes { target in
            if buffer.count > 0 { (target.baseAddress! + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count) }
        }
    }
    func flush() throws {}
    func size() throws -> UInt64 { UInt64(bytes.count) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQcow2(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    // Offsets to touch, taken from the last bytes of the input.
    var seed: UInt64 = 0
    for b in bytes.suffix(8) { seed = seed << 8 | UInt64(b) }
    var buffer = [UInt8](repeating: 0, count: 4096)

    if let image = try? Qcow2Image(file: CappedFile(bytes), readOnly: true, requireBacking: false) {
        let virtual = image.virtualSize
        for k: UInt64 in 0..<6 {
            let offset = virtual == 0 ? 0 : (seed &+ k &* 0x9e37_79b9_7f4a_7c15) % virtual
            _ = try? buffer.withUnsafeMutableBytes { try image.read(into: $0, at: offset) }
        }
        _ = try? buffer.withUnsafeMutableBytes { try image.read(into: $0, at: 0) }
    }

    guard let image = try? Qcow2Image(file: CappedFile(bytes), readOnly: false, requireBacking: false) else { return 0 }
    let virtual = image.virtualSize
    guard virtual > 0 else { return 0 }
    for k: UInt64 in 0..<4 {
        let offset = (seed &+ k &* 0x2545_f491_4f6c_dd1d) % virtual
        let length = Int(min(UInt64(1 + (seed >> (8 * k)) % 3000), virtual - offset))
        let pattern = (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ Int(k) &* 7 &+ 1) }
        switch (seed >> (k * 2 + 40)) % 4 {
        case 0: _ = try? image.discard(offset: offset, length: UInt64(length))
        case 1: _ = try? image.writeZeroes(offset: offset, length: UInt64(length))
        default:
            guard (try? pattern.withUnsafeBytes({ try image.write(from: $0, at: offset) })) != nil else { continue }
            var back = [UInt8](repeating: 0, count: length)
            if (try? back.withUnsafeMutableBytes({ try image.read(into: $0, at: offset) })) != nil {
                precondition(back == pattern, "a successful write did not read back")
            }
        }
    }
    _ = try? image.flush()
    return 0
}
