import HTTPEdge
import Foundation
import Logging
import MockProvider
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The mock's provider-style limits and configured fault rates, against a mock running on its own.
@Suite struct MockLimitsTests {
    func withMock(_ settings: MockSettings, _ body: (String) async throws -> Void) async throws {
        let port = ReadySignal<Int>()
        let server = MockServer(settings: settings)
        let service = server.makeServer(logger: Logger(label: "mock-test")) { port.set($0) }
        let task = Task { try await service.run() }
        defer { task.cancel() }
        try await body("http://127.0.0.1:\(await port.wait())")
    }

    static let openAI = #"{"model":"gpt-4o-mini","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#
    static let anthropic = #"{"model":"claude-haiku-4-5","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#

    @Test func requestsPerMinuteAreEnforcedPerKeyWithTheProvidersHeaders() async throws {
        let settings = MockSettings(latencyScale: 0, limits: MockLimits(requestsPerMinute: 3))
        try await withMock(settings) { url in
            for attempt in 1...3 {
                let response = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: [("authorization", "Bearer a")])
                #expect(response.status == 200)
                #expect(response.header("x-ratelimit-limit-requests") == "3")
                #expect(response.header("x-ratelimit-remaining-requests") == "\(3 - attempt)")
            }
            let refused = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: [("authorization", "Bearer a")])
            #expect(refused.status == 429)
            #expect(refused.header("x-ratelimit-remaining-requests") == "0")
            let retryAfter = try #require(refused.header("retry-after").flatMap(Int.init))
            #expect((1...20).contains(retryAfter))  // one request refills in 60/3 = 20 s
            #expect(try JSONValue.parse(Array(refused.body.utf8))["error"]?["type"]?.stringValue == "rate_limit_exceeded")

            // Another key has its own budget; Anthropic answers with its own headers and error type.
            let other = try await send("\(url)/v1/messages", body: Self.anthropic, headers: [("x-api-key", "b")])
            #expect(other.status == 200)
            #expect(other.header("anthropic-ratelimit-requests-remaining") == "2")
            for _ in 0..<2 { _ = try await send("\(url)/v1/messages", body: Self.anthropic, headers: [("x-api-key", "b")]) }
            let anthropicRefused = try await send("\(url)/v1/messages", body: Self.anthropic, headers: [("x-api-key", "b")])
            #expect(anthropicRefused.status == 429)
            #expect(anthropicRefused.header("retry-after") != nil)
            #expect(anthropicRefused.header("anthropic-ratelimit-requests-reset") != nil)
            #expect(try JSONValue.parse(Array(anthropicRefused.body.utf8))["error"]?["type"]?.stringValue == "rate_limit_error")
        }
    }

    @Test func tokensPerMinuteCountThePromptAndMaxTokens() async throws {
        // The prompt counts 5 tokens ("user", "hi", 3 per message); with max_tokens 50 each request asks for 55 of 100.
        let settings = MockSettings(latencyScale: 0, limits: MockLimits(tokensPerMinute: 100))
        try await withMock(settings) { url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: [("authorization", "Bearer t")])
            #expect(first.status == 200)
            #expect(first.header("x-ratelimit-remaining-tokens") == "45")
            let second = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: [("authorization", "Bearer t")])
            #expect(second.status == 429)
            #expect(second.header("x-ratelimit-limit-tokens") == "100")
        }
    }

    /// A scheduled window: an outage of one model from 0.3 s to 0.6 s after the first request; the other model and
    /// the times around it answer as usual.
    @Test func aScheduledOutageFailsOneModelForItsWindowOnly() async throws {
        let windows = [FaultWindow(start: 0.3, end: 0.6, model: "gpt-4o-mini", faultRates: [.unavailable: 1])]
        #expect(FaultWindow.rates(windows, model: "gpt-4o-mini", elapsed: 0.29, usual: [:]) == [:])
        #expect(FaultWindow.rates(windows, model: "gpt-4o-mini", elapsed: 0.3, usual: [:]) == [.unavailable: 1])
        #expect(FaultWindow.rates(windows, model: "claude-haiku-4-5", elapsed: 0.4, usual: [.serverError: 0.1]) == [.serverError: 0.1])
        #expect(FaultWindow.rates(windows, model: "gpt-4o-mini", elapsed: 0.6, usual: [:]) == [:])
        var settings = MockSettings(latencyScale: 0)
        settings.schedule = windows
        try await withMock(settings) { url in
            let started = ContinuousClock.now
            var timeline: [(Double, Int, Int)] = []
            while ContinuousClock.now - started < .milliseconds(900) {
                let openAI = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: [("authorization", "Bearer s")])
                let anthropic = try await send("\(url)/v1/messages", body: Self.anthropic, headers: [("x-api-key", "s")])
                let elapsed = (ContinuousClock.now - started).components
                timeline.append((Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18, openAI.status, anthropic.status))
                try await Task.sleep(for: .milliseconds(20))
            }
            // Away from the edges (the first request starts the clock a little before `started` is read back).
            #expect(timeline.filter { $0.0 < 0.25 }.allSatisfy { $0.1 == 200 }, "\(timeline)")
            #expect(timeline.filter { $0.0 > 0.35 && $0.0 < 0.55 }.allSatisfy { $0.1 == 503 }, "\(timeline)")
            #expect(timeline.contains { $0.0 > 0.35 && $0.0 < 0.55 }, "\(timeline)")
            #expect(timeline.filter { $0.0 > 0.65 }.allSatisfy { $0.1 == 200 }, "\(timeline)")
            #expect(timeline.allSatisfy { $0.2 == 200 }, "the other model is not in the window")
        }
    }

    @Test func configuredFaultRatesAreDrawnFromTheSeed() async throws {
        let settings = MockSettings(latencyScale: 0, faultRates: [.serverError: 0.3, .rateLimited: 0.2], seed: 9)
        var runs: [[Int]] = []
        for _ in 0..<2 {
            try await withMock(settings) { url in
                var statuses: [Int] = []
                for _ in 0..<400 {
                    statuses.append(try await send("\(url)/v1/chat/completions", body: Self.openAI,
                                                   headers: [("authorization", "Bearer f")]).status)
                }
                runs.append(statuses)
            }
        }
        let statuses = runs[0]
        #expect(runs[0] == runs[1])  // the same seed, the same faults in the same order
        let share = { (status: Int) in Double(statuses.filter { $0 == status }.count) / Double(statuses.count) }
        #expect(abs(share(500) - 0.3) < 0.07, "500s: \(share(500))")
        #expect(abs(share(429) - 0.2) < 0.06, "429s: \(share(429))")
        #expect(abs(share(200) - 0.5) < 0.08, "200s: \(share(200))")
    }
}

