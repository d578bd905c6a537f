import Foundation
import HTTPEdge
import HTTPTypes
import Limits
import Logging
import NIOCore
import NIOHTTP1
@testable import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The jobs API through HTTP: submission, polling, events, cancellation, tenant isolation, webhooks and the limits'
/// `queue` step; in memory and, where it matters, on one redis-server shared by two instances.
@Suite(.serialized) struct JobsAPITests {
    static let chat = #"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"Summarise the quarter."}]}"#
    static let messages = #"{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"Summarise the year."}]}"#

    static func config(workers: Int = 2) -> GatewayConfig {
        var config = TestConfigs.embedded()
        config.jobs.workers = workers
        config.jobs.pollInterval = .milliseconds(20)
        return config
    }

    static func submit(_ url: String, _ body: String, key: String = "key-a", headers: [(String, String)] = []) async throws -> TestResponse {
        try await send("\(url)/v1/jobs", body: body, headers: [("authorization", "Bearer \(key)")] + headers)
    }

    static func object(_ response: TestResponse) throws -> [String: JSONValue] {
        try #require(try JSONValue.parse(response.body).objectValue, "\(response.body)")
    }

    /// The job, polled until it ends (bounded: 10 s).
    static func finished(_ url: String, _ id: String, key: String = "key-a") async throws -> [String: JSONValue] {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let job = try object(try await send("\(url)/v1/jobs/\(id)", method: "GET", headers: [("authorization", "Bearer \(key)")]))
            if let status = job["status"]?.stringValue, JobStatus(rawValue: status)?.isFinal == true { return job }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("job \(id) did not end")
        return [:]
    }

