// virtio-scsi (spec 5.6) presenting one read-only CD-ROM (target 0, LUN 0)
// backed by an ISO image, with the command set of vmd's vioscsi.c. Three
// queues: control (task management answered at once: every command is
// finished before the next is read), event (buffers are kept, no events
// are sent), request.
import Glibc
import Virtio

public enum SCSIOpcode {
    public static let testUnitReady: UInt8 = 0x00
    public static let requestSense: UInt8 = 0x03
    public static let inquiry: UInt8 = 0x12
    public static let modeSense6: UInt8 = 0x1a
    public static let startStopUnit: UInt8 = 0x1b
    public static let preventAllowMediumRemoval: UInt8 = 0x1e
    public static let readCapacity10: UInt8 = 0x25
    public static let read10: UInt8 = 0x28
    public static let readTOC: UInt8 = 0x43
    public static let getConfiguration: UInt8 = 0x46
    public static let getEventStatusNotification: UInt8 = 0x4a
    public static let readDiscInformation: UInt8 = 0x51
    public static let modeSense10: UInt8 = 0x5a
    public static let reportLUNs: UInt8 = 0xa0
    public static let read12: UInt8 = 0xa8
    public static let mechanismStatus: UInt8 = 0xbd
}

/// virtio_scsi_cmd_resp.response values.
public enum VirtioSCSIResponse {
    public static let ok: UInt8 = 0
    public static let badTarget: UInt8 = 3
    public static let failure: UInt8 = 9
}

public final class VioSCSI: VirtioDevice {
    public static let blockSize: UInt64 = 2048
    public static let queueSize: UInt16 = 128
    public static let cdbSize = 32
    public static let senseSize = 96
    public static let requestHeaderSize = 8 + 8 + 3 + cdbSize     // lun, id, attr/prio/crn, cdb
    public static let responseHeaderSize = 4 + 4 + 2 + 1 + 1 + senseSize
    public static let segMax: UInt32 = 17
    public static let maxSectors: UInt32 = 0xffff
    public static let controlQueue = 0
    public static let eventQueue = 1
    public static let requestQueue = 2

    static let statusGood: UInt8 = 0
    static let statusCheckCondition: UInt8 = 2
    static let senseIllegalRequest: UInt8 = 0x05
    static let senseMediumError: UInt8 = 0x03

    public let name: String
    public let backend: BlockBackend
    public let deviceFeatures: UInt64 = 0
    public let queueMaxSizes = VioSCSI.model.queueSizes
    public var blockCount: UInt64 { backend.capacity / VioSCSI.blockSize }

    public init(name: String = "vioscsi", backend: BlockBackend) {
        self.name = name
        self.backend = backend
    }

    public func attach(to host: VirtioDeviceHost) {}
    public func reset() {}
    private var logBudget = LogBudget()

    /// struct virtio_scsi_config.
    public func readConfig(offset: Int, size: Int) -> UInt32 {
        var bytes: [UInt8] = []
        appendLittleEndian(UInt32(1), to: &bytes)                    // num_queues (request queues)
        appendLittleEndian(VioSCSI.segMax, to: &bytes)               // seg_max
        appendLittleEndian(VioSCSI.maxSectors, to: &bytes)           // max_sectors
        appendLittleEndian(UInt32(1), to: &bytes)                    // cmd_per_lun
        appendLittleEndian(UInt32(0), to: &bytes)                    // event_info_size
        appendLittleEndian(UInt32(VioSCSI.senseSize), to: &bytes)    // sense_size
        appendLittleEndian(UInt32(VioSCSI.cdbSize), to: &bytes)      // cdb_size
        appendLittleEndian(UInt16(0), to: &bytes)                    // max_channel
        appendLittleEndian(UInt16(0), to: &bytes)                    // max_target
        appendLittleEndian(UInt32(0), to: &bytes)                    // max_lun
        return readLittleEndian(bytes, offset: offset, size: size)
    }

