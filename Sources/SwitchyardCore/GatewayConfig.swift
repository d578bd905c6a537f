public import SwitchyardModels

/// The kind of an upstream provider.
public enum ProviderKind: String, Sendable, Hashable, CaseIterable {
    /// api.openai.com or anything speaking exactly its Chat Completions API.
    case openAI = "openai"
    /// api.anthropic.com (Messages API).
    case anthropic
    /// A self-hosted OpenAI-compatible server (vLLM, llama.cpp); no API key required.
    case openAICompatible = "openai-compatible"
    /// The built-in mock provider, started in-process on its own loopback port.
    case mock

    /// Whether the provider offers a batch API (OpenAI's `/v1/batches`, Anthropic's message batches; the mock has both).
    public var hasBatchAPI: Bool { self != .openAICompatible }

    /// The wire format the provider speaks for a given upstream model.
    public func format(forUpstreamModel model: String) -> APIFormat {
        switch self {
        case .openAI, .openAICompatible: .openAI
        case .anthropic: .anthropic
        // The mock answers each catalog model in its provider's format; models outside the catalog in OpenAI's.
        case .mock: DefaultCatalog.entry(named: model)?.format ?? .openAI
        }
    }
}

/// Time limits for calls to one provider.
public struct ProviderTimeouts: Sendable, Hashable {
    /// Establishing a connection.
    public var connect: Duration
    /// The whole call, including a streamed body.
    public var total: Duration
    /// For streams, until the first event arrives. Non-streamed calls are bounded by `total` only, since their
    /// answer arrives whole.
    public var firstToken: Duration
    /// Once an answer began (its head arrived), the longest silence between two reads: a stream that stalls, or a
    /// body that stops short of its length, fails here instead of at `total`.
    public var idle: Duration

    public init(connect: Duration = .seconds(10), total: Duration = .seconds(600), firstToken: Duration = .seconds(120),
                idle: Duration = .seconds(60)) {
        self.connect = connect
        self.total = total
        self.firstToken = firstToken
        self.idle = idle
    }
}

/// One upstream provider, validated.
public struct ProviderConfig: Sendable, Hashable {
    public var name: String
    public var kind: ProviderKind
    /// Base URL without the `/v1/...` path, e.g. `https://api.anthropic.com`. Filled in at start-up for `mock`.
    public var baseURL: String
    /// The environment variable holding the API key (never the key itself).
    public var apiKeyEnv: String?
    public var timeouts: ProviderTimeouts
    /// The most connections to the provider (plain-HTTP upstreams: over all event loops), so the most requests
    /// in flight to it; requests past it wait for a free connection within their first-token timeout. Large by
    /// default: every stream holds a connection for its whole length.
    public var poolSize: Int

    /// `pool_size` when the configuration does not set it.
    public static let defaultPoolSize = 4096
    /// Extra headers sent with every call (such as `anthropic-beta`).
    public var headers: [String: String]
    /// A PEM file of the certificates that an HTTPS upstream's certificate must chain to, in place of the system's
    /// roots (a self-hosted replica behind an internal CA); `nil`: the system's roots.
    public var tlsCAFile: String?
    /// Whether a connection is reused for the next request once an answer ended whole. `false` sends
    /// `connection: close` and opens a connection per request: the one mode in which an upstream that sends an answer
    /// too many, late, and does not echo `x-request-id`, cannot hand one request another's answer.
    public var keepAlive = true
    /// Whether its answers' rate-limit headers are read (the gateway sets it for a provider with a budgeted
    /// deployment, and corrects the budget from what the provider says is left).
    public var readsRateLimitHeaders = false
    /// A group of self-hosted replicas (YAML `replicas: [URL, …]` in place of `base_url`): the base URLs of the same
    /// server, each request sent to one of them by `balancing`. Empty: the one `baseURL`.
    public var replicas: [String] = []
    /// How a replica group chooses (YAML `balancing`): `least_outstanding_tokens` (default), `least_requests`,
    /// `round_robin`.
    public var balancing = "least_outstanding_tokens"
    /// Least outstanding tokens: how many replicas drawn at random are compared (YAML `balancing_choices`; nil: all).
    public var balancingChoices: Int?

    public init(name: String, kind: ProviderKind, baseURL: String, apiKeyEnv: String? = nil,
                timeouts: ProviderTimeouts = ProviderTimeouts(), poolSize: Int = ProviderConfig.defaultPoolSize, headers: [String: String] = [:]) {
        self.name = name
        self.kind = kind
        self.baseURL = baseURL
        self.apiKeyEnv = apiKeyEnv
        self.timeouts = timeouts
        self.poolSize = poolSize
        self.headers = headers
    }
}

