import Admission
import Foundation
import HTTPEdge
import Logging
import MockProvider
import NIOCore
@testable import Providers
@testable import Server
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// P2 jobs through the providers' batch APIs: the book that groups them, the wire calls against the mock's
/// OpenAI and Anthropic batch APIs, and jobs end to end (grouped, priced at batch rates, sent alone when late).
@Suite(.serialized) struct BatchTests {
    // MARK: The book

    @Test func aBatchIsSentAtTheEndOfItsWindowOrWhenFull() {
        var book = BatchBook<String>(settings: .init(window: 100, maxRequests: 3, maxPending: 5))
        #expect(book.join("a", key: "m1", now: 0) == .waiting)
        #expect(book.join("b", key: "m2", now: 10) == .waiting)
        #expect(book.nextDue == 100)
        #expect(book.due(now: 99).isEmpty)
        #expect(book.due(now: 100) == [.init(key: "m1", ids: ["a"])])
        #expect(book.nextDue == 110)
        #expect(book.join("c", key: "m1", now: 120) == .waiting)
        #expect(book.join("d", key: "m1", now: 121) == .waiting)
        #expect(book.join("e", key: "m1", now: 122) == .send(.init(key: "m1", ids: ["c", "d", "e"])))
        // a, b, c, d, e: sent or collecting, none answered: the book is full.
        #expect(book.pending == 5)
        #expect(book.join("f", key: "m1", now: 123) == .full)
        book.answered(1)
        #expect(book.join("f", key: "m1", now: 124) == .waiting)
        // f leaves its open batch; c, already sent, cannot.
        #expect(book.leave("f") && !book.leave("c"))
        #expect(book.pending == 4 && book.collecting == 1)
        #expect(book.join("b", key: "m2", now: 125) == .full, "an id already collecting")
        #expect(book.due(now: 110) == [.init(key: "m2", ids: ["b"])])
        #expect(book.nextDue == nil)
    }

    // MARK: The wire, against the mock

    func withMock(_ settings: MockSettings, _ body: (HTTPProvider, MockServer) async throws -> Void) async throws {
        let port = ReadySignal<Int>()
        let server = MockServer(settings: settings)
        let service = server.makeServer(logger: Logger(label: "mock-test")) { port.set($0) }
        let task = Task { try await service.run() }
        defer { task.cancel() }
        let url = "http://127.0.0.1:\(await port.wait())"
        let config = ProviderConfig(name: "mock", kind: .mock, baseURL: url)
        let transports = HTTPClientService(providers: [config]).transports
        let provider = HTTPProvider(config: config, transports: transports, environment: [:])
        do {
            try await body(provider, server)
        } catch {
            await transports.shutdown()
            throw error
        }
        await transports.shutdown()
    }

    static func item(_ id: String, _ json: String) -> BatchRequestItem {
        BatchRequestItem(id: id, body: ByteBuffer(string: json))
    }

