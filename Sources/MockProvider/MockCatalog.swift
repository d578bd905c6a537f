#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A model the mock serves, with its latency and length model.
public struct MockModel: Sendable, Hashable {
    public var name: String
    /// Time to first token, in seconds.
    public var timeToFirstToken: LogNormal
    /// Time between two output tokens, in seconds.
    public var interTokenLatency: LogNormal
    /// Output length in tokens when `max_tokens` does not cut it shorter.
    public var outputTokens: LogNormal
    /// Whether the model speaks the Anthropic format (else the OpenAI one).
    public var isAnthropic: Bool
    /// The shortest prefix its prompt cache stores, in tokens.
    public var promptCacheMinimumTokens: Int
    /// Which recorded answer it gives (`MockRecordedAnswers`).
    public var tier: MockTier

    public init(name: String, timeToFirstToken: LogNormal, interTokenLatency: LogNormal, outputTokens: LogNormal,
                isAnthropic: Bool = false, promptCacheMinimumTokens: Int = 1024, tier: MockTier = .cheap) {
        self.tier = tier
        self.name = name
        self.timeToFirstToken = timeToFirstToken
        self.interTokenLatency = interTokenLatency
        self.outputTokens = outputTokens
        self.isAnthropic = isAnthropic
        self.promptCacheMinimumTokens = promptCacheMinimumTokens
    }

    /// The default catalog: three Anthropic-class tiers and two OpenAI-class ones, with medians and tails in the
    /// range the providers' public latency dashboards show.
    public static let defaults: [MockModel] = [
        MockModel(name: "claude-haiku-4-5", timeToFirstToken: LogNormal(median: 0.35, p99: 1.2),
                  interTokenLatency: LogNormal(median: 1.0 / 160, p99: 3.0 / 160), outputTokens: LogNormal(median: 90, p99: 420),
                  isAnthropic: true, promptCacheMinimumTokens: 2048),
        MockModel(name: "claude-sonnet-4-5", timeToFirstToken: LogNormal(median: 0.7, p99: 2.5),
                  interTokenLatency: LogNormal(median: 1.0 / 75, p99: 3.0 / 75), outputTokens: LogNormal(median: 140, p99: 700),
                  isAnthropic: true, tier: .expensive),
        MockModel(name: "claude-opus-4-1", timeToFirstToken: LogNormal(median: 1.4, p99: 5),
                  interTokenLatency: LogNormal(median: 1.0 / 40, p99: 3.0 / 40), outputTokens: LogNormal(median: 180, p99: 900),
                  isAnthropic: true, tier: .expensive),
        MockModel(name: "gpt-4o-mini", timeToFirstToken: LogNormal(median: 0.3, p99: 1.1),
                  interTokenLatency: LogNormal(median: 1.0 / 110, p99: 3.0 / 110), outputTokens: LogNormal(median: 110, p99: 500)),
        MockModel(name: "gpt-4o", timeToFirstToken: LogNormal(median: 0.5, p99: 1.8),
                  interTokenLatency: LogNormal(median: 1.0 / 80, p99: 3.0 / 80), outputTokens: LogNormal(median: 140, p99: 650),
                  tier: .expensive),
    ]
}

/// A log-normal distribution given by its median and 99th percentile (p99 = median gives a constant).
public struct LogNormal: Sendable, Hashable {
    public var median: Double
    public var p99: Double

    public init(median: Double, p99: Double) {
        self.median = median
        self.p99 = max(p99, median)
    }

    /// σ of the underlying normal: the 99th percentile of a standard normal is 2.3263.
    var sigma: Double { median > 0 ? log(p99 / median) / 2.326_347_874_040_841 : 0 }

    public func sample(_ rng: inout SplitMix64) -> Double {
        median * exp(sigma * rng.nextGaussian())
    }
}

/// Deterministic text and token counts.
struct MockText {
    static let vocabulary: [String] = """
        the a of to and in is that for it as with on be this are by an at from or which can will not have has \
        model request gateway answer token cache latency stream user system value result provider price cost \
        quickly simply clearly because however therefore first second next finally each every many some more \
        data time rate limit queue route reply question example number table detail summary note point reason
        """.split(separator: " ").map(String.init)

    /// A mock token is a run of letters and digits or one other non-space character.
    static func countTokens(_ text: String) -> Int {
        var count = 0
        var inWord = false
        for scalar in text.unicodeScalars {
            let word: Bool
            let space: Bool
            if scalar.isASCII {
                // ASCII without the Unicode property tables (which cost most of the mock's time on long prompts).
                let value = UInt8(scalar.value)
                word = (0x41...0x5A).contains(value) || (0x61...0x7A).contains(value) || (0x30...0x39).contains(value)
                space = value == 0x20 || (0x09...0x0D).contains(value)
            } else {
                word = scalar.properties.isAlphabetic
                space = scalar.properties.isWhitespace
            }
            if word {
                if !inWord { count += 1; inWord = true }
            } else {
                inWord = false
                if !space { count += 1 }
            }
        }
        return count
    }

    /// `count` words, each one token, from a seeded generator.
    static func words(count: Int, rng: inout SplitMix64) -> [String] {
        (0..<count).map { _ in vocabulary[Int(rng.next() % UInt64(vocabulary.count))] }
    }
}

/// A small, fast, seedable generator (SplitMix64).
public struct SplitMix64: Sendable {
    var state: UInt64

    public init(seed: UInt64) { self.state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }

    /// Uniform in (0, 1].
    public mutating func nextUniform() -> Double {
        Double((next() >> 11) + 1) * 0x1p-53
    }

    /// Standard normal (Box–Muller).
    public mutating func nextGaussian() -> Double {
        let u = nextUniform(), v = nextUniform()
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }

    /// FNV-1a over the bytes, for seeding from request content.
    static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        return hash
    }
}
