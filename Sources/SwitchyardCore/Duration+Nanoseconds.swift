extension Duration {
    /// The duration in whole nanoseconds, saturated at `Int64`'s bounds (about ±292 years).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return Int64(clamping: Int128(seconds) * 1_000_000_000 + Int128(attoseconds / 1_000_000_000))
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }

    /// The duration in whole microseconds.
    public var microseconds: Int64 { nanoseconds / 1000 }
}

extension Duration {
    /// Seconds from an outside source (a header, a config value) as a duration, if the number is finite and within
    /// `0...limit`; otherwise `nil`, never a trap.
    public static func checkedSeconds(_ seconds: Double, limit: Double) -> Duration? {
        guard seconds.isFinite, seconds >= 0, seconds <= limit else { return nil }
        return .nanoseconds(Int64((seconds * 1e9).rounded(.up)))
    }
}
