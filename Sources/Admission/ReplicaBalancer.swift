/// How a replica group chooses where a request goes.
public enum BalancingPolicy: String, Sendable, Hashable, CaseIterable {
    case roundRobin = "round_robin"
    case leastRequests = "least_requests"
    /// The replica with the fewest outstanding tokens (the prompts not yet read plus the outputs still expected of its
    /// requests in flight), among all of them or, with `choices`, among that many drawn at random (two: power of two
    /// choices).
    case leastOutstandingTokens = "least_outstanding_tokens"
}

/// The replicas of one self-hosted deployment (vLLM, llama.cpp, …): what each has in flight, which are ejected,
/// and the choice of the next. A value with time passed in (nanoseconds) and randomness passed in; the I/O shell
/// calls `choose`, then `finished` with the same tokens when the request ends, however it ends.
///
/// Passive health: `ejectAfter` consecutive failures eject a replica for `ejectFor`; back, it takes load in
/// proportion to the time since (slow start over `slowStart`), so that a replica that just restarted is not
/// handed a full share of long prompts at once. When every replica is ejected, the one due back first is used.
public struct ReplicaBalancer: Sendable, Hashable {
    public struct Settings: Sendable, Hashable {
        public var policy: BalancingPolicy
        public var ejectAfter: Int
        public var ejectFor: Int64
        public var slowStart: Int64
        /// Least outstanding tokens: how many replicas drawn at random are compared (nil: every replica). Comparing
        /// all costs nothing in a small group and never misses the least loaded one; a random pair (power of two
        /// choices) keeps many balancers with partial views from all picking the same replica.
        public var choices: Int?

        public init(policy: BalancingPolicy = .leastOutstandingTokens, ejectAfter: Int = 5, ejectFor: Int64 = 30_000_000_000,
                    slowStart: Int64 = 30_000_000_000, choices: Int? = nil) {
            self.policy = policy
            self.choices = choices.map { max($0, 1) }
            self.ejectAfter = max(ejectAfter, 1)
            self.ejectFor = max(ejectFor, 0)
            self.slowStart = max(slowStart, 0)
        }
    }

    public struct Replica: Sendable, Hashable {
        public internal(set) var outstandingTokens: Int64 = 0
        public internal(set) var inFlight = 0
        public internal(set) var consecutiveFailures = 0
        /// Ejected until then.
        public internal(set) var ejectedUntil: Int64?
        /// Back from an ejection at this time: in slow start until `slowStart` later.
        public internal(set) var readmittedAt: Int64?
    }

    public var settings: Settings
    public private(set) var replicas: [Replica]
    private var nextRoundRobin = 0

    public init(count: Int, settings: Settings = Settings()) {
        self.settings = settings
        replicas = Array(repeating: Replica(), count: max(count, 1))
    }

    /// The replica for a request of `tokens` (prompt plus expected output); its tokens and request are counted as in
    /// flight there until `finished`.
    public mutating func choose(tokens: Int64, now: Int64, using random: inout some RandomNumberGenerator) -> Int {
        let tokens = max(tokens, 0)
        var available: [Int] = []
        available.reserveCapacity(replicas.count)
        for index in replicas.indices {
            if let until = replicas[index].ejectedUntil {
                guard now >= until else { continue }
                replicas[index].ejectedUntil = nil
                replicas[index].readmittedAt = now
                replicas[index].consecutiveFailures = 0
            }
            available.append(index)
        }
        let chosen: Int
        if available.isEmpty {
            chosen = replicas.indices.min { (replicas[$0].ejectedUntil ?? .min) < (replicas[$1].ejectedUntil ?? .min) } ?? 0
        } else {
            switch settings.policy {
            case .roundRobin:
                chosen = available[nextRoundRobin % available.count]
                nextRoundRobin = (nextRoundRobin &+ 1) & Int.max
            case .leastRequests:
                chosen = available.min { load(requests: $0, now: now) < load(requests: $1, now: now) } ?? available[0]
            case .leastOutstandingTokens:
                var candidates = available
                if let choices = settings.choices, choices < candidates.count {
                    // A partial Fisher–Yates shuffle: `choices` distinct replicas drawn at random.
                    for index in 0..<choices {
                        candidates.swapAt(index, Int.random(in: index..<candidates.count, using: &random))
                    }
                    candidates.removeLast(candidates.count - choices)
                }
                // Ties (an idle group) are broken at random, so that every replica gets a share and is seen to work.
                let loads = candidates.map { load(tokens: $0, adding: tokens, now: now) }
                let least = loads.min() ?? 0
                let tied = candidates.indices.filter { loads[$0] == least }
                chosen = tied.isEmpty ? available[0] : candidates[tied[Int.random(in: 0..<tied.count, using: &random)]]
            }
        }
        replicas[chosen].outstandingTokens &+= tokens
        replicas[chosen].inFlight += 1
        return chosen
    }

