import Glibc
import VMDSystem
import VMDControl
import Imsg
import Virtio
import VirtioDevices

// A device process that dies is started again, the guest none the wiser:
//
// - The VM process keeps every descriptor it gave the device (channels,
//   guest memory, backends, queue eventfds, the state region, and whatever
//   is added to `startDevice` later) and the new instance gets exactly the
//   same list.
// - It is sandboxed by then (no execve), so a helper started before the
//   sandbox, the device spawner (`vmd -P device-spawner`, root, the VM
//   process's filter from before its sandbox), holds copies of those
//   descriptors and execs the device. It clones with CLONE_PARENT: the
//   device is still the VM process's child, reaped and logged here, and
//   its parent-death signal follows the VM process. The spawner itself is
//   the VM process's ordinary child (posix_spawn), as root: the VM process
//   (as _vmd) cannot signal it, so it ends on end of file of its channel,
//   which finish() closes before reaping it with the devices.
// - The device's state region (Virtio's DeviceStateRegion: registers after
//   every access, and per queue the inflight records in vhost-user's
//   layout) lets the new instance restore the transport and serve again
//   what its predecessor had taken and never returned.
// - Register writes its predecessor never read are carried over; a vCPU
//   waiting for a read asks the new instance again (replies are tagged).
// - Crash loops are bounded: a device whose restarted instances die
//   `crashLoopLimit` times in a row without completing a request stops
//   the VM.

/// A register access met a device that died: it is made again.
struct DeviceRestarting: Error {}

extension VirtioProxy {
    /// A read meets at most this many device deaths before it gives up.
    static let accessAttempts = 3

    var isRestarting: Bool { restartLock.locked { restarting } }

    func restarted(since generation: Int) -> Bool { restartLock.locked { restartGeneration != generation } }

    /// Waits (bounded, and only until the VM stops) while the device
    /// restarts; returns the restart generation to compare with later.
    func awaitRestart() -> Int {
        let deadline = Clock.now() + Self.registerTimeout
        while true {
            let (busy, generation) = restartLock.locked { (restarting, restartGeneration) }
            if !busy || Clock.now() >= deadline { return generation }
            var p = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 2) > 0 { return generation }
        }
    }

    func setRestarting(_ on: Bool) {
        restartLock.locked {
            if restarting && !on { restartGeneration += 1 }
            restarting = on
        }
    }
}

/// What the VM process keeps about one device to start it again.
final class DeviceSlot {
    let setup: DeviceSetup
    /// The device's descriptors, in the order it gets them (fd 3 up).
    let descriptors: [Int32]
    let arguments: [String]
    let proxy: VirtioProxy
    let syncTheirs: Int32
    let asyncTheirs: Int32
    let region: DeviceStateRegion
    var restarts = 0
    var fruitlessDeaths = 0
    var usedAtStart: [UInt16]

    var name: String { setup.name }

    init(setup: DeviceSetup, descriptors: [Int32], arguments: [String], proxy: VirtioProxy,
         syncTheirs: Int32, asyncTheirs: Int32, region: DeviceStateRegion) {
        self.setup = setup; self.descriptors = descriptors; self.arguments = arguments
        self.proxy = proxy; self.syncTheirs = syncTheirs; self.asyncTheirs = asyncTheirs
        self.region = region
        usedAtStart = region.recordedUsedIndices
    }
}

extension VMProcess {
    /// Restarted instances that die this many times in a row without
    /// completing a request stop the VM.
    static let crashLoopLimit = 5

    /// The state region for a new device: created, mapped here too (the
    /// VM process reads the trackers' used indices to see progress).
    func makeStateRegion(queueSizes: [UInt16], name: String) throws -> (Int32, DeviceStateRegion) {
        let size = DeviceStateRegion.size(queueMaxSizes: queueSizes)
        let fd = try Memfd.create(name: "\(name) state", size: size)
        let base = try SharedMemory.map(fd: fd, size: size, what: "\(name) state")
        return (fd, DeviceStateRegion(base: base, queueMaxSizes: queueSizes))
    }

    /// The spawner, with every slot's descriptors (before the sandbox).
    func startSpawner() {
        do {
            spawner = try SpawnerClient.start(slots: slots, options: options)
        } catch {
            Log.warning("cannot start the device spawner: \(error); a device that dies stops the VM")
        }
    }

    /// A child ended: a device is restarted (or the VM stopped), the
    /// spawner's end is logged.
    func childExited(_ pid: pid_t, _ status: ExitStatus) {
        if let s = spawner, s.pid == pid {
            spawner = nil
            if !finishing { Log.error("device spawner \(status): a device that dies now stops the VM") }
            return
        }
        let name = devicePIDs.removeValue(forKey: pid) ?? "process \(pid)"
        if finishing { return }
        guard let slot = slots.first(where: { $0.proxy.pid == pid }) else {
            let why = "\(name) \(status)"
            Log.error("\(why): stopping the VM")
            finish(.failed, why)
        }
        restart(slot, after: status)
    }

