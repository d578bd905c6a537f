import ArgumentParser
import Foundation
import Histogram
import LoadTest
import Providers
import SwitchyardCore
import SwitchyardModels

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `switchyard load`: drives an OpenAI- or Anthropic-compatible endpoint and reports latency, TTFT, throughput,
/// errors, cache hits and cost.
struct Load: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load-test an OpenAI- or Anthropic-compatible endpoint (the gateway, the mock, or a provider).")

    @Option(help: "Base URL of the endpoint (without /v1).") var url = "http://127.0.0.1:8080"
    @Option(help: "openai or anthropic.") var api = "openai"
    @Option(help: "Model to request.") var model = "gpt-4o-mini"
    @Flag(help: "Stream the answers (SSE).") var stream = false
    @Option(help: "Open loop: requests per second (constant).") var rate: Double?
    @Option(help: "Open loop: ramp from this rate to --rate over the duration.") var rampFrom: Double?
    @Option(help: "Closed loop: concurrent users (instead of --rate).") var users: Int?
    @Option(help: "Closed loop: think time between a user's requests, in milliseconds.") var thinkMs = 0
    @Option(help: "Duration in seconds.") var duration = 10.0
    @Option(help: "Trace of prompt and answer lengths (Azure CSV or Mooncake JSONL); default: 50–2,000-token prompts.")
    var trace: String?
    @Option(help: "API key sent as Bearer (OpenAI) or x-api-key (Anthropic).") var apiKey: String?
    @Option(help: "Extra header NAME:VALUE; repeatable.") var header: [String] = []
    @Option(help: "Daily request volume for the projected daily and monthly cost.") var dailyVolume = 100_000
    @Option(help: "Write the result as JSON to this file.") var json: String?
    @Option(help: "Most connections to the endpoint per event loop (each stream in flight holds one).") var connections = 8192

    func run() async throws {
        guard let apiKind = LoadPlan.API(rawValue: api) else { throw ValidationError("--api is openai or anthropic") }
        let length = Duration.milliseconds(Int64(duration * 1000))
        let pattern: LoadPlan.Pattern
        if let users {
            pattern = .closedLoop(users: users, thinkTime: .milliseconds(thinkMs), duration: length)
        } else if let rate {
            pattern = .openLoop(rampFrom.map { .ramp(from: $0, to: rate, duration: length) } ?? .constant(rate: rate, duration: length))
        } else {
            throw ValidationError("give --rate (open loop) or --users (closed loop)")
        }
        let prompts = try trace.map { path throws(LoadError) in try PromptSource(trace: path) }
            ?? PromptSource(promptTokens: [50, 120, 300, 600, 1200, 2000], maxTokens: [40, 100, 200, 400])
        let headers = header.compactMap { entry -> (String, String)? in
            guard let colon = entry.firstIndex(of: ":") else { return nil }
            return (String(entry[..<colon]), String(entry[entry.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
        }
        let plan = LoadPlan(baseURL: url, api: apiKind, model: model, stream: stream, pattern: pattern, prompts: prompts,
                            apiKey: apiKey, headers: headers)
        let transports = HTTPClientService(providers: [
            // The client splits its limit across the event loops; requests spawned from one loop stay on it.
            ProviderConfig(name: "load", kind: .openAICompatible, baseURL: url,
                           poolSize: connections * max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))),
        ]).transports
        let runner = try LoadRunner(plan: plan, transports: transports)
        let interactive = isatty(STDERR_FILENO) != 0
        let cpuBefore = UpstreamClientFloor.cpuSeconds()
        let started = ContinuousClock.now
        await runner.run { elapsed, snapshot in
            guard interactive else { return }
            let line = String(format: "\r%5.0fs  %7.1f req/s  p50 %7.1f ms  p99 %7.1f ms  errors %d   ",
                              elapsed.inSeconds, Double(snapshot.latency.totalCount) / max(elapsed.inSeconds, 0.001),
                              Double(snapshot.latency.valueAtPercentile(50)) / 1000,
                              Double(snapshot.latency.valueAtPercentile(99)) / 1000, snapshot.errorCount)
            FileHandle.standardError.write(Data(line.utf8))
        }
        let wall = (ContinuousClock.now - started).inSeconds
        let cpu = UpstreamClientFloor.cpuSeconds() - cpuBefore
        try await transports.shutdown()
        if interactive { FileHandle.standardError.write(Data("\n".utf8)) }
        let report = Self.report(runner.statistics.snapshot, wall: wall, cpu: cpu, dailyVolume: dailyVolume, plan: plan)
        print(report.text)
        if let json { try report.json.jsonString(sortedKeys: true).write(toFile: json, atomically: true, encoding: .utf8) }
    }

    /// The summary table and the JSON result.
    static func report(_ s: LoadStatistics.Snapshot, wall: Double, cpu: Double, dailyVolume: Int, plan: LoadPlan)
        -> (text: String, json: JSONValue)
    {
        func ms(_ histogram: Histogram<UInt64>, _ percentile: Double) -> Double {
            histogram.totalCount == 0 ? 0 : Double(histogram.valueAtPercentile(percentile)) / 1000
        }
        func percentiles(_ histogram: Histogram<UInt64>, scale: Double = 1000) -> JSONValue {
            guard histogram.totalCount > 0 else { return .null }
            return ["p50": .double(Double(histogram.valueAtPercentile(50)) / scale),
                    "p95": .double(Double(histogram.valueAtPercentile(95)) / scale),
                    "p99": .double(Double(histogram.valueAtPercentile(99)) / scale),
                    "max": .double(Double(histogram.max) / scale), "count": .int(Int64(histogram.totalCount))]
        }
        let completed = s.succeeded + s.errorCount
        let costPerRequest = s.priced > 0 ? Double(s.costNanoUSD) / 1e9 / Double(s.priced) : 0
        let cpuShare = cpu / max(wall, 0.001)
        var lines = [
            "requests: \(s.sent) sent, \(completed) completed, \(s.succeeded) ok in \(String(format: "%.1f", wall)) s "
                + "(\(String(format: "%.1f", Double(completed) / max(wall, 0.001))) req/s)",
            String(format: "latency ms: p50 %.1f  p95 %.1f  p99 %.1f  max %.1f", ms(s.latency, 50), ms(s.latency, 95),
                   ms(s.latency, 99), Double(s.latency.max) / 1000),
        ]
        if s.timeToFirstToken.totalCount > 0 {
            lines.append(String(format: "time to first token ms: p50 %.1f  p95 %.1f  p99 %.1f", ms(s.timeToFirstToken, 50),
                                ms(s.timeToFirstToken, 95), ms(s.timeToFirstToken, 99)))
        }
        if s.tokensPerSecond.totalCount > 0 {
            lines.append(String(format: "output tokens/s per request: p50 %.1f  p5 %.1f", Double(s.tokensPerSecond.valueAtPercentile(50)) / 1000,
                                Double(s.tokensPerSecond.valueAtPercentile(5)) / 1000))
        }
        lines.append("errors: " + (s.errors.isEmpty ? "none" : s.errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")))
        if !s.cache.isEmpty {
            lines.append("cache: " + s.cache.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        lines.append(String(format: "cost: $%.6f in total, $%.6f per request; at %d requests a day: $%.2f a day, $%.2f a month",
                            Double(s.costNanoUSD) / 1e9, costPerRequest, dailyVolume, costPerRequest * Double(dailyVolume),
                            costPerRequest * Double(dailyVolume) * 30))
        lines.append(String(format: "load generator CPU: %.0f%% of one core%@", cpuShare * 100,
                            cpuShare > 0.8 * Double(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))) ? " (saturated: the numbers above are a floor, not the server's)" : ""))
        let json: JSONValue = [
            "url": .string(plan.baseURL), "api": .string(plan.api.rawValue), "model": .string(plan.model), "stream": .bool(plan.stream),
            "seconds": .double(wall), "sent": .int(Int64(s.sent)), "completed": .int(Int64(completed)),
            "succeeded": .int(Int64(s.succeeded)), "throughput_rps": .double(Double(completed) / max(wall, 0.001)),
            "latency_ms": percentiles(s.latency), "ttft_ms": percentiles(s.timeToFirstToken),
            "output_tokens_per_second": percentiles(s.tokensPerSecond), "output_tokens": .int(Int64(s.outputTokens)),
            "errors": .object(s.errors.mapValues { .int(Int64($0)) }), "cache": .object(s.cache.mapValues { .int(Int64($0)) }),
            "cost_usd": .double(Double(s.costNanoUSD) / 1e9), "cost_per_request_usd": .double(costPerRequest),
            "projected_daily_cost_usd": .double(costPerRequest * Double(dailyVolume)),
            "projected_monthly_cost_usd": .double(costPerRequest * Double(dailyVolume) * 30),
            "completed_per_second": .array(s.completedPerSecond.map { .int(Int64($0)) }),
            "errors_per_second": .array(s.errorsPerSecond.map { .int(Int64($0)) }),
            "p50_ms_per_second": .array(s.secondLatencies.map { .double(ms($0, 50)) }),
            "p99_ms_per_second": .array(s.secondLatencies.map { .double(ms($0, 99)) }),
            "generator_cpu_share_of_one_core": .double(cpuShare),
        ]
        return (lines.joined(separator: "\n"), json)
    }
}
