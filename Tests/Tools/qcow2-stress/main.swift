// qcow2-stress IMAGE SEED [OPS]: writes to IMAGE through DiskImage (random
// allocating writes, some discards, write-zeroes and flushes) until killed
// or OPS operations are done. The kill -9 crash tests run it as the child
// they kill. Prints "ready" after the first operation.
import DiskImage
import Glibc

let args = CommandLine.arguments
guard args.count >= 3, let seed = UInt64(args[2]) else {
    fputs("usage: qcow2-stress image seed [ops]\n", stderr)
    exit(2)
}
let path = args[1]
let limit = args.count > 3 ? Int(args[3]) ?? Int.max : Int.max

func openFile(_ path: String, _ flags: Int32) throws -> ImageFile {
    let fd = open(path, flags | O_CLOEXEC)
    guard fd >= 0 else { throw DiskImageError.io(errno: errno, operation: "open \(path)") }
    return FDImageFile(fd: fd)
}

var state = seed | 1
func nextRandom() -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
}

do {
    let top = try openFile(path, O_RDWR)
    let chain = try BackingChain.resolve(path: path, file: top, format: nil, writable: true) { try openFile($0, O_RDONLY) }
    let disk = try BackingChain.open(chain.map { ($0.file, $0.format) }, readOnly: false)
    let sectors = disk.virtualSize / 512
    var buffer = [UInt8](repeating: 0, count: 256 * 1024)
    var ops = 0
    while ops < limit {
        let offset = (nextRandom() % sectors) * 512
        let length = min((nextRandom() % 512 + 1) * 512, disk.virtualSize - offset)
        switch nextRandom() % 16 {
        case 0: try disk.discard(offset: offset, length: length)
        case 1: try disk.writeZeroes(offset: offset, length: length)
        case 2: try disk.flush()
        default:
            let fill = UInt8(truncatingIfNeeded: nextRandom())
            for i in 0..<Int(length) { buffer[i] = fill &+ UInt8(truncatingIfNeeded: i >> 9) }
            try buffer.withUnsafeBytes { try disk.write(from: UnsafeRawBufferPointer(rebasing: $0[0..<Int(length)]), at: offset) }
        }
        ops += 1
        if ops == 1 { print("ready"); fflush(stdout) }
    }
    if let image = disk as? Qcow2Image { try image.close() } else { try disk.flush() }
} catch {
    fputs("qcow2-stress: \(path): \(error)\n", stderr)
    exit(1)
}