    func restart(_ slot: DeviceSlot, after first: ExitStatus) {
        var status = first
        while true {
            let why = "\(slot.name) process \(status)"
            let progressed = slot.region.recordedUsedIndices != slot.usedAtStart
            slot.fruitlessDeaths = progressed || slot.restarts == 0 ? 0 : slot.fruitlessDeaths + 1
            guard let spawner else {
                Log.error("\(why): stopping the VM (no device spawner to restart it)")
                finish(.failed, why)
            }
            guard slot.fruitlessDeaths < Self.crashLoopLimit else {
                Log.error("\(why): stopping the VM: it died \(slot.fruitlessDeaths) times in a row after a restart without completing a request")
                finish(.failed, why)
            }
            slot.restarts += 1
            Log.warning("\(why): restarting it (restart \(slot.restarts))")
            vmm.send(type: MessageType.vmmDeviceRestarted.rawValue,
                     data: DeviceRestartReport(device: slot.name, restarts: UInt32(slot.restarts)).encoded())
            slot.usedAtStart = slot.region.recordedUsedIndices
            guard let died = respawn(slot, spawner: spawner) else { return }
            status = died
        }
    }

    /// One new instance: nil once it is ready, or how it ended.
    private func respawn(_ slot: DeviceSlot, spawner: SpawnerClient) -> ExitStatus? {
        let proxy = slot.proxy
        proxy.setRestarting(true)
        let asyncPending = drain(slot.asyncTheirs)
        return proxy.lock.locked { () -> ExitStatus? in
            // Everything the dead instance never read: writes go to the new
            // one after its set-up; reads are asked again by their vCPUs.
            // Taken under the lock: a vCPU that held it while the device died
            // may have sent its access after a look without the lock, and
            // the new instance must find its set-up first.
            let writes = drain(slot.syncTheirs).filter {
                MessageType(rawValue: $0.type) == .devopMsg && ViodevMsg(bytes: $0.data)?.kind == .ioWrite
            }
            // Replies the dead instance left unread here are dropped with
            // the old buffer; vCPUs now wait for the lock.
            proxy.sync = ImsgBuffer(fd: proxy.sync.fd)
            proxy.setRestarting(false)
            let deadline = Clock.now() + VirtioProxy.registerTimeout
            do {
                try proxy.sync.compose(Imsg(type: MessageType.devopVMInfo.rawValue, data: slot.setup.encoded()))
                for w in writes { try proxy.sync.compose(w) }
            } catch {
                Log.error("\(slot.name): cannot queue its set-up: \(error)")
                return .exited(1)
            }
            let pid: pid_t
            do {
                pid = try spawner.respawn(slot)
            } catch {
                Log.error("\(slot.name): cannot start it again: \(error)")
                return .exited(1)
            }
            devicePIDs[pid] = slot.name
            proxy.pid = pid
            do {
                while try !proxy.sync.flush() {
                    if Clock.now() >= deadline { return killAndReap(pid, slot) }
                    var p = pollfd(fd: proxy.sync.fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&p, 1, 10)
                }
            } catch {
                Log.error("\(slot.name): cannot send its set-up: \(error)")
                return killAndReap(pid, slot)
            }
            while true {
                if let status = reap(pid) { return status }
                if Clock.now() >= deadline {
                    Log.error("\(slot.name): not ready \(Int(VirtioProxy.registerTimeout)) s after a restart")
                    return killAndReap(pid, slot)
                }
                switch proxy.receive(until: min(deadline, Clock.now() + 0.05)) {
                case .message(let m):
                    if let f = m.fd { FD.close(f) }
                    if ViodevMsg(bytes: m.data)?.kind == .ready {
                        // A paused VM's devices wait too (the old instance
                        // may have taken the pause and died).
                        if vm.isPaused { proxy.async?.send(type: MessageType.vmmPauseVM.rawValue) }
                        for m in asyncPending { proxy.async?.send(type: m.type, data: m.data) }
                        return nil
                    }
                case .timedOut:
                    continue
                case .stopped:
                    return .exited(0)
                case .failed(let e):
                    Log.error("\(slot.name): sync channel after a restart: \(e)")
                    return killAndReap(pid, slot)
                }
            }
        }
    }

    private func reap(_ pid: pid_t) -> ExitStatus? {
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        devicePIDs[pid] = nil
        return ExitStatus(waitStatus: status)
    }

    private func killAndReap(_ pid: pid_t, _ slot: DeviceSlot) -> ExitStatus {
        Spawn.signal(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        devicePIDs[pid] = nil
        return ExitStatus(waitStatus: status)
    }

    /// Whole messages waiting on the device's end of a channel (no device
    /// is reading it: its process is dead).
    private func drain(_ fd: Int32) -> [Imsg] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        var messages: [Imsg] = []
        var at = 0
        while case .message(let h, let payload) = ImsgFraming.next(in: bytes, from: at) {
            messages.append(Imsg(type: h.type, data: Array(bytes[payload])))
            at += h.length
        }
        return messages
    }
}

