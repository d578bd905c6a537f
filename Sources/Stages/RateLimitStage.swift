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
///
/// A class: the stream hooks and background settlements capture it, and a struct of this many fields would be
/// copied (each field retained) every time.
public final class RateLimitStage: GatewayStage {
    /// A degradation step the job queue provides: accepts the request as a background job (its answer says so), or
    /// nil when it cannot.
    public typealias QueueStep = @Sendable (ChatRequest, GatewayContext) async throws -> GatewayResponse?
    /// What a downgrade to the route of this name would send the request to (the request as it would go, the context
    /// with the model chosen, the model's name); nil when no route has the name.
    public typealias RouteChoice = @Sendable (String, ChatRequest, GatewayContext) async throws
        -> (request: ChatRequest, context: GatewayContext, model: String)?

    let planner: LimitPlanner
    let store: any LimitStore
    let defaultOutputTokens: Int64
    /// Whether a failing store refuses the request (`fail_closed`) or lets it through uncounted.
    let failClosed: Bool
    /// Per tier and feature, what to try before a 429 (the first policy for the caller applies).
    let policies: [DegradePolicy]
    /// The models a downgrade step may name.
    let models: [String: ModelRoute]
    let queue: QueueStep?
    let routeChoice: RouteChoice?
    let recorder: (any LimitRecorder)?
    /// Sends the alerts of budgets with thresholds (nil when no limit has any).
    let alerter: BudgetAlerter?
    let clock: @Sendable () -> Int64
    /// The store when it is the in-memory ledger: reserved without an `await` (a short lock needs no suspension).
    private let ledger: LimitLedger?
    private let leaseBase: UInt64
    private let leases = LeaseNumbers()

    public init(planner: LimitPlanner, store: any LimitStore, defaultOutputTokens: Int64 = 4096, failClosed: Bool = false,
                policies: [DegradePolicy] = [], models: [String: ModelRoute] = [:], queue: QueueStep? = nil,
                routeChoice: RouteChoice? = nil, recorder: (any LimitRecorder)? = nil, alerter: BudgetAlerter? = nil,
                clock: @escaping @Sendable () -> Int64 = wallClockNanoseconds) {
        self.alerter = alerter
        self.planner = planner
        self.store = store
        self.defaultOutputTokens = max(defaultOutputTokens, 1)
        self.failClosed = failClosed
        self.policies = policies
        self.models = models
        self.queue = queue
        self.routeChoice = routeChoice
        self.recorder = recorder
        self.clock = clock
        ledger = store as? LimitLedger
        leaseBase = UInt64.random(in: 0..<(1 << 40)) << 20
    }

