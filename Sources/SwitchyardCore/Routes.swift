public import SwitchyardModels

/// A public model name that is a **route**: an ordered list of rules, the first that matches picks the model.
///
/// Resolved in two steps: the name first (before the caches, so an unknown name is a 404 and the cache key is the
/// name the client asked for), the decision after the caches (so a cache hit never pays for it).
public struct RouteConfig: Sendable, Hashable {
    public var name: String
    /// In order; the last one matches every request (checked when the file is loaded).
    public var rules: [RouteRule]
    /// Output length control for every rule that sets none of its own.
    public var maxTokens: OutputLimit?
    /// Overrides the picked model's `batch` for the requests this route sends (YAML `batch: auto | never`).
    public var batch: BatchPolicy?
    /// The model routing savings are measured against: what every request would have gone to without the route
    /// (YAML `reference`, default the priciest model the route can pick).
    public var reference: String?

    public init(name: String, rules: [RouteRule], maxTokens: OutputLimit? = nil, batch: BatchPolicy? = nil,
                reference: String? = nil) {
        self.reference = reference
        self.batch = batch
        self.name = name
        self.rules = rules
        self.maxTokens = maxTokens
    }
}

extension RouteConfig {
    /// `reference` when set, else the priciest model the rules can pick (by the price of a million input and a million
    /// output tokens; the first such model on a tie).
    public func referenceModel(in models: [String: ModelRoute]) -> String? {
        if let reference { return reference }
        var best: (name: String, cost: NanoUSD)?
        let standard = Usage(inputTokens: 1_000_000, outputTokens: 1_000_000)
        for rule in rules {
            for name in rule.target.models {
                guard let model = models[name] else { continue }
                let cost = model.price.cost(of: standard)
                if cost > best?.cost ?? NanoUSD(-1) { best = (name, cost) }
            }
        }
        return best?.name
    }
}

/// One rule of a route: when it applies, and what it picks.
public struct RouteRule: Sendable, Hashable {
    /// Its name in `x-switchyard-route` (YAML `name`, default `rule<index>` from 1).
    public var name: String
    public var match: RuleMatch
    public var target: RouteTarget
    public var maxTokens: OutputLimit?

    public init(name: String, match: RuleMatch = RuleMatch(), target: RouteTarget, maxTokens: OutputLimit? = nil) {
        self.name = name
        self.match = match
        self.target = target
        self.maxTokens = maxTokens
    }
}

/// What a rule picks.
public enum RouteTarget: Sendable, Hashable {
    /// A configured model (by its public name).
    case model(String)
    /// A ladder of models, cheapest first, climbed by the complexity classifier: the prompt's score percentile
    /// among the classifier's training prompts picks `models[i]` where `i` thresholds are at or below it.
    /// `thresholds` ascend in 0…1 and number one fewer than `models`.
    case complexity(models: [String], thresholds: [Double])
    /// The cheaper model first (asked for a whole answer); its answer is returned when the confidence in it is at
    /// least `threshold` (0…1), else the stronger model answers.
    case cascade(cheap: String, strong: String, threshold: Double)

    /// The models the target may pick.
    public var models: [String] {
        switch self {
        case .model(let model): [model]
        case .complexity(let models, _): models
        case .cascade(let cheap, let strong, _): [cheap, strong]
        }
    }
}

/// The conditions of a rule; all that are set must hold, and a rule with none matches every request.
public struct RuleMatch: Sendable, Hashable {
    /// The caller's tier is one of these.
    public var tiers: Set<String>?
    /// The caller's feature (from the key, or `x-switchyard-feature` when the key allows it) is one of these.
    public var features: Set<String>?
    /// The API the client speaks.
    public var format: APIFormat?
    /// Whether the request defines tools.
    public var tools: Bool?
    /// Whether any message carries an image.
    public var images: Bool?
    /// The estimated prompt length in tokens (four UTF-8 bytes per token) lies in this range.
    public var promptTokens: ClosedRange<Int>?

    public init(tiers: Set<String>? = nil, features: Set<String>? = nil, format: APIFormat? = nil, tools: Bool? = nil,
                images: Bool? = nil, promptTokens: ClosedRange<Int>? = nil) {
        self.tiers = tiers
        self.features = features
        self.format = format
        self.tools = tools
        self.images = images
        self.promptTokens = promptTokens
    }

