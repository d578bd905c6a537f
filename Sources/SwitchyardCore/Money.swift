/// An amount of money in integer nano-US-dollars (1e-9 USD). Never `Double`.
public struct NanoUSD: Hashable, Comparable, Sendable, CustomStringConvertible, AdditiveArithmetic {
    public var value: Int64

    public init(_ value: Int64) { self.value = value }

    public static let zero = NanoUSD(0)
    public static func < (lhs: NanoUSD, rhs: NanoUSD) -> Bool { lhs.value < rhs.value }
    /// `value`, or the nearest representable amount when it is out of range.
    public init(saturating value: Int128) {
        self.value = Int64(clamping: value)
    }

    // Saturating: totals over upstream-reported amounts must not trap.
    public static func + (lhs: NanoUSD, rhs: NanoUSD) -> NanoUSD { NanoUSD(saturating: Int128(lhs.value) + Int128(rhs.value)) }
    public static func - (lhs: NanoUSD, rhs: NanoUSD) -> NanoUSD { NanoUSD(saturating: Int128(lhs.value) - Int128(rhs.value)) }

    /// Parses a decimal USD amount such as `"3"`, `"0.075"` or `"18.75"` exactly (at most 9 decimals).
    public init?(usd text: String) {
        let trimmed = text.trimmingWhitespace()
        guard !trimmed.isEmpty, !trimmed.hasPrefix("-") else { return nil }
        let parts = trimmed.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count <= 2, let whole = Int64(parts[0].isEmpty ? "0" : String(parts[0])) else { return nil }
        var fraction: Int64 = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard digits.count <= 9, digits.allSatisfy(\.isASCII), let parsed = Int64(digits.isEmpty ? "0" : String(digits))
            else { return nil }
            var scale: Int64 = 1
            for _ in 0..<(9 - digits.count) { scale *= 10 }
            fraction = parsed * scale
        }
        let (product, overflow) = whole.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow else { return nil }
        self.value = product + fraction
    }

    /// The amount as a decimal USD string with nine decimals, such as `0.000123450`.
    public var usdString: String {
        let sign = value < 0 ? "-" : ""
        let magnitude = value.magnitude
        let fraction = String(magnitude % 1_000_000_000)
        return "\(sign)\(magnitude / 1_000_000_000).\(String(repeating: "0", count: 9 - fraction.count))\(fraction)"
    }

    /// The amount in USD as a `Double`, for metrics only.
    public var usd: Double { Double(value) / 1e9 }

    public var description: String { "$\(usdString)" }
}

extension StringProtocol {
    /// The string without leading and trailing white space (no Foundation needed).
    public func trimmingWhitespace() -> String {
        // Fast path: both ends are ASCII and not whitespace (headers nearly always are).
        let string = String(self)
        if let first = string.utf8.first, let last = string.utf8.last, first < 0x80, last < 0x80,
           !Self.asciiWhitespace(first), !Self.asciiWhitespace(last)
        {
            return string
        }
        var view = Substring(self)
        while let first = view.first, first.isWhitespace { view = view.dropFirst() }
        while let last = view.last, last.isWhitespace { view = view.dropLast() }
        return String(view)
    }

    private static func asciiWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || (0x09...0x0D).contains(byte)
    }
}
