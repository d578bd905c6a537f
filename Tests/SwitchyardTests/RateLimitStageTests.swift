import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Limits
import Logging
@testable import Server
import SwitchyardCore
import Stages
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// Limits through the gateway: reserved before the call, refused with the limit named and an honest retry-after,
/// settled with the real usage (completions, streams), given back on errors; cache hits are free.
@Suite(.serialized) struct RateLimitStageTests {
    static func body(_ text: String, maxTokens: Int = 50, stream: Bool = false, model: String = "gpt-4o-mini") -> String {
        #"{"model":"\#(model)","max_tokens":\#(maxTokens),"stream":\#(stream),"messages":[{"role":"user","content":"\#(text)"}]}"#
    }

    @Test func requestsPastALimitAreRefusedWithTheLimitNamedAndCacheHitsAreFree() async throws {
        var config = TestConfigs.embedded()
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 2, window: .minute, scope: [.user])]
        try await withTestGateway(config) { _, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body("one"))
            #expect(first.status == 200)
            #expect(first.header("x-ratelimit-limit-requests") == "2" && first.header("x-ratelimit-remaining-requests") == "1")
            #expect(first.header("x-ratelimit-reset-requests") == "30s", "\(String(describing: first.header("x-ratelimit-reset-requests")))")
            // The same question again is an exact hit: not counted.
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("one"))
            #expect(hit.status == 200 && hit.header("x-switchyard-cache") == "hit-exact")
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("two")).status == 200)
            let refused = try await send("\(url)/v1/chat/completions", body: Self.body("three"))
            #expect(refused.status == 429)
            #expect(refused.body.contains("per-user") && refused.body.contains("2 requests per minute per user"), "\(refused.body)")
            // Two spent at once of 2 a minute: one is back 30 s later.
            let retry = Int(refused.header("retry-after") ?? "") ?? 0
            #expect((29...31).contains(retry), "retry-after \(retry)")
            // In the Anthropic envelope for an Anthropic client; another user is not affected.
            let anthropic = try await send("\(url)/v1/messages", body: Self.body("four"), headers: [("anthropic-version", "2023-06-01")])
            #expect(anthropic.status == 429 && anthropic.body.contains(#""type":"error""#), "\(anthropic.body)")
            #expect(anthropic.header("anthropic-ratelimit-requests-limit") == "2")
            #expect(anthropic.header("anthropic-ratelimit-requests-remaining") == "0")
            #expect(anthropic.header("anthropic-ratelimit-requests-reset")?.hasSuffix("Z") == true)
            #expect(anthropic.header("x-ratelimit-limit-requests") == nil, "each API its own headers")
            #expect(refused.header("x-ratelimit-remaining-requests") == "0")
            let other = try await send("\(url)/v1/chat/completions", body: Self.body("five"), headers: [("authorization", "Bearer someone-else")])
            #expect(other.status == 200)
            // GET /v1/limits: the caller's own, with what is left now.
            let mine = try await send("\(url)/v1/limits", method: "GET", headers: [("authorization", "Bearer someone-else")], contentType: nil)
            #expect(mine.status == 200 && mine.body.contains(#""name":"per-user""#) && mine.body.contains(#""remaining":1"#), "\(mine.body)")
        }
    }

    @Test func theAdminSeesAnyonesLimitsAndACallerOnlyItsOwn() async throws {
        var config = TestConfigs.embedded()
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 5, window: .minute, scope: [.user]),
                         LimitDefinition(name: "per-model", measure: .requests, amount: 9, window: .minute, scope: [.model])]
        try await withTestGateway(config, environment: ["SWITCHYARD_ADMIN_KEY": "admin-secret"]) { _, url in
            let auth = [("authorization", "Bearer alice")]
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("hello"), headers: auth).status == 200)
            let admin = [("authorization", "Bearer admin-secret")]
            let missing = try await send("\(url)/v1/limits", method: "GET", headers: admin, contentType: nil)
            #expect(missing.status == 400 && missing.body.contains("tenant"), "\(missing.body)")
            // Her own: 4 of 5 left; the per-model limit only when a model is named.
            let mine = try await send("\(url)/v1/limits", method: "GET", headers: auth, contentType: nil)
            #expect(mine.body.contains(#""remaining":4"#) && !mine.body.contains("per-model"), "\(mine.body)")
            let withModel = try await send("\(url)/v1/limits?model=gpt-4o-mini", method: "GET", headers: auth, contentType: nil)
            #expect(withModel.body.contains("per-model") && withModel.body.contains(#""remaining":8"#), "\(withModel.body)")
            let someone = try await send("\(url)/v1/limits?tenant=nobody", method: "GET", headers: admin, contentType: nil)
            #expect(someone.status == 200 && someone.body.contains(#""remaining":5"#), "\(someone.body)")
            #expect(try await send("\(url)/v1/limits", method: "POST", body: "{}").status == 405)
        }
    }

    @Test func aLimitThatCountsAllRequestsCountsCacheHitsToo() async throws {
        var config = TestConfigs.embedded()
        config.limits = [LimitDefinition(name: "all", measure: .requests, amount: 2, window: .minute, scope: [.user], countsAllRequests: true)]
        try await withTestGateway(config) { _, url in
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("same")).status == 200)
            let hit = try await send("\(url)/v1/chat/completions", body: Self.body("same"))
            #expect(hit.status == 200 && hit.header("x-switchyard-cache") == "hit-exact")
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("same")).status == 429)
        }
    }

    @Test func tokensAreSettledWithTheRealUsageForCompletionsAndStreams() async throws {
        var config = TestConfigs.embedded()
        // 5,000 tokens a minute; each request reserves its prompt plus 4,000, and uses far less.
        config.limits = [LimitDefinition(name: "tokens", measure: .totalTokens, amount: 5_000, window: .minute, scope: [.tenant])]
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        try await withTestGateway(config) { _, url in
            for index in 0..<4 {
                let stream = index % 2 == 1
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("question \(index)", maxTokens: 4000, stream: stream))
                #expect(response.status == 200, "request \(index): \(response.body.prefix(200))")
                #expect(response.header("x-ratelimit-limit-tokens") == "5000")
                #expect(Int(response.header("x-ratelimit-remaining-tokens") ?? "") ?? 5000 < 1000, "4,000 and the prompt reserved")
                // Settled off the request path: a moment for it.
                try await Task.sleep(for: .milliseconds(100))
            }
            // A reservation past the whole limit is refused for good.
            let huge = try await send("\(url)/v1/chat/completions", body: Self.body("huge", maxTokens: 6000))
            #expect(huge.status == 429 && huge.body.contains("needs more than"), "\(huge.body)")
        }
    }

    @Test func aFailedRequestGivesItsReservationBack() async throws {
        var config = TestConfigs.withFaults(["500"])
        config.limits = [LimitDefinition(name: "one", measure: .requests, amount: 1, window: .minute, scope: [.tenant])]
        try await withTestGateway(config) { _, url in
            let failed = try await send("\(url)/v1/chat/completions", body: Self.body("fails", model: "gpt-4o-mini-500"))
            #expect(failed.status >= 500)
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("works")).status == 200)
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("refused")).status == 429)
        }
    }

    /// A small request's status, asked again every 20 ms for up to two seconds until it is a 200 (a permit comes
    /// back when its request is settled, just after the answer).
    static func statusOnceAdmitted(_ url: String, _ text: String) async throws -> Int {
        var status = 0
        for _ in 0..<100 {
            status = try await send("\(url)/v1/chat/completions", body: Self.body(text, maxTokens: 20)).status
            if status == 200 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        return status
    }

    /// What `GET /v1/limits` says is left of the limit named (the anonymous embedded caller's).
    static func remaining(_ url: String, _ name: String) async throws -> Int64? {
        let body = try await send("\(url)/v1/limits?model=gpt-4o-mini", method: "GET", contentType: nil).body
        guard let limits = try JSONValue.parse(Array(body.utf8))["limits"]?.arrayValue else { return nil }
        return limits.first { $0["name"]?.stringValue == name }?["remaining"]?.intValue
    }

    @Test func everyFailureGivesThePermitBackAndSettlesOnlyWhatWasUsed() async throws {
        let faults = ["500", "503", "timeout", "disconnect-mid-stream", "error-in-stream", "malformed-json"]
        var config = TestConfigs.withFaults(faults, timeouts: ProviderTimeouts(connect: .seconds(2), total: .milliseconds(800),
                                                                             firstToken: .milliseconds(500), idle: .milliseconds(500)))
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        // One request in flight at a time: a permit that leaked refuses every request after it.
        config.limits = [LimitDefinition(name: "inflight", measure: .concurrent, amount: 1, window: nil, scope: [.tenant]),
                         LimitDefinition(name: "tokens", measure: .totalTokens, amount: 1_000_000, window: .hour, scope: [.tenant])]
        try await withTestGateway(config) { _, url in
            var reserved: Int64 = 0
            for fault in faults {
                // Those two cut streams only (a whole answer is unaffected).
                for stream in ["disconnect-mid-stream", "error-in-stream"].contains(fault) ? [true] : [false, true] {
                    let failed = try await send("\(url)/v1/chat/completions",
                                                body: Self.body("fault \(fault) \(stream)", maxTokens: 5000, stream: stream, model: "gpt-4o-mini-\(fault)"))
                    #expect(failed.status != 200 || failed.body.contains("error"), "\(fault) stream \(stream): \(failed.status)")
                    reserved += 5000
                    // The permit is back as soon as the failure is settled (off the request path: a moment).
                    #expect(try await Self.statusOnceAdmitted(url, "after \(fault) \(stream)") == 200,
                            "after \(fault) (stream \(stream)) the permit did not come back")
                }
            }
            try await Task.sleep(for: .milliseconds(100))
            // 50,000 tokens were reserved for the failures; what stays counted is what was used (prompts and what
            // streamed before a cut, and the successful requests of 20 tokens each), far less.
            let left = try await Self.remaining(url, "tokens") ?? 0
            #expect(1_000_000 - left < 5_000, "\(1_000_000 - left) tokens still counted of \(reserved) reserved")
            #expect(try await Self.remaining(url, "inflight") == 1)
        }
    }

    @Test func aClientThatGoesAwayMidStreamGivesThePermitBack() async throws {
        var config = TestConfigs.embedded()
        config.mockLatencyScale = 1
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        config.limits = [LimitDefinition(name: "inflight", measure: .concurrent, amount: 1, window: nil, scope: [.tenant]),
                         LimitDefinition(name: "tokens", measure: .totalTokens, amount: 1_000_000, window: .hour, scope: [.tenant])]
        try await withTestGateway(config) { _, url in
            let streaming = Locked(false)
            let reader = Task {
                var request = HTTPClientRequest(url: "\(url)/v1/chat/completions")
                request.method = .POST
                request.headers.add(name: "content-type", value: "application/json")
                request.body = .bytes(ByteBuffer(string: Self.body("a long story please", maxTokens: 2000, stream: true)))
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                #expect(response.status == .ok)
                var chunks = 0
                for try await _ in response.body {
                    chunks += 1
                    streaming.withLock { $0 = true }
                    // Reading on until cancelled: the client goes away mid-stream.
                }
                return chunks
            }
            for _ in 0..<500 where !streaming.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
            #expect(streaming.withLock { $0 }, "the stream never started")
            // While it streams, the one permit is taken.
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body("meanwhile", maxTokens: 20)).status == 429)
            reader.cancel()
            _ = await reader.result
            #expect(try await Self.statusOnceAdmitted(url, "after") == 200, "the abandoned stream kept its permit")
            // Settled with what streamed before the client left, not the 2,000 reserved.
            let used = 1_000_000 - (try await Self.remaining(url, "tokens") ?? 0)
            #expect(used > 0 && used < 2_000, "\(used) tokens counted")
        }
    }

    @Test func aStreamLongerThanThePermitsLeaseKeepsItsPermitUntilItEnds() async throws {
        // The stage alone, on a fake clock: the lease is 300 ms of it, renewed every 100 ms of real time.
        let ledger = LimitLedger()
        let planner = LimitPlanner(definitions: [LimitDefinition(name: "inflight", measure: .concurrent, amount: 1, window: nil,
                                                                 scope: [.tenant])], permitTTL: 300_000_000)
        let now = Locked<Int64>(1_000_000_000_000)
        let stage = RateLimitStage(planner: planner, store: ledger, clock: { now.withLock { $0 } })
        var context = GatewayContext(requestID: "r", logger: Logger(label: "t"), clientFormat: .openAI)
        context.caller = Caller(tenant: "t", user: "u", keyID: "k")
        context.route = TestConfigs.embedded().models["gpt-4o-mini"]
        let request = ChatRequest(model: "gpt-4o-mini", messages: [ChatMessage(role: .user, content: [.text("hi")])], maxTokens: 10,
                                  stream: true, sourceFormat: .openAI)
        let response = try await stage.handle(request, context: context) { _, _ in
            .stream(ChatStream(format: .openAI, next: { nil }))
        }
        guard case .stream(let stream) = response else {
            Issue.record("not a stream")
            return
        }
        let counter = planner.plan(caller: context.caller!, model: "gpt-4o-mini",
                                   estimate: .init(inputTokens: 1, outputTokens: 1, spend: .zero))[0].demand.key
        // Two lease times pass on the clock, renewed as they go: still held.
        for _ in 0..<6 {
            now.withLock { $0 += 100_000_000 }
            try await Task.sleep(for: .milliseconds(120))
        }
        #expect(ledger.remaining(counter, now: now.withLock { $0 }) == 0, "the permit expired under a running stream")
        stream.lifecycle.end(.completed)
        try await Task.sleep(for: .milliseconds(50))
        #expect(ledger.remaining(counter, now: now.withLock { $0 }) == 1, "released when the stream ended")
        // No renewal after the end takes it again.
        try await Task.sleep(for: .milliseconds(250))
        #expect(ledger.remaining(counter, now: now.withLock { $0 }) == 1)
    }

    @Test func resetTimesAreWrittenAsEachAPIWritesThem() {
        #expect(ErrorRenderer.openAIDuration(350_000_000) == "350ms")
        #expect(ErrorRenderer.openAIDuration(1) == "1ms" && ErrorRenderer.openAIDuration(0) == "0ms" && ErrorRenderer.openAIDuration(-5) == "0ms")
        #expect(ErrorRenderer.openAIDuration(1_000_000_000) == "1s")
        #expect(ErrorRenderer.openAIDuration(360_000_000_000) == "6m0s")
        #expect(ErrorRenderer.openAIDuration(3_723_500_000_000) == "1h2m4s")
        #expect(ErrorRenderer.openAIDuration(.max).hasSuffix("s"))
        #expect(ErrorRenderer.rfc3339(1_796_083_200) == "2026-12-01T00:00:00Z")
        #expect(ErrorRenderer.rfc3339(1_709_251_199.2) == "2024-02-29T23:59:59Z" || ErrorRenderer.rfc3339(1_709_251_199.2) == "2024-03-01T00:00:00Z")
        #expect(ErrorRenderer.rfc3339(951_782_400) == "2000-02-29T00:00:00Z")
        #expect(ErrorRenderer.rfc3339(.infinity) == "9999-12-31T23:59:59Z" && ErrorRenderer.rfc3339(.nan) == "1970-01-01T00:00:00Z")
    }
}
