public import Admission
public import Limits
public import SwitchyardCore
import SwitchyardModels
import Synchronization

/// Stage 8: the request goes to its model's deployments, then to its fallback models', in order; each candidate is
/// retried on retryable failures with backoff (full jitter, `retry-after` honoured) while its breaker lets it and
/// the retry budget lasts. The rest of the pipeline (prompt cache, pricing, the call) runs once per attempt, with
/// the candidate as the route, so each attempt is priced at its own model's price and recorded as such.
///
/// Never after the first byte: a stream is returned by the provider once its first event arrived and nothing has
/// reached the client yet; a failure after that is the stream's, not an attempt's. When every attempt fails, one
/// error names them all (deployment and message; the messages never carry secrets or upstream bodies).
public final class AttemptsStage: GatewayStage {
    public struct Settings: Sendable {
        public var retry: RetryPolicy
        /// Nanoseconds after the request entered the stage past which no retry or fallback starts.
        public var budget: Int64
        public var breaker: CircuitBreaker.Settings?

        public init(retry: RetryPolicy = RetryPolicy(maximumAttempts: 1), budget: Int64 = 30_000_000_000,
                    breaker: CircuitBreaker.Settings? = nil) {
            self.retry = retry
            self.budget = max(budget, 0)
            self.breaker = breaker
        }

        public init(_ resilience: ResilienceSettings) {
            self.init(retry: RetryPolicy(maximumAttempts: resilience.maxAttempts, base: resilience.backoffBase.nanoseconds,
                                         cap: resilience.backoffCap.nanoseconds, maximumRetryAfter: resilience.maxRetryAfter.nanoseconds),
                      budget: resilience.budget.nanoseconds,
                      breaker: resilience.breaker.map { breaker in
                          CircuitBreaker.Settings(window: breaker.window.nanoseconds, buckets: 10, failureRatio: breaker.failureRatio,
                                                  minimumAttempts: breaker.minimumAttempts, openFor: breaker.openFor.nanoseconds,
                                                  probes: breaker.probes)
                      })
        }
    }

    /// Per model, the candidates after the model itself: its other deployments, then each fallback model's.
    let chains: [String: [ModelRoute]]
    let settings: Settings
    /// Per deployment (`Self.deploymentID`), bounded by the configuration.
    private let breakers: Mutex<[String: CircuitBreaker]>
    let recorder: (any AttemptRecorder)?
    let clock: @Sendable () -> Int64
    /// A random number in [0, 1): the jitter.
    let unit: @Sendable () -> Double
    let sleep: @Sendable (Int64) async throws -> Void
    /// Per deployment, the provider limits kept in `store` (shared by every instance when it is Redis).
    let budgets: [String: DeploymentBudget]
    let store: (any LimitStore)?
    /// The output a request without `max_tokens` is counted for.
    let defaultOutputTokens: Int64
    let wallClock: @Sendable () -> Int64
    /// Where the openings of breakers are shared with the other instances (nil: this instance's own only).
    let board: (any BreakerBoard)?
    /// Per deployment with a budget: the queue its requests wait in when the budget is spent.
    let gates: [String: any AdmissionGating]
    let admission: AdmissionSettings

