/// Which message types each process accepts from each peer, in one place.
/// Every imsg channel between the daemon's processes is given the list for
/// its direction (`ImsgChannel.allowedTypes`); anything else is logged and
/// dropped (and a control client that sends it is disconnected). A process
/// trusts a peer with exactly the types that peer has a reason to send, so
/// a hostile peer can at most send those: a control client cannot forge
/// `ctlClientConnected` (its credentials), a VM process cannot ask vmm or
/// the parent to start VMs, a device process cannot pause its VM.
public enum MessageRoute: String, CaseIterable, Sendable {
    /// vmctl -> `vmd: control` (what control relays to the parent).
    case clientToControl
    /// `vmd: control` -> parent: relayed requests plus control's own
    /// connection bookkeeping (peer credentials, closes).
    case controlToParent
    /// parent -> `vmd: control`: replies, relayed to the client they name.
    case parentToControl
    case parentToVMM, vmmToParent
    case parentToPriv, privToParent
    /// `vmd: vmm` <-> `vmd: vm NAME` (after the start message).
    case vmmToVM, vmToVMM
    /// VM process <-> device process, asynchronous channel.
    case vmToDeviceAsync, deviceToVMAsync
    /// VM process <-> device process, synchronous register channel.
    case vmToDeviceSync, deviceToVMSync
    /// A vhost-user backend process vmd manages -> the parent.
    case vhostUserToParent
}

public enum MessagePolicy {
    /// What vmctl may ask; the parent checks per request what the client's
    /// uid may do (root-only requests, VM ownership).
    public static let clientRequests: Set<MessageType> = [
        .ctlVerbose, .ctlReload, .ctlReset,
        .vmdStartVMRequest, .vmdStopVMRequest, .vmdGetInfoVMRequest,
        .vmdPauseVM, .vmdUnpauseVM, .vmdWaitVM, .vmdConsoleRequest,
    ]

    /// Requests any uid may send (the VM-level checks still apply); the
    /// rest of `clientRequests` is root's.
    public static let unprivilegedRequests: Set<MessageType> = [
        .vmdStartVMRequest, .vmdStopVMRequest, .vmdWaitVM, .vmdGetInfoVMRequest,
        .vmdPauseVM, .vmdUnpauseVM, .vmdConsoleRequest,
    ]

    /// What the parent says to clients (through control).
    public static let clientReplies: Set<MessageType> = [
        .ctlOK, .ctlFail, .vmdStartVMResponse, .vmdTerminateVMResponse,
        .vmdInfoVMData, .vmdInfoBackendData, .vmdInfoVMEnd, .vmdConsoleData,
    ]

    /// Connection bookkeeping only `vmd: control` itself generates.
    public static let controlBookkeeping: Set<MessageType> = [.ctlClientConnected, .ctlClientClosed]

    public static func allowed(_ route: MessageRoute) -> Set<MessageType> {
        switch route {
        case .clientToControl: return clientRequests
        case .controlToParent: return clientRequests.union(controlBookkeeping).union([.pong])
        case .parentToControl: return clientReplies.union([.ping])
        case .parentToVMM:
            return [.vmmStartVM, .vmmStartVMFD, .vmmStartVMEnd, .vmmStopVM, .vmmPauseVM,
                    .vmmUnpauseVM, .vmmConsoleReplay, .ping,
                    .vmmStartBackend, .vmmStartBackendFD, .vmmStartBackendEnd, .vmmStopBackend]
        case .vmmToParent:
            return [.vmmVMStarted, .vmmVMExited, .vmmPaused, .vmmUnpaused, .vmmConsoleReplay, .pong,
                    .vmmBackendStarted, .vmmBackendExited, .vmmDeviceRestarted]
        case .parentToPriv: return [.privOpenTap, .ping]
        case .privToParent: return [.privTapOpened, .pong]
        case .vmmToVM: return [.vmmStopVM, .vmmPauseVM, .vmmUnpauseVM, .vmmConsoleReplay]
        // vmmciAck: the guest acknowledged a graceful stop; vmm extends its deadline.
        case .vmToVMM: return [.vmmVMStarted, .vmmVMExited, .vmmPaused, .vmmUnpaused, .vmmConsoleReplay, .vmmciAck,
                               .vmmDeviceRestarted]
        case .vmToDeviceAsync: return [.vmmPauseVM, .vmmUnpauseVM, .vmmciCommand]
        case .deviceToVMAsync: return [.devopMsg, .vmmciAck]
        case .vmToDeviceSync: return [.devopVMInfo, .devopMsg]
        case .deviceToVMSync: return [.devopMsg]
        case .vhostUserToParent: return [.vhostUserFrontend]
        }
    }

