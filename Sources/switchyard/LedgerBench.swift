import ArgumentParser
import Foundation
import Logging
import Server
import Stages
import SwitchyardCore
import SwitchyardModels
import Synchronization

/// `switchyard bench ledger`: what the ledger costs a request, in the process: the ledger stage and its writer
/// (aggregates in memory; then also the JSON lines sink, in a temporary directory) against the same `next` without
/// the stage. `next` answers at once and does what the cost stage and the provider call do to the trail. The writer
/// flushes every 10 ms (so nothing is dropped at this rate); its work on the flushing task is counted, since CPU is
/// measured for the whole process.
struct LedgerBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ledger")

    @Option(help: "Requests per measurement.") var requests = 200_000

    func run() async throws {
        var building = GatewayContext(requestID: "bench", logger: Logger(label: "bench"), clientFormat: .openAI)
        building.caller = Caller(tenant: "bench-tenant", user: "bench-user", keyID: "bench-key")
        let context = building
        let request = ChatRequest(model: "bench-model", messages: [
            ChatMessage(role: .user, content: [.text("Summarise the benefits of an AI gateway in one sentence.")]),
        ], maxTokens: 64, sourceFormat: .openAI)
        let usage = Usage(inputTokens: 24, outputTokens: 10)
        let answer = ChatResponse(id: "x", model: "bench-model", choices: [ChatChoice(content: [.text("A gateway.")], stopReason: .endTurn)],
                                  usage: usage)
        let next: Next = { _, context in
            context.trail?.attempted()
            context.trail?.priced(.init(model: "bench-model", deployment: "mock/bench-model", usage: usage, cost: NanoUSD(9600)))
            return .completion(Completion(response: answer))
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ledger-bench-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let dropped = Atomic<Int>(0)
        func writer(sink: (any LedgerSink)?) -> LedgerWriter {
            LedgerWriter(usage: UsageBook(), sink: sink, capacity: 100_000, logger: Logger(label: "bench"),
                         counted: { _, lost in dropped.add(lost, ordering: .relaxed) })
        }
        let variants: [(String, LedgerStage?, LedgerWriter?)] = [("off", nil, nil)] + [
            ("aggregates in memory", nil), ("aggregates + JSON lines", LedgerFileSink(directory: directory) as (any LedgerSink)?),
        ].map { name, sink in
            let writer = writer(sink: sink)
            return (name, LedgerStage(recorder: writer), writer)
        }

        /// CPU microseconds per request over `count` requests, `tasks` at a time.
        func measure(_ stage: LedgerStage?, _ writer: LedgerWriter?, count: Int, tasks: Int) async throws -> Double {
            @Sendable func one() async throws {
                if let stage { _ = try await stage.handle(request, context: context, next: next) } else { _ = try await next(request, context) }
            }
            for _ in 0..<min(count / 10, 2000) { try await one() }
            await writer?.flush()
            let flusher = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(10))
                    await writer?.flush()
                }
            }
            let before = UpstreamClientFloor.cpuSeconds()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<tasks {
                    group.addTask { for _ in 0..<(count / tasks) { try await one() } }
                }
                try await group.waitForAll()
            }
            flusher.cancel()
            await writer?.flush()
            return (UpstreamClientFloor.cpuSeconds() - before) / Double(count) * 1e6
        }

        print("| ledger | tasks | CPU/request | added |")
        print("|---|---|---|---|")
        for tasks in [1, 32] {
            // Each variant twice, interleaved (off, a, b, off, a, b): a drift in the machine's speed hits them alike.
            var runs = Array(repeating: [Double](), count: variants.count)
            for _ in 0..<2 {
                for (index, variant) in variants.enumerated() {
                    runs[index].append(try await measure(variant.1, variant.2, count: requests, tasks: tasks))
                }
            }
            let means = runs.map { $0.reduce(0, +) / Double($0.count) }
            for (index, variant) in variants.enumerated() {
                print(String(format: "| %@ | %d | %.2f us | %@ |", variant.0, tasks, means[index],
                             index == 0 ? "-" : String(format: "%+.2f us", means[index] - means[0])))
            }
        }
        print("records dropped: \(dropped.load(ordering: .relaxed))")
    }
}
