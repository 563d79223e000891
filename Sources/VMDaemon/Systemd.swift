import VMDControl
import Glibc
import VMDSystem

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
func notifySystemd(_ state: String) {
    guard let p = getenv("NOTIFY_SOCKET") else { return }
    var path = Array(String(cString: p).utf8)
    guard !path.isEmpty, path.count < 108 else { return }
    if path[0] == UInt8(ascii: "@") { path[0] = 0 }  // abstract namespace
    let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return }
    defer { FD.close(fd) }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { for (i, b) in path.enumerated() { $0[i] = b } }
    let len = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
    let msg = Array(state.utf8)
    _ = withUnsafePointer(to: &addr) { a in
        a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            msg.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, len) }
        }
    }
}

@inline(__always) func cvmdErrno() -> Int32 { errno }
