// libFuzzer target: a vhost-user frontend's byte stream. The input is a
// 256-byte guest memory image (tiled over each region) followed by the stream. Messages go through the
// framer to a backend serving VioRnd; a SET_MEM_TABLE gets memfds filled
// with the image (so rings and descriptors are fuzzed too), ring kicks and
// calls get eventfds, and every queue is kicked after every message.
// Nothing may trap; descriptors must not leak.
import Glibc
import CVhostUser
import Virtio
import VirtioDevices
import VhostUser

let imageSize = 256
let regionSize = 64 * 1024

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVhostUser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    virtioLogHook = { _ in }
    guard size >= imageSize else { return 0 }
    let image = UnsafeRawBufferPointer(start: data, count: imageSize)
    let backend = VhostUserBackend(device: VioRnd(), offersConfig: true)
    var framer = VhostUserFramer()
    framer.append(Array(UnsafeBufferPointer(start: data + imageSize, count: size - imageSize))[...], fds: [])
    while true {
        guard var message = try? framer.next() else { break }
        switch VhostUserRequest(rawValue: message.request) {
        case .setMemTable:
            let count = message.payload.count >= 4 ? min(Int(message.payload[0]), 9) : 0
            message.fds = (0..<count).map { _ in
                let fd = cvhost_memfd("fuzz")
                _ = ftruncate(fd, off_t(regionSize))
                for offset in stride(from: 0, to: regionSize, by: imageSize) {
                    _ = pwrite(fd, image.baseAddress, imageSize, off_t(offset))
                }
                return fd
            }
        case .setVringKick, .setVringCall, .setVringErr:
            message.fds = [cvhost_eventfd()]
        case .setInflightFD:
            let fd = cvhost_memfd("fuzz-inflight")
            _ = ftruncate(fd, off_t(imageSize))
            _ = pwrite(fd, image.baseAddress, imageSize, 0)
            message.fds = [fd]
        default:
            break
        }
        let outcome = backend.handle(message)
        if let fd = outcome.replyFD { close(fd) }
        for q in 0..<backend.queues.count { backend.kick(queue: q) }
        if outcome.close { break }
    }
    backend.disconnect()
    return 0
}
