import Foundation
import Histogram
import LoadTest
import Providers
import SwitchyardCore
import SwitchyardModels
import SwitchyardTestKit
import Testing

/// The load harness: its schedules, its statistics on known samples, and short runs against an in-process gateway.
@Suite struct LoadTestTests {
    @Test func openLoopSendTimesFollowTheSchedule() {
        let constant = ArrivalSchedule.constant(rate: 100, duration: .seconds(1)).sendTimes()
        #expect(constant.count == 100)
        #expect(constant.first == .zero && constant[1] == .milliseconds(10) && constant.last == .milliseconds(990))

        let stepped = ArrivalSchedule(steps: [.init(rate: 10, duration: .seconds(1)), .init(rate: 0, duration: .seconds(1)),
                                              .init(rate: 20, duration: .seconds(1))]).sendTimes()
        #expect(stepped.count == 30)
        #expect(stepped[9] == .milliseconds(900) && stepped[10] == .seconds(2) && stepped[11] == .milliseconds(2050))

        let ramp = ArrivalSchedule.ramp(from: 0, to: 100, duration: .seconds(4))
        #expect(ramp.steps.map(\.rate) == [12.5, 37.5, 62.5, 87.5])
        #expect(ramp.duration == .seconds(4))
        #expect(zip(ramp.sendTimes(), ramp.sendTimes().dropFirst()).allSatisfy { $0 < $1 })
    }

    @Test func percentilesOfKnownSamples() {
        let statistics = LoadStatistics()
        for millisecond in 1...1000 {
            statistics.record(second: millisecond / 500, latency: .milliseconds(millisecond), costUSD: 0.001)
        }
        statistics.record(second: 0, latency: .milliseconds(5), error: "429")
        let snapshot = statistics.snapshot
        let p50 = Double(snapshot.latency.valueAtPercentile(50)) / 1000, p99 = Double(snapshot.latency.valueAtPercentile(99)) / 1000
        #expect(abs(p50 - 500) <= 1, "p50 \(p50)")
        #expect(abs(p99 - 990) <= 1, "p99 \(p99)")
        #expect(abs(Double(snapshot.latency.max) / 1000 - 1000) <= 1)
        #expect(snapshot.succeeded == 1000 && snapshot.errors == ["429": 1])
        #expect(snapshot.costNanoUSD == 1_000_000_000 && snapshot.priced == 1000)
        #expect(snapshot.completedPerSecond == [500, 500, 1])
        #expect(snapshot.costNanoUSDPerSecond == [499_000_000, 500_000_000, 1_000_000])
    }

    /// Runs `plan` with its own clients, shut down afterwards.
    func run(_ plan: LoadPlan) async throws -> LoadStatistics.Snapshot {
        let transports = HTTPClientService(providers: []).transports
        let runner = try LoadRunner(plan: plan, transports: transports)
        await runner.run()
        await transports.shutdown()
        return runner.statistics.snapshot
    }

    @Test func anOpenLoopRunAgainstTheGateway() async throws {
        try await withTestGateway(TestConfigs.embedded()) { _, url in
            let plan = LoadPlan(baseURL: url, api: .openAI, model: "gpt-4o-mini", stream: false,
                                pattern: .openLoop(.constant(rate: 40, duration: .seconds(1))),
                                prompts: PromptSource(promptTokens: [50, 400], maxTokens: [20, 80]))
            let snapshot = try await run(plan)
            #expect(snapshot.sent == 40 && snapshot.succeeded == 40 && snapshot.errorCount == 0)
            #expect(snapshot.priced == 40 && snapshot.costNanoUSD > 0)
            #expect(snapshot.outputTokens > 0 && snapshot.outputTokens <= 40 * 80)

            let report = LoadReport(snapshot, wall: 1.2, cpu: 0.1, dailyVolume: 1000, plan: plan)
            #expect(report.text.contains("requests: 40 sent, 40 completed, 40 ok"))
            #expect(report.json["succeeded"]?.intValue == 40)
            let perRequest = Double(snapshot.costNanoUSD) / 1e9 / 40
            #expect(abs((report.json["projected_daily_cost_usd"]?.doubleValue ?? 0) - perRequest * 1000) < 1e-9)
            let html = report.html()
            #expect(html.components(separatedBy: "<svg").count - 1 == 5)
            #expect(report.json["cost_usd_per_second"]?.arrayValue?.compactMap(\.doubleValue).reduce(0, +) ?? 0 > 0)
            #expect(!html.contains("<script") && !html.contains("src=") && !html.contains("href="))  // opens with no network
        }
    }

