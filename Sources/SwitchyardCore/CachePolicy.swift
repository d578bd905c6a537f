/// What a response cache did with a request; sent to clients as `x-switchyard-cache`.
public enum CacheStatus: String, Sendable, CaseIterable {
    case hitExact = "hit-exact"
    case hitSemantic = "hit-semantic"
    case miss
    /// The caches were skipped (`Cache-Control: no-store`, or caching is off for the model).
    case bypass
}

/// The response caches.
public enum CacheKind: String, Sendable, CaseIterable {
    case exact, semantic
}

/// What one cache did with one request.
public enum CacheLookup: String, Sendable, CaseIterable {
    case hit, miss, bypass
}

/// The cache outcome a response carries to the client: `x-switchyard-cache`, and for semantic hits the similarity
/// and the entry id (`x-switchyard-cache-similarity`, `x-switchyard-cache-entry`).
public struct CacheOutcome: Sendable, Hashable {
    public var status: CacheStatus
    public var similarity: Double?
    public var entryID: String?

    public init(_ status: CacheStatus, similarity: Double? = nil, entryID: String? = nil) {
        self.status = status
        self.similarity = similarity
        self.entryID = entryID
    }
}

/// The client's cache controls for one request.
public struct CacheDirectives: Sendable, Hashable {
    /// `Cache-Control: no-cache`: skip the lookup, still store the answer.
    public var skipLookup = false
    /// `Cache-Control: no-store`: neither look up nor store.
    public var skipStore = false
    /// `x-switchyard-cache-ttl`: how long this answer may be kept, in place of the configured TTL (never longer
    /// than the configured maximum).
    public var ttl: Duration?
    /// `x-switchyard-prompt-version`: part of the cache key, so a new system-prompt version never hits old answers.
    public var promptVersion: String?

    /// The longest `x-switchyard-cache-ttl` accepted: a year.
    public static let maximumTTLSeconds = 365.0 * 86400

    public init(skipLookup: Bool = false, skipStore: Bool = false, ttl: Duration? = nil, promptVersion: String? = nil) {
        self.skipLookup = skipLookup
        self.skipStore = skipStore
        self.ttl = ttl
        self.promptVersion = promptVersion
    }

