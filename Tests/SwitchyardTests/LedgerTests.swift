import Embeddings
import Foundation
import Logging
import Server
import Stages
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Synchronization
import Testing

/// The ledger's parts alone: a record made from a trail, the aggregates, the writer's buffer and turns, the file sink,
/// the CSV export's cells.
@Suite struct LedgerUnitTests {
    static let mini = ModelPrice(usd: "0.15", "0.60", "0.075", "0.15")!
    static let opus = ModelPrice(usd: "15", "75", "1.5", "18.75")!

    static func record(tenant: String = "t", user: String = "u", feature: String = "f", model: String? = "m", time: Int64 = 120_000,
                       cost: Int64 = 10) -> LedgerRecord {
        LedgerRecord(requestID: "r", time: time, tenant: tenant, user: user, tier: "default", feature: feature, api: .openAI,
                     requested: "m", model: model, usage: Usage(inputTokens: 3, outputTokens: 4), cost: NanoUSD(cost), attempts: 1)
    }

    @Test func aRecordSumsEveryCallAndMeasuresRoutingAgainstTheReference() {
        let trail = RequestTrail()
        trail.routed(route: "smart", rule: "c", reference: Self.opus)
        let cheap = Usage(inputTokens: 100, outputTokens: 50)
        let strong = Usage(inputTokens: 100, outputTokens: 80, cacheReadTokens: 20)
        trail.attempted()
        trail.priced(.init(model: "mini", deployment: "mock/mini", usage: cheap, cost: Self.mini.cost(of: cheap)))
        trail.attempted()
        trail.priced(.init(model: "opus", deployment: "mock/opus", usage: strong, cost: Self.opus.cost(of: strong),
                           promptCacheSaved: Self.opus.promptCacheSavings(of: strong)))
        var record = Self.record()
        RequestTrail.fill(&record, from: trail.snapshot)
        #expect(record.model == "opus" && record.deployment == "mock/opus" && record.route == "smart" && record.rule == "c")
        #expect(record.attempts == 2)
        #expect(record.usage == Usage(inputTokens: 200, outputTokens: 130, cacheReadTokens: 20))
        #expect(record.cost == Self.mini.cost(of: cheap) + Self.opus.cost(of: strong))
        // All-reference would have paid for the strong answer alone: the escalation's cheap call is a loss.
        #expect(record.saved[.routing] == NanoUSD(-Self.mini.cost(of: cheap).value))
        #expect(record.saved[.promptCache] == Self.opus.promptCacheSavings(of: strong) && record.saved[.promptCache] > .zero)

        // Served by the cheap model: the reference's price of that answer, less what it cost.
        let accepted = RequestTrail()
        accepted.routed(route: "smart", rule: "c", reference: Self.opus)
        accepted.priced(.init(model: "mini", deployment: "mock/mini", usage: cheap, cost: Self.mini.cost(of: cheap)))
        var cheapRecord = Self.record()
        RequestTrail.fill(&cheapRecord, from: accepted.snapshot)
        #expect(cheapRecord.saved[.routing] == Self.opus.cost(of: cheap) - Self.mini.cost(of: cheap))
        #expect(cheapRecord.attempts == 1)
    }

    @Test func aCacheHitCostsNothingAndSavesTheStoredAnswersPrice() {
        let trail = RequestTrail()
        trail.served(from: .semantic, saved: NanoUSD(1234))
        var record = Self.record(model: nil)
        record.cache = CacheStatus.hitSemantic.rawValue
        RequestTrail.fill(&record, from: trail.snapshot)
        #expect(record.cost == .zero && record.model == nil && record.attempts == 0 && record.saved == [.semantic: NanoUSD(1234)])
        let totals = UsageTotals(record)
        #expect(totals[.semanticHits] == 1 && totals[.savedSemantic] == 1234 && totals[.requests] == 1 && totals[.errors] == 0)
        #expect(UsageKey(record).model == "-")
    }