    @Test func aClosedLoopStreamingRunRecordsTimeToFirstToken() async throws {
        var config = TestConfigs.embedded()
        config.mockLatencyScale = 0.05
        try await withTestGateway(config) { _, url in
            var plan = LoadPlan(baseURL: url, api: .anthropic, model: "claude-haiku-4-5", stream: true,
                                pattern: .closedLoop(users: 4, thinkTime: .milliseconds(10), duration: .seconds(1)),
                                prompts: PromptSource(promptTokens: [30], maxTokens: [40]))
            plan.prices = (input: 1, output: 5)  // streams carry no cost header: priced from their usage
            let snapshot = try await run(plan)
            #expect(snapshot.succeeded >= 4 && snapshot.errorCount == 0, "\(snapshot.errors)")
            #expect(snapshot.timeToFirstToken.totalCount == UInt64(snapshot.succeeded))
            #expect(snapshot.timeToFirstToken.valueAtPercentile(50) <= snapshot.latency.valueAtPercentile(50))
            // Each answer: about 33 input tokens at $1/M and at most 40 output tokens at $5/M.
            #expect(snapshot.priced == snapshot.succeeded)
            let perRequest = Double(snapshot.costNanoUSD) / 1e9 / Double(snapshot.priced)
            #expect(perRequest > 30e-6 && perRequest < (40 * 1 + 40 * 5) * 1e-6, "\(perRequest)")
        }
    }

    /// Requests still hanging when the run's duration is over get the drain grace, then are cancelled and counted as
    /// `unfinished`: the run ends near its planned time, not at the request timeout.
    @Test func aRunEndsAfterItsDrainGrace() async throws {
        try await withTestGateway(TestConfigs.withFaults(["timeout"])) { _, url in
            for pattern in [LoadPlan.Pattern.closedLoop(users: 3, thinkTime: .zero, duration: .seconds(1)),
                            .openLoop(.constant(rate: 5, duration: .seconds(1)))] {
                // The mock never answers this model (its `timeout` fault); the gateway's own timeout is 60 s.
                var plan = LoadPlan(baseURL: url, api: .openAI, model: "gpt-4o-mini-timeout", stream: false, pattern: pattern,
                                    prompts: PromptSource(promptTokens: [20], maxTokens: [30]), timeout: .seconds(60))
                plan.drainGrace = .milliseconds(500)
                let started = ContinuousClock.now
                let snapshot = try await run(plan)
                // Far sooner than the 60 s request timeout (the bound leaves room for a loaded machine).
                #expect(ContinuousClock.now - started < .seconds(15))
                // Every request sent was still hanging at the end, and is counted as unfinished.
                #expect(snapshot.sent >= 1)
                #expect(snapshot.errors == ["unfinished": snapshot.sent], "\(snapshot.errors)")
                #expect(snapshot.succeeded == 0)
            }
        }
    }

    @Test func errorsAreClassified() async throws {
        try await withTestGateway(TestConfigs.withFaults(["429", "disconnect-mid-stream"])) { _, url in
            for (model, stream, expected) in [("gpt-4o-mini-429", false, "429"), ("gpt-4o-mini-disconnect-mid-stream", true, "stream-cut")] {
                let plan = LoadPlan(baseURL: url, api: .openAI, model: model, stream: stream,
                                    pattern: .openLoop(.constant(rate: 10, duration: .seconds(1))),
                                    prompts: PromptSource(promptTokens: [20], maxTokens: [30]))
                let errors = try await run(plan).errors
                #expect(errors == [expected: 10], "\(model)")
            }
        }
    }

    @Test func promptsComeFromATrace() throws {
        let root = EmbeddingsTests.projectRoot.appendingPathComponent("../shared/data/lengths").path
        let azure = try PromptSource(trace: root + "/azure_llm_inference_trace_2023_conv.csv")
        #expect(azure.promptTokens.count == 19_366)
        let mooncake = try PromptSource(trace: root + "/mooncake_fast25_conversation_trace.jsonl")
        #expect(mooncake.maxTokens.count == 12_031)
        let prompt = azure.prompt(3)
        #expect(prompt == azure.prompt(3))
        #expect(azure.promptTokens.contains(prompt.text.split(separator: " ").count - 2))
    }
}

