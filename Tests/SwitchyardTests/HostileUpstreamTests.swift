import Foundation
import NIOCore
import Server
import ServerSentEvents
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The gateway in front of a scripted upstream that misbehaves: absurd numbers, an answer too many on a pooled
/// connection, a body short of its length, a stream that stalls, a pool that is full. Each is answered in the
/// client's envelope, nothing crashes, and no request ever gets another request's answer.
@Suite struct HostileUpstreamTests {
    static func config(_ upstream: HostileUpstream, timeouts: ProviderTimeouts = ProviderTimeouts(),
                       poolSize: Int = 64) -> GatewayConfig {
        var config = TestConfigs.embedded()
        config.providers["hostile"] = ProviderConfig(name: "hostile", kind: .openAICompatible, baseURL: upstream.baseURL,
                                                     timeouts: timeouts, poolSize: poolSize)
        if upstream.baseURL.hasPrefix("https://") { config.providers["hostile"]?.tlsCAFile = HostileUpstream.testCAFile }
        config.models["h"] = ModelRoute(name: "h", provider: "hostile", upstreamModel: "m",
                                        price: ModelPrice(usd: "2.50", "10", "1.25", "2.50")!)
        // Every request must reach the upstream.
        config.cache.exactEnabled = false
        return config
    }

    static func body(_ marker: String, stream: Bool = false) -> String {
        #"{"model":"h","max_tokens":10,"stream":\#(stream),"messages":[{"role":"user","content":"marker-\#(marker)"}]}"#
    }

