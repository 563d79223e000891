import Glibc
import VMDSystem

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
func notifySystemd(_ state: String) {
    guard let p = getenv("NOTIFY_SOCKET") else { return }
    Sockets.sendDatagram(path: String(cString: p), Array(state.utf8))
}

@inline(__always) func cvmdErrno() -> Int32 { errno }