    @Test func theBookSumsPerKeyAndWindowAndStaysBounded() {
        let clock = Locked<Int64>(180)
        let book = UsageBook(retention: .seconds(3600), maximumKeys: 50, now: { clock.withLock { $0 } })
        let a = UsageKey(minute: 2, tenant: "a", user: "u", feature: "f", model: "m")
        book.add([a: UsageTotals(Self.record(tenant: "a"))])
        book.add([a: UsageTotals(Self.record(tenant: "a", cost: 5))])
        #expect(book.usage(from: 120, to: 179, tenant: "a")[a]?[.cost] == 15)
        #expect(book.usage(from: 120, to: 179, tenant: "a")[a]?[.requests] == 2)
        #expect(book.usage(from: 0, to: 119, tenant: nil).isEmpty && book.usage(from: 0, to: 9999, tenant: "b").isEmpty)
        // Many users in a later minute: the oldest minute goes first, and the book never passes its bound.
        clock.withLock { $0 = 600 }
        var batch: [UsageKey: UsageTotals] = [:]
        for user in 0..<200 { batch[UsageKey(minute: 10, tenant: "a", user: "u\(user)", feature: "f", model: "m")] = UsageTotals(Self.record()) }
        book.add(batch)
        #expect(book.count <= 50 && book.count > 0)
        #expect(book.usage(from: 120, to: 179, tenant: nil).isEmpty)
        // Past the retention, minutes are trimmed.
        clock.withLock { $0 = 600 + 7200 }
        book.add([UsageKey(minute: 130, tenant: "z", user: "u", feature: "f", model: "m"): UsageTotals(Self.record())])
        #expect(book.usage(from: 0, to: 700, tenant: nil).isEmpty)
    }

    /// A store whose writes wait until let go, counting what they were given.
    final class GatedStore: UsageStore {
        let gate = Locked<CheckedContinuation<Void, Never>?>(nil)
        let entered = Locked(0)
        let requests = Locked<Int64>(0)
        let held: Bool

        init(held: Bool) { self.held = held }

        func add(_ batch: [UsageKey: UsageTotals]) async throws {
            let first = entered.withLock { count in
                count += 1
                return count == 1
            }
            if held && first { await withCheckedContinuation { continuation in gate.withLock { $0 = continuation } } }
            requests.withLock { $0 += batch.values.reduce(0) { $0 + $1[.requests] } }
        }

        func usage(from: Int64, to: Int64, tenant: String?) async throws -> [UsageKey: UsageTotals] { [:] }

        func release() -> Bool {
            guard let continuation = gate.withLock({ $0 }) else { return false }
            continuation.resume()
            return true
        }
    }

    @Test func aFullBufferDropsAndCountsWithoutEverWaiting() async {
        let counts = Locked((written: 0, dropped: 0))
        let store = GatedStore(held: false)
        let writer = LedgerWriter(usage: store, sink: nil, capacity: 10, logger: Logger(label: "test"),
                                  counted: { written, dropped in counts.withLock { $0.written += written; $0.dropped += dropped } })
        for _ in 0..<25 { writer.record(Self.record()) }
        #expect(writer.pending == 10)
        await writer.flush()
        #expect(counts.withLock { $0 } == (10, 15))
        #expect(store.requests.withLock { $0 } == 10 && writer.pending == 0)
    }

