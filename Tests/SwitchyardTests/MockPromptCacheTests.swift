import Foundation
import MockProvider
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The mock's prompt-caching simulation, directly and priced through the gateway.
@Suite struct MockPromptCacheTests {
    /// About 1,500 mock tokens of system prompt: above the 1,024-token minimum of Sonnet and OpenAI, below Haiku's 2,048.
    static let longSystem = String(repeating: "The gateway caches answers and routes requests to providers. ", count: 170)

    static func anthropicBody(model: String = "claude-sonnet-4-5", marked: Bool = true, question: String = "hi") -> String {
        let system: JSONValue = ["type": "text", "text": .string(longSystem)]
        var block = system
        if marked, case .object(var members) = block {
            members["cache_control"] = ["type": "ephemeral"]
            block = .object(members)
        }
        let body: JSONValue = [
            "model": .string(model), "max_tokens": 20, "system": .array([block]),
            "messages": [["role": "user", "content": .string(question)]],
        ]
        return body.jsonString(sortedKeys: true)
    }

    static func usage(_ response: TestResponse) throws -> JSONValue {
        try #require(try JSONValue.parse(Array(response.body.utf8))["usage"])
    }

    @Test func anthropicBreakpointsWriteThenReadPerKey() async throws {
        let limits = MockLimitsTests()
        try await limits.withMock(MockSettings(latencyScale: 0)) { url in
            let headers = [("x-api-key", "cache-key")]
            let first = try Self.usage(try await send("\(url)/v1/messages", body: Self.anthropicBody(), headers: headers))
            let written = try #require(first["cache_creation_input_tokens"]?.intValue)
            #expect(written >= 1024)
            #expect(first["cache_read_input_tokens"]?.intValue == 0)

            // Same prefix, another question: the prefix is read, and input tokens count only the rest.
            let second = try Self.usage(try await send("\(url)/v1/messages", body: Self.anthropicBody(question: "and now?"),
                                                       headers: headers))
            #expect(second["cache_read_input_tokens"]?.intValue == written)
            #expect(second["cache_creation_input_tokens"]?.intValue == 0)
            #expect((second["input_tokens"]?.intValue ?? 0) < 20)

            // Another key has its own cache; no breakpoint, or a prefix under Haiku's minimum, caches nothing.
            let other = try Self.usage(try await send("\(url)/v1/messages", body: Self.anthropicBody(), headers: [("x-api-key", "other")]))
            #expect(other["cache_creation_input_tokens"]?.intValue == written)
            let unmarked = try Self.usage(try await send("\(url)/v1/messages", body: Self.anthropicBody(marked: false), headers: headers))
            #expect(unmarked["cache_read_input_tokens"]?.intValue == 0 && unmarked["cache_creation_input_tokens"]?.intValue == 0)
            let haiku = try Self.usage(try await send("\(url)/v1/messages", body: Self.anthropicBody(model: "claude-haiku-4-5"),
                                                      headers: headers))
            #expect(haiku["cache_creation_input_tokens"]?.intValue == 0)
        }
    }

    @Test func openAIPrefixesAreCachedAutomaticallyIn128TokenSteps() async throws {
        let limits = MockLimitsTests()
        try await limits.withMock(MockSettings(latencyScale: 0)) { url in
            let body = { (question: String) -> String in
                let value: JSONValue = ["model": "gpt-4o", "max_tokens": 20, "messages": [
                    ["role": "system", "content": .string(Self.longSystem)], ["role": "user", "content": .string(question)],
                ]]
                return value.jsonString(sortedKeys: true)
            }
            let headers = [("authorization", "Bearer openai-cache")]
            let first = try Self.usage(try await send("\(url)/v1/chat/completions", body: body("one"), headers: headers))
            #expect(first["prompt_tokens_details"]?["cached_tokens"]?.intValue == 0)
            let second = try Self.usage(try await send("\(url)/v1/chat/completions", body: body("two"), headers: headers))
            let cached = try #require(second["prompt_tokens_details"]?["cached_tokens"]?.intValue)
            #expect(cached >= 1024 && cached % 128 == 0 && cached <= (second["prompt_tokens"]?.intValue ?? 0))
        }
    }

    /// Through the gateway (Anthropic client, Anthropic-class mock model): the repeat is cheaper, priced with cache reads.
    @Test func theGatewayPricesCacheWritesAndReads() async throws {
        try await withTestGateway(TestConfigs.embedded()) { _, url in
            let first = try await send("\(url)/v1/messages", body: Self.anthropicBody())
            let second = try await send("\(url)/v1/messages", body: Self.anthropicBody(question: "again"))
            let costs = try [first, second].map { try #require($0.header("x-switchyard-cost-usd").flatMap(Double.init)) }
            #expect(try Self.usage(second)["cache_read_input_tokens"]?.intValue ?? 0 >= 1024)
            #expect(costs[1] < costs[0] / 2, "costs \(costs)")
        }
    }
}
