public import Logging
public import NIOCore
public import SwitchyardModels

/// What travels with a request through the stages: identity, logger, clock, and earlier stages' results.
///
/// A value with its fields in one shared box (copy on write, like `Array`): every async function on the request path
/// keeps its arguments and locals in the task's frame, and a 550-byte context inline made each stage's frame spill
/// into a freshly allocated slab. Passing the box costs a reference; a stage that sets a field copies it once.
public struct GatewayContext: Sendable {
    struct Fields {
        var requestID: String
        var baseLogger: Logger
        var clientFormat: APIFormat
        var credential: String?
        var receivedAt: ContinuousClock.Instant
        var caller: Caller?
        var route: ModelRoute?
        var routeConfig: RouteConfig?
        var requestedFeature: String?
        var requestedPriority: Priority?
        var questionEmbedding: QuestionEmbedding?
        var cacheDirectives = CacheDirectives()
        var original: ClientOriginal?
        var fallbacks = CacheFallbacks()
        var runsAsJob = false
        var queueWatch: QueueWatch?
        var batchTicket: BatchTicket?
        var trail: RequestTrail?
    }

    /// Mutated only when uniquely referenced (`update`), so sharing it between tasks is safe.
    final class Storage: @unchecked Sendable {
        var fields: Fields

        init(_ fields: Fields) {
            self.fields = fields
        }
    }

    private var storage: Storage

    private mutating func update(_ body: (inout Fields) -> Void) {
        if !isKnownUniquelyReferenced(&storage) { storage = Storage(storage.fields) }
        body(&storage.fields)
    }

    public var requestID: String {
        get { storage.fields.requestID }
        set { update { $0.requestID = newValue } }
    }
    /// Carries `switchyard.request.id`. Built on use: most requests log nothing at the default level, and
    /// copying logger metadata costs a dictionary write per request.
    public var logger: Logger {
        get {
            var logger = storage.fields.baseLogger
            logger[metadataKey: "switchyard.request.id"] = "\(storage.fields.requestID)"
            return logger
        }
        set { update { $0.baseLogger = newValue } }
    }
    /// The format the client speaks (its errors and answers use it).
    public var clientFormat: APIFormat {
        get { storage.fields.clientFormat }
        set { update { $0.clientFormat = newValue } }
    }
    /// The credential the client presented, if any. Never logged, never forwarded upstream.
    public var credential: String? {
        get { storage.fields.credential }
        set { update { $0.credential = newValue } }
    }
    /// When the gateway began handling the request.
    public var receivedAt: ContinuousClock.Instant {
        get { storage.fields.receivedAt }
        set { update { $0.receivedAt = newValue } }
    }
    /// Set by the auth stage.
    public var caller: Caller? {
        get { storage.fields.caller }
        set { update { $0.caller = newValue } }
    }
    /// Set by the route stage.
    public var route: ModelRoute? {
        get { storage.fields.route }
        set { update { $0.route = newValue } }
    }
    /// Set by the resolve stage when the name is a route; the routing stage then sets `route`.
    public var routeConfig: RouteConfig? {
        get { storage.fields.routeConfig }
        set { update { $0.routeConfig = newValue } }
    }
    /// The feature named in `x-switchyard-feature`, validated (the auth stage applies it when the key allows).
    public var requestedFeature: String? {
        get { storage.fields.requestedFeature }
        set { update { $0.requestedFeature = newValue } }
    }
    /// `x-switchyard-priority`, as the client sent it.
    public var requestedPriority: Priority? {
        get { storage.fields.requestedPriority }
        set { update { $0.requestedPriority = newValue } }
    }
    /// The request's priority: the key's, lowered (never raised) by `x-switchyard-priority`.
    public var priority: Priority {
        let own = caller?.priority ?? .p0
        return max(own, requestedPriority ?? own)
    }
    /// The embedding of the last user message, once a stage computed it (the semantic cache), for later stages
    /// (routing) to reuse instead of embedding the same text again.
    public var questionEmbedding: QuestionEmbedding? {
        get { storage.fields.questionEmbedding }
        set { update { $0.questionEmbedding = newValue } }
    }
    /// The client's cache controls (headers).
    public var cacheDirectives: CacheDirectives {
        get { storage.fields.cacheDirectives }
        set { update { $0.cacheDirectives = newValue } }
    }
    /// The request as the client sent it: the provider forwards these bytes instead of rendering the request again
    /// when the upstream speaks the client's format and no stage changed the request (see `ClientOriginal`).
    public var original: ClientOriginal? {
        get { storage.fields.original }
        set { update { $0.original = newValue } }
    }

