import VMDControl
import Glibc
import VMDSystem
import Imsg
import CNetlink

/// `vmd: priv`: keeps root for network plumbing only: it creates tap
/// devices, configures their host side (HostNetwork: up/down, group,
/// bridge, VRF, addresses) and passes the taps up. Taps are not
/// persistent: one disappears with the last descriptor, so with its VM
/// process. The bridges and VRFs priv created go when it exits.
final class PrivProcess {
    let child: ChildProcess
    let network: HostNetwork

    init(options: DaemonOptions) {
        child = ChildProcess(role: "priv", title: "vmd: priv")
        network = HostNetwork(daemonPID: getppid())
        child.onParentMessage = { [unowned self] m in self.handle(m) }
        child.parent.allowedTypes = MessagePolicy.rawTypes(.parentToPriv)
        let opened = vmdnl_open()
        if opened < 0 { Log.warning("rtnetlink: \(String(cString: strerror(-opened)))") }
        network.removeLeftovers()
        child.onTerminate = { [unowned self] in self.child.loop.exit() }
        restrict("priv", user: nil, denyFileSystem: false, policy: SandboxPolicies.priv)
        child.sandboxSelfTest()
    }

    func handle(_ m: Imsg) {
        if let f = m.fd { FD.close(f) }
        switch MessageType(rawValue: m.type) {
        case .privOpenTap:
            let request: TapRequest
            do {
                request = try TapRequest(decoding: m.data)
            } catch {
                Log.warning("bad tap request from the parent: \(error)")
                child.parent.send(type: MessageType.privTapOpened.rawValue, peerID: m.peerID,
                                  data: Array("error: bad request".utf8))
                return
            }
            do {
                guard request.name.isEmpty || HostNetwork.validName(request.name) else {
                    throw HostNetwork.Failure(description: "invalid interface name")
                }
                let tap = try Tap.open(name: request.name.isEmpty ? nil : request.name)
                do {
                    try network.configure(tap: tap.name, request)
                } catch {
                    FD.close(tap.fd)
                    throw error
                }
                child.parent.send(type: MessageType.privTapOpened.rawValue, peerID: m.peerID,
                                  fd: tap.fd, data: Array(tap.name.utf8))
            } catch {
                Log.warning("cannot open tap \(request.name): \(error)")
                child.parent.send(type: MessageType.privTapOpened.rawValue, peerID: m.peerID,
                                  data: Array("error: \(error)".utf8))
            }
        default:
            Log.warning("unexpected message type \(m.type) from the parent")
        }
    }

    func run() -> Never {
        child.loop.run()
        network.removeCreated()
        exit(0)
    }
}
