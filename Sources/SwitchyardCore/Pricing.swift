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

    /// What `usage` costs at these prices, rounded up once to a whole nano-USD.
    public func cost(of usage: Usage) -> NanoUSD {
        let scaled = Int64(usage.inputTokens) * input.value + Int64(usage.outputTokens) * output.value
            + Int64(usage.cacheReadTokens) * cacheRead.value + Int64(usage.cacheWriteTokens) * cacheWrite.value
        return NanoUSD((scaled + 999_999) / 1_000_000)
    }
}
