import AsyncHTTPClient
import MockProvider
import NIOCore
import NIOHTTP1
import Server
import ServerSentEvents
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// In-process integration tests: the gateway in front of the mock provider, both APIs, both directions.
@Suite struct GatewayIntegrationTests {
    static func openAIBody(_ model: String, stream: Bool = false, includeUsage: Bool = false, extra: String = "") -> String {
        let options = includeUsage ? #","stream_options":{"include_usage":true}"# : ""
        return #"{"model":"\#(model)","max_tokens":12,"stream":\#(stream)\#(options)\#(extra),"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"What is a gateway?"}]}"#
    }

    static func anthropicBody(_ model: String, stream: Bool = false, extra: String = "") -> String {
        #"{"model":"\#(model)","max_tokens":12,"stream":\#(stream)\#(extra),"system":"Be brief.","messages":[{"role":"user","content":"What is a gateway?"}]}"#
    }

    static func events(_ body: String) throws -> [ServerSentEvent] {
        var decoder = SSEDecoder()
        return try decoder.feed(ByteBuffer(string: body))
    }

    static func json(_ text: String) throws -> JSONValue { try JSONValue.parse(text) }

    // MARK: Complete answers

    @Test(arguments: ["gpt-4o-mini", "claude-haiku-4-5"])
    func openAIClientGetsAPricedCompletion(model: String) async throws {
        try await withTestGateway { gateway, url in
            let response = try await send("\(url)/v1/chat/completions", body: Self.openAIBody(model))
            #expect(response.status == 200)
            #expect(response.header("x-request-id")?.hasPrefix("req_") == true)
            #expect(response.header("x-switchyard-model") == model)
            let body = try Self.json(response.body)
            #expect(body["object"] == "chat.completion")
            let text = body["choices"]?.arrayValue?.first?["message"]?["content"]?.stringValue ?? ""
            #expect(text.split(separator: " ").count == 12)
            #expect(body["choices"]?.arrayValue?.first?["finish_reason"] == "length")
            let usage = try OpenAIFormat.parseResponse(body).usage
            #expect(usage.outputTokens == 12)
            #expect(usage.inputTokens > 0)
            let expected = gateway.config.models[model]!.price.cost(of: usage)
            #expect(response.header("x-switchyard-cost-usd") == expected.usdString)
        }
    }

    @Test(arguments: ["claude-haiku-4-5", "gpt-4o-mini"])
    func anthropicClientGetsAMessage(model: String) async throws {
        try await withTestGateway { gateway, url in
            let response = try await send("\(url)/v1/messages", body: Self.anthropicBody(model))
            #expect(response.status == 200)
            let body = try Self.json(response.body)
            #expect(body["type"] == "message")
            #expect(body["stop_reason"] == "max_tokens")
            #expect(body["content"]?.arrayValue?.first?["type"] == "text")
            let usage = try AnthropicFormat.parseResponse(body).usage
            #expect(usage.outputTokens == 12)
            #expect(response.header("x-switchyard-cost-usd") == gateway.config.models[model]!.price.cost(of: usage).usdString)
        }
    }

    @Test func translatedAndDirectAnswersCarryTheSameText() async throws {
        try await withTestGateway { _, url in
            // The mock's text depends only on the model and the prompt, so both APIs must see the same words.
            let viaOpenAI = try Self.json(try await send("\(url)/v1/chat/completions", body: Self.openAIBody("claude-haiku-4-5")).body)
            let viaAnthropic = try Self.json(try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-haiku-4-5")).body)
            #expect(viaOpenAI["choices"]?.arrayValue?.first?["message"]?["content"]
                == viaAnthropic["content"]?.arrayValue?.first?["text"])
        }
    }

