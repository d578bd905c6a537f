/// Retries, fallbacks and circuit breakers (YAML `resilience:` and, per model, `deployments:` and `fallbacks:`).
///
/// Retries are off by default (one attempt): the official OpenAI and Anthropic SDKs already retry 429s and 5xx
/// twice with backoff, and a gateway retrying beneath them multiplies the attempts and the client's wait. The
/// breaker is off until configured, too; fallbacks exist only where a model names them.
public struct ResilienceSettings: Sendable, Hashable {
    /// Attempts on one deployment, the first included.
    public var maxAttempts = 1
    public var backoffBase: Duration = .milliseconds(100)
    public var backoffCap: Duration = .seconds(5)
    /// A `retry-after` longer than this is not waited for: the next candidate is tried.
    public var maxRetryAfter: Duration = .seconds(10)
    /// No retry or fallback starts later than this after the request arrived.
    public var budget: Duration = .seconds(30)
    public var breaker: Breaker?

    public struct Breaker: Sendable, Hashable {
        public var window: Duration = .seconds(10)
        public var failureRatio = 0.5
        public var minimumAttempts = 20
        public var openFor: Duration = .seconds(30)
        public var probes = 3

        public init() {}
    }

    public init() {}
}

/// A deployment's provider limits, kept by the gateway so the provider never has to refuse (YAML `budget:` on a
/// model or on one of its deployments: `rpm`, `tpm`, `input_tpm`, `output_tpm`). Tokens are counted as the
/// providers count them when a request arrives: the prompt plus `max_tokens`.
public struct DeploymentBudget: Sendable, Hashable {
    public var requestsPerMinute: Int?
    /// Prompt plus output tokens (OpenAI's TPM).
    public var tokensPerMinute: Int?
    /// Anthropic's separate input and output limits.
    public var inputTokensPerMinute: Int?
    public var outputTokensPerMinute: Int?

    public init(requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil, inputTokensPerMinute: Int? = nil,
                outputTokensPerMinute: Int? = nil) {
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.inputTokensPerMinute = inputTokensPerMinute
        self.outputTokensPerMinute = outputTokensPerMinute
    }

    public var isEmpty: Bool { self == DeploymentBudget() }
}

/// What a provider's rate-limit headers say is left (`x-ratelimit-remaining-requests` / `-tokens`,
/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining`); nil where it says nothing.
public struct ProviderRemaining: Sendable, Hashable {
    public var requests: Int64?
    public var tokens: Int64?
    public var inputTokens: Int64?
    public var outputTokens: Int64?

    public init(requests: Int64? = nil, tokens: Int64? = nil, inputTokens: Int64? = nil, outputTokens: Int64? = nil) {
        self.requests = requests
        self.tokens = tokens
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
    }

    public var isEmpty: Bool { self == ProviderRemaining() }

    /// A header's count: a plain non-negative integer of at most 12 digits, or nil (never trusted further).
    public static func count(_ text: Substring) -> Int64? {
        let trimmed = text.utf8.drop { $0 == 0x20 || $0 == 0x09 }.prefix { $0 != 0x20 && $0 != 0x09 }
        guard !trimmed.isEmpty, trimmed.count <= 12, trimmed.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return trimmed.reduce(0) { $0 * 10 + Int64($1 - 0x30) }
    }
}

extension ModelRoute {
    /// The deployment it names: a provider and the model there (what budgets and breakers are kept for).
    public var deploymentID: String { provider + "/" + upstreamModel }
}

extension ConfigLoader {
    /// `budget: {rpm, tpm, input_tpm, output_tpm}`; nil when absent.
    static func parseBudget(_ reader: MappingReader) throws(ConfigError) -> DeploymentBudget? {
        guard let budget = try reader.mapping("budget") else { return nil }
        let value = DeploymentBudget(requestsPerMinute: try budget.int("rpm", in: 1...100_000_000),
                                     tokensPerMinute: try budget.int("tpm", in: 1...100_000_000_000),
                                     inputTokensPerMinute: try budget.int("input_tpm", in: 1...100_000_000_000),
                                     outputTokensPerMinute: try budget.int("output_tpm", in: 1...100_000_000_000))
        try budget.finish()
        guard !value.isEmpty else { throw ConfigError(path: budget.path, "set at least one of rpm, tpm, input_tpm, output_tpm") }
        return value
    }

    /// `resilience: {retries: {max_attempts, base_ms, cap_ms, max_retry_after_seconds, budget_seconds},
    /// breaker: {window_seconds, failure_ratio, minimum_attempts, open_seconds, probes}}`.
    static func parseResilience(_ reader: MappingReader) throws(ConfigError) -> ResilienceSettings {
        var settings = ResilienceSettings()
        func duration(_ reader: MappingReader, _ key: String, scale: Double, in range: ClosedRange<Double>) throws(ConfigError) -> Duration? {
            try reader.double(key, in: range).map { Duration.nanoseconds(Int64(($0 * scale).rounded())) }
        }
        if let retries = try reader.mapping("retries") {
            settings.maxAttempts = try retries.int("max_attempts", in: 1...10) ?? settings.maxAttempts
            settings.backoffBase = try duration(retries, "base_ms", scale: 1e6, in: 0...60_000) ?? settings.backoffBase
            settings.backoffCap = try duration(retries, "cap_ms", scale: 1e6, in: 0...600_000) ?? settings.backoffCap
            settings.maxRetryAfter = try duration(retries, "max_retry_after_seconds", scale: 1e9, in: 0...3600) ?? settings.maxRetryAfter
            settings.budget = try duration(retries, "budget_seconds", scale: 1e9, in: 0...3600) ?? settings.budget
            try retries.finish()
        }
        if let breaker = try reader.mapping("breaker") {
            var value = ResilienceSettings.Breaker()
            value.window = try duration(breaker, "window_seconds", scale: 1e9, in: 0.1...3600) ?? value.window
            value.failureRatio = try breaker.double("failure_ratio", in: 0.01...1) ?? value.failureRatio
            value.minimumAttempts = try breaker.int("minimum_attempts", in: 1...1_000_000) ?? value.minimumAttempts
            value.openFor = try duration(breaker, "open_seconds", scale: 1e9, in: 0...86400) ?? value.openFor
            value.probes = try breaker.int("probes", in: 1...1000) ?? value.probes
            try breaker.finish()
            settings.breaker = value
        }
        try reader.finish()
        return settings
    }
}

/// What the attempts stage reports to metrics.
public protocol AttemptRecorder: Sendable {
    /// The same deployment is tried again after a retryable failure.
    func upstreamRetried(provider: String)
    /// The next candidate (another deployment or a fallback model) is tried for a request to `model`.
    func upstreamFellBack(model: String)
    /// A deployment's breaker changed state (`closed`, `open`, `half_open`).
    func breakerChanged(deployment: String, to state: String)
    /// The store of the deployments' budgets failed: the attempt went through uncounted.
    func budgetStoreFailed()
    /// The board the instances share their breakers' openings on could not be written or read.
    func breakerBoardFailed()
}