/// The VM process's end of the device spawner.
final class SpawnerClient {
    let pid: pid_t
    let channel: ImsgBuffer
    let index: [ObjectIdentifier: UInt32]

    init(pid: pid_t, channel: ImsgBuffer, index: [ObjectIdentifier: UInt32]) {
        self.pid = pid; self.channel = channel; self.index = index
    }

    /// Starts the spawner with copies of every slot's descriptors and tells
    /// it each device's arguments and descriptor list.
    static func start(slots: [DeviceSlot], options: DaemonOptions) throws -> SpawnerClient {
        let (mine, theirs) = try FD.socketPair()
        defer { FD.close(theirs) }
        var fds: [Int32] = [theirs]
        var w = WireWriter()
        w.u32(UInt32(slots.count))
        var index: [ObjectIdentifier: UInt32] = [:]
        for (i, slot) in slots.enumerated() {
            index[ObjectIdentifier(slot)] = UInt32(i)
            w.u32(UInt32(slot.arguments.count))
            for a in slot.arguments { w.string(a) }
            w.u32(UInt32(slot.descriptors.count))
            for fd in slot.descriptors {
                w.i32(DeviceDescriptors.firstChildDescriptor + Int32(fds.count))
                fds.append(fd)
            }
        }
        var args = ["vmd", "-P", "device-spawner", slots.first?.setup.vmName ?? "?"]
        if options.foreground { args.append("-d") }
        if options.verbosity > 0 { args.append("-" + String(repeating: "v", count: options.verbosity)) }
        let pid = try Spawn.spawnSelf(arguments: args, descriptors: fds)
        let channel = ImsgBuffer(fd: mine)
        try channel.sendBlocking(Imsg(type: MessageType.devopVMInfo.rawValue, data: w.bytes))
        return SpawnerClient(pid: pid, channel: channel, index: index)
    }

    /// Ends the spawner: it exits when its channel reads end of file (the
    /// VM process, no longer root, cannot signal it).
    func close() {
        FD.close(channel.fd)
    }

    /// A new instance of `slot`'s device; its pid.
    func respawn(_ slot: DeviceSlot) throws -> pid_t {
        guard let i = index[ObjectIdentifier(slot)] else { throw SystemError("unknown device", code: EINVAL) }
        var w = WireWriter()
        w.u32(i)
        try channel.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue, data: w.bytes))
        let reply = try channel.readMessage()
        var r = WireReader(reply.data)
        let value = try r.i32()
        guard value > 0 else { throw SystemError("device spawner", code: -value) }
        return value
    }
}

/// `vmd: vm NAME spawner`: execs device processes again for the VM
/// process, with the descriptors it was given at start. Single-threaded,
/// blocking: one request, one clone, one reply.
enum DeviceSpawnerProcess {
    static let channelDescriptor: Int32 = 3

    static func main(_ args: [String]) -> Never {
        let verbosity = args.filter { $0.hasPrefix("-v") }.map { $0.count - 1 }.max() ?? 0
        let vmName = args.first ?? "?"
        Log.setup(foreground: args.contains("-d"), verbosity: verbosity, process: "spawner")
        becomeChild()
        let channel = ImsgBuffer(fd: channelDescriptor)
        var devices: [(arguments: [String], descriptors: [Int32])] = []
        do {
            let m = try channel.readMessage()
            var r = WireReader(m.data)
            let n = try r.u32()
            guard n <= 64 else { throw WireReader.Truncated() }
            for _ in 0..<n {
                let na = try r.u32()
                guard na <= 16 else { throw WireReader.Truncated() }
                let a = try (0..<na).map { _ in try r.string(max: 256) }
                let nf = try r.u32()
                guard nf <= UInt32(DeviceDescriptors.maxEntries) else { throw WireReader.Truncated() }
                let f = try (0..<nf).map { _ in try r.i32() }
                // Only this binary's device role: `vmd -X NAME [-d] [-v...]`.
                guard a.count >= 3, a[0] == "vmd", a[1] == "-X" else { throw WireReader.Truncated() }
                devices.append((a, f))
            }
        } catch {
            Log.error("no device list from the VM process: \(error)")
            exit(1)
        }
        nameThisProcess("device spawner for vm \(vmName)")
        while true {
            let m: Imsg
            do { m = try channel.readMessage() } catch { exit(0) }
            var r = WireReader(m.data)
            var w = WireWriter()
            if let i = try? r.u32(), Int(i) < devices.count {
                do {
                    w.i32(try Spawn.spawnSelfAsSibling(arguments: devices[Int(i)].arguments,
                                                      descriptors: devices[Int(i)].descriptors))
                } catch let e as SystemError {
                    w.i32(-e.code)
                } catch {
                    w.i32(-EIO)
                }
            } else {
                w.i32(-EINVAL)
            }
            do { try channel.sendBlocking(Imsg(type: MessageType.devopMsg.rawValue, data: w.bytes)) } catch { exit(0) }
        }
    }
}
