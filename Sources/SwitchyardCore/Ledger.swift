public import SwitchyardModels
import Synchronization

/// How a request saved money against what it would have cost without the gateway.
public enum SavingKind: String, Sendable, CaseIterable, Hashable {
    /// Served by the exact cache: the stored answer's list price.
    case exact
    /// Served by the semantic cache: the stored answer's list price.
    case semantic
    /// The provider's prompt cache: cached input tokens at the input price minus what they were billed.
    case promptCache = "prompt_cache"
    /// A route picked a model other than its reference: the answer at the reference model's price minus what was paid
    /// (negative when a cascade paid for a cheap answer and then the reference).
    case routing
    /// Sent through the provider's batch API: the price sent alone minus the batch price.
    case batch
}

/// What a request saved, per lever (nano-USD; zero where a lever did nothing). Five fields rather than a dictionary:
/// a record is made for every request.
public struct Savings: Sendable, Hashable, ExpressibleByDictionaryLiteral {
    public var exact = NanoUSD.zero, semantic = NanoUSD.zero, promptCache = NanoUSD.zero, routing = NanoUSD.zero, batch = NanoUSD.zero

    public init() {}

    public init(dictionaryLiteral elements: (SavingKind, NanoUSD)...) {
        for (kind, amount) in elements { self[kind] += amount }
    }

    public subscript(_ kind: SavingKind) -> NanoUSD {
        get {
            switch kind {
            case .exact: exact
            case .semantic: semantic
            case .promptCache: promptCache
            case .routing: routing
            case .batch: batch
            }
        }
        set {
            switch kind {
            case .exact: exact = newValue
            case .semantic: semantic = newValue
            case .promptCache: promptCache = newValue
            case .routing: routing = newValue
            case .batch: batch = newValue
            }
        }
    }
}

/// One request as the ledger keeps it: who asked, what served it, what it used and cost, what the gateway saved, how
/// long it took and what happened on the way. Written once, when the answer or stream ends (or the request fails).
public struct LedgerRecord: Sendable, Hashable {
    public var requestID: String
    /// Unix milliseconds when the request arrived.
    public var time: Int64
    public var tenant: String
    public var user: String
    public var tier: String
    public var feature: String
    public var api: APIFormat
    /// The model or route name the client asked for.
    public var requested: String
    /// The route and rule that chose the model (nil for a model asked by name).
    public var route: String?
    public var rule: String?
    /// The model and deployment (`provider/upstream model`) that served the answer; nil when no model was called
    /// (a cache hit, a refusal).
    public var model: String?
    public var deployment: String?
    public var streamed: Bool
    /// The HTTP status the client got (a stream that failed after its head: 200, with `outcome` saying so).
    public var status: Int
    /// `completed`, `failed` (an error, or a stream cut), `cancelled` (the client went away).
    public var outcome: String
    /// The error's code when the request failed.
    public var error: String?
    /// Tokens of every upstream call the request made (a cascade's two, a retried attempt's answered ones).
    public var usage: Usage
    /// What every call cost.
    public var cost: NanoUSD
    public var saved: Savings
    public var latencyMilliseconds: Double
    /// Time to the first streamed event (the whole answer for a completion).
    public var timeToFirstTokenMilliseconds: Double?
    /// `hit-exact`, `hit-semantic`, `miss`, `bypass` (nil: no cache stage ran).
    public var cache: String?
    public var degraded: Degradation?
    /// The job the request was accepted as (202), when a limit queued it.
    public var queuedJob: String?
    /// Whether a background job's worker ran it.
    public var job: Bool
    /// Upstream calls made (retries, fallbacks and a cascade's calls each count).
    public var attempts: Int
    /// Whether some of `usage` is estimated (a stream that ended before the upstream reported its usage).
    public var usageEstimated: Bool
    /// Whether a cascade's cheap answer was not good enough and its strong model answered.
    public var escalated = false