    public init(models: [String: ModelRoute], deployments: [String: [ModelRoute]], fallbacks: [String: [String]],
                settings: Settings, budgets: [String: DeploymentBudget] = [:], store: (any LimitStore)? = nil,
                defaultOutputTokens: Int64 = 4096, recorder: (any AttemptRecorder)? = nil,
                board: (any BreakerBoard)? = nil, admission: AdmissionSettings = AdmissionSettings(),
                admissionObserver: (any AdmissionObserver)? = nil,
                sharedGate: ((String, AdmissionQueue.Settings) -> any AdmissionGating)? = nil,
                wallClock: @escaping @Sendable () -> Int64 = wallClockNanoseconds,
                clock: @escaping @Sendable () -> Int64 = AttemptsStage.monotonicNanoseconds,
                unit: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
                sleep: @escaping @Sendable (Int64) async throws -> Void = { try await Task.sleep(for: .nanoseconds($0)) }) {
        var chains: [String: [ModelRoute]] = [:]
        for name in models.keys {
            var chain = deployments[name] ?? []
            for fallback in fallbacks[name] ?? [] {
                guard let route = models[fallback] else { continue }
                chain.append(route)
                chain += deployments[fallback] ?? []
            }
            if !chain.isEmpty { chains[name] = chain }
        }
        self.chains = chains
        self.settings = settings
        var breakers: [String: CircuitBreaker] = [:]
        if let breaker = settings.breaker {
            for route in Array(models.values) + deployments.values.joined() { breakers[Self.deploymentID(route)] = CircuitBreaker(settings: breaker) }
        }
        self.breakers = Mutex(breakers)
        self.recorder = recorder
        self.budgets = budgets.filter { !$0.value.isEmpty }
        self.admission = admission
        let queue = AdmissionQueue.Settings(capacity: admission.capacity, p2Share: admission.p2Share)
        self.gates = Dictionary(uniqueKeysWithValues: self.budgets.keys.map { id in
            (id, sharedGate?(id, queue) ?? AdmissionGate(settings: queue, observer: admissionObserver, clock: clock, sleep: sleep))
        })
        self.store = store
        self.defaultOutputTokens = max(defaultOutputTokens, 1)
        self.wallClock = wallClock
        self.board = board
        self.clock = clock
        self.unit = unit
        self.sleep = sleep
    }

    /// Whether the stage changes anything for this configuration (otherwise it is left out of the pipeline).
    public static func isNeeded(_ config: GatewayConfig) -> Bool {
        config.resilience.maxAttempts > 1 || config.resilience.breaker != nil || !config.budgets.isEmpty
            || config.deployments.values.contains { !$0.isEmpty } || config.fallbacks.values.contains { !$0.isEmpty }
    }

    public static func deploymentID(_ route: ModelRoute) -> String { route.deploymentID }

    public static let monotonicNanoseconds: @Sendable () -> Int64 = {
        let origin = ContinuousClock.now
        return { (ContinuousClock.now - origin).nanoseconds }
    }()

    /// Each deployment's breaker state (for `GET /v1/deployments` and tests).
    public func breakerStates() -> [String: CircuitBreaker.State] {
        breakers.withLock { $0.mapValues(\.state) }
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        let route = try context.requireRoute()
        let chain = chains[route.name] ?? []
        let (deadline, overflow) = clock().addingReportingOverflow(settings.budget)
        var attempts: [String] = []
        var last: GatewayError?
        for position in 0...chain.count {
            let candidate = position == 0 ? route : chain[position - 1]
            let id = Self.deploymentID(candidate)
            if position > 0 {
                guard overflow || clock() < deadline else { break }
                recorder?.upstreamFellBack(model: route.name)
            }
            var retry = RetryState(policy: settings.retry, deadline: overflow ? nil : deadline)
            attempting: while true {
                guard allow(id) else {
                    attempts.append("\(id): circuit open")
                    break
                }
                let reservation: Reservation?
                let started = wallClock()
                // A request that waits for a batch takes nothing from the deployment's per-minute budget (the
                // providers count batches apart from it).
                let batched = context.batchTicket?.applies(to: candidate, now: wallClock()) == true
                do {
                    switch try await (batched ? .uncounted : reserveBudget(id, request: request, context: context,
                                                                           moreCandidates: position < chain.count)) {
                    case .reserved(let taken): reservation = taken
                    case .uncounted: reservation = nil
                    case .spent:
                        attempts.append("\(id): its budget is spent")
                        break attempting
                    }
                } catch let error as GatewayError {
                    attempts.append("\(id): \(error.message)")
                    last = error
                    break
                }
                var attempt = context
                // Decided here, once: an attempt sent on its own has its budget reserved.
                if !batched, attempt.batchTicket != nil { attempt.batchTicket = nil }
                if position > 0 {
                    attempt.route = candidate
                    // The client's body names another model or is shaped for another provider: rendered again.
                    attempt.original = nil
                }
                do {
                    let response = try await next(request, attempt)
                    report(id, success: true)
                    if let reservation, case .completion(let completion) = response { correct(reservation, request: request, completion: completion, started: started) }
                    return response
                } catch let error as GatewayError where batched && context.batchTicket?.applies(to: candidate, now: wallClock()) == false
                    && error.isRetryable && !Task.isCancelled {
                    // The batch failed or came too late: the same deployment again, now as a call of its own, which
                    // says nothing yet of the deployment's health.
                    attempts.append("\(id): batch: \(error.message)")
                    continue attempting
                } catch let error as GatewayError {
                    let failure = Self.classify(error)
                    // An invalid request says nothing of the deployment's health.
                    if failure != .request { report(id, success: false) }
                    attempts.append("\(id): \(error.message)")
                    last = error
                    if failure == .request || Task.isCancelled { throw error }
                    let retryAfter = error.retryAfter.map { max($0.nanoseconds, 0) }
                    guard case .retry(let after) = retry.afterFailure(failure, retryAfter: retryAfter, now: clock(), unit: unit()) else {
                        break
                    }
                    recorder?.upstreamRetried(provider: candidate.provider)
                    try await sleep(after)
                }
            }
        }
        guard let last else {
            throw GatewayError(.overloaded, "no deployment of '\(route.name)' is available (\(attempts.joined(separator: "; ")))",
                               retryAfter: .seconds(1))
        }
        // One attempt: its own error, as without this stage.
        if attempts.count == 1 { throw last }
        throw GatewayError(last.code, "\(attempts.count) attempts failed: " + attempts.joined(separator: "; "),
                           retryAfter: last.retryAfter, upstreamStatus: last.upstreamStatus)
    }

