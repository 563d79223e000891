// libFuzzer target: bytes from an imsg peer (a vmctl client, a child
// process). Framing must never trap, must consume exactly what a header
// says, and must reject every length outside 16...16384.
import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzImsg(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var start = 0
    var messages = 0
    while true {
        switch ImsgFraming.next(in: bytes, from: start) {
        case .needMore:
            precondition(bytes.count - start < ImsgFraming.headerSize
                || Int(bytes[start + 4]) | Int(bytes[start + 5]) << 8 > bytes.count - start,
                "asked for more bytes while a whole message was there")
            return 0
        case .badLength(let n):
            precondition(n < ImsgFraming.headerSize || n > ImsgFraming.maxMessageSize, "rejected a valid length \(n)")
            return 0
        case .message(let header, let payload):
            precondition(header.length >= 16 && header.length <= 16384)
            precondition(payload.lowerBound == start + 16 && payload.upperBound == start + header.length)
            precondition(payload.upperBound <= bytes.count)
            start += header.length
            messages += 1
            precondition(messages <= size / 16 + 1, "more messages than bytes allow")
        }
    }
}
