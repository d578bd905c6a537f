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
    /// Models whose upstream speaks the OpenAI API: a cascade asks them for token log-probabilities.
    let logprobModels: Set<String>

    public init(models: [String: ModelRoute], classifier: ComplexityClassifier? = nil, embedder: (any TextEmbedder)? = nil,
                logprobModels: Set<String> = []) {
        self.models = models
        self.classifier = classifier
        self.embedder = embedder
        self.logprobModels = logprobModels
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        guard let route = context.routeConfig else { return try await next(request, context) }
        let rule = try rule(route, request: request, context: context)
        if let trail = context.trail {
            trail.routed(route: route.name, rule: rule.name, reference: route.referenceModel(in: models).flatMap { models[$0]?.price })
        }
        if case .cascade(let cheap, _, let threshold) = rule.target {
            return try await cascade(request, route: route, rule: rule, cheap: cheap, threshold: threshold, context: context, next: next)
        }
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
        guard let classifier, let question = SemanticCacheStage.question(of: request) else { return nil }
        let vector: [Float]?
        if let shared = context.questionEmbedding, shared.text == question {
            vector = shared.vector
        } else {
            vector = await embedder?.embed(question)
        }
        let turns = request.messages.filter { $0.role == .user }.count
        guard let vector, let score = classifier.score(embedding: vector, text: question, turns: turns, tools: request.tools.count)
        else { return nil }
        return classifier.percentile(of: score)
    }

    /// What `route` would send `request` to when a refused request is downgraded to it: its rule for the request,
    /// with a cascade's cheap model (a downgrade asks for less, not for an escalation). The request as it goes on,
    /// the context with that model, and the model's name.
    public func downgradeChoice(_ route: RouteConfig, request: ChatRequest, context: GatewayContext) async throws(GatewayError)
        -> (request: ChatRequest, context: GatewayContext, model: String)
    {
        var rule = try rule(route, request: request, context: context)
        var complexity: Double?
        switch rule.target {
        case .cascade(let cheap, _, _): rule.target = .model(cheap)
        case .complexity: complexity = await percentile(request, context: context)
        case .model: break
        }
        let (routed, routedContext, outcome) = try decide(request, route: route, rule: rule, complexity: complexity, context: context)
        return (routed, routedContext, outcome.decision)
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
        case .cascade(_, let strong, _):
            name = strong
        }
        guard var model = models[name] else {
            throw GatewayError(.internalError, "route '\(route.name)' names unknown model '\(name)'")
        }
        if let batch = route.batch { model.batch = batch }
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

    // MARK: Cascade

    /// The cheap model answers first, as a whole answer; it is returned (streamed, if the client asked, from the
    /// whole answer) when the confidence in it reaches `threshold`, else the strong model answers as asked. A cheap
    /// call that fails escalates. Each call is priced and recorded by the stages after this one.
    func cascade(_ request: ChatRequest, route: RouteConfig, rule: RouteRule, cheap: String, threshold: Double,
                 context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse
    {
        guard let cheapModel = models[cheap] else {
            throw GatewayError(.internalError, "route '\(route.name)' names unknown model '\(cheap)'")
        }
        var limited = request
        if let limit = rule.maxTokens ?? route.maxTokens { limited.maxTokens = limit.apply(to: request.maxTokens) }
        var first = limited
        first.stream = false
        first.streamIncludeUsage = false
        let askedLogprobs = request.logprobs == true
        if logprobModels.contains(cheap) { first.logprobs = true }
        var cheapContext = context
        cheapContext.route = cheapModel
        var answer: Completion?
        do {
            if case .completion(let completion) = try await next(first, cheapContext) { answer = completion }
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            answer = nil  // a cheap call that fails escalates
        }
        var outcome = CascadeOutcome(accepted: false, confidence: nil, source: "failed", cheapCost: answer?.cost ?? .zero)
        if var completion = answer, var response = try? completion.canonicalResponse() {
            let question = SemanticCacheStage.question(of: request) ?? ""
            let text = response.choices.first?.content.compactMap(\.text).joined() ?? ""
            if let confidence = AnswerScorer.confidence(logprobs: response.choices.first?.logprobs) {
                (outcome.confidence, outcome.source) = (confidence, "logprobs")
            } else if let scorer = classifier?.answerScorer {
                (outcome.confidence, outcome.source) = (scorer.confidence(question: question, answer: text), "scorer")
            }
            if let confidence = outcome.confidence, confidence >= threshold {
                outcome.accepted = true
                if !askedLogprobs && first.logprobs == true {
                    // Asked for the decision only: the client gets the answer it would have had without them.
                    for index in response.choices.indices { response.choices[index].logprobs = nil }
                    completion = Completion(response: response, cost: completion.cost, upstreamDuration: completion.upstreamDuration)
                }
                let decided = RoutingOutcome(route: route.name, rule: rule.name, decision: cheap, model: cheapModel, cascade: outcome)
                if request.stream {
                    var stream = ChatStream(format: request.sourceFormat, events: AnswerReplay.events(response))
                    stream.routing = decided
                    return .stream(stream)
                }
                completion.routing = decided
                return .completion(completion)
            }
        }
        let (escalated, strongContext, decided) = try decide(request, route: route, rule: rule, complexity: nil, context: context)
        var marked = decided
        marked.cascade = outcome
        switch try await next(escalated, strongContext) {
        case .completion(var completion):
            // The answer's cost is both calls'.
            completion.cost = completion.cost.map { $0 + outcome.cheapCost }
            completion.routing = marked
            return .completion(completion)
        case .stream(var stream):
            stream.routing = marked
            return .stream(stream)
        }
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