    @Test func toolCallsCrossFormats() async throws {
        let tools = #","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#
        try await withTestGateway { _, url in
            let response = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("claude-haiku-4-5", extra: tools))
            let choice = try Self.json(response.body)["choices"]?.arrayValue?.first
            #expect(choice?["finish_reason"] == "tool_calls")
            let call = choice?["message"]?["tool_calls"]?.arrayValue?.first
            #expect(call?["function"]?["name"] == "get_weather")
            let arguments = try JSONValue.parse(call?["function"]?["arguments"]?.stringValue ?? "")
            #expect(arguments["city"]?.stringValue != nil)

            let anthropicTools = #","tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}]"#
            let message = try Self.json(try await send("\(url)/v1/messages", body: Self.anthropicBody("gpt-4o-mini", extra: anthropicTools)).body)
            #expect(message["stop_reason"] == "tool_use")
            #expect(message["content"]?.arrayValue?.first?["type"] == "tool_use")
            #expect(message["content"]?.arrayValue?.first?["input"]?["city"]?.stringValue != nil)
        }
    }

    // MARK: Streams

    @Test(arguments: ["gpt-4o-mini", "claude-haiku-4-5"])
    func openAIStreamsEndWithDoneAndUsageOnlyWhenAsked(model: String) async throws {
        try await withTestGateway { gateway, url in
            for includeUsage in [true, false] {
                let response = try await send("\(url)/v1/chat/completions", body: Self.openAIBody(model, stream: true, includeUsage: includeUsage))
                #expect(response.status == 200)
                #expect(response.header("content-type") == "text/event-stream")
                let events = try Self.events(response.body)
                #expect(events.last?.dataString == "[DONE]")
                let chunks = try events.dropLast().map { try Self.json($0.dataString) }
                #expect(chunks.allSatisfy { $0["object"] == "chat.completion.chunk" })
                let text = chunks.compactMap { $0["choices"]?.arrayValue?.first?["delta"]?["content"]?.stringValue }.joined()
                #expect(text.split(separator: " ").count == 12)
                let usageChunks = chunks.filter { $0["usage"].map { !$0.isNull } ?? false }
                #expect(usageChunks.count == (includeUsage ? 1 : 0))
                if includeUsage { #expect(usageChunks.first?["usage"]?["completion_tokens"] == 12) }
            }
            let metrics = String(decoding: gateway.metrics.render(), as: UTF8.self)
            #expect(metrics.contains("switchyard_cost_nano_usd_total{model=\"\(model)\"}"))
        }
    }

    @Test(arguments: ["claude-haiku-4-5", "gpt-4o-mini"])
    func anthropicStreamsFollowTheRealEventSequence(model: String) async throws {
        try await withTestGateway { _, url in
            let response = try await send("\(url)/v1/messages", body: Self.anthropicBody(model, stream: true))
            let events = try Self.events(response.body)
            let names = events.map { $0.event ?? "" }
            #expect(names.first == "message_start")
            #expect(Array(names.prefix(3)) == ["message_start", "content_block_start", "ping"])
            #expect(Array(names.suffix(3)) == ["content_block_stop", "message_delta", "message_stop"])
            #expect(names.filter { $0 == "content_block_delta" }.count == 12)
            let delta = try Self.json(events[events.count - 2].dataString)
            #expect(delta["delta"]?["stop_reason"] == "max_tokens")
            #expect(delta["usage"]?["output_tokens"] == 12)
        }
    }

    @Test func streamedCostIsRecordedWhenTheStreamEnds() async throws {
        try await withTestGateway { gateway, url in
            _ = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-sonnet-4-5", stream: true))
            let metrics = String(decoding: gateway.metrics.render(), as: UTF8.self)
            #expect(metrics.contains(#"switchyard_tokens_total{model="claude-sonnet-4-5",kind="output"} 12"#))
            #expect(metrics.contains(#"switchyard_time_to_first_token_seconds_count{api="anthropic",model="claude-sonnet-4-5"} 1"#))
        }
    }

    // MARK: Errors

    @Test func malformedJSONIsA400InEachEnvelope() async throws {
        try await withTestGateway { _, url in
            let openAI = try await send("\(url)/v1/chat/completions", body: "{\"model\": ")
            #expect(openAI.status == 400)
            #expect(try Self.json(openAI.body)["error"]?["type"] == "invalid_request_error")
            #expect(openAI.header("x-request-id") != nil)
            let anthropic = try await send("\(url)/v1/messages", body: "[1,2")
            #expect(anthropic.status == 400)
            let body = try Self.json(anthropic.body)
            #expect(body["type"] == "error")
            #expect(body["error"]?["type"] == "invalid_request_error")
        }
    }

    @Test func invalidFieldIsA400NamingTheParameter() async throws {
        try await withTestGateway { _, url in
            let response = try await send("\(url)/v1/chat/completions",
                                          body: #"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#)
            #expect(response.status == 400)
            #expect(try Self.json(response.body)["error"]?["param"] == "temperature")
            let missing = try await send("\(url)/v1/messages", body: #"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"x"}]}"#)
            #expect(missing.status == 400)
            #expect(try Self.json(missing.body)["error"]?["message"]?.stringValue?.contains("max_tokens") == true)
        }
    }

    @Test func unknownModelIsA404() async throws {
        try await withTestGateway { _, url in
            let openAI = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-7"))
            #expect(openAI.status == 404)
            #expect(try Self.json(openAI.body)["error"]?["code"] == "model_not_found")
            let anthropic = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-9"))
            #expect(anthropic.status == 404)
            #expect(try Self.json(anthropic.body)["error"]?["type"] == "not_found_error")
        }
    }

    @Test func oversizedBodyIsA413() async throws {
        var config = TestConfigs.embedded()
        config.maxBodyBytes = 4096
        try await withTestGateway(config) { _, url in
            let big = String(repeating: "x", count: 10_000)
            let response = try await send("\(url)/v1/chat/completions",
                                          body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\#(big)"}]}"#)
            #expect(response.status == 413)
            #expect(try Self.json(response.body)["error"]?["code"] == "payload_too_large")
            let anthropic = try await send("\(url)/v1/messages", body: #"{"model":"x","max_tokens":1,"messages":[{"role":"user","content":"\#(big)"}]}"#)
            #expect(anthropic.status == 413)
            #expect(try Self.json(anthropic.body)["error"]?["type"] == "request_too_large")
        }
    }

    @Test func wrongContentTypeIsA415() async throws {
        try await withTestGateway { _, url in
            let response = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini"), contentType: "text/plain")
            #expect(response.status == 415)
            #expect(try Self.json(response.body)["error"]?["code"] == "unsupported_media_type")
        }
    }

    @Test func keysAreCheckedWhenConfiguredInBothHeaderStyles() async throws {
        var config = TestConfigs.embedded()
        config.keys = [APIKeyEntry(sha256: KeyHash.sha256Hex("sk-good"), caller: Caller(tenant: "acme", user: "alice", keyID: "k"))]
        try await withTestGateway(config) { _, url in
            let missing = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini"))
            #expect(missing.status == 401)
            #expect(try Self.json(missing.body)["error"]?["type"] == "authentication_error")
            let wrong = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-haiku-4-5"), headers: [("x-api-key", "sk-bad")])
            #expect(wrong.status == 401)
            #expect(try Self.json(wrong.body)["error"]?["type"] == "authentication_error")
            let bearer = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-haiku-4-5"),
                                        headers: [("authorization", "Bearer sk-good")])
            #expect(bearer.status == 200)
            let apiKey = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini"), headers: [("x-api-key", "sk-good")])
            #expect(apiKey.status == 200)
        }
    }

    @Test func theClientKeyIsNeverForwardedUpstream() async throws {
        var config = TestConfigs.embedded()
        config.providers["mock"]?.apiKeyEnv = "MOCK_UPSTREAM_KEY"
        try await withTestGateway(config, environment: ["MOCK_UPSTREAM_KEY": "upstream-secret"]) { gateway, url in
            _ = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini"), headers: [("authorization", "Bearer client-secret")])
            _ = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-haiku-4-5"), headers: [("x-api-key", "client-secret")])
            let seen = gateway.mock!.currentStats.credentialsSeen
            #expect(seen == ["Bearer upstream-secret", "upstream-secret"])
        }
    }

    @Test(arguments: [("429", 429, 429), ("500", 500, 500), ("503", 503, 503), ("529", 503, 529), ("malformed-json", 502, 502)])
    func upstreamErrorsAreMappedFaithfully(_ testCase: (String, Int, Int)) async throws {
        let (fault, openAIStatus, anthropicStatus) = testCase
        try await withTestGateway(TestConfigs.withFaults([fault])) { _, url in
            let openAI = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini-\(fault)"))
            #expect(openAI.status == openAIStatus)
            #expect(try Self.json(openAI.body)["error"]?["message"]?.stringValue?.isEmpty == false)
            let anthropic = try await send("\(url)/v1/messages", body: Self.anthropicBody("claude-haiku-4-5-\(fault)"))
            #expect(anthropic.status == anthropicStatus)
            #expect(try Self.json(anthropic.body)["type"] == "error")
            if fault == "429" {
                #expect(openAI.header("retry-after") == "2")
                #expect(anthropic.header("retry-after") == "2")
                #expect(try Self.json(anthropic.body)["error"]?["type"] == "rate_limit_error")
            }
            if fault == "529" { #expect(try Self.json(anthropic.body)["error"]?["type"] == "overloaded_error") }
        }
    }

    @Test func silentUpstreamHitsTheFirstTokenTimeout() async throws {
        let config = TestConfigs.withFaults(["timeout"], timeouts: ProviderTimeouts(connect: .seconds(2), total: .seconds(10), firstToken: .milliseconds(300)))
        try await withTestGateway(config) { _, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o-mini-timeout", stream: true))
            #expect(response.status == 504)
            #expect(ContinuousClock.now - started < .seconds(3))
            #expect(try Self.json(response.body)["error"]?["code"] == "upstream_timeout")
        }
    }

    @Test func aStreamPastItsTotalTimeoutEndsWithAnErrorEvent() async throws {
        var config = TestConfigs.embedded()
        config.mockLatencyScale = 1  // gpt-4o: time to first token ~0.5 s (drawn per prompt), then ~80 tokens/s
        config.providers["mock"]?.timeouts = ProviderTimeouts(connect: .seconds(2), total: .milliseconds(800), firstToken: .seconds(2))
        try await withTestGateway(config) { _, url in
            // Each prompt draws its own timing. A stream that started must end in the timeout error event; one whose
            // first event came after the deadline is a plain 504. Most prompts stream well within the 800 ms.
            var streamedBeforeTheDeadline = 0
            for attempt in 0..<5 {
                let started = ContinuousClock.now
                let body = #"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Write a long essay, take \#(attempt)"}]}"#
                let response = try await send("\(url)/v1/chat/completions", body: body)
                #expect(ContinuousClock.now - started < .seconds(3))
                if response.status == 504 {
                    #expect(try Self.json(response.body)["error"]?["code"] == "upstream_timeout")
                    continue
                }
                let events = try Self.events(response.body)
                #expect(!events.contains { $0.dataString == "[DONE]" })
                #expect(try Self.json(events.last?.dataString ?? "{}")["error"]?["code"] == "upstream_timeout")
                if events.count > 2 { streamedBeforeTheDeadline += 1 }
            }
            #expect(streamedBeforeTheDeadline > 0)
        }
    }

    @Test(arguments: ["disconnect-mid-stream", "error-in-stream", "malformed-json"])
    func aStreamCutUpstreamEndsWithAnErrorEventNeverACleanFinish(fault: String) async throws {
        try await withTestGateway(TestConfigs.withFaults([fault])) { _, url in
            for model in ["gpt-4o-mini-\(fault)", "claude-haiku-4-5-\(fault)"] {
                let openAI = try Self.events(try await send("\(url)/v1/chat/completions", body: Self.openAIBody(model, stream: true)).body)
                #expect(!openAI.contains { $0.dataString == "[DONE]" })
                #expect(try Self.json(openAI.last?.dataString ?? "{}")["error"]?["type"] == "server_error", "\(model) \(openAI.suffix(2).map(\.dataString))")
                let anthropic = try Self.events(try await send("\(url)/v1/messages", body: Self.anthropicBody(model, stream: true)).body)
                #expect(anthropic.last?.event == "error", "\(model)")
                #expect(!anthropic.contains { $0.event == "message_stop" })
            }
        }
    }

    @Test func aClientThatDisconnectsCancelsTheUpstreamStream() async throws {
        var config = TestConfigs.embedded()
        config.mockLatencyScale = 1  // 200+ tokens at ~110 tokens/s: the stream is still running when the client leaves
        try await withTestGateway(config) { gateway, url in
            let firstChunk = ReadySignal<Void>()
            let client = Task {
                var request = HTTPClientRequest(url: "\(url)/v1/chat/completions")
                request.method = .POST
                request.headers.add(name: "content-type", value: "application/json")
                request.body = .bytes(ByteBuffer(string: #"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Write a long essay"}]}"#))
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                var iterator = response.body.makeAsyncIterator()
                _ = try await iterator.next()
                firstChunk.set(())
                try await Task.sleep(for: .seconds(60))
            }
            await firstChunk.wait()
            client.cancel()
            _ = await client.result
            let deadline = ContinuousClock.now + .seconds(10)
            while gateway.mock!.currentStats.streamsCancelled == 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(gateway.mock!.currentStats.streamsCancelled == 1)
            #expect(gateway.mock!.currentStats.streamsCompleted == 0)
            // The upstream never reported usage (OpenAI-style streams report it last): the stream is still priced,
            // from the request's size and the output relayed before the client left.
            var metrics = ""
            while !metrics.contains("switchyard_estimated_usage_streams_total 1"), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
                metrics = String(decoding: gateway.metrics.render(), as: UTF8.self)
            }
            #expect(metrics.contains("switchyard_estimated_usage_streams_total 1"))
            let cost = metrics.split(separator: "\n").first { $0.hasPrefix(#"switchyard_cost_nano_usd_total{model="gpt-4o"}"#) }
            #expect((cost?.split(separator: " ").last.flatMap { Int($0) } ?? 0) > 0, "\(cost ?? "no cost line")")
            let input = metrics.split(separator: "\n").first { $0.hasPrefix(#"switchyard_tokens_total{model="gpt-4o",kind="input"}"#) }
            #expect(input?.hasSuffix(" 5") == true, "\(input ?? "no input line")")  // "Write a long essay": 18 bytes
        }
    }

    // MARK: Other endpoints

    @Test func modelsHealthReadinessAndMetrics() async throws {
        try await withTestGateway { _, url in
            let models = try Self.json(try await send("\(url)/v1/models", method: "GET").body)
            // The catalog's models and the embedded default's routes.
            #expect(models["data"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == (DefaultCatalog.models.map(\.name) + ["auto", "auto-cascade"]).sorted())
            #expect(try await send("\(url)/healthz", method: "GET").status == 200)
            #expect(try await send("\(url)/readyz", method: "GET").status == 200)
            _ = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("gpt-4o"))
            _ = try await send("\(url)/v1/chat/completions", body: Self.openAIBody("nope"))
            let metrics = try await send("\(url)/metrics", method: "GET")
            #expect(metrics.header("content-type")?.hasPrefix("text/plain") == true)
            #expect(metrics.body.contains(#"switchyard_requests_total{api="openai",status="200",stream="false"} 1"#))
            #expect(metrics.body.contains(#"switchyard_errors_total{api="openai",code="model_not_found"} 1"#))
            #expect(metrics.body.contains("switchyard_gateway_overhead_seconds_bucket"))
            #expect(metrics.body.contains(#"switchyard_tokens_total{model="gpt-4o",kind="output"} 12"#))
            #expect(!metrics.body.contains("nope"))
            #expect(metrics.header("x-request-id") != nil)
            let unknown = try await send("\(url)/v1/embeddingz", method: "GET")
            #expect(unknown.status == 404)
            #expect(try Self.json(unknown.body)["error"]?["code"] == "not_found")
            let wrongMethod = try await send("\(url)/v1/messages", method: "GET")
            #expect([404, 405].contains(wrongMethod.status))
            #expect(try Self.json(wrongMethod.body)["type"] == "error")
            #expect(!metrics.body.contains("gateway?"))
        }
    }
}