    /// Whether the rule has no condition.
    public var matchesEverything: Bool {
        tiers == nil && features == nil && format == nil && tools == nil && images == nil && promptTokens == nil
    }

    /// Whether `request` from `caller` meets every condition. The prompt is measured only when a condition needs it.
    public func matches(_ request: ChatRequest, caller: Caller) -> Bool {
        if let tiers, !tiers.contains(caller.tier) { return false }
        if let features, !features.contains(caller.feature) { return false }
        if let format, request.sourceFormat != format { return false }
        if let tools, tools == request.tools.isEmpty { return false }
        if let images, images != request.hasImages { return false }
        if let promptTokens, !promptTokens.contains(request.estimatedInputTokens) { return false }
        return true
    }
}

/// A `max_tokens` default (when the client sets none) and cap (a larger value is lowered to it).
public struct OutputLimit: Sendable, Hashable {
    public var defaultTokens: Int?
    public var cap: Int?

    public init(defaultTokens: Int? = nil, cap: Int? = nil) {
        self.defaultTokens = defaultTokens
        self.cap = cap
    }

    /// The `max_tokens` a request asking for `requested` is sent with.
    public func apply(to requested: Int?) -> Int? {
        var value = requested ?? defaultTokens
        if let cap, let current = value, current > cap { value = cap }
        if value == nil, let cap { value = cap }
        return value
    }
}

/// What the routing decision was, for the answer's headers and the cost record.
public struct RoutingOutcome: Sendable, Hashable {
    public var route: String
    public var rule: String
    /// What the rule decided (for a model rule, the model's public name).
    public var decision: String
    /// The model that served.
    public var model: ModelRoute
    /// For a complexity rule: the prompt's score percentile (0…1), or nil when it could not be scored.
    public var complexity: Double?
    /// For a cascade rule: what happened to the cheap answer.
    public var cascade: CascadeOutcome?

    public init(route: String, rule: String, decision: String, model: ModelRoute, complexity: Double? = nil,
                cascade: CascadeOutcome? = nil) {
        self.route = route
        self.rule = rule
        self.decision = decision
        self.model = model
        self.complexity = complexity
        self.cascade = cascade
    }

    /// The `x-switchyard-route` value.
    public var header: String { "\(route)/\(rule)/\(decision)" }
}

extension ChatRequest {
    /// Whether any message or the system prompt carries an image.
    public var hasImages: Bool {
        let isImage: (ContentBlock) -> Bool = { if case .image = $0 { true } else { false } }
        return system.contains(where: isImage) || messages.contains { $0.content.contains(where: isImage) }
    }

    /// The request's text (system, messages, tool definitions) at four UTF-8 bytes per token: the estimate used when
    /// an upstream reports no usage, and by routing rules on prompt length.
    public var estimatedInputTokens: Int {
        var bytes = 0
        for block in system { bytes += block.text?.utf8.count ?? 0 }
        for message in messages {
            for block in message.content { bytes += block.text?.utf8.count ?? 0 }
        }
        for tool in tools {
            bytes += tool.name.utf8.count + (tool.description?.utf8.count ?? 0) + tool.inputSchema.serialized().count
        }
        return (bytes + 3) / 4
    }
}

/// A cascade's first call and what was made of it.
public struct CascadeOutcome: Sendable, Hashable {
    /// Whether the cheap model's answer was returned.
    public var accepted: Bool
    /// The confidence in the cheap answer (nil when the cheap call failed).
    public var confidence: Double?
    /// Where the confidence came from: `logprobs` (the provider's token log-probabilities) or `scorer` (the
    /// on-device answer scorer); `failed` when the cheap call failed.
    public var source: String
    /// What the cheap call cost (also recorded on its own).
    public var cheapCost: NanoUSD

    public init(accepted: Bool, confidence: Double?, source: String, cheapCost: NanoUSD) {
        self.accepted = accepted
        self.confidence = confidence
        self.source = source
        self.cheapCost = cheapCost
    }
}
