import Caching
import Embeddings
import Foundation
import NIOCore
import NIOPosix
import Redis
import Server
import Stores
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// State shared through Redis: several gateway instances on one real redis-server behave as one.
@Suite(.serialized) struct SharedStateTests {
    static func config(redisPort: Int, policy: StateSettings.FailurePolicy = .failOpen) -> GatewayConfig {
        var config = TestConfigs.embedded()
        config.state.backend = .redis
        config.state.port = redisPort
        config.state.keyPrefix = "test:"
        config.state.caches = policy
        config.state.connectTimeout = .milliseconds(300)
        config.state.commandTimeout = .milliseconds(300)
        return config
    }

    static let body = #"{"model":"gpt-4o-mini","max_tokens":2000,"messages":[{"role":"user","content":"What are your opening hours?"}]}"#

    @Test func anAnswerCachedThroughOneInstanceIsAHitThroughAnother() async throws {
        let server = try RedisServerProcess()
        let config = Self.config(redisPort: server.port)
        let environment = ["SWITCHYARD_ADMIN_KEY": "admin-secret"]
        try await withTestGateway(config, environment: environment) { gatewayA, a in
            try await withTestGateway(config, environment: environment) { gatewayB, b in
                let first = try await send("\(a)/v1/chat/completions", body: Self.body)
                #expect(first.status == 200 && first.header("x-switchyard-cache") == "miss")
                // The write is in the background: give it a moment.
                var hit: TestResponse?
                for _ in 0..<50 {
                    let response = try await send("\(b)/v1/chat/completions", body: Self.body)
                    if response.header("x-switchyard-cache") == "hit-exact" { hit = response; break }
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(hit?.status == 200)
                #expect(hit?.body == first.body, "the same answer, byte for byte")
                // As a stream, from the other instance, in the other API's format.
                let anthropic = try await send("\(a)/v1/messages", body: Self.body, headers: [("anthropic-version", "2023-06-01")])
                #expect(anthropic.status == 200)
                // Cleared through B: gone for A too.
                let cleared = try await send("\(b)/v1/cache", method: "DELETE", headers: [("authorization", "Bearer admin-secret")],
                                             contentType: nil)
                #expect(cleared.status == 200 && !cleared.body.contains(#""deleted":0"#), "\(cleared.body)")
                let after = try await send("\(a)/v1/chat/completions", body: Self.body)
                #expect(after.header("x-switchyard-cache") == "miss")
                // The hit through B saved money; every instance reports the same savings (written in the background).
                let admin = [("authorization", "Bearer admin-secret")]
                var reports: [String] = []
                for _ in 0..<50 {
                    for gateway in [gatewayA, gatewayB] { await gateway.ledger?.flush() }
                    reports = []
                    for url in [a, b] {
                        let report = try await send("\(url)/v1/usage/savings", method: "GET", headers: admin, contentType: nil)
                        reports.append(report.body)
                    }
                    if reports[0].contains(#""exact":{"requests":1"#) || reports[0].contains(#""requests":1,"saved_usd""#) { break }
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(reports.count == 2 && reports[0].contains("anonymous"), "\(reports)")
                let tenants = reports.map { try? JSONValue.parse($0)["tenants"] }
                #expect(tenants[0] != nil && tenants[0] == tenants[1], "\(reports)")
            }
        }
    }

    /// Calls per command since the server started (`INFO commandstats`), e.g. `["get": 3]`.
    static func commandCalls(_ server: RedisServerProcess) async throws -> [String: Int] {
        let connection = try await RedisConnection.connect(server.configuration(), on: MultiThreadedEventLoopGroup.singleton.next())
        defer { Task { await connection.close() } }
        let info = try await connection.send(["INFO", "commandstats"]).string ?? ""
        var calls: [String: Int] = [:]
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            let name = line.dropFirst("cmdstat_".count).prefix { $0 != ":" }
            if let field = line.split(separator: ",").first?.split(separator: "=").last, let count = Int(field) {
                calls[String(name)] = count
            }
        }
        return calls
    }

    @Test func anExactHitThroughRedisIsOneGetOnTheRequestPath() async throws {
        let server = try RedisServerProcess()
        var shared = Self.config(redisPort: server.port)
        shared.cache.semanticEnabled = false
        // The job workers' polls are not on the request path; without workers the count is the requests' alone.
        shared.jobs.workers = 0
        let config = shared
        try await withTestGateway(config) { _, a in
            #expect(try await send("\(a)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "miss")
            try await Task.sleep(for: .milliseconds(200))
            let before = try await Self.commandCalls(server)
            for _ in 0..<10 {
                #expect(try await send("\(a)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "hit-exact")
            }
            // The hits' ledger records are written in the background; let them land before counting.
            try await Task.sleep(for: .milliseconds(700))
            let after = try await Self.commandCalls(server)
            let delta = after.compactMapValues { $0 }.reduce(into: [String: Int]()) { $0[$1.key] = $1.value - (before[$1.key] ?? 0) }
                .filter { $0.value != 0 && $0.key != "info" && $0.key != "hello" && $0.key != "client|setname" }
            #expect(delta["get"] == 10, "\(delta)")
            // Everything else is the ledger's background writes (its aggregates): no other command per hit.
            let ledger: Set<String> = ["hincrby", "pexpire", "zadd", "hset", "expire"]
            #expect(Set(delta.keys).subtracting(["get"]).isSubset(of: ledger), "\(delta)")
        }
    }

    @Test func instancesShareTheirCacheOverTLS() async throws {
        let server = try RedisServerProcess(tls: true)
        var tls = Self.config(redisPort: server.port)
        tls.state.tls = true
        tls.state.tlsCAFile = RedisServerProcess.tlsFixtures.appendingPathComponent("ca.pem").path
        let config = tls
        try await withTestGateway(config) { _, a in
            try await withTestGateway(config) { _, b in
                #expect(try await send("\(a)/readyz", method: "GET", contentType: nil).status == 200)
                #expect(try await send("\(a)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "miss")
                var hit = false
                for _ in 0..<50 where !hit {
                    hit = try await send("\(b)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "hit-exact"
                    if !hit { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(hit)
            }
        }
    }

    @Test func aSemanticEntryWrittenThroughOneInstanceIsFoundThroughAnotherAndRemovedFromBoth() async throws {
        let server = try RedisServerProcess()
        var shared = Self.config(redisPort: server.port)
        // Only the semantic cache, so that a hit through B can only come from A's entry, replicated.
        shared.cache.exactEnabled = false
        let config = shared
        let embeddings = EmbeddingsSetting.model(directory: ModelStore().modelDirectory)
        try await withTestGateway(config, embeddings: embeddings) { _, a in
            try await withTestGateway(config, embeddings: embeddings) { gatewayB, b in
                let first = try await send("\(a)/v1/chat/completions", body: Self.body)
                #expect(first.status == 200 && first.header("x-switchyard-cache") != "hit-semantic")
                let written = ContinuousClock.now
                var hit: TestResponse?
                for _ in 0..<200 where hit == nil {
                    if gatewayB.semanticCache.count > 0 {
                        let response = try await send("\(b)/v1/chat/completions", body: Self.body)
                        if response.header("x-switchyard-cache") == "hit-semantic" { hit = response }
                    } else {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                }
                #expect(hit != nil, "replicated to B")
                #expect(ContinuousClock.now - written < .seconds(2))
                // An instance started now catches up from the stream.
                try await withTestGateway(config, embeddings: embeddings) { gatewayC, _ in
                    var caughtUp = false
                    for _ in 0..<200 where !caughtUp {
                        caughtUp = gatewayC.semanticCache.count == 1
                        if !caughtUp { try await Task.sleep(for: .milliseconds(10)) }
                    }
                    #expect(caughtUp, "a new instance replays what was written before it started")
                }
                // Feedback through B removes it for A too.
                guard let entry = hit?.header("x-switchyard-cache-entry") else { return }
                let feedback = try await send("\(b)/v1/cache/feedback", body: #"{"entry_id":"\#(entry)","verdict":"bad"}"#)
                #expect(feedback.status == 200, "\(feedback.body)")
                var gone = false
                for _ in 0..<100 where !gone {
                    gone = try await send("\(a)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") != "hit-semantic"
                    if !gone { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(gone, "removed through B, gone for A")
            }
        }
    }

    @Test func aReplicaThatLosesItsConnectionGoesOnFromTheLastRecordItApplied() async throws {
        let server = try RedisServerProcess()
        let configuration = RedisConfiguration(port: server.port, connectTimeout: .milliseconds(300), commandTimeout: .milliseconds(300))
        let writerClient = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton)
        let readerClient = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton)
        let admin = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton)
        func cache(_ client: RedisClient) -> ReplicatedSemanticCache {
            ReplicatedSemanticCache(local: InMemorySemanticCache(maxEntries: 100, maxBytes: 1 << 20, annThreshold: 1000), client: client,
                                    keyPrefix: "test:", maximumLength: 1000, dimensions: 3)
        }
        let writer = cache(writerClient), reader = cache(readerClient)
        let answer = Self.answer(now: .now)
        func write(_ index: Int) {
            writer.insert(SemanticEntry(id: "sc_\(index)", namespace: "ns", text: "q\(index)", vector: [1, Float(index), 0], answer: answer))
        }
        func waitUntil(_ count: Int) async throws -> Bool {
            for _ in 0..<300 {
                if reader.replication.applied >= count { return true }
                try await Task.sleep(for: .milliseconds(10))
            }
            return false
        }
        let replication = Task { await reader.replicate() }
        write(0)
        write(1)
        #expect(try await waitUntil(2))
        // Only the reader's blocked XREAD is closed: the writer's records must reach the stream (a write on a
        // killed connection is dropped, as a cache write may be).
        var list = "", blocked: [String] = []
        for _ in 0..<100 where blocked.isEmpty {
            list = try await admin.send(["CLIENT", "LIST"]).string ?? ""
            blocked = list.split(separator: "\n").filter { $0.contains("cmd=xread") }.compactMap { line in
                line.split(separator: " ").first { $0.hasPrefix("id=") }.map { String($0.dropFirst(3)) }
            }
            if blocked.isEmpty { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(blocked.count == 1, "\(list)")
        for id in blocked {
            let killed = try await admin.send(["CLIENT", "KILL", "ID", .string(id)])
            #expect(killed.integer == 1, "\(killed)")
        }
        // Written while the reader reconnects (its backoff is at least 50 ms): caught up after it, each record once.
        write(2)
        write(3)
        #expect(try await waitUntil(4))
        try await Task.sleep(for: .milliseconds(100))
        #expect(reader.replication.applied == 4, "no record applied twice")
        #expect(reader.local.count == 4)
        replication.cancel()
        _ = await replication.value
        await writerClient.close()
        await readerClient.close()
        await admin.close()
    }

    /// The breakers' board reads only plain times from its hash: garbage, huge or past values written by anything
    /// else open nothing.
    @Test func theBreakerBoardReadsOnlyPlainFutureTimes() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: RedisConfiguration(port: server.port), group: MultiThreadedEventLoopGroup.singleton)
        let board = RedisBreakerBoard(client: client, keyPrefix: "t:")
        try await board.opened("a/m", until: 2_000)
        _ = try await client.send(["HSET", "t:breakers", "b/m", "not a number", "c/m", "99999999999999999999999", "d/m", "-5",
                                   "e/m", "1500"])
        #expect(try await board.open(now: 1_000) == ["a/m": 2_000, "e/m": 1_500])
        #expect(try await board.open(now: 1_500) == ["a/m": 2_000])
        #expect(try await board.open(now: 2_000) == [:])
        await client.close()
    }

    @Test func semanticEntriesAreVersionedAndCheckedWhenRead() {
        let now = ContinuousClock.now
        let wall: Int64 = 1_790_000_000_000
        let answer = Self.answer(now: now)
        let entry = SemanticEntry(id: "sc_1", namespace: "ns", text: "What?", vector: [0.6, -0.8, 0], answer: answer)
        let bytes = SemanticEntryCoding.encode(entry, now: now, wallNow: wall)
        let back = SemanticEntryCoding.decode(bytes, now: now, wallNow: wall)
        #expect(back?.id == "sc_1" && back?.namespace == "ns" && back?.text == "What?" && back?.vector == [0.6, -0.8, 0])
        var nan = bytes
        let vectorStart = bytes.count - CachedAnswerCoding.encode(answer, now: now, wallNow: wall).count - 12
        nan[vectorStart..<(vectorStart + 4)] = [0, 0, 0xC0, 0x7F]  // a NaN
        #expect(SemanticEntryCoding.decode(nan, now: now, wallNow: wall) == nil)
        #expect(SemanticEntryCoding.decode(Array(bytes.prefix(30)), now: now, wallNow: wall) == nil)
        #expect(SemanticEntryCoding.decode(bytes, now: now, wallNow: wall + 120_000) == nil, "expired")
    }

    @Test func aStoreThatIsDownIsBypassedOrRefusesByPolicy() async throws {
        let server = try RedisServerProcess()
        server.stop()
        try await withTestGateway(Self.config(redisPort: server.port)) { _, url in
            let started = ContinuousClock.now
            let response = try await send("\(url)/v1/chat/completions", body: Self.body)
            #expect(response.status == 200, "fail open: the model answers")
            #expect(ContinuousClock.now - started < .seconds(2))
            let ready = try await send("\(url)/readyz", method: "GET", contentType: nil)
            #expect(ready.status == 200 && ready.body.contains("redis unreachable"), "failing open, still ready: \(ready.body)")
            let metrics = try await send("\(url)/metrics", method: "GET", contentType: nil).body
            #expect(metrics.contains(#"switchyard_state_errors_total{seam="exact_cache"} 1"#), "\(metrics.split(separator: "\n").filter { $0.contains("state_errors") })")
        }
        try await withTestGateway(Self.config(redisPort: server.port, policy: .failClosed)) { _, url in
            let response = try await send("\(url)/v1/chat/completions", body: Self.body)
            #expect(response.status >= 500 && response.body.contains("store is unavailable"), "\(response.status) \(response.body)")
            let ready = try await send("\(url)/readyz", method: "GET", contentType: nil)
            #expect(ready.status == 503, "failing closed, not ready: \(ready.body)")
        }
        // Redis back while a gateway runs: it recovers by itself (reconnect after backoff) and caches again.
        try await withTestGateway(Self.config(redisPort: server.port)) { _, url in
            #expect(try await send("\(url)/v1/chat/completions", body: Self.body).status == 200)
            try server.start()
            var reachable = false
            for _ in 0..<120 where !reachable {
                reachable = try await send("\(url)/readyz", method: "GET", contentType: nil).body.contains("redis reachable")
                if !reachable { try await Task.sleep(for: .milliseconds(50)) }
            }
            #expect(reachable, "reconnected within 6 s")
            _ = try await send("\(url)/v1/chat/completions", body: Self.body)
            var hit = false
            for _ in 0..<50 where !hit {
                hit = try await send("\(url)/v1/chat/completions", body: Self.body).header("x-switchyard-cache") == "hit-exact"
                if !hit { try await Task.sleep(for: .milliseconds(20)) }
            }
            #expect(hit, "caching again through redis")
        }
    }

    /// A small answer ("hi") stored at `now` for 60 s.
    static func answer(now: ContinuousClock.Instant) -> CachedAnswer {
        let response = ChatResponse(id: "x", model: "m", choices: [ChatChoice(content: [.text("hi")], stopReason: .endTurn)],
                                    usage: Usage(inputTokens: 3, outputTokens: 1))
        return CachedAnswer(tenant: "t", model: "m", response: response, raw: nil, cost: NanoUSD(42), storedAt: now,
                            expiresAt: now + .seconds(60))
    }

    @Test func storedAnswersAreVersionedAndCheckedWhenRead() {
        let now = ContinuousClock.now
        let wall: Int64 = 1_790_000_000_000
        let answer = Self.answer(now: now)
        let bytes = CachedAnswerCoding.encode(answer, now: now, wallNow: wall)
        let back = CachedAnswerCoding.decode(bytes, now: now, wallNow: wall + 1000)
        #expect(back?.tenant == "t" && back?.cost == NanoUSD(42) && back?.completion.usage.inputTokens == 3)
        let content = try? back?.completion.canonicalResponse().choices.first?.content
        #expect(content == [.text("hi")])
        // Expired, another version, truncated, or a header out of range: a miss.
        #expect(CachedAnswerCoding.decode(bytes, now: now, wallNow: wall + 61_000) == nil)
        var other = bytes
        other[3] = UInt8(ascii: "2")
        #expect(CachedAnswerCoding.decode(other, now: now, wallNow: wall) == nil)
        #expect(CachedAnswerCoding.decode(Array(bytes.prefix(20)), now: now, wallNow: wall) == nil)
        #expect(CachedAnswerCoding.decode(Array("SYC1\u{0}\u{0}\u{0}\u{2}{}".utf8), now: now, wallNow: wall) == nil)
    }

    @Test func anAnswerKeptPastItsTTLReadsBackAsStaleUntilItsRetentionEnds() {
        let now = ContinuousClock.now
        let wall: Int64 = 1_790_000_000_000
        var answer = Self.answer(now: now)
        answer.retainedUntil = answer.expiresAt + .seconds(60)
        let bytes = CachedAnswerCoding.encode(answer, now: now, wallNow: wall)
        // Past the TTL, within the retention: returned, with its expiry in the past (the caller decides).
        let stale = CachedAnswerCoding.decode(bytes, now: now, wallNow: wall + 90_000)
        #expect(stale != nil)
        #expect(stale.map { $0.expiresAt < now && $0.retainedUntil > now } == true)
        #expect(CachedAnswerCoding.decode(bytes, now: now, wallNow: wall + 121_000) == nil)
        // A retention shorter than the TTL (a hostile or broken writer) is refused rather than trusted.
        func entry(retain: Int64) -> [UInt8] {
            let header = Array(#"{"tenant":"t","model":"m","cost":1,"stored_ms":\#(wall),"expires_ms":\#(wall + 60_000),"retain_ms":\#(retain),"format":"openai","usage":[1,1,0,0]}"#.utf8)
            let length = UInt32(header.count)
            return Array("SYC1".utf8) + [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)] + header
        }
        #expect(CachedAnswerCoding.decode(entry(retain: wall + 120_000), now: now, wallNow: wall + 90_000) != nil)
        #expect(CachedAnswerCoding.decode(entry(retain: wall + 1), now: now, wallNow: wall) == nil)
    }
}

@Suite struct RedisExactCacheTests {
    @Test func putThenLookup() async throws {
        let server = try RedisServerProcess()
        let client = RedisClient(configuration: server.configuration(), group: .singletonMultiThreadedEventLoopGroup)
        let failures = NIOLockedValueBoxCounter()
        let store = RedisExactCache(client: client, keyPrefix: "t:", onWriteFailure: { failures.add() })
        store.put("k1", SharedStateTests.answer(now: .now))
        var found: CachedAnswer?
        for _ in 0..<50 where found == nil {
            found = try await store.lookup("k1", tenant: "t", now: .now)
            if found == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(found?.tenant == "t", "write failures: \(failures.value)")
        #expect(try await store.lookup("k1", tenant: "other", now: .now) == nil, "another tenant's key")
        #expect(try await store.removeAll(tenant: "t") == 1)
        #expect(try await store.lookup("k1", tenant: "t", now: .now) == nil)
        await client.close()
    }
}

final class NIOLockedValueBoxCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.lock(); count += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
}
