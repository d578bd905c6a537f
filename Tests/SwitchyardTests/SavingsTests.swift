import Foundation
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

    @Test func theLedgerIsBoundedHoweverManyTenantsCall() {
        let clock = Locked<Int64>(60_000)
        let ledger = SavingsLedger(retention: .seconds(86400), maximumBuckets: 100, now: { clock.withLock { $0 } })
        for tenant in 0..<60 { ledger.record(tenant: "old-\(tenant)", kind: .exact, saved: NanoUSD(1)) }
        clock.withLock { $0 += 60 }
        for tenant in 0..<500 { ledger.record(tenant: "new-\(tenant)", kind: .exact, saved: NanoUSD(1)) }
        let totals = ledger.totals(from: 0, to: 70_000)
        // The older minute made room first; then this minute's records past the bound were dropped.
        #expect(totals.count <= 100)
        #expect(totals.keys.allSatisfy { $0.hasPrefix("new-") })
        #expect(totals["new-0"]?[.exact]?.requests == 1)
    }

    @Test func theLedgerReportsWindowsPerTenantAndKind() {
        let clock = Locked<Int64>(1_000)
        let ledger = SavingsLedger(retention: .seconds(7200), now: { clock.withLock { $0 } })
        ledger.record(tenant: "a", kind: .exact, saved: NanoUSD(100))
        ledger.record(tenant: "a", kind: .exact, saved: NanoUSD(50))
        ledger.record(tenant: "b", kind: .semantic, saved: NanoUSD(7))
        clock.withLock { $0 = 5_000 }
        ledger.record(tenant: "a", kind: .promptCache, saved: NanoUSD(-3))
        let early = ledger.totals(from: 0, to: 2_000)
        #expect(early["a"]?[.exact] == SavingsLedger.Total(requests: 2, saved: NanoUSD(150)))
        #expect(early["a"]?[.promptCache] == nil && early["b"]?[.semantic]?.saved == NanoUSD(7))
        #expect(ledger.totals(from: 0, to: 9_000, tenant: "a")["a"]?[.promptCache]?.saved == NanoUSD(-3))
        #expect(ledger.totals(from: 0, to: 9_000, tenant: "a")["b"] == nil)
        // Past the retention, old minutes are dropped when new ones come in.
        clock.withLock { $0 = 5_000 + 7_200 }
        ledger.record(tenant: "c", kind: .exact, saved: NanoUSD(1))
        #expect(ledger.totals(from: 0, to: 3_000).isEmpty)
    }

    @Test func theSavingsEndpointReportsExactHitsAndPromptCaching() async throws {
        try await withTestGateway(environment: ["SWITCHYARD_ADMIN_KEY": "admin"]) { _, url in
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
