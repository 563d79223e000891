/// The little JSON `vmctl status --json` prints: compact, keys in the order
/// given (callers give them sorted), slashes not escaped. Written by hand
/// so that vmctl needs no Foundation (JSONEncoder) and starts fast.
enum JSON {
    enum Value {
        case string(String)
        case int(Int64)
        case uint(UInt64)
        case null
        case array([Value])
        /// Keys in output order.
        case object([(String, Value)])
    }

    static func text(_ value: Value) -> String {
        var out = ""
        write(value, to: &out)
        return out
    }

    static func write(_ value: Value, to out: inout String) {
        switch value {
        case .string(let s): quote(s, to: &out)
        case .int(let n): out += String(n)
        case .uint(let n): out += String(n)
        case .null: out += "null"
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                write(item, to: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (i, (key, item)) in fields.enumerated() {
                if i > 0 { out += "," }
                quote(key, to: &out)
                out += ":"
                write(item, to: &out)
            }
            out += "}"
        }
    }

    /// RFC 8259 string: `"` and `\` escaped, control characters as the
    /// short escapes or \u00XX; everything else as is (UTF-8).
    static func quote(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}