    public func process(queue: Virtqueue, index: Int) throws {
        switch index {
        case VioSCSI.requestQueue:
            while let request = try queue.popRequest() {
                let written = serveCommand(request, memory: queue.memory)
                try queue.pushUsed(head: request.head, length: written)
            }
        case VioSCSI.controlQueue:
            // TMF and async-notification requests: nothing is ever in flight
            // and no events exist, so every answer is "done": all zero
            // (response VIRTIO_SCSI_S_OK, event_actual 0).
            while let request = try queue.popRequest() {
                var cursor = ChainCursor(memory: queue.memory, elements: request.writable)
                let zeroes = [UInt8](repeating: 0, count: Int(min(request.writableLength, 64)))
                let written = cursor.write(zeroes)
                try queue.pushUsed(head: request.head, length: UInt32(written))
            }
        default:
            break   // Event buffers stay with us; we have no events to report.
        }
    }

    // MARK: commands

    /// The outcome of one SCSI command before it is written to the guest.
    struct Outcome {
        var status: UInt8 = VioSCSI.statusGood
        var sense: [UInt8] = []
        var data: [UInt8] = []
        var response: UInt8 = VirtioSCSIResponse.ok
    }

    func serveCommand(_ request: VirtqueueRequest, memory: GuestMemory) -> UInt32 {
        guard request.writableLength >= UInt64(VioSCSI.responseHeaderSize) else {
            logBudget.log("\(name): request without room for a response")
            return 0
        }
        var readable = ChainCursor(memory: memory, elements: request.readable)
        let header = readable.readBytes(VioSCSI.requestHeaderSize)
        var writable = ChainCursor(memory: memory, elements: request.writable)
        writable.skip(UInt64(VioSCSI.responseHeaderSize))
        let dataInCapacity = writable.remaining
        var outcome = Outcome()
        var dataInWritten: UInt64 = 0

        if header.count < VioSCSI.requestHeaderSize {
            outcome.response = VirtioSCSIResponse.failure
        } else if !(header[0] == 1 && header[1] == 0 && header[2] & 0x3f == 0 && header[3] == 0) {
            outcome.response = VirtioSCSIResponse.badTarget
        } else {
            let cdb = Array(header[19..<(19 + VioSCSI.cdbSize)])
            if cdb[0] == SCSIOpcode.read10 || cdb[0] == SCSIOpcode.read12 {
                outcome = read(cdb: cdb, into: &writable, written: &dataInWritten)
            } else {
                outcome = execute(cdb: cdb)
                dataInWritten = UInt64(writable.write(outcome.data))
            }
        }

        var response: [UInt8] = []
        let sense = Array(outcome.sense.prefix(VioSCSI.senseSize))
        appendLittleEndian(UInt32(sense.count), to: &response)                           // sense_len
        appendLittleEndian(UInt32(truncatingIfNeeded: dataInCapacity - dataInWritten), to: &response)   // resid
        appendLittleEndian(UInt16(0), to: &response)                                     // status_qualifier
        response.append(outcome.status)
        response.append(outcome.response)
        response += sense + [UInt8](repeating: 0, count: VioSCSI.senseSize - sense.count)
        var responseCursor = ChainCursor(memory: memory, elements: request.writable)
        responseCursor.write(response)
        return UInt32(truncatingIfNeeded: UInt64(VioSCSI.responseHeaderSize) + dataInWritten)
    }

    static func checkCondition(key: UInt8, asc: UInt8, ascq: UInt8 = 0) -> Outcome {
        Outcome(status: statusCheckCondition, sense: fixedSense(key: key, asc: asc, ascq: ascq))
    }

    /// Fixed-format sense data (SPC-4 4.5.3), current error.
    static func fixedSense(key: UInt8, asc: UInt8, ascq: UInt8) -> [UInt8] {
        [0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0]
    }

