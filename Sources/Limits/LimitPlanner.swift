public import SwitchyardCore

/// Which counters a request must pass, from the configured limits: each definition that applies to the request
/// (its `when` filters, and cache hits only for `counts: all_requests`) gives one demand on the counter of the
/// request's scope values, with the units it reserves.
public struct LimitPlanner: Sendable {
    public let definitions: [LimitDefinition]
    /// How long a concurrency permit lives without being renewed (a crashed instance's permits come back then).
    public let permitTTL: Int64

    /// What does not depend on the request, worked out once per definition (on the request path only the scope's
    /// values are read and appended).
    struct Prepared: Sendable {
        var rule: LimitRule
        var measure: LimitDefinition.Measure
        var countsAllRequests: Bool
        /// The escaped name.
        var name: String
        /// The scope's dimensions (`CounterKey`'s bits), the tenant added for a user or key scope.
        var dimensions: UInt8
        /// The filters other than the model's (that one is applied through `byModel`).
        var when: [(LimitDefinition.Dimension, Set<String>)]
    }

    let prepared: [Prepared]
    /// For each model a filter names, the definitions that may apply to it (in order); any other model: `unfiltered`.
    /// One lookup per request instead of one per definition.
    let byModel: [String: [Int]]
    let unfiltered: [Int]

    public init(definitions: [LimitDefinition], permitTTL: Int64 = 600_000_000_000) {
        self.definitions = definitions
        let permitTTL = max(permitTTL, 1)
        self.permitTTL = permitTTL
        prepared = definitions.map { definition in
            var dimensions = definition.scope
            let perTenant = dimensions.contains(.tenant) || dimensions.contains(.user) || dimensions.contains(.key)
            if perTenant && !dimensions.contains(.tenant) { dimensions.append(.tenant) }
            let rule: LimitRule = switch definition.window {
            case nil: .concurrent(limit: Int(clamping: definition.amount), ttl: permitTTL)
            case .day?: .quota(limit: definition.amount, calendar: .day)
            case .month?: .quota(limit: definition.amount, calendar: .month)
            case let window?: .rate(limit: definition.amount, period: window.nanoseconds)
            }
            return Prepared(rule: rule, measure: definition.measure, countsAllRequests: definition.countsAllRequests,
                            name: CounterKey.escape(definition.name), dimensions: dimensions.reduce(0) { $0 | CounterKey.bit($1) },
                            when: definition.when.filter { $0.key != .model }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        }
        unfiltered = definitions.indices.filter { definitions[$0].when[.model] == nil }
        let named = Set(definitions.flatMap { $0.when[.model] ?? [] })
        byModel = Dictionary(uniqueKeysWithValues: named.map { model in
            (model, definitions.indices.filter { definitions[$0].when[.model]?.contains(model) ?? true })
        })
    }

    /// What a request is expected to use before it runs: the prompt estimate, `max_tokens` (or a per-model default),
    /// and the price of both.
    public struct Estimate: Sendable, Hashable {
        public var inputTokens: Int64
        public var outputTokens: Int64
        public var spend: NanoUSD

        public init(inputTokens: Int64, outputTokens: Int64, spend: NanoUSD) {
            self.inputTokens = max(inputTokens, 0)
            self.outputTokens = max(outputTokens, 0)
            self.spend = spend
        }
    }

    public func demands(caller: Caller, model: String, estimate: Estimate, cacheHit: Bool = false) -> [LimitDemand] {
        plan(caller: caller, model: model, estimate: estimate, cacheHit: cacheHit).map(\.demand)
    }

    /// The demands with the definitions they come from (to settle each by its measure, and to name a refusal).
    public func plan(caller: Caller, model: String, estimate: Estimate, cacheHit: Bool = false)
        -> [(demand: LimitDemand, definition: LimitDefinition)]
    {
        requestDemands(caller: caller, model: model, estimate: estimate, cacheHit: cacheHit).map { ($0, definitions[$0.source]) }
    }

    /// The request path's form of `plan`: each demand names its definition by its index in `definitions` (`source`),
    /// without a copy of it.
    public func requestDemands(caller: Caller, model: String, estimate: Estimate, cacheHit: Bool = false) -> [LimitDemand] {
        let candidates = byModel[model] ?? unfiltered
        var demands: [LimitDemand] = []
        for index in candidates {
            guard !cacheHit || prepared[index].countsAllRequests else { continue }
            guard prepared[index].when.allSatisfy({ $0.1.contains(Self.value(of: $0.0, caller: caller, model: model)) }) else { continue }
            let units: Int64 = switch prepared[index].measure {
            case .requests, .concurrent: 1
            case .inputTokens: estimate.inputTokens
            case .outputTokens: estimate.outputTokens
            case .totalTokens: estimate.inputTokens > .max - estimate.outputTokens ? .max : estimate.inputTokens + estimate.outputTokens
            case .spend: max(estimate.spend.value, 0)
            }
            if demands.isEmpty { demands.reserveCapacity(candidates.count) }
            demands.append(LimitDemand(key: Self.key(name: prepared[index].name, dimensions: prepared[index].dimensions, caller: caller, model: model),
                                       rule: prepared[index].rule, units: units, source: index))
        }
        return demands
    }

    /// What a demand of `measure` really used, once the answer is known.
    public static func actual(_ measure: LimitDefinition.Measure, inputTokens: Int64, outputTokens: Int64, spend: NanoUSD) -> Int64 {
        switch measure {
        case .requests, .concurrent: 1
        case .inputTokens: max(inputTokens, 0)
        case .outputTokens: max(outputTokens, 0)
        case .totalTokens: max(inputTokens, 0) > .max - max(outputTokens, 0) ? .max : max(inputTokens, 0) + max(outputTokens, 0)
        case .spend: max(spend.value, 0)
        }
    }

    public static func value(of dimension: LimitDefinition.Dimension, caller: Caller, model: String) -> String {
        switch dimension {
        case .key: caller.keyID
        case .tenant: caller.tenant
        case .user: caller.user
        case .tier: caller.tier
        case .feature: caller.feature
        case .model: model
        }
    }

    /// The counter of a limit named `name` over `dimensions`, for this caller and model. A user or key is one
    /// tenant's, so the tenant is part of their counter (never shared across tenants) and their counters live
    /// together (the tenant is the shard); a limit over tiers, features or models alone is a counter of its own.
    /// Built from the caller's strings as they are: nothing is written out on the request path.
    static func key(name: String, dimensions: UInt8, caller: Caller, model: String) -> CounterKey {
        func has(_ dimension: LimitDefinition.Dimension) -> Bool { dimensions & CounterKey.bit(dimension) != 0 }
        return CounterKey(name: name, dimensions: dimensions, key: has(.key) ? caller.keyID : "", tenant: has(.tenant) ? caller.tenant : "",
                          user: has(.user) ? caller.user : "", tier: has(.tier) ? caller.tier : "",
                          feature: has(.feature) ? caller.feature : "", model: has(.model) ? model : "")
    }
}