    /// Part of a request's work on `replica` is done (its prompt was read: the first token came; or some of its
    /// output was streamed): those tokens leave the count now, and `finished` takes the rest.
    public mutating func progressed(_ replica: Int, tokens: Int64) {
        guard replicas.indices.contains(replica) else { return }
        replicas[replica].outstandingTokens = max(0, replicas[replica].outstandingTokens - max(tokens, 0))
    }

    /// A request on `replica` ended: its tokens (those not already taken by `progressed`) leave the count; a failure that says the replica is unwell (not an
    /// invalid request) counts toward ejection, a success clears the count.
    public mutating func finished(_ replica: Int, tokens: Int64, success: Bool, now: Int64) {
        guard replicas.indices.contains(replica) else { return }
        replicas[replica].outstandingTokens = max(0, replicas[replica].outstandingTokens - max(tokens, 0))
        replicas[replica].inFlight = max(0, replicas[replica].inFlight - 1)
        if success {
            replicas[replica].consecutiveFailures = 0
            return
        }
        replicas[replica].consecutiveFailures += 1
        if replicas[replica].consecutiveFailures >= settings.ejectAfter, replicas[replica].ejectedUntil == nil {
            let (until, overflow) = now.addingReportingOverflow(settings.ejectFor)
            replicas[replica].ejectedUntil = overflow ? .max : until
            replicas[replica].readmittedAt = nil
        }
    }

    /// The share of a full replica's load it takes now: ramps from 10% to 100% over the slow start.
    public func weight(_ replica: Int, now: Int64) -> Double {
        guard let since = replicas[replica].readmittedAt, settings.slowStart > 0 else { return 1 }
        let elapsed = Double(max(now - since, 0)) / Double(settings.slowStart)
        return min(1, max(0.1, elapsed))
    }

    private func load(tokens replica: Int, adding tokens: Int64, now: Int64) -> Double {
        Double(replicas[replica].outstandingTokens &+ tokens) / weight(replica, now: now)
    }

    private func load(requests replica: Int, now: Int64) -> Double {
        Double(replicas[replica].inFlight + 1) / weight(replica, now: now)
    }
}

/// The expected output length of a request: its `max_tokens` clipped by a moving average of the real output
/// lengths of the model (most answers stop far short of `max_tokens`). An exponentially weighted mean and mean
/// deviation; the expectation is the mean plus two deviations, so long answers are not systematically underrated.
public struct OutputLengthEstimate: Sendable, Hashable {
    public private(set) var mean: Double
    public private(set) var deviation: Double
    public private(set) var samples = 0
    /// The weight of each new sample.
    public let alpha: Double

    public init(initial: Double = 256, alpha: Double = 0.05) {
        mean = max(initial, 1)
        deviation = mean / 2
        self.alpha = alpha.isFinite ? min(max(alpha, 0.001), 1) : 0.05
    }

    /// A finished answer's output tokens.
    public mutating func observe(outputTokens: Int) {
        let value = Double(max(outputTokens, 0))
        samples += 1
        deviation += alpha * (abs(value - mean) - deviation)
        mean += alpha * (value - mean)
    }

    /// What a request asking for at most `maxTokens` (nil: no cap) is expected to produce.
    public func expected(maxTokens: Int?) -> Int64 {
        let estimate = Int64(min((mean + 2 * deviation).rounded(.up), 1e12))
        guard let maxTokens else { return max(estimate, 1) }
        return max(1, min(estimate, Int64(max(maxTokens, 1))))
    }
}
