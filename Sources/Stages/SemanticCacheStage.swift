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
    /// The learned verifier and its calibration; nil: rules and the cosine threshold only.
    let learned: LearnedVerification?

    /// The learned pair verifier, the input vectors it reads, and the per-tenant calibration of what it serves.
    public struct LearnedVerification: Sendable {
        public var verifier: PairVerifier
        public var words: any WordVectors
        public var calibration: SemanticCalibration?

        public init(verifier: PairVerifier, words: any WordVectors, calibration: SemanticCalibration?) {
            self.verifier = verifier
            self.words = words
            self.calibration = calibration
        }
    }

    /// Whether a miss offers the limits' degradation policy a lookup at a looser threshold (some policy has one).
    let offersLooserMatches: Bool

    /// Namespaces larger than this are searched on the thread pool, not the event loop.
    static let inlineSearchEntries = 256

    public init(store: any SemanticCacheStore, embedder: (any TextEmbedder)?, settings: CacheSettings,
                recorder: any CacheRecorder, background: (any BackgroundWorkQueue)? = nil, learned: LearnedVerification? = nil,
                offersLooserMatches: Bool = false) {
        self.learned = learned
        self.offersLooserMatches = offersLooserMatches
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
        var nearMiss: Candidate?
        if !context.cacheDirectives.skipLookup {
            let candidates = try await nearest(vector, request: request, plan: plan)
            let (replay, refused) = replay(request, context: context, plan: plan, candidates: candidates, embedder: embedder, next: next)
            if let replay { return replay }
            nearMiss = refused
        }
        recorder.cache(.semantic, .miss, model: request.model, saved: .zero, caller: plan.caller)
        if offersLooserMatches, !context.cacheDirectives.skipLookup {
            // Searched again only if the limits refuse the request and a degradation step asks.
            let stage = self, asked = request, current = context
            context.fallbacks.semantic = { floor in
                let candidates = try await stage.nearest(vector, request: asked, plan: plan, floor: floor)
                    .filter { Double($0.match.similarity) >= floor }
                return stage.replay(asked, context: current, plan: plan, candidates: candidates, embedder: embedder, next: next).0
            }
        }
        return store(try await next(request, context), request: request, context: context, plan: plan, vector: vector,
                     nearMiss: nearMiss, embedder: embedder)
    }

    /// A candidate and what verification said of it: the guard's rejection, or the learned verifier's probability.
    /// Without the learned verifier the guard runs later, candidate by candidate, and stops at the first that passes.
    struct Candidate: Sendable {
        var match: SemanticMatch
        var checked = false
        var rejection: SemanticGuard.Rejection?
        var probability: Double?
    }

    /// The stored questions nearest to `vector` in the request's namespace, verified; a large namespace, and every
    /// lookup the learned verifier judges, run on the thread pool.
    /// `floor`: a looser cosine floor than the cache's own (a degradation step), verification unchanged.
    func nearest(_ vector: [Float], request: ChatRequest, plan: Plan, floor: Double? = nil) async throws -> [Candidate] {
        let store = self.store
        let learned = self.learned
        let own = learned.map { $0.verifier.minimumSimilarity } ?? settings.semanticThreshold(for: request.model)
        let minimum = Float(min(own, floor ?? own))
        let namespace = plan.namespace, question = plan.question, tenant = plan.caller.tenant
        let rules = settings.semanticVerify
        let search: @Sendable () -> [Candidate] = {
            let matches = store.nearest(vector, namespace: namespace, minimum: minimum, limit: Self.candidates, now: .now)
            let query = learned.map { $0.verifier.prepared(PairVerifier.PairText(text: question, vector: vector)) }
            return matches.compactMap { match in
                guard match.entry.answer.tenant == tenant else { return nil }
                var candidate = Candidate(match: match)
                guard let learned, let query else { return candidate }
                candidate.checked = true
                if rules { candidate.rejection = SemanticGuard.check(question, against: match.entry.text) }
                if candidate.rejection == nil {
                    candidate.probability = learned.verifier.probability(
                        query: query, candidate: PairVerifier.PairText(text: match.entry.text, vector: match.entry.vector),
                        words: learned.words)
                }
                return candidate
            }
        }
        guard learned != nil || store.size(of: namespace) > Self.inlineSearchEntries else { return search() }
        return try await Offload.run(search)
    }

    /// The best stored answer that passes verification, replayed for `request`; `nil` on a miss (with the best
    /// candidate the learned threshold refused, for a near-miss label).
    @inline(never)
    func replay(_ request: ChatRequest, context: GatewayContext, plan: Plan, candidates: [Candidate], embedder: any TextEmbedder,
                next: @escaping Next) -> (GatewayResponse?, nearMiss: Candidate?) {
        let key = SemanticCalibration.key(tenant: plan.caller.tenant, model: request.model)
        // `rules_or_learned`'s agreement band: the rules pass it and the verifier leans to it, though below its
        // threshold (closed where this namespace's labels say otherwise).
        let agreement = settings.semanticLearnedExtendsRules && settings.semanticVerify && settings.semanticAgreementCosine < 1
            ? settings.semanticAgreementProbability : nil
        let (threshold, agreementOpen): (Double?, Bool) = {
            guard let learned else { return (nil, false) }
            guard let calibration = learned.calibration else { return (learned.verifier.threshold, agreement != nil) }
            guard let agreement else { return (calibration.threshold(for: key), false) }
            let calibrated = calibration.threshold(for: key, agreementFrom: agreement)
            return (calibrated.threshold, calibrated.agreementOpen)
        }()
        var nearMiss: Candidate?
        for candidate in candidates {
            let match = candidate.match
            let rejection = candidate.checked || !settings.semanticVerify
                ? candidate.rejection : SemanticGuard.check(plan.question, against: match.entry.text)
            if let rejection {
                recorder.semanticRejected(rejection.rawValue)
                continue
            }
            // `rules_or_learned`: what the rules serve on their own stays served; the verifier adds below it.
            let servedByRules = settings.semanticLearnedExtendsRules
                && Double(match.similarity) >= settings.semanticThreshold(for: request.model)
            let agreed = agreementOpen && Double(match.similarity) >= settings.semanticAgreementCosine
                && candidate.probability.map { $0 >= settings.semanticAgreementProbability } == true
            if !servedByRules, !agreed, let threshold, let probability = candidate.probability, probability < threshold {
                recorder.semanticRejected("learned")
                if nearMiss == nil { nearMiss = candidate }
                continue
            }
            let outcome = CacheOutcome(.hitSemantic, similarity: Double(match.similarity), entryID: match.entry.id)
            guard let replay = CacheSupport.replay(match.entry.answer, for: request, outcome: outcome) else { continue }
            recorder.cache(.semantic, .hit, model: request.model, saved: match.entry.answer.cost, caller: plan.caller)
            context.trail?.served(from: .semantic, saved: match.entry.answer.cost)
            if let probability = candidate.probability, let calibration = learned?.calibration {
                calibration.observe(key: key, score: probability)
                calibration.served(entryID: match.entry.id, key: key, score: probability)
            }
            if settings.semanticShadowRate > 0, Double.random(in: 0..<1) < settings.semanticShadowRate,
               let cached = match.entry.answer.response
            {
                shadowCheck(request, context: context, cached: cached, next: next, embedder: embedder,
                            label: candidate.probability.map { (key, $0) })
            }
            return (replay, nil)
        }
        if let probability = nearMiss?.probability { learned?.calibration?.observe(key: key, score: probability) }
        return (nil, nearMiss)
    }

    @inline(never)
    func store(_ response: GatewayResponse, request: ChatRequest, context: GatewayContext, plan: Plan, vector: [Float],
               nearMiss: Candidate?, embedder: any TextEmbedder) -> GatewayResponse
    {
        let store = self.store
        let recorder = self.recorder
        let id = Self.makeEntryID()
        // A near miss, sampled at the shadow rate, is labelled for free: the model answered anyway, and its answer is
        // compared with the one the verifier refused to serve.
        let label: (@Sendable (CachedAnswer) -> Void)? = {
            guard let nearMiss, let probability = nearMiss.probability, let calibration = learned?.calibration,
                  settings.semanticShadowRate > 0, Double.random(in: 0..<1) < settings.semanticShadowRate,
                  let refused = nearMiss.match.entry.answer.response, let background else { return nil }
            let key = SemanticCalibration.key(tenant: plan.caller.tenant, model: request.model)
            return { answer in
                guard let fresh = answer.response else { return }
                background.submit {
                    guard let agreed = await Self.agree(refused, fresh, embedder: embedder) else { return }
                    calibration.record(key: key, score: probability, correct: agreed)
                    recorder.calibrationLabelled(source: .nearMiss)
                }
            }
        }()
        return CacheSupport.storing(response, ttl: plan.ttl, tenant: plan.caller.tenant, model: request.model,
                                    price: context.route?.price, outcome: nil) { answer in
            label?(answer)
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
                     embedder: any TextEmbedder, label: (key: String, score: Double)?) {
        var fresh = request
        fresh.stream = false
        fresh.streamIncludeUsage = false
        let recorder = self.recorder
        let calibration = learned?.calibration
        let shadow = fresh
        background?.submit {
            guard case .completion(let completion)? = try? await next(shadow, context),
                  let response = try? completion.canonicalResponse(),
                  let agreed = await Self.agree(cached, response, embedder: embedder) else { return }
            recorder.shadowChecked(agreed: agreed)
            if let label, let calibration {
                calibration.record(key: label.key, score: label.score, correct: agreed)
                recorder.calibrationLabelled(source: .shadow)
            }
        }
    }

    /// Whether two answers say the same (their texts' embeddings at `shadowAgreement` or closer); nil when the
    /// encoder is too busy to tell.
    static func agree(_ a: ChatResponse, _ b: ChatResponse, embedder: any TextEmbedder) async -> Bool? {
        let text = { (answer: ChatResponse) in answer.choices.flatMap(\.content).compactMap(\.text).joined(separator: "\n") }
        guard let x = await embedder.embed(text(a)), let y = await embedder.embed(text(b)) else { return nil }
        return InMemorySemanticCache.dot(x, y) >= shadowAgreement
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
