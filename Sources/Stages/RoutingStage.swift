public import Caching
public import Routing
public import SwitchyardCore
public import SwitchyardModels

/// Stage 5, routing: for a name that is a route, the first rule that matches the request and its caller picks the
/// model — a fixed one, or a step of a complexity ladder by the classifier's score of the last user message; the
/// rule's (or route's) output limit sets `max_tokens`. Runs after the caches, so a hit never pays for it, and reuses
/// the semantic cache's embedding of the same text (one embedding per request). Explicit model names pass through.
public struct RoutingStage: GatewayStage {
    let models: [String: ModelRoute]
    let classifier: ComplexityClassifier?
    let embedder: (any TextEmbedder)?

    public init(models: [String: ModelRoute], classifier: ComplexityClassifier? = nil, embedder: (any TextEmbedder)? = nil) {
        self.models = models
        self.classifier = classifier
        self.embedder = embedder
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        guard let route = context.routeConfig else { return try await next(request, context) }
        let rule = try rule(route, request: request, context: context)
        var complexity: Double?
        if case .complexity = rule.target { complexity = await percentile(request, context: context) }
        let (routed, routedContext, outcome) = try decide(request, route: route, rule: rule, complexity: complexity, context: context)
        return Self.mark(try await next(routed, routedContext), outcome)
    }

    func rule(_ route: RouteConfig, request: ChatRequest, context: GatewayContext) throws(GatewayError) -> RouteRule {
        let caller = try context.requireCaller()
        // The last rule matches everything (checked at load), so a match is always found in a valid configuration.
        guard let rule = route.rules.first(where: { $0.match.matches(request, caller: caller) }) else {
            throw GatewayError(.internalError, "route '\(route.name)' has no rule for this request")
        }
        return rule
    }

    /// The last user message's score percentile, or nil when there is no classifier, no embedder, no such message,
    /// or the encoder is too busy.
    func percentile(_ request: ChatRequest, context: GatewayContext) async -> Double? {
        guard let classifier, let (question, _) = SemanticCacheStage.split(request) else { return nil }
        let vector: [Float]?
        if let shared = context.questionEmbedding, shared.text == question {
            vector = shared.vector
        } else {
            vector = await embedder?.embed(question)
        }
        guard let vector, let score = classifier.score(embedding: vector, text: question) else { return nil }
        return classifier.percentile(of: score)
    }

    /// The request as it goes on (its `max_tokens` limited), the context with the chosen model, and the decision.
    @inline(never)
    func decide(_ request: ChatRequest, route: RouteConfig, rule: RouteRule, complexity: Double?, context: GatewayContext)
        throws(GatewayError) -> (ChatRequest, GatewayContext, RoutingOutcome)
    {
        let name: String
        switch rule.target {
        case .model(let model):
            name = model
        case .complexity(let ladder, let thresholds):
            // Unscored (no embedding model, or no user text): the strongest step, so quality never drops unseen.
            let step = complexity.map { score in thresholds.filter { $0 <= score }.count } ?? (ladder.count - 1)
            name = ladder[min(max(step, 0), ladder.count - 1)]
        }
        guard let model = models[name] else {
            throw GatewayError(.internalError, "route '\(route.name)' names unknown model '\(name)'")
        }
        var request = request
        if let limit = rule.maxTokens ?? route.maxTokens {
            let limited = limit.apply(to: request.maxTokens)
            if limited != request.maxTokens { request.maxTokens = limited }
        }
        var context = context
        context.route = model
        let outcome = RoutingOutcome(route: route.name, rule: rule.name, decision: name, model: model, complexity: complexity)
        return (request, context, outcome)
    }

    static func mark(_ response: GatewayResponse, _ outcome: RoutingOutcome) -> GatewayResponse {
        switch response {
        case .completion(var completion):
            completion.routing = outcome
            return .completion(completion)
        case .stream(var stream):
            stream.routing = outcome
            return .stream(stream)
        }
    }
}
