/// The pure part of imsg: finding one message in received bytes. No system
/// calls, no allocation beyond the payload: the fuzz target compiles this
/// file alone.
public enum ImsgFraming {
    public struct Header: Equatable {
        public var type: UInt32
        public var length: Int
        public var flags: UInt16
        public var peerID: UInt32
        public var pid: UInt32
    }

    public enum Result: Equatable {
        /// Fewer bytes than a header, or than the header's length: read more.
        case needMore
        /// A whole message: its header and the payload's byte range.
        case message(Header, payload: Range<Int>)
        /// A length below 16 or above 16384: the peer is broken or hostile.
        case badLength(Int)
    }

    public static let headerSize = 16
    public static let maxMessageSize = 16384

    /// Looks at `bytes[start...]` for the next message.
    public static func next(in bytes: [UInt8], from start: Int) -> Result {
        guard start >= 0, start <= bytes.count else { return .needMore }
        let available = bytes.count - start
        guard available >= headerSize else { return .needMore }
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[start + at]) | UInt16(bytes[start + at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        let length = Int(u16(4))
        guard length >= headerSize && length <= maxMessageSize else { return .badLength(length) }
        guard available >= length else { return .needMore }
        let header = Header(type: u32(0), length: length, flags: u16(6), peerID: u32(8), pid: u32(12))
        return .message(header, payload: (start + headerSize)..<(start + length))
    }
}
