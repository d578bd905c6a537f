import Yams

/// One configured limit: what it counts, how much, over which window, for which scope, and which requests it applies to.
public struct LimitDefinition: Sendable, Hashable {
    public enum Measure: String, Sendable, Hashable, CaseIterable {
        case requests
        case inputTokens = "input_tokens"
        case outputTokens = "output_tokens"
        case totalTokens = "total_tokens"
        case concurrent
        /// Nano-USD (configured as `spend_usd`).
        case spend = "spend_usd"
    }

    /// Second, minute and hour are smooth rates; day and month are exact quotas per UTC calendar period.
    public enum Window: String, Sendable, Hashable, CaseIterable {
        case second, minute, hour, day, month

        public var isCalendar: Bool { self == .day || self == .month }

        /// Nanoseconds, for the rates.
        public var nanoseconds: Int64 {
            switch self {
            case .second: 1_000_000_000
            case .minute: 60_000_000_000
            case .hour: 3_600_000_000_000
            case .day: 86_400_000_000_000
            case .month: 2_678_400_000_000_000
            }
        }
    }

    /// What a limit is kept per: each distinct combination of these has its own counter.
    public enum Dimension: String, Sendable, Hashable, CaseIterable, Comparable {
        case key, tenant, user, tier, feature, model

        public static func < (lhs: Dimension, rhs: Dimension) -> Bool {
            (allCases.firstIndex(of: lhs) ?? 0) < (allCases.firstIndex(of: rhs) ?? 0)
        }
    }

    public var name: String
    public var measure: Measure
    /// Units per window (requests, tokens, nano-USD), or permits at once for `concurrent`.
    public var amount: Int64
    /// nil for `concurrent`.
    public var window: Window?
    /// Sorted, without repeats.
    public var scope: [Dimension]
    /// Only requests whose caller or model has one of these values (tier, feature, model); empty: every request.
    public var when: [Dimension: Set<String>]
    /// Whether cache hits count too (by default only requests that reach a model do).
    public var countsAllRequests: Bool
    /// For a day or month budget: percentages of the amount (ascending, 1…100) at which an alert is sent, once per
    /// threshold, counter and period (YAML `alerts: [50, 80, 100]`).
    public var alerts: [Int] = []
    /// Whether a request this limit refuses gets its 429 at once, skipping the caller's degradation policy (YAML
    /// `at_limit: stop`; the default `degrade` lets the policy answer).
    public var hardStop = false

    public init(name: String, measure: Measure, amount: Int64, window: Window?, scope: [Dimension] = [.tenant],
                when: [Dimension: Set<String>] = [:], countsAllRequests: Bool = false) {
        self.name = name
        self.measure = measure
        self.amount = amount
        self.window = window
        self.scope = Array(Set(scope)).sorted()
        self.when = when
        self.countsAllRequests = countsAllRequests
    }
}

/// What to do, in order, when a request's limits refuse it, for the callers it applies to (`degrade:`): each step
/// is tried until one answers; after the last, the 429.
public struct DegradePolicy: Sendable, Hashable {
    public enum Step: Sendable, Hashable {
        /// Serve from the caches: an exact answer past its TTL by at most `staleFor`, or a semantic match at or above
        /// `semanticThreshold` (looser than the cache's own), still verified.
        case cache(staleFor: Duration?, semanticThreshold: Double?)
        /// Try the reservation again against each of these models or routes in turn (their own limits apply: a
        /// route's, those of the model its rules choose for the request) and answer with the first admitted.
        case downgrade([String])
        /// Accept the request as a background job (202 with the job, `x-switchyard-degraded: queued`).
        case queue
    }

    /// Only callers whose tier and feature are among these (a missing dimension matches every caller).
    public var when: [LimitDefinition.Dimension: Set<String>]
    public var steps: [Step]

    public init(when: [LimitDefinition.Dimension: Set<String>] = [:], steps: [Step]) {
        self.when = when
        self.steps = steps
    }

    /// Whether the policy is for `caller`.
    public func applies(to caller: Caller) -> Bool {
        for (dimension, values) in when {
            let value: String = switch dimension {
            case .tier: caller.tier
            case .feature: caller.feature
            default: ""
            }
            if !values.contains(value) { return false }
        }
        return true
    }

