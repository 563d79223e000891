import Glibc
import Imsg
import VMDControl
import VMDSystem

/// One connection to vmd's control socket: requests go out as imsgs, and
/// replies are read one at a time, blocking. Anything the daemon sends that
/// is malformed ends vmctl with a message rather than a crash.
final class ControlConnection {
    let socketPath: String
    private let buffer: ImsgBuffer

    init(socketPath: String) throws {
        self.socketPath = socketPath
        do {
            buffer = ImsgBuffer(fd: try Sockets.connect(path: socketPath))
        } catch let error as SystemError {
            throw Failure(code: error.code, message: "connect: \(socketPath): \(error.message)")
        }
    }

    deinit { FD.close(buffer.fd) }

    func send(_ type: MessageType, _ payload: [UInt8] = []) throws {
        do {
            try buffer.sendBlocking(Imsg(type: type.rawValue, data: payload))
        } catch {
            throw Failure(code: EIO, message: "write to \(socketPath): \(error)")
        }
    }

    /// The next reply. A `ctlFail` reply is thrown as the Failure it carries.
    func receive() throws -> (type: MessageType, data: [UInt8]) {
        let message: Imsg
        do {
            message = try buffer.readMessage()
        } catch ImsgError.closed {
            throw Failure(code: EPIPE, message: "vmd closed the connection")
        } catch {
            throw Failure(code: EIO, message: "read from \(socketPath): \(error)")
        }
        if let fd = message.fd { FD.close(fd) }
        guard let type = MessageType(rawValue: message.type) else {
            throw Failure(code: EPROTO, message: "unexpected reply type \(message.type) from vmd")
        }
        if type == .ctlFail {
            guard let failure = try? Failure(decoding: message.data) else {
                throw Failure(code: EPROTO, message: "malformed failure reply from vmd")
            }
            throw failure
        }
        return (type, message.data)
    }

    /// Waits for `ctlOK` and returns its text (may be empty).
    func expectOK() throws -> String {
        let reply = try receive()
        guard reply.type == .ctlOK else { throw unexpected(reply.type) }
        return String(decoding: reply.data, as: UTF8.self)
    }

    func unexpected(_ type: MessageType) -> Failure {
        Failure(code: EPROTO, message: "unexpected reply from vmd: \(type)")
    }

    func decodeInfo(_ data: [UInt8]) throws -> VMInfo {
        do { return try VMInfo(decoding: data) } catch {
            throw Failure(code: EPROTO, message: "malformed vm information from vmd")
        }
    }
}