    /// `allowed(route)` as raw imsg types, for `ImsgChannel.allowedTypes`.
    public static func rawTypes(_ route: MessageRoute) -> Set<UInt32> {
        Set(allowed(route).map(\.rawValue))
    }

    /// Whether `raw` may arrive on `route`.
    /// Checked for every relayed message (one per VM of a status reply):
    /// from sets built once, not a union built per call.
    public static func permits(_ raw: UInt32, on route: MessageRoute) -> Bool {
        permittedRaw[route]?.contains(raw) ?? false
    }

    private static let permittedRaw: [MessageRoute: Set<UInt32>] =
        Dictionary(uniqueKeysWithValues: MessageRoute.allCases.map { ($0, rawTypes($0)) })
}

extension MessagePolicy {
    /// The reply that ends the answer to one request (status ends with
    /// vmdInfoVMEnd, console replay too; the rest with one message).
    public static let finalReplies: Set<MessageType> = [
        .ctlOK, .ctlFail, .vmdStartVMResponse, .vmdTerminateVMResponse, .vmdInfoVMEnd,
    ]

    /// `finalReplies.contains(t)` and `clientReplies.contains(t)` without
    /// hashing, for control's relay of every reply (one per VM of a status
    /// answer); MessagePolicyTests checks that they agree with the sets.
    public static func isFinalReply(_ t: MessageType) -> Bool {
        switch t {
        case .ctlOK, .ctlFail, .vmdStartVMResponse, .vmdTerminateVMResponse, .vmdInfoVMEnd: return true
        default: return false
        }
    }

    public static func isClientReply(_ t: MessageType) -> Bool {
        switch t {
        case .ctlOK, .ctlFail, .vmdStartVMResponse, .vmdTerminateVMResponse,
             .vmdInfoVMData, .vmdInfoBackendData, .vmdInfoVMEnd, .vmdConsoleData: return true
        default: return false
        }
    }
}

/// `vmd: control`'s limits on its clients: how many connections (root has
/// reserved slots and other uids a share each, so one user cannot lock
/// root out), how many requests each may have unanswered, how many reply
/// bytes may wait for it before it is no longer read and then dropped.
public struct ControlLimits: Sendable {
    public var maxClients = 128
    /// Slots only uid 0 may use.
    public var reservedForRoot = 16
    /// Connections one non-root uid may hold.
    public var maxPerUID = 32
    public var maxInFlight = 16
    public var pauseReadingAbove = 256 << 10
    public var maxQueuedBytes = 4 << 20

    public init() {}

    /// Why a new connection from `uid` is refused, or nil to accept it,
    /// given `total` connections now and `sameUID` of them from `uid`.
    public func refusal(uid: UInt32, total: Int, sameUID: Int) -> String? {
        if total >= maxClients { return "too many control connections (\(maxClients))" }
        guard uid != 0 else { return nil }
        if total >= maxClients - reservedForRoot {
            return "the last \(reservedForRoot) control connections are reserved for root"
        }
        if sameUID >= maxPerUID { return "uid \(uid) already holds \(maxPerUID) control connections" }
        return nil
    }
}
