public import Caching
public import SwitchyardCore
public import SwitchyardModels

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// After the exact cache: answers a rephrasing of an earlier question asked in the same context.
///
/// Matching happens only inside a compatibility fingerprint (tenant, model, prompt version, system prompt, tools,
/// generation parameters, and the conversation before the last user message). Within it the last user message is
/// embedded on-device and the nearest stored questions are looked up; a candidate at or above the threshold is
/// served only if `SemanticGuard` finds no difference in negation, numbers, entities or their order.
public struct SemanticCacheStage: GatewayStage {
    let store: any SemanticCacheStore
    let embedder: (any TextEmbedder)?
    let settings: CacheSettings
    let recorder: any CacheRecorder
    /// Where shadow checks run (bounded; full: the check is skipped). `nil`: no shadow checks.
    let background: (any BackgroundWorkQueue)?

    /// Namespaces larger than this are searched on the thread pool, not the event loop.
    static let inlineSearchEntries = 256

    public init(store: any SemanticCacheStore, embedder: (any TextEmbedder)?, settings: CacheSettings,
                recorder: any CacheRecorder, background: (any BackgroundWorkQueue)? = nil) {
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.recorder = recorder
        self.background = background
    }

    /// Candidates verified per lookup, best first.
    static let candidates = 5

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        // Small on purpose: a request the cache does not apply to passes with a frame of a few words. The work is in
        // synchronous functions (their locals live on the thread's stack, not in the task's frame).
        guard let plan = try plan(for: request, context: context), let embedder else {
            return try await next(request, context)
        }
        return try await answer(request, context: context, plan: plan, embedder: embedder, next: next)
    }

    /// What a request is looked up and stored under.
    struct Plan {
        /// The last user message's text (what is embedded).
        let question: String
        /// The compatibility fingerprint.
        let namespace: String
        let caller: Caller
        let ttl: Duration
    }

    /// The plan for a request the cache applies to; `nil`, recorded as a bypass, for one it does not.
    @inline(never)
    func plan(for request: ChatRequest, context: GatewayContext) throws(GatewayError) -> Plan? {
        let directives = context.cacheDirectives
        let configuredTTL = settings.ttl(for: request.model)
        guard settings.semanticEnabled, !settings.semanticOff.contains(request.model), embedder != nil, configuredTTL > .zero,
              !directives.skipStore,
              settings.semanticWithTools || request.tools.isEmpty, (request.n ?? 1) <= 1,
              let (question, context_) = Self.split(request), question.utf8.count <= settings.semanticMaxQuestionBytes
        else {
            recorder.cache(.semantic, .bypass, model: request.model, saved: .zero, caller: context.caller)
            return nil
        }
        let caller = try context.requireCaller()
        return Plan(question: question,
                    namespace: ExactCacheKey.make(context_, tenant: caller.tenant, promptVersion: directives.promptVersion),
                    caller: caller, ttl: min(directives.ttl ?? configuredTTL, configuredTTL))
    }

    @inline(never)
    func answer(_ request: ChatRequest, context: GatewayContext, plan: Plan, embedder: any TextEmbedder, next: @escaping Next)
        async throws -> GatewayResponse
    {
        guard let vector = await embedder.embed(plan.question) else {
            // The encoder is backed up: answer without the semantic cache rather than wait.
            recorder.cache(.semantic, .bypass, model: request.model, saved: .zero, caller: plan.caller)
            return try await next(request, context)
        }
        var context = context
        context.questionEmbedding = QuestionEmbedding(text: plan.question, vector: vector)
        if !context.cacheDirectives.skipLookup {
            let matches = try await nearest(vector, request: request, plan: plan)
            if let replay = replay(request, context: context, plan: plan, matches: matches, embedder: embedder, next: next) {
                return replay
            }
        }
        recorder.cache(.semantic, .miss, model: request.model, saved: .zero, caller: plan.caller)
        return store(try await next(request, context), request: request, context: context, plan: plan, vector: vector)
    }

    /// The stored questions nearest to `vector` in the request's namespace; a large namespace is searched on the
    /// thread pool.
    func nearest(_ vector: [Float], request: ChatRequest, plan: Plan) async throws -> [SemanticMatch] {
        let store = self.store
        let minimum = Float(settings.semanticThreshold(for: request.model))
        let namespace = plan.namespace
        let search: @Sendable () -> [SemanticMatch] = {
            store.nearest(vector, namespace: namespace, minimum: minimum, limit: Self.candidates, now: .now)
        }
        guard store.size(of: namespace) > Self.inlineSearchEntries else { return search() }
        return try await Offload.run(search)
    }

    /// The best stored answer that passes verification, replayed for `request`; `nil` on a miss.
    @inline(never)
    func replay(_ request: ChatRequest, context: GatewayContext, plan: Plan, matches: [SemanticMatch], embedder: any TextEmbedder,
                next: @escaping Next) -> GatewayResponse? {
        for match in matches where match.entry.answer.tenant == plan.caller.tenant {
            if settings.semanticVerify, let rejection = SemanticGuard.check(plan.question, against: match.entry.text) {
                recorder.semanticRejected(rejection.rawValue)
                continue
            }
            let outcome = CacheOutcome(.hitSemantic, similarity: Double(match.similarity), entryID: match.entry.id)
            guard let replay = CacheSupport.replay(match.entry.answer, for: request, outcome: outcome) else { continue }
            recorder.cache(.semantic, .hit, model: request.model, saved: match.entry.answer.cost, caller: plan.caller)
            if settings.semanticShadowRate > 0, Double.random(in: 0..<1) < settings.semanticShadowRate,
               let cached = match.entry.answer.response
            {
                shadowCheck(request, context: context, cached: cached, next: next, embedder: embedder)
            }
            return replay
        }
        return nil
    }

    @inline(never)
    func store(_ response: GatewayResponse, request: ChatRequest, context: GatewayContext, plan: Plan, vector: [Float])
        -> GatewayResponse
    {
        let store = self.store
        let id = Self.makeEntryID()
        return CacheSupport.storing(response, ttl: plan.ttl, tenant: plan.caller.tenant, model: request.model,
                                    price: context.route?.price, outcome: nil) { answer in
            // Into a large namespace off the event loop: the insert goes through (or builds, at `ann_threshold`
            // entries) its HNSW index.
            let entry = SemanticEntry(id: id, namespace: plan.namespace, text: plan.question, vector: vector, answer: answer)
            if store.size(of: entry.namespace) > Self.inlineSearchEntries {
                Offload.detached { store.insert(entry) }
            } else {
                store.insert(entry)
            }
        }
    }

    /// Answers cosine-similar at least this much count as agreeing in a shadow check.
    static let shadowAgreement: Float = 0.8

    /// Sends the request to the model in the background (not streamed, billed as usual) and compares the fresh answer
    /// with the cached one by the similarity of their texts. The client already has its cached answer.
    func shadowCheck(_ request: ChatRequest, context: GatewayContext, cached: ChatResponse, next: @escaping Next,
                     embedder: any TextEmbedder) {
        var fresh = request
        fresh.stream = false
        fresh.streamIncludeUsage = false
        let recorder = self.recorder
        let shadow = fresh
        background?.submit {
            guard case .completion(let completion)? = try? await next(shadow, context),
                  let response = try? completion.canonicalResponse() else { return }
            let text = { (answer: ChatResponse) in answer.choices.flatMap(\.content).compactMap(\.text).joined(separator: "\n") }
            guard let a = await embedder.embed(text(cached)), let b = await embedder.embed(text(response)) else { return }
            recorder.shadowChecked(agreed: InMemorySemanticCache.dot(a, b) >= Self.shadowAgreement)
        }
    }

    /// The last user message's text, and the request with that message's text removed (what the fingerprint covers).
    /// `nil` when the conversation does not end with a user message made of text.
    /// The last user message's text (what is embedded, by this stage and by routing), or `nil` as for `split`.
    static func question(of request: ChatRequest) -> String? {
        guard let last = request.messages.last, last.role == .user else { return nil }
        var texts: [String] = []
        for block in last.content {
            guard case .text(let text, _) = block else { return nil }
            texts.append(text)
        }
        let question = texts.joined(separator: "\n")
        return question.trimmingWhitespace().isEmpty ? nil : question
    }

    static func split(_ request: ChatRequest) -> (String, ChatRequest)? {
        guard let question = question(of: request) else { return nil }
        var context = request
        context.messages[context.messages.count - 1].content = [.text("")]
        return (question, context)
    }

    static func makeEntryID() -> String {
        "sc_" + KeyHash.hex((0..<8).map { _ in UInt8.random(in: 0...255) })
    }
}