    public init(requestID: String, time: Int64, tenant: String, user: String, tier: String, feature: String, api: APIFormat,
                requested: String, route: String? = nil, rule: String? = nil, model: String? = nil, deployment: String? = nil,
                streamed: Bool = false, status: Int = 200, outcome: String = "completed", error: String? = nil,
                usage: Usage = Usage(), cost: NanoUSD = .zero, saved: Savings = Savings(),
                latencyMilliseconds: Double = 0, timeToFirstTokenMilliseconds: Double? = nil, cache: String? = nil,
                degraded: Degradation? = nil, queuedJob: String? = nil, job: Bool = false, attempts: Int = 0,
                usageEstimated: Bool = false) {
        self.requestID = requestID
        self.time = time
        self.tenant = tenant
        self.user = user
        self.tier = tier
        self.feature = feature
        self.api = api
        self.requested = requested
        self.route = route
        self.rule = rule
        self.model = model
        self.deployment = deployment
        self.streamed = streamed
        self.status = status
        self.outcome = outcome
        self.error = error
        self.usage = usage
        self.cost = cost
        self.saved = saved
        self.latencyMilliseconds = latencyMilliseconds
        self.timeToFirstTokenMilliseconds = timeToFirstTokenMilliseconds
        self.cache = cache
        self.degraded = degraded
        self.queuedJob = queuedJob
        self.job = job
        self.attempts = attempts
        self.usageEstimated = usageEstimated
    }

    /// One JSON object (a line of the ledger's files), keys in a fixed order; money in nano-USD, so sums are exact.
    /// Written directly rather than through a `JSONValue`, whose dictionary would cost more than the rest of the record.
    public func write(into output: inout [UInt8]) {
        var first = true
        func key(_ name: StaticString) {
            output.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            output.append(UInt8(ascii: "\""))
            name.withUTF8Buffer { output.append(contentsOf: $0) }
            output.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        }
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            key(name)
            JSONValue.writeString(value, into: &output)
        }
        func int(_ name: StaticString, _ value: Int64) {
            key(name)
            output.append(contentsOf: String(value).utf8)
        }
        func double(_ name: StaticString, _ value: Double?) {
            guard let value else { return }
            key(name)
            output.append(contentsOf: (value.isFinite ? (value * 1000).rounded() / 1000 : 0).description.utf8)
        }
        func bool(_ name: StaticString, _ value: Bool) {
            key(name)
            output.append(contentsOf: (value ? "true" : "false").utf8)
        }
        string("id", requestID)
        int("time_ms", time)
        string("tenant", tenant)
        string("user", user)
        string("tier", tier)
        string("feature", feature)
        string("api", api.rawValue)
        string("requested", requested)
        string("route", route)
        string("rule", rule)
        string("model", model)
        string("deployment", deployment)
        bool("streamed", streamed)
        int("status", Int64(status))
        string("outcome", outcome)
        string("error", error)
        int("input_tokens", Int64(usage.inputTokens))
        int("output_tokens", Int64(usage.outputTokens))
        int("cache_read_tokens", Int64(usage.cacheReadTokens))
        int("cache_write_tokens", Int64(usage.cacheWriteTokens))
        int("cost_nano_usd", cost.value)
        key("saved_nano_usd")
        for (index, kind) in SavingKind.allCases.enumerated() {
            output.append(index == 0 ? UInt8(ascii: "{") : UInt8(ascii: ","))
            JSONValue.writeString(kind.rawValue, into: &output)
            output.append(UInt8(ascii: ":"))
            output.append(contentsOf: String(saved[kind].value).utf8)
        }
        output.append(UInt8(ascii: "}"))
        double("latency_ms", latencyMilliseconds)
        double("ttft_ms", timeToFirstTokenMilliseconds)
        string("cache", cache)
        string("degraded", degraded?.rawValue)
        string("queued_job", queuedJob)
        bool("job", job)
        int("attempts", Int64(attempts))
        bool("usage_estimated", usageEstimated)
        bool("escalated", escalated)
        output.append(UInt8(ascii: "}"))
    }
}