extension MockLimitsTests {
    /// Answer lengths replayed from the Azure chat trace in ../shared/data/lengths: the median over 300 requests is
    /// near the trace's own median; the Mooncake JSONL format reads too.
    @Test func answerLengthsReplayATrace() async throws {
        let root = EmbeddingsTests.projectRoot.appendingPathComponent("../shared/data/lengths").path
        let trace = try MockLengthTrace(path: root + "/azure_llm_inference_trace_2023_conv.csv")
        #expect(trace.lengths.count == 19_366)
        #expect(try MockLengthTrace(path: root + "/mooncake_fast25_conversation_trace.jsonl").lengths.count == 12_031)
        let traceMedian = Double(trace.lengths.sorted()[trace.lengths.count / 2])
        try await withMock(MockSettings(latencyScale: 0, lengthTrace: trace)) { url in
            var lengths: [Double] = []
            for index in 0..<300 {
                let body = #"{"model":"gpt-4o","max_tokens":100000,"messages":[{"role":"user","content":"trace \#(index)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: [("authorization", "Bearer k")])
                lengths.append(Double(try JSONValue.parse(Array(response.body.utf8))["usage"]?["completion_tokens"]?.intValue ?? -1))
            }
            let median = lengths.sorted()[150]
            #expect(abs(median / traceMedian - 1) < 0.2, "median \(median), trace median \(traceMedian)")
            #expect(lengths.allSatisfy { trace.lengths.contains(Int($0)) })
        }
    }
}

extension MockLimitsTests {
    @Test func theConfigKnowsEveryMockFault() {
        #expect(MockOptions.faultNames == MockFault.allCases.map(\.rawValue))
    }

    /// The YAML `mock:` section reaches the in-process mock: with every request rate limited, the gateway's client
    /// sees the 429 with `retry-after` kept.
    @Test func theGatewaysMockTakesLimitsAndFaultRatesFromTheConfig() async throws {
        var config = TestConfigs.embedded()
        config.mock.faultRates = ["429": 1]
        try await withTestGateway(config) { _, url in
            let response = try await send("\(url)/v1/chat/completions", body: Self.openAI)
            #expect(response.status == 429)
            #expect(response.header("retry-after") != nil)
        }
        config.mock = MockOptions()
        config.mock.requestsPerMinute = 1
        try await withTestGateway(config) { _, url in
            // The same request twice: past the gateway's exact cache, so that the second reaches the mock's limit.
            let uncached = [("cache-control", "no-store")]
            #expect(try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: uncached).status == 200)
            let refused = try await send("\(url)/v1/chat/completions", body: Self.openAI, headers: uncached)
            #expect(refused.status == 429)
            #expect(refused.header("retry-after").flatMap(Int.init).map { $0 >= 1 } == true)
        }
    }
}

extension MockLimitsTests {
    /// The `slow` fault through the gateway: the instant mock answers the normal model at once, and the slow one only
    /// after 2 s, past the provider's 1 s total timeout, which the client sees as a 504 `upstream_timeout`.
    @Test func aSlowProviderEndsInTheGatewaysTimeout() async throws {
        let timeouts = ProviderTimeouts(connect: .seconds(2), total: .seconds(1), firstToken: .seconds(5))
        var config = TestConfigs.withFaults(["slow"], timeouts: timeouts)
        config.providers["mock"]?.timeouts = timeouts
        try await withTestGateway(config) { _, url in
            let body = { (model: String) in #"{"model":"\#(model)","max_tokens":5,"messages":[{"role":"user","content":"quick one"}]}"# }
            #expect(try await send("\(url)/v1/chat/completions", body: body("gpt-4o-mini")).status == 200)
            let started = ContinuousClock.now
            let slow = try await send("\(url)/v1/chat/completions", body: body("gpt-4o-mini-slow"))
            #expect(slow.status == 504)
            #expect(try JSONValue.parse(Array(slow.body.utf8))["error"]?["code"]?.stringValue == "upstream_timeout")
            #expect(ContinuousClock.now - started < .milliseconds(1900))
        }
    }
}
