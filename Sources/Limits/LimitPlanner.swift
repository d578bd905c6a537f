public import SwitchyardCore

/// Which counters a request must pass, from the configured limits: each definition that applies to the request
/// (its `when` filters, and cache hits only for `counts: all_requests`) gives one demand on the counter of the
/// request's scope values, with the units it reserves.
public struct LimitPlanner: Sendable {
    public let definitions: [LimitDefinition]
    /// How long a concurrency permit lives without being renewed (a crashed instance's permits come back then).
    public let permitTTL: Int64

    public init(definitions: [LimitDefinition], permitTTL: Int64 = 600_000_000_000) {
        self.definitions = definitions
        self.permitTTL = max(permitTTL, 1)
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
        definitions.compactMap { definition -> (demand: LimitDemand, definition: LimitDefinition)? in
            guard !cacheHit || definition.countsAllRequests else { return nil }
            for (dimension, values) in definition.when where !values.contains(Self.value(of: dimension, caller: caller, model: model)) {
                return nil
            }
            let rule: LimitRule
            switch definition.window {
            case nil:
                rule = .concurrent(limit: Int(clamping: definition.amount), ttl: permitTTL)
            case .day?:
                rule = .quota(limit: definition.amount, calendar: .day)
            case .month?:
                rule = .quota(limit: definition.amount, calendar: .month)
            case let window?:
                rule = .rate(limit: definition.amount, period: window.nanoseconds)
            }
            let units: Int64 = switch definition.measure {
            case .requests, .concurrent: 1
            case .inputTokens: estimate.inputTokens
            case .outputTokens: estimate.outputTokens
            case .totalTokens: estimate.inputTokens > .max - estimate.outputTokens ? .max : estimate.inputTokens + estimate.outputTokens
            case .spend: max(estimate.spend.value, 0)
            }
            let (counter, shard) = Self.counter(definition, caller: caller, model: model)
            return (LimitDemand(counter: counter, rule: rule, units: units, shard: shard), definition)
        }
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

    /// `name|dimension=value|…`, values escaped so no two scopes share a counter. A user or key is one tenant's, so
    /// the tenant is part of their counter (never shared across tenants) and their counters live together (the
    /// tenant is the shard); a limit over tiers, features or models alone is a counter of its own.
    static func counter(_ definition: LimitDefinition, caller: Caller, model: String) -> (String, String) {
        var dimensions = definition.scope
        let perTenant = dimensions.contains(.tenant) || dimensions.contains(.user) || dimensions.contains(.key)
        if perTenant && !dimensions.contains(.tenant) { dimensions.insert(.tenant, at: 0) }
        var name = escape(definition.name)
        for dimension in dimensions.sorted() {
            name += "|\(dimension.rawValue)=\(escape(value(of: dimension, caller: caller, model: model)))"
        }
        return (name, perTenant ? "tenant=" + escape(caller.tenant) : "")
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "%": out += "%25"
            case "|": out += "%7C"
            case "=": out += "%3D"
            default: out.append(character)
            }
        }
        return out
    }
}
