/// A model the mock serves, with its latency model.
public struct MockModel: Sendable, Hashable {
    public var name: String
    /// Median time to first token.
    public var timeToFirstToken: Duration
    /// Output speed.
    public var tokensPerSecond: Double
    /// Output length when `max_tokens` does not cut it shorter.
    public var typicalOutputTokens: ClosedRange<Int>

    public init(name: String, timeToFirstToken: Duration, tokensPerSecond: Double, typicalOutputTokens: ClosedRange<Int>) {
        self.name = name
        self.timeToFirstToken = timeToFirstToken
        self.tokensPerSecond = tokensPerSecond
        self.typicalOutputTokens = typicalOutputTokens
    }

    /// Models whose name starts with `claude` speak the Anthropic format; the others the OpenAI one.
    public var isAnthropic: Bool { name.hasPrefix("claude") }

    /// The default catalog: three Anthropic-class tiers and two OpenAI-class ones.
    public static let defaults: [MockModel] = [
        MockModel(name: "claude-haiku-4-5", timeToFirstToken: .milliseconds(350), tokensPerSecond: 160, typicalOutputTokens: 40...160),
        MockModel(name: "claude-sonnet-4-5", timeToFirstToken: .milliseconds(700), tokensPerSecond: 75, typicalOutputTokens: 60...260),
        MockModel(name: "claude-opus-4-1", timeToFirstToken: .milliseconds(1400), tokensPerSecond: 40, typicalOutputTokens: 80...320),
        MockModel(name: "gpt-4o-mini", timeToFirstToken: .milliseconds(300), tokensPerSecond: 110, typicalOutputTokens: 40...200),
        MockModel(name: "gpt-4o", timeToFirstToken: .milliseconds(500), tokensPerSecond: 80, typicalOutputTokens: 60...260),
    ]
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
            if scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) {
                if !inWord { count += 1; inWord = true }
            } else {
                inWord = false
                if !scalar.properties.isWhitespace { count += 1 }
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
struct SplitMix64 {
    var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
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
