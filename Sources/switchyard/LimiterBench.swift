import ArgumentParser
import Foundation
import HTTPTypes
import Limits
import Logging
import NIOPosix
import Redis
import Server
import Stages
import Stores
import SwitchyardCore
import SwitchyardModels

/// `switchyard bench limiter`: what the rate-limit stage costs a request, in the process, without HTTP or an
/// upstream around it (whose scheduling noise on a small machine is larger than the limiter). The same stage runs
/// with three limits that apply to the request (requests and total tokens per minute per user, requests in flight
/// per tenant: reserve, settle, the answer's rate-limit headers) and with limits that do not apply (the stage
/// passes the request on), against a `next` that answers at once. In memory: CPU per request, one task and 32 at
/// once. In Redis (a redis-server started here): the p50 a request waits for its reservation (one round trip), and
/// CPU per request with its settlement.
struct LimiterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "limiter")

    @Option(help: "Requests per measurement.") var requests = 200_000
    @Option(help: "Requests per measurement against Redis.") var redisRequests = 20_000
    @Option(help: "A running redis-server's port on 127.0.0.1 (default: start one).") var redisPort: Int?
    @Flag(help: "Skip the Redis measurements.") var memoryOnly = false
    @Option(help: "Microseconds the answer takes (0: at once): reservations and settlements then interleave with other requests', as through HTTP.")
    var upstreamMicroseconds = 0

    func run() async throws {
        let model = ModelRoute(name: "bench-model", provider: "none", upstreamModel: "bench-model",
                               price: ModelPrice(usd: "0.15", "0.60", "0.075", "0.15")!)
        let applying = [
            LimitDefinition(name: "rpm", measure: .requests, amount: 1_000_000_000_000, window: .minute, scope: [.user]),
            LimitDefinition(name: "tpm", measure: .totalTokens, amount: 1_000_000_000_000_000, window: .minute, scope: [.user]),
            LimitDefinition(name: "inflight", measure: .concurrent, amount: 1_000_000, window: nil, scope: [.tenant]),
        ]
        let elsewhere = applying.map { definition in
            var other = definition
            other.when = [.model: ["another-model"]]
            return other
        }
        var building = GatewayContext(requestID: "bench", logger: Logger(label: "bench"), clientFormat: .openAI)
        building.caller = Caller(tenant: "bench-tenant", user: "bench-user", keyID: "bench-key")
        building.route = model
        let context = building
        let request = ChatRequest(model: "bench-model", messages: [
            ChatMessage(role: .system, content: [.text("You are a helpful assistant.")]),
            ChatMessage(role: .user, content: [.text("Summarise the benefits of an AI gateway in one sentence.")]),
        ], maxTokens: 64, sourceFormat: .openAI)
        let answer = ChatResponse(id: "x", model: "bench-model", choices: [ChatChoice(content: [.text("A gateway.")], stopReason: .endTurn)],
                                  usage: Usage(inputTokens: 24, outputTokens: 10))
        let delay = upstreamMicroseconds
        let next: Next = { _, _ in
            if delay > 0 { try await Task.sleep(for: .microseconds(delay)) }
            return .completion(Completion(response: answer))
        }

        /// One request through `stage`, and its headers rendered as the handler does.
        @Sendable func one(_ stage: RateLimitStage) async throws {
            guard case .completion(let completion) = try await stage.handle(request, context: context, next: next) else { return }
            if let limits = completion.limits { _ = ErrorRenderer.rateLimitHeaderLines(limits, format: .openAI) }
        }
        /// CPU microseconds per request over `count` requests, `tasks` at a time, and the p50 wait of one.
        func measure(_ stage: RateLimitStage, count: Int, tasks: Int) async throws -> (cpu: Double, p50: Double) {
            for _ in 0..<min(count / 10, 2000) { try await one(stage) }
            let before = UpstreamClientFloor.cpuSeconds()
            var waits: [Double] = []
            if tasks == 1 {
                waits.reserveCapacity(count)
                for _ in 0..<count {
                    let started = ContinuousClock.now
                    try await one(stage)
                    waits.append((ContinuousClock.now - started).inSeconds * 1e6)
                }
            } else {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<tasks {
                        group.addTask { for _ in 0..<(count / tasks) { try await one(stage) } }
                    }
                    try await group.waitForAll()
                }
            }
            // Settlements that run in the background (Redis) are part of the cost: let them finish.
            try await Task.sleep(for: .milliseconds(200))
            let cpu = (UpstreamClientFloor.cpuSeconds() - before) / Double(count) * 1e6
            waits.sort()
            return (cpu, waits.isEmpty ? 0 : waits[waits.count / 2])
        }

        var rows: [(String, Int, (cpu: Double, p50: Double), (cpu: Double, p50: Double))] = []
        /// The stage on `store` with its limits applying and not, one task and 32 at once.
        func compare(_ name: String, _ store: any LimitStore, count: Int) async throws {
            let on = RateLimitStage(planner: LimitPlanner(definitions: applying), store: store)
            let off = RateLimitStage(planner: LimitPlanner(definitions: elsewhere), store: store)
            for tasks in [1, 32] {
                // Off, on, off, on: the means of two each, so that a drift in the machine's speed hits both.
                var offRuns: [(cpu: Double, p50: Double)] = [], onRuns: [(cpu: Double, p50: Double)] = []
                for _ in 0..<2 {
                    offRuns.append(try await measure(off, count: count, tasks: tasks))
                    onRuns.append(try await measure(on, count: count, tasks: tasks))
                }
                rows.append((name, tasks, Self.mean(offRuns), Self.mean(onRuns)))
            }
        }
        try await compare("memory", LimitLedger(), count: requests)
        if !memoryOnly {
            let (port, server) = try await BenchRedis.start(redisPort)
            defer { BenchRedis.stop(server) }
            let client = RedisClient(configuration: RedisConfiguration(port: port, poolSize: 4), group: MultiThreadedEventLoopGroup.singleton)
            try await compare("redis", RedisLimitStore(client: client, keyPrefix: "bench:"), count: redisRequests)
            await client.close()
        }
        print("| limits in | tasks | CPU/request off | CPU/request on | added CPU | p50 off | p50 on | added p50 |")
        print("|---|---|---|---|---|---|---|---|")
        for (store, tasks, off, on) in rows {
            print(String(format: "| %@ | %d | %.2f us | %.2f us | %+.2f us | %@ | %@ | %@ |", store, tasks, off.cpu, on.cpu, on.cpu - off.cpu,
                         tasks == 1 ? String(format: "%.1f us", off.p50) : "-", tasks == 1 ? String(format: "%.1f us", on.p50) : "-",
                         tasks == 1 ? String(format: "%+.1f us", on.p50 - off.p50) : "-"))
        }
    }

    static func mean(_ runs: [(cpu: Double, p50: Double)]) -> (cpu: Double, p50: Double) {
        (runs.map(\.cpu).reduce(0, +) / Double(runs.count), runs.map(\.p50).reduce(0, +) / Double(runs.count))
    }
}