    @Test func aFlushReturnsOnlyOnceTheOneUnderWayIsWritten() async throws {
        let store = GatedStore(held: true)
        let writer = LedgerWriter(usage: store, sink: nil, logger: Logger(label: "test"))
        writer.record(Self.record())
        let first = Task { await writer.flush() }
        while store.entered.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(1)) }
        writer.record(Self.record())
        let done = Locked(false)
        let second = Task {
            await writer.flush()
            done.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(50))
        // Its records were taken by the first flush, still writing: the second waits for it.
        #expect(!done.withLock { $0 })
        while !store.release() { try await Task.sleep(for: .milliseconds(1)) }
        await first.value
        await second.value
        #expect(store.requests.withLock { $0 } == 2 && store.entered.withLock { $0 } == 2)
    }

    @Test func csvCellsAreQuotedAndFormulasDefused() {
        #expect(CSV.cell("alice") == "alice")
        #expect(CSV.cell("a,b") == #""a,b""#)
        #expect(CSV.cell(#"say "hi""#) == #""say ""hi""""#)
        #expect(CSV.cell("two\nlines") == "\"two\nlines\"")
        #expect(CSV.cell("=HYPERLINK(\"x\")") == #""'=HYPERLINK(""x"")""#)
        #expect(CSV.cell("+1 555") == "'+1 555" && CSV.cell("@sum") == "'@sum")
        // Numbers stay numbers, negative ones too.
        #expect(CSV.cell("-0.000012") == "-0.000012" && CSV.cell("42") == "42")
    }

    @Test func theFileSinkWritesOneLinePerRecordRotatesAndPrunes() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let clock = Locked<Int64>(1_780_000_000)
        let sink = LedgerFileSink(directory: directory, rotateBytes: 2000, retention: .seconds(86400), instance: "test",
                                  now: { clock.withLock { $0 } })
        var record = Self.record(user: "line\nbreak \"quoted\"")
        record.saved = [.exact: NanoUSD(7)]
        try await sink.write([record, record])
        var files = sink.files()
        #expect(files.count == 1 && files[0].hasPrefix("ledger-20260528T") && files[0].hasSuffix("-test.jsonl"), "\(files)")
        let text = try String(contentsOfFile: "\(directory)/\(files[0])", encoding: .utf8)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 2)
        let parsed = try JSONValue.parse(Array(lines[0].utf8))
        #expect(parsed["user"]?.stringValue == "line\nbreak \"quoted\"" && parsed["saved_nano_usd"]?["exact"]?.intValue == 7)
        #expect(parsed["cost_nano_usd"]?.intValue == 10 && parsed["model"]?.stringValue == "m")
        // Past the size: a new file (numbered when within the same second).
        for _ in 0..<10 { try await sink.write([record]) }
        files = sink.files()
        #expect(files.count > 1, "\(files)")
        // A day later, another file; the old ones, last written over the retention ago, go.
        let old = "\(directory)/\(files[0])"
        var times = [timespec(tv_sec: Int(clock.withLock { $0 }) - 90_000, tv_nsec: 0), timespec(tv_sec: Int(clock.withLock { $0 }) - 90_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, old, &times, 0) == 0)
        clock.withLock { $0 += 86400 }
        try await sink.write([record])
        files = sink.files()
        #expect(!files.contains { "\(directory)/\($0)" == old })
        #expect(files.contains { $0.hasPrefix("ledger-20260529T") })
    }
}

/// The `ledger:` section and a route's `reference`.
@Suite struct LedgerConfigTests {
    static let base = "providers: {a: {kind: mock}}\nmodels: {gpt-4o-mini: {provider: a}, claude-opus-4-1: {provider: a}, claude-haiku-4-5: {provider: a}}\n"

    @Test func theLedgerSectionIsReadAndChecked() throws {
        let config = try ConfigLoader.parse(yaml: Self.base + "ledger: {path: /tmp/ledger, rotate_mb: 8, buffer: 500, flush_ms: 250, retention_days: 7}",
                                            environment: [:])
        #expect(config.ledger.sink == .jsonl(directory: "/tmp/ledger", rotateBytes: 8 << 20))
        #expect(config.ledger.buffer == 500 && config.ledger.flushInterval == .milliseconds(250) && config.ledger.retention == .seconds(7 * 86400))
        #expect(try ConfigLoader.parse(yaml: Self.base, environment: [:]).ledger.sink == LedgerSettings.Sink.none)
        for (yaml, path) in [("ledger: {sink: jsonl}", "ledger.path"), ("ledger: {sink: kafka}", "ledger.sink"),
                             ("ledger: {buffer: 0}", "ledger.buffer"), ("ledger: {sink: none, path: /x}", "ledger.path"),
                             ("ledger: {flush_ms: 1}", "ledger.flush_ms"), ("ledger: {color: red}", "ledger.color")] {
            #expect(AttemptsThroughTheGatewayTests.refusedPath(Self.base + yaml) == path, "\(yaml)")
        }
    }

