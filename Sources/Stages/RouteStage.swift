public import SwitchyardCore
public import SwitchyardModels

/// Stage 2, resolve: the public name → its model, or the route whose decision the routing stage makes after the
/// caches; unknown names are a 404.
public struct RouteStage: GatewayStage {
    let models: [String: ModelRoute]
    let routes: [String: RouteConfig]

    public init(models: [String: ModelRoute], routes: [String: RouteConfig] = [:]) {
        self.models = models
        self.routes = routes
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        try await next(request, routed(request, context: context))
    }

    @inline(never)
    func routed(_ request: ChatRequest, context: GatewayContext) throws(GatewayError) -> GatewayContext {
        var context = context
        if let route = models[request.model] {
            context.route = route
        } else if let route = routes[request.model] {
            context.routeConfig = route
        } else {
            throw GatewayError(.modelNotFound, "model '\(request.model)' does not exist; GET /v1/models lists the available ones",
                               param: "model")
        }
        return context
    }
}