    static func anomalies(_ gateway: Gateway, _ kind: String) -> Int {
        let text = String(decoding: gateway.metrics.render(), as: UTF8.self)
        let prefix = #"switchyard_upstream_anomalies_total{kind="\#(kind)"} "#
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return -1 }
        return Int(line.dropFirst(prefix.count)) ?? -1
    }

    static func withUpstream<T: Sendable>(tls: Bool = false, host: String = "127.0.0.1",
                                          _ script: @escaping HostileUpstream.Script,
                                          configure: (inout GatewayConfig) -> Void = { _ in },
                                          timeouts: ProviderTimeouts = ProviderTimeouts(), poolSize: Int = 64,
                                          _ body: @Sendable (HostileUpstream, Gateway, String) async throws -> T) async throws -> T {
        let upstream = try await HostileUpstream.start(tls: tls, host: host, script)
        var config = Self.config(upstream, timeouts: timeouts, poolSize: poolSize)
        configure(&config)
        do {
            let result = try await withTestGateway(config) { gateway, url in try await body(upstream, gateway, url) }
            try await upstream.stop()
            return result
        } catch {
            try? await upstream.stop()
            throw error
        }
    }

    // MARK: Numbers

    @Test func absurdRetryAfterValuesAreIgnoredOrClampedAndCounted() async throws {
        let headers = ["retry-after: nan", "retry-after: inf", "retry-after: 1e20", "retry-after-ms: nan",
                       "retry-after: 9223372037", "retry-after: -5", "retry-after-ms: 1e300"]
        try await Self.withUpstream({ request in
            let index = Int(request.marker) ?? 0
            let status = [429, 503, 529][index % 3]
            return [.write(HostileUpstream.error(status, headers: headers[index / 3 % headers.count] + "\r\n"))]
        }) { _, gateway, url in
            for index in 0..<(headers.count * 3) {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("\(index)"))
                #expect([429, 503, 502].contains(response.status), "\(index)")
                if let value = response.header("retry-after") {
                    let seconds = try #require(Int(value), "retry-after \(value)")
                    #expect((1...86_400).contains(seconds))
                }
                #expect(try JSONValue.parse(response.body)["error"]?["message"]?.stringValue?.isEmpty == false)
            }
            // Every value but none is an anomaly (each appears three times, once per status).
            #expect(Self.anomalies(gateway, "retry_after") == headers.count * 3)
            // And the gateway still serves.
            #expect(try await send("\(url)/healthz", method: "GET", body: nil).status == 200)
        }
    }

    @Test(arguments: [false, true])
    func usageThatWouldOverflowOrGoNegativeIsClampedNeverTrusted(stream: Bool) async throws {
        let usages = [
            #"{"prompt_tokens":4000000000,"completion_tokens":1}"#,
            #"{"prompt_tokens":9223372036854775807,"prompt_tokens_details":{"cached_tokens":-5},"completion_tokens":1}"#,
            #"{"prompt_tokens":10,"completion_tokens":-5000000}"#,
            #"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":50},"completion_tokens":2}"#,
            #"{"prompt_tokens":-9223372036854775808,"completion_tokens":9223372036854775807}"#,
        ]
        try await Self.withUpstream({ request in
            let usage = usages[(Int(request.marker) ?? 0) % usages.count]
            if request.stream {
                return [.write(HostileUpstream.streamHead() + HostileUpstream.textEvent("hi") + HostileUpstream.streamEnd(usage: usage))]
            }
            return [.write(HostileUpstream.completion(request, usage: usage))]
        }) { _, gateway, url in
            for index in usages.indices {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("\(index)", stream: stream))
                #expect(response.status == 200, "\(usages[index])")
                if !stream {
                    let cost = try #require(response.header("x-switchyard-cost-usd"))
                    #expect(!cost.hasPrefix("-"), "\(cost)")
                    // Four buckets of at most 2^31 tokens at $10 per million at most.
                    #expect((Double(cost) ?? .infinity) <= 4 * 2_147_483_648 * 10 / 1e6, "\(cost)")
                } else {
                    #expect(response.body.contains("data: [DONE]"))
                }
            }
            // Streams are priced when they end: give the last one a moment.
            try await Task.sleep(for: .milliseconds(100))
            #expect(Self.anomalies(gateway, "usage") == usages.count)
            let metrics = String(decoding: gateway.metrics.render(), as: UTF8.self)
            #expect(metrics.contains(#"switchyard_cost_nano_usd_total{model="h"}"#))
            #expect(try await send("\(url)/healthz", method: "GET", body: nil).status == 200)
        }
    }

    // MARK: Answers on a pooled connection

    /// Requests from four tenants at once; each answer must carry its own request's marker.
    static func concurrentRequests(_ url: String, tenants: Int = 4, perTenant: Int = 40, concurrency: Int = 16,
                                   stream: Bool = false) async throws -> (ok: Int, wrong: Int, failed: Int) {
        try await withThrowingTaskGroup(of: (Int, Int, Int).self) { group in
            var started = 0
            var totals = (ok: 0, wrong: 0, failed: 0)
            func add(_ index: Int) {
                let tenant = index % tenants
                let marker = "t\(tenant)-r\(index)"
                group.addTask {
                    let response = try await send("\(url)/v1/chat/completions", body: Self.body(marker, stream: stream),
                                                  headers: [("authorization", "Bearer tenant-\(tenant)")])
                    guard response.status == 200 else { return (0, 0, 1) }
                    return response.body.contains("answer-\(marker)\"") || response.body.contains("answer-\(marker)-")
                        ? (1, 0, 0) : (0, 1, 0)
                }
            }
            while started < min(concurrency, tenants * perTenant) {
                add(started)
                started += 1
            }
            while let (ok, wrong, failed) = try await group.next() {
                totals.ok += ok
                totals.wrong += wrong
                totals.failed += failed
                if started < tenants * perTenant {
                    add(started)
                    started += 1
                }
            }
            return totals
        }
    }

    @Test(arguments: [false, true]) func anExtraAnswerInTheSameWriteClosesTheConnection(tls: Bool) async throws {
        try await Self.withUpstream(tls: tls, { request in
            var extra = request
            extra.marker = "extra-\(request.index)"
            return [.write(HostileUpstream.completion(request) + HostileUpstream.completion(extra))]
        }) { upstream, gateway, url in
            let totals = try await Self.concurrentRequests(url)
            #expect(totals.wrong == 0)
            #expect(totals.ok == 160)
            #expect(Self.anomalies(gateway, "unsolicited_bytes") >= 1)
            // Each connection carried one answer.
            #expect(upstream.connections >= 160)
        }
    }

    @Test func anExtraAnswerAfterADelayNeverReachesAnotherRequest() async throws {
        // The upstream echoes `x-request-id` (as vLLM can), so an answer read for the wrong request is recognised.
        try await Self.withUpstream({ request in
            var extra = request
            extra.marker = "extra-\(request.index)"
            let echo = request.requestID.map { "x-request-id: \($0)\r\n" } ?? ""
            let steps: [HostileUpstream.Step] = [.write(HostileUpstream.completion(request, extraHeaders: echo))]
            // Every third answer is followed, 5 ms later, by a second one for the same request.
            return request.index % 3 == 0
                ? steps + [.pause(milliseconds: 5), .write(HostileUpstream.completion(extra, extraHeaders: echo))] : steps
        }) { _, gateway, url in
            let totals = try await Self.concurrentRequests(url)
            #expect(totals.wrong == 0)
            #expect(totals.ok + totals.failed == 160)
            #expect(totals.ok >= 100, "\(totals)")
            #expect(Self.anomalies(gateway, "unsolicited_bytes") >= 1)
        }
    }

    @Test func anUpstreamCaughtSendingAnExtraAnswerGetsAConnectionPerRequest() async throws {
        // Only the first answer is followed by an extra one, late enough to arrive while the connection is idle.
        let closing = Locked([Bool]())
        try await Self.withUpstream({ request in
            closing.withLock { $0.append(request.head.lowercased().contains("\r\nconnection: close")) }
            var extra = request
            extra.marker = "extra-\(request.index)"
            let answer: [HostileUpstream.Step] = [.write(HostileUpstream.completion(request))]
            return request.index == 0 ? answer + [.pause(milliseconds: 20), .write(HostileUpstream.completion(extra))] : answer
        }) { upstream, gateway, url in
            let first = try await send("\(url)/v1/chat/completions", body: Self.body("first"))
            #expect(first.body.contains("answer-first\""))
            try await Task.sleep(for: .milliseconds(100))
            #expect(Self.anomalies(gateway, "unsolicited_bytes") == 1)
            for index in 0..<4 {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("next\(index)"))
                #expect(response.body.contains("answer-next\(index)\""), "\(response.body)")
            }
            // The four later requests each had their own connection, asked to close.
            #expect(upstream.connections == 5)
            #expect(closing.withLock { $0 } == [false, true, true, true, true])
        }
    }

    @Test func withKeepAliveOffALateExtraAnswerFromAnUpstreamThatEchoesNothingReachesNoOne() async throws {
        try await Self.withUpstream({ request in
            var extra = request
            extra.marker = "extra-\(request.index)"
            let steps: [HostileUpstream.Step] = [.write(HostileUpstream.completion(request))]
            return request.index % 3 == 0
                ? steps + [.pause(milliseconds: 5), .write(HostileUpstream.completion(extra))] : steps
        }, configure: { $0.providers["hostile"]?.keepAlive = false }) { upstream, _, url in
            let totals = try await Self.concurrentRequests(url)
            #expect(totals.wrong == 0)
            #expect(totals.ok == 160, "\(totals)")
            // One connection per request, each asked to close.
            #expect(upstream.connections == 160)
        }
    }

    @Test(arguments: [false, true]) func anExtraAnswerOnAnIdleConnectionClosesIt(tls: Bool) async throws {
        try await Self.withUpstream(tls: tls, { request in
            var extra = request
            extra.marker = "extra-\(request.index)"
            return [.write(HostileUpstream.completion(request)), .pause(milliseconds: 20), .write(HostileUpstream.completion(extra))]
        }) { upstream, gateway, url in
            for index in 0..<5 {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("seq\(index)"))
                #expect(response.status == 200)
                #expect(response.body.contains("answer-seq\(index)\""), "\(response.body)")
                try await Task.sleep(for: .milliseconds(80))
            }
            #expect(upstream.connections == 5)
            // The first extra answer is caught on the idle connection; after it each request closes its connection
            // once answered, so later extras find none (they are not counted when the close wins the race).
            #expect(Self.anomalies(gateway, "unsolicited_bytes") >= 1)
        }
    }

    // MARK: Stalls

    @Test(arguments: [false, true]) func aBodyShortOfItsLengthFailsAtTheIdleTimeout(tls: Bool) async throws {
        try await Self.withUpstream(tls: tls, { _ in
            [.write("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"x\",")]
        }, timeouts: ProviderTimeouts(total: .seconds(60), idle: .milliseconds(300))) { _, gateway, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: Self.body("short"))
            #expect(response.status == 504)
            #expect(response.body.contains("went silent"))
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(Self.anomalies(gateway, "stalled_body") == 1)
        }
    }

    @Test(arguments: [false, true]) func aStalledStreamEndsWithAnErrorEventAtTheIdleTimeout(tls: Bool) async throws {
        try await Self.withUpstream(tls: tls, { _ in
            [.write(HostileUpstream.streamHead() + HostileUpstream.textEvent("one") + HostileUpstream.textEvent("two"))]
        }, timeouts: ProviderTimeouts(total: .seconds(60), idle: .milliseconds(300))) { _, gateway, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: Self.body("stall", stream: true))
            #expect(response.status == 200)
            var decoder = SSEDecoder()
            let events = try decoder.feed(ByteBuffer(string: response.body))
            #expect(events.contains { $0.dataString.contains("two") })
            let last = try JSONValue.parse(events.last?.dataString ?? "{}")
            #expect(last["error"]?["code"]?.stringValue == "upstream_timeout")
            #expect(!events.contains { $0.dataString == "[DONE]" })
            #expect(ContinuousClock.now - started < .seconds(5))
            #expect(Self.anomalies(gateway, "stalled_body") == 1)
        }
    }

    @Test func malformedAnswersAreA502AndCounted() async throws {
        let answers = [
            "HTTP/1.1 200 OK\ncontent-length: 2\n\n{}",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "HTTP/1.1 999 What\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ]
        try await Self.withUpstream({ request in
            [.write(answers[(Int(request.marker) ?? 0) % answers.count])]
        }) { _, gateway, url in
            for index in answers.indices {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body("\(index)"))
                #expect(response.status == 502, "\(answers[index])")
            }
            #expect(Self.anomalies(gateway, "malformed_response") == answers.count)
        }
    }

    // MARK: The pool

    static func sendAll(_ url: String, markers: [String]) async throws -> [TestResponse] {
        try await withThrowingTaskGroup(of: TestResponse.self) { group in
            for marker in markers {
                group.addTask { try await send("\(url)/v1/chat/completions", body: Self.body(marker)) }
            }
            var responses: [TestResponse] = []
            while let response = try await group.next() { responses.append(response) }
            return responses
        }
    }

    @Test func aFullPoolIsAMeasuredQueueWithADeadline() async throws {
        try await Self.withUpstream({ request in
            [.pause(milliseconds: 1500), .write(HostileUpstream.completion(request))]
        }, timeouts: ProviderTimeouts(firstToken: .milliseconds(400)), poolSize: 2) { _, gateway, url in
            // Two loops share a pool of two: one connection each, so at most two requests are in flight.
            let markers = (0..<6).map { "pool\($0)" }
            let responses = Task { try await Self.sendAll(url, markers: markers) }
            try await Task.sleep(for: .milliseconds(150))
            let metrics = String(decoding: gateway.metrics.render(poolWaiters: gateway.poolWaiters()), as: UTF8.self)
            let waiting = metrics.split(separator: "\n").first { $0.hasPrefix(#"switchyard_upstream_pool_waiters{provider="hostile"}"#) }
            #expect(waiting.map { $0.hasSuffix(" 4.0") } == true, "\(waiting ?? "none")")
            let answered = try await responses.value
            #expect(answered.filter { $0.status == 200 }.count == 2)
            #expect(answered.filter { $0.status == 504 && $0.body.contains("became free") }.count == 4)
            // The ones that left the queue are no longer counted.
            #expect(gateway.poolWaiters()["hostile"] == 0)
        }
    }
}