    @Test func aRoutesReferenceIsNamedOrThePriciestItCanPick() throws {
        let routes = """
            routes:
              cheap: {rules: [{model: gpt-4o-mini}], reference: claude-haiku-4-5}
              ladder: {rules: [{when: {prompt_tokens: {max: 100}}, model: gpt-4o-mini}, {model: claude-opus-4-1}]}
            """
        let config = try ConfigLoader.parse(yaml: Self.base + routes, environment: [:])
        #expect(config.routes["cheap"]?.reference == "claude-haiku-4-5")
        #expect(config.routes["ladder"]?.reference == "claude-opus-4-1")
        #expect(AttemptsThroughTheGatewayTests.refusedPath(Self.base + "routes:\n  r: {rules: [{model: gpt-4o-mini}], reference: nope}") == "routes.r.reference")
    }
}

/// Through the gateway: every path a request can take leaves one record, and `GET /v1/usage` reports them.
@Suite struct LedgerThroughTheGatewayTests {
    static func body(_ text: String, model: String = "gpt-4o-mini", stream: Bool = false) -> String {
        #"{"model":"\#(model)","max_tokens":40,"stream":\#(stream),"messages":[{"role":"user","content":"\#(text)"}]}"#
    }

    /// The records a gateway wrote to its files, by request id.
    static func records(_ gateway: Gateway, directory: String) async throws -> [String: JSONValue] {
        await gateway.ledger?.flush()
        var records: [String: JSONValue] = [:]
        for name in LedgerFileSink.list(directory) {
            let text = try String(contentsOfFile: "\(directory)/\(name)", encoding: .utf8)
            for line in text.split(separator: "\n") {
                let json = try JSONValue.parse(Array(line.utf8))
                if let id = json["id"]?.stringValue { records[id] = json }
            }
        }
        return records
    }

