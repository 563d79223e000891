// The contract between a transport (register state, interrupts) and a
// device (what the queues mean). Transports drive devices; devices reach
// their queues and raise interrupts only through their host.
//
// How a device process drives it (one thread, one event loop):
//   1. map guest memory: `MappedGuestMemory.map(fd:mappingSize:regions:)`
//   2. make the device (`VioBlk`, `VioNet`, `VioRnd`, `VioSCSI`, `VMMCI`) and
//      wrap it: `VirtioPCITransport(device:type:memory:interruptSink:)`, or
//      `VirtioLegacyPCITransport` for vmmci, or `VirtioMMIOTransport` in a
//      VM with the microVM shape. The transport calls
//      `device.attach(to:)` itself.
//   3. for each viodev_msg from the sync channel: `transport.handle(msg)`;
//      send back the reply it returns (IO_READ). Queue notifies arrive as
//      IO_WRITEs and are served inside `handle`.
//   4. interrupts: set `sharedInterrupts` (SharedInterrupts.swift) on the
//      transport; the ISR then lives in memory shared with the VM process
//      and interrupts are eventfd writes (KVM irqfds, INTx or MSI-X). Without
//      it (tests), `InterruptSink.setInterrupt(_:)` is told every change of
//      the INTx level.
//   5. vionet only: call `backendReadable()` when the tap is readable; stop
//      watching the tap while it returns false, resume on
//      `onInputWanted`.

/// Level-triggered interrupt line of one device (INTx) when the transport
/// has no shared interrupt state: in tests it records the level.
public protocol InterruptSink: AnyObject {
    func setInterrupt(_ asserted: Bool)
}

/// What a transport offers the device it carries.
public protocol VirtioDeviceHost: AnyObject {
    var memory: GuestMemory { get }
    /// Features the driver accepted (valid once FEATURES_OK is set).
    var negotiatedFeatures: UInt64 { get }
    /// DRIVER_OK is set and the device is not waiting for a reset.
    var isDriverReady: Bool { get }
    /// Run `body` on queue `index` if it is live. A thrown error puts the
    /// device into DEVICE_NEEDS_RESET; buffers returned on the used ring
    /// raise the queue interrupt if the driver wants one.
    func withQueue(_ index: Int, _ body: (Virtqueue) throws -> Void)
    /// Device configuration changed: bump config_generation, raise the
    /// configuration-change interrupt.
    func configurationChanged()
}

/// A virtio device's logic, independent of the transport that carries it.
public protocol VirtioDevice: AnyObject {
    /// For log lines: "vioblk0", "vionet1", ...
    var name: String { get }
    /// Device feature bits the device offers; the transport adds the ring
    /// and version features it implements itself.
    var deviceFeatures: UInt64 { get }
    /// One entry per queue: the largest size the driver may choose.
    var queueMaxSizes: [UInt16] { get }
    /// Called once by the transport that carries the device.
    func attach(to host: VirtioDeviceHost)
    /// Little-endian device configuration space access. Reads past the end
    /// return 0, writes to read-only fields are ignored.
    func readConfig(offset: Int, size: Int) -> UInt32
    func writeConfig(offset: Int, size: Int, value: UInt32)
    /// The driver set DRIVER_OK with these features.
    func driverReady(features: UInt64)
    /// The driver notified queue `index`. Throw on a malformed ring only;
    /// a bad request gets an error status in the request itself.
    func process(queue: Virtqueue, index: Int) throws
    /// The driver reset the device: drop all state the driver set up.
    func reset()
    /// Whether buffers the driver adds to queue `index` are work right now.
    /// A device process that polls serves a queue when its available index
    /// moves; a queue where the driver parks buffers for input that has not
    /// come yet (vionet's receive queue) says no unless input is waiting
    /// for them, so the poll does not chase every buffer the guest gives
    /// back one at a time.
    func wantsBuffers(queue index: Int) -> Bool
}

extension VirtioDevice {
    public func writeConfig(offset: Int, size: Int, value: UInt32) {}
    public func driverReady(features: UInt64) {}
    public func wantsBuffers(queue index: Int) -> Bool { true }
}

/// Read `size` (1, 2 or 4) bytes at `offset` of a little-endian byte image;
/// bytes past the end read as 0. Devices use it for their config space.
public func readLittleEndian(_ bytes: [UInt8], offset: Int, size: Int) -> UInt32 {
    guard offset >= 0, size > 0, size <= 4 else { return 0 }
    var value: UInt32 = 0
    for i in 0..<size {
        let (position, overflow) = offset.addingReportingOverflow(i)
        if !overflow, position < bytes.count {
            value |= UInt32(bytes[position]) << (8 * UInt32(i))
        }
    }
    return value
}

/// Append `value` to `bytes` in little-endian order.
public func appendLittleEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
    withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
}
