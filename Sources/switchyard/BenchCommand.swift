import ArgumentParser
import AsyncHTTPClient
import Caching
import Embeddings
import Server
import Foundation
import SwitchyardCore
import SwitchyardModels
import NIOCore
import NIOHTTP1
import NIOSSL
import Providers
import NIOPosix
import Redis
import Routing
import Stores

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks (commands, not tests).", subcommands: [UpstreamClientFloor.self, EmbeddingsBench.self, RouterBench.self, VerifierBench.self,
                                                   ExactStoreBench.self, ReplicationBench.self, LimiterBench.self,
                                                   LedgerBench.self])
}

/// Measures what an upstream HTTP client alone costs, posting a small chat request in a closed loop with no server
/// work: the loop-local client the gateway uses for every upstream, or AsyncHTTPClient as a reference.
/// bench/overhead runs it against nginx so the gateway's throughput can be read against this floor; bench/tls-client
/// runs both clients against nginx over HTTPS.
struct UpstreamClientFloor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "client-floor")

    enum Client: String, ExpressibleByArgument { case loopLocal = "loop-local", asyncHTTPClient = "async-http-client" }

    @Option(help: "URL to POST to.") var url: String
    @Option(help: "Concurrent requests in flight.") var concurrency = 128
    @Option(help: "Requests in total.") var requests = 100_000
    @Option(help: "loop-local or async-http-client.") var client = Client.loopLocal
    @Option(help: "HTTPS: a PEM file of the roots the server's certificate chains to (default: the system's).")
    var caFile: String?

    func run() async throws {
        let body = ByteBuffer(string: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise the benefits of an AI gateway in one sentence."}]}"#)
        let send: @Sendable () async throws -> Void
        let shutdown: @Sendable () async throws -> Void
        switch client {
        case .loopLocal:
            guard let endpoint = UpstreamEndpoint(baseURL: url) else { throw ValidationError("bad URL \(url)") }
            let lean = LoopLocalHTTPClient(connectTimeout: .seconds(5), connectionsPerHost: max(concurrency, 8))
            let target = String(url.dropFirst(url.hasPrefix("https") ? 8 : 7).drop { $0 != "/" })
            let request = UpstreamRequest(endpoint: endpoint, target: target.isEmpty ? "/" : target,
                                          headers: ["content-type": "application/json"], body: body, tlsCAFile: caFile)
            send = {
                let response = try await lean.execute(request, deadline: .now() + .seconds(30), streaming: false,
                                                      maximumBodyBytes: 1 << 20)
                guard response.status == .ok else { throw ValidationError("status \(response.status)") }
            }
            shutdown = { await lean.shutdown() }
        case .asyncHTTPClient:
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool = .init(idleTimeout: .seconds(60),
                                                 concurrentHTTP1ConnectionsPerHostSoftLimit: max(concurrency, 8))
            configuration.tracing.tracer = nil
            if let caFile {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.trustRoots = .file(caFile)
                configuration.tlsConfiguration = tls
            }
            let ahc = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            let url = self.url
            send = {
                var request = HTTPClientRequest(url: url)
                request.method = .POST
                request.headers.add(name: "content-type", value: "application/json")
                request.body = .bytes(body)
                let response = try await ahc.execute(request, timeout: .seconds(30))
                _ = try await response.body.collect(upTo: 1 << 20)
            }
            shutdown = { try await ahc.shutdown() }
        }
        let perWorker = requests / concurrency
        let cpuBefore = Self.cpuSeconds()
        let started = ContinuousClock.now
        let completed = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    for _ in 0..<perWorker { try await send() }
                    return perWorker
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - started
        let seconds = elapsed.inSeconds
        let cpu = Self.cpuSeconds() - cpuBefore
        try await shutdown()
        print("client-floor client=\(client.rawValue) requests=\(completed) seconds=\(seconds) "
              + "rps=\(Double(completed) / seconds) cpu_us_per_request=\(cpu / Double(completed) * 1e6)")
    }

    static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
            + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}