    /// The longest `stale_for` of any policy: how long the exact cache keeps an answer past its TTL.
    public static func staleRetention(_ policies: [DegradePolicy]) -> Duration {
        policies.flatMap(\.steps).reduce(.zero) { longest, step in
            if case .cache(let staleFor?, _) = step { return max(longest, staleFor) }
            return longest
        }
    }

    /// Whether any policy serves semantic matches at a looser threshold.
    public static func usesLooserSemantic(_ policies: [DegradePolicy]) -> Bool {
        policies.flatMap(\.steps).contains { step in
            if case .cache(_, _?) = step { return true }
            return false
        }
    }
}

/// What a degraded answer was (`x-switchyard-degraded`).
public enum Degradation: String, Sendable, Hashable, CaseIterable {
    case cacheStale = "cache-stale"
    case cacheSemantic = "cache-semantic"
    case downgrade
    case queued
}

/// The tightest limits that applied to a request, for the API's own rate-limit headers: of the request limits and
/// of the token limits, the one with the least left.
public struct LimitStatus: Sendable, Hashable {
    public struct Counter: Sendable, Hashable {
        public var limit: Int64
        public var remaining: Int64
        /// Nanoseconds until the whole limit is free again.
        public var resetIn: Int64

        public init(limit: Int64, remaining: Int64, resetIn: Int64) {
            self.limit = limit
            self.remaining = remaining
            self.resetIn = resetIn
        }
    }

    public var requests: Counter?
    public var tokens: Counter?
    /// Set when the limits refused the request and a degradation step answered it.
    public var degraded: Degradation?
    /// The model a downgrade step chose (`x-switchyard-model`).
    public var servedModel: String?

    public init(requests: Counter? = nil, tokens: Counter? = nil, degraded: Degradation? = nil) {
        self.requests = requests
        self.tokens = tokens
        self.degraded = degraded
    }

    /// Keeps `counter` for its kind when it has less left than the one kept.
    public mutating func consider(_ measure: LimitDefinition.Measure, _ counter: Counter) {
        switch measure {
        case .requests:
            if requests.map({ counter.remaining < $0.remaining }) ?? true { requests = counter }
        case .inputTokens, .outputTokens, .totalTokens:
            if tokens.map({ counter.remaining < $0.remaining }) ?? true { tokens = counter }
        case .concurrent, .spend:
            break
        }
    }
}

extension ConfigLoader {
    /// Most limits in one file: each request checks every one that applies.
    static let maximumLimits = 256
    /// A rate's amount: past this a limit means nothing (and its arithmetic would lose precision).
    static let maximumAmount: Int64 = 1_000_000_000_000_000