    static func bigEndian16(_ cdb: [UInt8], _ at: Int) -> Int { Int(cdb[at]) << 8 | Int(cdb[at + 1]) }
    static func bigEndian32(_ cdb: [UInt8], _ at: Int) -> UInt32 {
        UInt32(cdb[at]) << 24 | UInt32(cdb[at + 1]) << 16 | UInt32(cdb[at + 2]) << 8 | UInt32(cdb[at + 3])
    }
    static func bytes32(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    /// Commands that answer from a few bytes built here, cut to the
    /// allocation length the guest gave.
    func execute(cdb: [UInt8]) -> Outcome {
        let invalidField = VioSCSI.checkCondition(key: VioSCSI.senseIllegalRequest, asc: 0x24)
        switch cdb[0] {
        case SCSIOpcode.testUnitReady, SCSIOpcode.preventAllowMediumRemoval, SCSIOpcode.startStopUnit:
            return Outcome()
        case SCSIOpcode.requestSense:
            let sense = VioSCSI.fixedSense(key: 0, asc: 0, ascq: 0)
            return Outcome(data: Array(sense.prefix(Int(cdb[4]))))
        case SCSIOpcode.inquiry:
            guard cdb[1] & 1 == 0 else { return invalidField }    // no vital product data pages
            var data: [UInt8] = [0x05, 0x80, 0x05, 0x02, 31, 0, 0, 0]   // CD-ROM, removable, SPC-3
            data += Array("OpenBSD ".utf8) + Array("VMM CD-ROM      ".utf8) + Array("001 ".utf8)
            return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 3))))
        case SCSIOpcode.readCapacity10:
            let last = blockCount == 0 ? 0 : min(blockCount - 1, UInt64(UInt32.max))
            return Outcome(data: VioSCSI.bytes32(UInt32(last)) + VioSCSI.bytes32(UInt32(VioSCSI.blockSize)))
        case SCSIOpcode.modeSense6, SCSIOpcode.modeSense10:
            return modeSense(cdb: cdb) ?? invalidField
        case SCSIOpcode.readTOC:
            return readTOC(cdb: cdb) ?? invalidField
        case SCSIOpcode.getConfiguration:
            var features: [UInt8] = [0x00, 0x00, 0x03, 0x04, 0x00, 0x08, 0x01, 0x00]   // profile list: CD-ROM, current
            features += [0x00, 0x01, 0x0b, 0x08] + VioSCSI.bytes32(1) + [0x01, 0, 0, 0]  // core: SCSI interface
            let length = UInt32(4 + features.count)
            let data = VioSCSI.bytes32(length) + [0, 0, 0x00, 0x08] + features             // current profile CD-ROM
            return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 7))))
        case SCSIOpcode.getEventStatusNotification:
            guard cdb[1] & 1 == 1 else { return invalidField }    // only polled
            let data: [UInt8] = [0, 6, 0x04, 0x10, 0x00, 0x02, 0, 0]   // media: no change, present
            return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 7))))
        case SCSIOpcode.reportLUNs:
            let data: [UInt8] = [0, 0, 0, 8, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)   // LUN 0 only
            return Outcome(data: Array(data.prefix(Int(VioSCSI.bigEndian32(cdb, 6)))))
        case SCSIOpcode.readDiscInformation:
            guard cdb[1] & 0x07 == 0 else { return invalidField }   // standard disc information only
            // Finalized disc, one complete session holding track 1.
            let data: [UInt8] = [0, 32, 0x0e, 1, 1, 1, 1] + [UInt8](repeating: 0, count: 27)
            return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 7))))
        case SCSIOpcode.mechanismStatus:
            let data: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0]
            return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 8))))
        default:
            return VioSCSI.checkCondition(key: VioSCSI.senseIllegalRequest, asc: 0x20)   // invalid opcode
        }
    }

    private func modeSense(cdb: [UInt8]) -> Outcome? {
        let page = cdb[2] & 0x3f
        var pages: [UInt8] = []
        if page == 0x01 || page == 0x3f {
            pages += [0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]            // read-write error recovery
        }
        if page == 0x2a || page == 0x3f {
            pages += [0x2a, 0x12, 0x01, 0, 0x71, 0x23, 0x29, 0] + [UInt8](repeating: 0, count: 12)   // CD capabilities
        }
        guard !pages.isEmpty else { return nil }
        if cdb[0] == SCSIOpcode.modeSense6 {
            let data = [UInt8(truncatingIfNeeded: 3 + pages.count), 0, 0x80, 0] + pages   // write-protected
            return Outcome(data: Array(data.prefix(Int(cdb[4]))))
        }
        let length = 6 + pages.count
        let data = [UInt8(length >> 8), UInt8(length & 0xff), 0, 0x80, 0, 0, 0, 0] + pages
        return Outcome(data: Array(data.prefix(VioSCSI.bigEndian16(cdb, 7))))
    }

    private func readTOC(cdb: [UInt8]) -> Outcome? {
        let msf = cdb[1] & 0x02 != 0
        let format = cdb[2] & 0x0f
        let allocation = VioSCSI.bigEndian16(cdb, 7)
        func address(_ lba: UInt64) -> [UInt8] {
            guard msf else { return VioSCSI.bytes32(UInt32(min(lba, UInt64(UInt32.max)))) }
            let frames = lba + 150
            return [0, UInt8(min(frames / (60 * 75), 255)), UInt8(frames / 75 % 60), UInt8(frames % 75)]
        }
        var body: [UInt8]
        switch format {
        case 0:
            let start = cdb[6]
            guard start <= 1 || start == 0xaa else { return nil }
            body = [1, 1]                                                  // first and last track
            if start <= 1 { body += [0, 0x14, 1, 0] + address(0) }        // track 1, data
            body += [0, 0x14, 0xaa, 0] + address(blockCount)               // lead-out
        case 1:
            body = [1, 1, 0, 0x14, 1, 0] + address(0)                      // one session
        default:
            return nil
        }
        let data = [UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
        return Outcome(data: Array(data.prefix(allocation)))
    }

    /// READ(10)/READ(12): straight from the ISO into the guest's buffers.
    private func read(cdb: [UInt8], into writable: inout ChainCursor, written: inout UInt64) -> Outcome {
        let lba = UInt64(VioSCSI.bigEndian32(cdb, 2))
        let count = cdb[0] == SCSIOpcode.read10 ? UInt64(VioSCSI.bigEndian16(cdb, 7))
                                                 : UInt64(VioSCSI.bigEndian32(cdb, 6))
        guard lba <= blockCount, count <= blockCount - lba else {
            return VioSCSI.checkCondition(key: VioSCSI.senseIllegalRequest, asc: 0x21)   // LBA out of range
        }
        // Whole blocks only, as many as the guest gave room for.
        let length = min(count * VioSCSI.blockSize, writable.remaining / VioSCSI.blockSize * VioSCSI.blockSize)
        var offset = lba * VioSCSI.blockSize
        var left = length
        while left > 0, let segment = writable.nextSegment(maxLength: Int(min(left, UInt64(Int.max)))) {
            do {
                try backend.read(into: segment, at: offset)
            } catch {
                logBudget.log("\(name): \(error)")
                return VioSCSI.checkCondition(key: VioSCSI.senseMediumError, asc: 0x11)   // unrecovered read error
            }
            offset += UInt64(segment.count)
            left -= UInt64(segment.count)
            written += UInt64(segment.count)
        }
        return Outcome()
    }
}

extension VioSCSI {
    public static let model = DeviceModel(
        kind: .scsi, baseName: "vioscsi", single: true, presentation: .modern(.scsi),
        queueSizes: [queueSize, queueSize, queueSize], backends: [.readOnlyImage],
        syscalls: ["pread64", "preadv", "lseek", "fstat", "newfstatat"],
        make: { c in
            VioSCSI(name: c.name, backend: try RawImageBackend(fd: try c.backend(.readOnlyImage), readOnly: true))
        })
}
