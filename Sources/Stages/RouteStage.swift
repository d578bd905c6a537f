public import SwitchyardCore
public import SwitchyardModels

/// Stage 5 (first version): the public model name → its configured route; unknown names are a 404.
public struct RouteStage: GatewayStage {
    let models: [String: ModelRoute]

    public init(models: [String: ModelRoute]) {
        self.models = models
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        try await next(request, routed(request, context: context))
    }

    @inline(never)
    func routed(_ request: ChatRequest, context: GatewayContext) throws(GatewayError) -> GatewayContext {
        guard let route = models[request.model] else {
            throw GatewayError(.modelNotFound, "model '\(request.model)' does not exist; GET /v1/models lists the available ones",
                               param: "model")
        }
        var context = context
        context.route = route
        return context
    }
}