    /// What the caches can still answer with if the limits refuse the request (set by the cache stages on a miss,
    /// used only by a degradation policy).
    public var fallbacks: CacheFallbacks {
        get { storage.fields.fallbacks }
        set { update { $0.fallbacks = newValue } }
    }

    /// Whether a background job's worker runs the request (a refusal is then retried by the worker, never queued as
    /// another job).
    public var runsAsJob: Bool {
        get { storage.fields.runsAsJob }
        set { update { $0.runsAsJob = newValue } }
    }

    /// Set by a job's worker for a P2 job: the request may wait for its provider's batch API.
    public var batchTicket: BatchTicket? {
        get { storage.fields.batchTicket }
        set { update { $0.batchTicket = newValue } }
    }

    /// Set by the ledger stage: what the stages did with the request, for its ledger record.
    public var trail: RequestTrail? {
        get { storage.fields.trail }
        set { update { $0.trail = newValue } }
    }

    /// Set by the edge for a streaming request: told when the request waits in a deployment's queue.
    public var queueWatch: QueueWatch? {
        get { storage.fields.queueWatch }
        set { update { $0.queueWatch = newValue } }
    }

    public init(requestID: String, logger: Logger, clientFormat: APIFormat, credential: String? = nil,
                receivedAt: ContinuousClock.Instant = .now) {
        storage = Storage(Fields(requestID: requestID, baseLogger: logger, clientFormat: clientFormat, credential: credential,
                                 receivedAt: receivedAt))
    }

    /// The authenticated caller; throws `.internalError` if the pipeline is misordered.
    public func requireCaller() throws(GatewayError) -> Caller {
        guard let caller else { throw GatewayError(.internalError, "pipeline misordered: no caller") }
        return caller
    }

    /// The resolved route; throws `.internalError` if the pipeline is misordered.
    public func requireRoute() throws(GatewayError) -> ModelRoute {
        guard let route else { throw GatewayError(.internalError, "pipeline misordered: no route") }
        return route
    }
}

/// A complete answer, with the upstream's own bytes when the client speaks the same format.
public struct Completion: Sendable {
    /// The canonical answer. `nil` when the upstream spoke the client's format and only its usage was read:
    /// the raw body is then relayed untouched, and `canonicalResponse()` decodes it on demand.
    public var response: ChatResponse?
    /// What the answer used, for pricing.
    public var usage: Usage
    /// The upstream body exactly as received, and its format.
    public var raw: (format: APIFormat, body: ByteBuffer)?
    /// Price of the answer, set by the cost stage.
    public var cost: NanoUSD?
    /// Time spent waiting on the upstream.
    public var upstreamDuration: Duration
    /// What the response caches did (`nil` when no cache stage ran).
    public var cache: CacheOutcome?
    /// What the routing stage decided (`nil` for an explicit model name and for cache hits).
    public var routing: RoutingOutcome?
    /// The tightest rate limits that applied (`nil` without limits).
    public var limits: LimitStatus?
    /// What the provider said is left of its own limits (read only for providers with budgets).
    public var providerRemaining: ProviderRemaining?
    /// Set when the request was accepted as a background job instead of answered: `raw` is the job (202).
    public var acceptedJob: String?
    /// Whether the answer came through the provider's batch API (priced at batch rates).
    public var batched = false

    /// A completion decoded in full.
    public init(response: ChatResponse, raw: (format: APIFormat, body: ByteBuffer)? = nil, cost: NanoUSD? = nil,
                upstreamDuration: Duration = .zero) {
        self.response = response
        self.usage = response.usage
        self.raw = raw
        self.cost = cost
        self.upstreamDuration = upstreamDuration
    }

    /// A completion whose body is relayed untouched; only its usage was decoded.
    public init(usage: Usage, raw: (format: APIFormat, body: ByteBuffer), upstreamDuration: Duration = .zero) {
        self.response = nil
        self.usage = usage
        self.raw = raw
        self.upstreamDuration = upstreamDuration
    }