/// Where finished requests' records go. Must not block: called on the request path (a full buffer drops the record
/// and counts it).
public protocol LedgerRecorder: Sendable {
    func record(_ record: LedgerRecord)
}

/// What the stages did with one request, filled in as it goes down the pipeline and its answer comes back: the
/// ledger's record is made from it once the request ends. A reference in the context, so that stages deeper down
/// (the cost stage under a cascade or the attempts) write to the one the ledger stage reads.
public final class RequestTrail: Sendable {
    /// One priced upstream answer.
    public struct Priced: Sendable, Hashable {
        public var model: String
        public var deployment: String
        public var usage: Usage
        public var cost: NanoUSD
        public var promptCacheSaved: NanoUSD
        public var batchSaved: NanoUSD
        public var estimated: Bool

        public init(model: String, deployment: String, usage: Usage, cost: NanoUSD, promptCacheSaved: NanoUSD = .zero,
                    batchSaved: NanoUSD = .zero, estimated: Bool = false) {
            self.model = model
            self.deployment = deployment
            self.usage = usage
            self.cost = cost
            self.promptCacheSaved = promptCacheSaved
            self.batchSaved = batchSaved
            self.estimated = estimated
        }
    }

    public struct State: Sendable {
        /// In the order they were priced: the last is the answer the client got.
        public var priced: [Priced] = []
        public var attempts = 0
        public var cacheSaved: (kind: SavingKind, amount: NanoUSD)?
        public var route: String?
        public var rule: String?
        /// The price of the route's reference model (routing savings are measured against it).
        public var reference: ModelPrice?
        /// When the first streamed event passed.
        public var firstEvent: ContinuousClock.Instant?
    }

    private let state = Mutex(State())

    public init() {}

    public var snapshot: State { state.withLock { $0 } }

    public func priced(_ entry: Priced) {
        state.withLock { $0.priced.append(entry) }
    }

    /// One call to an upstream (answered or not).
    public func attempted() {
        state.withLock { $0.attempts += 1 }
    }

    /// A cache answered: what it saved at list prices.
    public func served(from kind: SavingKind, saved: NanoUSD) {
        state.withLock { $0.cacheSaved = (kind, saved) }
    }

    /// A route's rule chose the model; `reference`: the price routing savings are measured against.
    public func routed(route: String, rule: String, reference: ModelPrice?) {
        state.withLock { state in
            state.route = route
            state.rule = rule
            state.reference = reference
        }
    }

    public func firstEvent(at instant: ContinuousClock.Instant) {
        state.withLock { state in
            if state.firstEvent == nil { state.firstEvent = instant }
        }
    }

    /// The record's usage, cost, savings and serving model from what was priced and served.
    public static func fill(_ record: inout LedgerRecord, from state: State) {
        var usage = Usage()
        var cost = NanoUSD.zero
        var saved = Savings()
        func add(_ kind: SavingKind, _ amount: NanoUSD) { saved[kind] += amount }
        for entry in state.priced {
            usage.inputTokens += entry.usage.inputTokens
            usage.outputTokens += entry.usage.outputTokens
            usage.cacheReadTokens += entry.usage.cacheReadTokens
            usage.cacheWriteTokens += entry.usage.cacheWriteTokens
            cost += entry.cost
            add(.promptCache, entry.promptCacheSaved)
            add(.batch, entry.batchSaved)
            if entry.estimated { record.usageEstimated = true }
        }
        if let last = state.priced.last {
            record.model = last.model
            record.deployment = last.deployment
            // What the reference model would have charged for the answer the client got, against all that was paid.
            if let reference = state.reference { add(.routing, reference.cost(of: last.usage) - cost) }
        }
        if let (kind, amount) = state.cacheSaved { add(kind, amount) }
        record.usage = usage
        record.cost = cost
        record.saved = saved
        record.route = state.route ?? record.route
        record.rule = state.rule ?? record.rule
        record.attempts = max(state.attempts, state.priced.count)
    }
}