    /// Reads `Cache-Control`, `x-switchyard-cache-ttl` and `x-switchyard-prompt-version` header values.
    /// - Throws: `GatewayError.invalidRequest` naming the header when the TTL is not a number of seconds in
    ///   `0...maximumTTLSeconds`.
    public init(cacheControl: String?, ttlSeconds: String?, promptVersion: String?) throws(GatewayError) {
        for directive in (cacheControl ?? "").lowercased().split(separator: ",") {
            switch directive.trimmingWhitespace() {
            case "no-cache": skipLookup = true
            case "no-store": skipStore = true; skipLookup = true
            default: break
            }
        }
        if let ttlSeconds {
            guard let seconds = Double(ttlSeconds.trimmingWhitespace()),
                  let checked = Duration.checkedSeconds(seconds, limit: Self.maximumTTLSeconds)
            else {
                throw GatewayError(.invalidRequest, "x-switchyard-cache-ttl must be a number of seconds between 0 and "
                                   + "\(Int(Self.maximumTTLSeconds))", param: "x-switchyard-cache-ttl")
            }
            ttl = checked
        }
        self.promptVersion = promptVersion.map { $0.trimmingWhitespace() }.flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// Response-cache settings (YAML `cache:`).
public struct CacheSettings: Sendable, Hashable {
    /// The exact cache: answers to byte-for-byte identical requests (after canonicalisation).
    public var exactEnabled = true
    /// How long an answer is kept unless the model or the request says otherwise.
    public var ttl: Duration = .seconds(3600)
    /// Per model (public name): a TTL of zero turns the cache off for that model.
    public var modelTTL: [String: Duration] = [:]
    /// Bounds of the in-memory store; the least recently used answers go first.
    public var maxEntries = 10_000
    public var maxBytes = 256 << 20
    /// The semantic cache: answers to rephrasings of an earlier question in the same context. Needs the on-device
    /// embedding model; without it the gateway runs without this cache.
    public var semanticEnabled = true
    /// The least cosine similarity at which a candidate is considered (then verified). 0.94 from
    /// `switchyard eval semantic-cache` on the Banking77 + CLINC query stream: 99.7% of hits serve the right intent
    /// (0.1% of queries get a wrong answer) at a 35% hit rate; 0.95 gains no precision there and loses 2 points of
    /// hit rate, 0.92 lets wrong answers double.
    public var semanticThreshold = 0.94
    /// Per model (public name), in place of `semanticThreshold` (YAML `semantic_threshold` on a model).
    public var modelSemanticThreshold: [String: Double] = [:]
    /// Whether candidates must pass `SemanticGuard` (negation, numbers, entities, their order) before serving.
    public var semanticVerify = true
    /// Whether candidates must also pass the learned pair verifier (YAML `verifier: learned | rules`). With it, a
    /// candidate is considered from the verifier's own cosine floor and served on its probability, calibrated per
    /// tenant and model; `threshold` applies only without it.
    public var semanticLearnedVerifier = false
    /// With the learned verifier, whether what the rules serve on their own (at `threshold`) stays served and the
    /// verifier adds the candidates below it that it accepts (YAML `verifier: rules_or_learned`); otherwise the
    /// verifier decides every candidate (`verifier: learned`).
    public var semanticLearnedExtendsRules = false
    /// With `rules_or_learned`: a candidate the rules pass at this cosine or more is also served when the verifier's
    /// probability is at least `semanticAgreementProbability`, below its threshold — two verdicts agreeing (YAML
    /// `agreement_cosine`; 1 turns the band off). Closed in a namespace whose labels there show a precision under
    /// the target, or whose threshold rose above the starting one.
    public var semanticAgreementCosine = 0.90
    /// The verifier's probability the agreement band asks for (YAML `agreement_probability`): more likely right than
    /// wrong, where the rules find no difference.
    public var semanticAgreementProbability = 0.5
    /// The verifier's file (YAML `verifier_file`); nil: the one bundled with the gateway.
    public var semanticVerifierFile: String?
    /// Whether labels (shadow checks, near misses compared with the model's answer, feedback) move the served
    /// probability per tenant and model (YAML `calibrate`).
    public var semanticCalibrate = true
    /// The precision the calibration keeps, as a one-sided 95% lower bound (YAML `target_precision`).
    public var semanticTargetPrecision = 0.99
    /// Longer last user messages go around the semantic cache: it is for questions, and embedding a long text costs
    /// tens of milliseconds of CPU (YAML `max_question_bytes`).
    public var semanticMaxQuestionBytes = 2000
    /// Requests with tools are not answered semantically unless this is set (a tool call depends on details).
    public var semanticWithTools = false
    public var semanticMaxEntries = 10_000
    /// The semantic cache's size in bytes (answers, questions, vectors), oldest out first past it.
    public var semanticMaxBytes = 256 << 20
    /// The share of semantic hits also sent to the model (in the background, billed as usual) to compare its fresh
    /// answer with the cached one: a measured disagreement rate (`switchyard_semantic_cache_shadow_*`). Off by default.
    public var semanticShadowRate = 0.0
    /// A namespace with at least this many entries is searched through an HNSW index instead of a full scan.
    public var semanticANNThreshold = 2000
    /// Models (public names) whose answers one cache or the other must not serve (YAML `exact_cache: false`,
    /// `semantic_cache: false` on a model).
    public var exactOff: Set<String> = []
    public var semanticOff: Set<String> = []

    public init() {}

    /// The semantic threshold that applies to `model`.
    public func semanticThreshold(for model: String) -> Double {
        modelSemanticThreshold[model] ?? semanticThreshold
    }

    /// The TTL that applies to `model`; zero means the model is not cached.
    public func ttl(for model: String) -> Duration {
        modelTTL[model] ?? ttl
    }
}