    @Test func everyPathLeavesOneRecord() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var config = TestConfigs.withFaults(["500", "disconnect-mid-stream"])
        config.ledger.sink = .jsonl(directory: directory, rotateBytes: 1 << 20)
        config.cache.semanticEnabled = false
        config.fallbacks["gpt-4o-mini-500"] = ["gpt-4o-mini"]
        config.resilience.maxAttempts = 1
        config.routes["smart"] = RouteConfig(name: "smart", rules: [
            RouteRule(name: "c", target: .cascade(cheap: "gpt-4o-mini", strong: "claude-opus-4-1", threshold: 0.9)),
        ])
        config.limits = [LimitDefinition(name: "one-haiku", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["claude-haiku-4-5"]])]
        try await withTestGateway(config) { gateway, url in
            let key = [("authorization", "Bearer ledger-key")]
            func call(_ body: String, headers: [(String, String)] = []) async throws -> (TestResponse, String) {
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: key + headers)
                return (response, response.header("x-request-id") ?? "")
            }
            let (miss, missID) = try await call(Self.body("what is a ledger?"), headers: [("x-switchyard-feature", "search")])
            let (_, hitID) = try await call(Self.body("what is a ledger?"), headers: [("x-switchyard-feature", "search")])
            let (stream, streamID) = try await call(Self.body("stream it", stream: true))
            let (cut, cutID) = try await call(Self.body("cut it", model: "gpt-4o-mini-disconnect-mid-stream", stream: true))
            let (_, unknownID) = try await call(Self.body("nobody", model: "no-such-model"))
            let (_, allowedID) = try await call(Self.body("haiku one", model: "claude-haiku-4-5"))
            let (refused, refusedID) = try await call(Self.body("haiku two", model: "claude-haiku-4-5"))
            let (fellBack, fellBackID) = try await call(Self.body("fall back", model: "gpt-4o-mini-500"))
            let (cascade, cascadeID) = try await call(Self.body("think hard", model: "smart"))
            #expect(miss.status == 200 && stream.status == 200 && cut.status == 200 && refused.status == 429)
            #expect(fellBack.status == 200 && cascade.status == 200, "\(fellBack.body) \(cascade.body)")

            let records = try await Self.records(gateway, directory: directory)
            #expect(records.count == 9, "\(records.keys.sorted())")
            let tenant = try #require(records[missID]?["tenant"]?.stringValue)
            #expect(tenant.hasPrefix("key-") && records.values.allSatisfy { $0["tenant"]?.stringValue == tenant })

            let missRecord = try #require(records[missID])
            #expect(missRecord["feature"]?.stringValue == "search" && missRecord["cache"]?.stringValue == "miss")
            #expect(missRecord["model"]?.stringValue == "gpt-4o-mini" && missRecord["deployment"]?.stringValue == "mock/gpt-4o-mini")
            let missCost = try #require(NanoUSD(usd: miss.header("x-switchyard-cost-usd") ?? ""))
            #expect(missRecord["cost_nano_usd"]?.intValue == missCost.value && missCost > .zero)
            #expect(missRecord["attempts"]?.intValue == 1 && missRecord["status"]?.intValue == 200)
            #expect((missRecord["output_tokens"]?.intValue ?? 0) > 0 && (missRecord["latency_ms"]?.doubleValue ?? -1) >= 0)

            let hit = try #require(records[hitID])
            #expect(hit["cache"]?.stringValue == "hit-exact" && hit["cost_nano_usd"]?.intValue == 0 && hit["model"] == nil)
            #expect(hit["saved_nano_usd"]?["exact"]?.intValue == missCost.value && hit["attempts"]?.intValue == 0)

            let streamed = try #require(records[streamID])
            #expect(streamed["streamed"] == .bool(true) && streamed["outcome"]?.stringValue == "completed")
            #expect((streamed["cost_nano_usd"]?.intValue ?? 0) > 0 && streamed["ttft_ms"]?.doubleValue != nil)
            #expect((streamed["ttft_ms"]?.doubleValue ?? .infinity) <= (streamed["latency_ms"]?.doubleValue ?? 0))

            let cutRecord = try #require(records[cutID])
            #expect(cutRecord["outcome"]?.stringValue == "failed" && cutRecord["error"]?.stringValue != nil, "\(cutRecord)")
            #expect((cutRecord["cost_nano_usd"]?.intValue ?? 0) > 0, "what was streamed is paid for")

            let unknown = try #require(records[unknownID])
            #expect(unknown["status"]?.intValue == 404 && unknown["error"]?.stringValue == "model_not_found" && unknown["attempts"]?.intValue == 0)

            #expect(records[allowedID]?["status"]?.intValue == 200)
            let refusal = try #require(records[refusedID])
            #expect(refusal["status"]?.intValue == 429 && refusal["error"]?.stringValue == "rate_limited" && refusal["cost_nano_usd"]?.intValue == 0)

            let fallback = try #require(records[fellBackID])
            #expect(fallback["attempts"]?.intValue == 2 && fallback["model"]?.stringValue == "gpt-4o-mini", "\(fallback)")
            #expect(fallback["requested"]?.stringValue == "gpt-4o-mini-500")

            let escalated = try #require(records[cascadeID])
            #expect(escalated["route"]?.stringValue == "smart" && escalated["rule"]?.stringValue == "c")
            #expect(escalated["attempts"]?.intValue == 2 && escalated["model"]?.stringValue == "claude-opus-4-1", "\(escalated)")
            // The cheap call was paid for and not used: routing lost its price against all-opus.
            let routing = try #require(escalated["saved_nano_usd"]?["routing"]?.intValue)
            #expect(routing < 0 && escalated["cost_nano_usd"]?.intValue == Int64(NanoUSD(usd: cascade.header("x-switchyard-cost-usd") ?? "")?.value ?? -1))
        }
    }

    @Test func degradedQueuedAndSemanticAnswersAreRecordedAsSuch() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var config = JobsAPITests.config()
        config.ledger.sink = .jsonl(directory: directory, rotateBytes: 1 << 20)
        config.cache.exactEnabled = false
        config.limits = [LimitDefinition(name: "one-opus", measure: .requests, amount: 1, window: .minute, scope: [.user],
                                         when: [.model: ["claude-opus-4-1"]]),
                         // Per second: the queued job's worker runs it a second later.
                         LimitDefinition(name: "one-sonnet", measure: .requests, amount: 1, window: .second, scope: [.user],
                                         when: [.model: ["claude-sonnet-4-5"]])]
        config.degrade = [DegradePolicy(when: [.feature: ["cheaper"]], steps: [.downgrade(["claude-opus-4-1", "gpt-4o-mini"])]),
                          DegradePolicy(steps: [.queue])]
        let embeddings = EmbeddingsSetting.model(directory: ModelStore().modelDirectory)
        try await withTestGateway(config, embeddings: embeddings) { gateway, url in
            let key = [("authorization", "Bearer degrade-key")]
            func call(_ body: String, _ headers: [(String, String)] = []) async throws -> (TestResponse, String) {
                let response = try await send("\(url)/v1/chat/completions", body: body, headers: key + headers)
                return (response, response.header("x-request-id") ?? "")
            }
            let cheaper = [("x-switchyard-feature", "cheaper")]
            _ = try await call(Self.body("first opus question", model: "claude-opus-4-1"), cheaper)
            let (downgraded, downgradedID) = try await call(Self.body("second opus question", model: "claude-opus-4-1"), cheaper)
            #expect(downgraded.header("x-switchyard-degraded") == "downgrade")
            _ = try await call(Self.body("first sonnet question", model: "claude-sonnet-4-5"))
            let (queued, queuedID) = try await call(Self.body("second sonnet question", model: "claude-sonnet-4-5"))
            #expect(queued.status == 202, "\(queued.body)")
            let job = try #require(try JSONValue.parse(queued.body)["id"]?.stringValue)
            // The same question, reworded, from the semantic cache.
            let (miss, _) = try await call(Self.body("How do I reset my password?"))
            #expect(miss.status == 200)
            var semanticID: String?
            for _ in 0..<50 where semanticID == nil {
                let (response, id) = try await call(Self.body("How can I reset my password?"))
                if response.header("x-switchyard-cache") == "hit-semantic" { semanticID = id } else { try await Task.sleep(for: .milliseconds(50)) }
            }
            _ = try await JobsAPITests.finished(url, job, key: "degrade-key")
            let records = try await Self.records(gateway, directory: directory)
            let down = try #require(records[downgradedID])
            #expect(down["degraded"]?.stringValue == "downgrade" && down["model"]?.stringValue == "gpt-4o-mini", "\(down)")
            let accepted = try #require(records[queuedID])
            #expect(accepted["status"]?.intValue == 202 && accepted["degraded"]?.stringValue == "queued" && accepted["queued_job"]?.stringValue == job)
            #expect(accepted["cost_nano_usd"]?.intValue == 0)
            // The job's own run is a record of its own, marked as a job's, and paid for (a try its worker made while the
            // limit still refused it is one too, a 429).
            let runs = records.values.filter { $0["job"] == .bool(true) }
            let run = try #require(runs.first { $0["status"]?.intValue == 200 }, "\(runs)")
            #expect((run["cost_nano_usd"]?.intValue ?? 0) > 0 && run["model"]?.stringValue == "claude-sonnet-4-5")
            #expect(runs.allSatisfy { $0["status"]?.intValue == 200 || $0["status"]?.intValue == 429 })
            let semanticRequest = try #require(semanticID, "no semantic hit")
            let semantic = try #require(records[semanticRequest])
            #expect(semantic["cache"]?.stringValue == "hit-semantic" && semantic["cost_nano_usd"]?.intValue == 0)
            #expect((semantic["saved_nano_usd"]?["semantic"]?.intValue ?? 0) > 0)
        }
    }

    static func usage(_ url: String, _ query: String, key: String) async throws -> JSONValue {
        let response = try await send("\(url)/v1/usage?\(query)", method: "GET", headers: [("authorization", "Bearer \(key)")], contentType: nil)
        #expect(response.status == 200, "\(response.body)")
        return try JSONValue.parse(Array(response.body.utf8))
    }

    @Test func usageGroupsAsAskedKeepsTenantsApartAndExportsCSV() async throws {
        var config = TestConfigs.embedded()
        config.cache.semanticEnabled = false
        try await withTestGateway(config, environment: ["SWITCHYARD_ADMIN_KEY": "admin"]) { gateway, url in
            for (key, feature, model, text) in [("alpha", "chat", "gpt-4o-mini", "one"), ("alpha", "chat", "gpt-4o-mini", "two"),
                                                ("alpha", "code", "claude-haiku-4-5", "three"), ("beta", "chat", "gpt-4o-mini", "four")] {
                let response = try await send("\(url)/v1/chat/completions", body: Self.body(text, model: model),
                                              headers: [("authorization", "Bearer \(key)"), ("x-switchyard-feature", feature)])
                #expect(response.status == 200)
            }
            await gateway.ledger?.flush()
            let mine = try await Self.usage(url, "group_by=feature,model", key: "alpha")
            let rows = try #require(mine["rows"]?.arrayValue)
            #expect(rows.count == 2, "\(rows)")
            #expect(rows.allSatisfy { $0["tenant"] == rows[0]["tenant"] })
            let chat = try #require(rows.first { $0["feature"]?.stringValue == "chat" })
            #expect(chat["requests"]?.intValue == 2 && chat["model"]?.stringValue == "gpt-4o-mini")
            #expect(mine["total"]?["requests"]?.intValue == 3)
            // The other tenant's figures are not in the caller's report; the admin sees both, or one by name.
            let theirs = try await Self.usage(url, "", key: "beta")
            #expect(theirs["total"]?["requests"]?.intValue == 1)
            let all = try await Self.usage(url, "", key: "admin")
            #expect(all["total"]?["requests"]?.intValue == 4 && all["rows"]?.arrayValue?.count == 2)
            let tenant = try #require(rows[0]["tenant"]?.stringValue)
            let one = try await Self.usage(url, "tenant=\(tenant)&interval=minute", key: "admin")
            #expect(one["total"]?["requests"]?.intValue == 3 && one["rows"]?.arrayValue?.first?["period_start"]?.intValue != nil)
            // Costs add up: the rows' nano-USD sum to the total.
            let sum = rows.compactMap { $0["cost_nano_usd"]?.intValue }.reduce(0, +)
            #expect(sum == mine["total"]?["cost_nano_usd"]?.intValue && sum > 0)

            let csv = try await send("\(url)/v1/usage?group_by=user,feature&format=csv", method: "GET",
                                     headers: [("authorization", "Bearer alpha")], contentType: nil)
            #expect(csv.status == 200 && csv.header("content-type")?.hasPrefix("text/csv") == true)
            let lines = csv.body.split(separator: "\r\n")
            #expect(lines.first == "tenant,user,feature,requests,errors,input_tokens,output_tokens,cache_read_tokens,cache_write_tokens,cost_usd,saved_exact_usd,saved_semantic_usd,saved_prompt_cache_usd,saved_routing_usd,saved_batch_usd,exact_hits,semantic_hits,degraded,queued,attempts")
            #expect(lines.count == 3, "\(csv.body)")

            for bad in ["group_by=tenant", "interval=week", "from=5&to=4", "limit=0", "limit=100001", "limit=99999999999999999999",
                        "format=xml", "from=-1", "to=253402300800", "group_by=user,,evil"] {
                let response = try await send("\(url)/v1/usage?\(bad)", method: "GET", headers: [("authorization", "Bearer alpha")], contentType: nil)
                #expect(response.status == 400 && response.body.contains("invalid_request"), "\(bad): \(response.body)")
            }
        }
    }

    @Test func aGatewayWithTheLedgerOffRecordsNothing() async throws {
        var config = TestConfigs.embedded()
        config.ledger.enabled = false
        try await withTestGateway(config) { gateway, url in
            #expect(gateway.ledger == nil)
            let response = try await send("\(url)/v1/chat/completions", body: Self.body("hello"))
            #expect(response.status == 200)
            let usage = try await Self.usage(url, "", key: "anyone")
            #expect(usage["total"]?["requests"]?.intValue == 0)
        }
    }
}
