/// Every imsg type the daemon's processes exchange, in one place, like
/// vmd.h's `enum imsg_type`. Payload layouts are documented at each case and
/// size-checked by the receiver before use.
public enum MessageType: UInt32, CaseIterable {
    case none = 0

    // vmctl <-> control <-> parent (payloads: ControlMessages.swift)
    case ctlOK = 1                   // text: optional message
    case ctlFail                     // u32 errno + text
    case ctlVerbose                  // u32 level
    case ctlReload                   // text: optional path (vmctl load)
    case ctlReset                    // u32 what
    case vmdStartVMRequest           // StartRequest
    case vmdStartVMResponse          // VMInfo
    case vmdStopVMRequest            // StopRequest
    case vmdTerminateVMResponse      // text
    case vmdGetInfoVMRequest         // u32 id (0 = all)
    case vmdInfoVMData               // VMInfo
    case vmdInfoVMEnd
    case vmdPauseVM                  // u32 id or name
    case vmdUnpauseVM
    case vmdWaitVM
    case vmdConsoleRequest           // name -> replay of the console ring
    case vmdConsoleData
    case ctlClientConnected          // control -> parent: u32 uid, u32 gid (peerID = client)
    case ctlClientClosed             // control -> parent (peerID = client)

    // parent <-> vmm <-> vm
    case vmmStartVM = 100            // VMLaunch (+ fds in following messages)
    case vmmStartVMFD                // one descriptor (kernel, disk, tap, ...)
    case vmmStartVMEnd
    case vmmVMStarted                // u32 vmid, i32 pid, text tty
    case vmmVMExited                 // u32 vmid, u32 reason, text
    case vmmStopVM                   // u32 vmid, u32 flags
    case vmmPauseVM
    case vmmUnpauseVM
    case vmmPaused
    case vmmUnpaused
    case vmmConsoleReplay            // u32 vmid -> bytes

    // priv
    case privOpenTap = 200           // text ifname -> fd
    case privTapOpened

    // VM process <-> device process (viodev_msg inside)
    case devopMsg = 300
    case devopVMInfo                 // device start-up parameters (DeviceSetup)
    case vmmciCommand                // VM -> vmmci device: u32 command
    case vmmciAck                    // vmmci device -> VM: u32 command the guest acknowledged

    // test hooks
    case ping = 900
    case pong
}