/// A public model name and where it is served.
public struct ModelRoute: Sendable, Hashable {
    /// The name clients use.
    public var name: String
    public var provider: String
    /// The provider's own model id.
    public var upstreamModel: String
    public var price: ModelPrice
    /// For OpenAI-format requests to an Anthropic model: insert prompt-cache breakpoints after the system prompt and
    /// the tools when they are long enough to be cached (YAML `prompt_cache: auto`). Off by default: a cache write
    /// costs 1.25× the input price, worth it only when the prefix is reused within the cache's five minutes.
    public var autoPromptCache: Bool
    /// Whether P2 jobs for this model go through the provider's batch API (YAML `batch: auto | never`, default never;
    /// a route's `batch` overrides it for the requests it routes).
    public var batch: BatchPolicy

    public init(name: String, provider: String, upstreamModel: String, price: ModelPrice, autoPromptCache: Bool = false,
                batch: BatchPolicy = .never) {
        self.batch = batch
        self.name = name
        self.provider = provider
        self.upstreamModel = upstreamModel
        self.price = price
        self.autoPromptCache = autoPromptCache
    }
}

/// Whether a model's background work may wait for a provider's batch API (half the price, an answer within its
/// completion window instead of seconds).
public enum BatchPolicy: String, Sendable, Hashable {
    /// P2 jobs are grouped and sent through the batch API when the provider has one.
    case auto
    /// Every request is sent on its own.
    case never
}

/// Who is calling: the result of authentication.
public struct Caller: Sendable, Hashable {
    public var tenant: String
    public var user: String
    public var tier: String
    public var feature: String
    /// A short, non-secret identifier of the key (its hash prefix), for logs.
    public var keyID: String
    /// Whether a request may name its feature in `x-switchyard-feature` (YAML key `feature_header: true`; always for
    /// the embedded default's callers). Otherwise the header is ignored and the key's feature stands.
    public var featureFromHeader: Bool
    /// The key's priority (YAML `priority: p0 | p1 | p2`, default p0): its requests' default and the highest
    /// `x-switchyard-priority` may ask for (a header can only lower it).
    public var priority: Priority

    public init(tenant: String, user: String, tier: String = "default", feature: String = "default", keyID: String,
                featureFromHeader: Bool = false, priority: Priority = .p0) {
        self.priority = priority
        self.tenant = tenant
        self.user = user
        self.tier = tier
        self.feature = feature
        self.keyID = keyID
        self.featureFromHeader = featureFromHeader
    }
}

/// A gateway API key entry: only the SHA-256 of the key is stored.
public struct APIKeyEntry: Sendable, Hashable {
    public var sha256: String
    public var caller: Caller

    public init(sha256: String, caller: Caller) {
        self.sha256 = sha256
        self.caller = caller
    }
}

/// What a client connection may hold at the edge, and for how long (YAML `listen:`); production defaults.
public struct EdgeLimits: Sendable, Hashable {
    /// `head_timeout_seconds`: from a connection's start (or a request's first byte) to the end of its head.
    public var headTimeout: Duration = .seconds(10)
    /// `idle_timeout_seconds`: a keep-alive connection with nothing to do is closed after this.
    public var idleTimeout: Duration = .seconds(75)
    /// `write_timeout_seconds`: a client that reads nothing of its answer for this long is disconnected (and its
    /// upstream call cancelled).
    public var writeTimeout: Duration = .seconds(30)
    /// `body_min_bytes_per_second`: after `headTimeout`, a body must have arrived at this average rate.
    public var bodyMinimumBytesPerSecond = 1024
    /// `max_connections`: open client connections past which new ones get 503 and are closed.
    public var maxConnections = 10_000
    /// `body_budget_bytes`: request bodies held at once over all connections; a request that does not fit waits up
    /// to 2 s (its connection not read meanwhile), then gets 503 with `retry-after`.
    public var bodyBudgetBytes = 256 << 20

    public init() {}
}

