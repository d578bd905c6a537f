import Foundation
import Server
import Stages
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// What the caches saved: prompt-cache arithmetic, the ledger's windows, and `GET /v1/usage/savings` end to end.
@Suite struct SavingsTests {
    @Test func promptCacheSavingsAreTheCachedTokensAtTheInputPriceMinusWhatWasBilled() throws {
        let sonnet = try #require(ModelPrice(usd: "3", "15", "0.30", "3.75"))
        // 1,000 tokens read: $3.00/M listed, $0.30/M billed → $0.0027 saved.
        #expect(sonnet.promptCacheSavings(of: Usage(inputTokens: 5, outputTokens: 9, cacheReadTokens: 1000)) == NanoUSD(2_700_000))
        // 1,000 tokens written: billed $3.75/M, $0.75/M above the list price → −$0.00075.
        #expect(sonnet.promptCacheSavings(of: Usage(cacheWriteTokens: 1000)) == NanoUSD(-750_000))
        #expect(sonnet.promptCacheSavings(of: Usage(inputTokens: 100, outputTokens: 100)) == .zero)
    }

    @Test func theSavingsReportMeasuresRoutingAgainstTheReferenceAndProjects() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticEnabled = false
        config.routes["support"] = RouteConfig(name: "support", rules: [RouteRule(name: "all", target: .model("gpt-4o-mini"))],
                                               reference: "claude-opus-4-1")
        try await withTestGateway(config) { [config] gateway, url in
            let key = [("authorization", "Bearer router")]
            var costs: [NanoUSD] = []
            for question in ["how do I reset my password?", "where is my order?", "can I change my plan?", "how do I reset my password?"] {
                let body = #"{"model":"support","max_tokens":30,"messages":[{"role":"user","content":"\#(question)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: key)
                #expect(response.status == 200)
                costs.append(NanoUSD(usd: response.header("x-switchyard-cost-usd") ?? "") ?? NanoUSD(-1))
            }
            await gateway.ledger?.flush()
            let body = try await send("\(url)/v1/usage/savings?requests_per_day=1000", method: "GET", headers: key, contentType: nil).body
            let report = try JSONValue.parse(Array(body.utf8))
            let mine = try #require(report["tenants"]?.arrayValue?.first, "\(body)")
            func usd(_ value: JSONValue?) -> NanoUSD? { value?.stringValue.flatMap { NanoUSD(usd: $0) } }
            // Three answered by the route's model, one by the exact cache.
            #expect(mine["routing"]?["requests"]?.intValue == 3 && mine["exact"]?["requests"]?.intValue == 1, "\(mine)")
            let spent = try #require(usd(mine["spent_usd"]))
            #expect(spent == costs[0] + costs[1] + costs[2] && costs[3] == .zero)
            let routing = try #require(usd(mine["routing"]?["saved_usd"]))
            let opus = try #require(config.models["claude-opus-4-1"]?.price), mini = try #require(config.models["gpt-4o-mini"]?.price)
            // Opus costs well over ten times mini per token: routing saved most of the all-opus bill.
            #expect(routing > NanoUSD(spent.value * 10) && opus.cost(of: Usage(inputTokens: 10, outputTokens: 10)) > mini.cost(of: Usage(inputTokens: 10, outputTokens: 10)))
            let saved = try #require(usd(mine["total_saved_usd"]))
            #expect(saved == routing + costs[0] && usd(mine["without_gateway_usd"]) == spent + saved)
            // At 1,000 requests a day: the per-request figures seen, times 1,000, and thirty days a month.
            #expect(mine["projection"]?["basis"] == "requests_per_day" && mine["projection"]?["per_day"]?["requests"]?.intValue == 1000)
            let perDay = try #require(usd(mine["projection"]?["per_day"]?["spent_usd"]))
            #expect(abs(perDay.value - spent.value * 250) <= 1)
            let perMonth = try #require(usd(mine["projection"]?["per_month"]?["saved_usd"]))
            #expect(abs(perMonth.value - saved.value * 250 * 30) <= 30)
            let bad = try await send("\(url)/v1/usage/savings?requests_per_day=0", method: "GET", headers: key, contentType: nil)
            #expect(bad.status == 400 && bad.body.contains("requests_per_day"))
            for value in ["nan", "inf", "-5", "1e13", "x"] {
                let refused = try await send("\(url)/v1/usage/savings?requests_per_day=\(value)", method: "GET", headers: key, contentType: nil)
                #expect(refused.status == 400, "\(value): \(refused.body)")
            }
        }
    }

    @Test func theSavingsEndpointReportsExactHitsAndPromptCaching() async throws {
        try await withTestGateway(environment: ["SWITCHYARD_ADMIN_KEY": "admin"]) { gateway, url in
            let key = [("authorization", "Bearer saver")]
            let body = #"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"What is a savings account?"}]}"#
            let miss = try await send("\(url)/v1/chat/completions", body: body, headers: key)
            let cost = try #require(miss.header("x-switchyard-cost-usd"))
            _ = try await send("\(url)/v1/chat/completions", body: body, headers: key)  // exact hit
            _ = try await send("\(url)/v1/chat/completions", body: body, headers: key)  // and another

            // Anthropic prompt caching through the gateway: the first call writes the prefix, the second reads it.
            for question in ["first question", "second question"] {
                let response = try await send("\(url)/v1/messages", body: MockPromptCacheTests.anthropicBody(question: question),
                                              headers: key)
                #expect(response.status == 200)
            }
            await gateway.ledger?.flush()
            let report = try await send("\(url)/v1/usage/savings", method: "GET", headers: key, contentType: nil)
            #expect(report.status == 200)
            let json = try JSONValue.parse(Array(report.body.utf8))
            let tenants = try #require(json["tenants"]?.arrayValue)
            #expect(tenants.count == 1)  // a caller sees only its own tenant
            let mine = tenants[0]
            #expect(mine["exact"]?["requests"]?.intValue == 2)
            let saved = try #require(NanoUSD(usd: mine["exact"]?["saved_usd"]?.stringValue ?? ""))
            #expect(saved == NanoUSD(usd: cost).map { NanoUSD($0.value * 2) })
            #expect(mine["prompt_cache"]?["requests"]?.intValue == 2)
            // Net of the write premium, the read already saves money at Sonnet's prices (0.1× reads, 1.25× writes).
            let prompt = try #require(NanoUSD(usd: mine["prompt_cache"]?["saved_usd"]?.stringValue ?? ""))
            #expect(prompt > .zero)
            #expect(mine["semantic"]?["requests"]?.intValue == 0)

            // The admin key sees every tenant; another caller sees nothing of this one.
            _ = try await send("\(url)/v1/chat/completions", body: body, headers: [("authorization", "Bearer other")])
            _ = try await send("\(url)/v1/chat/completions", body: body, headers: [("authorization", "Bearer other")])
            await gateway.ledger?.flush()
            let all = try JSONValue.parse(Array(try await send("\(url)/v1/usage/savings", method: "GET",
                                                               headers: [("authorization", "Bearer admin")], contentType: nil).body.utf8))
            #expect(all["tenants"]?.arrayValue?.count == 2)
            let other = try JSONValue.parse(Array(try await send("\(url)/v1/usage/savings", method: "GET",
                                                                 headers: [("authorization", "Bearer other")], contentType: nil).body.utf8))
            #expect(other["tenants"]?.arrayValue?.count == 1 && other["tenants"]?.arrayValue?.first?["exact"]?["requests"]?.intValue == 1)
            let window = try await send("\(url)/v1/usage/savings?from=10&to=5", method: "GET", headers: key, contentType: nil)
            #expect(window.status == 400)
        }
    }
}