/// Times the Swift MiniLM encoder on the texts `bench/embeddings` writes (the same texts sentence-transformers gets).
struct EmbeddingsBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "embeddings")

    @Option(help: "JSON file with {query: String, queries: [String], passages: [String]}.") var texts: String
    @Option(help: "Model cache folder.") var dir: String?
    @Option(help: "Repetitions per measurement.") var repetitions = 50
    @Option(help: "Time only this measurement (single, queries or passages), for profiling.") var only: String?

    func run() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: texts))
        let json = try JSONValue.parse(data)
        let query = json["query"]?.stringValue ?? ""
        let queries = json["queries"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let passages = json["passages"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let encoder = try MiniLMEncoder(directory: try ModelStore(root: dir).pull())
        func time(_ name: String, _ body: () -> Void) -> [Double] {
            if let only, only != name { return [.nan] }
            body()  // warm-up
            return (0..<repetitions).map { _ in
                let start = ContinuousClock.now
                body()
                let elapsed = ContinuousClock.now - start
                return elapsed.inSeconds
            }.sorted()
        }
        let single = time("single") { _ = encoder.embed(query) }
        let short = time("queries") { _ = encoder.embed(batch: queries.map(encoder.tokenizer.encode)) }
        let long = time("passages") { _ = encoder.embed(batch: passages.map(encoder.tokenizer.encode)) }
        let result: JSONValue = [
            "single_query_p50_ms": .double(single[single.count / 2] * 1000),
            "query_tokens": .int(Int64(encoder.tokenizer.encode(query).count)),
            "batch32_queries_per_second": .double(Double(queries.count) / short[short.count / 2]),
            "query_batch_mean_tokens": .double(Double(queries.map { encoder.tokenizer.encode($0).count }.reduce(0, +)) / Double(max(queries.count, 1))),
            "batch8_passages_per_second": .double(Double(passages.count) / long[long.count / 2]),
            // The fastest repetition of each: steadier than the median on a shared machine, for A/B comparisons.
            "best_single_query_ms": .double(single[0] * 1000),
            "best_batch32_queries_per_second": .double(Double(queries.count) / short[0]),
            "best_batch8_passages_per_second": .double(Double(passages.count) / long[0]),
            "passage_mean_tokens": .double(Double(passages.map { encoder.tokenizer.encode($0).count }.reduce(0, +)) / Double(max(passages.count, 1))),
        ]
        print(json: result)
    }

    func print(json: JSONValue) {
        Swift.print(json.jsonString(sortedKeys: true))
    }
}

/// Times the complexity decision after the embedding: text features, standardisation, both heads, the percentile.
struct RouterBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "router")

    @Option(help: "Decisions to time.") var decisions = 200_000

    func run() throws {
        let classifier: ComplexityClassifier
        do {
            classifier = try ComplexityClassifier.bundled()
        } catch {
            throw ValidationError(error.description)
        }
        // Unit vectors and prompts of the sizes a gateway sees (a line to a paragraph); the embedding is an input.
        let prompts = ["hi", "How do I reset my password?",
                       String(repeating: "A train leaves at 3:15 pm at 62.5 miles per hour; how far has it gone by 5 pm? ", count: 4),
                       String(repeating: "Summarise the following support conversation in two sentences. ", count: 12)]
        let vectors: [[Float]] = (0..<8).map { seed in
            let raw = (0..<ComplexityClassifier.embeddingDimension).map { Float(sin(Double($0 * 7 + seed))) }
            let norm = raw.reduce(0) { $0 + $1 * $1 }.squareRoot()
            return raw.map { $0 / norm }
        }
        var sink = 0.0
        let started = ContinuousClock.now
        for index in 0..<decisions {
            let score = classifier.score(embedding: vectors[index & 7], text: prompts[index & 3]) ?? 0
            sink += classifier.percentile(of: score)
        }
        let elapsed = (ContinuousClock.now - started).inSeconds
        print("router decisions=\(decisions) seconds=\(elapsed) us_per_decision=\(elapsed / Double(decisions) * 1e6) checksum=\(sink)")
    }
}

