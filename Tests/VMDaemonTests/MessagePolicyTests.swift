import XCTest
@testable import VMDaemon
import VMDControl

/// Issue 9: who may send what, and control's connection limits.
final class MessagePolicyTests: XCTestCase {
    func testClientsCanSendOnlyRequests() {
        let allowed = MessagePolicy.allowed(.clientToControl)
        for t in [MessageType.ctlClientConnected, .ctlClientClosed, .vmmStartVM, .vmmStartVMFD, .vmmStopVM,
                  .vmmVMStarted, .vmmVMExited, .privOpenTap, .privTapOpened, .devopMsg, .devopVMInfo,
                  .vmmciCommand, .ctlOK, .ctlFail, .vmdInfoVMData, .ping, .pong, .none] {
            XCTAssertFalse(allowed.contains(t), "\(t)")
        }
        XCTAssertFalse(MessagePolicy.permits(4242, on: .clientToControl))
        XCTAssertTrue(MessagePolicy.permits(MessageType.vmdGetInfoVMRequest.rawValue, on: .clientToControl))
        XCTAssertTrue(MessagePolicy.unprivilegedRequests.isSubset(of: MessagePolicy.clientRequests))
        XCTAssertFalse(MessagePolicy.unprivilegedRequests.contains(.ctlReload))
        XCTAssertFalse(MessagePolicy.unprivilegedRequests.contains(.ctlReset))
        XCTAssertFalse(MessagePolicy.unprivilegedRequests.contains(.ctlVerbose))
    }

    func testOnlyControlSendsBookkeepingAndEveryRouteIsNarrow() {
        for r in MessageRoute.allCases where r != .controlToParent {
            XCTAssertTrue(MessagePolicy.allowed(r).isDisjoint(with: MessagePolicy.controlBookkeeping), "\(r)")
        }
        XCTAssertTrue(MessagePolicy.controlBookkeeping.isSubset(of: MessagePolicy.allowed(.controlToParent)))
        // A VM (guest-facing) cannot start VMs or open taps through vmm.
        XCTAssertFalse(MessagePolicy.allowed(.vmToVMM).contains(.vmmStartVM))
        XCTAssertFalse(MessagePolicy.allowed(.vmmToParent).contains(.privOpenTap))
        XCTAssertFalse(MessagePolicy.allowed(.deviceToVMAsync).contains(.vmmPauseVM))
        XCTAssertEqual(MessagePolicy.allowed(.parentToControl).subtracting([.ping]), MessagePolicy.clientReplies)
        XCTAssertTrue(MessagePolicy.finalReplies.isSubset(of: MessagePolicy.clientReplies))
        for r in MessageRoute.allCases { XCTAssertFalse(MessagePolicy.allowed(r).contains(.none), "\(r)") }
    }

    /// A vhost-user backend process may only tell its parent about its
    /// frontend; clients only read backend information.
    func testVhostUserBackendRouteIsNarrow() {
        XCTAssertEqual(MessagePolicy.allowed(.vhostUserToParent), [.vhostUserFrontend])
        XCTAssertTrue(MessagePolicy.clientReplies.contains(.vmdInfoBackendData))
        XCTAssertFalse(MessagePolicy.allowed(.clientToControl).contains(.vmdInfoBackendData))
        XCTAssertFalse(MessagePolicy.allowed(.clientToControl).contains(.vhostUserFrontend))
        XCTAssertEqual(try FrontendReport(decoding: FrontendReport(pid: 77).encoded()), FrontendReport(pid: 77))
        XCTAssertThrowsError(try FrontendReport(decoding: [1, 2]))
        // Only the parent starts and stops backends; a VM cannot.
        for t in [MessageType.vmmStartBackend, .vmmStartBackendFD, .vmmStartBackendEnd, .vmmStopBackend] {
            XCTAssertTrue(MessagePolicy.allowed(.parentToVMM).contains(t), "\(t)")
            XCTAssertFalse(MessagePolicy.allowed(.vmToVMM).contains(t), "\(t)")
            XCTAssertFalse(MessagePolicy.allowed(.vhostUserToParent).contains(t), "\(t)")
        }
        XCTAssertTrue(MessagePolicy.allowed(.vmmToParent).isSuperset(of: [.vmmBackendStarted, .vmmBackendExited]))
        XCTAssertFalse(MessagePolicy.allowed(.vmToVMM).contains(.vmmBackendExited))
        // vmm builds the command line itself: only `vmd -P vhost-user`.
        let launch = BackendLaunch(name: "disk0", kind: "blk", readOnly: true, mac: "", hasFile: true)
        XCTAssertEqual(try BackendLaunch(decoding: launch.encoded()), launch)
        XCTAssertEqual(launch.arguments(foreground: false, verbosity: 0),
                       ["vmd", "-P", "vhost-user", "-t", "blk", "-N", "disk0", "-L", "3", "-C", "4", "-B", "5", "-r"])
        XCTAssertEqual(launch.descriptorCount, 3)
        XCTAssertThrowsError(try BackendLaunch(decoding: Array(launch.encoded().dropLast())))
    }

    func testConnectionLimitsKeepRootIn() {
        let l = ControlLimits()
        XCTAssertNil(l.refusal(uid: 1000, total: 0, sameUID: 0))
        XCTAssertNotNil(l.refusal(uid: 1000, total: 10, sameUID: l.maxPerUID))
        XCTAssertNotNil(l.refusal(uid: 1001, total: l.maxClients - l.reservedForRoot, sameUID: 0))
        XCTAssertNil(l.refusal(uid: 0, total: l.maxClients - 1, sameUID: 0))
        XCTAssertNotNil(l.refusal(uid: 0, total: l.maxClients, sameUID: 0))
        XCTAssertLessThan(l.maxPerUID, l.maxClients - l.reservedForRoot)
    }

    /// The VM process names its console; only a pty name is passed on.
    func testOnlyPTYNamesAreConsoles() {
        XCTAssertTrue(VMTable.isPTY("/dev/pts/0"))
        XCTAssertTrue(VMTable.isPTY("/dev/pts/123"))
        for bad in ["", "/dev/pts/", "/etc/shadow", "/dev/pts/../../etc/shadow", "/dev/pts/1/x", "/dev/tty1",
                    "/dev/pts/12345678901"] {
            XCTAssertFalse(VMTable.isPTY(bad), bad)
        }
    }
}
