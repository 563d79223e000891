// The vhost-user inflight region (vhost-user.rst, "Inflight I/O tracking"):
// a shared region the backend creates (GET_INFLIGHT_FD), the frontend keeps
// and hands back to a restarted backend (SET_INFLIGHT_FD). Its per-queue
// layout and the tracking protocol are Virtio's `InflightQueue`, the same
// tracker vmd's own device processes use across a restart; this file only
// maps the region a frontend describes.
import Glibc
import Virtio

/// The whole shared region, mapped in this process.
public final class InflightRegion {
    public let description: InflightDescription
    public let queues: [InflightQueue]
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int

    /// Map `fd` as `description` says, checking that it is big enough for
    /// its queues and lies inside the file.
    public init(fd: Int32, description d: InflightDescription, maxQueues: Int) throws {
        guard d.queueCount >= 1, Int(d.queueCount) <= maxQueues else {
            throw VhostMemoryError("inflight region for \(d.queueCount) queues (this device has \(maxQueues))")
        }
        guard d.queueSize >= 1, d.queueSize <= Virtqueue.largestQueueSize, d.queueSize & (d.queueSize - 1) == 0 else {
            throw VhostMemoryError("inflight region for queues of \(d.queueSize) entries")
        }
        let perQueue = InflightLayout.queueRegionSize(queueSize: d.queueSize)
        let needed = UInt64(perQueue) * UInt64(d.queueCount)
        let (end, overflow) = d.mmapOffset.addingReportingOverflow(d.mmapSize)
        guard !overflow, d.mmapSize >= needed, end <= UInt64(Int.max) else {
            throw VhostMemoryError("inflight region of \(d.mmapSize) bytes at \(d.mmapOffset) for \(d.queueCount) queues of \(d.queueSize) (needs \(needed))")
        }
        var info = stat()
        guard fstat(fd, &info) == 0, UInt64(max(info.st_size, 0)) >= end else {
            throw VhostMemoryError("inflight region lies past the end of its file")
        }
        guard let p = mmap(nil, Int(end), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw VhostMemoryError("inflight region: mmap: \(String(cString: strerror(errno)))")
        }
        mapping = p
        mappingLength = Int(end)
        description = d
        let start = p + Int(d.mmapOffset)
        queues = (0..<Int(d.queueCount)).map { InflightQueue(base: start + $0 * perQueue, descriptorCount: d.queueSize) }
    }

    deinit {
        // Queues may still hold these logs: they must not write to the unmapped region.
        for q in queues { q.detach() }
        munmap(mapping, mappingLength)
    }
}
