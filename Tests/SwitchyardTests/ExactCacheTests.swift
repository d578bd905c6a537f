import Caching
import Foundation
import MockProvider
import Server
import NIOCore
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The exact response cache: its key, its store, stream assembly and replay, and its behaviour through the gateway.
@Suite struct ExactCacheTests {
    static func request(_ text: String = "What is the capital of France?", temperature: Double? = 0.2,
                        format: APIFormat = .openAI) -> ChatRequest {
        ChatRequest(model: "gpt-4o-mini", system: format == .anthropic ? [.text("Be brief.")] : [],
                    messages: [ChatMessage(role: .user, content: [.text(text)])], maxTokens: 50, temperature: temperature,
                    sourceFormat: format)
    }

    @Test func theKeySeparatesEverythingThatChangesTheAnswer() {
        let base = Self.request()
        let key = ExactCacheKey.make(base, tenant: "a", promptVersion: nil)
        #expect(key.count == 64)
        #expect(ExactCacheKey.make(base, tenant: "a", promptVersion: nil) == key)

        // What does not change the answer shares the entry.
        var streamed = base
        streamed.stream = true
        streamed.streamIncludeUsage = true
        streamed.user = "end-user-7"
        #expect(ExactCacheKey.make(streamed, tenant: "a", promptVersion: nil) == key)

        // Everything else gets its own entry.
        var variants: [(String, ChatRequest, String, String?)] = [
            ("tenant", base, "b", nil), ("prompt version", base, "a", "v2"),
            ("temperature", Self.request(temperature: 0.3), "a", nil), ("no temperature", Self.request(temperature: nil), "a", nil),
            ("message", Self.request("What is the capital of Spain?"), "a", nil),
            ("format", Self.request(format: .anthropic), "a", nil),
        ]
        var model = base
        model.model = "gpt-4o"
        variants.append(("model", model, "a", nil))
        var tools = base
        tools.tools = [ToolDefinition(name: "lookup", description: "Look a city up", inputSchema: ["type": "object"])]
        variants.append(("tools", tools, "a", nil))
        var unknown = base
        unknown.extras = ["frequency_penalty": .double(0.5)]
        variants.append(("a parameter the gateway does not interpret", unknown, "a", nil))
        var format = base
        format.responseFormat = ["type": "json_object"]
        variants.append(("response format", format, "a", nil))
        var stop = base
        stop.stop = ["\n"]
        variants.append(("stop", stop, "a", nil))
        var limit = base
        limit.maxTokens = 51
        variants.append(("max tokens", limit, "a", nil))
        var system = base
        system.messages.insert(ChatMessage(role: .system, content: [.text("Answer in French.")]), at: 0)
        variants.append(("system prompt", system, "a", nil))
        var keys: Set<String> = [key]
        for (name, request, tenant, version) in variants {
            let variant = ExactCacheKey.make(request, tenant: tenant, promptVersion: version)
            #expect(!keys.contains(variant), "\(name) should change the key")
            keys.insert(variant)
        }
    }

    static func answer(_ text: String, tenant: String = "t", expires: ContinuousClock.Instant) -> CachedAnswer {
        let response = ChatResponse(id: "r", model: "m", choices: [ChatChoice(content: [.text(text)], stopReason: .endTurn)],
                                    usage: Usage(inputTokens: 3, outputTokens: 4))
        return CachedAnswer(tenant: tenant, model: "m", response: response, raw: nil, cost: NanoUSD(10), storedAt: .now,
                            expiresAt: expires)
    }

