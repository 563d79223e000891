import VMDControl
import Glibc
import VMDSystem
import Imsg

/// `vmd: priv`: keeps root for network plumbing only: it creates tap
/// devices (and, later, bridges) for the parent and passes their fds up.
final class PrivProcess {
    let child: ChildProcess

    init(options: DaemonOptions) {
        child = ChildProcess(role: "priv", title: "vmd: priv")
        child.onParentMessage = { [unowned self] m in self.handle(m) }
        child.parent.allowedTypes = MessagePolicy.rawTypes(.parentToPriv)
        restrict("priv", user: nil, denyFileSystem: false, policy: SandboxPolicies.priv)
        child.sandboxSelfTest()
    }

    func handle(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .privOpenTap:
            // Payload: the requested interface name (may be empty: kernel picks tapN).
            let requested = String(decoding: m.data.prefix(15), as: UTF8.self)
            do {
                let tap = try Tap.open(name: requested.isEmpty ? nil : requested)
                child.parent.send(type: MessageType.privTapOpened.rawValue, peerID: m.peerID,
                                  fd: tap.fd, data: Array(tap.name.utf8))
            } catch {
                Log.warning("cannot open tap \(requested): \(error)")
                child.parent.send(type: MessageType.privTapOpened.rawValue, peerID: m.peerID,
                                  data: Array("error: \(error)".utf8))
            }
        default:
            Log.warning("unexpected message type \(m.type) from the parent")
        }
    }

    func run() -> Never { child.run() }
}
