import ArgumentParser
import AsyncHTTPClient
import Embeddings
import Foundation
import SwitchyardModels
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks (commands, not tests).", subcommands: [UpstreamClientFloor.self, EmbeddingsBench.self])
}

/// Measures what the upstream HTTP client alone costs: the same AsyncHTTPClient configuration the gateway uses,
/// posting a small chat request in a closed loop, with no server work. bench/overhead runs it against nginx so
/// the gateway's throughput can be read against this floor.
struct UpstreamClientFloor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "client-floor")

    @Option(help: "URL to POST to.") var url: String
    @Option(help: "Concurrent requests in flight.") var concurrency = 128
    @Option(help: "Requests in total.") var requests = 100_000

    func run() async throws {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(concurrency, 8))
        configuration.tracing.tracer = nil
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let body = ByteBuffer(string: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise the benefits of an AI gateway in one sentence."}]}"#)
        let url = self.url
        let perWorker = requests / concurrency
        let cpuBefore = Self.cpuSeconds()
        let started = ContinuousClock.now
        let completed = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    for _ in 0..<perWorker {
                        var request = HTTPClientRequest(url: url)
                        request.method = .POST
                        request.headers.add(name: "content-type", value: "application/json")
                        request.body = .bytes(body)
                        let response = try await client.execute(request, timeout: .seconds(30))
                        _ = try await response.body.collect(upTo: 1 << 20)
                    }
                    return perWorker
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let cpu = Self.cpuSeconds() - cpuBefore
        try await client.shutdown()
        print("client-floor requests=\(completed) seconds=\(seconds) rps=\(Double(completed) / seconds) "
              + "cpu_us_per_request=\(cpu / Double(completed) * 1e6)")
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

    func run() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: texts))
        let json = try JSONValue.parse(data)
        let query = json["query"]?.stringValue ?? ""
        let queries = json["queries"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let passages = json["passages"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let encoder = try MiniLMEncoder(directory: try ModelStore(root: dir).pull())
        func time(_ body: () -> Void) -> [Double] {
            body()  // warm-up
            return (0..<repetitions).map { _ in
                let start = ContinuousClock.now
                body()
                let elapsed = ContinuousClock.now - start
                return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            }.sorted()
        }
        let single = time { _ = encoder.embed(query) }
        let short = time { _ = encoder.embed(batch: queries.map(encoder.tokenizer.encode)) }
        let long = time { _ = encoder.embed(batch: passages.map(encoder.tokenizer.encode)) }
        let result: JSONValue = [
            "single_query_p50_ms": .double(single[single.count / 2] * 1000),
            "query_tokens": .int(Int64(encoder.tokenizer.encode(query).count)),
            "batch32_queries_per_second": .double(Double(queries.count) / short[short.count / 2]),
            "query_batch_mean_tokens": .double(Double(queries.map { encoder.tokenizer.encode($0).count }.reduce(0, +)) / Double(max(queries.count, 1))),
            "batch8_passages_per_second": .double(Double(passages.count) / long[long.count / 2]),
            "passage_mean_tokens": .double(Double(passages.map { encoder.tokenizer.encode($0).count }.reduce(0, +)) / Double(max(passages.count, 1))),
        ]
        print(json: result)
    }

    func print(json: JSONValue) {
        Swift.print(json.jsonString(sortedKeys: true))
    }
}
