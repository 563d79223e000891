/// The escape sequences `vmctl console` reads from the user's keyboard, as
/// cu(1) does: a `~` typed at the start of a line is held back; `~.` (or
/// `~` Ctrl-D) detaches, `~~` sends one `~`, and `~` with anything else sends
/// both characters. "Start of a line" is the very beginning of the session
/// and after Return (CR or LF).
struct ConsoleEscape {
    enum Output: Equatable {
        /// Bytes to send to the VM.
        case send([UInt8])
        /// The user asked to leave; the bytes before the escape are still sent.
        case detach(sendFirst: [UInt8])
    }

    static let tilde = UInt8(ascii: "~")
    static let dot = UInt8(ascii: ".")
    static let controlD: UInt8 = 0x04

    private(set) var atLineStart = true
    private(set) var holdingTilde = false

    init() {}

    /// Feeds what the user typed; returns what to forward, or a detach.
    mutating func feed<S: Sequence>(_ bytes: S) -> Output where S.Element == UInt8 {
        var out: [UInt8] = []
        for byte in bytes {
            if holdingTilde {
                holdingTilde = false
                switch byte {
                case ConsoleEscape.dot, ConsoleEscape.controlD:
                    return .detach(sendFirst: out)
                case ConsoleEscape.tilde:
                    out.append(byte)
                    atLineStart = false
                default:
                    out.append(ConsoleEscape.tilde)
                    out.append(byte)
                    atLineStart = byte == 0x0d || byte == 0x0a
                }
                continue
            }
            if atLineStart && byte == ConsoleEscape.tilde {
                holdingTilde = true
                continue
            }
            out.append(byte)
            atLineStart = byte == 0x0d || byte == 0x0a
        }
        return .send(out)
    }
}