    /// The canonical answer, decoding the raw body if only its usage was read.
    /// - Throws: `GatewayError.upstreamError` when the body is malformed.
    public func canonicalResponse() throws(GatewayError) -> ChatResponse {
        if let response { return response }
        guard let raw else { throw GatewayError(.internalError, "completion without a body") }
        do {
            let json = try JSONValue.parse(raw.body.readableBytesView)
            switch raw.format {
            case .openAI: return try OpenAIFormat.parseResponse(json)
            case .anthropic: return try AnthropicFormat.parseResponse(json)
            }
        } catch {
            throw GatewayError(.upstreamError, "the upstream answered with a malformed body", upstreamStatus: 502)
        }
    }
}

/// What a stage returns: a complete answer or a stream. Boxed (`indirect`), so that the result each stage awaits takes
/// a word of its frame instead of 240 bytes.
public indirect enum GatewayResponse: Sendable {
    case completion(Completion)
    case stream(ChatStream)
}

/// A stage of the pipeline, shaped like Hummingbird middleware over canonical types.
public protocol GatewayStage: Sendable {
    /// Handles the request, calling `next` to continue down the pipeline (or not, to short-circuit).
    func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse
}

/// The continuation of the pipeline after a stage.
public typealias Next = @Sendable (ChatRequest, GatewayContext) async throws -> GatewayResponse

/// The stages in order, ending in a terminal handler.
public struct Pipeline: Sendable {
    public let stages: [any GatewayStage]
    public let terminal: Next
    /// The stages chained once, at build time: a request allocates no continuation closures on its way down.
    private let entry: Next

    public init(stages: [any GatewayStage], terminal: @escaping Next) {
        self.stages = stages
        self.terminal = terminal
        var next = terminal
        for stage in stages.reversed() {
            let inner = next
            next = { request, context in try await stage.handle(request, context: context, next: inner) }
        }
        self.entry = next
    }

    /// Runs the request through every stage.
    public func run(_ request: ChatRequest, context: GatewayContext) async throws -> GatewayResponse {
        try await entry(request, context)
    }
}

/// A call to one upstream provider. Does not retry, fall back or cache.
public protocol ProviderClient: Sendable {
    /// Sends one request upstream for `route`.
    /// - Returns: A completion, or a stream whose first event has already been received.
    /// - Throws: `GatewayError` (`.upstreamTimeout`, `.upstreamError`, `.rateLimited`, `.invalidRequest`, ...).
    func send(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) async throws -> GatewayResponse
}

/// The client's request body with the request parsed from it.
public struct ClientOriginal: Sendable {
    public let request: ChatRequest
    public let body: ByteBuffer

    /// The size of the client's body: what decides whether work on the request leaves the event loop (`Offload`).
    public var byteCount: Int { body.readableBytes }

    public init(request: ChatRequest, body: ByteBuffer) {
        self.request = request
        self.body = body
    }

    /// The client's bytes, when they say exactly what rendering `request` for an upstream of `format` serving
    /// `upstreamModel` would: same format, same model name, not streamed (streams ask the upstream for usage), and
    /// `request` unchanged since parsing. The comparison is cheap when nothing changed: the arrays, dictionaries
    /// and strings still share their storage, and equality checks identity first.
    public func body(for request: ChatRequest, format: APIFormat, upstreamModel: String) -> ByteBuffer? {
        guard !request.stream, request.sourceFormat == format, request.model == upstreamModel, request == self.request
        else { return nil }
        return body
    }
}

/// A text and its on-device embedding.
public struct QuestionEmbedding: Sendable, Hashable {
    public var text: String
    public var vector: [Float]

    public init(text: String, vector: [Float]) {
        self.text = text
        self.vector = vector
    }
}

/// The answers a cache miss can still offer a request the limits refuse: an exact answer past its TTL, and a semantic
/// lookup at a looser threshold. Built lazily: nothing is decoded or searched unless a degradation step asks.
public struct CacheFallbacks: Sendable {
    /// An exact answer past its TTL, still kept: when its TTL ended, and its replay for the request.
    public struct Stale: Sendable {
        public var expiredAt: ContinuousClock.Instant
        public var replay: @Sendable () -> GatewayResponse?

        public init(expiredAt: ContinuousClock.Instant, replay: @escaping @Sendable () -> GatewayResponse?) {
            self.expiredAt = expiredAt
            self.replay = replay
        }
    }

    public var stale: Stale?
    /// The best stored answer at or above a cosine similarity, verified as usual; nil when none.
    public var semantic: (@Sendable (Double) async throws -> GatewayResponse?)?

    public init() {}
}