/// What the learned verifier adds to one semantic lookup: the guard and the verifier over `candidates` candidates
/// (each a rephrasing or a one-word edit of the query), against the guard alone (today's verification), timed in
/// the same run.
struct VerifierBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verifier")

    @Option(help: "Lookups to time.") var lookups = 20_000
    @Option(help: "Candidates verified per lookup (the stage verifies up to 5).") var candidates = 5
    @Option(help: "Model cache folder.") var dir: String?

    func run() throws {
        let verifier: PairVerifier
        do {
            verifier = try PairVerifier.bundled()
        } catch {
            throw ValidationError(error.description)
        }
        let encoder = try CachedEmbeddings.encoder(ModelStore(root: dir))
        let words = EncoderWordVectors(encoder: encoder)
        let texts = ["How do I activate my debit card?", "How do I activate my credit card?", "How can I activate my new card?",
                     "Why was my card declined at the shop?", "Send me the daily report", "Send me the weekly report",
                     "What is the exchange rate for transfers abroad?", "Is there a fee for international transfers?"]
        let vectors = texts.map(encoder.embed)
        func time(_ body: (Int) -> Double) -> Double {
            var sink = 0.0
            let started = ContinuousClock.now
            for index in 0..<lookups { sink += body(index) }
            let elapsed = (ContinuousClock.now - started).inSeconds
            if sink.isNaN { print("unreachable") }
            return elapsed / Double(lookups) * 1e6
        }
        let rules = time { index in
            let query = texts[index & 7]
            var passed = 0.0
            for offset in 1...candidates where SemanticGuard.check(query, against: texts[(index + offset) & 7]) == nil { passed += 1 }
            return passed
        }
        let learned = time { index in
            let query = texts[index & 7]
            let pair = verifier.prepared(PairVerifier.PairText(text: query, vector: vectors[index & 7]))
            var total = 0.0
            for offset in 1...candidates {
                let other = (index + offset) & 7
                guard SemanticGuard.check(query, against: texts[other]) == nil else { continue }
                total += verifier.probability(query: pair, candidate: PairVerifier.PairText(text: texts[other], vector: vectors[other]),
                                              words: words)
            }
            return total
        }
        print(String(format: "verifier lookups=%d candidates=%d rules_us_per_lookup=%.2f rules_and_learned_us_per_lookup=%.2f "
                     + "added_us=%.2f ratio=%.2f", lookups, candidates, rules, learned, learned - rules, learned / max(rules, 1e-9)))
    }
}

/// What an exact-cache hit costs through the Redis store against the in-memory one: the same answer looked up
/// `lookups` times in each, one at a time (each Redis lookup is one GET round trip on loopback). Starts its own
/// redis-server on a free port unless `--redis-port` names a running one.
struct ExactStoreBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "exact-store")

    @Option(help: "Lookups to time in each store.") var lookups = 20_000
    @Option(help: "A running redis-server's port on 127.0.0.1 (default: start one).") var redisPort: Int?
    @Option(help: "Answer size in bytes.") var answerBytes = 2000

    func run() async throws {
        let (port, server) = try await BenchRedis.start(redisPort)
        defer { BenchRedis.stop(server) }
        let client = RedisClient(configuration: RedisConfiguration(port: port, poolSize: 1), group: MultiThreadedEventLoopGroup.singleton)
        let redis = RedisExactCache(client: client, keyPrefix: "bench:")
        let memory = InMemoryExactCache(maxEntries: 1000, maxBytes: 1 << 26)
        let text = String(repeating: "word ", count: max(answerBytes / 5, 1))
        let body = #"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"\#(text)"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":400,"total_tokens":410}}"#
        let now = ContinuousClock.now
        let answer = CachedAnswer(tenant: "bench", model: "gpt-4o-mini",
                                  completion: Completion(usage: Usage(inputTokens: 10, outputTokens: 400),
                                                         raw: (.openAI, ByteBuffer(string: body))),
                                  cost: NanoUSD(1000), storedAt: now, expiresAt: now + .seconds(3600))
        memory.put("key", answer)
        redis.put("key", answer)
        try await Task.sleep(for: .milliseconds(100))
        func percentiles(_ store: any ExactCacheStore) async throws -> (p50: Double, p99: Double) {
            var samples: [Double] = []
            samples.reserveCapacity(lookups)
            for _ in 0..<1000 { _ = try await store.lookup("key", tenant: "bench", now: .now) }
            for _ in 0..<lookups {
                let started = ContinuousClock.now
                guard try await store.lookup("key", tenant: "bench", now: .now) != nil else { throw ValidationError("a lookup missed") }
                samples.append((ContinuousClock.now - started).inSeconds * 1e6)
            }
            samples.sort()
            return (samples[samples.count / 2], samples[min(samples.count - 1, samples.count * 99 / 100)])
        }
        let inMemory = try await percentiles(memory)
        let shared = try await percentiles(redis)
        await client.close()
        print(String(format: "exact-store lookups=%d answer_bytes=%d memory_p50_us=%.1f memory_p99_us=%.1f redis_p50_us=%.1f "
                     + "redis_p99_us=%.1f added_p50_us=%.1f added_p99_us=%.1f", lookups, body.utf8.count, inMemory.p50, inMemory.p99,
                     shared.p50, shared.p99, shared.p50 - inMemory.p50, shared.p99 - inMemory.p99))
    }
}