/// The validated, immutable gateway configuration.
public struct GatewayConfig: Sendable {
    public var host: String
    public var port: Int
    /// Largest accepted request body.
    public var maxBodyBytes: Int
    /// How long in-flight requests and streams may run after SIGTERM.
    public var drainTimeout: Duration
    /// Limits on what clients control at the edge (YAML `listen:`).
    public var edge = EdgeLimits()
    public var providers: [String: ProviderConfig]
    public var models: [String: ModelRoute]
    /// Per model, the deployments that serve it besides its own provider, tried in order after it (YAML
    /// `deployments:` on a model: another key, another endpoint of the same model).
    public var deployments: [String: [ModelRoute]] = [:]
    /// Per model, the models tried when all its deployments fail (YAML `fallbacks:`), in order.
    public var fallbacks: [String: [String]] = [:]
    /// Per deployment (`ModelRoute.deploymentID`), the provider limits the gateway keeps (YAML `budget:`).
    public var budgets: [String: DeploymentBudget] = [:]
    /// Retries and circuit breakers (YAML `resilience:`).
    public var resilience = ResilienceSettings()
    /// The priority queue in front of the deployments' budgets (YAML `admission:`).
    public var admission = AdmissionSettings()
    /// Background jobs (YAML `jobs:`).
    public var jobs = JobSettings()
    /// Where budget alerts are posted, signed with `SWITCHYARD_WEBHOOK_SECRET` (YAML `alerts: {webhook_url}`); they
    /// are logged either way.
    public var alertWebhook: String?
    /// The per-request ledger (YAML `ledger:`).
    public var ledger = LedgerSettings()
    /// Public names that are routes (disjoint from `models`).
    public var routes: [String: RouteConfig] = [:]
    /// The complexity classifier's file (YAML `routing.classifier_file`); `nil`: the one shipped with the gateway.
    public var classifierFile: String?

    /// Whether any route climbs a complexity ladder or cascades (the classifier file is loaded only then).
    public var usesComplexity: Bool {
        routes.values.contains { $0.rules.contains {
            switch $0.target {
            case .model: false
            case .complexity, .cascade: true
            }
        } }
    }
    /// Empty: open access (each distinct key is its own tenant and user).
    public var keys: [APIKeyEntry]
    /// Rate limits, quotas and concurrency limits (`limits:` and the `tiers:` presets), checked at start.
    public var limits: [LimitDefinition] = []
    /// What happens, per tier and feature, when the limits refuse a request (`degrade:`).
    public var degrade: [DegradePolicy] = []
    /// Latency multiplier for the built-in mock provider (1 = realistic, 0 = instant).
    public var mockLatencyScale: Double
    /// Limits, fault rates and length trace of the built-in mock provider (YAML `mock:`).
    public var mock = MockOptions()
    /// Response caches (YAML `cache:`); on by default.
    public var cache = CacheSettings()
    /// Where shared state lives: in this process (the embedded default) or in Redis, shared by every instance.
    public var state = StateSettings()

    public init(host: String = "127.0.0.1", port: Int = 8080, maxBodyBytes: Int = 32 << 20,
                drainTimeout: Duration = .seconds(30), providers: [String: ProviderConfig], models: [String: ModelRoute],
                keys: [APIKeyEntry] = [], mockLatencyScale: Double = 1) {
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.drainTimeout = drainTimeout
        self.providers = providers
        self.models = models
        self.keys = keys
        self.mockLatencyScale = mockLatencyScale
    }

    /// The embedded default: the built-in mock provider and the default catalog, no keys, no external service.
    public static func embeddedDefault() -> GatewayConfig {
        let mock = ProviderConfig(name: "mock", kind: .mock, baseURL: "")
        var models: [String: ModelRoute] = [:]
        for entry in DefaultCatalog.models {
            models[entry.name] = ModelRoute(name: entry.name, provider: "mock", upstreamModel: entry.name, price: entry.price)
        }
        var config = GatewayConfig(providers: ["mock": mock], models: models)
        // One example route, so a new user sees routing work: the complexity classifier climbs haiku → sonnet → opus.
        config.routes["auto"] = RouteConfig(name: "auto", rules: [
            RouteRule(name: "complexity", target: .complexity(models: ["claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1"],
                                                              thresholds: [0.5, 0.85])),
        ])
        // And a cascade: haiku answers first; opus when the answer scorer doubts it.
        config.routes["auto-cascade"] = RouteConfig(name: "auto-cascade", rules: [
            RouteRule(name: "cascade", target: .cascade(cheap: "claude-haiku-4-5", strong: "claude-opus-4-1", threshold: 0.7)),
        ])
        return config
    }
}

/// The default model catalog: realistic tiers with list prices (USD per million tokens).
public enum DefaultCatalog {
    /// One catalog entry.
    public struct Entry: Sendable {
        public var name: String
        public var price: ModelPrice
        /// The API the model's own provider speaks (what the built-in mock answers it in).
        public var format: APIFormat
        /// The shortest prefix the provider's prompt cache stores, in tokens.
        public var promptCacheMinimumTokens: Int
    }

