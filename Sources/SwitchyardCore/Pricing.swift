public import SwitchyardModels

/// List prices of one model, per million tokens, in nano-USD.
public struct ModelPrice: Sendable, Hashable {
    public var input: NanoUSD
    public var output: NanoUSD
    /// Input tokens read from the provider's prompt cache.
    public var cacheRead: NanoUSD
    /// Input tokens written to the provider's prompt cache.
    public var cacheWrite: NanoUSD

    public init(input: NanoUSD, output: NanoUSD, cacheRead: NanoUSD, cacheWrite: NanoUSD) {
        self.input = input
        self.output = output
        self.cacheRead = cacheRead
        self.cacheWrite = cacheWrite
    }

    /// Prices given as decimal USD per million tokens, such as `ModelPrice(usd: "3", "15", "0.30", "3.75")`.
    public init?(usd input: String, _ output: String, _ cacheRead: String, _ cacheWrite: String) {
        guard let input = NanoUSD(usd: input), let output = NanoUSD(usd: output), let cacheRead = NanoUSD(usd: cacheRead),
              let cacheWrite = NanoUSD(usd: cacheWrite) else { return nil }
        self.init(input: input, output: output, cacheRead: cacheRead, cacheWrite: cacheWrite)
    }

    /// What the provider's prompt cache saved on `usage`: its cached tokens at the plain input price minus what they
    /// were billed (reads are cheaper, writes dearer, so this is negative when a write is not read back yet).
    public func promptCacheSavings(of usage: Usage) -> NanoUSD {
        let list = (Int128(usage.cacheReadTokens) + Int128(usage.cacheWriteTokens)) * Int128(input.value)
        let paid = Int128(usage.cacheReadTokens) * Int128(cacheRead.value) + Int128(usage.cacheWriteTokens) * Int128(cacheWrite.value)
        // Rounded towards zero to whole nano-USD.
        return NanoUSD(saturating: (list - paid) / 1_000_000)
    }

    /// What `usage` costs at these prices, rounded up once to a whole nano-USD; never negative. Computed in 128 bits
    /// and saturated, so no token count or price can overflow it.
    public func cost(of usage: Usage) -> NanoUSD {
        NanoUSD(saturating: max(0, (scaled(usage) + 999_999) / 1_000_000))
    }

    /// What `usage` costs through the provider's batch API: half the price (OpenAI's and Anthropic's batch rate, for
    /// every token kind), rounded up once.
    public func batchCost(of usage: Usage) -> NanoUSD {
        NanoUSD(saturating: max(0, (scaled(usage) + 1_999_999) / 2_000_000))
    }

    /// The cost in millionths of a nano-USD.
    func scaled(_ usage: Usage) -> Int128 {
        let scaled = Int128(max(0, usage.inputTokens)) * Int128(input.value)
            + Int128(max(0, usage.outputTokens)) * Int128(output.value)
            + Int128(max(0, usage.cacheReadTokens)) * Int128(cacheRead.value)
            + Int128(max(0, usage.cacheWriteTokens)) * Int128(cacheWrite.value)
        return scaled
    }
}
