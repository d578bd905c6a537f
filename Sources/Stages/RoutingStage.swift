public import SwitchyardCore
public import SwitchyardModels

/// Stage 5, routing: for a name that is a route, the first rule that matches the request and its caller picks the
/// model; the rule's (or route's) output limit sets `max_tokens`. Runs after the caches, so a hit never pays for it.
/// Explicit model names pass through untouched.
public struct RoutingStage: GatewayStage {
    let models: [String: ModelRoute]

    public init(models: [String: ModelRoute]) {
        self.models = models
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        guard let route = context.routeConfig else { return try await next(request, context) }
        let (routed, routedContext, outcome) = try decide(request, route: route, context: context)
        return Self.mark(try await next(routed, routedContext), outcome)
    }

    /// The request as it goes on (its `max_tokens` limited), the context with the chosen model, and the decision.
    @inline(never)
    func decide(_ request: ChatRequest, route: RouteConfig, context: GatewayContext) throws(GatewayError)
        -> (ChatRequest, GatewayContext, RoutingOutcome)
    {
        let caller = try context.requireCaller()
        // The last rule matches everything (checked at load), so a match is always found in a valid configuration.
        guard let rule = route.rules.first(where: { $0.match.matches(request, caller: caller) }) else {
            throw GatewayError(.internalError, "route '\(route.name)' has no rule for this request")
        }
        let name: String
        switch rule.target {
        case .model(let model): name = model
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
        return (request, context, RoutingOutcome(route: route.name, rule: rule.name, decision: name, model: model))
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
