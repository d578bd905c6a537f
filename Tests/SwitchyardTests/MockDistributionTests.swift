import MockProvider
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The mock provider's latency and length distributions: sampled medians and 99th percentiles.
@Suite struct MockDistributionTests {
    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    @Test(arguments: [(0.3, 1.1), (1.0 / 110, 3.0 / 110), (140.0, 650.0), (2.0, 2.0)])
    func logNormalSamplesHaveTheConfiguredMedianAndP99(median: Double, p99: Double) {
        let distribution = LogNormal(median: median, p99: p99)
        var rng = SplitMix64(seed: 42)
        let samples = (0..<40_000).map { _ in distribution.sample(&rng) }.sorted()
        let sampledMedian = Self.percentile(samples, 0.5), sampledP99 = Self.percentile(samples, 0.99)
        #expect(abs(sampledMedian / median - 1) < 0.03, "median \(sampledMedian) for \(median)")
        #expect(abs(sampledP99 / p99 - 1) < 0.08, "p99 \(sampledP99) for \(p99)")
        #expect(samples.allSatisfy { $0 > 0 })
    }

    @Test func theSameSeedGivesTheSameSamples() {
        let distribution = LogNormal(median: 0.5, p99: 1.8)
        var a = SplitMix64(seed: 7), b = SplitMix64(seed: 7), c = SplitMix64(seed: 8)
        let first = (0..<100).map { _ in distribution.sample(&a) }
        #expect(first == (0..<100).map { _ in distribution.sample(&b) })
        #expect(first != (0..<100).map { _ in distribution.sample(&c) })
    }
}

extension MockDistributionTests {
    /// Through the gateway: answer lengths over 300 different prompts follow the model's length distribution
    /// (gpt-4o-mini: median 110 tokens), and `max_tokens` caps them with finish reason `length`.
    @Test func answerLengthsFollowTheModelsDistributionAndMaxTokensCapsThem() async throws {
        try await withTestGateway(TestConfigs.embedded()) { _, url in
            var lengths: [Double] = []
            for index in 0..<300 {
                let body = #"{"model":"gpt-4o-mini","max_tokens":100000,"messages":[{"role":"user","content":"question number \#(index)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body)
                let json = try JSONValue.parse(Array(response.body.utf8))
                lengths.append(Double(json["usage"]?["completion_tokens"]?.intValue ?? -1))
            }
            let median = Self.percentile(lengths.sorted(), 0.5)
            #expect(abs(median / 110 - 1) < 0.15, "median answer length \(median)")
            #expect(Set(lengths).count > 50)

            let capped = try await send("\(url)/v1/chat/completions",
                                        body: #"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"long please"}]}"#)
            let json = try JSONValue.parse(Array(capped.body.utf8))
            #expect(json["usage"]?["completion_tokens"]?.intValue == 5)
            #expect(json["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue == "length")
        }
    }
}
