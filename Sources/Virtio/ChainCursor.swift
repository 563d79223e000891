// Byte-stream views over a request's buffers. Drivers may split headers and
// data across descriptors any way they like (spec 2.6.4, "message framing"),
// so devices read and write through these cursors instead of assuming one
// descriptor per field. Every segment handed out was checked against guest
// memory when the chain was walked and is looked up again here.
import Glibc

public struct ChainCursor {
    public let memory: GuestMemory
    public let elements: [ChainElement]
    private var elementIndex = 0
    private var offsetInElement: UInt32 = 0
    /// Bytes consumed so far.
    public private(set) var position: UInt64 = 0
    /// Bytes left in the buffers.
    public private(set) var remaining: UInt64

    public init(memory: GuestMemory, elements: [ChainElement]) {
        self.memory = memory
        self.elements = elements
        self.remaining = elements.reduce(0) { $0 + UInt64($1.length) }
    }

    /// The next piece of guest memory, at most `maxLength` bytes, or nil at
    /// the end. Advances past it.
    public mutating func nextSegment(maxLength: Int = Int.max) -> UnsafeMutableRawBufferPointer? {
        while elementIndex < elements.count {
            let element = elements[elementIndex]
            let left = element.length - offsetInElement
            if left == 0 {
                elementIndex += 1
                offsetInElement = 0
                continue
            }
            guard maxLength > 0 else { return nil }
            let count = Int(min(UInt64(left), UInt64(maxLength)))
            guard let buffer = memory.buffer(at: element.address &+ UInt64(offsetInElement), length: count) else {
                // Cannot happen for a walked chain; end the stream instead of trapping.
                elementIndex = elements.count
                remaining = 0
                return nil
            }
            offsetInElement += UInt32(count)
            position += UInt64(count)
            remaining -= UInt64(count)
            return buffer
        }
        return nil
    }

    /// Copy up to `destination.count` bytes out of the guest; returns the count.
    @discardableResult
    public mutating func read(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        while copied < destination.count, let segment = nextSegment(maxLength: destination.count - copied) {
            if let to = destination.baseAddress, let from = segment.baseAddress {
                memcpy(to + copied, from, segment.count)
            }
            copied += segment.count
        }
        return copied
    }

    /// Up to `count` bytes out of the guest.
    public mutating func readBytes(_ count: Int) -> [UInt8] {
        let wanted = Int(min(UInt64(max(count, 0)), remaining))
        var bytes = [UInt8](repeating: 0, count: wanted)
        let got = bytes.withUnsafeMutableBytes { read(into: $0) }
        return Array(bytes.prefix(got))
    }

    /// Copy bytes into the guest; returns how many fit.
    @discardableResult
    public mutating func write(_ source: UnsafeRawBufferPointer) -> Int {
        var copied = 0
        while copied < source.count, let segment = nextSegment(maxLength: source.count - copied) {
            if let to = segment.baseAddress, let from = source.baseAddress {
                memcpy(to, from + copied, segment.count)
            }
            copied += segment.count
        }
        return copied
    }

    @discardableResult
    public mutating func write(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { write($0) }
    }

    /// Skip `count` bytes (or to the end); returns how many were skipped.
    @discardableResult
    public mutating func skip(_ count: UInt64) -> UInt64 {
        var skipped: UInt64 = 0
        while skipped < count,
              let segment = nextSegment(maxLength: Int(min(count - skipped, UInt64(Int.max)))) {
            skipped += UInt64(segment.count)
        }
        return skipped
    }
}
