/// The ACPI tables for SeaBIOS: the fw_cfg files `etc/acpi/rsdp`,
/// `etc/acpi/tables` and the `etc/table-loader` script (QEMU's
/// hw/acpi/bios-linker-loader.c format, SeaBIOS fw/romfile_loader.c):
/// 128-byte little-endian commands ALLOCATE (the RSDP in the F segment,
/// the tables in high memory), ADD_POINTER (every pointer field, relative
/// to `etc/acpi/tables`) and ADD_CHECKSUM (every table, then the RSDP's
/// two checksums), in that order so each checksum sees final pointers.
extension ACPITables {
    public static let rsdpFile = "etc/acpi/rsdp"
    public static let tablesFile = "etc/acpi/tables"
    public static let loaderFile = "etc/table-loader"

    static let commandSize = 128, fileNameSize = 56
    static let allocate: UInt32 = 1, addPointer: UInt32 = 2, addChecksum: UInt32 = 3
    static let zoneHigh: UInt8 = 1, zoneFSeg: UInt8 = 2

    public var loaderScript: [UInt8] {
        var script: [UInt8] = []
        func command(_ type: UInt32, _ fill: (inout ByteImage) -> Void) {
            var c = ByteImage(count: Self.commandSize)
            c.put32(0, type)
            fill(&c)
            script += c.bytes
        }
        func name(_ c: inout ByteImage, _ at: Int, _ file: String) {
            c.putBytes(at, Array(file.utf8) + [UInt8](repeating: 0, count: Self.fileNameSize - file.utf8.count))
        }
        command(Self.allocate) { name(&$0, 4, Self.rsdpFile); $0.put32(60, 16); $0.put8(64, Self.zoneFSeg) }
        command(Self.allocate) { name(&$0, 4, Self.tablesFile); $0.put32(60, 64); $0.put8(64, Self.zoneHigh) }
        for p in pointers {
            command(Self.addPointer) {
                name(&$0, 4, p.inRSDP ? Self.rsdpFile : Self.tablesFile)
                name(&$0, 60, Self.tablesFile)
                $0.put32(116, UInt32(p.offset))
                $0.put8(120, UInt8(p.size))
            }
        }
        for t in layout where t.checksummed {
            command(Self.addChecksum) {
                name(&$0, 4, Self.tablesFile)
                $0.put32(60, UInt32(t.offset + 9))
                $0.put32(64, UInt32(t.offset))
                $0.put32(68, UInt32(t.length))
            }
        }
        for (offset, length) in [(8, 20), (32, Self.rsdpLength)] {
            command(Self.addChecksum) {
                name(&$0, 4, Self.rsdpFile)
                $0.put32(60, UInt32(offset))
                $0.put32(64, 0)
                $0.put32(68, UInt32(length))
            }
        }
        return script
    }
}