/// `prompt_cache: auto`: breakpoints for OpenAI-format requests to Anthropic models.
@Suite struct AutoPromptCacheTests {
    static func openAIBody(_ question: String, system: String = MockPromptCacheTests.longSystem) -> String {
        let body: JSONValue = [
            "model": "claude-sonnet-4-5", "max_tokens": 20,
            "messages": [["role": "system", "content": .string(system)], ["role": "user", "content": .string(question)]],
        ]
        return body.jsonString(sortedKeys: true)
    }

    static func cachedTokens(_ response: TestResponse) -> Int64? {
        (try? JSONValue.parse(Array(response.body.utf8)))?["usage"]?["prompt_tokens_details"]?["cached_tokens"]?.intValue
    }

    @Test func breakpointsAreMarkedOnlyWhereThePrefixIsLongEnough() {
        // About 1,500 estimated tokens (4 characters each): over Sonnet's 1,024, under Haiku's 2,048.
        let system = String(repeating: "Answer politely. ", count: 360)
        let long = ChatRequest(model: "m", messages: [ChatMessage(role: .system, content: [.text(system)]),
                                                       ChatMessage(role: .user, content: [.text("hi")])], sourceFormat: .openAI)
        let marked = PromptCacheStage.markBreakpoints(long, upstreamModel: "claude-sonnet-4-5")
        let ephemeral: JSONValue = ["type": "ephemeral"]
        #expect(marked.messages[0].content == [ContentBlock.text(system, cacheControl: ephemeral)])
        #expect(marked.messages[1] == long.messages[1])
        // Haiku needs twice as long a prefix; a short system prompt gets nothing.
        #expect(PromptCacheStage.markBreakpoints(long, upstreamModel: "claude-haiku-4-5") == long)
        var short = long
        short.messages[0].content = [.text("Be brief.")]
        #expect(PromptCacheStage.markBreakpoints(short, upstreamModel: "claude-sonnet-4-5") == short)
        // Long tools get their own breakpoint; a request that already has breakpoints is left alone.
        var tools = short
        tools.tools = (0..<40).map { ToolDefinition(name: "tool_\($0)", description: String(repeating: "Does a thing. ", count: 10),
                                                   inputSchema: ["type": "object"]) }
        let toolsMarked = PromptCacheStage.markBreakpoints(tools, upstreamModel: "claude-sonnet-4-5")
        #expect(toolsMarked.tools.last?.cacheControl == ephemeral)
        #expect(toolsMarked.tools.dropLast().allSatisfy { $0.cacheControl == nil })
        #expect(PromptCacheStage.markBreakpoints(toolsMarked, upstreamModel: "claude-sonnet-4-5") == toolsMarked)
    }

    @Test func anOpenAIClientGetsAnthropicPromptCachingThroughTheRouteOption() async throws {
        var config = TestConfigs.embedded()
        config.models["claude-sonnet-4-5"]?.autoPromptCache = true
        try await withTestGateway(config) { _, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("first question"))
            let second = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("second question"))
            #expect(first.status == 200 && second.status == 200)
            #expect(Self.cachedTokens(first) == 0)
            #expect((Self.cachedTokens(second) ?? 0) >= 1024)
            // The write costs more than plain input, the read far less.
            let cost = { (response: TestResponse) in Double(response.header("x-switchyard-cost-usd") ?? "") ?? 0 }
            #expect(cost(second) < cost(first) / 3)
        }
        // Without the option the same requests cache nothing.
        try await withTestGateway { _, url in
            _ = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("first question"))
            let second = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("second question"))
            #expect(Self.cachedTokens(second) == 0)
        }
    }
}
