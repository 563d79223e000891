import Glibc
import VMDControl

/// Who a control client is: its peer credentials, which control learned
/// with SO_PEERCRED and the parent took once, from control's own message.
struct ClientCredentials: Equatable {
    let uid: uid_t
    let gid: gid_t
    var isRoot: Bool { uid == 0 }
}

/// Who owns a VM (`owner user[:group]`, resolved when the VM was added).
struct VMOwnership: Equatable {
    /// The configuration names an owner at all.
    var configured: Bool
    var uid: uid_t
    var gid: gid_t?

    static let rootOnly = VMOwnership(configured: false, uid: 0, gid: nil)
}

/// What a control client may do, as vmd decides it: root everything;
/// others only the unprivileged requests, on VMs they own, without making
/// the daemon open paths for them.
enum ControlAuthorization {
    enum Decision: Equatable {
        case allowed
        case denied(String)
    }

    /// Requests only root may make at all (reload, load, log, reset).
    static func mayRequest(_ type: MessageType, _ client: ClientCredentials) -> Decision {
        if client.isRoot || MessagePolicy.unprivilegedRequests.contains(type) { return .allowed }
        return .denied("permission denied: only root may do that")
    }

    /// The owner of a VM (by user or group) and root may start, stop,
    /// pause, wait for and attach to it.
    static func mayControl(_ vm: VMOwnership, _ client: ClientCredentials) -> Bool {
        if client.isRoot { return true }
        guard vm.configured else { return false }
        if vm.uid != 0 && vm.uid == client.uid { return true }
        if let g = vm.gid, g == client.gid { return true }
        return false
    }

    /// A start that names paths or resources (-b, -d, -r, ...) makes the
    /// daemon open files as root: only root may give them.
    static func mayStart(with request: StartRequest, _ client: ClientCredentials) -> Decision {
        if client.isRoot || !request.hasOverrides { return .allowed }
        return .denied("permission denied: only root may give -b, -d, -r, -t, -m, -i, -n, -L or -B")
    }
}
