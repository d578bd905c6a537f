import ArgumentParser
import Embeddings
import Foundation
import Histogram
import LoadTest
import Logging
import MockProvider
import Server
import Stages
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
    @Option(help: "USD per million input tokens, for answers without x-switchyard-cost-usd (streams, providers).") var inputPrice: Double?
    @Option(help: "USD per million output tokens, likewise.") var outputPrice: Double?
    @Option(help: "Seconds requests still in flight at the end may take before they are cancelled (counted as unfinished).")
    var drainGrace = 15.0
    @Option(help: "Write the result as JSON to this file.") var json: String?
    @Option(help: "Write a self-contained HTML report (SVG charts, no network) to this file.") var html: String?
    @Option(help: "Most connections to the endpoint per event loop (each stream in flight holds one).") var connections = 8192

    @Option(help: "Run a scenario file (loadtests/*.yaml) instead of the options above; without a url in it, against an in-process embedded-default gateway.")
    var scenario: String?

    func run() async throws {
        if let scenario {
            try await runScenario(scenario)
            return
        }
        let plan = try makePlan()
        try await execute(plan, dailyVolume: dailyVolume)
    }

    /// Starts the scenario's gateway when it names no URL, runs it, stops the gateway.
    func runScenario(_ path: String) async throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationError("cannot read \(path)") }
        let scenario = try LoadScenario(yaml: text, file: path)
        print("scenario: \(scenario.name)" + (scenario.description.isEmpty ? "" : " — \(scenario.description)"))
        var plan = scenario.plan
        guard scenario.url == nil else {
            try await execute(plan, dailyVolume: scenario.dailyVolume)
            return
        }
        var config = scenario.gateway
        config.port = 0
        config.mock = scenario.mock
        config.mockLatencyScale = scenario.mockLatencyScale
        var logger = Logger(label: "switchyard")
        logger.logLevel = .warning
        // The embedded default: with the semantic cache when the embedding model is on this machine.
        let models = ModelStore()
        let embeddings: EmbeddingsSetting = models.isAvailable
            ? .model(directory: models.modelDirectory) : .unavailable("no embedding model (switchyard models pull)")
        let gateway = try buildGateway(config: config, logger: logger, environment: [:], embeddings: embeddings)
        let server = Task { try await gateway.run(handleSignals: false) }
        defer { server.cancel() }
        plan.baseURL = "http://127.0.0.1:\(await gateway.listening.wait())"
        guard !scenario.compareModels.isEmpty else {
            // A scenario of failures: what the gateway did, second by second, next to what the clients saw.
            guard AttemptsStage.isNeeded(config) || !config.mock.schedule.isEmpty else {
                try await execute(plan, dailyVolume: scenario.dailyVolume)
                return
            }
            let timeline = Locked(GatewayTimeline())
            let sampler = Task {
                while !Task.isCancelled {
                    var sample = GatewayTimeline.parse(prometheus: String(decoding: gateway.metrics.render(), as: UTF8.self))
                    if let stats = gateway.mock?.currentStats {
                        sample.upstreamRequests = stats.requests
                        sample.upstreamRateLimited = stats.rateLimited
                        sample.upstreamFaults = stats.faults
                    }
                    timeline.withLock { $0.append(sample) }
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            let snapshot = try await execute(plan, dailyVolume: scenario.dailyVolume)
            sampler.cancel()
            _ = await sampler.value
            let seen = timeline.withLock { $0 }
            print("\nwhat the gateway did, second by second:")
            for line in seen.render() { print(line) }
            for window in config.mock.schedule {
                let from = Int(window.start), to = min(Int(window.end.rounded(.up)), snapshot.errorsPerSecond.count)
                let errors = from < to ? snapshot.errorsPerSecond[from..<to].reduce(0, +) : 0
                let completed = from < to ? snapshot.completedPerSecond[from..<to].reduce(0, +) : 0
                func p99(_ range: Range<Int>) -> Double {
                    let values = range.clamped(to: 0..<snapshot.secondLatencies.count).map {
                        Double(snapshot.secondLatencies[$0].valueAtPercentile(99)) / 1000
                    }
                    return values.max() ?? 0
                }
                let rates = window.faultRates.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                print(String(format: "window %.0f–%.0f s (%@, %@): %d client errors, %d answers; worst per-second p99 %.0f ms inside, %.0f ms before; breaker %@",
                             window.start, window.end, window.model ?? "every model", rates, errors, completed, p99(from..<to),
                             p99(max(0, from - 5)..<from),
                             seen.breakerOpened(after: from).map { "opened \($0) s into it" } ?? "did not open"))
            }
            return
        }
        // One run per model or route, then quality next to cost.
        var rows: [(String, LoadStatistics.Snapshot)] = []
        for model in scenario.compareModels {
            plan.model = model
            print("\n== \(model)")
            rows.append((model, try await execute(plan, dailyVolume: scenario.dailyVolume)))
        }
        print("\n| model or route | accuracy | answers graded | cost per request | at \(scenario.dailyVolume) a day, per month |")
        print("|---|---|---|---|---|")
        for (model, s) in rows {
            let perRequest = s.priced > 0 ? Double(s.costNanoUSD) / 1e9 / Double(s.priced) : 0
            print(String(format: "| %@ | %.3f | %d | $%.6f | $%.0f |", model, s.graded > 0 ? Double(s.correct) / Double(s.graded) : 0,
                         s.graded, perRequest, perRequest * Double(scenario.dailyVolume) * 30))
        }
    }

    func makePlan() throws -> LoadPlan {
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
        let prompts = try trace.map { path throws(LoadError) in try PromptSource(trace: path) } ?? PromptSource.spread
        let headers = header.compactMap { entry -> (String, String)? in
            guard let colon = entry.firstIndex(of: ":") else { return nil }
            return (String(entry[..<colon]), String(entry[entry.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
        }
        var plan = LoadPlan(baseURL: url, api: apiKind, model: model, stream: stream, pattern: pattern, prompts: prompts,
                            apiKey: apiKey, headers: headers)
        if inputPrice != nil || outputPrice != nil { plan.prices = (inputPrice ?? 0, outputPrice ?? 0) }
        plan.drainGrace = .milliseconds(Int64(drainGrace * 1000))
        return plan
    }

    @discardableResult
    func execute(_ plan: LoadPlan, dailyVolume: Int) async throws -> LoadStatistics.Snapshot {
        let url = plan.baseURL
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
        await transports.shutdown()
        if interactive { FileHandle.standardError.write(Data("\n".utf8)) }
        let report = LoadReport(runner.statistics.snapshot, wall: wall, cpu: cpu, dailyVolume: dailyVolume, plan: plan)
        print(report.text)
        if let json { try report.json.jsonString(sortedKeys: true).write(toFile: json, atomically: true, encoding: .utf8) }
        if let html { try report.html().write(toFile: html, atomically: true, encoding: .utf8) }
        return runner.statistics.snapshot
    }
}