    /// Three Anthropic-class tiers and two OpenAI-class ones.
    public static let models: [Entry] = [
        Entry(name: "claude-haiku-4-5", price: ModelPrice(usd: "1", "5", "0.10", "1.25")!, format: .anthropic, promptCacheMinimumTokens: 2048),
        Entry(name: "claude-sonnet-4-5", price: ModelPrice(usd: "3", "15", "0.30", "3.75")!, format: .anthropic, promptCacheMinimumTokens: 1024),
        Entry(name: "claude-opus-4-1", price: ModelPrice(usd: "15", "75", "1.50", "18.75")!, format: .anthropic, promptCacheMinimumTokens: 1024),
        // OpenAI charges nothing extra to write its prompt cache: writes cost the input rate.
        Entry(name: "gpt-4o-mini", price: ModelPrice(usd: "0.15", "0.60", "0.075", "0.15")!, format: .openAI, promptCacheMinimumTokens: 1024),
        Entry(name: "gpt-4o", price: ModelPrice(usd: "2.50", "10", "1.25", "2.50")!, format: .openAI, promptCacheMinimumTokens: 1024),
    ]

    /// The entry for an upstream model id, if the catalog has it.
    public static func entry(named name: String) -> Entry? {
        models.first { $0.name == name }
    }
}

/// The built-in mock provider's behaviour under load, from the YAML `mock:` section.
public struct MockOptions: Sendable, Hashable {
    /// Per-key limits answered like the real APIs (429 with `retry-after` and rate-limit headers).
    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    /// Share of requests per fault, by the names `x-mock-fault` takes (`faultNames`).
    public var faultRates: [String: Double] = [:]
    /// Seeds the fault draws.
    public var seed: UInt64 = 1
    /// A trace file to replay answer lengths from.
    public var lengthTrace: String?
    /// A folder of routing data (`../shared/data/routing`): the mock answers its GSM8K prompts with the recorded
    /// answers (YAML `mock.answers`).
    public var answers: String?
    /// Windows of time in which some requests fail otherwise than `faultRates` says (an outage, a 429 storm, a slow
    /// spell), for load scenarios (YAML `mock.schedule`).
    public var schedule: [FaultWindow] = []

    /// From `start` to `end` seconds after the first request the mock served, requests for `model` (every model when
    /// nil) get these fault rates instead of the usual ones.
    public struct FaultWindow: Sendable, Hashable {
        public var start: Double
        public var end: Double
        public var model: String?
        public var faultRates: [String: Double]

        public init(start: Double, end: Double, model: String? = nil, faultRates: [String: Double]) {
            self.start = start
            self.end = end
            self.model = model
            self.faultRates = faultRates
        }
    }

    public init() {}

    /// The faults the mock knows (`MockFault`'s raw values; a test keeps the two lists equal).
    public static let faultNames = ["429", "500", "503", "529", "timeout", "slow", "disconnect-mid-stream", "malformed-json",
                                    "error-in-stream"]
}

/// The state backend (`state:` in the file).
public struct StateSettings: Sendable, Hashable {
    public enum Backend: String, Sendable, Hashable {
        case memory, redis
    }

    /// What a seam does when its store fails: `failOpen` goes on without it (a cache is bypassed, and the failure
    /// counted); `failClosed` refuses the request.
    public enum FailurePolicy: String, Sendable, Hashable {
        case failOpen = "fail_open"
        case failClosed = "fail_closed"
    }

    public var backend = Backend.memory
    public var host = "127.0.0.1"
    public var port = 6379
    public var database = 0
    /// TLS (`rediss://`), with these trust roots (a PEM file; the system's when `nil`).
    public var tls = false
    public var tlsCAFile: String?
    /// A Redis Cluster: the url names one node, the others are found from it.
    public var cluster = false
    /// Put before every key, so that several deployments can share one server.
    public var keyPrefix = "switchyard:"
    /// Credentials, read from the environment variables the file names (never written in the file).
    public var username: String?
    public var password: String?
    public var connectTimeout: Duration = .seconds(1)
    public var commandTimeout: Duration = .milliseconds(500)
    public var poolSize = 4
    /// The caches' policy.
    public var caches = FailurePolicy.failOpen
    /// The rate limits' policy: `fail_open` lets requests through uncounted while the store is down.
    public var limits = FailurePolicy.failOpen

    public init() {}
}