    /// What an attempt on a deployment takes from its budget: a request, and the tokens a provider counts when it
    /// arrives (the prompt, estimated, plus `max_tokens`).
    func demands(_ budget: DeploymentBudget, id: String, request: ChatRequest) -> [LimitDemand] {
        demands(budget, id: id, inputTokens: Int64(request.estimatedInputTokens),
                outputTokens: request.maxTokens.map { Int64(max($0, 0)) } ?? defaultOutputTokens)
    }

    /// The budget's counters, taking these units.
    public func demands(_ budget: DeploymentBudget, id: String, inputTokens input: Int64, outputTokens output: Int64) -> [LimitDemand] {
        var demands: [LimitDemand] = []
        func add(_ name: String, _ limit: Int?, _ units: Int64) {
            guard let limit else { return }
            // One shard: a deployment's counters are reserved together, in one Redis slot.
            demands.append(LimitDemand(counter: "deployment|\(id)|\(name)", rule: .rate(limit: Int64(limit), period: 60_000_000_000),
                                       units: units, shard: "deployment|\(id)"))
        }
        add("rpm", budget.requestsPerMinute, 1)
        add("tpm", budget.tokensPerMinute, input &+ output)
        add("input_tpm", budget.inputTokensPerMinute, input)
        add("output_tpm", budget.outputTokensPerMinute, output)
        return demands
    }

    /// Takes the attempt's share of the deployment's budget. When it is spent: `.spent` when another candidate may
    /// take the request; otherwise the wait for room, within the deadline, or a 429 naming the budget. A failing store
    /// lets the attempt through uncounted (the provider still has its own limits).
    enum BudgetOutcome {
        case reserved(Reservation)
        /// No budget, or its store failed.
        case uncounted
        /// Spent, and another candidate may take the request.
        case spent
    }

    /// Each deployment's queue, for metrics (`switchyard_admission_queue_depth`).
    public func queueDepths() -> [String: [Priority: Int]] {
        gates.mapValues { gate in Dictionary(uniqueKeysWithValues: Priority.allCases.map { ($0, gate.depth($0)) }) }
    }

