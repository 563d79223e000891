// libFuzzer target: viodev_msg bytes from a peer process. Decoding must
// never trap; what decodes must re-encode to the same bytes; and serving a
// decoded message against a transport must not trap either.
import Glibc
import Virtio

final class NullSink: InterruptSink {
    func setInterrupt(_ asserted: Bool) {}
}

final class QuietDevice: VirtioDevice {
    let name = "fuzzdev"
    let deviceFeatures: UInt64 = 1
    let queueMaxSizes: [UInt16] = [8]
    func attach(to host: VirtioDeviceHost) {}
    func readConfig(offset: Int, size: Int) -> UInt32 { UInt32(truncatingIfNeeded: offset) }
    func reset() {}
    func process(queue: Virtqueue, index: Int) throws {
        while let request = try queue.popRequest() { try queue.pushUsed(head: request.head, length: 0) }
    }
}

let memory = PlainGuestMemory(size: 4096)
let sink = NullSink()
let transport = VirtioPCITransport(device: QuietDevice(), type: .entropy, memory: memory, interruptSink: sink)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzViodevMsg(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    virtioLogHook = { _ in }
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    // Several messages back to back, as they arrive on a socket.
    var offset = 0
    while offset < size {
        let length = min(ViodevMsg.size + Int(bytes[offset] % 3) - 1, size - offset)
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length])
        if let message = ViodevMsg(bytes: slice) {
            precondition(length == ViodevMsg.size, "decoded a message of the wrong size")
            precondition(message.encoded() == Array(slice), "decode/encode round trip differs")
            if let reply = transport.handle(message) {
                precondition(reply.dataValid && reply.kind == .ioRead, "bad reply")
            }
        }
        offset += max(length, 1)
    }
    return 0
}