extension LoadTestTests {
    @Test func requestsAreCountedPerGroupAsServedDegradedOrRefused() {
        let statistics = LoadStatistics()
        statistics.record(second: 0, latency: .milliseconds(1), cache: "miss", group: "free")
        statistics.record(second: 0, latency: .milliseconds(1), cache: "hit-exact", group: "free")
        statistics.record(second: 0, latency: .milliseconds(1), cache: "hit-exact", group: "free", degraded: "cache-stale")
        statistics.record(second: 1, latency: .milliseconds(1), error: "429", group: "free")
        statistics.record(second: 1, latency: .milliseconds(1), error: "5xx", group: "paid")
        statistics.record(second: 1, latency: .milliseconds(1), group: "paid", degraded: "downgrade")
        statistics.record(second: 1, latency: .milliseconds(1))
        let groups = statistics.snapshot.groups
        func counts(_ group: LoadStatistics.Group?) -> LoadStatistics.Group? {
            group.map { LoadStatistics.Group(served: $0.served, cacheHits: $0.cacheHits, degraded: $0.degraded, refused: $0.refused, failed: $0.failed) }
        }
        #expect(counts(groups["free"]) == LoadStatistics.Group(served: 2, cacheHits: 1, degraded: ["cache-stale": 1], refused: 1, failed: 0))
        #expect(counts(groups["paid"]) == LoadStatistics.Group(served: 0, cacheHits: 0, degraded: ["downgrade": 1], refused: 0, failed: 1))
        #expect(groups.count == 2 && groups["free"]?.total == 4)
        // The answered ones' latency and the second of the last answer: refusals and failures are not answers.
        #expect(groups["free"]?.latency.totalCount == 3 && groups["free"]?.lastAnswer == 0)
        #expect(groups["paid"]?.latency.totalCount == 1 && groups["paid"]?.lastAnswer == 1)
    }

    /// Every scenario in loadtests/ parses, and the cache scenario's repeats and paraphrases come in their shares.
    @Test func theShippedScenariosParse() throws {
        let directory = EmbeddingsTests.projectRoot.appendingPathComponent("loadtests").path
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 8)
        // Paths in the scenarios are relative to the scenario file, so they load from any working directory.
        for file in files {
            let text = try String(contentsOfFile: directory + "/" + file, encoding: .utf8)
            let scenario = try LoadScenario(yaml: text, file: directory + "/" + file)
            #expect(!scenario.name.isEmpty, "\(file)")
        }
        // The tiers scenario's gateway: the built-in mock, its keys, three limits and two degradation policies.
        let tiers = try LoadScenario(yaml: try String(contentsOfFile: directory + "/user-tiers.yaml", encoding: .utf8),
                                     file: directory + "/user-tiers.yaml")
        #expect(tiers.gateway.keys.count == 8 && tiers.gateway.limits.count == 3 && tiers.gateway.degrade.count == 2)
        #expect(tiers.gateway.models["gpt-4o"] != nil && tiers.plan.groupHeader == "x-load-tier" && tiers.plan.headerMix.count == 20)
        #expect(tiers.plan.prompts.questionsOnly)
        let cache = try LoadScenario(yaml: try String(contentsOfFile: directory + "/cache-hits.yaml", encoding: .utf8),
                                     file: directory + "/cache-hits.yaml")
        let kinds = (0..<2000).map { cache.plan.prompts.kind($0) }
        let share = { (kind: PromptSource.Kind) in Double(kinds.filter { $0 == kind }.count) / 2000 }
        #expect(abs(share(.repeated) - 0.3) < 0.04 && abs(share(.paraphrased) - 0.2) < 0.04, "\(share(.repeated)) \(share(.paraphrased))")
        // A repeat is an earlier prompt exactly; a paraphrase keeps the earlier body and asks another question.
        let repeated = try #require((1..<2000).first { cache.plan.prompts.kind($0) == .repeated })
        let text = cache.plan.prompts.prompt(repeated).text
        #expect((0..<repeated).contains { cache.plan.prompts.prompt($0).text == text })
        #expect(throws: LoadError.self) { try LoadScenario(yaml: "rate: 5\nrat: 6") }
        #expect(throws: LoadError.self) { try LoadScenario(yaml: "rate: 5\nmock: {fault_rates: {'999': 1}}") }
    }
}