    /// With another candidate to go to, a spent budget (or others waiting for it first) sends the request there;
    /// on the last candidate, the request waits in the deployment's queue in its priority's order, until the
    /// priority's deadline from now (`admission.deadlines`).
    func reserveBudget(_ id: String, request: ChatRequest, context: GatewayContext, moreCandidates: Bool) async throws -> BudgetOutcome {
        guard let budget = budgets[id], let store, let gate = gates[id] else { return .uncounted }
        let demands = demands(budget, id: id, request: request)
        let priority = context.priority
        var refusedIndex = 0
        func attempt() async throws -> AdmissionAttempt<BudgetOutcome> {
            let decision: LimitDecision
            do {
                decision = try await store.reserve(demands, lease: 0, now: wallClock())
            } catch {
                recorder?.budgetStoreFailed()
                return .granted(.uncounted)
            }
            switch decision {
            case .admitted(let reservation): return .granted(.reserved(reservation))
            case .refused(let index, let retryIn, _, _):
                refusedIndex = index
                // Nil: it asks for more than the whole budget, and never fits; refused at once, not at its deadline.
                return .refused(retryIn: retryIn ?? .max)
            }
        }
        if moreCandidates {
            guard !gate.isContended(for: priority), case .granted(let outcome) = try await attempt() else { return .spent }
            return outcome
        }
        let (deadline, overflow) = clock().addingReportingOverflow(admission.deadline(priority).nanoseconds)
        let tenant = context.caller?.tenant ?? "anonymous"
        do {
            // A waiting stream is told its place, and a wait estimated at the budget's rate.
            let onWaiting = context.queueWatch.map { watch in
                let interval = Self.interval(budget, request: request)
                return { @Sendable (position: @escaping @Sendable () -> Int?) in
                    watch.waiting {
                        position().map { ahead in
                            QueueWatch.Report(position: ahead, estimatedWait: interval.map { .nanoseconds($0.multipliedReportingOverflow(by: Int64(ahead + 1)).partialValue) })
                        }
                    }
                }
            }
            return try await gate.admit(priority: priority, tenant: tenant,
                                        cost: Double(demands.lazy.map(\.units).max() ?? 1), weight: admission.weight(tenant),
                                        deadline: overflow ? .max : deadline, onWaiting: onWaiting, attempt: attempt)
        } catch let refusal as AdmissionRefusal {
            let name = demands[min(refusedIndex, demands.count - 1)].counter.split(separator: "|").last.map(String.init) ?? "budget"
            let waited = Double(refusal.waited / 1_000_000) / 1000
            let message = switch refusal.reason {
            case .full: "the \(name) budget of deployment '\(id)' is spent and its queue is full"
            case .shed: "the \(name) budget of deployment '\(id)' is spent: waited \(waited) s, then gave its place in the full queue to a request of higher priority"
            case .expired: "the \(name) budget of deployment '\(id)' is spent: no room within the \(priority.name) deadline (waited \(waited) s)"
            }
            let retryAfter: Duration = switch refusal.retryIn {
            case .max?: .seconds(60)
            case let retryIn?: .nanoseconds(max(retryIn, 1_000_000_000))
            case nil: .seconds(1)
            }
            throw GatewayError(.queueTimeout, message, retryAfter: retryAfter)
        }
    }

    /// How often the budget admits a request like this one at its rate (nanoseconds; its slowest dimension), nil for
    /// a budget without a rate.
    static func interval(_ budget: DeploymentBudget, request: ChatRequest) -> Int64? {
        let input = Int64(request.estimatedInputTokens), output = Int64(request.maxTokens ?? 4096)
        let perMinute: [(Int?, Int64)] = [(budget.requestsPerMinute, 1), (budget.tokensPerMinute, input + output),
                                          (budget.inputTokensPerMinute, input), (budget.outputTokensPerMinute, output)]
        return perMinute.compactMap { rate, units -> Int64? in
            guard let rate, rate > 0 else { return nil }
            return Int64(min(Double(units) * 60e9 / Double(rate), 3.6e12))
        }.max()
    }

    /// The budget is charged what the provider counted beyond the reservation: a prompt larger than estimated,
    /// and whatever its rate-limit headers say it has left below what the budget has now (another client of the
    /// same key, a budget configured above the real limit). The comparison is with the budget's count now, not
    /// with what was left when this attempt reserved: attempts reserved since then and already at the provider are
    /// in both counts, and those not there yet make the budget the lower one, so nothing is counted twice. What the
    /// budget refilled since the attempt started is allowed for. Nothing is given back: a provider counts
    /// `max_tokens` when the request arrives, however short the answer.
    func correct(_ reservation: Reservation, request: ChatRequest, completion: Completion, started: Int64) {
        guard let store else { return }
        let usage = completion.usage
        let prompt = Int64(usage.inputTokens + usage.cacheReadTokens + usage.cacheWriteTokens) - Int64(request.estimatedInputTokens)
        let said = completion.providerRemaining
        guard said != nil || prompt > 0 else { return }
        let demands = reservation.demands
        let wallClock = wallClock
        Task {
            let now = wallClock()
            let current = said == nil ? nil : try? await store.remaining(demands, now: now)
            var changed = false
            let actual: [Int64?] = demands.indices.map { index in
                let demand = demands[index]
                let name = demand.counter.split(separator: "|").last ?? ""
                let theirs: Int64?
                var extra: Int64 = 0
                switch name {
                case "rpm": theirs = said?.requests
                case "tpm": theirs = said?.tokens; extra = prompt
                case "input_tpm": theirs = said?.inputTokens; extra = prompt
                case "output_tpm": theirs = said?.outputTokens
                default: theirs = nil
                }
                if let theirs, let current, index < current.count {
                    extra = max(extra, current[index] - Self.refilled(demand.rule, since: started, now: now) - theirs)
                }
                guard extra > 0 else { return nil }
                changed = true
                return demand.units &+ extra
            }
            if changed { try? await store.settle(reservation, actual: actual, now: now) }
        }
    }

