import XCTest
@testable import VMCtlCLI

final class ScaledSizeTests: XCTestCase {
    /// Outputs of OpenBSD's fmt_scaled(3) compiled from its C source, so
    /// `vmctl status` shows the same MAXMEM/CURMEM text as vmd's vmctl.
    static let reference: [(UInt64, String)] = [
        (0, "0B"), (1, "1B"), (100, "100B"), (1023, "1023B"), (1024, "1.0K"), (1535, "1.5K"),
        (1536, "1.5K"), (2047, "2.0K"), (10240, "10.0K"), (102400, "100K"), (104857, "102K"),
        (1048575, "1024K"), (1048576, "1.0M"), (67108864, "64.0M"), (104857600, "100M"),
        (536870912, "512M"), (1073741824, "1.0G"), (1610612736, "1.5G"), (1073741823, "1024M"),
        (2147483648, "2.0G"), (137438953472, "128G"), (1099511627776, "1.0T"), (1048051712, "1000M"),
        (1023475712, "976M"), (107269324, "102M"), (4611686018427387904, "4.0E"),
        (632707, "618K"), (6480894, "6.2M"), (6, "6B"), (1946120, "1.9M"), (247530151542738677, "220P"),
        (224504467, "214M"), (15, "15B"), (285288344804199849, "253P"), (109889063669, "102G"),
        (20868546583576237, "18.5P"), (38723178, "36.9M"),
    ]

    func testFormatMatchesFmtScaled() {
        for (value, expected) in Self.reference {
            XCTAssertEqual(ScaledSize.format(value), expected, "fmt_scaled(\(value))")
        }
    }

    func testFormatNeverTrapsAtTheTop() {
        XCTAssertFalse(ScaledSize.format(UInt64.max).isEmpty)
        XCTAssertFalse(ScaledSize.format(UInt64.max - 1023).isEmpty)
    }

    func testParse() throws {
        XCTAssertEqual(try ScaledSize.parse("512M"), 512 << 20)
        XCTAssertEqual(try ScaledSize.parse("512m"), 512 << 20)
        XCTAssertEqual(try ScaledSize.parse("1.5G"), 3 << 29)
        XCTAssertEqual(try ScaledSize.parse("2048"), 2048)
        XCTAssertEqual(try ScaledSize.parse("4k"), 4096)
        XCTAssertEqual(try ScaledSize.parse("1B"), 1)
        XCTAssertEqual(try ScaledSize.parse("0.5K"), 512)
        XCTAssertEqual(try ScaledSize.parse(".5M"), 512 << 10)
        XCTAssertEqual(try ScaledSize.parse("15E"), 15 << 60)
        // Without a unit the fraction is dropped, as scan_scaled does.
        XCTAssertEqual(try ScaledSize.parse("1.9"), 1)
    }

    func testParseRejects() {
        for bad in ["", "M", ".", "abc", "12X", "1.2.3", "-1", "+1", " 1", "1 ", "1MB", "1e3", "0x10", "１"] {
            XCTAssertThrowsError(try ScaledSize.parse(bad), "\"\(bad)\" should be rejected")
        }
        XCTAssertEqual(try? ScaledSize.parse("16E"), nil)
        XCTAssertThrowsError(try ScaledSize.parse("99999999999999999999")) { error in
            XCTAssertEqual(error as? ScaledSize.ParseError, .tooLarge("99999999999999999999"))
        }
        XCTAssertThrowsError(try ScaledSize.parse("16.0E"))
        XCTAssertEqual(try ScaledSize.parse("15.5E"), 31 << 59)
    }

    func testMemoryFlag() throws {
        XCTAssertEqual(try StartOptions.memory("512M"), 512 << 20)
        XCTAssertEqual(try StartOptions.memory("1G"), 1 << 30)
        // Rounded down to whole megabytes, as vmctl does.
        XCTAssertEqual(try StartOptions.memory("1.5000001G"), 1536 << 20)
        XCTAssertThrowsError(try StartOptions.memory("1K"))
        XCTAssertThrowsError(try StartOptions.memory("1048575"))
        XCTAssertThrowsError(try StartOptions.memory("129G"))
        XCTAssertThrowsError(try StartOptions.memory("lots"))
    }
}