    func definition(_ plan: [LimitDemand], _ offset: Int) -> LimitDefinition { planner.definitions[plan[offset].source] }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        let caller = try context.requireCaller()
        let route = try context.requireRoute()
        let plan = self.plan(request, caller: caller, model: route)
        guard !plan.isEmpty else { return try await next(request, context) }
        let lease = leaseBase &+ leases.next()
        let decision: LimitDecision
        do {
            if let ledger {
                decision = ledger.reserve(plan, lease: lease, now: clock())
            } else {
                decision = try await store.reserve(plan, lease: lease, now: clock())
            }
        } catch {
            recorder?.limitStoreFailed()
            if failClosed { throw GatewayError(.overloaded, "the rate limits' store is unavailable", retryAfter: .seconds(1)) }
            return try await next(request, context)
        }
        switch decision {
        case .refused(let index, let retryIn, let left, let resetIn):
            let refusing = definition(plan, index)
            let error = refusal(refusing, retryIn: retryIn, remaining: left, resetIn: resetIn)
            alerter?.refused(plan[index], definition: refusing, remaining: left, now: clock())
            if !refusing.hardStop, let policy = policies.first(where: { $0.applies(to: caller) }),
               let answer = try await degrade(request, context: context, policy: policy, refused: error, next: next)
            {
                return answer
            }
            recorder?.limitRefused(definition(plan, index).name)
            throw error
        case .admitted(let reservation):
            alerter?.observe(reservation, definitions: planner.definitions, now: clock())
            return try await proceed(request, context: context, reservation: reservation, price: route.price, next: next)
        }
    }

    /// What `request` reserves from each limit that applies to it when `model` answers it.
    func plan(_ request: ChatRequest, caller: Caller, model: ModelRoute) -> [LimitDemand] {
        let input = Int64(request.estimatedInputTokens)
        let output = request.maxTokens.map { Int64($0) } ?? defaultOutputTokens
        let spend = model.price.cost(of: Usage(inputTokens: Int(clamping: input), outputTokens: Int(clamping: output)))
        return planner.requestDemands(caller: caller, model: model.name, estimate: .init(inputTokens: input, outputTokens: output, spend: spend))
    }

    /// The 429 for a refusal by `definition`: the limit's name, amount, window and scope (never whose counter it was).
    func refusal(_ definition: LimitDefinition, retryIn: Int64?, remaining: Int64, resetIn: Int64) -> GatewayError {
        let window = definition.window.map { "per \($0.rawValue)" } ?? "at once"
        let scope = definition.scope.map(\.rawValue).joined(separator: " and ")
        let message = retryIn == nil
            ? "this request needs more than the limit '\(definition.name)' (\(definition.amount) \(definition.measure.rawValue) \(window) per \(scope)) allows"
            : "rate limit '\(definition.name)' reached: \(definition.amount) \(definition.measure.rawValue) \(window) per \(scope)"
        var error = GatewayError(.rateLimited, message, retryAfter: retryIn.map { .nanoseconds($0) } ?? .seconds(60))
        var status = LimitStatus()
        status.consider(definition.measure, .init(limit: definition.amount, remaining: remaining, resetIn: resetIn))
        error.limits = status
        return error
    }

    /// The policy's steps in order; the first that answers wins. `nil`: none did (the caller gets the 429).
    func degrade(_ request: ChatRequest, context: GatewayContext, policy: DegradePolicy, refused: GatewayError,
                 next: @escaping Next) async throws -> GatewayResponse? {
        let status = refused.limits ?? LimitStatus()
        for step in policy.steps {
            switch step {
            case .cache(let staleFor, let threshold):
                if let staleFor, let stale = context.fallbacks.stale, ContinuousClock.now < stale.expiredAt + staleFor,
                   let answer = stale.replay()
                {
                    return marked(answer, status, .cacheStale)
                }
                if let threshold, let semantic = context.fallbacks.semantic {
                    // A failing search is a step that did not answer, not an error of the request.
                    if let answer = try? await semantic(threshold) { return marked(answer, status, .cacheSemantic) }
                }
            case .downgrade(let names):
                let route = try context.requireRoute()
                let caller = try context.requireCaller()
                // Down the list from the model or route refused (or from its top when neither is on it).
                let asked = context.routeConfig?.name
                let start = names.firstIndex { $0 == route.name || $0 == asked }.map { $0 + 1 } ?? 0
                for name in names[start...] where name != route.name && name != asked {
                    var downgradedRequest = request
                    var downgraded = context
                    let served: String
                    if let target = models[name] {
                        downgraded.route = target
                        served = name
                    } else if let choice = try await routeChoice?(name, request, context) {
                        (downgradedRequest, downgraded, served) = choice
                    } else {
                        continue
                    }
                    // A route that chooses the model refused relieves nothing.
                    guard let target = downgraded.route, target.name != route.name else { continue }
                    let plan = self.plan(downgradedRequest, caller: caller, model: target)
                    // An original body names the refused model: the provider renders the request again.
                    downgraded.original = nil
                    guard !plan.isEmpty else {
                        return marked(try await next(downgradedRequest, downgraded), nil, .downgrade, servedBy: served)
                    }
                    let decision: LimitDecision
                    do {
                        decision = try await store.reserve(plan, lease: leaseBase &+ leases.next(), now: clock())
                    } catch {
                        recorder?.limitStoreFailed()
                        continue
                    }
                    guard case .admitted(let reservation) = decision else { continue }
                    alerter?.observe(reservation, definitions: planner.definitions, now: clock())
                    let answer = try await proceed(downgradedRequest, context: downgraded, reservation: reservation, price: target.price,
                                                   next: next)
                    return marked(answer, nil, .downgrade, servedBy: served)
                }
            case .queue:
                // A job's own run is retried by its worker, not queued again.
                if !context.runsAsJob, let queue, let answer = try await queue(request, context) { return marked(answer, status, .queued) }
            }
        }
        return nil
    }

    /// `answer` saying it was degraded, and how; `status`: the refused limit's headers (nil: keep the answer's own).
    func marked(_ answer: GatewayResponse, _ status: LimitStatus?, _ kind: Degradation, servedBy model: String? = nil) -> GatewayResponse {
        recorder?.degraded(kind)
        func saying(_ own: LimitStatus?) -> LimitStatus {
            var limits = status ?? own ?? LimitStatus()
            limits.degraded = kind
            limits.servedModel = model
            return limits
        }
        switch answer {
        case .completion(var completion):
            completion.limits = saying(completion.limits)
            return .completion(completion)
        case .stream(var stream):
            stream.limits = saying(stream.limits)
            return .stream(stream)
        }
    }

    /// Calls the model under an admitted reservation and settles it with what the answer used, however it ends.
    func proceed(_ request: ChatRequest, context: GatewayContext, reservation: Reservation, price: ModelPrice,
                 next: @escaping Next) async throws -> GatewayResponse {
        var status = LimitStatus()
        // By index and field by field: a copy of a demand or a definition would retain each of its strings.
        for index in reservation.demands.indices where index < reservation.grants.count {
            let source = reservation.demands[index].source
            status.consider(planner.definitions[source].measure,
                            .init(limit: planner.definitions[source].amount, remaining: reservation.grants[index].remaining,
                                  resetIn: reservation.grants[index].resetIn))
        }
        let response: GatewayResponse
        do {
            response = try await next(request, context)
        } catch {
            // Failed before an answer: nothing used (the permits come back too).
            settle(reservation, input: 0, output: 0, spend: .zero, requests: false)
            throw error
        }
        switch consume response {
        case .completion(var completion):
            completion.limits = status
            let usage = completion.usage
            settle(reservation, input: Int64(usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens),
                   output: Int64(usage.outputTokens), spend: completion.cost ?? price.cost(of: usage), requests: true)
            return .completion(completion)
        case .stream(var stream):
            stream.limits = status
            let renewal = renewingPermits(reservation)
            stream.lifecycle.onTermination { [weak lifecycle = stream.lifecycle] outcome, reported in
                renewal?.cancel()
                let (usage, _) = CostAccountingStage.streamUsage(reported, outcome: outcome, request: request,
                                                                 observedOutputTokens: lifecycle?.estimatedOutputTokens ?? 0)
                self.settle(reservation, input: Int64(usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens),
                            output: Int64(usage.outputTokens), spend: price.cost(of: usage), requests: true)
            }
            return .stream(stream)
        }
    }

    /// While a stream runs, its concurrency permits are renewed three times per lease time, so a stream longer
    /// than the lease keeps them; nil when the reservation holds none.
    private func renewingPermits(_ reservation: Reservation) -> Task<Void, Never>? {
        guard reservation.demands.contains(where: \.rule.isConcurrent) else { return nil }
        let store = self.store, clock = self.clock
        let period = Duration.nanoseconds(max(planner.permitTTL / 3, 1_000_000))
        return Task {
            while true {
                do { try await Task.sleep(for: period) } catch { return }
                // A failed renewal is tried again next period; the lease outlives two of them.
                try? await store.renew(reservation, now: clock())
            }
        }
    }

    /// Off the request path: the answer does not wait for the store.
    private func settle(_ reservation: Reservation, input: Int64, output: Int64, spend: NanoUSD, requests: Bool) {
        let actual: [Int64?] = reservation.demands.indices.map { index in
            let measure = planner.definitions[reservation.demands[index].source].measure
            if !requests, measure == .requests { return 0 }
            return LimitPlanner.actual(measure, inputTokens: input, outputTokens: output, spend: spend)
        }
        store.settleInBackground(reservation, actual: actual, now: clock())
    }
}

/// Lease ids of this process's requests: a random base (instances never share one) plus a counter.
final class LeaseNumbers: Sendable {
    private let counter = Atomic<UInt64>(0)

    func next() -> UInt64 { counter.add(1, ordering: .relaxed).newValue }
}
