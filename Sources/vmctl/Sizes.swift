/// Human-readable sizes as OpenBSD's libutil writes and reads them
/// (fmt_scaled(3), scan_scaled(3)), so `vmctl status` shows `512M` and
/// `1.0G` exactly as vmd's vmctl does, and `-m 1.5G` means what it means there.
enum ScaledSize {
    /// Unit letters in order of powers of 1024: bytes, kilo, mega, ...
    static let unitLetters: [Character] = ["B", "K", "M", "G", "T", "P", "E"]

    /// fmt_scaled: at most three significant digits and a unit letter.
    /// Below 100 in the chosen unit one decimal is shown (`1.5G`), from 100 up
    /// the value is rounded to a whole number (`512M`); zero is `0B`.
    static func format(_ value: UInt64) -> String {
        // The unit is the largest whose value is at least 1024 times smaller
        // than the number, as fmt_scaled picks it: 1023 stays bytes, 1536 is 1.5K.
        var unit = 0
        var factor: UInt64 = 1
        while unit < unitLetters.count - 1 && value / 1024 >= factor {
            factor *= 1024
            unit += 1
        }
        var whole = value / factor
        // The remainder in units of the next smaller factor (0...1023), then
        // rounded to one decimal: (10 * fraction + 512) / 1024.
        let fraction = unit == 0 ? 0 : (value % factor) / (factor / 1024)
        var tenth = (10 * fraction + 512) / 1024
        if tenth == 10 {
            whole += 1
            tenth = 0
        }
        if whole == 0 { return "0B" }
        if unit == 0 || whole >= 100 {
            if tenth >= 5 { whole += 1 }
            return "\(whole)\(unitLetters[unit])"
        }
        return "\(whole).\(tenth)\(unitLetters[unit])"
    }

    enum ParseError: Error, Equatable, CustomStringConvertible {
        case invalid(String)
        case tooLarge(String)

        var description: String {
            switch self {
            case .invalid(let text): return "invalid size: \(text)"
            case .tooLarge(let text): return "size too large: \(text)"
            }
        }
    }

    /// scan_scaled for sizes: digits, an optional fraction and an optional
    /// unit letter (either case): `512M`, `1.5G`, `2048`, `4k`. No sign, no
    /// spaces, nothing after the unit; every step overflow-checked.
    static func parse(_ text: String) throws -> UInt64 {
        var whole: UInt64 = 0
        var fractionDigits: [UInt64] = []
        var sawDot = false
        var sawDigit = false
        var unit = 0
        var chars = Array(text)
        if let last = chars.last, !last.isNumber, last != "." {
            guard let index = unitLetters.firstIndex(of: Character(last.uppercased())) else {
                throw ParseError.invalid(text)
            }
            unit = index
            chars.removeLast()
        }
        for c in chars {
            if c == "." {
                guard !sawDot else { throw ParseError.invalid(text) }
                sawDot = true
                continue
            }
            guard let digit = c.wholeNumberValue, c.isASCII else { throw ParseError.invalid(text) }
            sawDigit = true
            if sawDot {
                // Digits past what a 64-bit value can use change nothing.
                if fractionDigits.count < 18 { fractionDigits.append(UInt64(digit)) }
                continue
            }
            let (times10, o1) = whole.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(digit))
            guard !o1, !o2 else { throw ParseError.tooLarge(text) }
            whole = sum
        }
        guard sawDigit else { throw ParseError.invalid(text) }
        var factor: UInt64 = 1
        for _ in 0..<unit { factor *= 1024 }
        let (scaled, overflow) = whole.multipliedReportingOverflow(by: factor)
        guard !overflow else { throw ParseError.tooLarge(text) }
        // Without a unit the fraction is dropped, as scan_scaled does.
        guard unit > 0, !fractionDigits.isEmpty else { return scaled }
        // fraction * factor / 10^digits, computed digit by digit so that
        // nothing overflows: each step adds digit * factor / 10^k.
        var extra: UInt64 = 0
        var divisor: UInt64 = 1
        for digit in fractionDigits {
            divisor *= 10
            extra += digit * (factor / divisor) + digit * (factor % divisor) / divisor
        }
        let (total, o3) = scaled.addingReportingOverflow(extra)
        guard !o3 else { throw ParseError.tooLarge(text) }
        return total
    }
}
