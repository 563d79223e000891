// libFuzzer target: control-socket payloads (what vmctl, or anything that
// can connect to the socket, sends) and the daemon's internal payloads.
// Decoding must never trap; what decodes must survive a round trip.
import Glibc

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControl(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let v = try? VMInfo(decoding: bytes) {
        precondition((try? VMInfo(decoding: v.encoded())) == v, "VMInfo round trip")
    }
    if let s = try? StartRequest(decoding: bytes) {
        precondition((try? StartRequest(decoding: s.encoded())) == s, "StartRequest round trip")
    }
    if let r = try? VMRequest(decoding: bytes) {
        precondition((try? VMRequest(decoding: r.encoded())) == r, "VMRequest round trip")
    }
    if let f = try? Failure(decoding: bytes) {
        precondition((try? Failure(decoding: f.encoded())) == f, "Failure round trip")
    }
    for decode in [{ _ = try VerbosityRequest(decoding: $0) }, { _ = try ResetRequest(decoding: $0) },
                   { _ = try InfoRequest(decoding: $0) }, { _ = try ClientConnected(decoding: $0) }]
        as [([UInt8]) throws -> Void] {
        try? decode(bytes)
    }
    var reader = WireReader(bytes)
    while reader.remaining > 0, (try? reader.string(max: 64)) != nil {}
    return 0
}
