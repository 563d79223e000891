@testable import VMM

/// Records interrupt line changes.
final class RecordingInterrupts: InterruptController {
    private(set) var events: [(irq: UInt32, level: Bool)] = []
    private(set) var levels: [UInt32: Bool] = [:]
    func setIRQ(_ irq: UInt32, level: Bool) {
        events.append((irq, level))
        levels[irq] = level
    }
    func level(_ irq: UInt32) -> Bool { levels[irq] ?? false }
}

/// A PCI function that remembers BAR accesses and answers reads with a pattern.
final class FakeFunction: PCIFunction {
    let configHeader: PCIConfigHeader
    private(set) var writes: [(bar: Int, offset: UInt32, size: Int, value: UInt32)] = []
    private(set) var reads: [(bar: Int, offset: UInt32, size: Int)] = []

    init(header: PCIConfigHeader) { configHeader = header }

    func barRead(bar: Int, offset: UInt32, size: Int) -> UInt32 {
        reads.append((bar, offset, size))
        return 0xA000_0000 | UInt32(bar) << 16 | offset
    }

    func barWrite(bar: Int, offset: UInt32, size: Int, value: UInt32) {
        writes.append((bar, offset, size, value))
    }
}

/// A log sink that keeps lines.
final class LogLines {
    private(set) var lines: [String] = []
    func append(_ line: String) { lines.append(line) }
}