    @Test func theStoreIsBoundedByEntriesAndBytesAndHonoursTTL() {
        let later = ContinuousClock.now + .seconds(60)
        let store = InMemoryExactCache(maxEntries: 3, maxBytes: 1 << 20)
        for index in 0..<3 { store.put("k\(index)", Self.answer("answer \(index)", expires: later)) }
        _ = store.get("k0", now: .now)  // k0 is now the most recently used: k1 goes first
        store.put("k3", Self.answer("answer 3", expires: later))
        #expect(store.count == 3)
        #expect(store.get("k1", now: .now) == nil)
        #expect(store.get("k0", now: .now) != nil && store.get("k3", now: .now) != nil)

        // Expired entries are not served, and are dropped when met.
        store.put("old", Self.answer("stale", expires: .now - .seconds(1)))
        #expect(store.get("old", now: .now) == nil)

        // The byte bound: big answers push out old ones; one larger than the bound is not kept at all.
        let small = InMemoryExactCache(maxEntries: 100, maxBytes: 4096)
        for index in 0..<10 { small.put("b\(index)", Self.answer(String(repeating: "x", count: 1000), expires: later)) }
        #expect(small.bytes <= 4096)
        #expect(small.count < 10 && small.get("b9", now: .now) != nil && small.get("b0", now: .now) == nil)
        small.put("huge", Self.answer(String(repeating: "y", count: 10_000), expires: later))
        #expect(small.get("huge", now: .now) == nil)

        // Per-tenant removal.
        let tenants = InMemoryExactCache(maxEntries: 10, maxBytes: 1 << 20)
        tenants.put("x1", Self.answer("a", tenant: "x", expires: later))
        tenants.put("x2", Self.answer("b", tenant: "x", expires: later))
        tenants.put("y1", Self.answer("c", tenant: "y", expires: later))
        #expect(tenants.removeAll(tenant: "x") == 2)
        #expect(tenants.count == 1 && tenants.get("y1", now: .now) != nil)
    }