    /// Whole units a rate counter gains back between two times.
    static func refilled(_ rule: LimitRule, since start: Int64, now: Int64) -> Int64 {
        guard case .rate(let limit, let period) = rule, period > 0, now > start else { return 0 }
        let elapsed = Double(now) - Double(start)
        return Int64(min(Double(limit) * elapsed / Double(period), 1e15).rounded(.down))
    }

    /// How an upstream error bears on trying again.
    static func classify(_ error: GatewayError) -> AttemptFailure {
        switch error.code {
        case .rateLimited, .overloaded, .upstreamTimeout, .upstreamError: .retryable
        case .modelNotFound, .unauthenticated, .permissionDenied, .notFound: .deployment
        // A queue of this gateway's own, further down: the request's wait is over.
        case .invalidRequest, .payloadTooLarge, .unsupportedMediaType, .internalError, .queueTimeout: .request
        }
    }

    private func allow(_ id: String) -> Bool {
        guard settings.breaker != nil else { return true }
        let now = clock()
        let (allowed, change) = breakers.withLock { breakers -> (Bool, CircuitBreaker.State?) in
            guard var breaker = breakers[id] else { return (true, nil) }
            let before = breaker.state.name
            let allowed = breaker.allow(now: now)
            breakers[id] = breaker
            return (allowed, breaker.state.name == before ? nil : breaker.state)
        }
        if let change { changed(id, to: change, now: now) }
        return allowed
    }

    private func report(_ id: String, success: Bool) {
        guard settings.breaker != nil else { return }
        let now = clock()
        let change = breakers.withLock { breakers -> CircuitBreaker.State? in
            guard var breaker = breakers[id] else { return nil }
            let before = breaker.state.name
            breaker.record(success: success, now: now)
            breakers[id] = breaker
            return breaker.state.name == before ? nil : breaker.state
        }
        if let change { changed(id, to: change, now: now) }
    }

    /// This instance's breaker of `id` changed: the metric, and an opening goes on the board for the others.
    private func changed(_ id: String, to state: CircuitBreaker.State, now: Int64) {
        recorder?.breakerChanged(deployment: id, to: state.name)
        guard let board, case .open(let until) = state else { return }
        let (wallUntil, overflow) = wallClock().addingReportingOverflow(until &- now)
        let recorder = recorder
        Task {
            do {
                try await board.opened(id, until: overflow ? .max : wallUntil)
            } catch {
                recorder?.breakerBoardFailed()
            }
        }
    }

    /// Reads the board and opens the breakers other instances opened, for as long as they did. Run every
    /// `BreakerSync` interval; a failed read leaves the breakers as they are (each instance still opens its own).
    public func syncBreakers() async {
        guard let board, settings.breaker != nil else { return }
        let wallNow = wallClock()
        let open: [String: Int64]
        do {
            open = try await board.open(now: wallNow)
        } catch {
            recorder?.breakerBoardFailed()
            return
        }
        guard !open.isEmpty else { return }
        let now = clock()
        let opened = breakers.withLock { breakers -> [String] in
            var opened: [String] = []
            for (id, wallUntil) in open {
                guard var breaker = breakers[id] else { continue }
                let (until, overflow) = now.addingReportingOverflow(wallUntil &- wallNow)
                if breaker.adoptOpen(until: overflow ? .max : until, now: now) { opened.append(id) }
                breakers[id] = breaker
            }
            return opened
        }
        for id in opened { recorder?.breakerChanged(deployment: id, to: "open") }
    }
}
