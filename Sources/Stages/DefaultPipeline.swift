public import SwitchyardCore

/// The one place the order of the stages is written.
public enum DefaultPipeline {
    /// Auth → Route → CostAccounting → ProviderCall.
    public static func build(config: GatewayConfig, providers: [String: any ProviderClient], recorder: any CostRecorder)
        -> Pipeline
    {
        let call = ProviderCall(providers: providers)
        return Pipeline(
            stages: [
                AuthStage(keys: config.keys),
                RouteStage(models: config.models),
                CostAccountingStage(recorder: recorder),
            ],
            terminal: { request, context in try await call(request, context: context) })
    }
}
