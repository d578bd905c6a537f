import Foundation
public import Limits
public import SwitchyardCore
import SwitchyardModels
import Synchronization

/// Stage 6: every limit that applies to the request is reserved at once, before the model is called — the prompt
/// estimate plus `max_tokens` (or `defaultOutputTokens`) for token limits, their price for spend — and settled with
/// the real usage when the answer is known: a completion at once, a stream when it ends however it ends (cut or
/// abandoned: what was streamed, estimated as for pricing), an error as nothing used. A refusal is a 429 naming the
/// limit, with the `retry-after` its counter gives.
///
/// After the caches and the routing decision: hits are free (not counted), and model-scoped limits see the model
/// chosen.
public struct RateLimitStage: GatewayStage {
    let planner: LimitPlanner
    let store: any LimitStore
    let defaultOutputTokens: Int64
    /// Whether a failing store refuses the request (`fail_closed`) or lets it through uncounted.
    let failClosed: Bool
    let clock: @Sendable () -> Int64
    private let leaseBase: UInt64
    private let leases = LeaseNumbers()

    public init(planner: LimitPlanner, store: any LimitStore, defaultOutputTokens: Int64 = 4096, failClosed: Bool = false,
                clock: @escaping @Sendable () -> Int64 = wallClockNanoseconds) {
        self.planner = planner
        self.store = store
        self.defaultOutputTokens = max(defaultOutputTokens, 1)
        self.failClosed = failClosed
        self.clock = clock
        leaseBase = UInt64.random(in: 0..<(1 << 40)) << 20
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        let caller = try context.requireCaller()
        let route = try context.requireRoute()
        let input = Int64(request.estimatedInputTokens)
        let output = request.maxTokens.map { Int64($0) } ?? defaultOutputTokens
        let spend = route.price.cost(of: Usage(inputTokens: Int(clamping: input), outputTokens: Int(clamping: output)))
        let plan = planner.plan(caller: caller, model: route.name,
                                estimate: .init(inputTokens: input, outputTokens: output, spend: spend))
        guard !plan.isEmpty else { return try await next(request, context) }
        let lease = leaseBase &+ leases.next()
        let decision: LimitDecision
        do {
            decision = try await store.reserve(plan.map(\.demand), lease: lease, now: clock())
        } catch {
            if failClosed { throw GatewayError(.overloaded, "the rate limits' store is unavailable", retryAfter: .seconds(1)) }
            return try await next(request, context)
        }
        switch decision {
        case .refused(let index, let retryIn, let left, let resetIn):
            let definition = plan[index].definition
            let window = definition.window.map { "per \($0.rawValue)" } ?? "at once"
            let scope = definition.scope.map(\.rawValue).joined(separator: " and ")
            let message = retryIn == nil
                ? "this request needs more than the limit '\(definition.name)' (\(definition.amount) \(definition.measure.rawValue) \(window) per \(scope)) allows"
                : "rate limit '\(definition.name)' reached: \(definition.amount) \(definition.measure.rawValue) \(window) per \(scope)"
            var error = GatewayError(.rateLimited, message, retryAfter: retryIn.map { .nanoseconds($0) } ?? .seconds(60))
            var status = LimitStatus()
            status.consider(definition.measure, .init(limit: definition.amount, remaining: left, resetIn: resetIn))
            error.limits = status
            throw error
        case .admitted(let reservation):
            let measures = plan.map(\.definition.measure)
            var status = LimitStatus()
            for (offset, entry) in plan.enumerated() where offset < reservation.remaining.count {
                status.consider(entry.definition.measure, .init(limit: entry.definition.amount, remaining: reservation.remaining[offset],
                                                                resetIn: reservation.resetIn[offset]))
            }
            let response: GatewayResponse
            do {
                response = try await next(request, context)
            } catch {
                // Failed before an answer: nothing used (the permits come back too).
                settle(reservation, measures: measures, input: 0, output: 0, spend: .zero, requests: false)
                throw error
            }
            switch response {
            case .completion(var completion):
                completion.limits = status
                let usage = completion.usage
                settle(reservation, measures: measures, input: Int64(usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens),
                       output: Int64(usage.outputTokens), spend: completion.cost ?? route.price.cost(of: usage), requests: true)
                return .completion(completion)
            case .stream(var stream):
                stream.limits = status
                let price = route.price
                stream.lifecycle.onTermination { [weak lifecycle = stream.lifecycle] outcome, reported in
                    let (usage, _) = CostAccountingStage.streamUsage(reported, outcome: outcome, request: request,
                                                                     observedOutputTokens: lifecycle?.estimatedOutputTokens ?? 0)
                    self.settle(reservation, measures: measures, input: Int64(usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens),
                                output: Int64(usage.outputTokens), spend: price.cost(of: usage), requests: true)
                }
                return .stream(stream)
            }
        }
    }

    /// Off the request path: the answer does not wait for the store.
    private func settle(_ reservation: Reservation, measures: [LimitDefinition.Measure], input: Int64, output: Int64,
                        spend: NanoUSD, requests: Bool) {
        let actual: [Int64?] = measures.map { measure in
            if !requests, measure == .requests { return 0 }
            return LimitPlanner.actual(measure, inputTokens: input, outputTokens: output, spend: spend)
        }
        let store = self.store, now = clock()
        Task { try? await store.settle(reservation, actual: actual, now: now) }
    }
}

/// Lease ids of this process's requests: a random base (instances never share one) plus a counter.
final class LeaseNumbers: Sendable {
    private let counter = Atomic<UInt64>(0)

    func next() -> UInt64 { counter.add(1, ordering: .relaxed).newValue }
}
