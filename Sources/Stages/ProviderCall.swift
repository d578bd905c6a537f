public import SwitchyardCore
public import SwitchyardModels

/// Stage 10, the end of the pipeline: one call to the route's provider.
public struct ProviderCall: Sendable {
    let providers: [String: any ProviderClient]

    public init(providers: [String: any ProviderClient]) {
        self.providers = providers
    }

    public func callAsFunction(_ request: ChatRequest, context: GatewayContext) async throws -> GatewayResponse {
        let route = try context.requireRoute()
        guard let provider = providers[route.provider] else {
            throw GatewayError(.internalError, "no client for provider '\(route.provider)'")
        }
        context.trail?.attempted()
        return try await provider.send(request, route: route, context: context)
    }
}
