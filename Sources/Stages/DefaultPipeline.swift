public import Admission
public import Caching
public import Routing
public import Limits
public import SwitchyardCore
import SwitchyardModels

/// The one place the order of the stages is written.
public enum DefaultPipeline {
    /// The attempts stage for `config`, or nil when it has nothing to do (one attempt, one deployment, no budget or
    /// breaker).
    public static func attemptsStage(_ config: GatewayConfig, store: any LimitStore, recorder: (any AttemptRecorder)?,
                                     board: (any BreakerBoard)? = nil,
                                     sharedGate: ((String, AdmissionQueue.Settings) -> any AdmissionGating)? = nil) -> AttemptsStage? {
        guard AttemptsStage.isNeeded(config) else { return nil }
        return AttemptsStage(models: config.models, deployments: config.deployments, fallbacks: config.fallbacks,
                             settings: AttemptsStage.Settings(config.resilience), budgets: config.budgets, store: store,
                             recorder: recorder, board: board, admission: config.admission,
                             admissionObserver: recorder as? any AdmissionObserver, sharedGate: sharedGate)
    }

    /// Auth → Ledger → Route (resolve) → ExactCache → SemanticCache → Routing → RateLimit → Attempts → PromptCache →
    /// CostAccounting → ProviderCall.
    ///
    /// The caches sit after name resolution so that unknown models are refused before any lookup; their key is the
    /// name the client asked for (a route's name, not the model it picks). The routing decision comes after them,
    /// so a cache hit never pays for it, and before the prompt cache and pricing, which need the chosen model.
    public static func build(config: GatewayConfig, providers: [String: any ProviderClient],
                             recorder: any CostRecorder & CacheRecorder, exactCache: any ExactCacheStore,
                             semanticCache: any SemanticCacheStore, embedder: (any TextEmbedder)?,
                             classifier: ComplexityClassifier? = nil, background: (any BackgroundWorkQueue)? = nil,
                             learned: SemanticCacheStage.LearnedVerification? = nil,
                             limits: (any LimitStore)? = nil, attempts: AttemptsStage? = nil,
                             queue: RateLimitStage.QueueStep? = nil, ledger: (any LedgerRecorder)? = nil,
                             alerter: BudgetAlerter? = nil) -> Pipeline
    {
        let call = ProviderCall(providers: providers)
        // Only with limits configured: without them a request pays nothing for the stage. Limits that count every
        // request sit before the caches (their model is the name asked for); the others after the routing decision,
        // so hits are free and a model-scoped limit sees the model chosen.
        // Degradation applies to the limits after the caches: those before them count cache hits too, so a cached
        // answer would not relieve them.
        let store = limits ?? LimitLedger()
        let routing = RoutingStage(models: config.models, classifier: classifier, embedder: embedder,
                                   logprobModels: Set(config.models.values.filter { model in
                                       config.providers[model.provider]?.kind.format(forUpstreamModel: model.upstreamModel) == .openAI
                                   }.map(\.name)))
        let routes = config.routes
        let routeChoice: RateLimitStage.RouteChoice = { name, request, context in
            guard let route = routes[name] else { return nil }
            return try await routing.downgradeChoice(route, request: request, context: context)
        }
        let stage = { (definitions: [LimitDefinition], policies: [DegradePolicy]) -> [any GatewayStage] in
            definitions.isEmpty ? [] : [RateLimitStage(planner: LimitPlanner(definitions: definitions), store: store,
                                                       failClosed: config.state.limits == .failClosed, policies: policies,
                                                       models: config.models, queue: policies.isEmpty ? nil : queue,
                                                       routeChoice: routeChoice,
                                                       recorder: recorder as? any LimitRecorder,
                                                       alerter: definitions.contains { !$0.alerts.isEmpty } ? alerter : nil)]
        }
        let everyRequest = stage(config.limits.filter(\.countsAllRequests), [])
        let limitStage = stage(config.limits.filter { !$0.countsAllRequests }, config.degrade)
        let degrades = !limitStage.isEmpty && !config.degrade.isEmpty
        // Only with retries, fallbacks, other deployments or breakers configured: otherwise a request pays nothing.
        let attempts: [any GatewayStage] = (attempts ?? attemptsStage(config, store: store, recorder: recorder as? any AttemptRecorder))
            .map { [$0] } ?? []
        return Pipeline(
            stages: [
                AuthStage(keys: config.keys),
            ] + (ledger.map { [LedgerStage(recorder: $0)] } ?? []) + [
                RouteStage(models: config.models, routes: config.routes),
            ] + everyRequest + [
                ExactCacheStage(store: exactCache, settings: config.cache, recorder: recorder,
                                failClosed: config.state.caches == .failClosed,
                                staleRetention: degrades ? DegradePolicy.staleRetention(config.degrade) : .zero),
                SemanticCacheStage(store: semanticCache, embedder: embedder, settings: config.cache, recorder: recorder,
                                   background: background, learned: learned,
                                   offersLooserMatches: degrades && DegradePolicy.usesLooserSemantic(config.degrade)),
                routing,
            ] + limitStage + attempts + [
                PromptCacheStage(providers: config.providers),
                CostAccountingStage(recorder: recorder),
            ],
            terminal: { request, context in try await call(request, context: context) })
    }
}