    @Test func aReplayedAnswerAssemblesBackToItself() {
        let text = "Paris is the capital of France, and it has been for a very long time indeed."
        let response = ChatResponse(id: "chatcmpl-1", model: "gpt-4o-mini", choices: [
            ChatChoice(content: [.text(text), .toolUse(id: "call_1", name: "lookup", arguments: #"{"city":"Paris","country":"France"}"#)],
                       stopReason: .toolUse),
        ], usage: Usage(inputTokens: 12, outputTokens: 30, cacheReadTokens: 4))
        let events = AnswerReplay.events(response)
        #expect(events.count > 6)  // re-chunked: several text pieces, not one
        #expect(events.allSatisfy { $0.raw == nil })
        var assembler = AnswerAssembler()
        for event in events { assembler.add(event.chunks) }
        #expect(assembler.response() == response)

        // An answer whose end never came is not complete.
        var cut = AnswerAssembler()
        for event in events.dropLast(2) { cut.add(event.chunks) }
        #expect(cut.response() == nil)
    }

    @Test func assemblingALongStreamIsLinear() {
        // 40,000 text chunks and 40,000 argument fragments: appending each to the text so far copied it
        // (quadratic: about 8·10^9 bytes moved); kept as fragments and joined once, this is milliseconds.
        var assembler = AnswerAssembler()
        assembler.add([.start(id: "c", model: "m", usage: nil)])
        for index in 0..<40_000 { assembler.add([.text(choice: 0, "word\(index % 10) ")]) }
        assembler.add([.toolCallStart(choice: 0, index: 0, id: "call", name: "f")])
        for _ in 0..<40_000 { assembler.add([.toolCallArguments(choice: 0, index: 0, "ab")]) }
        let started = ContinuousClock.now
        assembler.add([.finish(choice: 0, .toolUse)])
        let response = assembler.response()
        #expect(ContinuousClock.now - started < .seconds(2))
        guard case .text(let text, _)? = response?.choices.first?.content.first,
              case .toolUse(_, _, let arguments)? = response?.choices.first?.content.last
        else {
            Issue.record("no text and tool call")
            return
        }
        #expect(text.utf8.count == 40_000 * 6 && text.hasPrefix("word0 word1 "))
        #expect(arguments.utf8.count == 80_000)
    }

    // MARK: Through the gateway

    static let body = #"{"model":"gpt-4o-mini","max_tokens":40,"temperature":0.2,"messages":[{"role":"user","content":"Name three rivers in Europe."}]}"#

    static func content(_ body: String) -> String? {
        (try? JSONValue.parse(Array(body.utf8)))?["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue
    }

    @Test func aRepeatedRequestIsAnsweredFromTheCacheAtNoCost() async throws {
        try await withTestGateway { gateway, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body, headers: [("authorization", "Bearer k1")])
            #expect(first.status == 200 && first.header("x-switchyard-cache") == "miss")
            #expect((Double(first.header("x-switchyard-cost-usd") ?? "") ?? 0) > 0)
            let upstreamCalls = gateway.mock?.currentStats.requests
            let second = try await send("\(url)/v1/chat/completions", body: Self.body, headers: [("authorization", "Bearer k1")])
            #expect(second.status == 200 && second.header("x-switchyard-cache") == "hit-exact")
            #expect(second.header("x-switchyard-cost-usd") == "0.000000000")
            #expect(Self.content(second.body) != nil && Self.content(second.body) == Self.content(first.body))
            let usage = { (body: String) in (try? JSONValue.parse(Array(body.utf8)))?["usage"] }
            #expect(usage(second.body) == usage(first.body))
            #expect(gateway.mock?.currentStats.requests == upstreamCalls)

            // Another tenant, or another temperature, is a miss.
            let otherTenant = try await send("\(url)/v1/chat/completions", body: Self.body, headers: [("authorization", "Bearer k2")])
            #expect(otherTenant.header("x-switchyard-cache") == "miss")
            let warmer = Self.body.replacingOccurrences(of: "0.2", with: "0.9")
            let otherTemperature = try await send("\(url)/v1/chat/completions", body: warmer, headers: [("authorization", "Bearer k1")])
            #expect(otherTemperature.header("x-switchyard-cache") == "miss")
            #expect(await metricsText(url).contains(#"switchyard_cache_requests_total{cache="exact",result="hit"} 1"#))
        }
    }

    @Test func aHitIsReplayedAsAStreamWithTheRealEventSequence() async throws {
        try await withTestGateway { _, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body)
            let text = try #require(Self.content(first.body))
            let streamed = Self.body.replacingOccurrences(of: #""max_tokens":40"#,
                                                          with: #""max_tokens":40,"stream":true,"stream_options":{"include_usage":true}"#)
            let replay = try await send("\(url)/v1/chat/completions", body: streamed)
            #expect(replay.header("x-switchyard-cache") == "hit-exact")
            #expect(replay.header("content-type") == "text/event-stream")
            let events = replay.body.components(separatedBy: "\n\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
            #expect(events.last == "[DONE]")
            let chunks = events.dropLast().compactMap { try? JSONValue.parse(Array($0.utf8)) }
            let deltas = chunks.compactMap { $0["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue }
            #expect(deltas.count > 1)
            #expect(deltas.joined() == text)
            let finish = (try? JSONValue.parse(Array(first.body.utf8)))?["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue
            #expect(finish != nil)
            #expect(chunks.contains { $0["choices"]?.arrayValue?.first?["finish_reason"]?.stringValue == finish }, "\(replay.body)")
            #expect(chunks.last?["usage"]?["completion_tokens"]?.intValue
                    == (try? JSONValue.parse(Array(first.body.utf8)))?["usage"]?["completion_tokens"]?.intValue)
        }
    }

    @Test func aCleanStreamIsStoredAndServedToTheAnthropicAPI() async throws {
        try await withTestGateway { gateway, url in
            let body = #"{"model":"claude-haiku-4-5","max_tokens":30,"stream":true,"messages":[{"role":"user","content":"Say something about tea."}]}"#
            let live = try await send("\(url)/v1/messages", body: body)
            #expect(live.header("x-switchyard-cache") == "miss")
            let calls = gateway.mock?.currentStats.requests
            let whole = try await send("\(url)/v1/messages", body: body.replacingOccurrences(of: #","stream":true"#, with: ""))
            #expect(whole.header("x-switchyard-cache") == "hit-exact")
            #expect(gateway.mock?.currentStats.requests == calls)
            let liveText = live.body.components(separatedBy: "\n").filter { $0.hasPrefix("data: ") }
                .compactMap { try? JSONValue.parse(Array($0.dropFirst(6).utf8)) }
                .compactMap { $0["delta"]?["text"]?.stringValue }.joined()
            let message = try JSONValue.parse(Array(whole.body.utf8))
            #expect(message["content"]?.arrayValue?.first?["text"]?.stringValue == liveText)
            #expect(message["type"]?.stringValue == "message" && message["stop_reason"]?.stringValue != nil)

            // Replayed as an Anthropic stream: the whole event sequence, from message_start to message_stop.
            let replay = try await send("\(url)/v1/messages", body: body)
            #expect(replay.header("x-switchyard-cache") == "hit-exact")
            let names = replay.body.components(separatedBy: "\n").filter { $0.hasPrefix("event: ") }.map { $0.dropFirst(7) }
            #expect(names.first == "message_start" && names.last == "message_stop")
            #expect(names.contains("content_block_delta") && names.contains("message_delta"))
        }
    }

    @Test func errorsAndCutStreamsAreNeverStored() async throws {
        try await withTestGateway(TestConfigs.withFaults(["500", "disconnect-mid-stream"])) { gateway, url in
            let failing = Self.body.replacingOccurrences(of: #""gpt-4o-mini""#, with: #""gpt-4o-mini-500""#)
            for _ in 0..<2 {
                let response = try await send("\(url)/v1/chat/completions", body: failing)
                #expect(response.status == 500)
            }
            let cut = Self.body.replacingOccurrences(of: #""gpt-4o-mini""#, with: #""gpt-4o-mini-disconnect-mid-stream""#)
                .replacingOccurrences(of: #""max_tokens":40"#, with: #""max_tokens":40,"stream":true"#)
            for _ in 0..<2 {
                let response = try await send("\(url)/v1/chat/completions", body: cut)
                #expect(response.header("x-switchyard-cache") == "miss")
                #expect(!response.body.contains("[DONE]"))
            }
            // Every one of the four reached the provider.
            #expect(gateway.mock?.currentStats.requests == 4)
        }
    }

    @Test func cacheControlSkipsTheLookupOrTheCache() async throws {
        try await withTestGateway { _, url in
            let noStore = try await send("\(url)/v1/chat/completions", body: Self.body, headers: [("cache-control", "no-store")])
            #expect(noStore.header("x-switchyard-cache") == "bypass")
            // Nothing was stored: the next plain request is a miss (and stores).
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "miss")
            // no-cache: looks nothing up, still stores.
            let noCache = try await send("\(url)/v1/chat/completions", body: Self.body, headers: [("cache-control", "no-cache")])
            #expect(noCache.header("x-switchyard-cache") == "miss")
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "hit-exact")
            // A new prompt version never hits answers made under another.
            let versioned = try await send("\(url)/v1/chat/completions", body: Self.body,
                                           headers: [("x-switchyard-prompt-version", "2026-11-27")])
            #expect(versioned.header("x-switchyard-cache") == "miss")
            // A TTL of zero seconds: answered, not kept.
            let other = Self.body.replacingOccurrences(of: "three", with: "four")
            #expect(try await send("\(url)/v1/chat/completions", body: other, headers: [("x-switchyard-cache-ttl", "0")])
                .header("x-switchyard-cache") == "miss")
            #expect(try await send("\(url)/v1/chat/completions", body: other).header("x-switchyard-cache") == "miss")
        }
    }

    @Test func aModelWithATTLOfZeroIsNotCached() async throws {
        var config = TestConfigs.embedded()
        config.cache.modelTTL["gpt-4o-mini"] = .zero
        try await withTestGateway(config) { _, url in
            for _ in 0..<2 {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body)
                #expect(response.header("x-switchyard-cache") == "bypass")
            }
        }
    }

    func metricsText(_ url: String) async -> String {
        (try? await send("\(url)/metrics", method: "GET", body: nil, contentType: nil).body) ?? ""
    }
}