/// A redis-server for a benchmark: the one on `port`, or one started on a free loopback port.
enum BenchRedis {
    static func start(_ port: Int?) async throws -> (Int, Process?) {
        if let port { return (port, nil) }
        guard let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"].first(where: FileManager.default.isExecutableFile) else {
            throw ValidationError("redis-server is not installed (scripts/redis.sh install), or pass --redis-port")
        }
        let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let free = probe.localAddress?.port ?? 0
        try await probe.close()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--port", String(free), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        try await Task.sleep(for: .milliseconds(300))
        return (free, process)
    }

    static func stop(_ process: Process?) {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// How long a semantic entry written through one instance takes to reach another's index, under a steady write
/// rate: two replicated caches on one redis-server (as two gateways would have), `rate` inserts a second through the
/// first for `seconds`, and the lag of each entry the second applies (write to application, wall clock).
struct ReplicationBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "semantic-replication")

    @Option(help: "Inserts a second through the writing instance.") var rate = 1000
    @Option(help: "How long to write.") var seconds = 5
    @Option(help: "A running redis-server's port on 127.0.0.1 (default: start one).") var redisPort: Int?

    func run() async throws {
        let (port, server) = try await BenchRedis.start(redisPort)
        defer { BenchRedis.stop(server) }
        let configuration = RedisConfiguration(port: port, poolSize: 2)
        let writerClient = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton)
        let readerClient = RedisClient(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton)
        let prefix = "bench\(UInt32.random(in: 0...UInt32.max)):"
        let writer = ReplicatedSemanticCache(local: InMemorySemanticCache(maxEntries: 100_000, maxBytes: 1 << 30, annThreshold: 1 << 30),
                                             client: writerClient, keyPrefix: prefix, maximumLength: 200_000)
        let reader = ReplicatedSemanticCache(local: InMemorySemanticCache(maxEntries: 100_000, maxBytes: 1 << 30, annThreshold: 1 << 30),
                                             client: readerClient, keyPrefix: prefix, maximumLength: 200_000)
        let replication = Task { await reader.replicate() }
        try await Task.sleep(for: .milliseconds(200))
        let now = ContinuousClock.now
        let answer = CachedAnswer(tenant: "bench", model: "gpt-4o-mini",
                                  completion: Completion(usage: Usage(inputTokens: 10, outputTokens: 100),
                                                         raw: (.openAI, ByteBuffer(string: String(repeating: "x", count: 1500)))),
                                  cost: NanoUSD(1000), storedAt: now, expiresAt: now + .seconds(3600))
        let total = rate * seconds
        let started = ContinuousClock.now
        for index in 0..<total {
            // Paced: each insert at its scheduled time.
            let due = started + .nanoseconds(Int64(index) * 1_000_000_000 / Int64(max(rate, 1)))
            if due > .now { try await Task.sleep(until: due) }
            var vector = [Float](repeating: 0, count: 384)
            vector[index % 384] = 1
            writer.insert(SemanticEntry(id: "sc_\(index)", namespace: "ns\(index % 16)", text: "question \(index)", vector: vector,
                                        answer: answer))
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while reader.replication.applied < total, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        replication.cancel()
        _ = await replication.value
        let (applied, lags) = reader.replication
        let sorted = lags.sorted()
        func percentile(_ p: Double) -> Int64 { sorted.isEmpty ? -1 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        print("semantic-replication rate=\(rate)/s seconds=\(seconds) written=\(total) applied=\(applied) lag_ms_p50=\(percentile(0.5)) "
              + "lag_ms_p99=\(percentile(0.99)) lag_ms_max=\(sorted.last ?? -1) (the last \(sorted.count) entries)")
        await writerClient.close()
        await readerClient.close()
    }
}