    @Test(arguments: [false, true]) func aJobRunsAndItsAnswerIsKeptInTheRequestsFormat(redis: Bool) async throws {
        let server = redis ? try RedisServerProcess() : nil
        defer { server?.stop() }
        var config = Self.config()
        if let server { config = Self.shared(config, port: server.port) }
        try await withTestGateway(config) { _, url in
            let accepted = try await Self.submit(url, #"{"request":\#(Self.chat),"priority":"p1"}"#)
            #expect(accepted.status == 202, "\(accepted.body)")
            let job = try Self.object(accepted)
            let id = try #require(job["id"]?.stringValue)
            #expect(accepted.header("location") == "/v1/jobs/\(id)")
            #expect(job["status"] == "queued" && job["priority"] == "p1" && job["endpoint"] == "/v1/chat/completions")
            let done = try await Self.finished(url, id)
            #expect(done["status"] == "completed" && done["attempts"] == .int(1), "\(done)")
            let result = try #require(done["result"]?.objectValue)
            #expect(result["object"] == "chat.completion" && result["choices"]?.arrayValue?.isEmpty == false)
            #expect(done["cost_usd"]?.stringValue != nil && done["served_model"] == "gpt-4o-mini")
            // An Anthropic request's answer is an Anthropic message; the default priority is p2.
            let anthropic = try Self.object(try await Self.submit(url, #"{"endpoint":"/v1/messages","request":\#(Self.messages)}"#))
            #expect(anthropic["priority"] == "p2")
            let message = try await Self.finished(url, try #require(anthropic["id"]?.stringValue))
            #expect(message["result"]?["type"] == "message" && message["result"]?["content"]?.arrayValue?.isEmpty == false, "\(message)")
        }
    }

    @Test func onlyTheJobsTenantSeesIt() async throws {
        try await withTestGateway(Self.config(workers: 0)) { _, url in
            let job = try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat)}"#))
            let id = try #require(job["id"]?.stringValue)
            let other = [("authorization", "Bearer key-b")]
            let seen = try await send("\(url)/v1/jobs/\(id)", method: "GET", headers: other)
            #expect(seen.status == 404 && seen.body.contains("no such job"))
            #expect(try await send("\(url)/v1/jobs/\(id)/events", method: "GET", headers: other).status == 404)
            #expect(try await send("\(url)/v1/jobs/\(id)", method: "DELETE", headers: other).status == 404)
            // Unchanged by the other tenant's attempt.
            let own = try Self.object(try await send("\(url)/v1/jobs/\(id)", method: "GET", headers: [("authorization", "Bearer key-a")]))
            #expect(own["status"] == "queued" && own["position"] == .int(0))
        }
    }

    @Test func badSubmissionsAreClearErrors() async throws {
        try await withTestGateway(Self.config(workers: 0)) { _, url in
            func expectError(_ body: String, _ status: Int, _ param: String?, headers: [(String, String)] = []) async throws {
                let response = try await Self.submit(url, body, headers: headers)
                #expect(response.status == status, "\(body) → \(response.body)")
                let error = try Self.object(response)["error"]
                #expect(error?["message"]?.stringValue?.isEmpty == false)
                if let param { #expect(error?["param"]?.stringValue == param, "\(response.body)") }
            }
            try await expectError("not json", 400, nil)
            try await expectError("[1]", 400, nil)
            try await expectError(#"{"request":\#(Self.chat),"colour":"red"}"#, 400, "colour")
            try await expectError(#"{"endpoint":"/v1/embeddings","request":\#(Self.chat)}"#, 400, "endpoint")
            try await expectError(#"{"request":\#(Self.chat),"priority":"urgent"}"#, 400, "priority")
            try await expectError(#"{"request":{"model":"gpt-4o-mini"}}"#, 400, "request.messages")
            try await expectError(#"{"request":"hello"}"#, 400, "request")
            try await expectError(#"{"request":{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}}"#, 404, "request.model")
            // No signing secret configured: a webhook cannot be promised.
            try await expectError(#"{"request":\#(Self.chat),"webhook_url":"http://127.0.0.1:9/hook"}"#, 400, "webhook_url")
            try await expectError(#"{"request":\#(Self.chat),"webhook_url":"ftp://x"}"#, 400, "webhook_url")
            try await expectError(#"{"request":\#(Self.chat)}"#, 400, "x-switchyard-priority", headers: [("x-switchyard-priority", "p7")])
            #expect(try await send("\(url)/v1/jobs/job_nope", method: "GET", headers: [("authorization", "Bearer key-a")]).status == 404)
            #expect(try await send("\(url)/v1/jobs/\(JobRecord.makeID())/other", method: "GET").status == 404)
            #expect(try await send("\(url)/v1/jobs", method: "PUT", body: "{}").status == 405)
        }
    }

    @Test func positionsCancellationAndAKeysPriorityCap() async throws {
        var config = Self.config(workers: 0)
        config.keys = [APIKeyEntry(sha256: KeyHash.sha256Hex("batch-key"),
                                   caller: Caller(tenant: "acme", user: "etl", keyID: "batch", priority: .p1)),
                       APIKeyEntry(sha256: KeyHash.sha256Hex("key-a"), caller: Caller(tenant: "acme", user: "app", keyID: "a"))]
        try await withTestGateway(config) { _, url in
            let first = try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat)}"#))
            let second = try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat)}"#))
            #expect(first["position"] == .int(0) && second["position"] == .int(1))
            // A p1 key asking for p0 gets p1, ahead of both p2 jobs.
            let capped = try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat),"priority":"p0"}"#, key: "batch-key"))
            #expect(capped["priority"] == "p1" && capped["position"] == .int(0))
            let id = try #require(first["id"]?.stringValue)
            let cancelled = try Self.object(try await send("\(url)/v1/jobs/\(id)", method: "DELETE", headers: [("authorization", "Bearer key-a")]))
            #expect(cancelled["status"] == "cancelled")
            let moved = try Self.object(try await send("\(url)/v1/jobs/\(try #require(second["id"]?.stringValue))", method: "GET",
                                                      headers: [("authorization", "Bearer key-a")]))
            #expect(moved["position"] == .int(1), "\(moved)")
        }
    }

    @Test func theEventsStreamTellsAJobsLife() async throws {
        try await withTestGateway(Self.config(workers: 0)) { _, url in
            let id = try #require(try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat)}"#))["id"]?.stringValue)
            let canceller = Task {
                try await Task.sleep(for: .milliseconds(300))
                _ = try await send("\(url)/v1/jobs/\(id)", method: "DELETE", headers: [("authorization", "Bearer key-a")])
            }
            let events = try await send("\(url)/v1/jobs/\(id)/events", method: "GET", headers: [("authorization", "Bearer key-a")])
            try await canceller.value
            #expect(events.status == 200 && events.header("content-type") == "text/event-stream")
            #expect(events.body.hasPrefix("event: queued\ndata: "), "\(events.body)")
            #expect(events.body.contains(#""position":0"#))
            #expect(events.body.hasSuffix("\n\n") && events.body.contains("event: cancelled\ndata: "))
        }
        try await withTestGateway(Self.config()) { _, url in
            let id = try #require(try Self.object(try await Self.submit(url, #"{"request":\#(Self.chat)}"#))["id"]?.stringValue)
            let events = try await send("\(url)/v1/jobs/\(id)/events", method: "GET", headers: [("authorization", "Bearer key-a")])
            #expect(events.body.contains("event: started\ndata: ") && events.body.contains("event: completed\ndata: "), "\(events.body)")
            #expect(events.body.contains(#""chat.completion""#))
        }
    }

    @Test func aWebhookIsSignedAndRetriedUntilAccepted() async throws {
        let received = Locked<[(headers: [String: String], body: String)]>([])
        let port = ReadySignal<Int>()
        let receiver = EdgeServer(configuration: .init(host: "127.0.0.1", port: 0, maxBodyBytes: 1 << 20), logger: Logger(label: "hook"),
                                  onListening: { port.set($0) }) { request in
            let count = received.withLock { list in
                list.append((Dictionary(request.head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { a, _ in a }),
                             String(buffer: request.body)))
                return list.count
            }
            // The first delivery fails: the gateway tries again.
            return EdgeResponse(status: count == 1 ? .internalServerError : .noContent)
        }
        let serving = Task { try await receiver.run() }
        defer { serving.cancel() }
        let hookPort = await port.wait()
        var config = Self.config()
        config.jobs.webhookBackoff = .milliseconds(20)
        try await withTestGateway(config, environment: ["SWITCHYARD_WEBHOOK_SECRET": "whsec-test"]) { _, url in
            let body = #"{"request":\#(Self.chat),"webhook_url":"http://127.0.0.1:\#(hookPort)/hooks/jobs?team=7"}"#
            let accepted = try Self.object(try await Self.submit(url, body))
            #expect(accepted["webhook"] == true)
            let id = try #require(accepted["id"]?.stringValue)
            _ = try await Self.finished(url, id)
            let deadline = ContinuousClock.now + .seconds(5)
            while received.withLock({ $0.count }) < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            let deliveries = received.withLock { $0 }
            #expect(deliveries.count == 2)
            guard let last = deliveries.last else { return }
            #expect(last.headers["x-switchyard-job-id"] == id && last.headers["x-switchyard-delivery-attempt"] == "2")
            let signature = try #require(last.headers["x-switchyard-signature"])
            #expect(WebhookSignature.verify(signature, secret: Array("whsec-test".utf8), body: Array(last.body.utf8),
                                            now: Int64(Date().timeIntervalSince1970)))
            let payload = try #require(try JSONValue.parse(last.body).objectValue)
            #expect(payload["id"] == .string(id) && payload["status"] == "completed" && payload["result"] != nil)
            #expect(try await DegradationTests.metric(url, #"switchyard_webhook_deliveries_total{result="delivered"}"#) == 1)
            #expect(try await DegradationTests.metric(url, #"switchyard_jobs_ended_total{priority="p2",status="completed"}"#) == 1)
        }
    }

    @Test func aRequestTheLimitsRefuseIsQueuedAsAJob() async throws {
        var config = Self.config()
        config.cache.exactEnabled = false
        config.cache.semanticEnabled = false
        config.limits = [LimitDefinition(name: "per-user", measure: .requests, amount: 1, window: .second, scope: [.user])]
        config.degrade = [DegradePolicy(steps: [.queue])]
        try await withTestGateway(config) { _, url in
            let key = [("authorization", "Bearer key-a")]
            #expect(try await send("\(url)/v1/chat/completions", body: Self.chat, headers: key).status == 200)
            let queued = try await send("\(url)/v1/chat/completions", body: Self.chat, headers: key)
            #expect(queued.status == 202 && queued.header("x-switchyard-degraded") == "queued", "\(queued.headers) \(queued.body)")
            let job = try Self.object(queued)
            let id = try #require(job["id"]?.stringValue)
            #expect(queued.header("location") == "/v1/jobs/\(id)" && job["object"] == "job")
            // Run when the limit has room again (its worker waits the refusal's retry-after), as the same caller.
            let done = try await Self.finished(url, id)
            #expect(done["status"] == "completed" && done["result"]?["object"] == "chat.completion", "\(done)")
            #expect(try await send("\(url)/v1/jobs/\(id)", method: "GET", headers: [("authorization", "Bearer key-b")]).status == 404)
            #expect(try await DegradationTests.metric(url, #"switchyard_degraded_total{kind="queued"}"#) == 1)
        }
    }

    static func shared(_ config: GatewayConfig, port: Int) -> GatewayConfig {
        var shared = SharedStateTests.config(redisPort: port)
        shared.jobs = config.jobs
        return shared
    }

    @Test func aJobAcceptedByOneInstanceIsRunByAnotherAndSeenByBoth() async throws {
        let server = try RedisServerProcess()
        defer { server.stop() }
        let front = Self.shared(Self.config(workers: 0), port: server.port)
        let back = Self.shared(Self.config(workers: 2), port: server.port)
        try await withTestGateway(front) { _, frontURL in
            let id = try #require(try Self.object(try await Self.submit(frontURL, #"{"request":\#(Self.chat)}"#))["id"]?.stringValue)
            try await Task.sleep(for: .milliseconds(200))
            // Nobody runs it yet: the front instance has no workers.
            let waiting = try Self.object(try await send("\(frontURL)/v1/jobs/\(id)", method: "GET", headers: [("authorization", "Bearer key-a")]))
            #expect(waiting["status"] == "queued")
            try await withTestGateway(back) { _, backURL in
                let done = try await Self.finished(backURL, id)
                #expect(done["status"] == "completed")
            }
            let seen = try await Self.finished(frontURL, id)
            #expect(seen["status"] == "completed" && seen["result"] != nil)
        }
    }
}
