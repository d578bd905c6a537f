import Foundation
import Stages
import SwitchyardCore
import SwitchyardTestKit
import Testing

/// A deployment's budgets (requests and tokens per minute) are kept by the gateway, so the provider never has to
/// refuse: against the mock's own limits, the same requests without the budget get the mock's 429s.
@Suite struct DeploymentBudgetTests {
    static func body(_ text: String, maxTokens: Int = 20) -> String {
        #"{"model":"gpt-4o-mini","max_tokens":\#(maxTokens),"messages":[{"role":"user","content":"\#(text)"}]}"#
    }

    static func config(budget: DeploymentBudget?, mockRPM: Int? = nil, mockTPM: Int? = nil) -> GatewayConfig {
        var config = TestConfigs.embedded()
        config.mock.requestsPerMinute = mockRPM
        config.mock.tokensPerMinute = mockTPM
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        if let budget, let model = config.models["gpt-4o-mini"] {
            config.budgets[AttemptsStage.deploymentID(model)] = budget
            config.resilience.budget = .milliseconds(200)
            // Refused at once rather than queued for the next unit.
            config.admission.deadlines = Array(repeating: .milliseconds(200), count: 3)
        }
        return config
    }

    /// Sends the bodies one after another: the statuses, and how many refusals came from the provider itself.
    static func run(_ config: GatewayConfig, _ bodies: [String]) async throws -> (statuses: [Int], upstream429: Int, messages: [String]) {
        try await withTestGateway(config) { _, url in
            var statuses: [Int] = [], upstream = 0, messages: [String] = []
            for body in bodies {
                let response = try await send("\(url)/v1/chat/completions", body: body)
                statuses.append(response.status)
                if response.body.contains("is rate limiting") { upstream += 1 }
                if response.status != 200 { messages.append(response.body + " retry-after: \(response.header("retry-after") ?? "none")") }
            }
            return (statuses, upstream, messages)
        }
    }

    @Test func aRequestsBudgetKeepsTheProviderFromRefusing() async throws {
        let bodies = (0..<8).map { Self.body("question \($0)") }
        let without = try await Self.run(Self.config(budget: nil, mockRPM: 5), bodies)
        #expect(without.statuses == [200, 200, 200, 200, 200, 429, 429, 429])
        #expect(without.upstream429 == 3, "the control: the mock refuses past its limit")
        let with = try await Self.run(Self.config(budget: DeploymentBudget(requestsPerMinute: 5), mockRPM: 5), bodies)
        #expect(with.statuses == [200, 200, 200, 200, 200, 429, 429, 429])
        #expect(with.upstream429 == 0, "\(with.messages)")
        #expect(with.messages.allSatisfy { $0.contains("budget") && $0.contains("mock/gpt-4o-mini") }, "\(with.messages)")
        // The next unit is back in 12 s (5 a minute): the retry-after says so.
        #expect(with.messages.allSatisfy { $0.hasSuffix("retry-after: 12") || $0.hasSuffix("retry-after: 11") }, "\(with.messages)")
    }

    @Test func aTokensBudgetCountsThePromptAndMaxTokensAsTheProviderDoes() async throws {
        // 1,000 tokens a minute, 300 asked per request: three fit, the fourth would not.
        let bodies = (0..<6).map { Self.body("question \($0)", maxTokens: 300) }
        let without = try await Self.run(Self.config(budget: nil, mockTPM: 1000), bodies)
        #expect(without.statuses == [200, 200, 200, 429, 429, 429])
        #expect(without.upstream429 == 3)
        let with = try await Self.run(Self.config(budget: DeploymentBudget(tokensPerMinute: 1000), mockTPM: 1000), bodies)
        #expect(with.statuses == [200, 200, 200, 429, 429, 429])
        #expect(with.upstream429 == 0, "\(with.messages)")
    }

    @Test func theAdminSeesEachDeploymentsCircuitAndWhatIsLeftOfItsBudget() async throws {
        var config = Self.config(budget: DeploymentBudget(requestsPerMinute: 5, tokensPerMinute: 10_000))
        config.resilience.breaker = ResilienceSettings.Breaker()
        try await withTestGateway(config, environment: ["SWITCHYARD_ADMIN_KEY": "admin-secret"]) { _, url in
            for index in 0..<2 { _ = try await send("\(url)/v1/chat/completions", body: Self.body("question \(index)")) }
            let report = try await send("\(url)/v1/deployments", method: "GET", headers: [("authorization", "Bearer admin-secret")],
                                        contentType: nil)
            #expect(report.status == 200)
            let entry = try #require(report.body.components(separatedBy: #"{"budget""#).first { $0.contains("mock/gpt-4o-mini") })
            #expect(entry.contains(#""rpm":{"limit":5,"remaining":3}"#) || entry.contains(#""rpm":{"remaining":3,"limit":5}"#), "\(report.body)")
            #expect(entry.contains(#""circuit":"closed""#), "\(report.body)")
            #expect(report.body.contains(#""id":"mock/claude-haiku-4-5""#) && report.body.contains(#""budget":null"#))
            let anyone = try await send("\(url)/v1/deployments", method: "GET", contentType: nil)
            #expect(anyone.status == 401)
        }
    }