    /// `limits:` (a list of definitions) and `tiers:` (presets: per tier, a list of `{MEASURE: N, per: WINDOW}`,
    /// each a limit per user of that tier).
    static func parseLimits(_ top: MappingReader) throws(ConfigError) -> [LimitDefinition] {
        var limits: [LimitDefinition] = []
        if let list = try top.sequence("limits") {
            for (offset, node) in list.enumerated() {
                let reader = try MappingReader(node, path: "limits[\(offset)]")
                let name = try reader.requiredString("name")
                guard name.utf8.count <= 64, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                    throw ConfigError(path: reader.child("name"), "must be 1 to 64 letters, digits, '-' or '_'")
                }
                guard !limits.contains(where: { $0.name == name }) else { throw ConfigError(path: reader.child("name"), "duplicate limit '\(name)'") }
                var limit = try parseLimitBody(reader, name: name)
                if let scope = try reader.sequence("scope") {
                    var dimensions: [LimitDefinition.Dimension] = []
                    for (index, item) in scope.enumerated() {
                        guard let text = item.scalar?.string, let dimension = LimitDefinition.Dimension(rawValue: text) else {
                            throw ConfigError(path: "\(reader.child("scope"))[\(index)]",
                                              "must be one of \(LimitDefinition.Dimension.allCases.map(\.rawValue).joined(separator: ", "))")
                        }
                        guard !dimensions.contains(dimension) else {
                            throw ConfigError(path: "\(reader.child("scope"))[\(index)]", "'\(text)' is named twice")
                        }
                        dimensions.append(dimension)
                    }
                    guard !dimensions.isEmpty else { throw ConfigError(path: reader.child("scope"), "must name at least one of key, tenant, user, tier, feature, model") }
                    limit.scope = dimensions.sorted()
                }
                if let when = try reader.mapping("when") {
                    for dimension in [LimitDefinition.Dimension.tier, .feature, .model] {
                        guard let values = try stringList(when, dimension.rawValue) else { continue }
                        limit.when[dimension] = Set(values)
                    }
                    try when.finish()
                }
                if let counts = try reader.string("counts") {
                    guard ["model_requests", "all_requests"].contains(counts) else {
                        throw ConfigError(path: reader.child("counts"), "must be 'model_requests' (the default: cache hits are free) or 'all_requests'")
                    }
                    limit.countsAllRequests = counts == "all_requests"
                }
                if let alerts = try reader.sequence("alerts") {
                    guard limit.window?.isCalendar == true else {
                        throw ConfigError(path: reader.child("alerts"), "alerts are for budgets per day or month")
                    }
                    for (index, item) in alerts.enumerated() {
                        guard let percent = item.scalar.flatMap({ Int($0.string) }), (1...100).contains(percent),
                              percent > (limit.alerts.last ?? 0) else {
                            throw ConfigError(path: "\(reader.child("alerts"))[\(index)]", "must be percentages from 1 to 100, ascending")
                        }
                        limit.alerts.append(percent)
                    }
                }
                if let atLimit = try reader.string("at_limit") {
                    guard atLimit == "stop" || atLimit == "degrade" else {
                        throw ConfigError(path: reader.child("at_limit"), "must be stop (a 429 at once) or degrade (the caller's degradation policy)")
                    }
                    limit.hardStop = atLimit == "stop"
                }
                try reader.finish()
                limits.append(limit)
            }
        }
        if let tiers = try top.mapping("tiers") {
            for tier in tiers.keys {
                guard let list = try tiers.sequence(tier) else { continue }
                for (offset, node) in list.enumerated() {
                    let reader = try MappingReader(node, path: "\(tiers.child(tier))[\(offset)]")
                    var limit = try parseLimitBody(reader, name: "")
                    limit.name = "tier-\(tier)-\(limit.measure.rawValue)-\(limit.window?.rawValue ?? "at-once")"
                    guard !limits.contains(where: { $0.name == limit.name }) else {
                        throw ConfigError(path: reader.path, "a second \(limit.measure.rawValue) limit per \(limit.window?.rawValue ?? "request") for tier '\(tier)'")
                    }
                    limit.scope = [.user]
                    limit.when = [.tier: [tier]]
                    try reader.finish()
                    limits.append(limit)
                }
            }
            try tiers.finish()
        }
        guard limits.count <= maximumLimits else { throw ConfigError(path: "limits", "at most \(maximumLimits) limits") }
        return limits
    }

    /// `degrade:` a list of `{when: {tier:, feature:}, steps: [...]}`, each step one of `cache: {stale_for_seconds,
    /// semantic_threshold}`, `downgrade: NAME or [NAMES]` (models or routes), `queue`.
    static func parseDegrade(_ top: MappingReader, models: Set<String>, routes: Set<String> = []) throws(ConfigError) -> [DegradePolicy] {
        guard let list = try top.sequence("degrade") else { return [] }
        guard list.count <= 64 else { throw ConfigError(path: "degrade", "at most 64 policies") }
        var policies: [DegradePolicy] = []
        for (offset, node) in list.enumerated() {
            let reader = try MappingReader(node, path: "degrade[\(offset)]")
            var policy = DegradePolicy(steps: [])
            if let when = try reader.mapping("when") {
                for dimension in [LimitDefinition.Dimension.tier, .feature] {
                    guard let values = try stringList(when, dimension.rawValue) else { continue }
                    policy.when[dimension] = Set(values)
                }
                try when.finish()
            }
            guard let steps = try reader.sequence("steps"), !steps.isEmpty else {
                throw ConfigError(path: reader.child("steps"), "is required: a list of cache, downgrade and queue steps")
            }
            for (index, step) in steps.enumerated() {
                let path = "\(reader.child("steps"))[\(index)]"
                if step.scalar?.string == "queue" {
                    policy.steps.append(.queue)
                    continue
                }
                let item = try MappingReader(step, path: path)
                guard item.keys.count == 1, let kind = item.keys.first else {
                    throw ConfigError(path: path, "a step is one of cache, downgrade, queue")
                }
                switch kind {
                case "cache":
                    guard let cache = try item.mapping("cache") else { throw ConfigError(path: item.child("cache"), "expected a mapping") }
                    let stale = try cache.double("stale_for_seconds", in: 0...(30 * 86400)).map { Duration.milliseconds(Int64($0 * 1000)) }
                    let threshold = try cache.double("semantic_threshold", in: 0.5...1)
                    try cache.finish()
                    guard stale != nil || threshold != nil else {
                        throw ConfigError(path: item.child("cache"), "set stale_for_seconds, semantic_threshold or both")
                    }
                    policy.steps.append(.cache(staleFor: stale, semanticThreshold: threshold))
                case "queue":
                    throw ConfigError(path: item.child("queue"), "takes no settings: write the step as '- queue'")
                case "downgrade":
                    let targets = try stringList(item, "downgrade") ?? []
                    for (position, target) in targets.enumerated() where !models.contains(target) && !routes.contains(target) {
                        throw ConfigError(path: targets.count == 1 ? item.child("downgrade") : "\(item.child("downgrade"))[\(position)]",
                                          "unknown model or route '\(target)'")
                    }
                    guard !targets.isEmpty else { throw ConfigError(path: item.child("downgrade"), "must name at least one model or route") }
                    policy.steps.append(.downgrade(targets))
                default:
                    throw ConfigError(path: item.child(kind), "unknown step: one of cache, downgrade, queue")
                }
                try item.finish()
            }
            try reader.finish()
            policies.append(policy)
        }
        return policies
    }

    /// The measure (exactly one of its keys, with its amount) and the window of a limit.
    private static func parseLimitBody(_ reader: MappingReader, name: String) throws(ConfigError) -> LimitDefinition {
        var found: (LimitDefinition.Measure, Int64)?
        for measure in LimitDefinition.Measure.allCases where reader.has(measure.rawValue) {
            if let found {
                throw ConfigError(path: reader.child(measure.rawValue), "a limit counts one thing: \(found.0.rawValue) is already set")
            }
            let amount: Int64
            if measure == .spend {
                let text = try reader.string(measure.rawValue) ?? ""
                guard let spend = NanoUSD(usd: text), spend.value > 0, spend.value <= maximumAmount else {
                    throw ConfigError(path: reader.child(measure.rawValue), "must be an amount of USD above 0 (a decimal string, e.g. \"25.00\"), got '\(text)'")
                }
                amount = spend.value
            } else {
                let maximum = measure == .concurrent ? 1_000_000 : Int(maximumAmount)
                guard let value = try reader.int(measure.rawValue, in: 1...maximum) else { continue }
                amount = Int64(value)
            }
            found = (measure, amount)
        }
        guard let (measure, amount) = found else {
            throw ConfigError(path: reader.path, "must set one of \(LimitDefinition.Measure.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var window: LimitDefinition.Window?
        if let per = try reader.string("per") {
            guard measure != .concurrent else { throw ConfigError(path: reader.child("per"), "a concurrency limit has no window") }
            guard let value = LimitDefinition.Window(rawValue: per) else {
                throw ConfigError(path: reader.child("per"), "must be one of \(LimitDefinition.Window.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            window = value
        } else if measure != .concurrent {
            throw ConfigError(path: reader.child("per"), "is required: second, minute, hour, day or month")
        }
        return LimitDefinition(name: name, measure: measure, amount: amount, window: window)
    }

    /// A string or a list of strings.
    static func stringList(_ reader: MappingReader, _ key: String) throws(ConfigError) -> [String]? {
        if let items = try? reader.sequence(key) {
            var values: [String] = []
            for (index, item) in items.enumerated() {
                guard let text = item.scalar?.string, !text.isEmpty else { throw ConfigError(path: "\(reader.child(key))[\(index)]", "expected a name") }
                values.append(text)
            }
            guard !values.isEmpty else { throw ConfigError(path: reader.child(key), "must name at least one") }
            return values
        }
        return try reader.string(key).map { [$0] }
    }
}

/// Where the limits' outcomes go (metrics). Must not block: called on the request path.
public protocol LimitRecorder: Sendable {
    /// A request refused with a 429 by the limit named (after every degradation step failed).
    func limitRefused(_ name: String)
    /// A refused request answered by a degradation step.
    func degraded(_ kind: Degradation)
    /// The limits' store failed (the request went through uncounted, or was refused when failing closed).
    func limitStoreFailed()
}