    /// Polls until the batch ends (bounded: 10 s); how many polls saw it running.
    static func awaitEnd(_ provider: HTTPProvider, _ id: String, model: String) async throws -> Int {
        var running = 0
        for _ in 0..<500 {
            switch try await provider.pollBatch(id, upstreamModel: model) {
            case .running: running += 1
            case .ended: return running
            case .failed(let reason): Issue.record("batch failed: \(reason)"); return running
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("batch \(id) did not end")
        return running
    }

    @Test func anOpenAIBatchGoesThroughAFileAndComesBackInTwoFiles() async throws {
        // 0.005 × (60 s + 0.1 s per request): about 0.3 s.
        try await withMock(MockSettings(latencyScale: 0.005, requireAPIKey: false)) { provider, mock in
            let id = try await provider.submitBatch([
                Self.item("r1", "{\n  \"model\": \"gpt-4o-mini\", \"max_tokens\": 20,\n \"messages\": [{\"role\": \"user\", \"content\": \"one\"}]}"),
                Self.item("r2", #"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"two"}]}"#),
                Self.item("r3", #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"three"}]}"#),
            ], upstreamModel: "gpt-4o-mini")
            #expect(id.hasPrefix("batch_"))
            #expect(try await Self.awaitEnd(provider, id, model: "gpt-4o-mini") > 0, "the batch takes time, as the provider's do")
            let results = try await provider.batchResults(id, upstreamModel: "gpt-4o-mini")
            #expect(results.count == 3)
            for answered in ["r1", "r2"] {
                guard case .answered(let body) = results[answered] else { Issue.record("\(answered): \(String(describing: results[answered]))"); continue }
                let answer = try JSONValue.parse(body.readableBytesView)
                #expect(answer["object"] == "chat.completion" && answer["usage"]?["completion_tokens"]?.intValue ?? 0 > 0)
            }
            guard case .failed(let error) = results["r3"] else { Issue.record("r3 should fail"); return }
            #expect(error.code == .invalidRequest && error.message.contains("cannot stream"))
            #expect(mock.batchCounts.batches == 1 && mock.batchCounts.requests == 3)
            #expect(mock.currentStats.requests == 0, "nothing was sent as a call of its own")
        }
    }

    @Test func anAnthropicMessageBatchEndsWithItsResults() async throws {
        try await withMock(MockSettings(latencyScale: 0.005, requireAPIKey: false)) { provider, mock in
            let id = try await provider.submitBatch([
                Self.item("a-1", #"{"model":"claude-haiku-4-5","max_tokens":20,"messages":[{"role":"user","content":"one"}]}"#),
                Self.item("a_2", #"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":"no max_tokens"}]}"#),
            ], upstreamModel: "claude-haiku-4-5")
            #expect(id.hasPrefix("msgbatch_"))
            #expect(try await Self.awaitEnd(provider, id, model: "claude-haiku-4-5") > 0)
            let results = try await provider.batchResults(id, upstreamModel: "claude-haiku-4-5")
            guard case .answered(let body) = results["a-1"] else { Issue.record("a-1: \(String(describing: results["a-1"]))"); return }
            #expect(try JSONValue.parse(body.readableBytesView)["type"] == "message")
            guard case .failed(let error) = results["a_2"] else { Issue.record("a_2 should fail"); return }
            #expect(error.code == .invalidRequest && error.message.contains("max_tokens"))
            #expect(mock.batchCounts.batches == 1)
        }
    }

    @Test func theMocksBatchAPIsRefuseBadInputInTheirOwnFormat() async throws {
        try await withMock(MockSettings(latencyScale: 0, requireAPIKey: false)) { provider, _ in
            let base = provider.baseURL()
            let notMultipart = try await send("\(base)/v1/files", body: "{}")
            #expect(notMultipart.status == 400 && notMultipart.body.contains("multipart"))
            let unknownFile = try await send("\(base)/v1/batches",
                                             body: #"{"input_file_id":"file-nope","endpoint":"/v1/chat/completions","completion_window":"24h"}"#)
            #expect(unknownFile.status == 404 && unknownFile.body.contains("invalid_request_error"))
            let twice = #"{"custom_id":"same","params":{"model":"claude-haiku-4-5","max_tokens":5,"messages":[]}}"#
            let duplicate = try await send("\(base)/v1/messages/batches", body: #"{"requests":[\#(twice),\#(twice)]}"#)
            #expect(duplicate.status == 400 && duplicate.body.contains(#""type":"error""#) && duplicate.body.contains("not unique"))
            let badID = try await send("\(base)/v1/messages/batches",
                                       body: #"{"requests":[{"custom_id":"../x","params":{"model":"claude-haiku-4-5","max_tokens":5}}]}"#)
            #expect(badID.status == 400)
            #expect(try await send("\(base)/v1/messages/batches/msgbatch_nope", method: "GET").status == 404)
            // One model per OpenAI batch, as OpenAI requires: the batch is refused whole.
            do {
                _ = try await provider.submitBatch([
                    Self.item("x", #"{"model":"gpt-4o-mini","messages":[]}"#), Self.item("y", #"{"model":"gpt-4o","messages":[]}"#),
                ], upstreamModel: "gpt-4o-mini")
                Issue.record("a batch of two models was taken")
            } catch let error as GatewayError {
                #expect(error.code == .invalidRequest && error.message.contains("one model"))
            }
        }
    }

    // MARK: Jobs end to end

    static func config(latencyScale: Double = 0.002) -> GatewayConfig {
        var config = TestConfigs.embedded()
        config.mockLatencyScale = latencyScale
        config.jobs.workers = 2
        config.jobs.pollInterval = .milliseconds(20)
        config.jobs.batch.window = .milliseconds(300)
        config.jobs.batch.pollInterval = .milliseconds(20)
        config.jobs.batch.minimumTimeLeft = .seconds(2)
        config.jobs.batch.liveMargin = .seconds(1)
        for model in ["gpt-4o-mini", "claude-haiku-4-5"] { config.models[model]?.batch = .auto }
        return config
    }

    static func job(_ model: String, _ text: String, priority: String = "p2") -> String {
        let endpoint = model.hasPrefix("claude") ? "/v1/messages" : "/v1/chat/completions"
        return #"{"endpoint":"\#(endpoint)","priority":"\#(priority)","request":{"model":"\#(model)","max_tokens":30,"messages":[{"role":"user","content":"\#(text)"}]}}"#
    }

    /// What a job's usage costs: (alone, through a batch).
    static func prices(_ job: [String: JSONValue], config: GatewayConfig, model: String) throws -> (NanoUSD, NanoUSD) {
        let result = try #require(job["result"])
        let usage = model.hasPrefix("claude")
            ? Usage(inputTokens: Int(result["usage"]?["input_tokens"]?.intValue ?? -1), outputTokens: Int(result["usage"]?["output_tokens"]?.intValue ?? -1))
            : Usage(inputTokens: Int(result["usage"]?["prompt_tokens"]?.intValue ?? -1), outputTokens: Int(result["usage"]?["completion_tokens"]?.intValue ?? -1))
        let price = try #require(config.models[model]?.price)
        return (price.cost(of: usage), price.batchCost(of: usage))
    }

    @Test func p2JobsAreGroupedPerModelAndPricedAtBatchRates() async throws {
        let config = Self.config()
        try await withTestGateway(config) { gateway, url in
            let mock = try #require(gateway.mock)
            var ids: [(String, String)] = []
            // Six P2 jobs on two workers: a job that joins a batch gives its worker back, so all six join.
            for index in 0..<4 { ids.append(("gpt-4o-mini", try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("gpt-4o-mini", "Report \(index)")))["id"]?.stringValue))) }
            for index in 0..<2 { ids.append(("claude-haiku-4-5", try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("claude-haiku-4-5", "Letter \(index)")))["id"]?.stringValue))) }
            let live = try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("gpt-4o-mini", "Now", priority: "p0")))["id"]?.stringValue)
            for (model, id) in ids {
                let done = try await JobsAPITests.finished(url, id)
                #expect(done["status"] == "completed", "\(done)")
                let (alone, batched) = try Self.prices(done, config: config, model: model)
                #expect(batched < alone && done["cost_usd"]?.stringValue == batched.usdString, "\(done)")
            }
            let now = try await JobsAPITests.finished(url, live)
            let (alone, _) = try Self.prices(now, config: config, model: "gpt-4o-mini")
            #expect(now["status"] == "completed" && now["cost_usd"]?.stringValue == alone.usdString, "a P0 job is sent on its own")
            #expect(mock.batchCounts.batches == 2 && mock.batchCounts.requests == 6, "one batch per model: \(mock.batchCounts)")
            #expect(mock.currentStats.requests == 1, "only the P0 job was a call of its own")
            let metrics = try await send("\(url)/metrics", method: "GET").body
            #expect(metrics.contains(#"switchyard_batch_requests_total{outcome="answered"} 6"#))
            #expect(metrics.contains(#"switchyard_batches_total{result="submitted"} 2"#))
            let saved = try #require(metrics.split(separator: "\n").first { $0.hasPrefix("switchyard_batch_saved_nano_usd_total") })
            #expect((Int(saved.split(separator: " ").last ?? "") ?? 0) > 0, "\(saved)")
        }
    }

    @Test func aModelWithoutBatchOrAP1JobIsSentAlone() async throws {
        var config = Self.config()
        config.models["claude-haiku-4-5"]?.batch = .never
        try await withTestGateway(config) { gateway, url in
            let mock = try #require(gateway.mock)
            let never = try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("claude-haiku-4-5", "Alone")))["id"]?.stringValue)
            let p1 = try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("gpt-4o-mini", "Soon", priority: "p1")))["id"]?.stringValue)
            for id in [never, p1] { #expect(try await JobsAPITests.finished(url, id)["status"] == "completed") }
            #expect(mock.batchCounts.batches == 0 && mock.currentStats.requests == 2)
        }
    }

    @Test func aLateBatchGivesWayToACallOfItsOwnAndIsCancelled() async throws {
        // At latency scale 1 the mock's batch takes a minute; the job's deadline is 3 s, its live margin 1 s.
        var config = Self.config(latencyScale: 1)
        config.jobs.deadlines[Priority.p2.rawValue] = .seconds(3)
        try await withTestGateway(config) { [config] gateway, url in
            let mock = try #require(gateway.mock)
            let started = ContinuousClock.now
            let id = try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("gpt-4o-mini", "Hurry")))["id"]?.stringValue)
            let done = try await JobsAPITests.finished(url, id)
            let waited = ContinuousClock.now - started
            #expect(done["status"] == "completed", "\(done)")
            let (alone, _) = try Self.prices(done, config: config, model: "gpt-4o-mini")
            #expect(done["cost_usd"]?.stringValue == alone.usdString, "sent alone: the full price")
            #expect(waited >= .seconds(1.9), "it waited for the batch until the live margin: \(waited)")
            #expect(mock.batchCounts.batches == 1 && mock.currentStats.requests == 1)
            // Nobody waits for the batch any more: it is cancelled at the provider within a poll or two.
            for _ in 0..<100 where mock.batchCounts.cancelled == 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(mock.batchCounts.cancelled == 1)
            let metrics = try await send("\(url)/metrics", method: "GET").body
            #expect(metrics.contains(#"switchyard_batch_requests_total{outcome="late"} 1"#))
        }
    }

    @Test func aBatchedJobTakesNothingFromItsDeploymentsBudget() async throws {
        var config = Self.config()
        // One request a minute: five jobs sent alone would take five minutes.
        config.budgets["mock/gpt-4o-mini"] = DeploymentBudget(requestsPerMinute: 1)
        try await withTestGateway(config) { gateway, url in
            var ids: [String] = []
            for index in 0..<5 { ids.append(try #require(try JobsAPITests.object(try await JobsAPITests.submit(url, Self.job("gpt-4o-mini", "Budget \(index)")))["id"]?.stringValue)) }
            for id in ids { #expect(try await JobsAPITests.finished(url, id)["status"] == "completed") }
            #expect(try #require(gateway.mock).batchCounts.requests == 5)
        }
    }
}

/// What a hostile provider can send back from its batch API: every odd value ends as an error for its request (or
/// is skipped), never a trap, another request's answer, or a path the gateway did not choose.
@Suite struct HostileBatchRepliesTests {
    let provider = HTTPProvider(config: ProviderConfig(name: "p", kind: .openAI, baseURL: "http://127.0.0.1:1"),
                                transports: HTTPClientService(providers: []).transports, environment: [:])

    @Test func idsThatAreNotPlainAreRefusedBeforeTheyReachAPath() {
        for id in ["", "../admin", "a/b", "a?b=c", "batch id", "ba\u{0}tch", String(repeating: "a", count: 201), "é"] {
            #expect(throws: GatewayError.self) { try HTTPProvider.checked(id, provider: "p") }
        }
        #expect((try? HTTPProvider.checked("batch_abc-123", provider: "p")) == "batch_abc-123")
    }

    @Test func oddOpenAIResultLinesFailTheirRequestOrAreSkipped() {
        let body = ByteBuffer(string: [
            #"{"custom_id":"neg","response":{"status_code":-5,"body":{"error":{"message":"x"}}}}"#,
            #"{"custom_id":"huge","response":{"status_code":1e300,"body":{}}}"#,
            #"{"custom_id":"big","response":{"status_code":99999,"body":{}}}"#,
            #"{"custom_id":"ok","response":{"status_code":200,"body":{"id":"1"}}}"#,
            #"{"custom_id":"ok","response":{"status_code":200,"body":{"id":"second"}}}"#,
            #"{"custom_id":"notobject","response":{"status_code":200,"body":"text"}}"#,
            #"{"response":{"status_code":200,"body":{}}}"#,
            "not json at all", "[1,2]", "",
            #"{"custom_id":"limited","response":{"status_code":429,"body":{"error":{"message":"slow down"}}}}"#,
        ].joined(separator: "\n"))
        let results = provider.openAIResults(body, upstreamModel: "gpt-4o-mini")
        #expect(Set(results.keys) == ["neg", "huge", "big", "ok", "notobject", "limited"])
        for id in ["neg", "big", "notobject"] {
            guard case .failed(let error) = results[id] else { Issue.record("\(id) should fail"); continue }
            #expect(error.code == .upstreamError, "\(id): \(error)")
        }
        // 1e300 is no integer the reader takes: the line has no usable status and fails its request.
        guard case .failed = results["huge"] else { Issue.record("huge should fail"); return }
        guard case .answered(let answer) = results["ok"] else { Issue.record("ok should answer"); return }
        #expect(String(buffer: answer).contains(#""1""#), "the first line for an id stands")
        guard case .failed(let limited) = results["limited"] else { Issue.record("limited should fail"); return }
        #expect(limited.code == .rateLimited && limited.isRetryable)
    }

    @Test func oddAnthropicResultLinesFailTheirRequestOrAreSkipped() {
        let body = ByteBuffer(string: [
            #"{"custom_id":"a","result":{"type":"succeeded","message":"not an object"}}"#,
            #"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}}}"#,
            #"{"custom_id":"c","result":{"type":"expired"}}"#,
            #"{"custom_id":"d","result":{"type":"errored"}}"#,
            #"{"custom_id":"e"}"#, "{{{",
        ].joined(separator: "\n"))
        let results = provider.anthropicResults(body)
        #expect(Set(results.keys) == ["b", "c", "d"])
        guard case .failed(let invalid) = results["b"], case .failed(let expired) = results["c"], case .failed(let bare) = results["d"] else {
            Issue.record("b, c and d should fail: \(results)")
            return
        }
        #expect(invalid.code == .invalidRequest && !invalid.isRetryable)
        #expect(expired.isRetryable && bare.isRetryable)
    }
}