    /// A budget set above the provider's real limit is brought down by what the provider's headers say is left.
    @Test func theProvidersRateLimitHeadersCorrectABudgetSetTooHigh() async throws {
        let bodies = (0..<8).map { Self.body("question \($0)") }
        let result = try await Self.run(Self.config(budget: DeploymentBudget(requestsPerMinute: 10), mockRPM: 5), bodies)
        #expect(result.statuses == [200, 200, 200, 200, 200, 429, 429, 429])
        #expect(result.upstream429 == 0, "\(result.messages)")
    }

    /// A request that cannot have its budget before its priority's deadline is refused in its client's envelope:
    /// OpenAI 429, Anthropic 529 overloaded, both with the budget's retry-after; a bad priority header is a 400.
    @Test func aQueueRefusalIsOverloadedInTheClientsFormat() async throws {
        var config = Self.config(budget: DeploymentBudget(requestsPerMinute: 2))
        if let model = config.models["claude-haiku-4-5"] { config.budgets[AttemptsStage.deploymentID(model)] = DeploymentBudget(requestsPerMinute: 2) }
        try await withTestGateway(config) { _, url in
            for index in 0..<2 { #expect(try await send("\(url)/v1/chat/completions", body: Self.body("q \(index)")).status == 200) }
            let openAI = try await send("\(url)/v1/chat/completions", body: Self.body("q 3"), headers: [("x-switchyard-priority", "p1")])
            #expect(openAI.status == 429)
            #expect(openAI.body.contains(#""code":"queue_timeout""#) && openAI.body.contains("p1 deadline"), "\(openAI.body)")
            #expect(["30", "29"].contains(openAI.header("retry-after") ?? ""), "\(openAI.headers)")
            let anthropicBody = #"{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"q"}]}"#
            let version = ("anthropic-version", "2023-06-01")
            for _ in 0..<2 { #expect(try await send("\(url)/v1/messages", body: anthropicBody, headers: [version]).status == 200) }
            let anthropic = try await send("\(url)/v1/messages", body: anthropicBody, headers: [version])
            #expect(anthropic.status == 529)
            #expect(anthropic.body.contains(#""type":"overloaded_error""#) && anthropic.body.contains("budget"), "\(anthropic.body)")
            #expect(anthropic.header("retry-after") != nil)
            let bad = try await send("\(url)/v1/chat/completions", body: Self.body("q"), headers: [("x-switchyard-priority", "urgent")])
            #expect(bad.status == 400 && bad.body.contains("x-switchyard-priority"), "\(bad.body)")
        }
    }

    @Test func rateLimitHeaderCountsAreReadOnlyAsPlainNumbers() {
        #expect(ProviderRemaining.count("12") == 12 && ProviderRemaining.count(" 7 ") == 7 && ProviderRemaining.count("0") == 0)
        #expect(ProviderRemaining.count("999999999999") == 999_999_999_999)
        for hostile in ["", "-1", "1e3", "1.5", "9999999999999", "12abc", "NaN", "0x10", "１２"] {
            #expect(ProviderRemaining.count(Substring(hostile)) == nil, "\(hostile)")
        }
    }

    @Test func aWaitingStreamIsToldItsPlaceAndThenStreamsOrEndsWithTheRefusal() async throws {
        var config = Self.config(budget: DeploymentBudget(requestsPerMinute: 60))
        // One request a second once the burst is spent: the first waiting stream is granted within about a second,
        // the second within two, the third not before its deadline.
        config.admission.deadlines = Array(repeating: .milliseconds(2200), count: 3)
        try await withTestGateway(config) { _, url in
            let burst = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<60 { group.addTask { try await send("\(url)/v1/chat/completions", body: Self.body("burst \(index)")).status } }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(burst.filter { $0 == 200 }.count >= 59, "\(burst)")
            let body = #"{"model":"gpt-4o-mini","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"wait for it"}]}"#
            var streams: [Task<TestResponse, any Error>] = []
            for _ in 0..<3 {
                streams.append(Task { try await send("\(url)/v1/chat/completions", body: body) })
                try await Task.sleep(for: .milliseconds(100))
            }
            var results: [TestResponse] = []
            for stream in streams { results.append(try await stream.value) }
            let (first, last) = (results[0], results[2])
            #expect(first.status == 200 && first.header("content-type") == "text/event-stream")
            #expect(first.body.hasPrefix(": queued position=0 estimated_wait_ms="), "\(first.body)")
            #expect(first.body.contains("\n\ndata: {") && first.body.hasSuffix("data: [DONE]\n\n"), "\(first.body)")
            #expect(results[1].body.contains(": queued position=1") && results[1].body.contains(": queued position=0"), "\(results[1].body)")
            #expect(results[1].body.hasSuffix("data: [DONE]\n\n"))
            // Refused after it waited: the comments, then the error event in the client's format, and no terminator.
            #expect(last.body.hasPrefix(": queued position=2"), "\(last.body)")
            #expect(last.body.contains(#""code":"queue_timeout""#) && !last.body.contains("[DONE]"), "\(last.body)")
        }
    }
}
