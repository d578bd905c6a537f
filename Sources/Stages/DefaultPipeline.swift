public import Caching
public import SwitchyardCore

/// The one place the order of the stages is written.
public enum DefaultPipeline {
    /// Auth → Route → ExactCache → SemanticCache → PromptCache → CostAccounting → ProviderCall.
    ///
    /// The exact cache sits after the route stage so that unknown models are refused before any lookup and a
    /// streamed answer can be priced when it is stored; its key is the model name the client asked for.
    public static func build(config: GatewayConfig, providers: [String: any ProviderClient],
                             recorder: any CostRecorder & CacheRecorder, exactCache: any ExactCacheStore,
                             semanticCache: any SemanticCacheStore, embedder: (any TextEmbedder)?,
                             background: (any BackgroundWorkQueue)? = nil) -> Pipeline
    {
        let call = ProviderCall(providers: providers)
        return Pipeline(
            stages: [
                AuthStage(keys: config.keys),
                RouteStage(models: config.models),
                ExactCacheStage(store: exactCache, settings: config.cache, recorder: recorder),
                SemanticCacheStage(store: semanticCache, embedder: embedder, settings: config.cache, recorder: recorder,
                                   background: background),
                PromptCacheStage(providers: config.providers),
                CostAccountingStage(recorder: recorder),
            ],
            terminal: { request, context in try await call(request, context: context) })
    }
}
