/// Every imsg type the daemon's processes exchange, in one place, like
/// vmd.h's `enum imsg_type`. Each payload is a type with one encoder and one
/// decoder (named at each case) that checks sizes before use; which peer may
/// send which type is MessagePolicy.swift.
public enum MessageType: UInt32, CaseIterable {
    case none = 0

    // vmctl <-> control <-> parent (payloads: VMDControl/ControlProtocol.swift)
    case ctlOK = 1                   // UTF-8 text: optional message
    case ctlFail                     // Failure
    case ctlVerbose                  // VerbosityRequest
    case ctlReload                   // UTF-8 text: optional path (vmctl load)
    case ctlReset                    // ResetRequest
    case vmdStartVMRequest           // StartRequest
    case vmdStartVMResponse          // VMInfo
    case vmdStopVMRequest            // VMRequest
    case vmdTerminateVMResponse      // UTF-8 text
    case vmdGetInfoVMRequest         // InfoRequest
    case vmdInfoVMData               // VMInfo
    case vmdInfoVMEnd                // empty
    case vmdPauseVM                  // VMRequest
    case vmdUnpauseVM                // VMRequest
    case vmdWaitVM                   // VMRequest
    case vmdConsoleRequest           // VMRequest -> VMInfo, then the console ring in vmdConsoleData chunks
    case vmdConsoleData
    case ctlClientConnected          // control -> parent only: ClientConnected (peerID = client)
    case ctlClientClosed             // control -> parent only: empty (peerID = client)
    case vmdInfoBackendData          // BackendInfo: one vhost-user backend, before vmdInfoVMEnd

    // parent <-> vmm <-> vm (payloads: VMDaemon/InternalMessages.swift,
    // LaunchSpec.swift; the imsg peerID is the vmid)
    case vmmStartVM = 100            // LaunchSpec (the descriptors follow)
    case vmmStartVMFD                // one descriptor the LaunchSpec names by index
    case vmmStartVMEnd               // empty
    case vmmVMStarted                // VMStartedReport
    case vmmVMExited                 // VMExitReport
    case vmmStopVM                   // VMStopCommand
    case vmmPauseVM                  // empty
    case vmmUnpauseVM                // empty
    case vmmPaused                   // empty
    case vmmUnpaused                 // empty
    case vmmConsoleReplay            // empty -> the console ring's bytes
    // vhost-user backends (the imsg peerID is the parent's launch id)
    case vmmStartBackend             // BackendLaunch (the descriptors follow)
    case vmmStartBackendFD           // one descriptor: listening socket, status channel, then the image or tap
    case vmmStartBackendEnd          // empty
    case vmmBackendStarted           // FrontendReport-shaped: the backend's pid
    case vmmBackendExited            // UTF-8 text: how it ended
    case vmmStopBackend              // empty
    case vmmDeviceRestarted          // VM -> vmm -> parent: DeviceRestartReport

    // priv
    case privOpenTap = 200           // UTF-8 text: the tap's name, "" for the kernel's choice
    case privTapOpened               // the tap's name with its fd, or the error text without one

    // vhost-user backend process -> parent
    case vhostUserFrontend = 250     // FrontendReport: a frontend connected (its pid) or left (0)

    // VM process <-> device process (viodev_msg inside)
    case devopMsg = 300              // ViodevMsg
    case devopVMInfo                 // DeviceSetup
    case vmmciCommand                // VM -> vmmci device: VMMCIMessage
    case vmmciAck                    // vmmci device -> VM (-> vmm): VMMCIMessage

    // test hooks
    case ping = 900
    case pong
}
